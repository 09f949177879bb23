//! The rules engine's records: alert kinds and severities, the actions rules take, an alert,
//! and what a listing of alerts filters on. Plain data, shared by the engine, its store and the
//! API.

use locker_schemas::{CabinetId, CommandId, Millis, SiteId};
use serde::{Deserialize, Serialize};

/// What an alert is about. The names are the `rule` of the `gw/alert` stream message and the
/// `kind` label of the metrics.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
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
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ActionTaken {
    pub action: RuleAction,
    /// The command created for it.
    #[schema(value_type = crate::api::openapi::CommandIdDoc)]
    pub command: CommandId,
    pub at: Millis,
}

/// One alert: raised once per (cabinet, kind, subject) and condition, cleared once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Alert {
    /// `ALR-<ulid>`: time-ordered.
    pub id: String,
    #[schema(value_type = crate::api::openapi::CabinetIdDoc)]
    pub cabinet: CabinetId,
    /// The cabinet's site, if the parcel domain places it in one.
    #[schema(value_type = Option<crate::api::openapi::SiteIdDoc>)]
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

/// An action recorded in its alert whose command may not exist yet: stored with the alert,
/// removed once the dispatcher has the command, and taken up again at start (the command id is
/// chosen up front, so it is created at most once whichever step a crash interrupts).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingAction {
    pub alert: String,
    pub cabinet: CabinetId,
    pub action: RuleAction,
    pub command: CommandId,
    pub at: Millis,
}
