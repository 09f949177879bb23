//! The gateway's records as stored in sled and served by the API (JSON): cabinet snapshots.
//! (Command records are in [`crate::commands::record`], re-exported here.)

use locker_schemas::{CabinetId, CompartmentId, Millis};
use serde::{Deserialize, Serialize};

use crate::json::{AlarmName, ChargingName, NetworkName, SizeName};

/// What the gateway knows of one cabinet (served as JSON by the API, and stored as JSON).
///
/// Bounded by construction: compartments come only from the cabinet's declared layout (its
/// hello), alarms and free text are capped by the fleet actor (see `fleet::bounds`).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CabinetSnapshot {
    #[schema(value_type = crate::api::openapi::CabinetIdDoc)]
    pub id: CabinetId,
    pub online: bool,
    /// Gateway clock when the cabinet was last heard from (connection or event), ms.
    pub last_seen: Millis,
    pub firmware: String,
    pub hardware: String,
    pub boot: u32,
    /// Last stored sequence number.
    pub last_seq: u64,
    /// The declared layout (in hello order) with each door's last known state.
    #[serde(deserialize_with = "declared_compartments")]
    pub compartments: Vec<CompartmentView>,
    pub power: Option<PowerView>,
    pub network: Option<NetworkView>,
    /// Alarms the cabinet reports as active.
    pub alarms: Vec<AlarmView>,
}

impl CabinetSnapshot {
    /// A cabinet seen for the first time.
    pub fn new(id: CabinetId) -> Self {
        Self {
            id,
            online: false,
            last_seen: 0,
            firmware: String::new(),
            hardware: String::new(),
            boot: 0,
            last_seq: 0,
            compartments: Vec::new(),
            power: None,
            network: None,
            alarms: Vec::new(),
        }
    }
}

/// Loads stored compartments, dropping the entries older gateways added for undeclared
/// compartments (they had no size); the declared ones come back with the next hello anyway.
fn declared_compartments<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Vec<CompartmentView>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Stored {
        Declared(CompartmentView),
        Other(serde::de::IgnoredAny),
    }
    let all: Vec<Stored> = Vec::deserialize(d)?;
    Ok(all
        .into_iter()
        .filter_map(|c| match c {
            Stored::Declared(c) => Some(c),
            Stored::Other(_) => None,
        })
        .collect())
}

/// A compartment and its last known door state.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = CabinetCompartment)]
pub struct CompartmentView {
    #[schema(value_type = u16)]
    pub id: CompartmentId,
    pub size: SizeName,
    pub open: Option<bool>,
}

/// Last power telemetry.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PowerView {
    pub battery_mv: u32,
    pub soc_pct: u8,
    pub pv_w: u32,
    pub load_w: u32,
    pub charging: ChargingName,
    pub temp_c: f64,
    pub at: Millis,
}

/// Last network report.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NetworkView {
    pub kind: NetworkName,
    pub signal_dbm: Option<i16>,
}

/// An alarm the cabinet reports as active.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AlarmView {
    pub kind: AlarmName,
    #[schema(value_type = Option<u16>)]
    pub compartment: Option<CompartmentId>,
    pub board: Option<u8>,
    /// The cabinet's text, cut to the fleet's cap (on a character boundary).
    pub detail: String,
    pub since: Millis,
}

// The command records live with the dispatcher that owns them.
pub use crate::commands::record::{ActionSpec, CommandRecord, CommandState};
