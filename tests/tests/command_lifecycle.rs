//! The gateway's side of a command's life, driven by a hand-made cabinet so the wire is under
//! the test's control: resends back off and end (`no_answer`, state `unconfirmed`) for a
//! cabinet that never answers, a late answer is still recorded, a cancel of a sent command
//! stops its resends and leaves the outcome to the cabinet, and the API refuses commands a
//! cabinet cannot take (too large, unknown or bad `set_config` keys) with clear errors.

use locker_schemas::{CommandResult, Outcome, UplinkBody};
use locker_tests::cabinet::bodies::hello;
use locker_tests::cabinet::RawCabinet;
use locker_tests::gateway::TestGateway;
use locker_tests::pki::TestPki;
use locker_tests::{eventually, eventually_async};
use serde_json::{json, Value};

/// A gateway with short resend timers and a raw cabinet that has said hello.
async fn setup(id: &str, give_up_after_ms: u64) -> (TestPki, TestGateway, RawCabinet) {
    let mut pki = TestPki::new();
    let cert = pki.cabinet(id);
    let gw = TestGateway::start_with(&pki, |c| {
        c.commands.resend_after_ms = 200;
        c.commands.resend_max_ms = 800;
        c.commands.give_up_after_ms = give_up_after_ms;
        c.commands.tick_ms = 50;
    })
    .await;
    let cab = RawCabinet::connect(&pki, &cert, id, gw.edge_addr());
    eventually("cabinet connected", || cab.connected()).await;
    cab.send(&cab.uplink(1, hello(4))).await;
    eventually("hello stored", || cab.acked() >= 1).await;
    (pki, gw, cab)
}

async fn record(gw: &TestGateway, id: &str) -> Value {
    gw.api.get(&format!("/v1/commands/{id}")).await.1
}

async fn until_outcome(gw: &TestGateway, id: &str) -> Value {
    let path = format!("/v1/commands/{id}");
    eventually_async(&format!("outcome of {id}"), || {
        let (api, path) = (gw.api.clone(), path.clone());
        async move {
            let (_, r) = api.get(&path).await;
            r["outcome"].is_string().then_some(r)
        }
    })
    .await
}

fn sends_of(cab: &RawCabinet, id: &str) -> Vec<locker_schemas::Command> {
    cab.commands()
        .into_iter()
        .filter(|c| c.id.to_string() == id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resends_back_off_and_end_in_no_answer_and_a_late_result_is_still_recorded() {
    // the give-up comes well after the final resend past expiry, whatever the machine's load
    let (_pki, gw, cab) = setup("CAB-NA", 2_000).await;
    let (s, rec) = gw
        .api
        .post(
            "/v1/cabinets/CAB-NA/commands",
            json!({"action": {"type": "unlock", "compartment": 1}, "ttl_ms": 2500}),
        )
        .await;
    assert_eq!(s, 202, "{rec}");
    let id = rec["id"].as_str().expect("id").to_owned();

    // the cabinet never answers: the gateway gives up after expiry + give_up_after_ms
    let done = until_outcome(&gw, &id).await;
    assert_eq!(done["outcome"], json!("no_answer"), "{done}");
    assert_eq!(done["state"], json!("unconfirmed"), "{done}");
    let sends = sends_of(&cab, &id);
    let n = done["sends"].as_u64().expect("sends");
    // backoff: 200, 400, 800, 800 ... ms in 2.5 s of life is at most 5 sends, plus the last
    // one past expiry; a fixed 200 ms resend would have sent about 13
    assert!((2..=7).contains(&n), "sends with backoff: {n}: {done}");
    assert_eq!(
        done["final_sent"],
        json!(true),
        "one last resend past expiry"
    );
    eventually("every send arrived", || {
        sends_of(&cab, &id).len() as u64 >= n
    })
    .await;
    assert!(sends.len() as u64 <= n);
    assert!(
        gw.api
            .metric("locker_commands_outcomes_total{outcome=\"no_answer\"}")
            .await
            >= 1.0
    );
    assert_eq!(gw.api.metric("locker_commands_pending").await, 0.0);

    // the cabinet answers late: recorded on the record, the outcome stays no_answer
    let cmd = sends_of(&cab, &id).remove(0);
    cab.send(&cab.uplink(
        2,
        UplinkBody::Result(CommandResult {
            command: cmd.id,
            outcome: Outcome::Opened,
            detail: String::new(),
        }),
    ))
    .await;
    let late = eventually_async("late outcome recorded", || {
        let (api, path) = (gw.api.clone(), format!("/v1/commands/{id}"));
        async move {
            let (_, r) = api.get(&path).await;
            (r["late_outcome"] == json!("opened")).then_some(r)
        }
    })
    .await;
    assert_eq!(late["outcome"], json!("no_answer"), "{late}");
    assert_eq!(
        gw.api.metric("locker_commands_late_results_total").await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_of_a_sent_command_stops_resends_and_the_outcome_stays_the_cabinets() {
    let (_pki, gw, cab) = setup("CAB-CX", 600_000).await;
    let post = |c: u16| {
        let api = gw.api.clone();
        async move {
            let (s, r) = api
                .post(
                    "/v1/cabinets/CAB-CX/commands",
                    json!({"action": {"type": "unlock", "compartment": c}, "ttl_ms": 60000}),
                )
                .await;
            assert_eq!(s, 202, "{r}");
            r["id"].as_str().expect("id").to_owned()
        }
    };
    let first = post(1).await;
    eventually("first sent", || !sends_of(&cab, &first).is_empty()).await;
    let (s, c) = gw
        .api
        .post(&format!("/v1/commands/{first}/cancel"), json!({}))
        .await;
    assert_eq!(s, 202, "a sent command is not cancelled outright: {c}");
    assert_eq!(c["state"], json!("sent"));
    assert!(c["cancel_requested_at"].is_u64(), "{c}");
    assert!(c["outcome"].is_null());
    let sends_at_cancel = c["sends"].as_u64().expect("sends");

    // a second command is resent twice meanwhile; the cancelled one is not resent at all
    let second = post(2).await;
    eventually("second resent twice", || sends_of(&cab, &second).len() >= 3).await;
    let r = record(&gw, &first).await;
    assert_eq!(r["sends"].as_u64(), Some(sends_at_cancel), "{r}");
    assert_eq!(sends_of(&cab, &first).len() as u64, sends_at_cancel);

    // the cabinet had run it: its outcome is the outcome
    let cmd = sends_of(&cab, &first).remove(0);
    cab.send(&cab.uplink(
        2,
        UplinkBody::Result(CommandResult {
            command: cmd.id,
            outcome: Outcome::Opened,
            detail: String::new(),
        }),
    ))
    .await;
    let done = until_outcome(&gw, &first).await;
    assert_eq!(done["outcome"], json!("opened"), "{done}");

    // a queued command (cabinet offline) is cancelled outright
    drop(cab);
    eventually_async("offline", || {
        let api = gw.api.clone();
        async move { (api.get("/v1/cabinets/CAB-CX").await.1["online"] == json!(false)).then_some(()) }
    })
    .await;
    let queued = post(3).await;
    let (s, c) = gw
        .api
        .post(&format!("/v1/commands/{queued}/cancel"), json!({}))
        .await;
    assert_eq!(s, 200, "{c}");
    assert_eq!(c["outcome"], json!("cancelled"));
    let (s, _) = gw
        .api
        .post(&format!("/v1/commands/{queued}/cancel"), json!({}))
        .await;
    assert_eq!(s, 409, "already final");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_refuses_what_a_cabinet_cannot_take() {
    let (_pki, gw, cab) = setup("CAB-BIG", 600_000).await;
    let post = |action: Value| {
        let api = gw.api.clone();
        async move {
            api.post("/v1/cabinets/CAB-BIG/commands", json!({ "action": action }))
                .await
        }
    };
    // 100 KB of set_config: more than a cabinet's MQTT packet limit
    let (s, e) = post(
        json!({"type": "set_config", "values": {"timing.door_left_open_s": "9".repeat(100_000)}}),
    )
    .await;
    assert_eq!(s, 413, "{e}");
    assert_eq!(e["error"], json!("too_large"));
    assert!(
        e["message"].as_str().expect("message").contains("4096"),
        "{e}"
    );
    // keys and values the agent would reject
    let (s, e) = post(json!({"type": "set_config", "values": {"mqtt.host": "evil.example"}})).await;
    assert_eq!(s, 400, "{e}");
    assert_eq!(e["error"], json!("bad_config"));
    assert!(
        e["message"].as_str().expect("m").contains("mqtt.host"),
        "{e}"
    );
    let (s, e) =
        post(json!({"type": "set_config", "values": {"timing.door_left_open_s": "0"}})).await;
    assert_eq!(s, 400, "{e}");
    assert!(
        e["message"].as_str().expect("m").contains("1..=86400"),
        "{e}"
    );
    let (s, e) = post(json!({"type": "set_config", "values": {}})).await;
    assert_eq!(s, 400, "{e}");
    // nothing of it reached the cabinet, and a valid one does
    let (s, r) =
        post(json!({"type": "set_config", "values": {"timing.door_left_open_s": "120"}})).await;
    assert_eq!(s, 202, "{r}");
    let id = r["id"].as_str().expect("id").to_owned();
    eventually("valid set_config delivered", || !cab.commands().is_empty()).await;
    assert!(cab.commands().iter().all(|c| c.id.to_string() == id));
}
