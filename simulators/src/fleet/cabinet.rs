//! One simulated cabinet: a REAL agent (`locker_agent::Agent`) with its own simulated lock board
//! and charge controller served in-process (real Modbus TCP framing over an in-memory link that
//! the device answers inline: no sockets, no pipe, no task; see [`crate::modbus::memory`]), its
//! own certificate and link switch, and what the simulated people know about it (which
//! compartments hold parcels and the pickup codes the "parcel service" handed out).
//!
//! The parcel service is played by the simulator: the gateway has no parcel domain yet, so the
//! credential set is delivered to the agent as the `creds` downlink it would receive
//! (`AgentHandle::downlink`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use locker_agent::config::{ChargerConfig as AgentCharger, LockBoardConfig as AgentBoard};
use locker_agent::{Agent, AgentConfig, AgentDeps, AgentHandle, AgentStatus, ModbusConnector};
use locker_schemas::{
    CabinetId, CompartmentId, CredKind, Credential, Credentials, DownlinkBody, ScanSource,
};
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

/// A compartment as the simulated people know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Slot {
    Empty,
    /// Holds a parcel that can be picked up with this PIN.
    Parcel {
        pin: String,
    },
}

/// What the simulated people know.
#[derive(Debug)]
pub struct Known {
    pub slots: Vec<Slot>,
    pub creds_version: u64,
    next_order: u64,
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
    pub known: Mutex<Known>,
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

/// The courier badge that may deposit in `id` (an RFID code).
pub fn courier_badge(id: &CabinetId) -> String {
    format!("BADGE-{id}")
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
            capacity_wh: if solar { 240.0 } else { 1200.0 },
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
            ..AgentBoard::default()
        }];
        config.charger = Some(AgentCharger {
            address: "charger".into(),
            unit: 2,
            poll_s: 2,
            interval_s: 600,
            ..AgentCharger::default()
        });
        config.timing.door_left_open_s = 120;
        let modbus = hardware_connector(&board, &charger);
        let deps = AgentDeps {
            storage,
            tls: Some(tls),
            modbus,
            clock: Arc::new(locker_agent::SystemClock),
        };
        let slots = vec![Slot::Empty; usize::from(t.locks)];
        Ok(Self {
            id,
            board,
            charger,
            solar,
            link,
            busy: AtomicBool::new(false),
            first_seq: std::sync::atomic::AtomicU64::new(0),
            known: Mutex::new(Known {
                slots,
                creds_version: 0,
                next_order: 0,
            }),
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
        {
            // A reused state directory: continue the credential versions the agent holds.
            let held = h.status().creds_version;
            let mut k = self.known.lock().unwrap_or_else(PoisonError::into_inner);
            k.creds_version = k.creds_version.max(held);
        }
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

    /// Records a parcel in compartment index `i` and returns its new PIN.
    pub fn add_parcel(&self, i: usize, rng: &mut impl rand::Rng) -> String {
        let pin = format!("{:06}", rng.gen_range(0..1_000_000u32));
        let mut k = self.known.lock().unwrap_or_else(PoisonError::into_inner);
        k.next_order += 1;
        if let Some(s) = k.slots.get_mut(i) {
            *s = Slot::Parcel { pin: pin.clone() };
        }
        pin
    }

    /// Records that compartment index `i` is empty again.
    pub fn clear_slot(&self, i: usize) {
        let mut k = self.known.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(s) = k.slots.get_mut(i) {
            *s = Slot::Empty;
        }
    }

    /// Indices of empty and of full compartments.
    pub fn slots(&self) -> (Vec<usize>, Vec<(usize, String)>) {
        let k = self.known.lock().unwrap_or_else(PoisonError::into_inner);
        let mut empty = Vec::new();
        let mut full = Vec::new();
        for (i, s) in k.slots.iter().enumerate() {
            match s {
                Slot::Empty => empty.push(i),
                Slot::Parcel { pin } => full.push((i, pin.clone())),
            }
        }
        (empty, full)
    }

    /// Sends the current credential set (courier badge + one pickup code per parcel) to the
    /// agent as the parcel service would.
    pub async fn sync_credentials(&self, now: u64) -> Result<(), CabinetError> {
        let set = {
            let mut k = self.known.lock().unwrap_or_else(PoisonError::into_inner);
            k.creds_version += 1;
            let expires_at = now + 7 * 24 * 3_600_000;
            let mut entries = vec![Credential {
                kind: CredKind::Deposit,
                secret_hash: locker_agent::creds::secret_hash(&courier_badge(&self.id), &self.id)
                    .to_vec(),
                compartment: None,
                reference: "carrier-sim".into(),
                expires_at,
                carrier: "sim".into(),
            }];
            for (i, s) in k.slots.iter().enumerate() {
                if let Slot::Parcel { pin } = s {
                    entries.push(Credential {
                        kind: CredKind::Pickup,
                        secret_hash: locker_agent::creds::secret_hash(pin, &self.id).to_vec(),
                        compartment: Some(CompartmentId(u16::try_from(i + 1).unwrap_or(1))),
                        reference: format!("ORD-{}-{}", self.id, i + 1),
                        expires_at,
                        carrier: String::new(),
                    });
                }
            }
            Credentials {
                version: k.creds_version,
                entries,
                part: 0,
                parts: 1,
            }
        };
        let g = self.agent.read().await;
        let h = g.as_ref().ok_or(CabinetError::NotRunning)?;
        h.downlink(DownlinkBody::Credentials(set)).await?;
        Ok(())
    }
}
