//! The dispatcher actor: owns every command without a final outcome, sends and resends them
//! (backoff with jitter, one last resend past expiry), records outcomes from the committed
//! stream, gives up (`no_answer`) on commands the cabinet never answers, and records late
//! results. See the module doc of [`crate::commands`] for the life of a command.
//!
//! Disk on the unlock path: new commands are written in group commits (one flush for every
//! command created while the previous group was being written), off the actor's loop, so
//! results keep being recorded meanwhile; an outcome from a cabinet's Result is written without
//! a flush (the Result is durable in the audit log, and [`super::recover`] rebuilds the outcome
//! from it after a crash) before its waiters are woken; the outcomes the gateway decides alone
//! (`expired`, `cancelled`, `no_answer`) and every send are flushed before they take effect.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use bytes::Bytes;
use locker_schemas::codec::encode_downlink;
use locker_schemas::limits::{parse_settings, MAX_COMMAND_BYTES};
use locker_schemas::{
    now_millis, CabinetId, Command, CommandId, CommandResult, DownKind, Downlink, DownlinkBody,
    Millis, Outcome, Topic, UplinkBody,
};
use rand::Rng;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::record::{ActionSpec, CommandRecord, CommandState};
use super::{CommandError, CommandsConfig, CommandsHandle, Msg, NewCommand, Recovered, Waiter};
use crate::broker::Publisher;
use crate::ingest::Committed;
use crate::metrics::CommandMetrics;
use crate::store::commands::Sync;
use crate::store::{self, Store, StoreError};

mod outcomes;

/// The dispatcher actor.
pub struct Dispatcher {
    cfg: CommandsConfig,
    store: Store,
    publisher: Publisher,
    metrics: CommandMetrics,
    pending: HashMap<CommandId, CommandRecord>,
    by_cabinet: HashMap<CabinetId, BTreeSet<CommandId>>,
    ready: HashSet<CabinetId>,
    waiters: HashMap<CommandId, Vec<Waiter>>,
    /// Test hook: while set, stored Results are put aside here instead of being recorded.
    held: Option<Vec<(CabinetId, CommandResult)>>,
    /// New commands waiting for the next group commit.
    creating: Vec<Creating>,
    /// New commands in the group commit being written.
    committing: Vec<Creating>,
    /// Where the offline queue and outcomes are reported (the rules engine).
    notes: Option<crate::rules::RulesHandle>,
    /// When the queue was last reported.
    queue_noted_at: Millis,
}

/// A new command on its way to disk, with who waits for it.
struct Creating {
    rec: CommandRecord,
    reply: oneshot::Sender<Result<CommandRecord, CommandError>>,
    waiter: Option<Waiter>,
}

/// A group commit of new commands being written (on a blocking thread).
type GroupCommit = tokio::task::JoinHandle<Result<Vec<CommandRecord>, StoreError>>;

/// Waits for the group commit in flight, if any (never resolves without one).
async fn group_done(group: &mut Option<GroupCommit>) -> Result<Vec<CommandRecord>, StoreError> {
    match group.as_mut() {
        Some(h) => h.await.map_err(|e| StoreError::Join(e.to_string()))?,
        None => std::future::pending().await,
    }
}

/// The wire form of a command as sent now (the relative TTL is what remains, so a cabinet
/// with a wrong clock still judges it).
fn downlink(rec: &CommandRecord, now: Millis) -> Downlink {
    let remaining = rec.expires_at.saturating_sub(now).min(u64::from(u32::MAX)) as u32;
    Downlink {
        body: DownlinkBody::Command(Command {
            id: rec.id,
            issued_at: rec.issued_at,
            expires_at: rec.expires_at,
            ttl_ms: remaining,
            action: rec.action.to_action(),
        }),
    }
}

/// Refuses what a cabinet would not take: `set_config` keys and values it rejects, and
/// commands whose encoded downlink is over [`MAX_COMMAND_BYTES`].
fn check_acceptable(rec: &CommandRecord) -> Result<(), CommandError> {
    let len = encode_downlink(&downlink(rec, rec.issued_at))
        .map(|b| b.len())
        .unwrap_or(usize::MAX);
    if len > MAX_COMMAND_BYTES {
        return Err(CommandError::TooLarge {
            len,
            max: MAX_COMMAND_BYTES,
        });
    }
    if let ActionSpec::SetConfig { values } = &rec.action {
        let kv: Vec<(String, String)> =
            values.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        parse_settings(&kv)?;
    }
    Ok(())
}

impl Dispatcher {
    /// Starts the dispatcher with what [`super::recover`] found at start. Returns its handle
    /// and the sender ingest uses to pass on stored events (hellos and results).
    #[allow(clippy::too_many_arguments)]
    pub fn spawn(
        cfg: CommandsConfig,
        store: Store,
        publisher: Publisher,
        metrics: CommandMetrics,
        recovered: Recovered,
        notes: Option<crate::rules::RulesHandle>,
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
            held: None,
            creating: Vec::new(),
            committing: Vec::new(),
            notes,
            queue_noted_at: 0,
        };
        for rec in &recovered.finished {
            d.count_outcome(rec);
            d.metrics.recovered.inc();
        }
        for rec in recovered.pending {
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

    /// Serves until `cancel`; then applies the results ingest committed last (every change is
    /// persisted as it is made, so nothing else is unsaved) and returns.
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Msg>,
        mut commits: mpsc::Receiver<Committed>,
        cancel: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(Duration::from_millis(self.cfg.tick_ms.max(10)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ingest_open = true;
        let mut group: Option<GroupCommit> = None;
        loop {
            if group.is_none() && !self.creating.is_empty() {
                group = Some(self.start_group_commit());
            }
            tokio::select! {
                m = rx.recv() => match m {
                    Some(m) => self.on_msg(m).await,
                    None => break,
                },
                r = group_done(&mut group) => {
                    group = None;
                    self.created(r).await;
                }
                // Ingest gone (it stops first at shutdown): keep serving until cancelled.
                c = commits.recv(), if ingest_open => match c {
                    Some(events) => self.on_committed(&events).await,
                    None => ingest_open = false,
                },
                _ = tick.tick() => self.on_tick().await,
                _ = cancel.cancelled() => {
                    // Shutdown: finish the group commit being written (its callers get their
                    // commands); commands not yet written are refused (`Closed`).
                    if group.is_some() {
                        let r = group_done(&mut group).await;
                        self.created(r).await;
                    }
                    self.creating.clear();
                    // ingest has stopped; record the outcomes it stored last.
                    while let Ok(events) = commits.try_recv() {
                        self.on_committed(&events).await;
                    }
                    break;
                }
            }
        }
    }

    fn get_stored(
        &self,
        id: CommandId,
        reply: oneshot::Sender<Result<Option<CommandRecord>, CommandError>>,
    ) {
        let store = self.store.clone();
        // reads are quick; do them off the actor so it keeps dispatching
        tokio::spawn(async move {
            let r = store::blocking(move || store.commands().get_command(id)).await;
            let _ = reply.send(r.map_err(CommandError::from));
        });
    }

    /// A cabinet's recent commands: read off the actor, the pending ones overlaid with the
    /// state the dispatcher holds (it may be ahead of what is written).
    fn recent(
        &self,
        cab: CabinetId,
        limit: usize,
        reply: oneshot::Sender<Result<Vec<CommandRecord>, CommandError>>,
    ) {
        let limit = limit.clamp(1, store::commands::RECENT_MAX);
        let pending: HashMap<CommandId, CommandRecord> = self
            .by_cabinet
            .get(&cab)
            .into_iter()
            .flatten()
            .filter_map(|id| self.pending.get(id).map(|r| (*id, r.clone())))
            .collect();
        let store = self.store.clone();
        tokio::spawn(async move {
            let r = store::blocking(move || store.commands().recent_commands(&cab, limit)).await;
            let r = r.map_err(CommandError::from).map(|v| {
                v.into_iter()
                    .map(|rec| pending.get(&rec.id).cloned().unwrap_or(rec))
                    .collect()
            });
            let _ = reply.send(r);
        });
    }

    async fn on_msg(&mut self, m: Msg) {
        match m {
            Msg::Create(c, reply, waiter) => match self.new_command(c) {
                Ok(rec) => self.creating.push(Creating { rec, reply, waiter }),
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            Msg::Get(id, reply) => match self.pending.get(&id) {
                Some(rec) => {
                    let _ = reply.send(Ok(Some(rec.clone())));
                }
                None => self.get_stored(id, reply),
            },
            Msg::Wait(id, reply) => {
                if self.pending.contains_key(&id) {
                    self.waiters.entry(id).or_default().push(reply);
                } else {
                    let store = self.store.clone();
                    tokio::spawn(async move {
                        let r = store::blocking(move || store.commands().get_command(id)).await;
                        if let Ok(Some(rec)) = r {
                            let _ = reply.send(rec);
                        }
                    });
                }
            }
            Msg::Cancel(id, reply) => {
                let r = self.cancel(id).await;
                let _ = reply.send(r);
            }
            Msg::Recent(cab, limit, reply) => self.recent(cab, limit, reply),
            Msg::Offline(cab) => {
                self.ready.remove(&cab);
            }
            Msg::HoldResults(true, reply) => {
                self.held.get_or_insert_with(Vec::new);
                let _ = reply.send(());
            }
            Msg::HoldResults(false, reply) => {
                let held = self.held.take().unwrap_or_default();
                self.on_results(held).await;
                let _ = reply.send(());
            }
        }
    }

    async fn cancel(&mut self, id: CommandId) -> Result<CommandRecord, CommandError> {
        let Some(rec) = self.pending.get_mut(&id) else {
            let store = self.store.clone();
            return match store::blocking(move || store.commands().get_command(id)).await {
                Ok(Some(_)) => Err(CommandError::Finished(id)),
                Ok(None) => Err(CommandError::NotFound(id)),
                Err(e) => Err(e.into()),
            };
        };
        match rec.state {
            CommandState::Queued => self
                .finish(id, Outcome::Cancelled, "cancelled through the API".into())
                .await
                .ok_or(CommandError::NotFound(id)),
            _ if rec.cancel_requested_at.is_some() => Ok(rec.clone()),
            _ => {
                // it may already have run: stop resending; the outcome stays the cabinet's
                rec.cancel_requested_at = Some(now_millis());
                let rec = rec.clone();
                self.persist(vec![rec.clone()], Sync::Flush).await?;
                tracing::info!(%id, cabinet = %rec.cabinet, "cancel of a sent command: no more resends");
                Ok(rec)
            }
        }
    }

    /// Validates a new command and makes its record (marked sent if its cabinet is ready: it
    /// is written as sent, then sent, so the fast path costs one flush).
    fn new_command(&self, c: NewCommand) -> Result<CommandRecord, CommandError> {
        let ttl = c.ttl_ms.unwrap_or(self.cfg.default_ttl_ms);
        if ttl == 0 || ttl > self.cfg.max_ttl_ms {
            return Err(CommandError::Ttl {
                max: self.cfg.max_ttl_ms,
            });
        }
        let now = now_millis();
        if let Some(id) = c.id.filter(|id| self.pending.contains_key(id)) {
            return Err(CommandError::Finished(id));
        }
        let mut rec = CommandRecord {
            id: c.id.unwrap_or_else(CommandId::generate),
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
            audit_from: 0,
            next_send_at: None,
            final_sent: false,
            cancel_requested_at: None,
            late_outcome: None,
            late_detail: String::new(),
        };
        check_acceptable(&rec)?;
        if self.ready.contains(&rec.cabinet) {
            self.mark_sent(&mut rec, now);
        }
        Ok(rec)
    }

    /// Writes the new commands waiting so far with one flush, on a blocking thread.
    fn start_group_commit(&mut self) -> GroupCommit {
        self.committing = std::mem::take(&mut self.creating);
        let mut recs: Vec<CommandRecord> = self.committing.iter().map(|c| c.rec.clone()).collect();
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            // the cabinet's audit position is read before the command can be sent, so its
            // Result (if any) is always after it
            for rec in &mut recs {
                rec.audit_from = store.high_water(&rec.cabinet)?;
            }
            store.commands().put_commands(&recs, Sync::Flush)?;
            Ok(recs)
        })
    }

    /// A group commit of new commands ended: track, send and answer them (or refuse them all
    /// if it failed: nothing of them was sent).
    async fn created(&mut self, r: Result<Vec<CommandRecord>, StoreError>) {
        let group = std::mem::take(&mut self.committing);
        let recs = match r {
            Ok(recs) => recs,
            Err(e) => {
                tracing::error!(error = %e, commands = group.len(), "cannot persist new commands; refused");
                let msg = e.to_string();
                for c in group {
                    let _ = c.reply.send(Err(CommandError::GroupCommit(msg.clone())));
                }
                return;
            }
        };
        self.metrics.flushes.with_label_values(&["commands"]).inc();
        let mut queued = BTreeSet::new();
        for (rec, c) in recs.into_iter().zip(group) {
            self.metrics
                .created
                .with_label_values(&[rec.action.to_action().name()])
                .inc();
            self.track(rec.clone());
            if let Some(w) = c.waiter {
                self.waiters.entry(rec.id).or_default().push(w);
            }
            if rec.state == CommandState::Sent {
                self.publish(&rec, "first").await;
            } else {
                tracing::debug!(id = %rec.id, cabinet = %rec.cabinet, "command queued for an offline cabinet");
                queued.insert(rec.cabinet.clone());
            }
            let _ = c.reply.send(Ok(rec));
        }
        // a cabinet whose hello came while these were written gets them now
        for cab in queued {
            if self.ready.contains(&cab) {
                self.dispatch(&cab, false).await;
            }
        }
    }

    /// The wait before the resend after send number `sends`: `resend_after` doubling per
    /// send up to `resend_max`, plus up to a quarter of jitter.
    fn backoff(&self, sends: u32) -> u64 {
        let base = self.cfg.resend_after_ms.max(1);
        let d = base
            .saturating_mul(1u64 << sends.saturating_sub(1).min(30))
            .min(self.cfg.resend_max_ms.max(base));
        d + rand::thread_rng().gen_range(0..=d / 4)
    }

    fn mark_sent(&self, rec: &mut CommandRecord, now: u64) {
        rec.state = CommandState::Sent;
        rec.sends += 1;
        rec.last_sent_at = Some(now);
        rec.next_send_at = Some(now + self.backoff(rec.sends));
        if now > rec.expires_at {
            rec.final_sent = true;
        }
    }

    async fn persist(&self, recs: Vec<CommandRecord>, sync: Sync) -> Result<(), StoreError> {
        let store = self.store.clone();
        store::blocking(move || store.commands().put_commands(&recs, sync)).await?;
        if sync == Sync::Flush {
            self.metrics.flushes.with_label_values(&["commands"]).inc();
        }
        Ok(())
    }

    async fn publish(&self, rec: &CommandRecord, kind: &'static str) {
        match encode_downlink(&downlink(rec, now_millis())) {
            Ok(bytes) => {
                let topic = Topic::Down(rec.cabinet.clone(), DownKind::Cmd);
                if self.publisher.publish(topic, Bytes::from(bytes)).await {
                    self.metrics.sends.with_label_values(&[kind]).inc();
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot encode command"),
        }
    }

    /// Whether a sent command is due to be (re)sent now.
    fn resend_due(&self, rec: &CommandRecord, now: u64, on_hello: bool) -> bool {
        if rec.cancel_requested_at.is_some() {
            return false;
        }
        if now > rec.expires_at {
            // one last resend past expiry (again after a reconnect)
            return !rec.final_sent || on_hello;
        }
        on_hello || rec.next_send_at.is_none_or(|t| now >= t)
    }

    /// Sends (or resends) what is due for one ready cabinet; expires never-sent commands.
    async fn dispatch(&mut self, cabinet: &CabinetId, on_hello: bool) {
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
                CommandState::Sent if self.resend_due(rec, now, on_hello) => to_send.push(id),
                _ => {}
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
            let Some(mut rec) = self.pending.get(id).cloned() else {
                continue;
            };
            let kind = if rec.sends == 0 { "first" } else { "resend" };
            self.mark_sent(&mut rec, now);
            updated.push((rec, kind));
        }
        if updated.is_empty() {
            return;
        }
        if let Err(e) = self
            .persist(
                updated.iter().map(|(r, _)| r.clone()).collect(),
                Sync::Flush,
            )
            .await
        {
            tracing::error!(error = %e, "cannot persist command state; not sending");
            return;
        }
        for (rec, kind) in updated {
            self.publish(&rec, kind).await;
            self.pending.insert(rec.id, rec);
        }
    }
}
