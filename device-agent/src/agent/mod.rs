//! The agent's public face: [`Agent::start`] with its [`AgentDeps`], the cloneable-free
//! [`AgentHandle`] (status, shutdown, test-side command execution and scan injection) and the
//! types they exchange. The main loop itself lives in [`core`].
//!
//! Per agent there are few tasks: the main loop, the hardware task, the rumqttc event-loop task
//! (if MQTT is enabled) and the scanner input (if configured). Storage goes through the shared
//! storage worker of the caller's database.

mod core;
mod doors;
mod exec;
mod uplink;

use std::sync::Arc;

use locker_schemas::{
    Alarm, CabinetId, Command, CommandResult, CompartmentId, DownlinkBody, ScanSource, Uplink,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::clock::{Clock, SystemClock};
use crate::config::{AgentConfig, ConfigError};
use crate::hw::ModbusConnector;
use crate::outbox::OutboxError;
use crate::session::TlsError;
use crate::storage::Storage;

/// Why an agent could not start or be reached.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    #[error("the agent has stopped")]
    Stopped,
    #[error("{0}")]
    Refused(String),
}

/// What an agent needs from its host process. Everything here may be shared between agents
/// (the storage worker and database, the connector, the clock); the TLS configuration only
/// between agents with the same client certificate (see [`crate::session::tls`]).
#[derive(Clone)]
pub struct AgentDeps {
    /// The storage worker over the (possibly shared) sled database; the agent uses the tree
    /// named after its cabinet id.
    pub storage: Storage,
    /// The MQTT TLS client configuration; `None` builds it from the configured PEM files
    /// (when `mqtt.tls` is on).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// How Modbus transports are made.
    pub modbus: ModbusConnector,
    /// The wall clock.
    pub clock: Arc<dyn Clock>,
}

impl AgentDeps {
    /// Real TCP Modbus, the system clock, TLS from the configured files.
    pub fn new(storage: Storage) -> Self {
        Self {
            storage,
            tls: None,
            modbus: ModbusConnector::Tcp,
            clock: Arc::new(SystemClock),
        }
    }
}

/// What `execute` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecOutcome {
    /// The command ran (or was judged) now; its one Result event is in the outbox.
    Result(CommandResult),
    /// The id was executed before (or is being executed): nothing was done.
    Duplicate,
}

/// What a scan led to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No valid cached credential matched.
    None,
    /// A pickup credential matched; this compartment's lock is being fired.
    Pickup(CompartmentId),
    /// A deposit credential matched; an empty compartment is being looked for.
    Deposit,
}

/// The reply to a scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanReply {
    /// The seq of the Scan event (durable), `None` if the outbox dropped it.
    pub seq: Option<u64>,
    pub access: Access,
}

/// Why the agent stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// `shutdown` was called.
    Shutdown,
    /// A Reboot command was executed: the supervisor should start the agent again.
    Reboot,
    /// An internal part failed.
    Failed(String),
}

/// Counters of things worth a metric.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    pub commands: u64,
    pub duplicate_commands: u64,
    pub expired_commands: u64,
    pub pulses: u64,
    pub scans: u64,
    pub local_accesses: u64,
    pub bad_downlinks: u64,
    pub rewinds: u64,
    pub published: u64,
    pub connects: u64,
    pub shed_events: u64,
    pub dropped_critical: u64,
    pub storage_errors: u64,
    /// Acks for a seq this storage never assigned (ignored, nothing deleted).
    pub stray_acks: u64,
}

/// A snapshot of the agent's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentStatus {
    pub cabinet: CabinetId,
    pub boot: u32,
    pub running: bool,
    pub mqtt_connected: bool,
    pub outbox_depth: u64,
    pub last_acked_seq: u64,
    pub next_seq: u64,
    /// Active alarms.
    pub alarms: Vec<Alarm>,
    /// Unit ids of lock boards currently offline.
    pub boards_offline: Vec<u8>,
    /// Doors known to be open.
    pub open_doors: Vec<CompartmentId>,
    /// Doors whose state is known (their board was read at least once).
    pub known_doors: usize,
    pub creds_version: u64,
    pub power_save: bool,
    pub counters: Counters,
}

pub(crate) enum Request {
    Execute {
        cmd: Command,
        reply: oneshot::Sender<ExecOutcome>,
    },
    Scan {
        source: ScanSource,
        value: String,
        reply: oneshot::Sender<Result<ScanReply, String>>,
    },
    Outbox {
        reply: oneshot::Sender<Result<Vec<Uplink>, String>>,
    },
    Downlink {
        body: DownlinkBody,
        reply: oneshot::Sender<()>,
    },
    Shutdown,
}

/// A cloneable sender of scans into one agent (what scanner input tasks hold).
#[derive(Clone)]
pub struct ScanSender {
    tx: mpsc::Sender<Request>,
}

impl ScanSender {
    /// Injects one scan or keypad entry, as if read at the cabinet.
    pub async fn scan(&self, source: ScanSource, value: String) -> Result<ScanReply, AgentError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Scan {
                source,
                value,
                reply,
            })
            .await
            .map_err(|_| AgentError::Stopped)?;
        rx.await
            .map_err(|_| AgentError::Stopped)?
            .map_err(AgentError::Refused)
    }

    /// Whether the agent is gone.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// The handle to one running agent.
pub struct AgentHandle {
    tx: mpsc::Sender<Request>,
    status: watch::Receiver<AgentStatus>,
    task: Option<JoinHandle<ExitReason>>,
    exit: Option<ExitReason>,
}

impl AgentHandle {
    /// The current status.
    pub fn status(&self) -> AgentStatus {
        self.status.borrow().clone()
    }

    /// A receiver that sees every status change.
    pub fn watch_status(&self) -> watch::Receiver<AgentStatus> {
        self.status.clone()
    }

    /// Executes a command through the same path as one received over MQTT (without MQTT) and
    /// waits for its result.
    pub async fn execute(&self, cmd: Command) -> Result<ExecOutcome, AgentError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Execute { cmd, reply })
            .await
            .map_err(|_| AgentError::Stopped)?;
        rx.await.map_err(|_| AgentError::Stopped)
    }

    /// Handles a downlink as if it came over MQTT (an ack, a command received now, or a
    /// credential set), and returns once it was acted on (a command's result is NOT awaited:
    /// use [`AgentHandle::execute`] for that).
    pub async fn downlink(&self, body: DownlinkBody) -> Result<(), AgentError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Downlink { body, reply })
            .await
            .map_err(|_| AgentError::Stopped)?;
        rx.await.map_err(|_| AgentError::Stopped)
    }

    /// Injects a scan (see [`ScanSender::scan`]).
    pub async fn scan(
        &self,
        source: ScanSource,
        value: impl Into<String>,
    ) -> Result<ScanReply, AgentError> {
        self.scanner().scan(source, value.into()).await
    }

    /// A cloneable scan sender for input tasks.
    pub fn scanner(&self) -> ScanSender {
        ScanSender {
            tx: self.tx.clone(),
        }
    }

    /// Every event in the outbox (stored and not yet acknowledged), decoded, in seq order.
    pub async fn outbox(&self) -> Result<Vec<Uplink>, AgentError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Outbox { reply })
            .await
            .map_err(|_| AgentError::Stopped)?;
        rx.await
            .map_err(|_| AgentError::Stopped)?
            .map_err(AgentError::Refused)
    }

    /// Waits until the agent stops by itself (a Reboot command or a failure).
    pub async fn wait(&mut self) -> ExitReason {
        if let Some(e) = &self.exit {
            return e.clone();
        }
        let r = match self.task.take() {
            Some(t) => t
                .await
                .unwrap_or_else(|e| ExitReason::Failed(format!("agent task: {e}"))),
            None => ExitReason::Failed("already stopped".into()),
        };
        self.exit = Some(r.clone());
        r
    }

    /// Stops the agent cleanly (MQTT disconnect, storage flushed) and waits for it.
    pub async fn shutdown(mut self) -> ExitReason {
        let _ = self.tx.send(Request::Shutdown).await;
        self.wait().await
    }
}

impl Drop for AgentHandle {
    fn drop(&mut self) {
        if self.task.is_some() {
            let _ = self.tx.try_send(Request::Shutdown);
        }
    }
}

/// The agent.
pub struct Agent;

impl Agent {
    /// Validates the configuration, opens the cabinet's storage (incrementing the boot counter),
    /// settles commands interrupted by a restart, and starts the tasks.
    pub async fn start(config: AgentConfig, deps: AgentDeps) -> Result<AgentHandle, AgentError> {
        config.validate()?;
        let (tx, rx) = mpsc::channel(64);
        let scans = ScanSender { tx: tx.clone() };
        let (core, status) = core::Core::open(config, deps, rx, scans).await?;
        let task = tokio::spawn(core.run());
        Ok(AgentHandle {
            tx,
            status,
            task: Some(task),
            exit: None,
        })
    }
}
