//! The JSON form of stored uplinks for the audit log API and export.

use locker_schemas::{DoorCause, Uplink, UplinkBody};
use serde_json::{json, Value};

/// One stored event as JSON: the envelope fields plus a `kind` and a kind-specific `data`.
pub fn event_json(u: &Uplink) -> Value {
    let data = match &u.body {
        UplinkBody::Hello(h) => json!({
            "firmware": h.firmware, "hardware": h.hardware,
            "compartments": h.compartments.iter().map(|c| json!({"id": c.id, "size": format!("{:?}", c.size).to_uppercase()})).collect::<Vec<_>>(),
            "network": format!("{:?}", h.network).to_lowercase(), "creds_version": h.creds_version,
        }),
        UplinkBody::Door(d) => json!({
            "compartment": d.compartment, "open": d.open,
            "cause": match d.cause {
                DoorCause::Unknown => json!("unknown"),
                DoorCause::LocalAccess => json!("local_access"),
                DoorCause::Command(id) => json!({"command": id.to_string()}),
            },
        }),
        UplinkBody::Scan(s) => {
            json!({"source": format!("{:?}", s.source).to_lowercase(), "value": s.value})
        }
        UplinkBody::Alarm(a) => json!({
            "alarm": format!("{:?}", a.kind), "active": a.active, "compartment": a.compartment,
            "board": a.board, "detail": a.detail,
        }),
        UplinkBody::Power(p) => json!({
            "battery_mv": p.battery_mv, "soc_pct": p.soc_pct, "pv_w": p.pv_w, "load_w": p.load_w,
            "charging": format!("{:?}", p.charging).to_lowercase(), "temp_c": f64::from(p.temp_dc) / 10.0,
        }),
        UplinkBody::Network(n) => {
            json!({"network": format!("{:?}", n.kind).to_lowercase(), "signal_dbm": n.signal_dbm})
        }
        UplinkBody::Result(r) => {
            json!({"command": r.command.to_string(), "outcome": r.outcome.as_str(), "detail": r.detail})
        }
        UplinkBody::Access(a) => json!({
            "compartment": a.compartment, "action": format!("{:?}", a.action).to_lowercase(),
            "reference": a.reference, "source": format!("{:?}", a.source).to_lowercase(),
        }),
    };
    json!({
        "seq": u.seq, "boot": u.boot, "ts": u.ts, "kind": u.body.kind().as_str(), "data": data,
    })
}
