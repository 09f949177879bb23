//! The fleet simulator: N REAL agents (the `locker_agent` library) in one process, each with its
//! own simulated lock board and solar charge controller served in-process (see [`cabinet`]),
//! one shared sled database (a tree per agent) behind one storage worker, against a gateway
//! (see [`gateway`]) and its parcel domain. At start the parcel world is set up through the API
//! ([`world`]: sites, carriers with their own tokens, couriers with badges); then people follow
//! real orders ([`scenario`]): carriers create and cancel orders, couriers deposit through
//! remote unlocks, recipients learn their codes from the notification outbox ([`ledger`]) and
//! type them at the cabinets, which hold them because the gateway sent them their credential
//! sets over MQTT. The script ([`script`]) adds network outages for a share of the fleet (with
//! offline pickups), a gateway restart and nightfall on solar cabinets. At the end
//! [`Fleet::verify`] ([`verify`]) checks the invariants from the gateway's API, the boards and
//! what the people did ([`report`]).
//!
//! - [`link`]: the per-cabinet TLS configuration with its outage switch;
//! - [`api`]: the gateway API calls the fleet makes;
//! - [`alerts`]: the alerts the script's outage and nightfall must (and must not) raise;
//! - [`hooks`]: the integrator's webhook receiver, subscribed to every event at start; the
//!   report checks that every order transition arrived, signed, in order per cabinet;
//! - [`nodes`]: the gateway nodes of a run, one or a cluster's on NATS JetStream (its faults:
//!   `kill -9` of a gateway node and of a NATS server); [`nodecheck`]: the report's cluster
//!   checks (every node's audit log of every cabinet is the same).

pub mod alerts;
pub mod api;
pub mod cabinet;
mod couriers;
pub mod gateway;
pub mod hooks;
pub mod ledger;
pub mod link;
pub mod nodecheck;
pub mod nodes;
pub mod report;
pub mod scenario;
pub mod script;
pub mod sms;
mod start;
mod verify;
pub mod world;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use locker_schemas::CabinetId;
use rand::seq::SliceRandom;
use rand::Rng;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use self::api::Api;
use self::cabinet::{CabinetTemplate, SimCabinet};
use self::gateway::GatewayRunner;
use self::ledger::{Ledger, Stage};
use self::link::{FleetTls, LinkSwitch};
use self::scenario::{ScenarioCtx, ScenarioStats};
use self::world::World;

pub use self::nodes::ClusterFaults;
pub use self::start::{
    cabinet_ids, integrator_api, launch, prepare_pki, rss_kib, CertKey, GatewayMode, Launched,
};

/// Why the fleet could not run.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("PKI: {0}")]
    Pki(String),
    #[error("TLS: {0}")]
    Tls(#[from] link::LinkError),
    #[error("storage: {0}")]
    Storage(String),
    #[error("cabinet: {0}")]
    Cabinet(#[from] cabinet::CabinetError),
    #[error("gateway: {0}")]
    Gateway(#[from] gateway::GatewayError),
    #[error("gateway nodes: {0}")]
    Nodes(String),
    #[error("parcel world: {0}")]
    World(#[from] world::WorldError),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// How a fleet is built and what its script does. Times are real (wall) time.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    /// Number of cabinets.
    pub cabinets: usize,
    /// Cabinet ids are `{prefix}{n:06}`.
    pub prefix: String,
    /// Where the agents' shared sled database lives (`{dir}/agents.sled`).
    pub state_dir: PathBuf,
    /// Locks per cabinet (16, 24 or 48).
    pub locks: u16,
    /// Connections are started over this long, each at a random instant (jitter).
    pub ramp: Duration,
    /// Simulated seconds per real second (the chargers' day).
    pub speed: f64,
    /// Simulated hour of day at start.
    pub start_hour: f64,
    /// Scenarios (a deposit or a pickup) per cabinet per real minute.
    pub activity_per_min: f64,
    /// Share (0..=1) of the fleet that loses its network once.
    pub outage_share: f64,
    /// When the outage starts (share of the run) and how long it lasts.
    pub outage_at: f64,
    pub outage_for: Duration,
    /// Restart the gateway at this share of the run (if the simulator controls it).
    pub restart_at: Option<f64>,
    /// Night falls on the solar cabinets at this share of the run.
    pub nightfall_at: Option<f64>,
    /// Share (0..=1) of cabinets on solar power with a small battery.
    pub solar_share: f64,
    /// Agent reconnect backoff.
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    /// Doors close this long after they opened.
    pub auto_close: Duration,
    /// Solenoid pulse and door spring delay of the simulated boards (real boards: 100-300 ms
    /// and some 20 ms; the unlock benchmark uses 1 ms to measure the software path).
    pub pulse: Duration,
    pub spring: Duration,
    /// Cabinets per site.
    pub cabinets_per_site: usize,
    /// A recipient who never comes has their order recalled by the carrier this long after it
    /// became ready (for the orders in `recall_share`).
    pub recall_after: Duration,
    /// Share (0..=1) of orders whose recipient never comes and whose parcel expires: created
    /// with `pickup_window_min` = `expire_window_min` (1..=43200), then collected by a courier.
    pub expire_share: f64,
    pub expire_window_min: u32,
    /// Share (0..=1) of orders whose recipient never comes and which the carrier recalls.
    pub recall_share: f64,
    /// The edges of a cluster's gateway nodes: cabinet `i` connects to `edges[i % len]`
    /// (empty: every cabinet connects to the gateway's one edge).
    pub edges: Vec<std::net::SocketAddr>,
    /// The faults of a cluster run (ignored with one gateway).
    pub cluster_faults: ClusterFaults,
}

impl Default for FleetOptions {
    fn default() -> Self {
        Self {
            cabinets: 200,
            prefix: "CAB-".into(),
            state_dir: PathBuf::from("state/fleet"),
            locks: 16,
            ramp: Duration::from_secs(5),
            speed: 144.0,
            start_hour: 8.0,
            activity_per_min: 2.0,
            outage_share: 0.1,
            outage_at: 0.3,
            outage_for: Duration::from_secs(20),
            restart_at: Some(0.6),
            nightfall_at: Some(0.5),
            solar_share: 0.3,
            backoff_base_ms: 200,
            backoff_max_ms: 3_000,
            auto_close: Duration::from_millis(1_500),
            pulse: Duration::from_millis(100),
            spring: Duration::from_millis(20),
            cabinets_per_site: 50,
            recall_after: Duration::from_secs(20),
            expire_share: 0.1,
            expire_window_min: 1,
            recall_share: 0.05,
            edges: Vec::new(),
            cluster_faults: ClusterFaults::default(),
        }
    }
}

impl FleetOptions {
    /// A small fleet for a test run: `cabinets` cabinets keeping their state in `state_dir`,
    /// reconnecting within a second, stray doors closing by themselves after 3 s (long enough
    /// that a person slowed by a loaded test machine still finds a door open to put a parcel in
    /// or take it out), parcels recalled 3 s after expiry; no gateway restart, no nightfall, no
    /// solar cabinets. A test sets its script's fields on top.
    pub fn for_tests(cabinets: usize, state_dir: PathBuf) -> Self {
        Self {
            cabinets,
            state_dir,
            ramp: Duration::from_millis(500),
            restart_at: None,
            nightfall_at: None,
            solar_share: 0.0,
            backoff_base_ms: 100,
            backoff_max_ms: 1_000,
            auto_close: Duration::from_millis(3_000),
            recall_after: Duration::from_secs(3),
            ..Self::default()
        }
    }
}

/// A live summary of the fleet.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub cabinets: usize,
    pub running: usize,
    pub connected: usize,
    pub outbox: u64,
    pub alarms: usize,
    pub links_down: usize,
    pub deposits: u64,
    pub pickups: u64,
    pub commands: usize,
    pub api_errors: u64,
    pub scenarios_running: usize,
    pub orders: u64,
    /// What the fleet's webhook receiver counted (None without a subscription).
    pub webhooks: Option<hooks::HookCounts>,
    /// Messages the fleet's SMS provider received (None without one).
    pub sms: Option<u64>,
}

/// A running fleet.
pub struct Fleet {
    pub opts: FleetOptions,
    pub cabinets: Vec<Arc<SimCabinet>>,
    pub ctx: Arc<ScenarioCtx>,
    storage: locker_agent::Storage,
    scenarios: Arc<Semaphore>,
    pub outages_done: AtomicU64,
    /// What the script did, for the alert checks.
    pub timeline: alerts::Timeline,
    /// The recipients' phones: the notification outbox poller.
    notices: tokio::task::JoinHandle<()>,
    /// The integrator's webhook receiver and subscription ([`hooks`]), or why there is none.
    pub hooks: Result<hooks::FleetHooks, String>,
    /// The recipients' SMS provider and the last notice before the run ([`sms`]), or why
    /// there is none.
    pub sms: Result<(sms::SmsProvider, u64), String>,
    /// A cluster's nodes (name, API client), node 1 first; empty with one gateway. The report
    /// reads every cabinet's audit log on each ([`nodecheck`]).
    pub nodes: Vec<(String, Api)>,
}

const MAX_SCENARIOS: usize = 1_024;

impl Fleet {
    /// Builds the cabinets (hardware, certificates, agent configurations) and opens the shared
    /// database. Agents are not started yet (see [`Fleet::ramp_up`]). Every cabinet connects
    /// to `edge`, unless `opts.edges` spreads them over a cluster's nodes; `api` is the
    /// integrator's client ([`integrator_api`]).
    pub async fn build(
        opts: FleetOptions,
        certs: Vec<CertKey>,
        ca_der: &[u8],
        edge: std::net::SocketAddr,
        api: Api,
        ids: Vec<CabinetId>,
        world: World,
    ) -> Result<Self, FleetError> {
        let path = opts.state_dir.join("agents.sled");
        std::fs::create_dir_all(&opts.state_dir)?;
        let db = tokio::task::spawn_blocking(move || {
            sled::Config::new()
                .path(path)
                .cache_capacity(64 * 1024 * 1024)
                .flush_every_ms(None)
                .open()
        })
        .await
        .map_err(|e| FleetError::Storage(e.to_string()))?
        .map_err(|e| FleetError::Storage(e.to_string()))?;
        let storage = locker_agent::Storage::new(db, Duration::from_millis(20))
            .map_err(|e| FleetError::Storage(e.to_string()))?;
        let tls = FleetTls::new(ca_der)?;
        let t = CabinetTemplate {
            host: edge.ip().to_string(),
            port: edge.port(),
            locks: opts.locks,
            auto_close: opts.auto_close,
            pulse: opts.pulse,
            spring: opts.spring,
            backoff_base_ms: opts.backoff_base_ms,
            backoff_max_ms: opts.backoff_max_ms,
            speed: opts.speed,
        };
        let mut cabinets = Vec::with_capacity(ids.len());
        let solar_every = if opts.solar_share > 0.0 {
            (1.0 / opts.solar_share).round().max(1.0) as usize
        } else {
            usize::MAX
        };
        for (i, (id, (cert, key))) in ids.into_iter().zip(certs).enumerate() {
            let link = LinkSwitch::default();
            let cfg = tls.client_config(cert, key, link.clone())?;
            let solar = i % solar_every == 0;
            let mut t = t.clone();
            if let Some(edge) = opts.edges.get(i % opts.edges.len().max(1)) {
                (t.host, t.port) = (edge.ip().to_string(), edge.port());
            }
            cabinets.push(Arc::new(SimCabinet::new(
                id,
                &t,
                solar,
                cfg,
                link,
                storage.clone(),
                opts.start_hour,
            )?));
        }
        let carriers = (0..world.carriers.len())
            .map(|k| world.client(&api, k))
            .collect();
        let ctx = Arc::new(ScenarioCtx {
            api,
            world,
            carriers,
            ledger: Ledger::default(),
            stats: ScenarioStats::default(),
            commands: std::sync::Mutex::new(Vec::new()),
            cabinets: cabinets.clone(),
            locks: opts.locks,
            recall_after: opts.recall_after,
            expire_share: opts.expire_share.clamp(0.0, 1.0),
            expire_window_min: opts.expire_window_min.clamp(1, 43_200),
            recall_share: opts.recall_share.clamp(0.0, 1.0),
            run: rand::thread_rng().gen(),
            next: AtomicU64::new(1),
        });
        let c2 = ctx.clone();
        let notices = tokio::spawn(async move {
            loop {
                if c2.ledger.poll_notices(&c2.api).await < 1_000 {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        });
        let fleet = Self {
            opts,
            cabinets,
            ctx,
            storage,
            scenarios: Arc::new(Semaphore::new(MAX_SCENARIOS)),
            outages_done: AtomicU64::new(0),
            timeline: alerts::Timeline::default(),
            notices,
            hooks: Err("no subscription".into()),
            sms: Err("no SMS provider".into()),
            nodes: Vec::new(),
        };
        fleet.adopt_leftovers().await;
        Ok(fleet)
    }

    /// Starts every agent, each at a random instant within the ramp; returns once all started.
    pub async fn ramp_up(&self) -> Result<(), FleetError> {
        let ramp = self.opts.ramp;
        let start = Instant::now();
        let mut offsets: Vec<(Duration, usize)> = {
            let mut rng = rand::thread_rng();
            (0..self.cabinets.len())
                .map(|i| (ramp.mul_f64(rng.gen_range(0.0..1.0)), i))
                .collect()
        };
        offsets.sort();
        let gate = Arc::new(Semaphore::new(256));
        let mut tasks = tokio::task::JoinSet::new();
        for (at, i) in offsets {
            tokio::time::sleep_until(start + at).await;
            let cab = self.cabinets[i].clone();
            let permit = gate.clone().acquire_owned().await;
            tasks.spawn(async move {
                // its credential set comes from the gateway once it is connected
                let r = cab.start().await;
                drop(permit);
                r
            });
        }
        while let Some(r) = tasks.join_next().await {
            match r {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e.into()),
                Err(e) => return Err(FleetError::Storage(format!("start task: {e}"))),
            }
        }
        Ok(())
    }

    /// A live summary.
    pub fn snapshot(&self) -> Snapshot {
        let mut s = Snapshot {
            cabinets: self.cabinets.len(),
            ..Snapshot::default()
        };
        for c in &self.cabinets {
            if let Some((conn, outbox, alarms, _, _)) = c.brief() {
                s.running += 1;
                s.connected += usize::from(conn);
                s.outbox += outbox;
                s.alarms += alarms;
            }
            s.links_down += usize::from(c.link.is_down());
        }
        let (d, p) = self.ctx.stats.done();
        s.deposits = d;
        s.pickups = p;
        s.commands = self
            .ctx
            .commands
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        s.api_errors = self.ctx.stats.api_errors.load(Ordering::Relaxed);
        s.scenarios_running = MAX_SCENARIOS - self.scenarios.available_permits();
        s.orders = self.ctx.stats.orders_created.load(Ordering::Relaxed);
        s.webhooks = self.hooks.as_ref().ok().map(|h| h.receiver.counts(0));
        s.sms = self.sms.as_ref().ok().map(|(p, _)| p.received());
        s
    }

    /// Starts scenarios at random cabinets for one tick of `dt` (Poisson-ish at the configured
    /// rate); returns how many were started.
    pub fn tick(&self, dt: Duration, carry: &mut f64) -> usize {
        *carry += self.opts.activity_per_min * self.cabinets.len() as f64 * dt.as_secs_f64() / 60.0;
        let mut started = 0;
        let mut rng = rand::thread_rng();
        while *carry >= 1.0 {
            *carry -= 1.0;
            let i = rng.gen_range(0..self.cabinets.len());
            let cab = self.cabinets[i].clone();
            if cab.brief().is_none() || !cab.try_claim() {
                continue;
            }
            let Ok(permit) = self.scenarios.clone().try_acquire_owned() else {
                cab.release();
                continue;
            };
            let ctx = self.ctx.clone();
            tokio::spawn(async move {
                scenario::run(i, cab, ctx).await;
                drop(permit);
            });
            started += 1;
        }
        started
    }

    /// Cuts the network of a random `share` of the fleet: new connections fail and the current
    /// one is cut (at the edge for an in-process gateway, else by restarting the agent).
    /// Returns the indices cut.
    ///
    /// Cabinets where a recipient's parcel waits are cut first, and those recipients come
    /// during the outage: their pickups are served from the cabinet's credential cache and
    /// reach the gateway when the link returns.
    pub async fn start_outage(&self, gw: &GatewayRunner, share: f64) -> Vec<usize> {
        let n = ((self.cabinets.len() as f64) * share).round() as usize;
        let mut picked: Vec<usize> = {
            let mut rng = rand::thread_rng();
            let mut all: Vec<usize> = (0..self.cabinets.len()).collect();
            all.shuffle(&mut rng);
            all
        };
        let waiting = |i: &usize| {
            self.ctx
                .ledger
                .at(*i)
                .iter()
                .any(|o| o.stage == Stage::Ready && !o.no_show && o.pin.is_some())
        };
        // the outage waits a little for a recipient to be waiting somewhere (a busy test
        // machine can be slow to get the first parcels ready)
        let deadline = Instant::now() + Duration::from_secs(5);
        while !(0..self.cabinets.len()).any(|i| waiting(&i)) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // each key read once: scenarios change the ledger meanwhile (a stable sort keeps the
        // shuffle among equals)
        picked.sort_by_cached_key(|i| !waiting(i));
        picked.truncate(n.min(self.cabinets.len()));
        // the recipients who will come during the outage: their cabinet holds their code
        // (a cabinet busy with another scenario is waited for: an outage without a visitor
        // proves nothing about offline pickups)
        let checks = picked.iter().filter(|&i| waiting(i)).map(|&i| async move {
            let cab = &self.cabinets[i];
            let deadline = Instant::now() + Duration::from_secs(5);
            while !cab.try_claim() {
                if Instant::now() >= deadline {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if waiting(&i)
                && scenario::creds_current(i, cab, &self.ctx, Duration::from_secs(3)).await
            {
                Some(i)
            } else {
                cab.release();
                None
            }
        });
        let visitors: Vec<usize> = futures::future::join_all(checks)
            .await
            .into_iter()
            .flatten()
            .collect();
        for &i in &picked {
            let cab = &self.cabinets[i];
            cab.link.set_down(true);
            if !gw.disconnect(&cab.id).await {
                if let Err(e) = cab.start().await {
                    tracing::warn!(cabinet = %cab.id, error = %e, "restart into outage failed");
                }
            }
        }
        self.outages_done
            .fetch_add(picked.len() as u64, Ordering::Relaxed);
        for i in visitors {
            let cab = self.cabinets[i].clone();
            match self.scenarios.clone().try_acquire_owned() {
                Ok(permit) => {
                    let ctx = self.ctx.clone();
                    tokio::spawn(async move {
                        scenario::run(i, cab, ctx).await;
                        drop(permit);
                    });
                }
                Err(_) => cab.release(),
            }
        }
        picked
    }

    /// Restores the network of the given cabinets.
    pub fn end_outage(&self, cut: &[usize]) {
        for &i in cut {
            self.cabinets[i].link.set_down(false);
        }
    }

    /// Night falls on the solar cabinets (the chargers jump to 20:00 with the evening load).
    pub fn nightfall(&self) -> usize {
        let mut n = 0;
        for c in self.cabinets.iter().filter(|c| c.solar) {
            let _ = c.charger.set_time_of_day(20.0);
            let _ = c.charger.set_load_w(40.0);
            n += 1;
        }
        n
    }

    /// Waits for running scenarios, restores every link, then waits until every agent is
    /// connected with an empty outbox and every command created has an outcome.
    pub async fn settle(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let all = u32::try_from(MAX_SCENARIOS).unwrap_or(u32::MAX);
        if let Ok(Ok(p)) = tokio::time::timeout_at(deadline, self.scenarios.acquire_many(all)).await
        {
            drop(p);
        }
        for c in &self.cabinets {
            c.link.set_down(false);
        }
        while Instant::now() < deadline {
            let s = self.snapshot();
            if s.connected == s.cabinets && s.outbox == 0 && self.commands_final().await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        false
    }

    async fn commands_final(&self) -> bool {
        let cmds: Vec<String> = self
            .ctx
            .commands
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(_, id)| id.clone())
            .collect();
        for id in cmds {
            match self.ctx.api.command(&id).await {
                Ok(v) if v["outcome"].is_string() => {}
                _ => return false,
            }
        }
        true
    }

    /// Stops every agent (clean MQTT disconnect, storage flushed).
    pub async fn shutdown(&self) {
        let gate = Arc::new(Semaphore::new(512));
        let mut tasks = tokio::task::JoinSet::new();
        for c in &self.cabinets {
            let (c, gate) = (c.clone(), gate.clone());
            tasks.spawn(async move {
                let _p = gate.acquire_owned().await;
                c.stop().await;
            });
        }
        while tasks.join_next().await.is_some() {}
        self.notices.abort();
        let _ = self.storage.flush().await;
    }
}
