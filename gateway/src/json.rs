//! The JSON names of the wire enums, defined once for the API, the audit log export and the
//! stored fleet snapshots.
//!
//! On the wire (CBOR) `locker-schemas` encodes these enums as small integers; integrators see
//! names. Each JSON type here converts from its wire enum with an exhaustive `match`, so a new
//! wire variant cannot reach the API without a name. The names are the ones the README's
//! "JSON values" table documents (a test checks the API against that table). Aliases accept
//! the names older gateways stored (`Debug` strings), so stored snapshots keep loading.

use locker_schemas::{
    AccessAction, AlarmKind, ChargeState, DoorCause, NetworkKind, ScanSource, Size,
};
use serde::{Deserialize, Serialize};

/// A compartment size: `S`, `M`, `L`, `XL`.
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
#[serde(rename_all = "UPPERCASE")]
pub enum SizeName {
    S,
    M,
    L,
    Xl,
}

impl SizeName {
    /// Every name, in wire order.
    pub const ALL: [SizeName; 4] = [SizeName::S, SizeName::M, SizeName::L, SizeName::Xl];
}

impl From<Size> for SizeName {
    fn from(s: Size) -> Self {
        match s {
            Size::S => SizeName::S,
            Size::M => SizeName::M,
            Size::L => SizeName::L,
            Size::Xl => SizeName::Xl,
        }
    }
}

/// How a cabinet is online: `cellular`, `wifi`, `lan`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NetworkName {
    Cellular,
    Wifi,
    Lan,
}

impl From<NetworkKind> for NetworkName {
    fn from(k: NetworkKind) -> Self {
        match k {
            NetworkKind::Cellular => NetworkName::Cellular,
            NetworkKind::Wifi => NetworkName::Wifi,
            NetworkKind::Lan => NetworkName::Lan,
        }
    }
}

/// What the charge controller does: `not_charging`, `float`, `boost`, `equalize`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ChargingName {
    #[serde(alias = "notcharging")]
    NotCharging,
    Float,
    Boost,
    Equalize,
}

impl From<ChargeState> for ChargingName {
    fn from(c: ChargeState) -> Self {
        match c {
            ChargeState::NotCharging => ChargingName::NotCharging,
            ChargeState::Float => ChargingName::Float,
            ChargeState::Boost => ChargingName::Boost,
            ChargeState::Equalize => ChargingName::Equalize,
        }
    }
}

/// An alarm kind: `forced_open`, `door_left_open`, `tamper`, `lock_board_offline`,
/// `power_fail`, `outbox_nearly_full`, `keypad_locked`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AlarmName {
    #[serde(alias = "ForcedOpen")]
    ForcedOpen,
    #[serde(alias = "DoorLeftOpen")]
    DoorLeftOpen,
    #[serde(alias = "Tamper")]
    Tamper,
    #[serde(alias = "LockBoardOffline")]
    LockBoardOffline,
    #[serde(alias = "PowerFail")]
    PowerFail,
    #[serde(alias = "OutboxNearlyFull")]
    OutboxNearlyFull,
    #[serde(alias = "KeypadLocked")]
    KeypadLocked,
    #[serde(alias = "ChargerFault")]
    ChargerFault,
}

impl From<AlarmKind> for AlarmName {
    fn from(k: AlarmKind) -> Self {
        match k {
            AlarmKind::ForcedOpen => AlarmName::ForcedOpen,
            AlarmKind::DoorLeftOpen => AlarmName::DoorLeftOpen,
            AlarmKind::Tamper => AlarmName::Tamper,
            AlarmKind::LockBoardOffline => AlarmName::LockBoardOffline,
            AlarmKind::PowerFail => AlarmName::PowerFail,
            AlarmKind::OutboxNearlyFull => AlarmName::OutboxNearlyFull,
            AlarmKind::KeypadLocked => AlarmName::KeypadLocked,
            AlarmKind::ChargerFault => AlarmName::ChargerFault,
        }
    }
}

/// Where a scan or a local access credential came from: `barcode`, `qr`, `rfid`, `keypad`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScanSourceName {
    Barcode,
    Qr,
    Rfid,
    Keypad,
}

impl From<ScanSource> for ScanSourceName {
    fn from(s: ScanSource) -> Self {
        match s {
            ScanSource::Barcode => ScanSourceName::Barcode,
            ScanSource::Qr => ScanSourceName::Qr,
            ScanSource::Rfid => ScanSourceName::Rfid,
            ScanSource::Keypad => ScanSourceName::Keypad,
        }
    }
}

/// What a local access did: `pickup`, `deposit`, `collect`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccessActionName {
    Pickup,
    Deposit,
    Collect,
}

impl From<AccessAction> for AccessActionName {
    fn from(a: AccessAction) -> Self {
        match a {
            AccessAction::Pickup => AccessActionName::Pickup,
            AccessAction::Deposit => AccessActionName::Deposit,
            AccessAction::Collect => AccessActionName::Collect,
        }
    }
}

/// Why a door changed state: `"unknown"`, `"local_access"`, or `{"command": "<id>"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DoorCauseJson {
    Named(DoorCauseName),
    Command { command: String },
}

/// The named door causes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DoorCauseName {
    Unknown,
    LocalAccess,
}

impl From<DoorCause> for DoorCauseJson {
    fn from(c: DoorCause) -> Self {
        match c {
            DoorCause::Unknown => DoorCauseJson::Named(DoorCauseName::Unknown),
            DoorCause::LocalAccess => DoorCauseJson::Named(DoorCauseName::LocalAccess),
            DoorCause::Command(id) => DoorCauseJson::Command {
                command: id.to_string(),
            },
        }
    }
}

/// RFC 3339 UTC of a time in ms since the epoch (with the milliseconds when there are any);
/// empty for a time out of range.
pub fn utc(at: locker_schemas::Millis) -> String {
    let nanos = i128::from(at) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, to_value};

    #[test]
    fn names_are_the_documented_ones() {
        assert_eq!(to_value(SizeName::Xl).ok(), Some(json!("XL")));
        assert_eq!(
            to_value(ChargingName::from(ChargeState::NotCharging)).ok(),
            Some(json!("not_charging"))
        );
        assert_eq!(
            to_value(AlarmName::from(AlarmKind::LockBoardOffline)).ok(),
            Some(json!("lock_board_offline"))
        );
        assert_eq!(
            to_value(DoorCauseJson::from(DoorCause::LocalAccess)).ok(),
            Some(json!("local_access"))
        );
    }

    #[test]
    fn names_stored_by_older_gateways_still_load() {
        let old: Result<AlarmName, _> = serde_json::from_value(json!("ForcedOpen"));
        assert_eq!(old.ok(), Some(AlarmName::ForcedOpen));
        let old: Result<ChargingName, _> = serde_json::from_value(json!("notcharging"));
        assert_eq!(old.ok(), Some(ChargingName::NotCharging));
    }
}
