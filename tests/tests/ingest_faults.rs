//! Ingest under faults and abuse, end to end over real mTLS: uplinks that cannot be accepted as
//! they are (a newer schema version, a broken body, an envelope naming another cabinet or kind,
//! garbage) are quarantined and never stall their cabinet; an agent whose storage was wiped
//! starts a new storage life without anything of it being deleted before it is stored; a
//! failing store keeps ingest alive, acknowledges nothing and makes `/readyz` say so; audit log
//! retention prunes old entries but never a cabinet's place in its sequence.

use locker_schemas::codec::encode_uplink;
use locker_schemas::{CabinetId, DownlinkBody, Topic, UpKind, Uplink, UplinkBody};
use locker_tests::agent::TestCabinet;
use locker_tests::api::ApiClient;
use locker_tests::cabinet::bodies::{door, hello};
use locker_tests::cabinet::RawCabinet;
use locker_tests::gateway::TestGateway;
use locker_tests::pki::TestPki;
use locker_tests::{eventually, eventually_async};
use serde_json::{json, Value};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Every event of a cabinet's audit log, all pages.
async fn events(api: &ApiClient, cab: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let (s, page) = api
            .get(&format!("/v1/cabinets/{cab}/events?after={after}&limit=3"))
            .await;
        assert_eq!(s, 200, "{page}");
        let evs = page["events"].as_array().cloned().unwrap_or_default();
        if evs.is_empty() {
            return out;
        }
        after = page["next_after"].as_u64().expect("next_after");
        out.extend(evs);
    }
}

async fn quarantine(api: &ApiClient, path: &str) -> Vec<Value> {
    let (s, page) = api.get(path).await;
    assert_eq!(s, 200, "{page}");
    page["records"].as_array().cloned().unwrap_or_default()
}

fn field(v: &[Value], f: &str) -> Vec<Value> {
    v.iter().map(|e| e[f].clone()).collect()
}

/// Acks a raw cabinet received after the first `from` downlinks.
fn acks_since(cab: &RawCabinet, from: usize) -> Vec<u64> {
    cab.seen.lock().expect("lock").downlinks[from..]
        .iter()
        .filter_map(|d| match d.body {
            DownlinkBody::Ack(a) => Some(a.seq),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uplinks_that_cannot_be_accepted_are_quarantined_acknowledged_and_never_stall() {
    let mut pki = TestPki::new();
    let cert = pki.cabinet("CAB-Q");
    let gw = TestGateway::start(&pki).await;
    let cab = RawCabinet::connect(&pki, &cert, "CAB-Q", gw.edge_addr());
    eventually("cabinet connected", || cab.connected()).await;
    let on = |k: UpKind| Topic::Up(cab.id.clone(), k).to_string();

    cab.send(&cab.uplink(1, hello(4))).await;
    // 2: a schema bump shipped to the agent before the gateway
    let mut v2 = encode_uplink(&cab.uplink(2, door(1, true))).expect("encode");
    assert_eq!(v2[1], 0x01, "version is the first element");
    v2[1] = 0x02;
    cab.send_raw(&on(UpKind::Door), v2.clone()).await;
    // 3: a body cut short
    let full = encode_uplink(&cab.uplink(3, door(1, false))).expect("encode");
    let cut = full[..full.len() - 2].to_vec();
    cab.send_raw(&on(UpKind::Door), cut.clone()).await;
    // 4: an envelope naming another cabinet, on this cabinet's topic
    let mut other = cab.uplink(4, door(2, true));
    other.cabinet = CabinetId::new("CAB-OTHER").expect("id");
    let foreign = encode_uplink(&other).expect("encode");
    cab.send_raw(&on(UpKind::Door), foreign.clone()).await;
    // 5: a door body on the hello topic
    let misfiled = encode_uplink(&cab.uplink(5, door(3, true))).expect("encode");
    cab.send_raw(&on(UpKind::Hello), misfiled.clone()).await;
    cab.send(&cab.uplink(6, door(4, true))).await;
    eventually("everything acknowledged past the bad uplinks", || {
        cab.acked() >= 6
    })
    .await;

    let evs = events(&gw.api, "CAB-Q").await;
    assert_eq!(field(&evs, "seq"), vec![json!(1), json!(6)], "{evs:?}");
    assert_eq!(field(&evs, "position"), vec![json!(1), json!(6)]);
    let q = quarantine(&gw.api, "/v1/cabinets/CAB-Q/quarantine").await;
    assert_eq!(
        field(&q, "reason"),
        vec![
            json!("version"),
            json!("malformed"),
            json!("foreign"),
            json!("kind_mismatch")
        ],
        "{q:?}"
    );
    assert_eq!(
        field(&q, "position"),
        vec![json!(2), json!(3), json!(4), json!(5)]
    );
    assert_eq!(
        field(&q, "seq"),
        vec![json!(2), json!(3), json!(4), json!(5)]
    );
    assert_eq!(
        field(&q, "raw_hex"),
        vec![
            json!(hex(&v2)),
            json!(hex(&cut)),
            json!(hex(&foreign)),
            json!(hex(&misfiled))
        ],
        "the bytes are kept exactly"
    );
    assert_eq!(q[0]["version"], json!(2));
    assert_eq!(
        q[2]["cabinet"],
        json!("CAB-Q"),
        "the topic's cabinet is authoritative"
    );
    assert!(
        gw.api
            .metric("locker_ingest_quarantined_total{reason=\"version\"}")
            .await
            >= 1.0
    );

    // garbage without a readable head: quarantined unplaced, not acknowledged
    cab.send_raw(&on(UpKind::Door), vec![0xff, 0x00, 0x13])
        .await;
    let all = eventually_async("garbage quarantined", || {
        let api = gw.api.clone();
        async move {
            let all = quarantine(&api, "/v1/quarantine").await;
            (all.len() == 5).then_some(all)
        }
    })
    .await;
    assert_eq!(all[4]["position"], Value::Null);
    assert_eq!(all[4]["raw_hex"], json!("ff0013"));

    // a replay of a quarantined event is a duplicate: acknowledged, not quarantined again
    let dups = gw.api.metric("locker_ingest_duplicates_total").await;
    cab.send_raw(&on(UpKind::Door), v2).await;
    eventually_async("replay seen as a duplicate", || {
        let api = gw.api.clone();
        async move { (api.metric("locker_ingest_duplicates_total").await > dups).then_some(()) }
    })
    .await;
    assert_eq!(quarantine(&gw.api, "/v1/quarantine").await.len(), 5);
    cab.send(&cab.uplink(7, door(4, false))).await;
    eventually("the cabinet keeps going", || cab.acked() >= 7).await;
    assert_eq!(cab.acked(), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_cabinet_starts_a_new_life_and_old_acks_never_reach_it() {
    let mut pki = TestPki::new();
    let cert = pki.cabinet("CAB-W");
    let gw = TestGateway::start(&pki).await;
    let cab = RawCabinet::connect(&pki, &cert, "CAB-W", gw.edge_addr());
    eventually("cabinet connected", || cab.connected()).await;
    cab.send(&cab.uplink(1, hello(4))).await;
    for s in 2..=5 {
        cab.send(&cab.uplink(s, door(1, s % 2 == 0))).await;
    }
    eventually("old life acknowledged", || cab.acked() >= 5).await;
    let mark = cab.seen.lock().expect("lock").downlinks.len();

    // storage wiped: boot 1, seq 1 again, with different events. Its seq 2 arrives first
    // (the broker skipped seq 1): it matches nothing stored and must not be acknowledged
    // with the old life's numbers.
    let id = cab.id.clone();
    let new = |seq: u64, body: UplinkBody| Uplink {
        cabinet: id.clone(),
        boot: 1,
        seq,
        ts: locker_schemas::now_millis() + 1_000,
        body,
    };
    let n2 = new(2, door(2, true));
    cab.send(&n2).await;
    eventually_async("stale uplink counted", || {
        let api = gw.api.clone();
        async move { (api.metric("locker_ingest_stale_total").await >= 1.0).then_some(()) }
    })
    .await;
    assert!(
        acks_since(&cab, mark).is_empty(),
        "no ack for an unverifiable uplink"
    );
    cab.send(&new(1, hello(4))).await;
    cab.send(&n2).await;
    cab.send(&new(3, door(2, false))).await;
    eventually("new life acknowledged", || {
        acks_since(&cab, mark).contains(&3)
    })
    .await;
    let acks = acks_since(&cab, mark);
    assert!(
        acks.iter().all(|a| *a <= 3),
        "every ack in the new life is a seq of the new life: {acks:?}"
    );
    assert_eq!(gw.api.metric("locker_ingest_new_lives_total").await, 1.0);

    let evs = events(&gw.api, "CAB-W").await;
    assert_eq!(
        field(&evs, "seq"),
        [1, 2, 3, 4, 5, 1, 2, 3].map(|s| json!(s)).to_vec(),
        "both lives, in order: {evs:?}"
    );
    assert_eq!(
        field(&evs, "position"),
        (1..=8).map(|p| json!(p)).collect::<Vec<_>>()
    );
    assert_eq!(
        evs[6]["data"]["compartment"],
        json!(2),
        "the new life's own event"
    );

    // after a restart the gateway derives the same life from the log (the first client goes
    // away first: two clients with one identity would keep taking the session from each other)
    drop(cab);
    let gw = gw.restart().await;
    let cab = RawCabinet::connect(&pki, &cert, "CAB-W", gw.edge_addr());
    eventually("reconnected", || cab.connected()).await;
    cab.send(&new(4, door(3, true))).await;
    eventually("life continues after restart", || cab.acked() == 4).await;
    assert_eq!(events(&gw.api, "CAB-W").await.len(), 9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_with_wiped_storage_loses_nothing_and_its_old_events_stay_readable() {
    let mut pki = TestPki::new();
    let gw = TestGateway::start(&pki).await;
    let mut cab = TestCabinet::start(&mut pki, "CAB-AGENT", gw.edge_addr()).await;
    let old_last = eventually_async("first life delivered", || {
        let s = cab.status();
        async move {
            (s.mqtt_connected && s.next_seq > 1 && s.last_acked_seq == s.next_seq - 1)
                .then_some(s.last_acked_seq)
        }
    })
    .await;
    // more events in the first life than the second will have: a wrong ack would cover them
    cab.board.open_door(0).expect("open");
    eventually("door seen open", || !cab.status().open_doors.is_empty()).await;
    cab.board.close_door(0).expect("close");
    eventually("door seen closed", || cab.status().open_doors.is_empty()).await;
    let old_last = eventually_async("door events delivered", || {
        let s = cab.status();
        async move {
            (s.next_seq > old_last + 2 && s.last_acked_seq == s.next_seq - 1)
                .then_some(s.last_acked_seq)
        }
    })
    .await;

    cab.wipe_storage().await;
    cab.boot().await;
    let s = eventually_async("second life delivered", || {
        let s = cab.status();
        async move {
            (s.mqtt_connected && s.next_seq > 1 && s.last_acked_seq == s.next_seq - 1).then_some(s)
        }
    })
    .await;
    assert_eq!(s.boot, 1, "wiped storage starts at boot 1");
    assert!(s.last_acked_seq < old_last, "the second life is shorter");
    assert_eq!(
        s.counters.stray_acks, 0,
        "the gateway never acked beyond the new life"
    );

    let evs = events(&gw.api, "CAB-AGENT").await;
    let seqs: Vec<u64> = evs
        .iter()
        .map(|e| e["seq"].as_u64().expect("seq"))
        .collect();
    let expected: Vec<u64> = (1..=old_last).chain(1..=s.last_acked_seq).collect();
    assert_eq!(
        seqs, expected,
        "both lives stored, nothing of the new one skipped"
    );
    assert_eq!(
        evs[usize::try_from(old_last).expect("n")]["kind"],
        json!("hello")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_store_keeps_ingest_alive_acks_nothing_and_fails_readiness() {
    let mut pki = TestPki::new();
    let cert = pki.cabinet("CAB-S");
    let gw = TestGateway::start_with(&pki, |c| {
        c.ingest.retry_initial_ms = 10;
        c.ingest.retry_max_ms = 50;
    })
    .await;
    let (s, body) = gw.api.get("/readyz").await;
    assert_eq!(s, 200, "{body}");
    let cab = RawCabinet::connect(&pki, &cert, "CAB-S", gw.edge_addr());
    eventually("cabinet connected", || cab.connected()).await;
    cab.send(&cab.uplink(1, hello(4))).await;
    eventually("ack 1", || cab.acked() == 1).await;

    gw.gw.store().audit().set_write_fault(true);
    let (s, body) = gw.api.get("/readyz").await;
    assert_eq!(s, 503, "the probe sees it while ingest is idle: {body}");
    cab.send(&cab.uplink(2, door(1, true))).await;
    eventually_async("storage alarm raised", || {
        let api = gw.api.clone();
        async move {
            let m = api.metrics().await;
            let failing = locker_tests::api::metric_value(&m, "locker_ingest_storage_failing");
            let errors = locker_tests::api::metric_value(&m, "locker_ingest_storage_errors_total");
            (failing == 1.0 && errors >= 2.0).then_some(())
        }
    })
    .await;
    let (s, body) = gw.api.get("/readyz").await;
    assert_eq!(s, 503, "{body}");
    assert_eq!(body["failing"], json!(["storage"]), "{body}");
    let (s, _) = gw.api.get("/healthz").await;
    assert_eq!(s, 200, "liveness is not readiness");
    assert_eq!(cab.acked(), 1, "nothing acknowledged that is not durable");

    gw.gw.store().audit().set_write_fault(false);
    eventually("ack 2 once storage is back", || cab.acked() == 2).await;
    let (s, body) = gw.api.get("/readyz").await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(gw.api.metric("locker_ingest_storage_failing").await, 0.0);
    cab.send(&cab.uplink(3, door(1, false))).await;
    eventually("ingest goes on", || cab.acked() == 3).await;
    let evs = events(&gw.api, "CAB-S").await;
    assert_eq!(field(&evs, "seq"), vec![json!(1), json!(2), json!(3)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_prunes_old_entries_but_never_a_cabinets_place() {
    let mut pki = TestPki::new();
    let cert = pki.cabinet("CAB-R");
    let gw = TestGateway::start_with(&pki, |c| {
        c.ingest.retention_max_events = 3;
        c.ingest.retention_interval_ms = 1_000;
        c.ingest.retention_batch = 2;
    })
    .await;
    let cab = RawCabinet::connect(&pki, &cert, "CAB-R", gw.edge_addr());
    eventually("cabinet connected", || cab.connected()).await;
    cab.send(&cab.uplink(1, hello(4))).await;
    for s in 2..=10 {
        cab.send(&cab.uplink(s, door(1, s % 2 == 0))).await;
    }
    eventually("all acknowledged", || cab.acked() == 10).await;
    eventually_async("pruned down to the newest 3", || {
        let api = gw.api.clone();
        async move {
            let evs = events(&api, "CAB-R").await;
            (field(&evs, "seq") == vec![json!(8), json!(9), json!(10)]).then_some(())
        }
    })
    .await;
    assert_eq!(gw.api.metric("locker_ingest_pruned_total").await, 7.0);
    // a replay of a pruned event is still recognised as a duplicate, and the sequence goes on
    cab.send(&cab.uplink(2, door(1, true))).await;
    cab.send(&cab.uplink(11, door(1, true))).await;
    eventually("sequence continues", || cab.acked() == 11).await;
    assert_eq!(gw.api.metric("locker_ingest_new_lives_total").await, 0.0);
}
