//! The rules engine end to end: a real gateway, real agents over mutual TLS, a real charge
//! controller simulator over Modbus TCP, an integrator subscribed to `gw/alert` with its own
//! certificate, and the alert API. An outage raises one `offline` alert, published, listed,
//! acknowledged and cleared on return with a `sync_credentials` action the agent answers; a
//! low battery sends `power_save` to the real agent and the recovery sends it off again.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use locker_schemas::codec::decode_stream;
use locker_schemas::{AlertEvent, StreamMessage};
use locker_tests::agent::TestCabinet;
use locker_tests::gateway::{TestGateway, TEST_INTEGRATOR};
use locker_tests::parcels::online;
use locker_tests::pki::TestPki;
use locker_tests::{eventually, eventually_async};
use rumqttc::{Event, Packet, QoS};
use serde_json::{json, Value};

/// Collects every alert an integrator receives on `lk/v1/+/gw/alert`.
async fn alert_watcher(pki: &mut TestPki, gw: &TestGateway) -> Arc<Mutex<Vec<AlertEvent>>> {
    let cert = pki.integrator(TEST_INTEGRATOR);
    let ca = std::fs::read(pki.ca_pem()).expect("CA PEM");
    let tls = locker_tests::pki::client_tls(&ca, Some(&cert));
    let (client, mut events) = locker_tests::mqtt::client("alert-watcher", gw.edge_addr(), tls);
    client
        .subscribe("lk/v1/+/gw/alert", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let out = seen.clone();
    let subscribed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sub = subscribed.clone();
    tokio::spawn(async move {
        let _client = client;
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    sub.store(true, std::sync::atomic::Ordering::SeqCst)
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if let Ok(StreamMessage::Alert(a)) = decode_stream(&p.payload) {
                        out.lock().expect("lock").push(a);
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    eventually("the integrator is subscribed", || {
        subscribed.load(std::sync::atomic::Ordering::SeqCst)
    })
    .await;
    seen
}

async fn alerts(gw: &TestGateway, query: &str) -> Vec<Value> {
    let (s, v) = gw.api.get(&format!("/v1/alerts?{query}")).await;
    assert_eq!(s, 200, "{v}");
    v["alerts"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_raises_one_offline_alert_published_acknowledged_and_cleared_with_a_credential_sync(
) {
    let mut pki = TestPki::new();
    let gw = TestGateway::start_with(&pki, |c| {
        c.rules.tick_ms = 100;
        c.rules.rules.insert(
            "offline".into(),
            json!({"after_ms": 800, "sync_credentials_after_ms": 1}),
        );
    })
    .await;
    let seen = alert_watcher(&mut pki, &gw).await;
    let mut cab = TestCabinet::start(&mut pki, "CAB-RA1", gw.edge_addr()).await;
    online(&gw.api, "CAB-RA1").await;
    assert!(alerts(&gw, "state=all").await.is_empty());

    cab.stop().await;
    let raised = eventually_async("the offline alert", || async {
        let a = alerts(&gw, "kind=offline&cabinet=CAB-RA1").await;
        (a.len() == 1).then(|| a[0].clone())
    })
    .await;
    assert_eq!(raised["state"], "active");
    assert_eq!(raised["severity"], "warning");
    let id = raised["id"].as_str().expect("id").to_string();
    let started = raised["started"].as_u64().expect("started");
    let raised_at = raised["raised_at"].as_u64().expect("raised_at");
    assert!(raised_at >= started + 800, "{raised}");
    eventually("the integrator saw it raised", || {
        seen.lock()
            .expect("lock")
            .iter()
            .any(|a| a.id == id && a.active && a.rule == "offline")
    })
    .await;

    // acknowledged by the token's client, with a note; a second ack changes nothing
    let (s, acked) = gw
        .api
        .post(
            &format!("/v1/alerts/{id}/ack"),
            json!({"note": "site manager called"}),
        )
        .await;
    assert_eq!(s, 200, "{acked}");
    assert_eq!(acked["acked_by"], "test-suite");
    assert_eq!(acked["ack_note"], "site manager called");
    assert_eq!(acked["state"], "active", "an ack does not clear an outage");
    let (_, again) = gw
        .api
        .post(&format!("/v1/alerts/{id}/ack"), json!({}))
        .await;
    assert_eq!(again["acked_at"], acked["acked_at"]);

    cab.boot().await;
    online(&gw.api, "CAB-RA1").await;
    let cleared = eventually_async("the offline alert cleared", || async {
        let (s, a) = gw.api.get(&format!("/v1/alerts/{id}")).await;
        (s == 200 && a["state"] == "cleared").then_some(a)
    })
    .await;
    assert_eq!(cleared["clear_reason"], "condition ended");
    assert_eq!(cleared["acked_by"], "test-suite");
    assert!(alerts(&gw, "state=active").await.is_empty());
    assert_eq!(alerts(&gw, "state=cleared").await.len(), 1);
    eventually("the integrator saw it cleared", || {
        seen.lock()
            .expect("lock")
            .iter()
            .any(|a| a.id == id && !a.active)
    })
    .await;

    // the return from the outage sent sync_credentials, which the agent answered
    let actions = cleared["actions"].as_array().expect("actions");
    assert_eq!(actions.len(), 1, "{cleared}");
    assert_eq!(actions[0]["action"], "sync_credentials");
    let cmd = actions[0]["command"].as_str().expect("command id");
    let done = eventually_async("the sync command's outcome", || async {
        let (s, c) = gw.api.get(&format!("/v1/commands/{cmd}")).await;
        (s == 200 && c["outcome"].is_string()).then_some(c)
    })
    .await;
    assert_eq!(done["outcome"], "done", "{done}");

    assert_eq!(
        gw.api
            .metric("locker_alerts_raised_total{kind=\"offline\",severity=\"warning\"}")
            .await,
        1.0
    );
    assert_eq!(
        gw.api
            .metric("locker_alerts_active{kind=\"offline\",severity=\"warning\"}")
            .await,
        0.0
    );
    assert_eq!(
        gw.api
            .metric("locker_rule_actions_total{action=\"sync_credentials\",result=\"created\"}")
            .await,
        1.0
    );
    cab.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_low_battery_sends_power_save_to_the_agent_and_the_recovery_turns_it_off() {
    let mut pki = TestPki::new();
    let gw = TestGateway::start_with(&pki, |c| {
        c.rules.tick_ms = 100;
        c.rules
            .rules
            .insert("battery_low".into(), json!({"for_ms": 0}));
    })
    .await;
    let mut cab = TestCabinet::start(&mut pki, "CAB-RA2", gw.edge_addr()).await;
    let charger = cab.add_charger(60.0).await;
    online(&gw.api, "CAB-RA2").await;
    assert!(!cab.status().power_save);

    charger.set_soc(8.0).expect("soc");
    let raised = eventually_async("the battery_low alert", || async {
        let a = alerts(&gw, "kind=battery_low&cabinet=CAB-RA2").await;
        (a.len() == 1).then(|| a[0].clone())
    })
    .await;
    let actions = raised["actions"].as_array().expect("actions");
    assert_eq!(actions.len(), 1, "{raised}");
    assert_eq!(actions[0]["action"], "power_save");
    eventually("the agent is in power save", || cab.status().power_save).await;

    // between the thresholds (15 and 30): the alert stays, nothing is sent. Judged once the
    // rules engine has evaluated a commit after the one with the reading (commits are
    // evaluated in order)
    charger.set_soc(22.0).expect("soc");
    eventually_async("the reading in the band is stored", || async {
        let (_, c) = gw.api.get("/v1/cabinets/CAB-RA2").await;
        (c["power"]["soc_pct"] == 22).then_some(())
    })
    .await;
    let evaluated = gw.api.metric("locker_rules_events_total").await;
    eventually_async("a later commit evaluated", || async {
        (gw.api.metric("locker_rules_events_total").await > evaluated).then_some(())
    })
    .await;
    let still = alerts(&gw, "kind=battery_low&cabinet=CAB-RA2").await;
    assert_eq!(still.len(), 1, "the hysteresis band keeps the alert");
    assert!(cab.status().power_save);

    charger.set_soc(45.0).expect("soc");
    let id = raised["id"].as_str().expect("id").to_string();
    let cleared = eventually_async("the battery_low alert cleared", || async {
        let (_, a) = gw.api.get(&format!("/v1/alerts/{id}")).await;
        (a["state"] == "cleared").then_some(a)
    })
    .await;
    let actions = cleared["actions"].as_array().expect("actions");
    assert_eq!(
        actions
            .iter()
            .map(|a| a["action"].as_str().unwrap_or_default())
            .collect::<Vec<_>>(),
        vec!["power_save", "power_normal"]
    );
    eventually("the agent left power save", || !cab.status().power_save).await;
    assert_eq!(alerts(&gw, "state=all&kind=battery_low").await.len(), 1);
    cab.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alert_queries_are_checked_and_scoped() {
    let mut pki = TestPki::new();
    let gw = TestGateway::start_with(&pki, |c| {
        c.api.tokens.insert(
            "carrier-token-0123456789".into(),
            serde_json::from_value(
                json!({"name": "dhl-integration", "scope": "carrier", "carrier": "dhl"}),
            )
            .expect("token spec"),
        );
    })
    .await;
    let _ = &mut pki;
    for (q, code) in [
        ("state=open", "bad_query"),
        ("kind=meteor", "bad_query"),
        ("severity=fatal", "bad_query"),
        ("colour=red", "bad_query"),
    ] {
        let (s, v) = gw.api.get(&format!("/v1/alerts?{q}")).await;
        assert_eq!(s, 400, "{q}: {v}");
        assert_eq!(v["error"], code, "{q}: {v}");
    }
    let (s, v) = gw
        .api
        .get("/v1/alerts/ALR-01JC0000000000000000000000")
        .await;
    assert_eq!(s, 404, "{v}");
    let (s, v) = gw
        .api
        .post("/v1/alerts/ALR-01JC0000000000000000000000/ack", json!({}))
        .await;
    assert_eq!(s, 404, "{v}");
    let carrier = gw.api.with_token("carrier-token-0123456789");
    let (s, v) = carrier.get("/v1/alerts").await;
    assert_eq!(s, 403, "{v}");
}
