//! One simulated cabinet: a REAL agent (`locker_agent::Agent`) with its own simulated lock board
//! and charge controller served in-process (real Modbus TCP framing over an in-memory link that
//! the device answers inline: no sockets, no pipe, no task; see [`crate::modbus::memory`]), its
//! own certificate and link switch. Its compartments come in four sizes ([`board_sizes`]).
//!
//! The agent gets its credential set (recipients' codes, couriers' badges) the real way: the
//! gateway's parcel domain builds it and publishes it on `down/creds`; the simulator never
//! hands the agent anything in-process. What the people know about their orders is in
//! [`super::ledger`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use locker_agent::config::{
    ChargerConfig as AgentCharger, LockBoardConfig as AgentBoard, SizeName,
};
use locker_agent::{Agent, AgentConfig, AgentDeps, AgentHandle, AgentStatus, ModbusConnector};
use locker_schemas::{CabinetId, ScanSource};
use tokio::sync::RwLock;

use super::link::LinkSwitch;
use crate::{ChargerConfig, ChargerSim, LockBoardConfig, LockBoardSim};

/// Why a cabinet could not be started.
#[derive(Debug, thiserror::Error)]
pub enum CabinetError {
    #[error("simulated hardware: {0}")]
    Hardware(String),
    #[error("agent: {0}")]
    Agent(#[from] locker_agent::AgentError),
    #[error("the agent is not running")]
    NotRunning,
}

/// Hardware and agent settings shared by every cabinet of a fleet.
#[derive(Debug, Clone)]
pub struct CabinetTemplate {
    /// MQTT host (the TLS server name) and port of the gateway edge.
    pub host: String,
    pub port: u16,
    /// Locks on the one lock board.
    pub locks: u16,
    /// Doors close by themselves this long after opening (the person closing them).
    pub auto_close: Duration,
    /// Solenoid pulse and door spring delay of the simulated boards.
    pub pulse: Duration,
    pub spring: Duration,
    /// Reconnect backoff of the agent.
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    /// Simulated seconds per real second of the chargers.
    pub speed: f64,
}

/// One cabinet.
pub struct SimCabinet {
    pub id: CabinetId,
    pub board: LockBoardSim,
    pub charger: ChargerSim,
    pub solar: bool,
    pub link: LinkSwitch,
    pub busy: AtomicBool,
    /// The first seq this run's agent produced (earlier ones are from previous runs).
    pub first_seq: std::sync::atomic::AtomicU64,
    agent: RwLock<Option<AgentHandle>>,
    status: Mutex<Option<tokio::sync::watch::Receiver<AgentStatus>>>,
    config: AgentConfig,
    deps: AgentDeps,
}

impl std::fmt::Debug for SimCabinet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SimCabinet({})", self.id)
    }
}

/// The sizes of a board's compartments, lock 0 first: for every 16 locks six S, six M, three L
/// and one XL (a common parcel locker column mix).
pub fn board_sizes(locks: u16) -> Vec<SizeName> {
    (0..locks)
        .map(|i| match i % 16 {
            0..=5 => SizeName::S,
            6..=11 => SizeName::M,
            12..=14 => SizeName::L,
            _ => SizeName::Xl,
        })
        .collect()
}

/// How a cabinet's agent reaches its simulated hardware: the address `board` is the lock board
/// (unit 1), `charger` the charge controller (unit 2).
pub fn hardware_connector(board: &LockBoardSim, charger: &ChargerSim) -> ModbusConnector {
    // Each link is served inline by the simulated device (no pipe, no task; see
    // `crate::modbus::memory`); the agent's Modbus client is the real one.
    let (b, c) = (board.modbus_server(), charger.modbus_server());
    ModbusConnector::custom(move |addr: String| {
        let link = match addr.as_str() {
            "board" => Ok(b.connect_memory()),
            "charger" => Ok(c.connect_memory()),
            other => Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("no simulated device at {other}"),
            )),
        };
        std::future::ready(link)
    })
}

impl SimCabinet {
    /// Builds the simulated hardware and the agent configuration (the agent is not started).
    pub fn new(
        id: CabinetId,
        t: &CabinetTemplate,
        solar: bool,
        tls: Arc<rustls::ClientConfig>,
        link: LinkSwitch,
        storage: locker_agent::Storage,
        start_hour: f64,
    ) -> Result<Self, CabinetError> {
        let board = LockBoardSim::new(LockBoardConfig {
            unit_id: 1,
            locks: t.locks,
            pulse: t.pulse,
            spring: t.spring,
            auto_close: Some(t.auto_close),
            ..LockBoardConfig::default()
        })
        .map_err(|e| CabinetError::Hardware(e.to_string()))?;
        let charger = ChargerSim::new(ChargerConfig {
            unit_id: 2,
            speed: t.speed,
            start_hour,
            // Solar cabinets run on a small battery that a night can drain.
            capacity_wh: if solar {
                super::gateway::SOLAR_BATTERY_WH
            } else {
                1200.0
            },
            initial_soc_pct: if solar { 30.0 } else { 90.0 },
            peak_pv_w: if solar { 120.0 } else { 0.0 },
            load_w: if solar { 12.0 } else { 5.0 },
            ..ChargerConfig::default()
        })
        .map_err(|e| CabinetError::Hardware(e.to_string()))?;
        let mut config = AgentConfig {
            cabinet_id: id.to_string(),
            ..AgentConfig::default()
        };
        config.mqtt.host = t.host.clone();
        config.mqtt.port = t.port;
        config.mqtt.connect_timeout_s = 10;
        config.mqtt.backoff_base_ms = t.backoff_base_ms;
        config.mqtt.backoff_max_ms = t.backoff_max_ms;
        config.lock_boards = vec![AgentBoard {
            address: "board".into(),
            unit: 1,
            locks: t.locks,
            sizes: board_sizes(t.locks),
            ..AgentBoard::default()
        }];
        config.charger = Some(AgentCharger {
            address: "charger".into(),
            unit: 2,
            poll_s: super::gateway::SOLAR_REPORT_S,
            // a solar cabinet reports at every poll (the rules integrate its energy balance)
            interval_s: if solar { 1 } else { 600 },
            ..AgentCharger::default()
        });
        config.timing.door_left_open_s = 120;
        let modbus = hardware_connector(&board, &charger);
        let deps = AgentDeps {
            storage,
            tls: Some(tls),
            modbus,
            clock: Arc::new(locker_agent::SystemClock),
            line_stats: Default::default(),
        };
        Ok(Self {
            id,
            board,
            charger,
            solar,
            link,
            busy: AtomicBool::new(false),
            first_seq: std::sync::atomic::AtomicU64::new(0),
            agent: RwLock::new(None),
            status: Mutex::new(None),
            config,
            deps,
        })
    }

    /// Starts (or restarts) the agent.
    pub async fn start(&self) -> Result<(), CabinetError> {
        let mut slot = self.agent.write().await;
        if let Some(h) = slot.take() {
            h.shutdown().await;
        }
        let h = Agent::start(self.config.clone(), self.deps.clone()).await?;
        let _ = self.first_seq.compare_exchange(
            0,
            h.status().next_seq.max(1),
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        *self.status.lock().unwrap_or_else(PoisonError::into_inner) = Some(h.watch_status());
        *slot = Some(h);
        Ok(())
    }

    /// Stops the agent cleanly.
    pub async fn stop(&self) {
        if let Some(h) = self.agent.write().await.take() {
            h.shutdown().await;
        }
    }

    /// The agent's latest status.
    pub fn status(&self) -> Option<AgentStatus> {
        self.status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|r| r.borrow().clone())
    }

    /// A few numbers of the status without cloning it: (connected, outbox depth, alarms,
    /// last acked seq, next seq).
    pub fn brief(&self) -> Option<(bool, u64, usize, u64, u64)> {
        self.status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|r| {
                let s = r.borrow();
                (
                    s.mqtt_connected,
                    s.outbox_depth,
                    s.alarms.len(),
                    s.last_acked_seq,
                    s.next_seq,
                )
            })
    }

    /// A scan or keypad entry at the cabinet.
    pub async fn scan(
        &self,
        source: ScanSource,
        value: String,
    ) -> Result<locker_agent::ScanReply, CabinetError> {
        let g = self.agent.read().await;
        let h = g.as_ref().ok_or(CabinetError::NotRunning)?;
        Ok(h.scan(source, value).await?)
    }

    /// A key pressed at the cabinet (`key:collect`, `key:bigger`, `key:logout`, sizes).
    pub async fn key(
        &self,
        key: locker_agent::Key,
    ) -> Result<locker_agent::ScanReply, CabinetError> {
        let g = self.agent.read().await;
        let h = g.as_ref().ok_or(CabinetError::NotRunning)?;
        Ok(h.key(key).await?)
    }

    /// Takes the cabinet for one scenario; false if another one runs.
    pub fn try_claim(&self) -> bool {
        self.busy
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Releases the cabinet.
    pub fn release(&self) {
        self.busy.store(false, Ordering::Release);
    }
}
