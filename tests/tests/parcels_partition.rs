//! Partition changes under load, end to end (issue 9): couriers of two carriers deposit at a
//! real cabinet (badge, then the parcel's barcode) and recipients pick up with their PINs,
//! parcels staying in the cabinet a while, as an operator concurrently moves blocks of
//! compartments between the carriers and the shared pool through the API. Afterwards, from
//! the order, compartment and audit APIs: no compartment was ever held by two live orders, no
//! parcel is stranded (every deposited order was picked up), a compartment changed hands only
//! while it was empty (a held one waited, `pending`, and changed at its release), and every
//! reservation kept to the partition in force.

use std::collections::{BTreeMap, HashMap, VecDeque};

use locker_agent::Access;
use locker_schemas::{CompartmentId, ScanSource};
use locker_tests::agent::TestCabinet;
use locker_tests::api::ApiClient;
use locker_tests::eventually;
use locker_tests::gateway::TestGateway;
use locker_tests::parcels::{self, DHL_BADGE, DHL_TOKEN, UPS_BADGE, UPS_TOKEN};
use locker_tests::pki::TestPki;
use serde_json::{json, Value};
use tokio::sync::watch;

const CAB: &str = "CAB-PART";
/// Orders delivered and picked up, alternately DHL's and UPS's.
const ORDERS: usize = 16;
/// Parcels left in the cabinet before the oldest is picked up.
const KEEP: usize = 5;
/// The blocks the operator moves (compartments 9-16 stay in the shared pool, so each carrier
/// always has room).
const BLOCKS: [[u16; 4]; 2] = [[1, 2, 3, 4], [5, 6, 7, 8]];
/// The operator's moves, in turn: (block, carrier or the shared pool).
const MOVES: [(usize, Option<&str>); 6] = [
    (0, Some("ups")),
    (1, Some("dhl")),
    (0, None),
    (1, Some("ups")),
    (0, Some("dhl")),
    (1, None),
];

/// A deposited order waiting for its recipient.
struct Parcel {
    id: String,
    c: u16,
    pin: String,
    client: ApiClient,
}

async fn partition(op: &ApiClient, block: usize, carrier: Option<&str>) -> Value {
    let (s, r) = op
        .put(
            &format!("/v1/cabinets/{CAB}/partitions"),
            json!({"compartments": BLOCKS[block], "carrier": carrier}),
        )
        .await;
    assert_eq!(s, 200, "{r}");
    r
}

fn nums(v: &Value) -> Vec<u16> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_u64())
                .map(|x| x as u16)
                .collect()
        })
        .unwrap_or_default()
}

/// The live orders holding each compartment (never more than one), by compartment.
async fn holders(op: &ApiClient) -> BTreeMap<u64, Vec<String>> {
    let (s, l) = op.get("/v1/orders?limit=1000").await;
    assert_eq!(s, 200, "{l}");
    let mut by: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for o in l["orders"].as_array().expect("orders") {
        let holds = matches!(
            o["state"].as_str(),
            Some("reserved" | "deposited" | "ready" | "expired" | "return_requested")
        );
        if let (true, Some(c)) = (holds, o["compartment"].as_u64()) {
            by.entry(c)
                .or_default()
                .push(o["id"].as_str().unwrap_or_default().to_owned());
        }
    }
    for (c, ids) in &by {
        assert_eq!(ids.len(), 1, "compartment {c} held by {ids:?}");
    }
    by
}

/// One holder per compartment, and the compartment list agrees with the orders (asked while
/// no courier or recipient acts).
async fn one_holder_each(op: &ApiClient) {
    let by = holders(op).await;
    let (_, comps) = op.get(&format!("/v1/cabinets/{CAB}/compartments")).await;
    for slot in comps["compartments"].as_array().expect("compartments") {
        let c = slot["id"].as_u64().expect("id");
        match slot["order"].as_str() {
            Some(id) => assert_eq!(by.get(&c), Some(&vec![id.to_owned()]), "{slot}"),
            None => assert!(!by.contains_key(&c), "{slot} vs {by:?}"),
        }
    }
}

/// A courier of the order's carrier deposits it at the cabinet; returns it ready, with the
/// recipient's PIN.
async fn deposit(
    gw: &TestGateway,
    cab: &TestCabinet,
    client: ApiClient,
    badge: &str,
    tracking: &str,
) -> Parcel {
    let o = parcels::order(&client, tracking, "M").await;
    let id = o["id"].as_str().expect("id").to_owned();
    let o = parcels::wait_state(&client, &id, "reserved").await;
    let c = o["compartment"].as_u64().expect("compartment") as u16;
    parcels::creds_current(&gw.api, cab).await;
    let h = cab.handle.as_ref().expect("agent");
    let r = h.scan(ScanSource::Rfid, badge).await.expect("badge");
    assert!(matches!(r.access, Access::SignedIn(_)), "{r:?}");
    let r = h
        .scan(ScanSource::Barcode, tracking)
        .await
        .expect("barcode");
    assert_eq!(
        r.access,
        Access::DepositInto(CompartmentId(c)),
        "{tracking}"
    );
    eventually("deposit door open", || {
        cab.status().open_doors == vec![CompartmentId(c)]
    })
    .await;
    cab.board.put_parcel(usize::from(c - 1)).expect("parcel in");
    cab.board.close_door(usize::from(c - 1)).expect("close");
    eventually("door closed", || cab.status().open_doors.is_empty()).await;
    parcels::wait_state(&client, &id, "ready").await;
    let pin = parcels::notice(&gw.api, &id, "ready").await["pin"]
        .as_str()
        .expect("pin")
        .to_owned();
    Parcel { id, c, pin, client }
}

/// The recipient picks the parcel up with the PIN.
async fn pickup(gw: &TestGateway, cab: &TestCabinet, p: Parcel) {
    parcels::creds_current(&gw.api, cab).await;
    let h = cab.handle.as_ref().expect("agent");
    let r = h.scan(ScanSource::Keypad, &p.pin).await.expect("pin");
    assert_eq!(r.access, Access::Pickup(CompartmentId(p.c)), "{}", p.id);
    eventually("pickup door open", || {
        cab.status().open_doors == vec![CompartmentId(p.c)]
    })
    .await;
    cab.board
        .take_parcel(usize::from(p.c - 1))
        .expect("parcel out");
    cab.board.close_door(usize::from(p.c - 1)).expect("close");
    eventually("door closed", || cab.status().open_doors.is_empty()).await;
    let o = parcels::wait_state(&p.client, &p.id, "picked_up").await;
    assert_eq!(o["exception"], Value::Null, "{o}");
}

/// Every record of the parcel audit, in order.
async fn audit(op: &ApiClient) -> Vec<Value> {
    let mut all = Vec::new();
    let mut after = String::new();
    loop {
        let (s, page) = op.get(&format!("/v1/parcel-audit?limit=500{after}")).await;
        assert_eq!(s, 200, "{page}");
        let recs = page["records"].as_array().cloned().unwrap_or_default();
        if recs.is_empty() {
            return all;
        }
        all.extend(recs);
        match page["next_after"].as_u64() {
            Some(n) => after = format!("&after={n}"),
            None => return all,
        }
    }
}

/// The list in a partition record's detail: "to dhl: applied [1, 2], pending [3]".
fn listed(detail: &str, key: &str) -> Vec<u16> {
    let Some(rest) = detail.split(&format!("{key} [")).nth(1) else {
        panic!("no {key} list in {detail:?}");
    };
    let inner = rest.split(']').next().unwrap_or_default();
    inner
        .split(',')
        .filter_map(|x| x.trim().parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_moved_under_load_never_share_strand_or_take_a_full_compartment() {
    let mut pki = TestPki::new();
    let gw = TestGateway::start_with(&pki, parcels::tokens).await;
    let cab = TestCabinet::start(&mut pki, CAB, gw.edge_addr()).await;
    parcels::online(&gw.api, CAB).await;
    parcels::setup(&gw.api, &[CAB]).await;
    partition(&gw.api, 0, Some("dhl")).await;
    partition(&gw.api, 1, Some("ups")).await;

    // the operator moves a block each time the couriers and recipients make progress,
    // concurrently with them
    let (step_tx, mut step_rx) = watch::channel(0usize);
    let op = gw.api.clone();
    let operator = tokio::spawn(async move {
        let (mut moves, mut applied, mut pending) = (0usize, 0usize, 0usize);
        while step_rx.changed().await.is_ok() {
            let (block, carrier) = MOVES[moves % MOVES.len()];
            let r = partition(&op, block, carrier).await;
            applied += nums(&r["applied"]).len();
            pending += nums(&r["pending"]).len();
            assert!(nums(&r["unknown"]).is_empty(), "{r}");
            moves += 1;
            holders(&op).await;
        }
        (moves, applied, pending)
    });
    let step = || step_tx.send_modify(|s| *s += 1);

    let carriers = [
        (gw.api.with_token(DHL_TOKEN), DHL_BADGE),
        (gw.api.with_token(UPS_TOKEN), UPS_BADGE),
    ];
    let mut inside: VecDeque<Parcel> = VecDeque::new();
    let mut ids = Vec::new();
    for i in 0..ORDERS {
        let (client, badge) = &carriers[i % 2];
        let p = deposit(&gw, &cab, client.clone(), badge, &format!("PART-{i:03}")).await;
        ids.push((p.id.clone(), p.client.clone()));
        inside.push_back(p);
        step();
        if inside.len() > KEEP {
            let p = inside.pop_front().expect("a parcel");
            pickup(&gw, &cab, p).await;
            step();
        }
        one_holder_each(&gw.api).await;
    }
    while let Some(p) = inside.pop_front() {
        pickup(&gw, &cab, p).await;
        step();
    }
    drop(step_tx);
    let (moves, applied, pending) = operator.await.expect("operator");
    assert!(moves >= MOVES.len(), "{moves} moves");
    assert!(applied > 0, "some blocks changed hands at once");
    assert!(
        pending > 0,
        "some compartments held a parcel and had to wait"
    );

    // no parcel stranded: every order picked up, nothing left in the cabinet
    for (id, client) in &ids {
        assert_eq!(parcels::state(client, id).await, "picked_up", "{id}");
    }
    for i in 0..16 {
        assert!(!cab.board.parcel_present(i).expect("lock"), "parcel in {i}");
    }
    one_holder_each(&gw.api).await;

    // the audit, replayed: who held each compartment, and its partition (pending changes
    // apply at the release)
    let recs = audit(&gw.api).await;
    let mut holder: HashMap<u16, String> = HashMap::new();
    let mut part: HashMap<u16, Option<String>> = HashMap::new();
    let mut waiting: HashMap<u16, Option<String>> = HashMap::new();
    let mut seen_pending = 0;
    for r in &recs {
        let carrier = r["carrier"].as_str().map(str::to_owned);
        match r["what"].as_str() {
            Some("partition") => {
                let detail = r["detail"].as_str().expect("detail");
                for c in listed(detail, "applied") {
                    assert_eq!(holder.get(&c), None, "{c} changed hands while held: {r}");
                    part.insert(c, carrier.clone());
                    waiting.remove(&c);
                }
                for c in listed(detail, "pending") {
                    assert!(holder.contains_key(&c), "{c} pending while empty: {r}");
                    waiting.insert(c, carrier.clone());
                    seen_pending += 1;
                }
            }
            Some("order") => {
                let Some(c) = r["compartment"].as_u64().map(|c| c as u16) else {
                    continue;
                };
                let order = r["order"].as_str().expect("order").to_owned();
                match r["to"].as_str() {
                    Some("reserved") => {
                        if let Some(h) = holder.get(&c) {
                            assert_eq!(h, &order, "{c} reserved while held: {r}");
                        }
                        let p = part.get(&c).cloned().flatten();
                        assert!(
                            p.is_none() || p == carrier,
                            "{c} of partition {p:?} reserved for {carrier:?}: {r}"
                        );
                        holder.insert(c, order);
                    }
                    Some("deposited" | "ready") => {
                        assert_eq!(holder.get(&c), Some(&order), "{r}");
                    }
                    Some("picked_up") => {
                        assert_eq!(holder.remove(&c), Some(order), "{r}");
                        if let Some(p) = waiting.remove(&c) {
                            part.insert(c, p);
                        }
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
    assert!(holder.is_empty(), "still held: {holder:?}");
    assert_eq!(
        seen_pending, pending,
        "every pending change is in the audit"
    );

    // the compartments' partitions now: what the replay says, nothing left waiting
    let (_, comps) = gw
        .api
        .get(&format!("/v1/cabinets/{CAB}/compartments"))
        .await;
    for slot in comps["compartments"].as_array().expect("compartments") {
        let c = slot["id"].as_u64().expect("id") as u16;
        assert_eq!(slot["status"], "free", "{slot}");
        assert_eq!(slot["pending_partition"], Value::Null, "{slot}");
        let want = part.get(&c).cloned().flatten();
        assert_eq!(slot["partition"].as_str(), want.as_deref(), "{slot}");
    }
}
