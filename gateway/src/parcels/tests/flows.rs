//! Scenarios of the parcel state with the clock in the test's hands.

use locker_schemas::{
    AccessAction, CommandResult, CompartmentId, CompartmentInfo, CredKind, Hello, LocalAccess,
    NetworkKind, Outcome as CmdOutcome, ScanSource, Size, Uplink, UplinkBody,
};

use super::*;
use crate::parcels::model::{NoticeKind, OrderKind, OrderState, Recipient};
use crate::parcels::views::NewOrder;
use crate::parcels::{Msg, OrderAction, HOUR_MS};

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
        Some(crate::parcels::model::Exception::NoCompartment)
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
        (
            OrderState::Ready,
            Some(crate::parcels::model::Exception::TooSmall)
        )
    );
    assert_eq!(w.place(a.id), (kb, cb));
    let ob = w.get(b.id);
    assert_eq!(
        ob.exception,
        Some(crate::parcels::model::Exception::CompartmentTaken)
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
    assert_eq!(
        x.exception,
        Some(crate::parcels::model::Exception::DoorJammed)
    );
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

#[test]
fn finished_orders_leave_memory_for_the_archive() {
    let mut w = World::new();
    let o = w.order("dhl", SizeName::S, OrderKind::Delivery, "A1");
    w.call(|tx| Msg::Act(o.id, OrderAction::Cancel, op(), tx))
        .expect("cancel");
    let live = w.order("dhl", SizeName::S, OrderKind::Delivery, "A2");
    w.st.batch = Default::default();
    w.st.on_tick(locker_schemas::now_millis() + 25 * HOUR_MS);
    assert!(!w.st.orders.contains_key(&o.id), "archived");
    assert!(w.st.batch.archived.iter().any(|x| x.id == o.id));
    assert!(w.st.orders.contains_key(&live.id), "a live order stays");
}

#[test]
fn a_click_and_collect_window_in_minutes_expires_without_a_reminder() {
    let mut w = World::new();
    let n = NewOrder {
        kind: OrderKind::Delivery,
        site: "s".parse().expect("site"),
        cabinet: None,
        size: SizeName::S,
        tracking: "SHOP-1".into(),
        carrier: None,
        reference: None,
        recipient: Recipient::default(),
        reserve: true,
        pickup_window_h: None,
        pickup_window_min: Some(30),
        idempotency_key: None,
    };
    let o = w.call_create(n, carrier("dhl")).expect("created");
    let (k, c) = w.place(o.id);
    w.access(k, c, AccessAction::Deposit, o.id.to_string(), "dhl-c1", T0);
    let deadline = w.get(o.id).pickup_deadline.expect("deadline");
    assert_eq!(deadline - T0, 30 * 60_000);
    w.st.on_tick(deadline - 60_000);
    assert_eq!(
        w.notices(NoticeKind::Reminder),
        0,
        "no 24 h reminder for a 30 min window"
    );
    w.st.on_tick(deadline);
    assert_eq!(w.get(o.id).state, OrderState::Expired);
}

#[test]
fn the_parcel_sensor_at_door_close_marks_a_parcel_left_inside_or_a_pickup_without_one() {
    use locker_schemas::{Door, DoorCause};
    let mut w = World::new();
    let close = |w: &mut World, k: u32, c: u16, parcel: bool| {
        w.uplink(
            k,
            UplinkBody::Door(Door {
                compartment: CompartmentId(c),
                open: false,
                cause: DoorCause::LocalAccess,
                parcel: Some(parcel),
            }),
            T0,
        )
    };
    // A: deposited and the door closed on nothing; the pickup then finds nothing
    let a = w.order("dhl", SizeName::S, OrderKind::Delivery, "A");
    let (ka, ca) = w.place(a.id);
    w.access(
        ka,
        ca,
        AccessAction::Deposit,
        a.id.to_string(),
        "dhl-c1",
        T0,
    );
    close(&mut w, ka, ca, false);
    w.access(ka, ca, AccessAction::Pickup, a.id.to_string(), "", T0);
    let x = w.get(a.id);
    assert_eq!(
        (x.state, x.exception),
        (
            OrderState::PickedUp,
            Some(crate::parcels::model::Exception::PickupWithoutParcel)
        )
    );
    // B: deposited with the parcel inside; picked up, but the parcel was left inside
    let b = w.order("dhl", SizeName::S, OrderKind::Delivery, "B");
    let (kb, cb) = w.place(b.id);
    w.access(
        kb,
        cb,
        AccessAction::Deposit,
        b.id.to_string(),
        "dhl-c1",
        T0,
    );
    close(&mut w, kb, cb, true);
    w.access(kb, cb, AccessAction::Pickup, b.id.to_string(), "", T0);
    assert_eq!(w.get(b.id).exception, None, "a normal pickup");
    close(&mut w, kb, cb, true);
    assert_eq!(
        w.get(b.id).exception,
        Some(crate::parcels::model::Exception::ParcelStillPresent)
    );
    // the compartment is kept out of allocation until an operator clears it
    let slot = w.st.table.slot(&cab(kb), CompartmentId(cb)).expect("slot");
    assert!(slot.out_of_service.is_some());
    w.check();
}
