//! Turns the gateway's logs into the events integrators receive: a parcel-trail record of an
//! order's transition into `order.<state>` (and `order.exception`, `door.exception` when it
//! carries one), an alert change into `alert.<change>` (and `door.exception` for a door alert
//! raised), a presence change into `cabinet.online|offline`; and an order transition into a
//! carrier's tracking update where its mapping names the state. Pure.

use locker_schemas::{CabinetId, Millis, SiteId};
use serde_json::json;

use super::config::CarrierTracking;
use super::model::Event;
use crate::parcels::model::Exception;
use crate::rules::model::AlertKind;
use crate::store::alerts::{AlertChange, ChangeKind};
use crate::store::parcels::AuditRecord;

pub use crate::json::utc;

/// Order exceptions that are about a door or what is behind it.
fn door_exception(e: Exception) -> bool {
    matches!(
        e,
        Exception::DoorJammed
            | Exception::DoorForced
            | Exception::ParcelStillPresent
            | Exception::PickupWithoutParcel
            | Exception::CompartmentTaken
    )
}

/// Alerts that are door exceptions.
fn door_alert(k: AlertKind) -> bool {
    matches!(
        k,
        AlertKind::DoorForced
            | AlertKind::DoorLeftOpen
            | AlertKind::LockJammed
            | AlertKind::ParcelSensor
    )
}

/// The events of one parcel-trail record (none for records that are not order transitions).
pub fn from_parcel(r: &AuditRecord) -> Vec<Event> {
    if r.what != "order" {
        return Vec::new();
    }
    let Some(to) = &r.to else {
        return Vec::new();
    };
    let data = json!({
        "order": r.order,
        "tracking": r.tracking,
        "reference": r.reference,
        "from": r.from,
        "state": to,
        "cause": r.cause,
        "actor": r.actor,
        "compartment": r.compartment,
        "exception": r.exception.map(|e| e.as_str()),
        "detail": r.detail,
    });
    let base = |id: String, kind: String| Event {
        id,
        kind,
        at: r.at,
        timestamp: utc(r.at),
        cabinet: r.cabinet.as_ref().map(|c| c.to_string()),
        site: r.site.clone(),
        carrier: r.carrier.clone(),
        data: data.clone(),
    };
    let mut out = Vec::with_capacity(1);
    // a record whose state did not change only reports an exception
    if r.from.as_deref() != Some(to.as_str()) {
        out.push(base(format!("evt_parcel_{}", r.pos), format!("order.{to}")));
    }
    if let Some(e) = r.exception {
        out.push(base(
            format!("evt_parcel_{}_x", r.pos),
            "order.exception".into(),
        ));
        if door_exception(e) {
            out.push(base(
                format!("evt_parcel_{}_d", r.pos),
                "door.exception".into(),
            ));
        }
    }
    out
}

/// The events of one alert change (`updated` changes are not sent).
pub fn from_alert(c: &AlertChange) -> Vec<Event> {
    if c.change == ChangeKind::Updated {
        return Vec::new();
    }
    let a = &c.alert;
    let data = serde_json::to_value(a).unwrap_or_default();
    let base = |id: String, kind: String| Event {
        id,
        kind,
        at: c.at,
        timestamp: utc(c.at),
        cabinet: Some(a.cabinet.to_string()),
        site: a.site.clone(),
        carrier: None,
        data: data.clone(),
    };
    let mut out = vec![base(
        format!("evt_alert_{}", c.pos),
        format!("alert.{}", c.change.as_str()),
    )];
    if c.change == ChangeKind::Raised && door_alert(a.kind) {
        out.push(base(
            format!("evt_alert_{}_d", c.pos),
            "door.exception".into(),
        ));
    }
    out
}

/// The event of a presence change.
pub fn from_presence(
    id: String,
    cabinet: &CabinetId,
    site: Option<SiteId>,
    online: bool,
    at: Millis,
) -> Event {
    Event {
        id,
        kind: if online {
            "cabinet.online".into()
        } else {
            "cabinet.offline".into()
        },
        at,
        timestamp: utc(at),
        cabinet: Some(cabinet.to_string()),
        site,
        carrier: None,
        data: json!({"cabinet": cabinet, "online": online}),
    }
}

/// Why a carrier's tracking body could not be made.
#[derive(Debug, thiserror::Error)]
#[error("carrier tracking template: {0}")]
pub struct TemplateError(#[from] minijinja::Error);

/// The carrier's tracking templates, compiled once.
pub struct TrackingTemplates {
    env: minijinja::Environment<'static>,
}

impl TrackingTemplates {
    /// Compiles every carrier's body template (a template that does not compile is a
    /// configuration error at start).
    pub fn new(
        carriers: &std::collections::BTreeMap<String, CarrierTracking>,
    ) -> Result<Self, TemplateError> {
        let mut env = minijinja::Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        for (id, c) in carriers {
            env.add_template_owned(id.clone(), c.body.clone())?;
        }
        // render each once with a sample, so a bad variable name fails at start
        for (id, c) in carriers {
            let sample = json!({
                "tracking": "1Z999", "reference": "ref", "status": "S", "state": "ready",
                "order": "ORD-1", "at": 0, "at_utc": utc(0), "site": "site", "cabinet": "CAB-1",
                "compartment": 1, "carrier": id,
            });
            env.get_template(id)?.render(&sample)?;
            let _ = c;
        }
        Ok(Self { env })
    }

    /// The tracking update of an order record for its carrier, if the carrier has a mapping
    /// for the state: (event id, body).
    pub fn update(
        &self,
        carriers: &std::collections::BTreeMap<String, CarrierTracking>,
        r: &AuditRecord,
    ) -> Result<Option<(String, String)>, TemplateError> {
        if r.what != "order" || r.from == r.to {
            return Ok(None);
        }
        let (Some(carrier), Some(to)) = (&r.carrier, &r.to) else {
            return Ok(None);
        };
        let Some(cfg) = carriers.get(carrier.as_str()) else {
            return Ok(None);
        };
        let Some(status) = cfg.statuses.get(to) else {
            return Ok(None);
        };
        let ctx = json!({
            "tracking": r.tracking.clone().unwrap_or_default(),
            "reference": r.reference,
            "status": status,
            "state": to,
            "order": r.order,
            "at": r.at,
            "at_utc": utc(r.at),
            "site": r.site,
            "cabinet": r.cabinet,
            "compartment": r.compartment,
            "carrier": carrier,
        });
        let body = self.env.get_template(carrier.as_str())?.render(&ctx)?;
        Ok(Some((format!("evt_parcel_{}_t", r.pos), body)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn record(from: &str, to: &str, exception: Option<Exception>) -> AuditRecord {
        AuditRecord {
            pos: 7,
            at: 1_790_000_000_000,
            what: "order".into(),
            order: Some(locker_schemas::OrderId::generate()),
            carrier: Some("dhl".parse().expect("id")),
            site: Some("berlin-hbf".parse().expect("id")),
            cabinet: Some(CabinetId::new("CAB-000001").expect("id")),
            compartment: Some(locker_schemas::CompartmentId(3)),
            from: Some(from.into()),
            to: Some(to.into()),
            cause: "local_access".into(),
            actor: "courier-7".into(),
            exception,
            detail: String::new(),
            tracking: Some("1Z\"quoted\"".into()),
            reference: None,
        }
    }

    #[test]
    fn an_order_transition_is_an_event_and_its_door_exception_too() {
        let e = from_parcel(&record("reserved", "deposited", None));
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].kind, "order.deposited");
        assert_eq!(e[0].id, "evt_parcel_7");
        assert_eq!(e[0].timestamp, "2026-09-21T14:13:20Z");
        let e = from_parcel(&record("reserved", "reserved", Some(Exception::DoorJammed)));
        let kinds: Vec<_> = e.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(kinds, vec!["order.exception", "door.exception"]);
    }

    #[test]
    fn carrier_tracking_renders_its_mapping_with_json_escaping() {
        let mut carriers = BTreeMap::new();
        carriers.insert(
            "dhl".to_string(),
            CarrierTracking {
                url: "https://t.example".into(),
                statuses: [("ready".to_string(), "DELIVERED_TO_LOCKER".to_string())].into(),
                body: r#"{"t": {{ tracking | tojson }}, "s": {{ status | tojson }}}"#.into(),
                content_type: "application/json".into(),
                headers: BTreeMap::new(),
                secret: None,
            },
        );
        let t = TrackingTemplates::new(&carriers).expect("compile");
        let (id, body) = t
            .update(&carriers, &record("deposited", "ready", None))
            .expect("render")
            .expect("mapped");
        assert_eq!(id, "evt_parcel_7_t");
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["t"], "1Z\"quoted\"");
        assert_eq!(v["s"], "DELIVERED_TO_LOCKER");
        assert!(t
            .update(&carriers, &record("ready", "picked_up", None))
            .expect("render")
            .is_none());
        carriers.get_mut("dhl").expect("dhl").body = "{{ nope }}".into();
        assert!(TrackingTemplates::new(&carriers).is_err());
    }
}
