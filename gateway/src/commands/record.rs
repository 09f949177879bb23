//! The command records the dispatcher owns, as stored in sled and served by the API (JSON):
//! [`CommandRecord`] with its [`CommandState`], and [`ActionSpec`], the JSON form of an action.

use locker_schemas::{Action, CabinetId, CommandId, CompartmentId, Millis, Outcome};
use serde::{Deserialize, Serialize};

/// A command action in JSON: `{"type": "unlock", "compartment": 3}`, `{"type": "unlock_all"}`,
/// `{"type": "set_config", "values": {"k": "v"}}`, `{"type": "power_save", "on": true}`,
/// `{"type": "reboot"}`, `{"type": "sync_credentials"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ActionSpec {
    Unlock {
        #[schema(value_type = u16)]
        compartment: CompartmentId,
    },
    UnlockAll,
    SetConfig {
        values: std::collections::BTreeMap<String, String>,
    },
    PowerSave {
        on: bool,
    },
    Reboot,
    SyncCredentials,
}

impl ActionSpec {
    /// The wire action.
    pub fn to_action(&self) -> Action {
        match self {
            ActionSpec::Unlock { compartment } => Action::UnlockCompartment(*compartment),
            ActionSpec::UnlockAll => Action::UnlockAll,
            ActionSpec::SetConfig { values } => {
                Action::SetConfig(values.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            }
            ActionSpec::PowerSave { on } => Action::PowerSave(*on),
            ActionSpec::Reboot => Action::Reboot,
            ActionSpec::SyncCredentials => Action::SyncCredentials,
        }
    }
}

/// Where a command is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CommandState {
    /// Waiting in the offline queue (never sent).
    Queued,
    /// Sent at least once; waiting for the cabinet's result.
    Sent,
    /// Has its one final outcome.
    Done,
    /// Final without the cabinet's word: sent, but no answer came before the give-up age
    /// (outcome `no_answer`). Whether a door opened is unknown; a late Result is recorded in
    /// `late_outcome` (and is in the audit log).
    Unconfirmed,
}

/// A command and its one outcome.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CommandRecord {
    #[schema(value_type = crate::api::openapi::CommandIdDoc)]
    pub id: CommandId,
    #[schema(value_type = crate::api::openapi::CabinetIdDoc)]
    pub cabinet: CabinetId,
    pub action: ActionSpec,
    pub issued_at: Millis,
    pub expires_at: Millis,
    pub ttl_ms: u32,
    /// The API client that created it.
    pub created_by: String,
    pub state: CommandState,
    pub sends: u32,
    pub last_sent_at: Option<Millis>,
    #[serde(with = "outcome_name")]
    #[schema(value_type = Option<crate::api::openapi::OutcomeDoc>)]
    pub outcome: Option<Outcome>,
    pub detail: String,
    pub finished_at: Option<Millis>,
    /// The cabinet's last audit-log position when the command was created: its Result, if
    /// any, is after it (what the gateway scans at start for outcomes it stored but never
    /// recorded).
    #[serde(default)]
    pub audit_from: u64,
    /// When a sent command is due for its next resend (backoff with jitter).
    #[serde(default)]
    pub next_send_at: Option<Millis>,
    /// Sent once more after it expired (the last resend: the cabinet answers its stored
    /// outcome or `expired`).
    #[serde(default)]
    pub final_sent: bool,
    /// When a cancel was asked for a command already sent: it is no longer resent, and its
    /// outcome is still the cabinet's (or `no_answer`).
    #[serde(default)]
    pub cancel_requested_at: Option<Millis>,
    /// The cabinet's Result if it came after the command ended `no_answer`.
    #[serde(default, with = "outcome_name")]
    #[schema(value_type = Option<crate::api::openapi::OutcomeDoc>)]
    pub late_outcome: Option<Outcome>,
    #[serde(default)]
    pub late_detail: String,
}

mod outcome_name {
    use locker_schemas::Outcome;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(o: &Option<Outcome>, s: S) -> Result<S::Ok, S::Error> {
        match o {
            Some(o) => s.serialize_str(o.as_str()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Outcome>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        match s {
            None => Ok(None),
            Some(s) => Outcome::ALL
                .iter()
                .copied()
                .find(|o| o.as_str() == s)
                .map(Some)
                .ok_or_else(|| serde::de::Error::custom(format!("unknown outcome {s:?}"))),
        }
    }
}
