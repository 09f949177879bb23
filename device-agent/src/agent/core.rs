//! The agent's main loop: the one task that owns the cabinet's mutable state (outbox and uplink
//! window, door states, pending unlocks, alarms, credential cache) and reacts to requests from
//! the handle, hardware events, MQTT events and its own timers.
//!
//! Command execution is in [`super::exec`], the door state machine and local access in
//! [`super::doors`].

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use locker_schemas::{
    codec, CabinetId, CommandId, CompartmentId, CompartmentInfo, DoorCause, DownlinkBody, Filter,
    Hello, Network, Topic, UplinkBody,
};
use rumqttc::{AsyncClient, Publish, QoS};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::exec::Job;
use super::{
    AgentDeps, AgentError, AgentStatus, Counters, ExecOutcome, ExitReason, Request, ScanSender,
};
use crate::clock::Clock;
use crate::config::AgentConfig;
use crate::creds::CredCache;
use crate::hw::{self, IoEvent, IoRequest};
use crate::outbox::Outbox;
use crate::session::{self, MqttEvent, Window};
use crate::storage::{AlarmKey, Durability, StoredEvent};

/// What a door is doing, as far as the agent knows.
#[derive(Debug, Clone)]
pub(super) struct DoorState {
    pub open: Option<bool>,
    /// Why the current (or last) opening happened.
    pub cause: DoorCause,
    pub opened_at: Option<Instant>,
}

/// Who is waiting for a door to open after its lock was (or will be) fired.
#[derive(Debug, Clone)]
pub(super) enum Cause {
    Command(CommandId),
    Local(super::doors::LocalAccess),
}

impl Cause {
    pub fn door_cause(&self) -> DoorCause {
        match self {
            Cause::Command(id) => DoorCause::Command(*id),
            Cause::Local(_) => DoorCause::LocalAccess,
        }
    }
}

/// A lock fired (or about to be) whose door has not opened yet.
#[derive(Debug, Clone)]
pub(super) struct Pending {
    pub cause: Cause,
    /// Set once the pulse was written (or failed): the door must open before it.
    pub deadline: Option<Instant>,
    pub pulse_error: Option<String>,
}

pub(super) struct Core {
    pub cfg: Arc<AgentConfig>,
    pub cabinet: CabinetId,
    pub clock: Arc<dyn Clock>,
    pub clock_floor: u64,
    pub outbox: Outbox,
    pub window: Window,
    /// A contiguous run of stored events (fresh ones, or a read-ahead of a backlog), so events
    /// are published without a storage read each; at most two windows long.
    pub recent: VecDeque<StoredEvent>,
    pub mqtt: Option<AsyncClient>,
    pub mqtt_task: Option<JoinHandle<()>>,
    pub mqtt_rx: Option<mpsc::Receiver<MqttEvent>>,
    pub publish_blocked: Option<Instant>,
    pub io_tx: mpsc::Sender<IoRequest>,
    pub io_rx: mpsc::Receiver<IoEvent>,
    pub io_task: JoinHandle<()>,
    pub scanner_task: Option<JoinHandle<()>>,
    pub req_rx: mpsc::Receiver<Request>,
    pub doors: BTreeMap<CompartmentId, DoorState>,
    pub compartments: Vec<CompartmentInfo>,
    pub boards_offline: Vec<u8>,
    pub pending: HashMap<CompartmentId, Pending>,
    pub late: HashMap<CompartmentId, (DoorCause, Instant)>,
    pub jobs: HashMap<CommandId, Job>,
    pub waiters: HashMap<CommandId, oneshot::Sender<ExecOutcome>>,
    pub creds: CredCache,
    pub deposits: HashMap<u64, super::doors::LocalAccess>,
    pub next_token: u64,
    pub alarms: HashMap<AlarmKey, String>,
    pub power: super::doors::PowerState,
    pub power_save: bool,
    pub remembered: u64,
    pub counters: Counters,
    pub status_tx: watch::Sender<AgentStatus>,
    pub exit: Option<ExitReason>,
}

impl Core {
    pub async fn open(
        config: AgentConfig,
        deps: AgentDeps,
        req_rx: mpsc::Receiver<Request>,
        scans: ScanSender,
    ) -> Result<(Core, watch::Receiver<AgentStatus>), AgentError> {
        let cabinet = config.cabinet()?;
        let clock_floor = config.clock.floor_millis()?;
        let cfg = Arc::new(config);
        let (outbox, loaded) = Outbox::open(&deps.storage, &cabinet, cfg.outbox.clone()).await?;
        let cfg = super::exec::with_stored_settings(cfg, &loaded.config_overrides);
        let now = Instant::now();
        let window = Window::new(
            outbox.acked(),
            outbox.last_seq(),
            cfg.mqtt.window,
            Duration::from_millis(cfg.mqtt.ack_timeout_ms),
            now,
        );
        let mut compartments = Vec::new();
        let mut doors = BTreeMap::new();
        for b in &cfg.lock_boards {
            for i in 0..b.locks {
                let id = b.compartment(i);
                compartments.push(CompartmentInfo {
                    id,
                    size: b.size(i),
                });
                doors.insert(
                    id,
                    DoorState {
                        open: None,
                        cause: DoorCause::Unknown,
                        opened_at: None,
                    },
                );
            }
        }
        let (io_ev_tx, io_rx) = mpsc::channel(64);
        let (io_tx, io_task) = hw::spawn(&cfg, &deps.modbus, io_ev_tx);

        let (mqtt, mqtt_task, mqtt_rx) = if cfg.mqtt.enabled {
            let tls = match (&deps.tls, cfg.mqtt.tls) {
                (Some(t), true) => Some(t.clone()),
                (None, true) => {
                    let m = cfg.mqtt.clone();
                    Some(
                        tokio::task::spawn_blocking(move || {
                            session::client_config_from_files(
                                &m.ca_cert,
                                &m.client_cert,
                                &m.client_key,
                            )
                        })
                        .await
                        .map_err(|e| AgentError::Refused(format!("TLS loader: {e}")))??,
                    )
                }
                (_, false) => None,
            };
            let opts = session::mqtt::options(&cfg.mqtt, &cabinet, tls);
            let (ev_tx, ev_rx) = mpsc::channel(64);
            let (client, task) = session::mqtt::spawn(opts, &cfg.mqtt, ev_tx);
            (Some(client), Some(task), Some(ev_rx))
        } else {
            (None, None, None)
        };
        let scanner_task = crate::scanner::spawn(&cfg.scanner, scans);

        let status = AgentStatus {
            cabinet: cabinet.clone(),
            boot: outbox.boot(),
            running: true,
            mqtt_connected: false,
            outbox_depth: outbox.depth(),
            last_acked_seq: outbox.acked(),
            next_seq: outbox.next_seq(),
            alarms: Vec::new(),
            boards_offline: Vec::new(),
            open_doors: Vec::new(),
            known_doors: 0,
            creds_version: 0,
            power_save: false,
            counters: Counters::default(),
        };
        let (status_tx, status_rx) = watch::channel(status);
        let mut core = Core {
            cabinet,
            clock: deps.clock.clone(),
            clock_floor,
            outbox,
            window,
            recent: VecDeque::new(),
            mqtt,
            mqtt_task,
            mqtt_rx,
            publish_blocked: None,
            io_tx,
            io_rx,
            io_task,
            scanner_task,
            req_rx,
            doors,
            compartments,
            boards_offline: Vec::new(),
            pending: HashMap::new(),
            late: HashMap::new(),
            jobs: HashMap::new(),
            waiters: HashMap::new(),
            creds: CredCache::new(loaded.creds),
            deposits: HashMap::new(),
            next_token: 0,
            alarms: loaded.alarms.into_iter().collect(),
            power: Default::default(),
            power_save: false,
            remembered: loaded.remembered,
            counters: Counters::default(),
            status_tx,
            exit: None,
            cfg,
        };
        for id in loaded.interrupted {
            tracing::warn!(cabinet = %core.cabinet, command = %id, "command interrupted by restart; reporting it rejected");
            core.finish(
                id,
                locker_schemas::Outcome::Rejected,
                "interrupted by restart".into(),
            )
            .await;
        }
        core.publish_status();
        Ok((core, status_rx))
    }

    /// Wall-clock now.
    pub fn now_millis(&self) -> u64 {
        self.clock.now_millis()
    }

    /// Whether the wall clock can be trusted.
    pub fn clock_sane(&self) -> bool {
        self.now_millis() >= self.clock_floor
    }

    pub async fn run(mut self) -> ExitReason {
        let mut timer = Box::pin(tokio::time::sleep_until(Instant::now()));
        while self.exit.is_none() {
            let wake = self.next_wakeup();
            timer.as_mut().reset(wake);
            tokio::select! {
                req = self.req_rx.recv() => match req {
                    Some(r) => self.on_request(r).await,
                    None => self.exit = Some(ExitReason::Shutdown),
                },
                ev = self.io_rx.recv() => match ev {
                    Some(ev) => self.on_io(ev).await,
                    None => self.exit = Some(ExitReason::Failed("hardware task ended".into())),
                },
                ev = recv_opt(&mut self.mqtt_rx) => match ev {
                    Some(ev) => self.on_mqtt(ev).await,
                    None => {
                        tracing::error!(cabinet = %self.cabinet, "mqtt session task ended");
                        self.mqtt_rx = None;
                        self.window.on_disconnect();
                    }
                },
                _ = &mut timer => self.on_tick().await,
            }
            self.after_change().await;
        }
        self.stop().await
    }

    pub(super) fn next_wakeup(&self) -> Instant {
        let mut t = Instant::now() + Duration::from_secs(3_600);
        if let Some(d) = self.window.deadline() {
            t = t.min(d);
        }
        if let Some(b) = self.publish_blocked {
            t = t.min(b);
        }
        for p in self.pending.values() {
            if let Some(d) = p.deadline {
                t = t.min(d);
            }
        }
        let left_open = Duration::from_secs(self.cfg.timing.door_left_open_s);
        for (c, d) in &self.doors {
            if let (Some(true), Some(at)) = (d.open, d.opened_at) {
                if !self.alarms.contains_key(&door_left_open_key(*c)) {
                    t = t.min(at + left_open);
                }
            }
        }
        t
    }

    pub(super) async fn on_tick(&mut self) {
        let now = Instant::now();
        if self.window.on_tick(now) {
            self.counters.rewinds += 1;
            tracing::debug!(cabinet = %self.cabinet, from = self.window.next_send(), "no ack progress: resending from the first unacknowledged event");
        }
        if self.publish_blocked.is_some_and(|b| b <= now) {
            self.publish_blocked = None;
        }
        self.check_deadlines(now).await;
        self.check_left_open(now).await;
    }

    async fn on_request(&mut self, r: Request) {
        match r {
            Request::Execute { cmd, reply } => {
                self.on_command(cmd, Instant::now(), Some(reply)).await;
            }
            Request::Scan {
                source,
                value,
                reply,
            } => {
                let r = self.on_scan(source, value).await;
                self.publish_status();
                let _ = reply.send(r);
            }
            Request::Outbox { reply } => {
                let r = self.outbox.snapshot().await.map_err(|e| e.to_string());
                let _ = reply.send(r);
            }
            Request::Downlink { body, reply } => {
                self.handle_downlink(body, Instant::now()).await;
                self.publish_status();
                let _ = reply.send(());
            }
            Request::Shutdown => self.exit = Some(ExitReason::Shutdown),
        }
    }

    async fn on_mqtt(&mut self, ev: MqttEvent) {
        match ev {
            MqttEvent::Connected { session_present } => {
                self.counters.connects += 1;
                tracing::info!(cabinet = %self.cabinet, session_present, "connected to the gateway");
                if let Some(c) = &self.mqtt {
                    let f = Filter::cabinet_downlinks(&self.cabinet);
                    if let Err(e) = c.try_subscribe(f.as_str(), QoS::AtLeastOnce) {
                        tracing::error!(error = %e, "could not queue the subscription");
                    }
                }
                self.window.on_connect(Instant::now());
                self.publish_blocked = None;
                let hello = UplinkBody::Hello(Hello {
                    firmware: env!("CARGO_PKG_VERSION").into(),
                    hardware: self.cfg.hardware.clone(),
                    compartments: self.compartments.clone(),
                    network: self.cfg.network.kind.into(),
                    creds_version: self.creds.version(),
                });
                self.emit(hello, Vec::new()).await;
                if let Some(dbm) = self.cfg.network.signal_dbm {
                    let n = UplinkBody::Network(Network {
                        kind: self.cfg.network.kind.into(),
                        signal_dbm: Some(dbm),
                    });
                    self.emit(n, Vec::new()).await;
                }
            }
            MqttEvent::Disconnected { error } => {
                tracing::info!(cabinet = %self.cabinet, %error, "disconnected from the gateway");
                self.window.on_disconnect();
            }
            MqttEvent::Message(p, received) => {
                self.on_downlink(&p, received).await;
                if let Some(c) = &self.mqtt {
                    let _ = c.try_ack(&p);
                }
            }
        }
    }

    fn bad_downlink(&mut self, what: &str) {
        self.counters.bad_downlinks += 1;
        if self.counters.bad_downlinks.is_power_of_two() {
            tracing::warn!(cabinet = %self.cabinet, count = self.counters.bad_downlinks, "bad downlink: {what}");
        }
    }

    async fn on_downlink(&mut self, p: &Publish, received: Instant) {
        let kind = match p.topic.parse::<Topic>() {
            Ok(Topic::Down(cab, kind)) if cab == self.cabinet => kind,
            Ok(_) => return self.bad_downlink("topic of another cabinet or direction"),
            Err(_) => return self.bad_downlink("unparsable topic"),
        };
        let d = match codec::decode_downlink(&p.payload) {
            Ok(d) => d,
            Err(e) => return self.bad_downlink(e.label()),
        };
        if d.body.kind() != kind {
            return self.bad_downlink("body kind differs from topic kind");
        }
        self.handle_downlink(d.body, received).await;
    }

    /// Acts on a downlink (from MQTT or injected through the handle).
    pub async fn handle_downlink(&mut self, body: DownlinkBody, received: Instant) {
        match body {
            DownlinkBody::Ack(a) => self.on_ack(a.seq).await,
            DownlinkBody::Command(c) => self.on_command(c, received, None).await,
            DownlinkBody::Credentials(c) => self.on_credentials(c).await,
        }
    }

    async fn on_credentials(&mut self, c: locker_schemas::Credentials) {
        if c.version < self.creds.version() {
            tracing::warn!(
                held = self.creds.version(),
                got = c.version,
                "older credential set received; replacing anyway (the gateway is the authority)"
            );
        }
        let w = match crate::storage::creds_write(&c) {
            Ok(w) => w,
            Err(e) => return tracing::error!(error = %e, "credentials not stored"),
        };
        match self
            .outbox
            .with_tree(Durability::Flush, move |t| crate::storage::write(t, &[w]))
            .await
        {
            Ok(()) => {
                tracing::info!(cabinet = %self.cabinet, version = c.version, entries = c.entries.len(), "credential cache replaced");
                self.creds.replace(c);
            }
            Err(e) => {
                self.counters.storage_errors += 1;
                tracing::error!(error = %e, "credentials not stored");
            }
        }
    }

    async fn stop(mut self) -> ExitReason {
        let exit = self.exit.clone().unwrap_or(ExitReason::Shutdown);
        tracing::info!(cabinet = %self.cabinet, ?exit, "agent stopping");
        self.drain_jobs().await;
        if let Some(c) = self.mqtt.take() {
            let _ = c.try_disconnect();
        }
        if let Some(mut t) = self.mqtt_task.take() {
            if tokio::time::timeout(Duration::from_secs(2), &mut t)
                .await
                .is_err()
            {
                t.abort();
            }
        }
        if let Some(t) = self.scanner_task.take() {
            t.abort();
        }
        self.io_task.abort();
        if let Err(e) = self.outbox.storage().flush().await {
            tracing::error!(error = %e, "final flush failed");
        }
        for (_, w) in self.waiters.drain() {
            drop(w);
        }
        self.publish_status();
        self.status_tx.send_modify(|s| s.running = false);
        exit
    }
}

pub(super) fn door_left_open_key(c: CompartmentId) -> AlarmKey {
    AlarmKey {
        kind: locker_schemas::AlarmKind::DoorLeftOpen,
        compartment: Some(c),
        board: None,
    }
}

async fn recv_opt<T>(rx: &mut Option<mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}
