//! MQTT 5 sessions at the edge (issue 15), with a raw v5 client ([`RawV5`]): session expiry
//! (resumed within the interval with what came meanwhile, gone after it, a clean start with an
//! expiry starts afresh, capped at `edge.max_session_expiry_s` and said so in CONNACK), message
//! expiry (an expired message is not delivered, others carry the time left) and a v5 cabinet's
//! user properties reaching v5 integrators unchanged.
//!
//! Two tests let an interval pass (session expiry, message expiry): the passing of time is
//! what they test, so they wait for it instead of polling for something.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use locker_broker_config::pki::IssuedCert;
use locker_schemas::Filter;
use locker_tests::edge::*;
use locker_tests::eventually;
use rumqttc::v5::mqttbytes::v5::{
    ConnAck, ConnectProperties, ConnectReturnCode, Disconnect, DisconnectReasonCode, Packet,
    PingReq, PublishProperties,
};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::QoS as QoS4;

const A_DOOR: &str = "lk/v1/CAB-A/up/door";

fn props() -> ConnectProperties {
    ConnectProperties::new()
}

/// A cabinet (3.1.1 rumqttc) publishing QoS 1 `payload` on its door topic.
async fn door_event(c: &Client, topic: &str, payload: &str) {
    c.client
        .publish(topic, QoS4::AtLeastOnce, false, payload.as_bytes().to_vec())
        .await
        .expect("publish");
}

/// A raw v5 integrator connecting with clean start `clean` and session expiry `expiry`.
async fn persistent(
    fx: &EdgeFixture,
    cert: &IssuedCert,
    clean: bool,
    expiry: u32,
) -> (RawV5, ConnAck) {
    let mut c = connect_v5(
        "erp-1",
        Some(ConnectProperties {
            session_expiry_interval: Some(expiry),
            ..props()
        }),
    );
    c.clean_start = clean;
    let (raw, first) = fx.raw_v5(cert, c, None).await;
    match first {
        Some(Packet::ConnAck(a)) if a.code == ConnectReturnCode::Success => (raw, a),
        other => panic!("expected a successful CONNACK, got {other:?}"),
    }
}

async fn leave(mut raw: RawV5) {
    raw.send(Packet::Disconnect(Disconnect::new(
        DisconnectReasonCode::NormalDisconnection,
    )))
    .await;
    raw.until_closed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v5_session_resumes_within_its_expiry_and_is_gone_after_it() {
    const EXPIRY_S: u32 = 2;
    let mut fx = EdgeFixture::start(|_| {}).await;
    let (a, erp) = (fx.cabinet("CAB-A"), fx.integrator("erp"));
    let ca = fx.client("CAB-A", Some(&a));
    ca.wait_connected("A").await;

    let (mut raw, ack) = persistent(&fx, &erp, false, EXPIRY_S).await;
    assert!(!ack.session_present);
    raw.subscribe(1, &["lk/v1/+/up/door"]).await;
    leave(raw).await;
    fx.wait_connected(1).await;

    // Published while the integrator is away, within the interval: delivered on return.
    door_event(&ca, A_DOOR, "meanwhile").await;
    eventually("acknowledged to A", || ca.seen().pubacks == 1).await;
    let (mut raw, ack) = persistent(&fx, &erp, false, EXPIRY_S).await;
    assert!(ack.session_present, "resumed within the interval");
    let got = raw.publishes(1).await;
    assert_eq!(got[0].payload.as_ref(), b"meanwhile");
    assert_eq!(got[0].qos, QoS::AtLeastOnce);
    leave(raw).await;
    fx.wait_connected(1).await;

    // Clean start with an expiry: the old session (and what waits in it) is gone at once.
    door_event(&ca, A_DOOR, "stale").await;
    eventually("acknowledged to A", || ca.seen().pubacks == 2).await;
    let (mut raw, ack) = persistent(&fx, &erp, true, EXPIRY_S).await;
    assert!(!ack.session_present, "clean start");
    raw.send(Packet::PingReq(PingReq)).await;
    match raw.expect_next("PINGRESP").await {
        Packet::PingResp(_) => {}
        other => panic!("the old session's message came: {other:?}"),
    }
    leave(raw).await;
    fx.wait_connected(1).await;

    // After the interval the session is gone. (What is tested is the passing of time itself,
    // so the test lets the interval pass.)
    tokio::time::sleep(Duration::from_secs(u64::from(EXPIRY_S) + 1)).await;
    let (raw, ack) = persistent(&fx, &erp, false, EXPIRY_S).await;
    assert!(!ack.session_present, "expired");
    leave(raw).await;

    // A longer interval than edge.max_session_expiry_s (default 86400) is capped, and said so.
    let (raw, ack) = persistent(&fx, &erp, true, u32::MAX).await;
    assert_eq!(
        ack.properties.and_then(|p| p.session_expiry_interval),
        Some(86_400)
    );
    leave(raw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_expiry_and_user_properties_reach_v5_integrators() {
    let mut fx = EdgeFixture::start(|cfg| {
        cfg.integrator_acls.insert(
            "erp".into(),
            vec![Filter::new("lk/v1/+/up/#").expect("filter")],
        );
    })
    .await;
    let (a, erp) = (fx.cabinet("CAB-A"), fx.integrator("erp"));
    let user = vec![
        ("site".to_owned(), "north".to_owned()),
        ("site".to_owned(), "n2".to_owned()),
        ("trace".to_owned(), "0af7".to_owned()),
    ];

    // Live: user properties unchanged, no expiry set -> none carried.
    let (mut reader, _) = fx.raw_v5_connected(&erp, None).await;
    reader.subscribe(1, &["lk/v1/+/up/#"]).await;
    let (mut cab, _) = fx.raw_v5_connected(&a, None).await;
    let with_user = PublishProperties {
        user_properties: user.clone(),
        ..Default::default()
    };
    cab.send(publish_v5(
        A_DOOR,
        QoS::AtLeastOnce,
        1,
        "live",
        Some(with_user),
    ))
    .await;
    let got = reader.publishes(1).await;
    let p = got[0].properties.clone().expect("properties");
    assert_eq!(p.user_properties, user);
    assert_eq!(p.message_expiry_interval, None);
    drop(reader);

    // Offline (persistent session): a message that expires before delivery is not
    // delivered; one that does not carries what is left of its interval.
    let (mut raw, _) = persistent(&fx, &erp, false, 600).await;
    raw.subscribe(1, &["lk/v1/+/up/#"]).await;
    leave(raw).await;
    let short = PublishProperties {
        message_expiry_interval: Some(1),
        ..Default::default()
    };
    let long = PublishProperties {
        message_expiry_interval: Some(3_600),
        user_properties: user.clone(),
        ..Default::default()
    };
    cab.send(publish_v5(
        A_DOOR,
        QoS::AtLeastOnce,
        2,
        "short",
        Some(short),
    ))
    .await;
    cab.send(publish_v5(A_DOOR, QoS::AtLeastOnce, 3, "long", Some(long)))
        .await;
    for _ in 0..3 {
        // the PUBACKs of 1, 2 and 3
        assert!(matches!(cab.expect_next("PUBACK").await, Packet::PubAck(_)));
    }
    // The short expiry has to pass (the time itself is what is tested).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (mut raw, ack) = persistent(&fx, &erp, false, 600).await;
    assert!(ack.session_present);
    let got = raw.publishes(1).await;
    assert_eq!(
        got[0].payload.as_ref(),
        b"long",
        "the expired one is not delivered"
    );
    let p = got[0].properties.clone().expect("properties");
    let left = p.message_expiry_interval.expect("remaining interval");
    assert!(
        (1..=3_598).contains(&left),
        "remaining {left} s after 2 s offline"
    );
    assert_eq!(p.user_properties, user);

    // Nothing else was waiting: the next live one comes next.
    cab.send(publish_v5(A_DOOR, QoS::AtLeastOnce, 4, "next", None))
        .await;
    let got = raw.publishes(1).await;
    assert_eq!(got[0].payload.as_ref(), b"next");
}
