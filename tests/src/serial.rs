//! A pseudo-terminal pair standing in for an RS-485 line: Debian's `socat` links two ptys, and
//! the test gets two stable paths (`a` for the agent, `b` for the simulators) in a temp dir.
//! [`PtyPair::unplug`] kills socat and removes the links (the adapter is gone: the device node
//! vanishes, open ends see an error); [`PtyPair::plug`] starts it again with the same names.
//! Dropping the pair kills socat. `scripts/install-test-deps.sh` installs socat.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Two linked pseudo-terminals, as one serial line with a device at each end.
pub struct PtyPair {
    dir: tempfile::TempDir,
    socat: Option<Child>,
}

impl PtyPair {
    /// Starts socat and waits until both ends exist.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut pair = Self { dir, socat: None };
        pair.plug();
        pair
    }

    /// The agent's end.
    pub fn a(&self) -> PathBuf {
        self.dir.path().join("a")
    }

    /// The simulators' end.
    pub fn b(&self) -> PathBuf {
        self.dir.path().join("b")
    }

    /// Whether the line is plugged in (socat running).
    pub fn plugged(&self) -> bool {
        self.socat.is_some()
    }

    /// (Re)starts socat with the same link names and waits until both exist.
    pub fn plug(&mut self) {
        assert!(self.socat.is_none(), "the line is already plugged in");
        let end = |p: &Path| format!("pty,raw,echo=0,link={}", p.display());
        let child = Command::new("socat")
            .arg(end(&self.a()))
            .arg(end(&self.b()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("socat (run scripts/install-test-deps.sh)");
        self.socat = Some(child);
        // socat makes the links right after it starts: poll for them (a blocking wait in a
        // synchronous helper, bounded, no fixed sleep for correctness).
        let start = Instant::now();
        while !(self.a().exists() && self.b().exists()) {
            assert!(
                start.elapsed() < crate::wait::DEADLINE,
                "socat did not create {} and {}",
                self.a().display(),
                self.b().display()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Kills socat and removes the links: both ends fail and the device nodes are gone.
    pub fn unplug(&mut self) {
        if let Some(mut c) = self.socat.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(self.a());
        let _ = std::fs::remove_file(self.b());
    }
}

impl Drop for PtyPair {
    fn drop(&mut self) {
        self.unplug();
    }
}

/// A cabinet on one RS-485 line: three simulated lock boards (units 1, 2, 3; compartments
/// 1-16, 17-32, 33-48) and a charge controller (unit 10) served as Modbus RTU on the `b` end
/// of a [`PtyPair`], and the real agent started from an `agent.toml` (written to the temp dir)
/// that puts all four on the `a` end. MQTT is off: tests read the agent's outbox and status.
pub struct RtuCabinet {
    pub line: PtyPair,
    pub boards: Vec<locker_sim::LockBoardSim>,
    pub charger: locker_sim::ChargerSim,
    pub agent: locker_agent::AgentHandle,
    pub stats: locker_agent::hw::LineStats,
    pub config_path: PathBuf,
    _server: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

/// Locks per board of an [`RtuCabinet`].
pub const RTU_LOCKS: u16 = 16;

impl RtuCabinet {
    /// Starts the line, the simulators and the agent, and waits until every door was read.
    pub async fn start(id: &str) -> Self {
        crate::init_tracing();
        let line = PtyPair::start();
        let boards: Vec<_> = (1..=3u8)
            .map(|unit| {
                locker_sim::LockBoardSim::new(locker_sim::LockBoardConfig {
                    unit_id: unit,
                    locks: RTU_LOCKS,
                    pulse: Duration::from_millis(50),
                    spring: Duration::from_millis(20),
                    ..Default::default()
                })
                .expect("board")
            })
            .collect();
        let charger = locker_sim::ChargerSim::new(locker_sim::ChargerConfig {
            unit_id: 10,
            initial_soc_pct: 64.0,
            ..Default::default()
        })
        .expect("charger");
        let mut devices: Vec<std::sync::Arc<dyn locker_sim::ModbusDevice>> = boards
            .iter()
            .map(|b| std::sync::Arc::new(b.clone()) as std::sync::Arc<dyn locker_sim::ModbusDevice>)
            .collect();
        devices.push(std::sync::Arc::new(charger.clone()));
        let server = locker_sim::ModbusServer::new(devices).expect("units");
        let server = server.serve_rtu(
            line.b(),
            locker_sim::modbus::rtu::RtuOptions {
                baud: 115_200,
                emulate_wire: false,
            },
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let config_path = dir.path().join("agent.toml");
        let toml = format!(
            r#"cabinet_id = "{id}"
[mqtt]
enabled = false
[storage]
path = "{db}"
[timing]
sensor_poll_ms = 20
fast_poll_ms = 5
unlock_confirm_ms = 2000
modbus_reconnect_ms = 100
offline_after_failures = 3
[[serial_ports]]
name = "rs485"
path = "{port}"
baud = 115200
request_timeout_ms = 50
reopen_max_ms = 250
[[lock_boards]]
serial = "rs485"
unit = 1
locks = 16
first_compartment = 1
[[lock_boards]]
serial = "rs485"
unit = 2
locks = 16
first_compartment = 17
[[lock_boards]]
serial = "rs485"
unit = 3
locks = 16
first_compartment = 33
[charger]
serial = "rs485"
unit = 10
poll_s = 1
interval_s = 1
"#,
            db = dir.path().join("db").display(),
            port = line.a().display(),
        );
        std::fs::write(&config_path, toml).expect("write agent.toml");
        let config = locker_agent::AgentConfig::load(&config_path).expect("agent.toml is valid");
        let storage = locker_agent::Storage::open(&config.storage.path, Duration::from_millis(5))
            .expect("agent storage");
        let deps = locker_agent::AgentDeps::new(storage);
        let stats = deps.line_stats.clone();
        let agent = locker_agent::Agent::start(config, deps)
            .await
            .expect("agent starts");
        let cab = Self {
            line,
            boards,
            charger,
            agent,
            stats,
            config_path,
            _server: server,
            _dir: dir,
        };
        crate::eventually("every door on the line read once", || {
            cab.agent.status().known_doors == 3 * usize::from(RTU_LOCKS)
        })
        .await;
        cab
    }

    /// Unit ids of the boards the agent reports offline, in ascending order.
    pub fn offline(&self) -> Vec<u8> {
        let mut units = self.agent.status().boards_offline;
        units.sort_unstable();
        units
    }
}

impl Drop for RtuCabinet {
    fn drop(&mut self) {
        self._server.abort();
    }
}
