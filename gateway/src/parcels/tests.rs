//! The parcel state driven message by message without its task, with the clock in the test's
//! hands: reservations that lapse, reminders and expiry, returns, extensions, deposits that
//! land in another compartment, jammed doors, and partitions changed under load (a property
//! test over random interleavings: never two live orders in one compartment).

use std::collections::HashMap;

use locker_schemas::{
    AccessAction, CabinetId, CommandResult, CompartmentId, CompartmentInfo, CredKind, Hello,
    LocalAccess, NetworkKind, Outcome as CmdOutcome, ScanSource, Size, Uplink, UplinkBody,
};
use proptest::prelude::*;
use tokio::sync::oneshot;

use super::actor::{Deferred, State};
use super::model::{Carrier, Courier, NoticeKind, OrderKind, OrderState, Recipient, Site};
use super::views::NewOrder;
use super::{Caller, Msg, OrderAction, ParcelsConfig, Scope, HOUR_MS};
use crate::json::SizeName;
use crate::store::parcels::Loaded;

const T0: u64 = 1_800_000_000_000;

fn op() -> Caller {
    Caller {
        client: "ops".into(),
        scope: Scope::Operator,
    }
}

fn carrier(c: &str) -> Caller {
    Caller {
        client: format!("{c}-api"),
        scope: Scope::Carrier {
            carrier: c.parse().expect("carrier"),
        },
    }
}

fn cab(n: u32) -> CabinetId {
    CabinetId::new(format!("CAB-{n}")).expect("id")
}

struct World {
    st: State,
    seq: HashMap<CabinetId, u64>,
}

impl World {
    /// Two cabinets at one site (sizes S, M, M, L each), carriers dhl and ups, a courier each.
    fn new() -> Self {
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

    fn uplink(&mut self, k: u32, body: UplinkBody, now: u64) {
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

    fn hello(&mut self, k: u32, sizes: &[Size]) {
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

    fn order(
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

    fn access(
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

    fn get(&self, id: locker_schemas::OrderId) -> &super::Order {
        self.st.orders.get(&id).expect("order")
    }

    fn place(&self, id: locker_schemas::OrderId) -> (u32, u16) {
        let o = self.get(id);
        let k = o.cabinet.as_ref().expect("cabinet").as_str()[4..]
            .parse()
            .expect("n");
        (k, o.compartment.expect("compartment").0)
    }

    fn notices(&self, kind: NoticeKind) -> usize {
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
    fn check(&self) {
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

#[test]
fn a_lapsed_reservation_frees_its_compartment_for_a_waiting_order() {
    let mut w = World::new();
    // 8 compartments in all: the 9th order waits
    let ids: Vec<_> = (0..9)
        .map(|i| {
            w.order("dhl", SizeName::S, OrderKind::Delivery, &format!("T{i}"))
                .id
        })
        .collect();
    assert_eq!(w.get(ids[8]).state, OrderState::Created);
    assert_eq!(
        w.get(ids[8]).exception,
        Some(super::model::Exception::NoCompartment)
    );
    // the smallest first: the S compartments went to the first two
    assert_eq!(w.place(ids[0]).1, 1);
    w.check();
    // a day later the reservations lapse; the waiting order gets a compartment
    w.st.on_tick(T0 + 25 * HOUR_MS + 1);
    w.st.on_tick(T0 + 25 * HOUR_MS + 2);
    w.check();
    assert_eq!(w.get(ids[0]).state, OrderState::Created);
    assert!(
        w.st.orders
            .values()
            .any(|o| o.state == OrderState::Reserved),
        "the waiting order is reserved"
    );
    assert_eq!(w.get(ids[8]).exception, None);
}

#[test]
fn ready_reminded_expired_then_collected_by_the_carrier() {
    let mut w = World::new();
    let o = w.order("dhl", SizeName::M, OrderKind::Delivery, "T1");
    let (k, c) = w.place(o.id);
    w.access(k, c, AccessAction::Deposit, o.id.to_string(), "dhl-c1", T0);
    assert_eq!(w.get(o.id).state, OrderState::Ready);
    assert_eq!(w.notices(NoticeKind::Ready), 1);
    let deadline = w.get(o.id).pickup_deadline.expect("deadline");
    // the pickup code is in the cabinet's set, with its expiry
    let set = w.st.creds_parts(&cab(k), 1, T0);
    assert_eq!(
        set[0]
            .entries
            .iter()
            .filter(|e| e.kind == CredKind::Pickup)
            .count(),
        2,
        "PIN and QR"
    );
    w.st.on_tick(deadline - 23 * HOUR_MS);
    assert_eq!(w.notices(NoticeKind::Reminder), 1);
    w.st.on_tick(deadline - 22 * HOUR_MS);
    assert_eq!(w.notices(NoticeKind::Reminder), 1, "once");
    w.st.on_tick(deadline + 1);
    assert_eq!(w.get(o.id).state, OrderState::Expired);
    assert_eq!(w.notices(NoticeKind::Expired), 1);
    let set = w.st.creds_parts(&cab(k), 2, T0);
    assert!(
        set[0].entries.iter().all(|e| e.kind != CredKind::Pickup),
        "the code no longer opens"
    );
    assert!(set[0].entries.iter().any(|e| e.kind == CredKind::Collect
        && e.compartment == Some(CompartmentId(c))
        && e.carrier == "dhl"));
    // extend: ready again with a new code
    w.call(|tx| Msg::Act(o.id, OrderAction::Extend { hours: 24 }, op(), tx))
        .expect("extend");
    assert_eq!(w.get(o.id).state, OrderState::Ready);
    assert_eq!(w.notices(NoticeKind::Resend), 1);
    w.call(|tx| Msg::Act(o.id, OrderAction::RequestReturn, carrier("dhl"), tx))
        .expect("return");
    w.access(
        k,
        c,
        AccessAction::Collect,
        o.id.to_string(),
        "dhl-c1",
        T0 + 100,
    );
    assert_eq!(w.get(o.id).state, OrderState::Returned);
    w.check();
    assert!(w
        .st
        .table
        .slot(&cab(k), CompartmentId(c))
        .expect("slot")
        .holder
        .is_none());
}

#[test]
fn a_return_is_dropped_off_with_its_code_and_collected() {
    let mut w = World::new();
    let o = w.order("ups", SizeName::M, OrderKind::Return, "RET-1");
    assert_eq!(w.get(o.id).state, OrderState::Reserved);
    assert_eq!(w.notices(NoticeKind::ReturnCode), 1);
    let (k, c) = w.place(o.id);
    let set = w.st.creds_parts(&cab(k), 1, T0);
    assert!(set[0]
        .entries
        .iter()
        .any(|e| e.kind == CredKind::DropOff && e.compartment == Some(CompartmentId(c))));
    w.access(k, c, AccessAction::Deposit, o.id.to_string(), "", T0);
    assert_eq!(
        w.get(o.id).state,
        OrderState::Deposited,
        "a return is not 'ready'"
    );
    let set = w.st.creds_parts(&cab(k), 2, T0);
    assert!(set[0]
        .entries
        .iter()
        .any(|e| e.kind == CredKind::Collect && e.carrier == "ups"));
    w.access(k, c, AccessAction::Collect, o.id.to_string(), "ups-c1", T0);
    assert_eq!(w.get(o.id).state, OrderState::Returned);
    w.check();
}

#[test]
fn a_deposit_in_a_bigger_compartment_moves_the_order_and_the_reservation_it_took() {
    let mut w = World::new();
    let a = w.order("dhl", SizeName::S, OrderKind::Delivery, "A");
    let b = w.order("dhl", SizeName::L, OrderKind::Delivery, "B");
    let (ka, ca) = w.place(a.id);
    let (kb, cb) = w.place(b.id);
    assert_eq!((ka, ca), (0, 1));
    assert_eq!(cb, 4, "the L");
    // A did not fit its S: the courier used the L that B had reserved, in B's cabinet
    w.access(
        kb,
        cb,
        AccessAction::Deposit,
        a.id.to_string(),
        "dhl-c1",
        T0,
    );
    let oa = w.get(a.id);
    assert_eq!(
        (oa.state, oa.exception),
        (OrderState::Ready, Some(super::model::Exception::TooSmall))
    );
    assert_eq!(w.place(a.id), (kb, cb));
    let ob = w.get(b.id);
    assert_eq!(
        ob.exception,
        Some(super::model::Exception::CompartmentTaken)
    );
    assert_eq!(ob.state, OrderState::Reserved, "B was moved");
    assert_ne!(w.place(b.id), (kb, cb));
    w.check();
    // the same report again (a replay) changes nothing
    let before = w.get(a.id).history.len();
    w.st.apply_uplink(
        0,
        &Uplink {
            cabinet: cab(kb),
            boot: 1,
            seq: 99,
            ts: T0,
            body: UplinkBody::Access(LocalAccess {
                compartment: CompartmentId(cb),
                action: AccessAction::Deposit,
                reference: a.id.to_string(),
                source: ScanSource::Barcode,
                actor: "dhl-c1".into(),
            }),
        },
        T0,
    );
    assert_eq!(w.get(a.id).history.len(), before);
}

#[test]
fn a_parcel_the_cabinet_did_not_know_is_matched_by_its_tracking_number() {
    let mut w = World::new();
    let o = w.order("dhl", SizeName::M, OrderKind::Delivery, "JJD-77");
    let (k, _) = w.place(o.id);
    // deposited offline into compartment 3 by a DHL courier who picked a size
    w.access(
        k,
        3,
        AccessAction::Deposit,
        "tracking:JJD-77".into(),
        "dhl-c1",
        T0,
    );
    assert_eq!(w.get(o.id).state, OrderState::Ready);
    assert_eq!(w.place(o.id), (k, 3));
    // an unknown parcel keeps its compartment out of allocation
    w.access(
        1,
        2,
        AccessAction::Deposit,
        "tracking:NOPE".into(),
        "dhl-c1",
        T0,
    );
    assert!(w
        .st
        .table
        .slot(&cab(1), CompartmentId(2))
        .and_then(|s| s.out_of_service)
        .is_some());
    w.check();
}

#[test]
fn a_jammed_door_takes_its_compartment_out_and_the_order_moves() {
    let mut w = World::new();
    let o = w.order("dhl", SizeName::S, OrderKind::Delivery, "J1");
    let (k, c) = w.place(o.id);
    let t = w
        .call(|tx| Msg::PrepareUnlock(o.id, "courier at the door".into(), carrier("dhl"), tx))
        .expect("prepared");
    assert_eq!((t.compartment, t.purpose), (CompartmentId(c), "deposit"));
    let cmd = t.command;
    // a second remote unlock while the first waits is refused
    assert!(w
        .call(|tx| Msg::PrepareUnlock(o.id, "again".into(), op(), tx))
        .is_err());
    w.uplink(
        k,
        UplinkBody::Result(CommandResult {
            command: cmd,
            outcome: CmdOutcome::Jammed,
            detail: String::new(),
        }),
        T0,
    );
    let x = w.get(o.id);
    assert_eq!(x.exception, Some(super::model::Exception::DoorJammed));
    assert_eq!(x.state, OrderState::Reserved);
    assert_ne!(w.place(o.id), (k, c));
    assert!(w
        .st
        .table
        .slot(&cab(k), CompartmentId(c))
        .and_then(|s| s.out_of_service)
        .is_some());
    w.check();
}

#[derive(Debug, Clone)]
enum Op {
    Create(u8, u8),
    Deposit(usize),
    Pickup(usize),
    Cancel(usize),
    Partition(u8, u8, Option<u8>),
    Tick(u8),
}

fn ops() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..2, 0u8..4).prop_map(|(c, s)| Op::Create(c, s)),
        (0usize..64).prop_map(Op::Deposit),
        (0usize..64).prop_map(Op::Pickup),
        (0usize..64).prop_map(Op::Cancel),
        (0u8..2, 1u8..5, proptest::option::of(0u8..2)).prop_map(|(k, c, p)| Op::Partition(k, c, p)),
        (0u8..30).prop_map(Op::Tick),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// Orders created, deposited, picked up and cancelled while partitions change, in any
    /// interleaving: no compartment ever holds two live orders, and a partition change never
    /// strands a parcel (a held compartment changes hands only once it is empty).
    #[test]
    fn partitions_change_under_load_without_double_booking(seq in proptest::collection::vec(ops(), 1..80)) {
        let mut w = World::new();
        let carriers = ["dhl", "ups"];
        let mut ids = Vec::new();
        let mut now = T0;
        for step in seq {
            match step {
                Op::Create(c, s) => {
                    let o = w.order(carriers[c as usize], SizeName::ALL[s as usize], OrderKind::Delivery, "T");
                    ids.push(o.id);
                }
                Op::Deposit(i) if !ids.is_empty() => {
                    let id = ids[i % ids.len()];
                    if w.get(id).state == OrderState::Reserved {
                        let (k, c) = w.place(id);
                        w.access(k, c, AccessAction::Deposit, id.to_string(), "dhl-c1", now);
                    }
                }
                Op::Pickup(i) if !ids.is_empty() => {
                    let id = ids[i % ids.len()];
                    if w.get(id).state == OrderState::Ready {
                        let (k, c) = w.place(id);
                        w.access(k, c, AccessAction::Pickup, id.to_string(), "", now);
                    }
                }
                Op::Cancel(i) if !ids.is_empty() => {
                    let id = ids[i % ids.len()];
                    let _ = w.call(|tx| Msg::Act(id, OrderAction::Cancel, op(), tx));
                }
                Op::Partition(k, c, p) => {
                    let holder = w.st.table.slot(&cab(k as u32), CompartmentId(c as u16)).and_then(|s| s.holder);
                    let before = w.st.table.slot(&cab(k as u32), CompartmentId(c as u16)).and_then(|s| s.partition.clone());
                    let r = w.call(|tx| Msg::Partition(cab(k as u32), vec![CompartmentId(c as u16)], p.map(|p| carriers[p as usize].parse().expect("id")), op(), tx)).expect("partition");
                    if holder.is_some() {
                        prop_assert_eq!(r.pending.len(), 1);
                        let after = w.st.table.slot(&cab(k as u32), CompartmentId(c as u16)).and_then(|s| s.partition.clone());
                        prop_assert_eq!(before, after, "a held compartment keeps its carrier");
                    }
                }
                Op::Tick(h) => {
                    now += u64::from(h) * HOUR_MS;
                    w.st.on_tick(now);
                }
                _ => {}
            }
            w.st.batch = Default::default();
            w.check();
        }
    }
}

#[test]
fn the_cabinet_set_names_the_couriers_the_parcels_and_the_spares() {
    let mut w = World::new();
    let o = w.order("dhl", SizeName::M, OrderKind::Delivery, "JJD-1");
    let (k, c) = w.place(o.id);
    let set = &w.st.creds_parts(&cab(k), 3, T0)[0];
    let kinds = |kind| set.entries.iter().filter(|e| e.kind == kind).count();
    assert_eq!(kinds(CredKind::Deposit), 2, "one badge per courier");
    let parcel = set
        .entries
        .iter()
        .find(|e| e.kind == CredKind::Parcel)
        .expect("parcel");
    assert_eq!(
        (parcel.compartment, parcel.carrier.as_str()),
        (Some(CompartmentId(c)), "dhl")
    );
    assert_eq!(
        parcel.secret_hash,
        locker_schemas::secret_hash("JJD-1", &cab(k)).to_vec()
    );
    assert_eq!(kinds(CredKind::Spare), 3, "the free compartments");
}

#[test]
fn a_prepared_unlock_whose_command_never_came_is_forgotten() {
    let mut w = World::new();
    let o = w.order("dhl", SizeName::S, OrderKind::Delivery, "P1");
    let t = w
        .call(|tx| Msg::PrepareUnlock(o.id, "courier at the door".into(), carrier("dhl"), tx))
        .expect("prepared");
    assert!(w.get(o.id).pending_unlock.is_some());
    // the gateway died before the command was created: nothing ever answers
    w.st.on_tick(locker_schemas::now_millis() + 7 * HOUR_MS);
    let x = w.get(o.id);
    assert!(x.pending_unlock.is_none());
    assert!(x
        .history
        .last()
        .is_some_and(|h| h.detail.contains(&t.command.to_string())));
    // and a new remote unlock may be prepared
    assert!(w
        .call(|tx| Msg::PrepareUnlock(o.id, "again".into(), op(), tx))
        .is_ok());
}

#[test]
fn a_hello_resends_the_set_only_to_a_cabinet_that_missed_it() {
    let mut w = World::new();
    w.st.dirty_creds.clear();
    w.st.creds_versions.insert(cab(0), 7);
    let hello = |v| {
        UplinkBody::Hello(Hello {
            firmware: "fw".into(),
            hardware: "hw".into(),
            compartments: [Size::S, Size::M, Size::M, Size::L]
                .iter()
                .zip(1..)
                .map(|(s, i)| CompartmentInfo {
                    id: CompartmentId(i),
                    size: *s,
                })
                .collect(),
            network: NetworkKind::Lan,
            creds_version: v,
        })
    };
    // current: nothing to send, nothing to write
    w.uplink(0, hello(7), T0);
    assert!(w.st.send_current.is_empty() && w.st.dirty_creds.is_empty());
    // missed the last set: the current one again, same version
    w.uplink(0, hello(5), T0);
    assert!(w.st.send_current.contains(&cab(0)));
    assert!(w.st.dirty_creds.is_empty());
    // ahead of the gateway (its storage was replaced): a new set past the cabinet's version
    w.uplink(0, hello(40), T0);
    assert!(w.st.dirty_creds.contains(&cab(0)));
    assert_eq!(w.st.creds_versions.get(&cab(0)), Some(&40));
}
