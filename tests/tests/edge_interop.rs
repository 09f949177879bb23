//! Stock clients against the edge (issue 15), as a new integrator would try it: Python
//! paho-mqtt and mosquitto_sub/mosquitto_pub, each in MQTT 5 and 3.1.1, over mutual TLS with
//! the server certificate verified. Refused filters get SUBACK failure codes while the
//! connection and the other filters stay; an integrator's publish is "not authorized".

#![allow(clippy::unwrap_used, clippy::expect_used)]

use locker_tests::edge::*;
use locker_tests::eventually;
use locker_tests::interop::*;
use rumqttc::QoS;

const A_DOOR: &str = "lk/v1/CAB-A/up/door";

async fn door_event(c: &Client, payload: &str) {
    c.client
        .publish(A_DOOR, QoS::AtLeastOnce, false, payload.as_bytes().to_vec())
        .await
        .expect("publish");
}

/// Index of the first event of `kind` in a paho run (or `usize::MAX`).
fn first(events: &[serde_json::Value], kind: &str) -> usize {
    events
        .iter()
        .position(|e| e["event"] == kind)
        .unwrap_or(usize::MAX)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_in_both_versions_gets_a_code_per_filter_and_keeps_receiving() {
    let mut fx = EdgeFixture::start(|_| {}).await;
    let (a, erp) = (fx.cabinet("CAB-A"), fx.integrator("erp"));
    let creds = Creds::new(&fx, &erp);
    let ca = fx.client("CAB-A", Some(&a));
    ca.wait_connected("A").await;

    for (v, refused) in [(Version::V5, 0x87), (Version::V311, 0x80)] {
        // erp may read door events: the second filter is outside its ACL.
        let mut o = PahoOpts::new(v, &["lk/v1/+/up/door", "lk/v1/+/up/#"]);
        o.count = 2;
        let mut paho = paho(&fx, &creds, &o);
        eventually(&format!("{v:?}: SUBACK"), || {
            !paho.events_of("suback").is_empty() || paho.exited().is_some()
        })
        .await;
        let suback = paho.events_of("suback");
        assert_eq!(
            suback.first().map(|s| s["codes"].clone()),
            Some(serde_json::json!([1, refused])),
            "{}",
            paho.output()
        );
        let connack = &paho.events_of("connack")[0];
        assert_eq!(connack["rc"], 0);
        if v == Version::V5 {
            let p = &connack["properties"];
            assert_eq!(p["MaximumQoS"], 1, "{connack}");
            assert_eq!(p["RetainAvailable"], 0, "{connack}");
            assert_eq!(p["TopicAliasMaximum"], 10, "{connack}");
            assert_eq!(p["ReceiveMaximum"], 100, "{connack}");
            // paho sent an empty client id: MQTT 5 requires one assigned in CONNACK.
            let assigned = p["AssignedClientIdentifier"].as_str().unwrap_or_default();
            assert!(!assigned.is_empty(), "{connack}");
        }

        door_event(&ca, &format!("{v:?}-1")).await;
        door_event(&ca, &format!("{v:?}-2")).await;
        assert!(paho.wait_exit().await.success(), "{}", paho.output());
        let events = paho.events();
        assert!(
            first(&events, "done") < first(&events, "disconnect"),
            "the edge kept the connection: {}",
            paho.output()
        );
        assert_eq!(
            paho.messages(),
            vec![
                (A_DOOR.to_owned(), format!("{v:?}-1").into_bytes()),
                (A_DOOR.to_owned(), format!("{v:?}-2").into_bytes()),
            ]
        );
        assert!(paho.events_of("message").iter().all(|m| m["qos"] == 1));
        fx.wait_connected(1).await;
    }
    eventually("both refused filters counted", || {
        fx.rejections("acl_subscribe") == 2
    })
    .await;
    eventually("no connection was refused", || {
        fx.rejections("protocol_version") == 0
    })
    .await;
}

/// Waits until mosquitto_sub (run with `-d`) printed its SUBACK line and returns it.
async fn subscribed(s: &mut Stock) -> String {
    eventually("mosquitto_sub's SUBACK", || {
        s.lines().iter().any(|l| l.starts_with("Subscribed")) || s.exited().is_some()
    })
    .await;
    s.lines()
        .into_iter()
        .find(|l| l.starts_with("Subscribed"))
        .unwrap_or_else(|| panic!("no SUBACK: {}", s.output()))
}

/// mosquitto_sub's message lines (`topic payload`; its `-d` debug lines are skipped).
fn events(s: &Stock) -> Vec<(String, String)> {
    sub_messages(s)
        .into_iter()
        .filter(|(t, _)| t.starts_with("lk/"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_sub_in_both_versions_receives_a_cabinets_events() {
    let mut fx = EdgeFixture::start(|_| {}).await;
    let (a, erp) = (fx.cabinet("CAB-A"), fx.integrator("erp"));
    let creds = Creds::new(&fx, &erp);
    let ca = fx.client("CAB-A", Some(&a));
    ca.wait_connected("A").await;

    for v in [Version::V5, Version::V311] {
        let mut sub = mosquitto_sub(&fx, &creds, v, &["lk/v1/+/up/door"], 2, 30, &["-d"]);
        let line = subscribed(&mut sub).await;
        assert_eq!(line, "Subscribed (mid: 1): 1", "{}", sub.output());
        door_event(&ca, "one").await;
        door_event(&ca, "two").await;
        assert!(sub.wait_exit().await.success(), "{}", sub.output());
        assert_eq!(
            events(&sub),
            vec![
                (A_DOOR.to_owned(), "one".to_owned()),
                (A_DOOR.to_owned(), "two".to_owned())
            ],
            "{}",
            sub.output()
        );
        fx.wait_connected(1).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_sub_with_a_refused_filter_stays_connected_and_says_why() {
    let mut fx = EdgeFixture::start(|_| {}).await;
    let (a, erp) = (fx.cabinet("CAB-A"), fx.integrator("erp"));
    let creds = Creds::new(&fx, &erp);
    let ca = fx.client("CAB-A", Some(&a));
    ca.wait_connected("A").await;

    for (v, refused) in [(Version::V5, 135), (Version::V311, 128)] {
        // One allowed and one refused filter: the SUBACK says which, the allowed one delivers.
        let mut sub = mosquitto_sub(
            &fx,
            &creds,
            v,
            &["lk/v1/+/up/door", "lk/v1/CAB-A/down/cmd"],
            1,
            30,
            &["-d"],
        );
        let line = subscribed(&mut sub).await;
        assert_eq!(
            line,
            format!("Subscribed (mid: 1): 1, {refused}"),
            "{}",
            sub.output()
        );
        door_event(&ca, "after-refusal").await;
        assert!(sub.wait_exit().await.success(), "{}", sub.output());
        assert_eq!(
            events(&sub),
            vec![(A_DOOR.to_owned(), "after-refusal".to_owned())]
        );
        assert!(!sub.stderr().contains("lost"), "{}", sub.output());

        // Only a refused filter: mosquitto_sub itself says so and leaves (not "connection
        // lost", not a reconnect loop).
        let mut sub = mosquitto_sub(&fx, &creds, v, &["lk/v1/+/up/#"], 1, 30, &["-d"]);
        let line = subscribed(&mut sub).await;
        assert_eq!(line, format!("Subscribed (mid: 1): {refused}"));
        sub.wait_exit().await;
        let out = sub.output();
        assert!(
            out.contains("All subscription requests were denied"),
            "{out}"
        );
        assert!(!out.contains("lost"), "{out}");
        fx.wait_connected(1).await;
    }
    eventually("counted", || fx.rejections("acl_subscribe") == 4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_pub_as_an_integrator_is_not_authorized() {
    let mut fx = EdgeFixture::start(|_| {}).await;
    let obs = fx.observer(&["lk/v1/#"]).await;
    let erp = fx.integrator("erp");
    let creds = Creds::new(&fx, &erp);

    let mut p = mosquitto_pub(&fx, &creds, Version::V5, A_DOOR, "fake");
    p.wait_exit().await;
    let out = p.output();
    assert!(out.contains("CONNACK (0)"), "connected: {out}");
    assert!(out.contains("Not authorized"), "{out}");
    assert!(
        out.contains("PUBACK (Mid: 1, RC:135)"),
        "a PUBACK 0x87, not a dropped connection: {out}"
    );
    eventually("acl_publish counted", || fx.rejections("acl_publish") == 1).await;

    // 3.1.1 has no way to say it: the connection is closed (as before).
    let mut p = mosquitto_pub(&fx, &creds, Version::V311, A_DOOR, "fake");
    p.wait_exit().await;
    eventually("acl_publish counted", || fx.rejections("acl_publish") == 2).await;
    assert!(obs.seen().is_empty(), "nothing reached the broker");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_clients_with_a_cabinet_certificate_stay_in_their_topics() {
    let mut fx = EdgeFixture::start(|_| {}).await;
    let obs = fx.observer(&["lk/v1/+/up/#"]).await;
    let a = fx.cabinet("CAB-A");
    let creds = Creds::new(&fx, &a);

    // Its own uplink, in both versions.
    for v in [Version::V5, Version::V311] {
        let mut p = mosquitto_pub(&fx, &creds, v, A_DOOR, &format!("{v:?}"));
        assert!(p.wait_exit().await.success(), "{}", p.output());
    }
    eventually("both arrive", || obs.received(A_DOOR) == 2).await;

    // Another cabinet's uplink: v5 is told why (DISCONNECT 0x87) before the close.
    let mut p = mosquitto_pub(&fx, &creds, Version::V5, "lk/v1/CAB-B/up/door", "forged");
    p.wait_exit().await;
    assert!(
        p.output().contains("DISCONNECT (135)"),
        "a DISCONNECT before the close: {}",
        p.output()
    );
    eventually("counted", || fx.rejections("acl_publish") == 1).await;
    assert_eq!(obs.received("lk/v1/CAB-B/up/door"), 0);
}
