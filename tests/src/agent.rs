//! A real cabinet for end-to-end tests: the real `locker-agent` library with its sled storage
//! in a temp dir, driving a simulated lock board over real Modbus TCP, connected to a gateway
//! over mutual TLS with a certificate from the test PKI.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use locker_agent::config::LockBoardConfig;
use locker_agent::{Agent, AgentConfig, AgentDeps, AgentHandle, AgentStatus, Storage};
use locker_sim::{LockBoardConfig as SimBoardConfig, LockBoardSim};

use crate::pki::TestPki;

/// Locks on the test board.
pub const LOCKS: u16 = 16;

/// A cabinet: one simulated board and the agent that drives it.
pub struct TestCabinet {
    pub id: String,
    pub board: LockBoardSim,
    pub board_addr: SocketAddr,
    pub config: AgentConfig,
    pub handle: Option<AgentHandle>,
    storage: Option<Storage>,
    dir: tempfile::TempDir,
}

impl TestCabinet {
    /// Issues a certificate for `id`, starts its board and its agent against `edge`.
    pub async fn start(pki: &mut TestPki, id: &str, edge: SocketAddr) -> Self {
        crate::init_tracing();
        let cert = pki.cabinet(id);
        let board = LockBoardSim::new(SimBoardConfig {
            unit_id: 1,
            locks: LOCKS,
            pulse: Duration::from_millis(50),
            spring: Duration::from_millis(20),
            ..Default::default()
        })
        .expect("board");
        let (board_addr, _task) = board
            .serve_tcp("127.0.0.1:0".parse::<SocketAddr>().expect("addr"))
            .await
            .expect("serve board");
        let dir = tempfile::tempdir().expect("temp dir");
        let mut c = AgentConfig {
            cabinet_id: id.into(),
            ..Default::default()
        };
        c.mqtt.host = edge.ip().to_string();
        c.mqtt.port = edge.port();
        c.mqtt.ca_cert = pki.ca_pem();
        c.mqtt.client_cert = cert.cert_path.clone();
        c.mqtt.client_key = cert.key_path.clone();
        c.mqtt.backoff_base_ms = 50;
        c.mqtt.backoff_max_ms = 500;
        c.mqtt.ack_timeout_ms = 1_000;
        c.mqtt.keep_alive_s = 5;
        c.storage.path = dir.path().join("db");
        c.timing.sensor_poll_ms = 20;
        c.timing.fast_poll_ms = 5;
        c.timing.debounce_reads = 2;
        c.timing.unlock_confirm_ms = 2_000;
        c.timing.modbus_timeout_ms = 300;
        c.timing.modbus_reconnect_ms = 100;
        c.lock_boards = vec![LockBoardConfig {
            address: board_addr.to_string(),
            unit: 1,
            locks: LOCKS,
            first_compartment: 1,
            ..Default::default()
        }];
        let mut cab = Self {
            id: id.into(),
            board,
            board_addr,
            config: c,
            handle: None,
            storage: None,
            dir,
        };
        cab.boot().await;
        cab
    }

    /// Starts (or restarts) the agent on the same storage. The sled database stays open
    /// across restarts in one test process (sled locks its files per process); what the
    /// agent keeps in memory is gone, as after a process restart. Tests of `kill -9` of the
    /// agent process itself are in `device-agent/tests/kill9.rs`.
    pub async fn boot(&mut self) {
        let storage = match &self.storage {
            Some(s) => s.clone(),
            None => Storage::open(&self.config.storage.path, Duration::from_millis(5))
                .expect("agent storage"),
        };
        let handle = Agent::start(self.config.clone(), AgentDeps::new(storage.clone()))
            .await
            .expect("agent starts");
        self.storage = Some(storage);
        self.handle = Some(handle);
    }

    /// Stops the agent cleanly, keeping its storage.
    pub async fn stop(&mut self) {
        if let Some(h) = self.handle.take() {
            h.shutdown().await;
        }
    }

    /// Stops the agent and gives it empty storage, as a new SD card or a re-flash would: the
    /// next [`TestCabinet::boot`] starts with boot 1 and seq 1. (The old database is left in
    /// place, unused: sled keeps its files locked for as long as the process holds it.)
    pub async fn wipe_storage(&mut self) {
        self.stop().await;
        self.storage = None;
        let n = std::fs::read_dir(self.dir.path())
            .map(|d| d.count())
            .unwrap_or(0);
        self.config.storage.path = self.dir.path().join(format!("db-wiped-{n}"));
    }

    /// Gives the cabinet a simulated charge controller over real Modbus TCP (read every
    /// second, reported every second) and restarts its agent with it; returns the charger.
    pub async fn add_charger(&mut self, initial_soc_pct: f64) -> locker_sim::ChargerSim {
        let charger = locker_sim::ChargerSim::new(locker_sim::ChargerConfig {
            initial_soc_pct,
            ..Default::default()
        })
        .expect("charger");
        let (addr, _task) = charger
            .serve_tcp("127.0.0.1:0".parse::<SocketAddr>().expect("addr"))
            .await
            .expect("serve charger");
        self.stop().await;
        self.config.charger = Some(locker_agent::config::ChargerConfig {
            address: addr.to_string(),
            unit: 1,
            poll_s: 1,
            interval_s: 1,
            ..Default::default()
        });
        self.boot().await;
        charger
    }

    /// Points the agent at another gateway address (takes effect on the next boot).
    pub fn set_edge(&mut self, edge: SocketAddr) {
        self.config.mqtt.host = edge.ip().to_string();
        self.config.mqtt.port = edge.port();
    }

    pub fn status(&self) -> AgentStatus {
        self.handle.as_ref().expect("agent running").status()
    }

    /// Lock pulses fired on compartment `c` (1-based) so far.
    pub fn pulses(&self, c: u16) -> u64 {
        self.board
            .pulse_count(usize::from(c - 1))
            .expect("lock index")
    }

    /// The agent's files.
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}
