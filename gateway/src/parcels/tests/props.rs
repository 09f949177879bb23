//! Partitions changed under load, as a property over random interleavings.

use locker_schemas::{AccessAction, CompartmentId};
use proptest::prelude::*;

use super::*;
use crate::parcels::model::{OrderKind, OrderState};
use crate::parcels::{Msg, OrderAction, HOUR_MS};

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
                    if w.st.orders.get(&id).is_some_and(|o| o.state == OrderState::Reserved) {
                        let (k, c) = w.place(id);
                        w.access(k, c, AccessAction::Deposit, id.to_string(), "dhl-c1", now);
                    }
                }
                Op::Pickup(i) if !ids.is_empty() => {
                    let id = ids[i % ids.len()];
                    if w.st.orders.get(&id).is_some_and(|o| o.state == OrderState::Ready) {
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
