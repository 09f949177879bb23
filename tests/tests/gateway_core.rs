//! The gateway core end to end over real mTLS: ingest, acknowledgements, deduplication,
//! the audit log API, and commands with their outcomes, driven by a hand-made cabinet so the
//! wire is fully under the test's control.

use locker_schemas::{CommandResult, Outcome, UplinkBody};
use locker_tests::cabinet::bodies::{door, hello};
use locker_tests::cabinet::RawCabinet;
use locker_tests::gateway::TestGateway;
use locker_tests::pki::TestPki;
use locker_tests::{eventually, eventually_async};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_stored_once_in_order_and_acknowledged() {
    let mut pki = TestPki::new();
    let cert = pki.cabinet("CAB-1");
    let gw = TestGateway::start(&pki).await;
    let cab = RawCabinet::connect(&pki, &cert, "CAB-1", gw.edge_addr());
    eventually("cabinet connected", || cab.connected()).await;

    cab.send(&cab.uplink(1, hello(4))).await;
    let second = cab.uplink(2, door(1, true));
    cab.send(&second).await;
    cab.send(&second).await; // duplicate (agents replay byte for byte)
    cab.send(&cab.uplink(4, door(1, false))).await; // gap: dropped
    cab.send(&cab.uplink(3, door(1, false))).await;
    eventually("ack of 3", || cab.acked() >= 3).await;

    let (status, page) = gw.api.get("/v1/cabinets/CAB-1/events").await;
    assert_eq!(status, 200, "{page}");
    let seqs: Vec<u64> = page["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(seqs, vec![1, 2, 3]);
    assert_eq!(page["events"][1]["data"]["open"], json!(true));
    assert!(gw.api.metric("locker_ingest_duplicates_total").await >= 1.0);
    assert!(gw.api.metric("locker_ingest_gaps_total").await >= 1.0);

    // the gap is filled by resending from 4
    cab.send(&cab.uplink(4, door(1, true))).await;
    eventually("ack of 4", || cab.acked() >= 4).await;

    let (_, c) = gw.api.get("/v1/cabinets/CAB-1").await;
    assert_eq!(c["online"], json!(true));
    assert_eq!(c["firmware"], json!("test 1"));
    assert_eq!(c["compartments"][0]["open"], json!(true));

    // paging
    let (_, p) = gw
        .api
        .get("/v1/cabinets/CAB-1/events?after=2&limit=1")
        .await;
    assert_eq!(p["events"][0]["seq"], json!(3));
    assert_eq!(p["next_after"], json!(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_get_exactly_one_outcome() {
    let mut pki = TestPki::new();
    let cert = pki.cabinet("CAB-2");
    let gw = TestGateway::start(&pki).await;
    let cab = RawCabinet::connect(&pki, &cert, "CAB-2", gw.edge_addr());
    eventually("cabinet connected", || cab.connected()).await;
    cab.send(&cab.uplink(1, hello(4))).await;
    eventually("hello stored", || cab.acked() >= 1).await;

    // unknown compartment and bad requests are refused with clear JSON errors
    let (s, e) = gw
        .api
        .post(
            "/v1/cabinets/CAB-2/commands",
            json!({"action": {"type": "unlock", "compartment": 99}}),
        )
        .await;
    assert_eq!(s, 400);
    assert_eq!(e["error"], json!("unknown_compartment"));
    let (s, _) = gw
        .api
        .post(
            "/v1/cabinets/NOPE/commands",
            json!({"action": {"type": "reboot"}}),
        )
        .await;
    assert_eq!(s, 404);
    let (s, e) = gw
        .api
        .post(
            "/v1/cabinets/CAB-2/commands",
            json!({"action": {"type": "explode"}}),
        )
        .await;
    assert_eq!(s, 400, "{e}");

    let (s, rec) = gw
        .api
        .post(
            "/v1/cabinets/CAB-2/commands",
            json!({"action": {"type": "unlock", "compartment": 2}, "ttl_ms": 30000}),
        )
        .await;
    assert_eq!(s, 202, "{rec}");
    let id = rec["id"].as_str().expect("id").to_owned();
    let cmd = eventually_async("command delivered", || {
        let cmds = cab.commands();
        async move { cmds.into_iter().next() }
    })
    .await;
    assert_eq!(cmd.id.to_string(), id);
    assert!(cmd.expires_at > cmd.issued_at && cmd.ttl_ms > 0);

    // no result yet: it is resent (the agent deduplicates)
    eventually("command resent", || cab.commands().len() >= 2).await;

    let result = UplinkBody::Result(CommandResult {
        command: cmd.id,
        outcome: Outcome::Opened,
        detail: String::new(),
    });
    cab.send(&cab.uplink(2, result.clone())).await;
    cab.send(&cab.uplink(3, result)).await; // a second result for the same command is stray
    let rec = eventually_async("outcome recorded", || {
        let api = gw.api.clone();
        let id = id.clone();
        async move {
            let (_, r) = api.get(&format!("/v1/commands/{id}")).await;
            (r["outcome"] == json!("opened")).then_some(r)
        }
    })
    .await;
    assert_eq!(rec["state"], json!("done"));
    eventually("ack 3", || cab.acked() >= 3).await;
    assert_eq!(
        gw.api
            .metric("locker_commands_outcomes_total{outcome=\"opened\"}")
            .await,
        1.0
    );
    assert!(gw.api.metric("locker_commands_stray_results_total").await >= 1.0);

    // waiting for an outcome in the request
    let api = gw.api.clone();
    let waiter = tokio::spawn(async move {
        api.post(
            "/v1/cabinets/CAB-2/commands",
            json!({"action": {"type": "reboot"}, "wait_ms": 20000}),
        )
        .await
    });
    let cmd2 = eventually_async("second command", || {
        let c = cab.commands().into_iter().find(|c| c.id != cmd.id);
        async move { c }
    })
    .await;
    cab.send(&cab.uplink(
        4,
        UplinkBody::Result(CommandResult {
            command: cmd2.id,
            outcome: Outcome::Done,
            detail: String::new(),
        }),
    ))
    .await;
    let (s, r) = waiter.await.expect("join");
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["outcome"], json!("done"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_commands_wait_and_expired_ones_never_leave() {
    let mut pki = TestPki::new();
    let cert = pki.cabinet("CAB-3");
    let gw = TestGateway::start(&pki).await;
    // known but offline cabinet
    {
        let cab = RawCabinet::connect(&pki, &cert, "CAB-3", gw.edge_addr());
        eventually("connected", || cab.connected()).await;
        cab.send(&cab.uplink(1, hello(4))).await;
        eventually("hello stored", || cab.acked() >= 1).await;
        cab.client.disconnect().await.expect("disconnect");
    }
    eventually_async("offline", || {
        let api = gw.api.clone();
        async move { (api.get("/v1/cabinets/CAB-3").await.1["online"] == json!(false)).then_some(()) }
    })
    .await;

    let (_, keep) = gw
        .api
        .post(
            "/v1/cabinets/CAB-3/commands",
            json!({"action": {"type": "unlock", "compartment": 1}, "ttl_ms": 60000}),
        )
        .await;
    let (_, short) = gw
        .api
        .post(
            "/v1/cabinets/CAB-3/commands",
            json!({"action": {"type": "unlock", "compartment": 2}, "ttl_ms": 1}),
        )
        .await;
    assert_eq!(keep["state"], json!("queued"));
    let short_id = short["id"].as_str().expect("id").to_owned();
    eventually_async("short one expired at the gateway", || {
        let api = gw.api.clone();
        let id = short_id.clone();
        async move {
            (api.get(&format!("/v1/commands/{id}")).await.1["outcome"] == json!("expired"))
                .then_some(())
        }
    })
    .await;

    let cab = RawCabinet::connect(&pki, &cert, "CAB-3", gw.edge_addr());
    eventually("reconnected", || cab.connected()).await;
    cab.send(&cab.uplink(2, hello(4))).await;
    let got = eventually_async("queued command delivered", || {
        let c = cab.commands();
        async move { (!c.is_empty()).then_some(c) }
    })
    .await;
    assert!(
        got.iter()
            .all(|c| c.id.to_string() == keep["id"].as_str().expect("id")),
        "only the live command is delivered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_forged_payloads_are_counted_and_others_keep_being_served() {
    let mut pki = TestPki::new();
    let (ca, cb) = (pki.cabinet("CAB-A"), pki.cabinet("CAB-B"));
    let gw = TestGateway::start(&pki).await;
    let a = RawCabinet::connect(&pki, &ca, "CAB-A", gw.edge_addr());
    let b = RawCabinet::connect(&pki, &cb, "CAB-B", gw.edge_addr());
    eventually("both connected", || a.connected() && b.connected()).await;

    a.send_raw("lk/v1/CAB-A/up/door", vec![0xff, 0x00, 0x13])
        .await;
    // a door event claiming to come from CAB-B, on CAB-A's own topic
    let mut forged = b.uplink(1, door(1, true));
    forged.cabinet = b.id.clone();
    a.send_raw(
        "lk/v1/CAB-A/up/door",
        locker_schemas::codec::encode_uplink(&forged).expect("encode"),
    )
    .await;

    b.send(&b.uplink(1, hello(4))).await;
    b.send(&b.uplink(2, door(2, true))).await;
    eventually("B acknowledged", || b.acked() >= 2).await;
    eventually_async("decode errors counted", || {
        let api = gw.api.clone();
        async move {
            let m = api.metrics().await;
            let malformed = locker_tests::api::metric_value(
                &m,
                "locker_ingest_decode_errors_total{reason=\"malformed\"}",
            );
            let foreign = locker_tests::api::metric_value(&m, "locker_ingest_foreign_total");
            (malformed >= 1.0 && foreign >= 1.0).then_some(())
        }
    })
    .await;
    eventually("A's placed forgery acknowledged", || a.acked() == 1).await;
    // an oversized packet closes A's connection at the edge; B is unaffected
    a.send_raw("lk/v1/CAB-A/up/door", vec![0x9f; 70_000]).await;
    eventually("A dropped", || {
        a.seen.lock().expect("lock").disconnects >= 1
    })
    .await;
    b.send(&b.uplink(3, door(2, false))).await;
    eventually("B still served", || b.acked() >= 3).await;
    let (_, page) = gw.api.get("/v1/cabinets/CAB-B/events").await;
    assert_eq!(
        page["events"].as_array().map(Vec::len),
        Some(3),
        "B's events are stored, the forgery is not"
    );
    let (s, page) = gw.api.get("/v1/cabinets/CAB-A/events").await;
    assert_eq!(s, 200);
    assert_eq!(
        page["events"].as_array().map(Vec::len),
        Some(0),
        "nothing of A's is an event"
    );
    // The forgery had a readable head: it is quarantined in A's sequence and acknowledged
    // (so it cannot stall A); the garbage had none: quarantined unplaced, not acknowledged.
    let (_, q) = gw.api.get("/v1/cabinets/CAB-A/quarantine").await;
    let reasons: Vec<&str> = q["records"]
        .as_array()
        .expect("records")
        .iter()
        .filter_map(|r| r["reason"].as_str())
        .collect();
    assert_eq!(reasons, vec!["malformed", "foreign"], "{q}");
    assert_eq!(a.acked(), 1, "only the placed forgery was acknowledged");
}
