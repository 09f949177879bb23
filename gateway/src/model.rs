//! The gateway's records as stored in sled and served by the API (JSON): cabinet snapshots.
//! (Command records are in [`crate::commands::record`], re-exported here.)

use locker_schemas::{CabinetId, CompartmentId, Millis, Uplink, UplinkBody};
use serde::{Deserialize, Serialize};

/// What the gateway knows of one cabinet.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CabinetSnapshot {
    pub id: CabinetId,
    pub online: bool,
    /// Gateway clock when the cabinet was last heard from (connection or event), ms.
    pub last_seen: Millis,
    pub firmware: String,
    pub hardware: String,
    pub boot: u32,
    /// Last stored sequence number.
    pub last_seq: u64,
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

    /// Folds one stored event into the snapshot.
    pub fn apply(&mut self, u: &Uplink, now: Millis) {
        self.last_seen = now;
        self.boot = u.boot;
        self.last_seq = self.last_seq.max(u.seq);
        match &u.body {
            UplinkBody::Hello(h) => {
                self.firmware = h.firmware.clone();
                self.hardware = h.hardware.clone();
                let old = std::mem::take(&mut self.compartments);
                self.compartments = h
                    .compartments
                    .iter()
                    .map(|c| CompartmentView {
                        id: c.id,
                        size: format!("{:?}", c.size).to_uppercase(),
                        open: old.iter().find(|o| o.id == c.id).and_then(|o| o.open),
                    })
                    .collect();
                self.network = Some(NetworkView {
                    kind: format!("{:?}", h.network).to_lowercase(),
                    signal_dbm: self.network.as_ref().and_then(|n| n.signal_dbm),
                });
            }
            UplinkBody::Door(d) => {
                match self.compartments.iter_mut().find(|c| c.id == d.compartment) {
                    Some(c) => c.open = Some(d.open),
                    None => self.compartments.push(CompartmentView {
                        id: d.compartment,
                        size: String::new(),
                        open: Some(d.open),
                    }),
                }
            }
            UplinkBody::Power(p) => {
                self.power = Some(PowerView {
                    battery_mv: p.battery_mv,
                    soc_pct: p.soc_pct,
                    pv_w: p.pv_w,
                    load_w: p.load_w,
                    charging: format!("{:?}", p.charging).to_lowercase(),
                    temp_c: f64::from(p.temp_dc) / 10.0,
                    at: u.ts,
                })
            }
            UplinkBody::Network(n) => {
                self.network = Some(NetworkView {
                    kind: format!("{:?}", n.kind).to_lowercase(),
                    signal_dbm: n.signal_dbm,
                })
            }
            UplinkBody::Alarm(a) => {
                let kind = format!("{:?}", a.kind);
                self.alarms.retain(|x| {
                    !(x.kind == kind && x.compartment == a.compartment && x.board == a.board)
                });
                if a.active {
                    self.alarms.push(AlarmView {
                        kind,
                        compartment: a.compartment,
                        board: a.board,
                        detail: a.detail.clone(),
                        since: u.ts,
                    });
                }
            }
            UplinkBody::Scan(_) | UplinkBody::Result(_) | UplinkBody::Access(_) => {}
        }
    }
}

/// A compartment and its last known door state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompartmentView {
    pub id: CompartmentId,
    pub size: String,
    pub open: Option<bool>,
}

/// Last power telemetry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PowerView {
    pub battery_mv: u32,
    pub soc_pct: u8,
    pub pv_w: u32,
    pub load_w: u32,
    pub charging: String,
    pub temp_c: f64,
    pub at: Millis,
}

/// Last network report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetworkView {
    pub kind: String,
    pub signal_dbm: Option<i16>,
}

/// An alarm the cabinet reports as active.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AlarmView {
    pub kind: String,
    pub compartment: Option<CompartmentId>,
    pub board: Option<u8>,
    pub detail: String,
    pub since: Millis,
}

// The command records live with the dispatcher that owns them.
pub use crate::commands::record::{ActionSpec, CommandRecord, CommandState};
