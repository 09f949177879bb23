//! The gateway a fleet runs against: started in-process (the `locker_gateway` library), started
//! as a child process (the `locker-gateway` binary, so its memory can be measured and it can be
//! killed with SIGKILL), or external (only its addresses are known).
//!
//! [`GatewayRunner::restart`] restarts the first two on the same addresses; the child is killed
//! hard (`kill -9`), which is the harsher test of "nothing acknowledged is lost".
//!
//! [`SimRules`] gives the gateway's rules engine times scaled to the run (a simulated day passes
//! in minutes, an outage lasts seconds), so the script's outage and nightfall raise the alerts
//! the invariant report expects.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use locker_broker_config::pki::PkiPaths;
use locker_gateway::app::Gateway;
use locker_gateway::config::GatewayConfig;
use locker_gateway::edge::Identity;
use locker_schemas::CabinetId;
use serde_json::json;

use super::FleetOptions;

/// Why the gateway could not be started or restarted.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("in-process gateway: {0}")]
    Start(String),
    #[error("gateway configuration: {0}")]
    Config(String),
    #[error("cannot run {bin}: {source}")]
    Spawn { bin: String, source: std::io::Error },
    #[error("the gateway did not become healthy at {0} in time")]
    NotHealthy(SocketAddr),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

// One per simulator process: the size of its variants does not matter.
#[allow(clippy::large_enum_variant)]
enum Target {
    InProcess {
        gw: Option<Box<Gateway>>,
        cfg: Box<GatewayConfig>,
    },
    Child {
        child: Option<tokio::process::Child>,
        bin: PathBuf,
        config_path: PathBuf,
        log_path: PathBuf,
        /// The edge and API ports, held across restarts of the child.
        _ports: Vec<PortReservation>,
    },
    External,
}

/// A gateway and how to reach it.
pub struct GatewayRunner {
    target: Target,
    /// The mTLS MQTT edge.
    pub edge: SocketAddr,
    /// The HTTP API.
    pub api: SocketAddr,
    /// A bearer token the API accepts.
    pub token: String,
    restarts: u32,
}

impl std::fmt::Debug for GatewayRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GatewayRunner(edge={}, api={})", self.edge, self.api)
    }
}

/// A gateway configuration for a fleet: PKI paths, loopback listeners, the given token, and
/// dispatcher timings suited to a simulation.
pub fn fleet_gateway_config(
    data_dir: &Path,
    pki: &PkiPaths,
    edge: SocketAddr,
    api: SocketAddr,
    token: &str,
) -> GatewayConfig {
    let mut cfg = GatewayConfig {
        data_dir: data_dir.to_path_buf(),
        ..GatewayConfig::default()
    };
    cfg.edge.listen = edge;
    cfg.edge.ca_cert = pki.ca_cert();
    cfg.edge.server_cert = pki.server_cert();
    cfg.edge.server_key = pki.server_key();
    cfg.edge.crl = Some(pki.crl());
    cfg.edge.max_connections = 60_000;
    cfg.edge.integrator_acls = std::collections::BTreeMap::from([(
        "demo-integrator".to_owned(),
        vec![
            locker_schemas::Filter::all_uplinks(),
            locker_schemas::Filter::all_streams(),
        ],
    )]);
    cfg.api.listen = api;
    cfg.api.tokens = HashMap::from([(token.to_owned(), "fleet-sim".into())]);
    cfg.commands.resend_after_ms = 2_000;
    cfg.commands.tick_ms = 100;
    // the fleet's webhook receiver listens on http://127.0.0.1; retries paced for a run of
    // minutes (a receiver down for seconds is caught up within a few seconds)
    cfg.webhooks.allow_http = true;
    cfg.webhooks.retry_base_ms = 200;
    cfg.webhooks.retry_max_ms = 2_000;
    cfg
}

/// How often a solar cabinet's agent polls its charge controller and reports Power, seconds
/// (`charger.poll_s`, with `interval_s` under it so every poll reports): about five simulated
/// minutes at x144. The other cabinets report every 10 min (and at SoC thresholds).
pub const SOLAR_REPORT_S: u64 = 2;

/// The rules the simulator gives the gateway, scaled to the run. The gateway judges real
/// (wall) time while the chargers' clock runs `speed` times faster and an outage lasts seconds:
/// - `offline.after_ms`: 40 % of the outage (at least 1 s), so every cut cabinet raises exactly
///   one `offline` alert and a reconnect after a gateway restart (well under it) raises none;
///   no `sync_credentials` on return (its commands would not be the simulator's own, which the
///   invariant report counts one outcome each for);
/// - power: the battery a solar cabinet drains in simulated hours holds `speed` times less
///   energy in real hours (`battery_wh` = 240 Wh / speed, `empty_within_h` = 48 h / speed);
///   the solar window is 24 slots of [`SOLAR_REPORT_S`] (48 s: a slot must outlast half the
///   gap between reports) and is judged after 4 slots of telemetry; `battery_low.for_ms` is
///   5 simulated minutes;
/// - `door_left_open.after_ms` well above the sim's `auto_close` (ordinary pickups never
///   alert); every other duration is scaled by `speed` (e.g. `queue_waiting` 1 simulated hour).
#[derive(Debug, Clone, PartialEq)]
pub struct SimRules {
    pub speed: f64,
    /// How often the engine evaluates timed conditions, ms.
    pub tick_ms: u64,
    pub offline_after_ms: u64,
    pub door_left_open_ms: u64,
    pub battery_low_for_ms: u64,
    pub solar_window_ms: u64,
    pub solar_min_coverage_ms: u64,
    /// The solar cabinets' battery, Wh (simulated).
    pub solar_battery_wh: f64,
}

/// The capacity of a solar cabinet's battery (see [`super::cabinet`]), Wh.
pub const SOLAR_BATTERY_WH: f64 = 240.0;

impl SimRules {
    /// The rules for a fleet run with these options.
    pub fn for_fleet(o: &FleetOptions) -> Self {
        let speed = if o.speed.is_finite() && o.speed >= 1.0 {
            o.speed
        } else {
            1.0
        };
        let slot_ms = SOLAR_REPORT_S * 1_000;
        Self {
            speed,
            tick_ms: 200,
            offline_after_ms: (o.outage_for.as_millis() as u64 * 2 / 5).max(1_000),
            door_left_open_ms: (o.auto_close.as_millis() as u64 * 10)
                .max(scale(5 * 60_000, speed))
                .max(5_000),
            battery_low_for_ms: scale(5 * 60_000, speed),
            solar_window_ms: 24 * slot_ms,
            solar_min_coverage_ms: 4 * slot_ms,
            solar_battery_wh: SOLAR_BATTERY_WH,
        }
    }

    /// Slack on top of `offline.after_ms` before a cut cabinet must have its alert: a few
    /// ticks and more for a loaded machine (the offline time it is compared with is a lower
    /// bound measured by the simulator: from the cut to the last moment its agent was seen
    /// disconnected).
    pub fn offline_slack_ms(&self) -> u64 {
        3 * self.tick_ms + 600
    }

    /// How long after nightfall a solar cabinet must have a `solar_deficit` or `battery_low`
    /// alert: by then the window holds only night samples (no PV, the evening load), whose
    /// balance empties even a full battery within `empty_within_h`; or the battery is flat and
    /// under `battery_low` (the controller cut the load). Plus reports, ticks and slack.
    pub fn night_alert_within(&self) -> Duration {
        let slot = SOLAR_REPORT_S * 1_000;
        Duration::from_millis(
            self.solar_window_ms + 3 * slot + self.battery_low_for_ms + 4 * self.tick_ms + 5_000,
        )
    }

    /// Writes the rules into the gateway's `[rules]` table.
    pub fn apply(&self, cfg: &mut GatewayConfig) {
        let s = self.speed;
        let r = &mut cfg.rules;
        r.tick_ms = self.tick_ms;
        let tables = [
            (
                "offline",
                json!({"after_ms": self.offline_after_ms, "sync_credentials_after_ms": 0}),
            ),
            (
                "flapping",
                json!({"window_ms": scale(15 * 60_000, s).max(5_000)}),
            ),
            (
                "replay_backlog",
                json!({"age_ms": scale(3_600_000, s), "hold_ms": scale(10 * 60_000, s)}),
            ),
            ("network_failover", json!({"for_ms": scale(10 * 60_000, s)})),
            ("battery_low", json!({"for_ms": self.battery_low_for_ms})),
            (
                "solar_deficit",
                json!({
                    "window_ms": self.solar_window_ms,
                    "min_coverage_ms": self.solar_min_coverage_ms,
                    "battery_wh": self.solar_battery_wh / s,
                    "empty_within_h": 48.0 / s,
                    "clear_beyond_h": 72.0 / s,
                }),
            ),
            ("charger_fault", json!({"for_ms": scale(60_000, s)})),
            ("on_battery", json!({"for_ms": scale(2 * 60_000, s)})),
            (
                "door_left_open",
                json!({"after_ms": self.door_left_open_ms}),
            ),
            (
                "lock_jammed",
                json!({"window_ms": scale(24 * 3_600_000, s)}),
            ),
            (
                "parcel_sensor",
                json!({"clear_after_ms": scale(24 * 3_600_000, s)}),
            ),
            ("queue_waiting", json!({"waiting_ms": scale(3_600_000, s)})),
            (
                "command_no_outcome",
                json!({"clear_after_ms": scale(24 * 3_600_000, s)}),
            ),
            ("board_offline", json!({"for_ms": scale(60_000, s)})),
        ];
        for (k, v) in tables {
            r.rules.insert(k.into(), v);
        }
    }
}

/// A duration of the simulated world in real ms (at least 1 ms).
fn scale(ms: u64, speed: f64) -> u64 {
    ((ms as f64 / speed).round() as u64).max(1)
}

/// A loopback port held for a server that is started (and restarted) later, without the race
/// of "bind port 0, read the port, release it, hope nobody takes it".
///
/// The reservation is a socket bound with `SO_REUSEADDR` that never listens: while it lives,
/// no other socket can bind the port (the kernel does not hand it out for port 0 either) and a
/// connection to it is refused, yet a server that binds with `SO_REUSEADDR` (tokio's and std's
/// listeners, Mosquitto) can listen on it, and listen again after a restart. Linux semantics.
#[derive(Debug)]
pub struct PortReservation {
    _socket: tokio::net::TcpSocket,
    addr: SocketAddr,
}

impl PortReservation {
    /// Reserves a free port on 127.0.0.1.
    pub fn loopback() -> Result<Self, std::io::Error> {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket.bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let addr = socket.local_addr()?;
        Ok(Self {
            _socket: socket,
            addr,
        })
    }

    /// The reserved address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Where the `locker-gateway` binary is expected: next to the running executable (or one
/// level up, for test executables in `target/*/deps`).
pub fn default_gateway_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    let here = dir.join("locker-gateway");
    if here.exists() {
        return here;
    }
    dir.parent()
        .map(|p| p.join("locker-gateway"))
        .unwrap_or(here)
}

impl GatewayRunner {
    /// Starts the gateway in this process.
    pub async fn in_process(cfg: GatewayConfig, token: &str) -> Result<Self, GatewayError> {
        let gw = Gateway::start(cfg.clone())
            .await
            .map_err(|e| GatewayError::Start(e.to_string()))?;
        let (edge, api) = (gw.edge_addr, gw.api_addr);
        let mut cfg = Box::new(cfg);
        // A restart reuses the addresses the first start bound.
        cfg.edge.listen = edge;
        cfg.api.listen = api;
        Ok(Self {
            target: Target::InProcess {
                gw: Some(Box::new(gw)),
                cfg,
            },
            edge,
            api,
            token: token.to_owned(),
            restarts: 0,
        })
    }

    /// Starts the `locker-gateway` binary with `cfg` (written to `dir/gateway.toml`) and waits
    /// until its API answers. A listener on port 0 gets a reserved loopback port (see
    /// [`PortReservation`]), held as long as the runner so restarts come back on it.
    pub async fn child(
        bin: &Path,
        cfg: &GatewayConfig,
        dir: &Path,
        token: &str,
    ) -> Result<Self, GatewayError> {
        std::fs::create_dir_all(dir)?;
        let mut cfg = cfg.clone();
        let mut ports = Vec::new();
        for addr in [&mut cfg.edge.listen, &mut cfg.api.listen] {
            if addr.port() == 0 {
                let r = PortReservation::loopback()?;
                *addr = r.addr();
                ports.push(r);
            }
        }
        let config_path = dir.join("gateway.toml");
        let text = toml::to_string(&cfg).map_err(|e| GatewayError::Config(e.to_string()))?;
        std::fs::write(&config_path, text)?;
        let mut r = Self {
            target: Target::Child {
                child: None,
                bin: bin.to_path_buf(),
                config_path,
                log_path: dir.join("gateway.log"),
                _ports: ports,
            },
            edge: cfg.edge.listen,
            api: cfg.api.listen,
            token: token.to_owned(),
            restarts: 0,
        };
        r.spawn_child().await?;
        Ok(r)
    }

    /// A gateway run by someone else.
    pub fn external(edge: SocketAddr, api: SocketAddr, token: &str) -> Self {
        Self {
            target: Target::External,
            edge,
            api,
            token: token.to_owned(),
            restarts: 0,
        }
    }

    async fn spawn_child(&mut self) -> Result<(), GatewayError> {
        let api = self.api;
        if let Target::Child {
            child,
            bin,
            config_path,
            log_path,
            ..
        } = &mut self.target
        {
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&*log_path)?;
            let c = tokio::process::Command::new(&*bin)
                .arg("--config")
                .arg(&*config_path)
                .env(
                    "RUST_LOG",
                    std::env::var("GATEWAY_LOG").unwrap_or_else(|_| "warn".into()),
                )
                .stdout(std::process::Stdio::null())
                .stderr(log)
                .kill_on_drop(true)
                .spawn()
                .map_err(|source| GatewayError::Spawn {
                    bin: bin.display().to_string(),
                    source,
                })?;
            *child = Some(c);
        }
        wait_healthy(api, Duration::from_secs(60)).await
    }

    /// The child's process id (for its RSS), if it runs as a child.
    pub fn pid(&self) -> Option<u32> {
        match &self.target {
            Target::Child { child, .. } => child.as_ref().and_then(|c| c.id()),
            _ => None,
        }
    }

    /// The in-process gateway, if any.
    pub fn in_process_gateway(&self) -> Option<&Gateway> {
        match &self.target {
            Target::InProcess { gw, .. } => gw.as_deref(),
            _ => None,
        }
    }

    /// Whether the simulator controls the gateway (so it can restart it).
    pub fn can_restart(&self) -> bool {
        !matches!(self.target, Target::External)
    }

    /// How many restarts were done.
    pub fn restarts(&self) -> u32 {
        self.restarts
    }

    /// Cuts a cabinet's connection at the edge (in-process only); false if not possible.
    pub async fn disconnect(&self, id: &CabinetId) -> bool {
        match &self.target {
            Target::InProcess { gw: Some(gw), .. } => {
                gw.edge.disconnect(&Identity::Cabinet(id.clone())).await;
                true
            }
            _ => false,
        }
    }

    /// Restarts the gateway: in-process, a clean shutdown and a start on the same addresses;
    /// a child, `kill -9` and a start. Returns false for an external gateway.
    pub async fn restart(&mut self) -> Result<bool, GatewayError> {
        match &mut self.target {
            Target::External => return Ok(false),
            Target::InProcess { gw, cfg } => {
                if let Some(g) = gw.take() {
                    g.shutdown().await;
                }
                let mut last = None;
                // The old listeners are closed; retry briefly in case the OS is slow to free them.
                for _ in 0..50 {
                    match Gateway::start((**cfg).clone()).await {
                        Ok(g) => {
                            *gw = Some(Box::new(g));
                            last = None;
                            break;
                        }
                        Err(e) => {
                            last = Some(e.to_string());
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
                if let Some(e) = last {
                    return Err(GatewayError::Start(e));
                }
            }
            Target::Child { child, .. } => {
                if let Some(mut c) = child.take() {
                    let _ = c.kill().await;
                }
                self.spawn_child().await?;
            }
        }
        self.restarts += 1;
        Ok(true)
    }

    /// Kills the child gateway (`kill -9`) without starting it again (see [`Self::respawn`]).
    pub async fn kill(&mut self) -> bool {
        if let Target::Child { child, .. } = &mut self.target {
            if let Some(mut c) = child.take() {
                let _ = c.kill().await;
                return true;
            }
        }
        false
    }

    /// Starts the killed child gateway again and waits until its API answers.
    pub async fn respawn(&mut self) -> Result<(), GatewayError> {
        self.spawn_child().await?;
        self.restarts += 1;
        Ok(())
    }

    /// Stops the gateway (in-process: drains and flushes; child: SIGTERM, then kill).
    pub async fn stop(mut self) {
        match &mut self.target {
            Target::InProcess { gw, .. } => {
                if let Some(g) = gw.take() {
                    g.shutdown().await;
                }
            }
            Target::Child { child, .. } => {
                if let Some(mut c) = child.take() {
                    if let Some(pid) = c.id() {
                        let _ = std::process::Command::new("kill")
                            .arg("-TERM")
                            .arg(pid.to_string())
                            .status();
                    }
                    if tokio::time::timeout(Duration::from_secs(20), c.wait())
                        .await
                        .is_err()
                    {
                        let _ = c.kill().await;
                    }
                }
            }
            Target::External => {}
        }
    }
}

/// Polls `GET /healthz` until it answers 200.
pub async fn wait_healthy(api: SocketAddr, limit: Duration) -> Result<(), GatewayError> {
    let client = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if let Ok(r) = client.get(format!("http://{api}/healthz")).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(GatewayError::NotHealthy(api))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The scaled rules are valid for the gateway and survive the child's gateway.toml.
    #[test]
    fn scaled_rules_compile_and_survive_toml() {
        let opts = FleetOptions {
            outage_for: Duration::from_secs(3),
            auto_close: Duration::from_millis(800),
            ..FleetOptions::default()
        };
        let rules = SimRules::for_fleet(&opts);
        assert_eq!(rules.offline_after_ms, 1_200);
        assert!(rules.door_left_open_ms >= 8_000);
        let mut cfg = GatewayConfig::default();
        rules.apply(&mut cfg);
        let compiled = cfg.rules.compile().expect("the scaled rules are valid");
        assert_eq!(compiled.fleet.offline.after_ms, 1_200);
        assert_eq!(compiled.fleet.solar_deficit.window_ms, 48_000);
        let text = toml::to_string(&cfg).expect("toml");
        let back: GatewayConfig = toml::from_str(&text).expect("read back");
        let again = back.rules.compile().expect("valid after toml");
        assert_eq!(again.fleet, compiled.fleet);
        assert_eq!(back.rules.tick_ms, 200);
    }
}
