//! The rules engine: network interruptions, battery and solar, doors, the offline command
//! queue and cabinet hardware, turned into alerts a fleet engineer can act on.
//!
//! One actor ([`actor`]) owns the rule state of every cabinet and every alert, reached through
//! [`RulesHandle`]. It hears the events ingest commits, the edge's presence changes, the
//! dispatcher's queue reports and outcomes ([`DispatchNote`]) and the parcel domain's sensor
//! conflicts ([`SensorNote`]), and it evaluates time-based conditions on a tick. The rules
//! themselves are a pure function of that input ([`engine`], [`signals`]) so they are tested
//! with explicit times; [`config`] holds the `[rules]` table of gateway.toml and its per-site
//! overrides.
//!
//! An alert is raised once per (cabinet, kind, subject): a condition first becomes *pending*
//! (it must last `for_ms`), then *active* (published on `lk/v1/{cabinet}/gw/alert`, stored,
//! counted), and clears when it stops, with hysteresis (a separate clear threshold, and for
//! some kinds a time it must stay clear). Pending times and active alerts are stored with the
//! cabinet's rule state (sled, behind [`crate::store::alerts::AlertStore`]) before anything is
//! published, so a restart neither loses nor restarts them, nor raises an alert twice.

pub mod actor;
pub mod config;
pub mod engine;
pub mod metrics;
mod reconcile;
pub mod signals;
pub mod state;
#[cfg(test)]
mod tests;

use locker_schemas::{CabinetId, CommandId, CompartmentId, Millis, Outcome, SiteId};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

pub use actor::{Inbox, Parts, Rules, RulesClock};
pub use config::{RulesConfig, RulesConfigError};

use crate::store::StoreError;

/// What an alert is about. The names are the `rule` of the `gw/alert` stream message and the
/// `kind` label of the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// The cabinet has been offline (no connection at the edge) longer than `after_ms`.
    Offline,
    /// The link dropped `disconnects` times within `window_ms`.
    Flapping,
    /// After the cabinet came back it replayed more than `events` events, or older than
    /// `age_ms`.
    ReplayBacklog,
    /// The cabinet is on cellular while its site (or its first hello) says LAN or Wi-Fi.
    NetworkFailover,
    /// State of charge under `below_pct` for `for_ms` (or the battery under its voltage floor).
    BatteryLow,
    /// Energy in minus energy out over the window is negative and the battery would be empty
    /// within `empty_within_h`.
    SolarDeficit,
    /// The charge controller reports a fault or stopped answering.
    ChargerFault,
    /// A mains-powered cabinet has had no input power for `for_ms`.
    OnBattery,
    /// A door open longer than `after_ms`.
    DoorLeftOpen,
    /// A door opened without a command or a local access.
    DoorForced,
    /// The same lock jammed `jams` times within `window_ms`.
    LockJammed,
    /// A compartment's parcel sensor disagrees with its order.
    ParcelSensor,
    /// Commands waiting for an offline cabinet longer than `waiting_ms`.
    QueueWaiting,
    /// More than `depth` commands waiting for an offline cabinet.
    QueueDeep,
    /// A command ended without an outcome (`no_answer`).
    CommandNoOutcome,
    /// A lock board stopped answering on the bus.
    BoardOffline,
    /// The cabinet's store-and-forward outbox is nearly full.
    OutboxFull,
    /// The cabinet's clock is off by more than `max_skew_ms`.
    ClockSkew,
}

impl AlertKind {
    /// Every kind, in a stable order.
    pub const ALL: [AlertKind; 18] = [
        AlertKind::Offline,
        AlertKind::Flapping,
        AlertKind::ReplayBacklog,
        AlertKind::NetworkFailover,
        AlertKind::BatteryLow,
        AlertKind::SolarDeficit,
        AlertKind::ChargerFault,
        AlertKind::OnBattery,
        AlertKind::DoorLeftOpen,
        AlertKind::DoorForced,
        AlertKind::LockJammed,
        AlertKind::ParcelSensor,
        AlertKind::QueueWaiting,
        AlertKind::QueueDeep,
        AlertKind::CommandNoOutcome,
        AlertKind::BoardOffline,
        AlertKind::OutboxFull,
        AlertKind::ClockSkew,
    ];

    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::Offline => "offline",
            AlertKind::Flapping => "flapping",
            AlertKind::ReplayBacklog => "replay_backlog",
            AlertKind::NetworkFailover => "network_failover",
            AlertKind::BatteryLow => "battery_low",
            AlertKind::SolarDeficit => "solar_deficit",
            AlertKind::ChargerFault => "charger_fault",
            AlertKind::OnBattery => "on_battery",
            AlertKind::DoorLeftOpen => "door_left_open",
            AlertKind::DoorForced => "door_forced",
            AlertKind::LockJammed => "lock_jammed",
            AlertKind::ParcelSensor => "parcel_sensor",
            AlertKind::QueueWaiting => "queue_waiting",
            AlertKind::QueueDeep => "queue_deep",
            AlertKind::CommandNoOutcome => "command_no_outcome",
            AlertKind::BoardOffline => "board_offline",
            AlertKind::OutboxFull => "outbox_full",
            AlertKind::ClockSkew => "clock_skew",
        }
    }

    /// Parses the snake_case name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Kinds that record a fact rather than a lasting condition: they clear when acknowledged
    /// (or after their `clear_after_ms`), not when something stops.
    pub fn is_one_shot(self) -> bool {
        matches!(self, AlertKind::CommandNoOutcome | AlertKind::ParcelSensor)
    }
}

impl std::fmt::Display for AlertKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How urgent an alert is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Critical,
    Warning,
    Info,
}

impl Severity {
    pub const ALL: [Severity; 3] = [Severity::Critical, Severity::Warning, Severity::Info];

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::Warning => "warning",
            Severity::Info => "info",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// A command a rule asks for when its alert is raised or cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleAction {
    /// `power_save` on (the battery is low).
    PowerSave,
    /// `power_save` off (the battery recovered).
    PowerNormal,
    /// `sync_credentials` (the cabinet is back from a long outage).
    SyncCredentials,
}

impl RuleAction {
    pub fn as_str(self) -> &'static str {
        match self {
            RuleAction::PowerSave => "power_save",
            RuleAction::PowerNormal => "power_normal",
            RuleAction::SyncCredentials => "sync_credentials",
        }
    }
}

/// An action taken for an alert: recorded (and stored) before its command is created, so it
/// is never taken twice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionTaken {
    pub action: RuleAction,
    /// The command created for it.
    pub command: CommandId,
    pub at: Millis,
}

/// One alert: raised once per (cabinet, kind, subject) and condition, cleared once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// `ALR-<ulid>`: time-ordered.
    pub id: String,
    pub cabinet: CabinetId,
    /// The cabinet's site, if the parcel domain places it in one.
    pub site: Option<SiteId>,
    pub kind: AlertKind,
    /// What in the cabinet: `compartment 3`, `board 2`, `command <id>`; empty for the cabinet.
    pub subject: String,
    pub severity: Severity,
    /// When the condition began.
    pub started: Millis,
    /// When the alert was raised (the condition had lasted its `for_ms`).
    pub raised_at: Millis,
    /// When it cleared; `None` while active.
    pub cleared_at: Option<Millis>,
    /// Why it cleared (`condition ended`, `acknowledged`, `expired`).
    pub clear_reason: Option<String>,
    /// What was seen when it was raised (and updated while it is active).
    pub detail: String,
    /// The measured value, where there is one (minutes offline, percent, events).
    pub value: Option<f64>,
    pub acked_by: Option<String>,
    pub acked_at: Option<Millis>,
    pub ack_note: Option<String>,
    /// Commands the rule asked for.
    pub actions: Vec<ActionTaken>,
}

impl Alert {
    pub fn is_active(&self) -> bool {
        self.cleared_at.is_none()
    }
}

/// What the dispatcher tells the rules engine: its offline queue and the outcomes it records.
#[derive(Debug, Clone)]
pub enum DispatchNote {
    /// The commands waiting for cabinets (not sent yet), per cabinet: how many and since when
    /// the oldest waits. Sent every few seconds; a cabinet missing from it has none.
    Queue {
        at: Millis,
        waiting: Vec<(CabinetId, usize, Millis)>,
    },
    /// A command got its outcome.
    Outcome {
        cabinet: CabinetId,
        command: CommandId,
        compartment: Option<CompartmentId>,
        outcome: Outcome,
        at: Millis,
    },
}

/// What the parcel domain tells the rules engine: a compartment's parcel sensor disagrees
/// with its order (`parcel_still_present`, `pickup_without_parcel`).
#[derive(Debug, Clone)]
pub struct SensorNote {
    pub cabinet: CabinetId,
    pub compartment: CompartmentId,
    pub order: String,
    pub exception: String,
    pub at: Millis,
}

/// Which alerts a listing wants.
#[derive(Debug, Clone, Default)]
pub struct AlertFilter {
    /// `Some(true)`: active only; `Some(false)`: cleared only; `None`: both.
    pub active: Option<bool>,
    pub cabinet: Option<CabinetId>,
    pub site: Option<SiteId>,
    /// Only sites in this set (a site manager's scope); `None` = every site.
    pub sites_in: Option<std::collections::BTreeSet<SiteId>>,
    pub kind: Option<AlertKind>,
    pub severity: Option<Severity>,
    /// Only alerts raised before this id (paging, newest first).
    pub before: Option<String>,
    pub limit: usize,
}

/// Why a rules request failed.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("alert {0} not found")]
    NotFound(String),
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    #[error("the rules engine is shutting down")]
    Closed,
}

pub(crate) enum Msg {
    Presence {
        cabinet: CabinetId,
        online: bool,
        at: Millis,
    },
    Dispatch(DispatchNote),
    Sensor(SensorNote),
    Ack {
        id: String,
        by: String,
        note: Option<String>,
        reply: oneshot::Sender<Result<Alert, RulesError>>,
    },
    Get(String, oneshot::Sender<Result<Alert, RulesError>>),
    List(AlertFilter, oneshot::Sender<Result<Vec<Alert>, RulesError>>),
    /// The rule state of one cabinet (tests and the API's cabinet view).
    Active(CabinetId, oneshot::Sender<Vec<Alert>>),
}

/// Cloneable handle to the rules engine.
#[derive(Clone)]
pub struct RulesHandle {
    tx: mpsc::Sender<Msg>,
}

impl RulesHandle {
    /// A presence change from the edge.
    pub async fn presence(&self, cabinet: CabinetId, online: bool, at: Millis) {
        let _ = self
            .tx
            .send(Msg::Presence {
                cabinet,
                online,
                at,
            })
            .await;
    }

    /// A note from the dispatcher; never waits (a full queue drops it, counted).
    pub fn dispatch_note(&self, n: DispatchNote) -> bool {
        self.tx.try_send(Msg::Dispatch(n)).is_ok()
    }

    /// A sensor conflict from the parcel domain; never waits.
    pub fn sensor_note(&self, n: SensorNote) -> bool {
        self.tx.try_send(Msg::Sensor(n)).is_ok()
    }

    /// Acknowledges an alert (stored before the answer).
    pub async fn ack(
        &self,
        id: String,
        by: String,
        note: Option<String>,
    ) -> Result<Alert, RulesError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Ack {
                id,
                by,
                note,
                reply,
            })
            .await
            .map_err(|_| RulesError::Closed)?;
        rx.await.map_err(|_| RulesError::Closed)?
    }

    /// One alert, active or cleared.
    pub async fn get(&self, id: String) -> Result<Alert, RulesError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Msg::Get(id, tx))
            .await
            .map_err(|_| RulesError::Closed)?;
        rx.await.map_err(|_| RulesError::Closed)?
    }

    /// Alerts, newest first.
    pub async fn list(&self, f: AlertFilter) -> Result<Vec<Alert>, RulesError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Msg::List(f, tx))
            .await
            .map_err(|_| RulesError::Closed)?;
        rx.await.map_err(|_| RulesError::Closed)?
    }

    /// The active alerts of one cabinet.
    pub async fn active(&self, cabinet: CabinetId) -> Vec<Alert> {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Active(cabinet, tx)).await.is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }
}
