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
//! some kinds a time it must stay clear). An alert raised, cleared or acted on is stored with
//! its cabinet's rule state (sled, behind [`crate::store::alerts::AlertStore`]) before it is
//! published, so it is never raised twice; pending start times and readings are stored every
//! few seconds and at shutdown, so a restart neither loses nor restarts a duration.

pub mod actor;
pub mod config;
pub mod engine;
pub mod metrics;
pub mod model;
mod reconcile;
pub mod signals;
pub mod state;
#[cfg(test)]
mod tests;

use locker_schemas::{CabinetId, CommandId, CompartmentId, Millis, Outcome};
use tokio::sync::{mpsc, oneshot};

pub use actor::{Inbox, Parts, Rules, RulesClock};
pub use config::{RulesConfig, RulesConfigError};
pub use model::{ActionTaken, Alert, AlertFilter, AlertKind, PendingAction, RuleAction, Severity};

use crate::store::StoreError;

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
    /// Active alerts per cabinet by severity (the console's fleet pages).
    Counts(oneshot::Sender<AlertCounts>),
}

/// Active alerts by severity.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct SeverityCounts {
    pub critical: u32,
    pub warning: u32,
    pub info: u32,
}

impl SeverityCounts {
    /// Counts one more alert of `s`.
    pub fn count(&mut self, s: Severity) {
        match s {
            Severity::Critical => self.critical += 1,
            Severity::Warning => self.warning += 1,
            Severity::Info => self.info += 1,
        }
    }

    /// Adds another set of counts.
    pub fn add(&mut self, o: &SeverityCounts) {
        self.critical += o.critical;
        self.warning += o.warning;
        self.info += o.info;
    }
}

/// Active alerts by cabinet (cabinets without any are absent).
pub type AlertCounts = std::collections::HashMap<CabinetId, SeverityCounts>;

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

    /// Active alerts per cabinet by severity, counted inside the actor (no alert is cloned).
    pub async fn counts(&self) -> AlertCounts {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Counts(tx)).await.is_err() {
            return AlertCounts::default();
        }
        rx.await.unwrap_or_default()
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
