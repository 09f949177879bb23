//! The JSON form of stored uplinks for the audit log API and export: typed serde structs,
//! one per event kind, with the enum names of [`crate::json`].
//!
//! An event is `{"seq", "boot", "ts", "kind", "data"}`; `kind` is the uplink topic kind and
//! `data` its kind-specific fields. The audit log is the cabinet's record as sent: unlike the
//! fleet snapshot, nothing here is capped.

use locker_schemas::{CompartmentId, Millis, Uplink, UplinkBody};
use serde::Serialize;

use crate::json::{
    AccessActionName, AlarmName, ChargingName, DoorCauseJson, NetworkName, ScanSourceName, SizeName,
};

/// One stored event.
#[derive(Debug, Clone, Serialize)]
pub struct EventJson<'a> {
    pub seq: u64,
    pub boot: u32,
    pub ts: Millis,
    #[serde(flatten)]
    pub body: EventData<'a>,
}

/// The kind and its data.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", content = "data", rename_all = "snake_case")]
pub enum EventData<'a> {
    Hello {
        firmware: &'a str,
        hardware: &'a str,
        compartments: Vec<CompartmentJson>,
        network: NetworkName,
        creds_version: u64,
    },
    Door {
        compartment: CompartmentId,
        open: bool,
        cause: DoorCauseJson,
        /// The parcel sensor read when the door closed; null when there is no reading.
        parcel: Option<bool>,
    },
    Scan {
        source: ScanSourceName,
        value: &'a str,
    },
    Alarm {
        alarm: AlarmName,
        active: bool,
        compartment: Option<CompartmentId>,
        board: Option<u8>,
        detail: &'a str,
    },
    Power {
        battery_mv: u32,
        soc_pct: u8,
        pv_w: u32,
        load_w: u32,
        charging: ChargingName,
        temp_c: f64,
    },
    Network {
        network: NetworkName,
        signal_dbm: Option<i16>,
    },
    Result {
        command: String,
        outcome: &'static str,
        detail: &'a str,
    },
    Access {
        compartment: CompartmentId,
        action: AccessActionName,
        reference: &'a str,
        source: ScanSourceName,
    },
}

/// A compartment of a hello's layout.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct CompartmentJson {
    pub id: CompartmentId,
    pub size: SizeName,
}

impl<'a> EventJson<'a> {
    /// The JSON view of a stored uplink.
    pub fn new(u: &'a Uplink) -> Self {
        let body = match &u.body {
            UplinkBody::Hello(h) => EventData::Hello {
                firmware: &h.firmware,
                hardware: &h.hardware,
                compartments: h
                    .compartments
                    .iter()
                    .map(|c| CompartmentJson {
                        id: c.id,
                        size: c.size.into(),
                    })
                    .collect(),
                network: h.network.into(),
                creds_version: h.creds_version,
            },
            UplinkBody::Door(d) => EventData::Door {
                compartment: d.compartment,
                open: d.open,
                cause: d.cause.into(),
                parcel: d.parcel,
            },
            UplinkBody::Scan(s) => EventData::Scan {
                source: s.source.into(),
                value: &s.value,
            },
            UplinkBody::Alarm(a) => EventData::Alarm {
                alarm: a.kind.into(),
                active: a.active,
                compartment: a.compartment,
                board: a.board,
                detail: &a.detail,
            },
            UplinkBody::Power(p) => EventData::Power {
                battery_mv: p.battery_mv,
                soc_pct: p.soc_pct,
                pv_w: p.pv_w,
                load_w: p.load_w,
                charging: p.charging.into(),
                temp_c: f64::from(p.temp_dc) / 10.0,
            },
            UplinkBody::Network(n) => EventData::Network {
                network: n.kind.into(),
                signal_dbm: n.signal_dbm,
            },
            UplinkBody::Result(r) => EventData::Result {
                command: r.command.to_string(),
                outcome: r.outcome.as_str(),
                detail: &r.detail,
            },
            UplinkBody::Access(a) => EventData::Access {
                compartment: a.compartment,
                action: a.action.into(),
                reference: &a.reference,
                source: a.source.into(),
            },
        };
        Self {
            seq: u.seq,
            boot: u.boot,
            ts: u.ts,
            body,
        }
    }
}

/// One stored event as a JSON value (see [`EventJson`]).
pub fn event_json(u: &Uplink) -> serde_json::Value {
    serde_json::to_value(EventJson::new(u)).unwrap_or(serde_json::Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use locker_schemas::{CabinetId, Door, DoorCause};
    use serde_json::json;

    #[test]
    fn kind_tags_are_the_topic_kinds() {
        let u = Uplink {
            cabinet: CabinetId::new("CAB-1").expect("id"),
            boot: 2,
            seq: 7,
            ts: 1000,
            body: UplinkBody::Door(Door {
                compartment: CompartmentId(3),
                open: true,
                cause: DoorCause::LocalAccess,
                parcel: None,
            }),
        };
        assert_eq!(
            event_json(&u),
            json!({"seq": 7, "boot": 2, "ts": 1000, "kind": u.body.kind().as_str(),
                   "data": {"compartment": 3, "open": true, "cause": "local_access", "parcel": null}})
        );
    }
}
