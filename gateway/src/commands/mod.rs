//! Commands: the per-cabinet offline queue and the dispatcher. One actor owns every command
//! that has no outcome yet.
//!
//! Life of a command: the API creates it (persisted, flushed) -> it is sent when its cabinet is
//! ready (its hello was stored since it connected), with `state = sent` persisted BEFORE the
//! publish -> it is resent every `resend_after` until the cabinet's result arrives (the agent
//! deduplicates by id) -> the result (already durable in the audit log) gives its one outcome.
//! A command that expires before it was ever sent ends `expired` at the gateway; once sent, only
//! the cabinet decides (it answers `expired` itself if it receives it late), so the gateway and
//! the cabinet can never disagree about whether a door opened.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use bytes::Bytes;
use locker_schemas::codec::encode_downlink;
use locker_schemas::{
    now_millis, CabinetId, Command, CommandId, DownKind, Downlink, DownlinkBody, Outcome, Topic,
    UplinkBody,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::broker::Publisher;
use crate::ingest::Committed;
use crate::metrics::CommandMetrics;
use crate::model::{ActionSpec, CommandRecord, CommandState};
use crate::store::{self, Store, StoreError};

/// Command settings (the `[commands]` table of gateway.toml).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct CommandsConfig {
    /// TTL when the API request gives none, ms.
    pub default_ttl_ms: u32,
    /// The longest TTL the API accepts, ms (how long a command may wait for an offline cabinet).
    pub max_ttl_ms: u32,
    /// Resend a sent command with no result after this long, ms.
    pub resend_after_ms: u64,
    /// How often the dispatcher checks for resends and expiries, ms.
    pub tick_ms: u64,
}

impl Default for CommandsConfig {
    fn default() -> Self {
        Self {
            default_ttl_ms: 60_000,
            max_ttl_ms: 7 * 24 * 3_600_000,
            resend_after_ms: 5_000,
            tick_ms: 500,
        }
    }
}

/// Why a command request failed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("ttl_ms must be between 1 and {max}")]
    Ttl { max: u32 },
    #[error("command {0} not found")]
    NotFound(CommandId),
    #[error("command {0} was already sent to the cabinet and can no longer be cancelled")]
    AlreadySent(CommandId),
    #[error("command {0} already has its outcome")]
    Finished(CommandId),
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    #[error("the command dispatcher is shutting down")]
    Closed,
}

/// A new command as the API asks for it.
#[derive(Debug, Clone)]
pub struct NewCommand {
    pub cabinet: CabinetId,
    pub action: ActionSpec,
    pub ttl_ms: Option<u32>,
    pub created_by: String,
}

enum Msg {
    Create(
        NewCommand,
        oneshot::Sender<Result<CommandRecord, CommandError>>,
    ),
    Get(
        CommandId,
        oneshot::Sender<Result<Option<CommandRecord>, CommandError>>,
    ),
    Wait(CommandId, oneshot::Sender<CommandRecord>),
    Cancel(
        CommandId,
        oneshot::Sender<Result<CommandRecord, CommandError>>,
    ),
    Offline(CabinetId),
}

/// Cloneable handle to the dispatcher.
#[derive(Clone)]
pub struct CommandsHandle {
    tx: mpsc::Sender<Msg>,
}

impl CommandsHandle {
    async fn call<T>(
        &self,
        f: impl FnOnce(oneshot::Sender<Result<T, CommandError>>) -> Msg,
    ) -> Result<T, CommandError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(f(tx))
            .await
            .map_err(|_| CommandError::Closed)?;
        rx.await.map_err(|_| CommandError::Closed)?
    }

    /// Creates, persists and (if the cabinet is ready) sends a command.
    pub async fn create(&self, c: NewCommand) -> Result<CommandRecord, CommandError> {
        self.call(|tx| Msg::Create(c, tx)).await
    }

    /// A command by id (pending or finished).
    pub async fn get(&self, id: CommandId) -> Result<Option<CommandRecord>, CommandError> {
        self.call(|tx| Msg::Get(id, tx)).await
    }

    /// Cancels a command that was never sent.
    pub async fn cancel(&self, id: CommandId) -> Result<CommandRecord, CommandError> {
        self.call(|tx| Msg::Cancel(id, tx)).await
    }

    /// Waits up to `timeout` for a command's outcome; returns the record either way.
    pub async fn wait(
        &self,
        id: CommandId,
        timeout: Duration,
    ) -> Result<Option<CommandRecord>, CommandError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Msg::Wait(id, tx))
            .await
            .map_err(|_| CommandError::Closed)?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(rec)) => Ok(Some(rec)),
            _ => self.get(id).await,
        }
    }

    /// Tells the dispatcher a cabinet went offline (stop sending until its next hello).
    pub async fn offline(&self, cabinet: CabinetId) {
        let _ = self.tx.send(Msg::Offline(cabinet)).await;
    }
}

/// The dispatcher actor.
pub struct Dispatcher {
    cfg: CommandsConfig,
    store: Store,
    publisher: Publisher,
    metrics: CommandMetrics,
    pending: HashMap<CommandId, CommandRecord>,
    by_cabinet: HashMap<CabinetId, BTreeSet<CommandId>>,
    ready: HashSet<CabinetId>,
    waiters: HashMap<CommandId, Vec<oneshot::Sender<CommandRecord>>>,
}

impl Dispatcher {
    /// Starts the dispatcher with the commands still pending in the store. Returns its handle
    /// and the sender ingest uses to pass on stored events (hellos and results).
    ///
    /// On `cancel` it applies the results ingest committed last (every change is persisted as
    /// it is made, so nothing else is unsaved) and returns (the task is spawned on `tracker`).
    pub fn spawn(
        cfg: CommandsConfig,
        store: Store,
        publisher: Publisher,
        metrics: CommandMetrics,
        pending: Vec<CommandRecord>,
        cancel: CancellationToken,
        tracker: &TaskTracker,
    ) -> (
        CommandsHandle,
        mpsc::Sender<Committed>,
        tokio::task::JoinHandle<()>,
    ) {
        let (tx, rx) = mpsc::channel(1024);
        let (ctx, crx) = mpsc::channel(256);
        let mut d = Dispatcher {
            cfg,
            store,
            publisher,
            metrics,
            pending: HashMap::new(),
            by_cabinet: HashMap::new(),
            ready: HashSet::new(),
            waiters: HashMap::new(),
        };
        for rec in pending {
            d.track(rec);
        }
        let task = tracker.spawn(d.run(rx, crx, cancel));
        (CommandsHandle { tx }, ctx, task)
    }

    fn track(&mut self, rec: CommandRecord) {
        self.by_cabinet
            .entry(rec.cabinet.clone())
            .or_default()
            .insert(rec.id);
        self.pending.insert(rec.id, rec);
        self.metrics.queue_depth.set(self.pending.len() as i64);
    }

    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Msg>,
        mut commits: mpsc::Receiver<Committed>,
        cancel: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(Duration::from_millis(self.cfg.tick_ms.max(10)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ingest_open = true;
        loop {
            tokio::select! {
                m = rx.recv() => match m {
                    Some(m) => self.on_msg(m).await,
                    None => break,
                },
                // Ingest gone (it stops first at shutdown): keep serving until cancelled.
                c = commits.recv(), if ingest_open => match c {
                    Some(events) => self.on_committed(&events).await,
                    None => ingest_open = false,
                },
                _ = tick.tick() => self.on_tick().await,
                _ = cancel.cancelled() => {
                    // Shutdown: ingest has stopped; record the outcomes it stored last.
                    while let Ok(events) = commits.try_recv() {
                        self.on_committed(&events).await;
                    }
                    break;
                }
            }
        }
    }

    async fn on_msg(&mut self, m: Msg) {
        match m {
            Msg::Create(c, reply) => {
                let r = self.create(c).await;
                let _ = reply.send(r);
            }
            Msg::Get(id, reply) => {
                if let Some(rec) = self.pending.get(&id) {
                    let _ = reply.send(Ok(Some(rec.clone())));
                } else {
                    let store = self.store.clone();
                    // reads are quick; do them off the actor so it keeps dispatching
                    tokio::spawn(async move {
                        let r = store::blocking(move || store.get_command(id)).await;
                        let _ = reply.send(r.map_err(CommandError::from));
                    });
                }
            }
            Msg::Wait(id, reply) => {
                if self.pending.contains_key(&id) {
                    self.waiters.entry(id).or_default().push(reply);
                } else {
                    let store = self.store.clone();
                    tokio::spawn(async move {
                        if let Ok(Some(rec)) = store::blocking(move || store.get_command(id)).await
                        {
                            let _ = reply.send(rec);
                        }
                    });
                }
            }
            Msg::Cancel(id, reply) => {
                let r = match self.pending.get(&id) {
                    None => {
                        let store = self.store.clone();
                        match store::blocking(move || store.get_command(id)).await {
                            Ok(Some(_)) => Err(CommandError::Finished(id)),
                            Ok(None) => Err(CommandError::NotFound(id)),
                            Err(e) => Err(e.into()),
                        }
                    }
                    Some(rec) if rec.state != CommandState::Queued => {
                        Err(CommandError::AlreadySent(id))
                    }
                    Some(_) => self
                        .finish(id, Outcome::Cancelled, "cancelled through the API".into())
                        .await
                        .ok_or(CommandError::NotFound(id)),
                };
                let _ = reply.send(r);
            }
            Msg::Offline(cab) => {
                self.ready.remove(&cab);
            }
        }
    }

    async fn create(&mut self, c: NewCommand) -> Result<CommandRecord, CommandError> {
        let ttl = c.ttl_ms.unwrap_or(self.cfg.default_ttl_ms);
        if ttl == 0 || ttl > self.cfg.max_ttl_ms {
            return Err(CommandError::Ttl {
                max: self.cfg.max_ttl_ms,
            });
        }
        let now = now_millis();
        let rec = CommandRecord {
            id: CommandId::generate(),
            cabinet: c.cabinet,
            action: c.action,
            issued_at: now,
            expires_at: now + u64::from(ttl),
            ttl_ms: ttl,
            created_by: c.created_by,
            state: CommandState::Queued,
            sends: 0,
            last_sent_at: None,
            outcome: None,
            detail: String::new(),
            finished_at: None,
        };
        self.metrics
            .created
            .with_label_values(&[rec.action.to_action().name()])
            .inc();
        let id = rec.id;
        let cabinet = rec.cabinet.clone();
        if self.ready.contains(&cabinet) {
            // persist as sent, then send: one flush on the fast path
            let mut sent = rec;
            self.mark_sent(&mut sent, now);
            self.persist(vec![sent.clone()]).await?;
            self.track(sent.clone());
            self.publish(&sent, "first").await;
            Ok(sent)
        } else {
            self.persist(vec![rec.clone()]).await?;
            self.track(rec.clone());
            tracing::debug!(%id, %cabinet, "command queued for an offline cabinet");
            Ok(rec)
        }
    }

    fn mark_sent(&self, rec: &mut CommandRecord, now: u64) {
        rec.state = CommandState::Sent;
        rec.sends += 1;
        rec.last_sent_at = Some(now);
    }

    async fn persist(&self, recs: Vec<CommandRecord>) -> Result<(), StoreError> {
        let store = self.store.clone();
        store::blocking(move || store.put_commands(&recs)).await
    }

    async fn publish(&self, rec: &CommandRecord, kind: &'static str) {
        let now = now_millis();
        // the relative TTL is what remains, so a cabinet with a wrong clock still judges it
        let remaining = rec.expires_at.saturating_sub(now).min(u64::from(u32::MAX)) as u32;
        let msg = Downlink {
            body: DownlinkBody::Command(Command {
                id: rec.id,
                issued_at: rec.issued_at,
                expires_at: rec.expires_at,
                ttl_ms: remaining,
                action: rec.action.to_action(),
            }),
        };
        match encode_downlink(&msg) {
            Ok(bytes) => {
                let topic = Topic::Down(rec.cabinet.clone(), DownKind::Cmd);
                if self.publisher.publish(topic, Bytes::from(bytes)).await {
                    self.metrics.sends.with_label_values(&[kind]).inc();
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot encode command"),
        }
    }

    /// Sends (or resends) what is due for one ready cabinet; expires never-sent commands.
    async fn dispatch(&mut self, cabinet: &CabinetId, resend_only_due: bool) {
        let Some(ids) = self.by_cabinet.get(cabinet) else {
            return;
        };
        let ids: Vec<CommandId> = ids.iter().copied().collect();
        let now = now_millis();
        let mut to_send = Vec::new();
        let mut to_expire = Vec::new();
        for id in ids {
            let Some(rec) = self.pending.get(&id) else {
                continue;
            };
            match rec.state {
                CommandState::Queued if now > rec.expires_at => to_expire.push(id),
                CommandState::Queued => to_send.push(id),
                CommandState::Sent => {
                    let due = rec
                        .last_sent_at
                        .map(|t| now.saturating_sub(t) >= self.cfg.resend_after_ms)
                        .unwrap_or(true);
                    if due || !resend_only_due {
                        to_send.push(id);
                    }
                }
                CommandState::Done => {}
            }
        }
        for id in to_expire {
            self.finish(
                id,
                Outcome::Expired,
                "expired before it could be delivered".into(),
            )
            .await;
        }
        let mut updated = Vec::new();
        for id in &to_send {
            if let Some(rec) = self.pending.get_mut(id) {
                let kind = if rec.sends == 0 { "first" } else { "resend" };
                rec.state = CommandState::Sent;
                rec.sends += 1;
                rec.last_sent_at = Some(now);
                updated.push((rec.clone(), kind));
            }
        }
        if updated.is_empty() {
            return;
        }
        if let Err(e) = self
            .persist(updated.iter().map(|(r, _)| r.clone()).collect())
            .await
        {
            tracing::error!(error = %e, "cannot persist command state; not sending");
            return;
        }
        for (rec, kind) in &updated {
            self.publish(rec, kind).await;
        }
    }

    async fn on_committed(&mut self, events: &Committed) {
        let mut hellos = Vec::new();
        for u in events.iter() {
            match &u.body {
                UplinkBody::Hello(_) => hellos.push(u.cabinet.clone()),
                UplinkBody::Result(r) => {
                    if self
                        .pending
                        .get(&r.command)
                        .map(|p| p.cabinet != u.cabinet)
                        .unwrap_or(true)
                    {
                        self.metrics.stray_results.inc();
                        tracing::debug!(command = %r.command, cabinet = %u.cabinet, "result for no pending command");
                        continue;
                    }
                    self.finish(r.command, r.outcome, r.detail.clone()).await;
                }
                _ => {}
            }
        }
        for cab in hellos {
            self.ready.insert(cab.clone());
            self.dispatch(&cab, false).await;
        }
    }

    async fn on_tick(&mut self) {
        let now = now_millis();
        // never-sent commands expire wherever their cabinet is
        let expired: Vec<CommandId> = self
            .pending
            .values()
            .filter(|r| r.state == CommandState::Queued && now > r.expires_at)
            .map(|r| r.id)
            .collect();
        for id in expired {
            self.finish(
                id,
                Outcome::Expired,
                "expired before it could be delivered".into(),
            )
            .await;
        }
        let ready: Vec<CabinetId> = self
            .by_cabinet
            .keys()
            .filter(|c| self.ready.contains(*c))
            .cloned()
            .collect();
        for cab in ready {
            self.dispatch(&cab, true).await;
        }
    }

    /// Records a command's one outcome, persists it and wakes its waiters.
    async fn finish(
        &mut self,
        id: CommandId,
        outcome: Outcome,
        detail: String,
    ) -> Option<CommandRecord> {
        let mut rec = self.pending.remove(&id)?;
        if let Some(set) = self.by_cabinet.get_mut(&rec.cabinet) {
            set.remove(&id);
            if set.is_empty() {
                self.by_cabinet.remove(&rec.cabinet);
            }
        }
        let now = now_millis();
        rec.state = CommandState::Done;
        rec.outcome = Some(outcome);
        rec.detail = detail;
        rec.finished_at = Some(now);
        if let Err(e) = self.persist(vec![rec.clone()]).await {
            tracing::error!(error = %e, %id, "cannot persist command outcome");
        }
        self.metrics.queue_depth.set(self.pending.len() as i64);
        self.metrics
            .outcomes
            .with_label_values(&[outcome.as_str()])
            .inc();
        let action = rec.action.to_action();
        self.metrics
            .latency_seconds
            .with_label_values(&[action.name()])
            .observe(now.saturating_sub(rec.issued_at) as f64 / 1000.0);
        for w in self.waiters.remove(&id).unwrap_or_default() {
            let _ = w.send(rec.clone());
        }
        Some(rec)
    }
}
