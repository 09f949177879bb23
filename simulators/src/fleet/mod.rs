//! The fleet simulator: N REAL agents (the `locker_agent` library) in one process, each with its
//! own simulated lock board and solar charge controller served in-process over
//! `tokio::io::duplex` (see [`cabinet`]), one shared sled database (a tree per agent) behind one
//! storage worker, against a gateway (see [`gateway`]), with scripted activity (see
//! [`scenario`]): couriers and recipients, network outages for a share of the fleet, a gateway
//! restart, nightfall on solar cabinets. At the end [`Fleet::verify`] checks the invariants from
//! the gateway's API (see [`report`]).
//!
//! - [`link`]: the per-cabinet TLS configuration with its outage switch;
//! - [`api`]: the gateway API calls the fleet makes.

pub mod api;
pub mod cabinet;
pub mod gateway;
pub mod link;
pub mod report;
pub mod scenario;
pub mod script;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use locker_broker_config::pki::{Pki, Role};
use locker_schemas::CabinetId;
use rand::Rng;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use self::api::Api;
use self::cabinet::{CabinetTemplate, SimCabinet};
use self::gateway::GatewayRunner;
use self::link::{FleetTls, LinkSwitch};
use self::report::{check_cabinet, CabinetFacts, Report};
use self::scenario::{ScenarioCtx, ScenarioStats};

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
        }
    }
}

/// The cabinet ids of a fleet.
pub fn cabinet_ids(prefix: &str, n: usize) -> Result<Vec<CabinetId>, FleetError> {
    (1..=n)
        .map(|i| {
            CabinetId::new(format!("{prefix}{i:06}")).map_err(|e| FleetError::Pki(e.to_string()))
        })
        .collect()
}

/// A cabinet's certificate and PKCS#8 key, DER.
pub type CertKey = (Vec<u8>, Vec<u8>);

/// Opens the PKI in `dir` (or creates it for `localhost` and `127.0.0.1`), issues certificates
/// in one batch for the cabinets that have none, and returns each cabinet's (cert, key) DER.
pub fn prepare_pki(dir: &Path, ids: &[CabinetId]) -> Result<(Pki, Vec<CertKey>), FleetError> {
    let pe = |e: locker_broker_config::pki::PkiError| FleetError::Pki(e.to_string());
    let mut pki = if dir.join("ca.pem").exists() {
        Pki::open(dir).map_err(pe)?
    } else {
        Pki::init(dir, &["localhost".into(), "127.0.0.1".into()]).map_err(pe)?
    };
    pki.set_fsync(false);
    let missing: Vec<CabinetId> = ids
        .iter()
        .filter(|id| !pki.paths().client_cert(Role::Cabinet, id.as_str()).exists())
        .cloned()
        .collect();
    for chunk in missing.chunks(1_000) {
        pki.issue_cabinets(chunk).map_err(pe)?;
    }
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let cert_path = pki.paths().client_cert(Role::Cabinet, id.as_str());
        let key_path = cert_path.with_extension("key");
        let cert = first_pem(&std::fs::read(&cert_path)?, false)
            .ok_or_else(|| FleetError::Pki(format!("{}: no certificate", cert_path.display())))?;
        let key = first_pem(&std::fs::read(&key_path)?, true)
            .ok_or_else(|| FleetError::Pki(format!("{}: no key", key_path.display())))?;
        out.push((cert, key));
    }
    Ok((pki, out))
}

fn first_pem(pem: &[u8], key: bool) -> Option<Vec<u8>> {
    if key {
        match rustls_pemfile::private_key(&mut &pem[..]).ok()?? {
            rustls_pki_types::PrivateKeyDer::Pkcs8(k) => Some(k.secret_pkcs8_der().to_vec()),
            _ => None,
        }
    } else {
        rustls_pemfile::certs(&mut &pem[..])
            .next()?
            .ok()
            .map(|c| c.to_vec())
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
}

/// A running fleet.
pub struct Fleet {
    pub opts: FleetOptions,
    pub cabinets: Vec<Arc<SimCabinet>>,
    pub ctx: Arc<ScenarioCtx>,
    storage: locker_agent::Storage,
    scenarios: Arc<Semaphore>,
    pub outages_done: AtomicU64,
}

const MAX_SCENARIOS: usize = 1_024;

impl Fleet {
    /// Builds the cabinets (hardware, certificates, agent configurations) and opens the shared
    /// database. Agents are not started yet (see [`Fleet::ramp_up`]).
    pub async fn build(
        opts: FleetOptions,
        certs: Vec<CertKey>,
        ca_der: &[u8],
        gw: &GatewayRunner,
        ids: Vec<CabinetId>,
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
            host: gw.edge.ip().to_string(),
            port: gw.edge.port(),
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
        let ctx = Arc::new(ScenarioCtx {
            api: Api::new(gw.api, &gw.token),
            stats: ScenarioStats::default(),
            commands: std::sync::Mutex::new(Vec::new()),
        });
        Ok(Self {
            opts,
            cabinets,
            ctx,
            storage,
            scenarios: Arc::new(Semaphore::new(MAX_SCENARIOS)),
            outages_done: AtomicU64::new(0),
        })
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
                let mut r = cab.start().await;
                if r.is_ok() {
                    // The parcel service hands the cabinet its credential set.
                    r = cab.sync_credentials(locker_schemas::now_millis()).await;
                }
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
    pub async fn start_outage(&self, gw: &GatewayRunner, share: f64) -> Vec<usize> {
        let n = ((self.cabinets.len() as f64) * share).round() as usize;
        let picked: Vec<usize> = {
            let mut rng = rand::thread_rng();
            rand::seq::index::sample(&mut rng, self.cabinets.len(), n.min(self.cabinets.len()))
                .into_vec()
        };
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

    /// Checks the invariants against the gateway's API (see [`report`]).
    pub async fn verify(&self) -> Report {
        let mut by_cab: Vec<Vec<String>> = vec![Vec::new(); self.cabinets.len()];
        for (i, id) in self
            .ctx
            .commands
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            by_cab[*i].push(id.clone());
        }
        let mut report = Report::default();
        let api = self.ctx.api.clone();
        let gate = Arc::new(Semaphore::new(16));
        let mut tasks = tokio::task::JoinSet::new();
        for (i, cab) in self.cabinets.iter().enumerate() {
            let (cab, api, cmds, gate) =
                (cab.clone(), api.clone(), by_cab[i].clone(), gate.clone());
            tasks.spawn(async move {
                let _p = gate.acquire_owned().await;
                // Read the agent, then the audit log, then the agent again: compare only when
                // the agent made no event in between (a door or a battery can report any time).
                let mut events = api.events(cab.id.as_str()).await;
                let mut brief = cab.brief();
                for _ in 0..20 {
                    let before = cab.brief();
                    if before.is_some_and(|b| b.1 == 0) {
                        events = api.events(cab.id.as_str()).await;
                        brief = cab.brief();
                        if brief == before {
                            break;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                let mut outcomes = Vec::with_capacity(cmds.len());
                for id in cmds {
                    let o = api
                        .command(&id)
                        .await
                        .ok()
                        .and_then(|v| v["outcome"].as_str().map(str::to_owned));
                    outcomes.push((id, o));
                }
                (cab, events, outcomes, brief)
            });
        }
        while let Some(r) = tasks.join_next().await {
            let Ok((cab, events, outcomes, brief)) = r else {
                report.problem("a verification task failed".into());
                continue;
            };
            let events = match events {
                Ok(e) => e,
                Err(e) => {
                    report.problem(format!("{}: audit log not readable: {e}", cab.id));
                    continue;
                }
            };
            let (_, outbox, _, acked, next) = brief.unwrap_or((false, u64::MAX, 0, 0, 1));
            check_cabinet(
                &mut report,
                &CabinetFacts {
                    id: cab.id.as_str(),
                    events: &events,
                    agent_last_seq: next.saturating_sub(1),
                    agent_outbox: outbox,
                    agent_acked: acked,
                    board_pulses: cab.board.total_pulses(),
                    first_seq: cab.first_seq.load(Ordering::Acquire),
                    commands: &outcomes,
                },
            );
        }
        report
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
        let _ = self.storage.flush().await;
    }
}

/// Which gateway a fleet runs against.
#[derive(Debug, Clone)]
pub enum GatewayMode {
    /// Started in this process (the `locker_gateway` library) on free ports.
    InProcess,
    /// Started in this process on these edge and API addresses.
    InProcessAt {
        edge: std::net::SocketAddr,
        api: std::net::SocketAddr,
    },
    /// Started as a child process from this `locker-gateway` binary.
    Child { bin: PathBuf },
    /// Already running elsewhere.
    External {
        edge: std::net::SocketAddr,
        api: std::net::SocketAddr,
        token: String,
    },
}

/// Everything a run needs, started.
pub struct Launched {
    pub fleet: Fleet,
    pub gateway: GatewayRunner,
    pub pki: Pki,
    /// The process RSS (KiB) before the cabinets were built.
    pub rss_before_kib: Option<u64>,
}

/// Prepares the PKI in `pki_dir`, starts (or reaches) the gateway with its data in
/// `{state_dir}/gateway`, and builds the fleet (agents not yet started).
pub async fn launch(
    opts: FleetOptions,
    pki_dir: &Path,
    mode: GatewayMode,
    token: &str,
) -> Result<Launched, FleetError> {
    let ids = cabinet_ids(&opts.prefix, opts.cabinets)?;
    let dir = pki_dir.to_path_buf();
    let ids2 = ids.clone();
    let (pki, certs) = tokio::task::spawn_blocking(move || prepare_pki(&dir, &ids2))
        .await
        .map_err(|e| FleetError::Pki(e.to_string()))??;
    let gw_dir = opts.state_dir.join("gateway");
    let gateway = match mode {
        GatewayMode::InProcess => {
            let cfg = gateway::fleet_gateway_config(
                &gw_dir,
                pki.paths(),
                ([127, 0, 0, 1], 0).into(),
                ([127, 0, 0, 1], 0).into(),
                token,
            );
            GatewayRunner::in_process(cfg, token).await?
        }
        GatewayMode::InProcessAt { edge, api } => {
            let cfg = gateway::fleet_gateway_config(&gw_dir, pki.paths(), edge, api, token);
            GatewayRunner::in_process(cfg, token).await?
        }
        GatewayMode::Child { bin } => {
            let cfg = gateway::fleet_gateway_config(
                &gw_dir,
                pki.paths(),
                ([127, 0, 0, 1], 0).into(),
                ([127, 0, 0, 1], 0).into(),
                token,
            );
            GatewayRunner::child(&bin, &cfg, &gw_dir, token).await?
        }
        GatewayMode::External { edge, api, token } => GatewayRunner::external(edge, api, &token),
    };
    let rss_before_kib = rss_kib(None);
    let ca = pki.ca_cert_der().to_vec();
    let fleet = Fleet::build(opts, certs, &ca, &gateway, ids).await?;
    Ok(Launched {
        fleet,
        gateway,
        pki,
        rss_before_kib,
    })
}

/// Resident memory of a process in KiB (`/proc/PID/status` VmRSS); `None` off Linux.
pub fn rss_kib(pid: Option<u32>) -> Option<u64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/status"),
        None => "/proc/self/status".to_owned(),
    };
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}
