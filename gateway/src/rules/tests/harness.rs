//! The rules actor under paused tokio time, with real parts: a sled store in a temp dir, a
//! real embedded broker (on its own thread and runtime, so the router never moves the paused
//! clock) with an observer link that decodes every `gw/alert` published, and a real
//! dispatcher for the rules' actions. [`Rig`] feeds the actor through its own API (committed
//! events, presence, dispatcher and sensor notes), moves time with `tokio::time::advance`,
//! and restarts the actor on the same store.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use locker_schemas::codec::{decode_stream, encode_stream};
use locker_schemas::{
    AlertEvent, CabinetId, CommandId, Filter, Millis, StreamKind, StreamMessage, Topic, Uplink,
    UplinkBody,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::super::{
    Alert, AlertFilter, AlertKind, Inbox, Parts, Rules, RulesClock, RulesConfig, RulesHandle,
    Severity,
};
use crate::broker::{BrokerConfig, EmbeddedBroker, Publisher};
use crate::commands::record::CommandRecord;
use crate::commands::{CommandsConfig, CommandsHandle, Dispatcher};
use crate::ingest::{Commit, Committed};
use crate::metrics::Metrics;
use crate::store::Store;

/// The wall time the tests start at.
pub(super) const T0: Millis = 1_800_000_000_000;
pub(super) const SEC: u64 = 1_000;
pub(super) const MIN: u64 = 60_000;
pub(super) const HOUR: u64 = 3_600_000;
/// The actor's tick in these tests.
pub(super) const TICK: u64 = 1_000;

pub(super) fn cab(n: u32) -> CabinetId {
    CabinetId::new(format!("CAB-{n}")).expect("cabinet id")
}

/// A rules table from TOML (what gateway.toml's `[rules]` holds).
pub(super) fn rules_cfg(toml_text: &str) -> RulesConfig {
    let mut cfg: RulesConfig = toml::from_str(toml_text).expect("rules table");
    cfg.tick_ms = TICK;
    cfg
}

/// A real embedded broker on its own thread and runtime, and what its observer link saw on
/// `lk/v1/+/gw/#` (alerts only).
pub(super) struct Broker {
    pub(super) publisher: Publisher,
    seen: Arc<Mutex<std::sync::mpsc::Receiver<(CabinetId, AlertEvent)>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Broker {
    pub(super) fn start() -> Self {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (seen_tx, seen_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("broker runtime");
            rt.block_on(observe(ready_tx, seen_tx, stopped));
        });
        let publisher = ready_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the broker starts and the observer sees its probe");
        Self {
            publisher,
            seen: Arc::new(Mutex::new(seen_rx)),
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Waits (real time, off the paused clock: a blocking task holds auto-advance) until
    /// `done` holds for the alert events seen so far (appended to `log`), or 20 s passed.
    pub(super) async fn alerts(
        &self,
        log: &mut Vec<(CabinetId, AlertEvent)>,
        done: impl Fn(&[(CabinetId, AlertEvent)]) -> bool + Send + 'static,
    ) {
        let seen = self.seen.clone();
        let mut got = std::mem::take(log);
        *log = tokio::task::spawn_blocking(move || {
            let rx = seen.lock().expect("observer");
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            loop {
                while let Ok(x) = rx.try_recv() {
                    got.push(x);
                }
                if done(&got) || std::time::Instant::now() > deadline {
                    return got;
                }
                if let Ok(x) = rx.recv_timeout(Duration::from_millis(20)) {
                    got.push(x);
                }
            }
        })
        .await
        .expect("observer task");
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The broker's runtime: starts it, subscribes an observer link to every stream, waits until
/// a probe alert published through the gateway's [`Publisher`] reaches the observer, then
/// forwards every alert seen until told to stop.
async fn observe(
    ready: std::sync::mpsc::Sender<Publisher>,
    seen: std::sync::mpsc::Sender<(CabinetId, AlertEvent)>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let (inbound, _inbound_rx) = mpsc::channel(64);
    let broker = EmbeddedBroker::start(&BrokerConfig::default(), &[], inbound)
        .await
        .expect("broker starts");
    let mut obs = broker
        .links
        .connect("rules-test-observer".into(), true, None)
        .await
        .expect("observer link");
    let _ = obs.take_connack();
    obs.subscribe(Filter::all_streams().as_str().to_string())
        .await
        .expect("observer subscribes");
    let probe_cab = CabinetId::new("PROBE").expect("id");
    let probe = encode_stream(&StreamMessage::Alert(AlertEvent {
        rule: "probe".into(),
        active: true,
        ts: 0,
        detail: String::new(),
        id: "probe".into(),
        severity: "info".into(),
        subject: String::new(),
        started: 0,
    }))
    .expect("probe");
    let publisher = broker.publisher.clone();
    let mut every = tokio::time::interval(Duration::from_millis(50));
    let mut ready = Some(ready);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = every.tick(), if ready.is_some() => {
                publisher
                    .publish(Topic::Stream(probe_cab.clone(), StreamKind::Alert), Bytes::from(probe.clone()))
                    .await;
            }
            p = obs.next_publish() => {
                let Ok(p) = p else { return };
                let Ok(topic) = std::str::from_utf8(&p.topic).unwrap_or("").parse::<Topic>() else {
                    continue;
                };
                let Ok(StreamMessage::Alert(ev)) = decode_stream(&p.payload) else {
                    continue;
                };
                if let Topic::Stream(c, StreamKind::Alert) = topic {
                    if c == probe_cab {
                        if let Some(r) = ready.take() {
                            let _ = r.send(publisher.clone());
                        }
                        continue;
                    }
                    let _ = seen.send((c, ev));
                }
            }
        }
    }
}

/// The rules actor with real parts, under paused time.
pub(super) struct Rig {
    _dir: tempfile::TempDir,
    pub(super) store: Store,
    pub(super) metrics: Metrics,
    pub(super) broker: Broker,
    pub(super) commands: CommandsHandle,
    pub(super) cfg: RulesConfig,
    pub(super) rules: RulesHandle,
    pub(super) commits: mpsc::Sender<Committed>,
    cancel: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
    tracker: TaskTracker,
    clock: RulesClock,
    seq: HashMap<CabinetId, u64>,
    /// Every alert event published so far (filled by [`Rig::published`]).
    pub(super) log: Vec<(CabinetId, AlertEvent)>,
    /// Whether the actor reads the audit log at start (catch-up).
    pub(super) audit: bool,
}

impl Rig {
    /// A rig with the default rules (tick 1 s).
    pub(super) async fn new() -> Self {
        Self::with(rules_cfg("")).await
    }

    /// A rig with these rules, its clock reading [`T0`] now.
    pub(super) async fn with(cfg: RulesConfig) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path()).expect("store");
        let metrics = Metrics::new().expect("metrics");
        let broker = Broker::start();
        let tracker = TaskTracker::new();
        let (commands, _command_commits, _dispatch) = Dispatcher::spawn(
            CommandsConfig::default(),
            store.clone(),
            broker.publisher.clone(),
            metrics.commands.clone(),
            Default::default(),
            None,
            CancellationToken::new(),
            &tracker,
        );
        let (rules, inbox) = RulesHandle::channel();
        let (commits_placeholder, _) = mpsc::channel(1);
        let mut rig = Rig {
            _dir: dir,
            store,
            metrics,
            broker,
            commands,
            cfg,
            rules,
            commits: commits_placeholder,
            cancel: CancellationToken::new(),
            task: None,
            tracker,
            clock: RulesClock::tokio_from(T0),
            seq: HashMap::new(),
            log: Vec::new(),
            audit: false,
        };
        rig.spawn(inbox, T0).await;
        rig
    }

    async fn spawn(&mut self, inbox: Inbox, wall: Millis) {
        self.clock = RulesClock::tokio_from(wall);
        self.cancel = CancellationToken::new();
        let parts = Parts {
            cfg: self.cfg.clone(),
            compiled: self.cfg.compile().expect("rules compile"),
            store: Arc::new(self.store.alerts().clone()),
            publisher: self.broker.publisher.clone(),
            commands: self.commands.clone(),
            parcels: None,
            metrics: self.metrics.rules.clone(),
            clock: self.clock,
            audit: self.audit.then(|| self.store.clone()),
        };
        let (commits, task) = Rules::spawn(parts, inbox, self.cancel.clone(), &self.tracker)
            .await
            .expect("rules start");
        self.commits = commits;
        self.task = Some(task);
        self.settle().await;
    }

    /// Stops the actor (its last batch is stored) and starts a new one on the same store,
    /// with a clock that goes on from the same wall time.
    pub(super) async fn restart(&mut self) {
        self.cancel.cancel();
        if let Some(t) = self.task.take() {
            t.await.expect("rules task");
        }
        let (rules, inbox) = RulesHandle::channel();
        self.rules = rules;
        let wall = self.now();
        self.spawn(inbox, wall).await;
    }

    /// The engine's time now.
    pub(super) fn now(&self) -> Millis {
        self.clock.now()
    }

    /// Lets the actor take what is ready (a tick that just fired, a commit) and finish its
    /// batch: a round trip through its inbox answers only after the batch's flush.
    pub(super) async fn settle(&self) {
        for _ in 0..8 {
            tokio::task::yield_now().await;
        }
        let _ = self.rules.active(cab(0)).await;
    }

    /// Moves time on by `ms` (the actor ticks once at the new time) and settles.
    pub(super) async fn step(&self, ms: u64) {
        tokio::time::advance(Duration::from_millis(ms)).await;
        self.settle().await;
    }

    /// A committed event of cabinet `k` stamped `ts`.
    pub(super) async fn send_at(&mut self, k: u32, body: UplinkBody, ts: Millis) {
        let s = self.seq.entry(cab(k)).or_insert(0);
        *s += 1;
        let u = Uplink {
            cabinet: cab(k),
            boot: 1,
            seq: *s,
            ts,
            body,
        };
        self.commits
            .send(Commit::of(vec![u]))
            .await
            .expect("rules take commits");
        self.settle().await;
    }

    /// A committed event of cabinet `k` stamped now.
    pub(super) async fn send(&mut self, k: u32, body: UplinkBody) {
        let now = self.now();
        self.send_at(k, body, now).await;
    }

    /// The edge's presence change of cabinet `k`, now.
    pub(super) async fn presence(&self, k: u32, online: bool) {
        self.rules.presence(cab(k), online, self.now()).await;
        self.settle().await;
    }

    /// Every alert (active and cleared) of one cabinet and kind, newest first.
    pub(super) async fn alerts(&self, k: u32, kind: AlertKind) -> Vec<Alert> {
        self.rules
            .list(AlertFilter {
                cabinet: Some(cab(k)),
                kind: Some(kind),
                limit: 1_000,
                ..Default::default()
            })
            .await
            .expect("list")
    }

    /// The one alert of a cabinet and kind (there must be exactly one).
    pub(super) async fn only(&self, k: u32, kind: AlertKind) -> Alert {
        let v = self.alerts(k, kind).await;
        assert_eq!(v.len(), 1, "exactly one {kind} alert: {v:#?}");
        v.into_iter().next().expect("one")
    }

    /// `locker_alerts_raised_total{kind}` over every severity.
    pub(super) fn raised_total(&self, kind: AlertKind) -> u64 {
        Severity::ALL
            .iter()
            .map(|s| {
                self.metrics
                    .rules
                    .raised
                    .with_label_values(&[kind.as_str(), s.as_str()])
                    .get()
            })
            .sum()
    }

    /// `locker_alerts_cleared_total{kind}`.
    pub(super) fn cleared_total(&self, kind: AlertKind) -> u64 {
        self.metrics
            .rules
            .cleared
            .with_label_values(&[kind.as_str()])
            .get()
    }

    /// `locker_alerts_active{kind}` over every severity (set on each tick).
    pub(super) fn active_gauge(&self, kind: AlertKind) -> i64 {
        Severity::ALL
            .iter()
            .map(|s| {
                self.metrics
                    .rules
                    .active
                    .with_label_values(&[kind.as_str(), s.as_str()])
                    .get()
            })
            .sum()
    }

    /// The events published for one alert id, once there are at least `n` of them (or after
    /// 20 s of real time: the caller's assertions then say what is missing).
    pub(super) async fn published(&mut self, n: usize, id: &str) -> Vec<AlertEvent> {
        let want = id.to_string();
        self.broker
            .alerts(&mut self.log, move |l| {
                l.iter().filter(|(_, e)| e.id == want).count() >= n
            })
            .await;
        self.log
            .iter()
            .filter(|(_, e)| e.id == id)
            .map(|(_, e)| e.clone())
            .collect()
    }

    /// A command the rules created, once the dispatcher has it.
    pub(super) async fn command(&self, id: CommandId) -> CommandRecord {
        for _ in 0..1_000 {
            if let Some(r) = self.commands.get(id).await.expect("commands") {
                return r;
            }
            tokio::task::yield_now().await;
        }
        panic!("command {id} was never created");
    }

    /// The standard checks of one alert's life: raised once at `raised_at` for a condition
    /// that began at `started`, published once raised and once cleared, cleared at
    /// `cleared_at`, and `locker_alerts_active` back to 0 at the next tick.
    pub(super) async fn check_life(
        &mut self,
        k: u32,
        kind: AlertKind,
        subject: &str,
        started: Millis,
        raised_at: Millis,
        cleared_at: Millis,
    ) -> Alert {
        let a = self.only(k, kind).await;
        assert_eq!(a.subject, subject, "{a:#?}");
        assert_eq!(a.started, started, "started: {a:#?}");
        assert_eq!(a.raised_at, raised_at, "raised_at: {a:#?}");
        assert_eq!(a.cleared_at, Some(cleared_at), "cleared_at: {a:#?}");
        assert_eq!(self.raised_total(kind), 1, "{kind} raised once");
        assert_eq!(self.cleared_total(kind), 1, "{kind} cleared once");
        self.step(TICK).await;
        assert_eq!(
            self.active_gauge(kind),
            0,
            "locker_alerts_active{{kind={kind}}}"
        );
        let evs = self.published(2, &a.id).await;
        let raised: Vec<&AlertEvent> = evs.iter().filter(|e| e.active).collect();
        let cleared: Vec<&AlertEvent> = evs.iter().filter(|e| !e.active).collect();
        assert_eq!(raised.len(), 1, "published raised once: {evs:#?}");
        assert_eq!(cleared.len(), 1, "published cleared once: {evs:#?}");
        assert_eq!(raised[0].rule, kind.as_str());
        assert_eq!(raised[0].subject, subject);
        assert_eq!(raised[0].ts, raised_at);
        assert_eq!(raised[0].started, started);
        assert_eq!(cleared[0].ts, cleared_at);
        a
    }

    /// The active alert of a cabinet and kind, if any.
    pub(super) async fn active_one(&self, k: u32, kind: AlertKind) -> Option<Alert> {
        let v: Vec<Alert> = self
            .rules
            .active(cab(k))
            .await
            .into_iter()
            .filter(|a| a.kind == kind)
            .collect();
        assert!(v.len() <= 1, "two active {kind} alerts: {v:#?}");
        v.into_iter().next()
    }
}
