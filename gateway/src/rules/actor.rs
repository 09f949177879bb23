//! The rules actor: feeds the [`Engine`] with what ingest commits, the edge's presence, the
//! dispatcher's and the parcel domain's notes and a tick; writes each batch's changes (rule
//! state and alerts) in one flush; only then publishes the alerts on `gw/alert`, creates the
//! commands of their actions, counts them, and answers acknowledgements.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use locker_schemas::codec::encode_stream;
use locker_schemas::{AlertEvent, CabinetId, Millis, SiteId, StreamKind, StreamMessage, Topic};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::config::{Compiled, RulesConfig};
use super::engine::{Effect, Engine};
use super::metrics::RulesMetrics;
use super::{Alert, AlertFilter, Msg, PendingAction, RuleAction, RulesError, RulesHandle};
use crate::broker::Publisher;
use crate::commands::{ActionSpec, CommandError, CommandsHandle, NewCommand};
use crate::ingest::Committed;
use crate::parcels::{Caller, ParcelsHandle, Scope};
use crate::store::alerts::{matches, AlertStore};
use crate::store::{self, StoreError};

/// Messages handled per batch at most (one flush each).
const MAX_BATCH: usize = 512;
/// How often the cabinets' sites are read from the parcel domain, in ticks.
const SITES_EVERY: u64 = 30;
/// How often cabinets whose readings changed (and not their conditions) are stored.
const SAVE_READINGS: Duration = Duration::from_secs(5);
/// TTL of an action's command, ms (it waits in the queue for an offline cabinet that long).
const ACTION_TTL_MS: u32 = 24 * 3_600_000;

/// Applies what ingest stored after each cabinet's last applied position (a kill between
/// ingest's commit and the engine's evaluation, or readings not yet saved): the events are in
/// the audit log, so no alarm or door is missed. A cabinet the engine never applied anything
/// of starts at the end of its log.
async fn catch_up(
    engine: &mut Engine,
    store: &crate::store::Store,
    clock: &RulesClock,
) -> Result<(), StoreError> {
    let ids: Vec<(CabinetId, u64)> = engine
        .cabs
        .iter()
        .map(|(id, c)| (id.clone(), c.applied))
        .collect();
    let mut replayed = 0u64;
    for (id, mut after) in ids {
        if after == 0 {
            let (st, c) = (store.clone(), id.clone());
            let life = store::blocking(move || st.audit().life(&c)).await?;
            if let Some(l) = life {
                engine.applied(&id, l.last_position());
            }
            continue;
        }
        loop {
            let (st, c) = (store.clone(), id.clone());
            let page = store::blocking(move || st.events_page(&c, after, 1_000)).await?;
            let Some(&(last, _)) = page.last() else {
                break;
            };
            let events: Vec<locker_schemas::Uplink> = page
                .iter()
                .filter_map(|(_, b)| locker_schemas::codec::decode_uplink(b).ok())
                .collect();
            replayed += events.len() as u64;
            engine.uplinks(&events, clock.now());
            engine.applied(&id, last);
            after = last;
        }
    }
    if replayed > 0 {
        tracing::info!(
            events = replayed,
            "rules engine caught up from the audit log"
        );
    }
    Ok(())
}

/// Creates an action's command (recorded in its alert and stored as pending before this),
/// then marks it done. `resumed`: found pending at start, so the command may already exist
/// (the gateway stopped between creating it and marking it): it is looked up first. Either way
/// the command, whose id was chosen with the action, is created at most once.
fn act(p: &Parts, pending: PendingAction, resumed: bool) {
    let PendingAction {
        alert,
        cabinet,
        action,
        command,
        ..
    } = pending;
    let spec = match action {
        RuleAction::PowerSave => ActionSpec::PowerSave { on: true },
        RuleAction::PowerNormal => ActionSpec::PowerSave { on: false },
        RuleAction::SyncCredentials => ActionSpec::SyncCredentials,
    };
    let commands = p.commands.clone();
    let metrics = p.metrics.clone();
    let store = p.store.clone();
    tokio::spawn(async move {
        if resumed && matches!(commands.get(command).await, Ok(Some(_))) {
            let key = command.to_string();
            let _ = store::blocking(move || store.action_done(&key)).await;
            return;
        }
        let r = commands
            .create(NewCommand {
                id: Some(command),
                cabinet: cabinet.clone(),
                action: spec,
                ttl_ms: Some(ACTION_TTL_MS),
                created_by: format!("rules:{alert}"),
            })
            .await;
        let result = if r.is_ok() { "created" } else { "failed" };
        metrics
            .actions
            .with_label_values(&[action.as_str(), result])
            .inc();
        match r {
            // shutting down: still pending, taken up at the next start
            Err(CommandError::Closed) => return,
            Ok(_) => {
                tracing::info!(cabinet = %cabinet, %alert, action = action.as_str(), %command, "rule action: command created")
            }
            Err(e) => {
                tracing::warn!(cabinet = %cabinet, %alert, action = action.as_str(), error = %e, "rule action: command refused")
            }
        }
        let key = command.to_string();
        if let Err(e) = store::blocking(move || store.action_done(&key)).await {
            tracing::warn!(%command, error = %e, "rule action: could not mark it done (it is looked up again at the next start)");
        }
    });
}

/// Where the engine's time comes from: the system clock, or (tests) a wall time that moves
/// with tokio's clock, so paused time drives the rules.
#[derive(Debug, Clone, Copy)]
pub enum RulesClock {
    System,
    Tokio {
        base_wall: Millis,
        base: tokio::time::Instant,
    },
}

impl RulesClock {
    /// A clock reading `wall` now and moving with tokio's time.
    pub fn tokio_from(wall: Millis) -> Self {
        RulesClock::Tokio {
            base_wall: wall,
            base: tokio::time::Instant::now(),
        }
    }

    pub fn now(&self) -> Millis {
        match self {
            RulesClock::System => locker_schemas::now_millis(),
            RulesClock::Tokio { base_wall, base } => base_wall + base.elapsed().as_millis() as u64,
        }
    }
}

/// The inbox of the rules actor (made before the actor, so the dispatcher and the parcel
/// domain can hold the handle from their start).
pub struct Inbox(mpsc::Receiver<Msg>);

impl RulesHandle {
    /// A handle and the inbox its actor will read.
    pub fn channel() -> (RulesHandle, Inbox) {
        let (tx, rx) = mpsc::channel(4096);
        (RulesHandle { tx }, Inbox(rx))
    }
}

/// What the actor needs besides its inbox.
pub struct Parts {
    pub cfg: RulesConfig,
    pub compiled: Compiled,
    pub store: Arc<dyn AlertStore>,
    pub publisher: Publisher,
    pub commands: CommandsHandle,
    pub parcels: Option<ParcelsHandle>,
    pub metrics: RulesMetrics,
    pub clock: RulesClock,
    /// The gateway's store, to read the audit log at start (catch-up); `None` in tests that
    /// feed the engine by hand.
    pub audit: Option<crate::store::Store>,
}

/// The rules actor.
pub struct Rules {
    p: Parts,
    engine: Engine,
    /// Acknowledgements waiting for the batch's flush.
    replies: Vec<(oneshot::Sender<Result<Alert, RulesError>>, Alert)>,
    ticks: u64,
    /// When readings were last stored.
    readings_saved: tokio::time::Instant,
}

impl Rules {
    /// Loads the stored rule state and alerts and spawns the actor. Returns the sender ingest
    /// hands commits to and the task.
    pub async fn spawn(
        p: Parts,
        inbox: Inbox,
        cancel: CancellationToken,
        tracker: &TaskTracker,
    ) -> Result<(mpsc::Sender<Committed>, tokio::task::JoinHandle<()>), StoreError> {
        let st = p.store.clone();
        let loaded = store::blocking(move || st.load()).await?;
        let now = p.clock.now();
        let engine = Engine::new(
            p.compiled.clone(),
            p.cfg.max_conditions_per_cabinet,
            loaded.cabinets,
            loaded.active,
            now,
        );
        tracing::info!(
            cabinets = engine.cabs.len(),
            active_alerts = engine.active.len(),
            "rules engine loaded"
        );
        let mut engine = engine;
        if let Some(store) = &p.audit {
            catch_up(&mut engine, store, &p.clock).await?;
        }
        let (ctx, crx) = mpsc::channel(1024);
        let r = Rules {
            p,
            engine,
            replies: Vec::new(),
            ticks: 0,
            readings_saved: tokio::time::Instant::now(),
        };
        r.gauges();
        if !loaded.actions.is_empty() {
            tracing::info!(
                actions = loaded.actions.len(),
                "rule actions found pending at start: creating those whose command does not exist"
            );
        }
        for p in loaded.actions {
            act(&r.p, p, true);
        }
        let task = tracker.spawn(r.run(inbox.0, crx, cancel));
        Ok((ctx, task))
    }

    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Msg>,
        mut commits: mpsc::Receiver<Committed>,
        cancel: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(Duration::from_millis(self.p.cfg.tick_ms.max(10)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ingest_open = true;
        // a site created or changed is read at once (alerts raised next carry it)
        let mut sites_changed = match &self.p.parcels {
            Some(p) => p.sites_changed(),
            None => tokio::sync::watch::channel(0).1,
        };
        sites_changed.borrow_and_update();
        self.refresh_sites().await;
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => {
                    while let Ok(c) = commits.try_recv() {
                        self.committed(&c);
                    }
                    while let Ok(m) = rx.try_recv() {
                        self.on_msg(m).await;
                    }
                    self.flush(&cancel).await;
                    return;
                }
                c = commits.recv(), if ingest_open => match c {
                    Some(c) => {
                        self.committed(&c);
                        let mut n = 1;
                        while n < MAX_BATCH {
                            match commits.try_recv() {
                                Ok(c) => self.committed(&c),
                                Err(_) => break,
                            }
                            n += 1;
                        }
                    }
                    None => ingest_open = false,
                },
                m = rx.recv() => match m {
                    Some(m) => {
                        self.on_msg(m).await;
                        let mut n = 1;
                        while n < MAX_BATCH {
                            match rx.try_recv() {
                                Ok(m) => self.on_msg(m).await,
                                Err(_) => break,
                            }
                            n += 1;
                        }
                    }
                    None => return,
                },
                _ = tick.tick() => self.on_tick().await,
                Ok(()) = sites_changed.changed() => {
                    sites_changed.borrow_and_update();
                    self.refresh_sites().await;
                }
            }
            self.flush(&cancel).await;
        }
    }

    fn committed(&mut self, c: &Committed) {
        let now = self.p.clock.now();
        self.p.metrics.events.inc_by(c.events.len() as u64);
        let replaying: Vec<(CabinetId, u64)> = c
            .events
            .iter()
            .filter_map(|u| {
                self.engine
                    .cabs
                    .get(&u.cabinet)
                    .and_then(|s| s.replay.as_ref())
                    .map(|r| (u.cabinet.clone(), r.events))
            })
            .collect();
        self.engine.uplinks(&c.events, now);
        for (u, &pos) in c.events.iter().zip(&c.positions) {
            self.engine.applied(&u.cabinet, pos);
        }
        // events replayed by this commit
        let mut before: HashMap<CabinetId, u64> = HashMap::new();
        for (id, n) in replaying {
            before.entry(id).or_insert(n);
        }
        for (id, n) in before {
            let after = self
                .engine
                .cabs
                .get(&id)
                .and_then(|s| s.replay.as_ref())
                .map(|r| r.events)
                .unwrap_or(n);
            self.p.metrics.replayed.inc_by(after.saturating_sub(n));
        }
    }

    async fn on_msg(&mut self, m: Msg) {
        let now = self.p.clock.now();
        match m {
            Msg::Presence {
                cabinet,
                online,
                at,
            } => self.engine.presence(&cabinet, online, at, now),
            Msg::Dispatch(n) => self.engine.dispatch(n, now),
            Msg::Sensor(n) => self.engine.sensor(n, now),
            Msg::Ack {
                id,
                by,
                note,
                reply,
            } => {
                if let Some(a) = self.engine.ack(&id, &by, note.clone(), now) {
                    self.replies.push((reply, a));
                    return;
                }
                // a cleared alert: acknowledged in the history
                let missing = id.clone();
                let st = self.p.store.clone();
                let got = store::blocking(move || {
                    let Some(mut a) = st.get(&id)? else {
                        return Ok(None);
                    };
                    if a.acked_at.is_none() {
                        a.acked_by = Some(by);
                        a.acked_at = Some(now);
                        a.ack_note = note;
                        st.commit(&[], std::slice::from_ref(&a), &[])?;
                    }
                    Ok(Some(a))
                })
                .await;
                let _ = reply.send(match got {
                    Ok(Some(a)) => {
                        self.p.metrics.acked.inc();
                        Ok(a)
                    }
                    Ok(None) => Err(RulesError::NotFound(missing)),
                    Err(e) => Err(e.into()),
                });
            }
            Msg::Get(id, reply) => {
                if let Some(a) = self.engine.active.get(&id) {
                    let _ = reply.send(Ok(a.clone()));
                    return;
                }
                let st = self.p.store.clone();
                let want = id.clone();
                let got = store::blocking(move || st.get(&want)).await;
                let _ = reply.send(match got {
                    Ok(Some(a)) => Ok(a),
                    Ok(None) => Err(RulesError::NotFound(id)),
                    Err(e) => Err(e.into()),
                });
            }
            Msg::List(f, reply) => {
                let _ = reply.send(self.list(f).await);
            }
            Msg::Counts(reply) => {
                let mut n = super::AlertCounts::new();
                for a in self.engine.active.values() {
                    n.entry(a.cabinet.clone()).or_default().count(a.severity);
                }
                let _ = reply.send(n);
            }
            Msg::Active(cab, reply) => {
                let mut v: Vec<Alert> = self
                    .engine
                    .active
                    .values()
                    .filter(|a| a.cabinet == cab)
                    .cloned()
                    .collect();
                v.sort_by(|a, b| b.id.cmp(&a.id));
                let _ = reply.send(v);
            }
        }
    }

    async fn list(&self, f: AlertFilter) -> Result<Vec<Alert>, RulesError> {
        let limit = f.limit.clamp(1, 1_000);
        if f.active == Some(true) {
            let mut v: Vec<Alert> = self
                .engine
                .active
                .values()
                .filter(|a| matches(a, &f))
                .filter(|a| f.before.as_ref().is_none_or(|b| a.id < *b))
                .cloned()
                .collect();
            v.sort_by(|a, b| b.id.cmp(&a.id));
            v.truncate(limit);
            return Ok(v);
        }
        let st = self.p.store.clone();
        let mut v = store::blocking(move || st.list(&f)).await?;
        for a in v.iter_mut() {
            if let Some(live) = self.engine.active.get(&a.id) {
                *a = live.clone();
            }
        }
        Ok(v)
    }

    async fn on_tick(&mut self) {
        let now = self.p.clock.now();
        self.ticks += 1;
        if self.ticks.is_multiple_of(SITES_EVERY) {
            self.refresh_sites().await;
        }
        // recounted before the tick's own changes, which the flush after it counts (raised:
        // +1, cleared: -1); recounted after them, a raise would count twice
        self.gauges();
        self.engine.tick(now);
        if self.ticks.is_multiple_of(3_600) {
            let keep = u64::from(self.p.cfg.history_keep_days) * 86_400_000;
            let st = self.p.store.clone();
            let before = now.saturating_sub(keep);
            match store::blocking(move || st.prune(before)).await {
                Ok(n) if n > 0 => tracing::info!(deleted = n, "old alerts pruned"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "pruning old alerts failed"),
            }
        }
    }

    /// Reads which site each cabinet is in from the parcel domain.
    async fn refresh_sites(&mut self) {
        let Some(parcels) = &self.p.parcels else {
            return;
        };
        let caller = Caller {
            client: "rules".into(),
            scope: Scope::Operator,
        };
        let Ok(sites) = parcels.sites(caller).await else {
            return;
        };
        let mut map: HashMap<CabinetId, SiteId> = HashMap::new();
        for s in sites {
            for c in s.cabinets {
                map.insert(c, s.id.clone());
            }
        }
        let now = self.p.clock.now();
        self.engine.set_sites(&map, now);
    }

    /// Writes what changed (retrying until it is stored), then publishes, acts and answers.
    /// Conditions and alerts are written with every batch; readings alone every
    /// [`SAVE_READINGS`] and at shutdown.
    async fn flush(&mut self, cancel: &CancellationToken) {
        let mut states = self.engine.take_dirty();
        if cancel.is_cancelled() || self.readings_saved.elapsed() >= SAVE_READINGS {
            self.readings_saved = tokio::time::Instant::now();
            states.extend(self.engine.take_touched());
        }
        let effects = self.engine.take_effects();
        if states.is_empty() && effects.is_empty() && self.replies.is_empty() {
            return;
        }
        let mut alerts: Vec<Alert> = Vec::new();
        for e in &effects {
            match e {
                Effect::Raised(a) | Effect::Cleared(a) | Effect::Acked(a) => {
                    if let Some(slot) = alerts.iter_mut().find(|x| x.id == a.id) {
                        *slot = a.clone();
                    } else {
                        alerts.push(a.clone());
                    }
                }
                _ => {}
            }
        }
        // an acknowledged alert that also cleared in this batch is stored as cleared
        for a in alerts.iter_mut() {
            if let Some(Effect::Cleared(c)) = effects
                .iter()
                .rev()
                .find(|e| matches!(e, Effect::Cleared(c) if c.id == a.id))
            {
                *a = c.clone();
            }
        }
        let actions: Vec<PendingAction> = effects
            .iter()
            .filter_map(|e| match e {
                Effect::Action {
                    alert,
                    cabinet,
                    action,
                    command,
                } => Some(PendingAction {
                    alert: alert.clone(),
                    cabinet: cabinet.clone(),
                    action: *action,
                    command: *command,
                    at: self.p.clock.now(),
                }),
                _ => None,
            })
            .collect();
        let mut delay = Duration::from_millis(50);
        loop {
            let st = self.p.store.clone();
            let (s2, a2, p2) = (states.clone(), alerts.clone(), actions.clone());
            match store::blocking(move || st.commit(&s2, &a2, &p2)).await {
                Ok(()) => break,
                Err(e) => {
                    self.p.metrics.storage_errors.inc();
                    tracing::error!(error = %e, "storing the rule state failed; retrying");
                    if cancel.is_cancelled() {
                        // shutting down: nothing is published that was not stored
                        return;
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
        for e in effects {
            match e {
                Effect::Raised(a) => {
                    self.p
                        .metrics
                        .raised
                        .with_label_values(&[a.kind.as_str(), a.severity.as_str()])
                        .inc();
                    self.p
                        .metrics
                        .active
                        .with_label_values(&[a.kind.as_str(), a.severity.as_str()])
                        .inc();
                    tracing::info!(cabinet = %a.cabinet, kind = %a.kind, subject = %a.subject, id = %a.id, "alert raised: {}", a.detail);
                    self.publish(&a).await;
                }
                Effect::Cleared(a) => {
                    self.p
                        .metrics
                        .cleared
                        .with_label_values(&[a.kind.as_str()])
                        .inc();
                    self.p
                        .metrics
                        .active
                        .with_label_values(&[a.kind.as_str(), a.severity.as_str()])
                        .dec();
                    tracing::info!(cabinet = %a.cabinet, kind = %a.kind, subject = %a.subject, id = %a.id, "alert cleared");
                    self.publish(&a).await;
                }
                Effect::Acked(_) => self.p.metrics.acked.inc(),
                Effect::Action { .. } => {}
                Effect::Refused { cabinet } => {
                    self.p.metrics.refused.inc();
                    tracing::debug!(cabinet = %cabinet, "condition refused: the cabinet holds max_conditions_per_cabinet");
                }
            }
        }
        for p in actions {
            act(&self.p, p, false);
        }
        for (reply, a) in self.replies.drain(..) {
            let _ = reply.send(Ok(a));
        }
    }

    async fn publish(&self, a: &Alert) {
        let ev = AlertEvent {
            rule: a.kind.as_str().to_string(),
            active: a.is_active(),
            ts: a.cleared_at.unwrap_or(a.raised_at),
            detail: a.detail.clone(),
            id: a.id.clone(),
            severity: a.severity.as_str().to_string(),
            subject: a.subject.clone(),
            started: a.started,
        };
        if let Ok(bytes) = encode_stream(&StreamMessage::Alert(ev)) {
            self.p
                .publisher
                .publish(
                    Topic::Stream(a.cabinet.clone(), StreamKind::Alert),
                    Bytes::from(bytes),
                )
                .await;
        }
    }

    /// Fleet-level gauges (and per-cabinet ones when configured). The active alerts are
    /// counted up and down as they are raised and cleared, and recounted here.
    fn gauges(&self) {
        let m = &self.p.metrics;
        let mut active: HashMap<(&str, &str), i64> = HashMap::new();
        for a in self.engine.active.values() {
            *active
                .entry((a.kind.as_str(), a.severity.as_str()))
                .or_default() += 1;
        }
        for k in super::AlertKind::ALL {
            for s in super::Severity::ALL {
                m.active
                    .with_label_values(&[k.as_str(), s.as_str()])
                    .set(active.get(&(k.as_str(), s.as_str())).copied().unwrap_or(0));
            }
        }
        let mut power: HashMap<&'static str, i64> = HashMap::new();
        let mut backlog = 0u64;
        let mut oldest: Option<Millis> = None;
        for (id, c) in &self.engine.cabs {
            let has =
                |k: super::AlertKind| c.conds.values().any(|x| x.kind == k && x.alert.is_some());
            let state = if c.power.is_none() {
                "unknown"
            } else if has(super::AlertKind::BatteryLow) {
                "low_battery"
            } else if has(super::AlertKind::OnBattery) {
                "on_battery"
            } else if has(super::AlertKind::SolarDeficit) {
                "solar_deficit"
            } else {
                "normal"
            };
            *power.entry(state).or_default() += 1;
            let replaying = c
                .replay
                .as_ref()
                .filter(|r| r.done_at.is_none())
                .map(|r| r.events)
                .unwrap_or(0);
            backlog += replaying;
            if let Some((_, since)) = c.queue {
                oldest = Some(oldest.map_or(since, |o| o.min(since)));
            }
            if self.p.cfg.per_cabinet_metrics {
                let site = c.site.as_ref().map(|s| s.as_str()).unwrap_or("");
                let l = [id.as_str(), site];
                m.cab_online
                    .with_label_values(&l)
                    .set(i64::from(c.online == Some(true)));
                if let Some(p) = c.power {
                    m.cab_soc.with_label_values(&l).set(i64::from(p.soc_pct));
                }
                m.cab_backlog.with_label_values(&l).set(replaying as i64);
                m.cab_queue
                    .with_label_values(&l)
                    .set(c.queue.map(|(d, _)| d as i64).unwrap_or(0));
            }
        }
        for s in [
            "normal",
            "low_battery",
            "on_battery",
            "solar_deficit",
            "unknown",
        ] {
            m.by_power
                .with_label_values(&[s])
                .set(power.get(s).copied().unwrap_or(0));
        }
        m.backlog.set(backlog as i64);
        let now = self.p.clock.now();
        m.queue_oldest
            .set(oldest.map(|o| now.saturating_sub(o) / 1000).unwrap_or(0) as i64);
    }
}
