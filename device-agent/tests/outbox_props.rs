//! Property tests of the outbox over a real sled database: any interleaving of appends, acks and
//! restarts (the database closed and reopened) keeps seq order, loses nothing, replays every event
//! byte-identically, and never sheds a critical event.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use locker_agent::config::OutboxConfig;
use locker_agent::outbox::{admit, Admission, Appended, Outbox};
use locker_agent::Storage;
use locker_schemas::{
    CabinetId, ChargeState, CompartmentId, Door, DoorCause, Power, Scan, ScanSource, UplinkBody,
};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Door(u16),
    Scan(u8),
    Power(u8),
    Ack(u8),
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1u16..50).prop_map(Op::Door),
        2 => any::<u8>().prop_map(Op::Scan),
        4 => any::<u8>().prop_map(Op::Power),
        2 => any::<u8>().prop_map(Op::Ack),
        1 => Just(Op::Restart),
    ]
}

fn body(op: &Op) -> Option<UplinkBody> {
    Some(match op {
        Op::Door(c) => UplinkBody::Door(Door {
            compartment: CompartmentId(*c),
            open: c % 2 == 0,
            cause: DoorCause::Unknown,
            parcel: None,
        }),
        Op::Scan(v) => UplinkBody::Scan(Scan {
            source: ScanSource::Keypad,
            value: v.to_string(),
        }),
        Op::Power(s) => UplinkBody::Power(Power {
            battery_mv: 12_000,
            soc_pct: s % 101,
            pv_w: 1,
            load_w: 2,
            charging: ChargeState::Float,
            temp_dc: 200,
        }),
        _ => return None,
    })
}

fn open_storage(path: &Path) -> Storage {
    // The previous worker thread releases the database lock when it ends.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match Storage::open(path, Duration::from_millis(5)) {
            Ok(s) => return s,
            Err(e) if std::time::Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("reopen: {e}"),
        }
    }
}

fn limits() -> OutboxConfig {
    OutboxConfig {
        max_events: 12,
        nearly_full_percent: 80,
        hard_max_events: 18,
    }
}

async fn run(ops: Vec<Op>, dir: &Path) -> Result<(), TestCaseError> {
    let cab = CabinetId::new("CAB-P").unwrap();
    let path = dir.join("db");
    let mut st = open_storage(&path);
    let (mut ob, _) = Outbox::open(&st, &cab, limits()).await.unwrap();
    // The model: seq -> (body, payload bytes as first stored).
    let mut model: BTreeMap<u64, (UplinkBody, Vec<u8>)> = BTreeMap::new();
    let mut acked = 0u64;
    let mut next = 1u64;
    let mut boot = 1u32;
    for op in ops {
        match &op {
            Op::Ack(k) => {
                // Acks up to some seq the gateway stored (never beyond what was sent).
                let upto = acked + u64::from(*k) % (next - acked);
                ob.ack(upto).await.unwrap();
                if upto > acked {
                    acked = upto;
                }
                model.retain(|s, _| *s > acked);
            }
            Op::Restart => {
                drop(ob);
                drop(st);
                st = open_storage(&path);
                let (o, loaded) = Outbox::open(&st, &cab, limits()).await.unwrap();
                ob = o;
                boot += 1;
                prop_assert_eq!(loaded.boot, boot);
                // Acks are persisted lazily: after a restart the outbox may still hold acked
                // events (they are resent and dropped by the gateway), never fewer.
                prop_assert!(ob.acked() <= acked);
                prop_assert_eq!(ob.next_seq(), next);
                if ob.acked() < acked {
                    ob.ack(acked).await.unwrap();
                }
            }
            _ => {
                let b = body(&op).unwrap();
                let depth = next - 1 - acked;
                let expect = admit(&limits(), depth, b.is_sheddable());
                let r = ob.append(1_000, b.clone(), Vec::new()).await.unwrap();
                match (expect, r) {
                    (Admission::Store, Appended::Stored(ev)) => {
                        prop_assert_eq!(ev.seq, next);
                        model.insert(next, (b, ev.payload));
                        next += 1;
                    }
                    (Admission::Shed, Appended::Shed) => {
                        prop_assert!(op_is_telemetry(&op), "only telemetry is shed");
                    }
                    (Admission::Drop, Appended::Dropped) => {
                        prop_assert!(depth >= limits().hard_max_events);
                    }
                    (e, r) => prop_assert!(false, "expected {:?}, got {:?}", e, r),
                }
            }
        }
        // The stored outbox is exactly the model, in order, byte-identical.
        let stored = ob.read(0, usize::MAX).await.unwrap();
        let seqs: Vec<u64> = stored.iter().map(|e| e.seq).collect();
        let want: Vec<u64> = model.keys().copied().collect();
        prop_assert_eq!(&seqs, &want);
        for e in &stored {
            let (b, payload) = &model[&e.seq];
            prop_assert_eq!(&e.payload, payload, "replay is byte-identical");
            let u = locker_schemas::codec::decode_uplink(&e.payload).unwrap();
            prop_assert_eq!(&u.body, b);
            prop_assert_eq!(e.kind, b.kind());
        }
        prop_assert_eq!(ob.depth(), model.len() as u64);
    }
    Ok(())
}

fn op_is_telemetry(op: &Op) -> bool {
    matches!(op, Op::Power(_))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn any_interleaving_keeps_order_and_loses_nothing(ops in proptest::collection::vec(op(), 1..60)) {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(run(ops, dir.path()))?;
    }
}

#[tokio::test]
async fn shedding_never_drops_critical_events() {
    let dir = tempfile::tempdir().unwrap();
    let st = open_storage(&dir.path().join("db"));
    let cab = CabinetId::new("CAB-SHED").unwrap();
    let (mut ob, _) = Outbox::open(&st, &cab, limits()).await.unwrap();
    let power = body(&Op::Power(50)).unwrap();
    let door = body(&Op::Door(3)).unwrap();
    for _ in 0..12 {
        assert!(matches!(
            ob.append(1, power.clone(), vec![]).await.unwrap(),
            Appended::Stored(_)
        ));
    }
    // Soft limit reached: telemetry shed, doors still stored up to the hard limit.
    assert_eq!(
        ob.append(1, power.clone(), vec![]).await.unwrap(),
        Appended::Shed
    );
    for _ in 0..6 {
        assert!(matches!(
            ob.append(1, door.clone(), vec![]).await.unwrap(),
            Appended::Stored(_)
        ));
    }
    assert_eq!(
        ob.append(1, door.clone(), vec![]).await.unwrap(),
        Appended::Dropped
    );
    assert_eq!((ob.shed, ob.dropped), (1, 1));
    let kinds: Vec<_> = ob
        .snapshot()
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.body.kind().as_str())
        .collect();
    assert_eq!(kinds.iter().filter(|k| **k == "door").count(), 6);
    // Acks make room again.
    ob.ack(10).await.unwrap();
    assert!(matches!(
        ob.append(1, power, vec![]).await.unwrap(),
        Appended::Stored(_)
    ));
}
