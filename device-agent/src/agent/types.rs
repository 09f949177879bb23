//! The agent's shared vocabulary: the public types its handle and host exchange ([`AgentDeps`],
//! [`AgentStatus`], [`Counters`], [`ExecOutcome`], [`ScanReply`], [`Access`], [`Refusal`],
//! [`Key`], [`ExitReason`],
//! [`AgentError`], [`ScanSender`]) and the requests the handle sends to the main loop. A leaf:
//! every other module of the agent may use it; it uses none of them.

use std::sync::Arc;

use locker_schemas::{
    Alarm, CabinetId, Command, CommandResult, CompartmentId, DownlinkBody, ScanSource, Size, Uplink,
};
use tokio::sync::{mpsc, oneshot};

use crate::clock::{Clock, SystemClock};
use crate::config::ConfigError;
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

/// What a scan or key led to (see README, "At the cabinet").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// Nothing to do: no credential matched, and it was not a wrong code (a barcode scanned
    /// with no courier signed in).
    None,
    /// A pickup credential matched; this compartment's lock is being fired.
    Pickup(CompartmentId),
    /// Kept for callers written before the courier workflow: never returned now (a courier's
    /// badge signs in: [`Access::SignedIn`]; a deposit reports [`Access::DepositInto`]).
    Deposit,
    /// A courier's badge or PIN matched: this courier (reference) is signed in.
    SignedIn(String),
    /// A deposit (known parcel, the next size up, a chosen size or a drop-off): this
    /// compartment's lock is being fired.
    DepositInto(CompartmentId),
    /// A collection: this compartment's lock is being fired.
    Collect(CompartmentId),
    /// A barcode the cabinet does not know, scanned by a signed-in courier: remembered for a
    /// size key.
    ParcelNoted,
    /// The courier session ended (`key:logout`).
    SignedOut,
    /// Refused, and why.
    Refused(Refusal),
}

/// Why a scan or key opened nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// The keypad is locked after too many wrong codes.
    Locked,
    /// No usable credential matched (counted towards the keypad lock).
    WrongCode,
    /// A courier action with no courier signed in.
    NoCourier,
    /// The parcel belongs to another carrier than the signed-in courier's.
    WrongCarrier,
    /// The compartment is open, being unlocked, or its board is offline.
    Busy,
    /// The compartment's parcel sensor reads a parcel.
    Full,
    /// No usable spare compartment (of the size asked, or larger than the reserved one).
    NoSpare,
    /// A size key or `bigger` with no parcel scanned in this session.
    NoParcel,
    /// Nothing of the courier's carrier to collect.
    NothingToCollect,
    /// The hardware request queue is full: try again.
    Unavailable,
}

impl Refusal {
    /// The short reason scanner clients read (`err <reason>`).
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Locked => "locked",
            Refusal::WrongCode => "wrong code",
            Refusal::NoCourier => "no courier signed in",
            Refusal::WrongCarrier => "wrong carrier",
            Refusal::Busy => "compartment busy",
            Refusal::Full => "compartment full",
            Refusal::NoSpare => "no spare compartment",
            Refusal::NoParcel => "no parcel scanned",
            Refusal::NothingToCollect => "nothing to collect",
            Refusal::Unavailable => "unavailable",
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A key pressed at the cabinet (scanner input `key:<name>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Key {
    /// The parcel does not fit: open the next size up (`key:bigger`).
    Bigger,
    /// Open the next parcel to collect (`key:collect`).
    Collect,
    /// Open a spare of this size for the parcel just scanned (`key:S` .. `key:XL`).
    Size(Size),
    /// End the courier session (`key:logout`).
    Logout,
}

impl Key {
    /// Parses a key name (`bigger`, `collect`, `s`, `m`, `l`, `xl`, `logout`; any case).
    pub fn parse(name: &str) -> Option<Key> {
        Some(match name.trim().to_ascii_lowercase().as_str() {
            "bigger" => Key::Bigger,
            "collect" => Key::Collect,
            "logout" => Key::Logout,
            "s" => Key::Size(Size::S),
            "m" => Key::Size(Size::M),
            "l" => Key::Size(Size::L),
            "xl" => Key::Size(Size::Xl),
            _ => return None,
        })
    }
}

/// The reply to a scan or key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanReply {
    /// The seq of the Scan event (durable), `None` if the outbox dropped it or for a key
    /// (keys are not Scan events).
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
    /// Keypad, QR or badge entries that matched no usable credential.
    pub wrong_codes: u64,
    /// Times the keypad was locked after too many wrong codes.
    pub lockouts: u64,
    /// Scans and keys refused (locked, wrong carrier, no courier, compartment busy or full, ...).
    pub refused_accesses: u64,
    /// Credential set parts refused as malformed (part out of range).
    pub bad_cred_parts: u64,
    /// Local accesses reported from the parcel sensor: the door was not seen opening (opened
    /// and shut between two polls) but the parcel went out (pickup, collection) or in (deposit).
    pub accesses_by_sensor: u64,
    /// Local accesses whose lock fired but whose door was not seen opening and whose parcel
    /// sensor did not change (or could not be read): nothing reported, the code stays valid.
    pub unconfirmed_accesses: u64,
    pub bad_downlinks: u64,
    pub rewinds: u64,
    pub published: u64,
    pub connects: u64,
    pub shed_events: u64,
    pub dropped_critical: u64,
    pub storage_errors: u64,
    /// Acks for a seq this storage never assigned (ignored, nothing deleted).
    pub stray_acks: u64,
    /// Storage writes that waited for a flush (a remote unlock costs two: the command's claim,
    /// and its door opening written with its Result).
    pub flushed_writes: u64,
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
    Key {
        key: Key,
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
    pub(super) tx: mpsc::Sender<Request>,
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

    /// Injects one key press, as if pressed at the cabinet.
    pub async fn key(&self, key: Key) -> Result<ScanReply, AgentError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Key { key, reply })
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
