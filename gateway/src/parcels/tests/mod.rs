//! The parcel state driven message by message without its task, with the clock in the test's
//! hands (the harness, [`World`], is here; the scenarios in `flows`, the property in `props`): reservations that lapse, reminders and expiry, returns, extensions, deposits that
//! land in another compartment, jammed doors, and partitions changed under load (a property
//! test over random interleavings: never two live orders in one compartment).

mod flows;
mod props;

use std::collections::HashMap;

use locker_schemas::{
    AccessAction, CabinetId, CompartmentId, CompartmentInfo, Hello, LocalAccess, NetworkKind,
    ScanSource, Size, Uplink, UplinkBody,
};
use tokio::sync::oneshot;

use super::actor::{Deferred, State};
use super::model::{Carrier, Courier, NoticeKind, OrderKind, Recipient, Site};
use super::views::NewOrder;
use super::{Caller, Msg, ParcelsConfig, Scope};
use crate::json::SizeName;
use crate::store::parcels::Loaded;

pub(super) const T0: u64 = 1_800_000_000_000;

pub(super) fn op() -> Caller {
    Caller {
        client: "ops".into(),
        scope: Scope::Operator,
    }
}

pub(super) fn carrier(c: &str) -> Caller {
    Caller {
        client: format!("{c}-api"),
        scope: Scope::Carrier {
            carrier: c.parse().expect("carrier"),
        },
    }
}

pub(super) fn cab(n: u32) -> CabinetId {
    CabinetId::new(format!("CAB-{n}")).expect("id")
}

pub(super) struct World {
    pub(super) st: State,
    seq: HashMap<CabinetId, u64>,
}

impl World {
    /// Two cabinets at one site (sizes S, M, M, L each), carriers dhl and ups, a courier each.
    pub(super) fn new() -> Self {
        let metrics = crate::metrics::Metrics::new().expect("metrics").parcels;
        let cfg = ParcelsConfig::default();
        let st = State::new(cfg, Loaded::default(), metrics);
        let mut w = World {
            st,
            seq: HashMap::new(),
        };
        for k in 0..2 {
            w.hello(k, &[Size::S, Size::M, Size::M, Size::L]);
        }
        for c in ["dhl", "ups"] {
            w.call(|tx| {
                Msg::PutCarrier(
                    Carrier {
                        id: c.parse().expect("id"),
                        name: c.into(),
                        sites: Vec::new(),
                        pickup_window_h: None,
                    },
                    op(),
                    tx,
                )
            })
            .expect("carrier");
            w.call(|tx| {
                Msg::PutCourier(
                    Courier {
                        id: format!("{c}-c1").parse().expect("id"),
                        carrier: c.parse().expect("id"),
                        name: String::new(),
                        badge: Some(format!("BADGE-{c}")),
                        pin: None,
                        active: true,
                    },
                    op(),
                    tx,
                )
            })
            .expect("courier");
        }
        w.call(|tx| {
            Msg::PutSite(
                Site {
                    id: "s".parse().expect("id"),
                    name: "S".into(),
                    time_zone: "Europe/Berlin".into(),
                    address: String::new(),
                    cabinets: vec![cab(0), cab(1)],
                    pickup_window_h: None,
                },
                op(),
                tx,
            )
        })
        .expect("site");
        w
    }

    /// Sends one message and runs its deferred answer (what the actor does after the commit).
    fn call<T: Send + 'static>(
        &mut self,
        f: impl FnOnce(oneshot::Sender<Result<T, super::ParcelError>>) -> Msg,
    ) -> Result<T, super::ParcelError> {
        let (tx, mut rx) = oneshot::channel();
        let mut d: Deferred = Vec::new();
        self.st.on_msg(f(tx), &mut d);
        self.st.batch = Default::default();
        for x in d {
            x();
        }
        rx.try_recv().expect("answered")
    }

    pub(super) fn uplink(&mut self, k: u32, body: UplinkBody, now: u64) {
        let s = self.seq.entry(cab(k)).or_insert(0);
        *s += 1;
        let u = Uplink {
            cabinet: cab(k),
            boot: 1,
            seq: *s,
            ts: now,
            body,
        };
        let pos = *s;
        self.st.apply_uplink(pos, &u, now);
    }

    pub(super) fn hello(&mut self, k: u32, sizes: &[Size]) {
        let compartments = sizes
            .iter()
            .zip(1..)
            .map(|(s, i)| CompartmentInfo {
                id: CompartmentId(i),
                size: *s,
            })
            .collect();
        self.uplink(
            k,
            UplinkBody::Hello(Hello {
                firmware: "fw".into(),
                hardware: "hw".into(),
                compartments,
                network: NetworkKind::Lan,
                creds_version: 0,
            }),
            T0,
        );
    }

    pub(super) fn call_create(
        &mut self,
        n: NewOrder,
        c: Caller,
    ) -> Result<super::OrderView, super::ParcelError> {
        let (tx, mut rx) = oneshot::channel();
        let mut d: Deferred = Vec::new();
        self.st.on_msg(Msg::Create(vec![n], c, tx), &mut d);
        for x in d {
            x();
        }
        let mut r = rx.try_recv().expect("answered");
        r.pop().expect("one").map(|(v, _)| v)
    }

    pub(super) fn order(
        &mut self,
        c: &str,
        size: SizeName,
        kind: OrderKind,
        tracking: &str,
    ) -> super::OrderView {
        let n = NewOrder {
            kind,
            site: "s".parse().expect("site"),
            cabinet: None,
            size,
            tracking: tracking.into(),
            carrier: None,
            reference: None,
            recipient: Recipient::default(),
            reserve: true,
            pickup_window_h: None,
            pickup_window_min: None,
            idempotency_key: None,
        };
        let (tx, mut rx) = oneshot::channel();
        let mut d: Deferred = Vec::new();
        self.st.on_msg(Msg::Create(vec![n], carrier(c), tx), &mut d);
        for x in d {
            x();
        }
        let mut r = rx.try_recv().expect("answered");
        r.pop().expect("one").expect("created").0
    }

    pub(super) fn access(
        &mut self,
        k: u32,
        c: u16,
        action: AccessAction,
        reference: String,
        actor: &str,
        now: u64,
    ) {
        self.uplink(
            k,
            UplinkBody::Access(LocalAccess {
                compartment: CompartmentId(c),
                action,
                reference,
                source: ScanSource::Keypad,
                actor: actor.into(),
            }),
            now,
        );
    }

    pub(super) fn get(&self, id: locker_schemas::OrderId) -> &super::Order {
        self.st.orders.get(&id).expect("order")
    }

    pub(super) fn place(&self, id: locker_schemas::OrderId) -> (u32, u16) {
        let o = self.get(id);
        let k = o.cabinet.as_ref().expect("cabinet").as_str()[4..]
            .parse()
            .expect("n");
        (k, o.compartment.expect("compartment").0)
    }

    pub(super) fn notices(&self, kind: NoticeKind) -> usize {
        self.st
            .metrics
            .notices
            .with_label_values(&[&serde_json::to_value(kind)
                .expect("k")
                .as_str()
                .expect("s")
                .to_owned()])
            .get() as usize
    }

    /// The invariant: every live order holding a compartment is its slot's holder, and no
    /// slot is held by an order that is not live there.
    pub(super) fn check(&self) {
        let mut seen = HashMap::new();
        for o in self.st.orders.values() {
            if super::machine::holds_compartment(o.state) {
                let key = (
                    o.cabinet.clone().expect("cabinet"),
                    o.compartment.expect("compartment"),
                );
                assert!(
                    seen.insert(key.clone(), o.id).is_none(),
                    "two live orders in {key:?}"
                );
                assert_eq!(
                    self.st.table.slot(&key.0, key.1).and_then(|s| s.holder),
                    Some(o.id),
                    "{key:?}"
                );
            }
        }
        for (k, slots) in &self.st.table.cabinets {
            for (c, s) in &slots.slots {
                if let Some(h) = s.holder {
                    assert_eq!(
                        seen.get(&(k.clone(), *c)),
                        Some(&h),
                        "stale holder in {k} {c}"
                    );
                }
            }
        }
    }
}
