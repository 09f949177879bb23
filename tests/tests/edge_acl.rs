//! Edge ACLs over real TLS and the embedded broker: a cabinet publishes and reads only its own
//! topics, integrators read only what their ACL allows and never publish, the broker knows
//! each client by its certificate identity, and bad input closes only the offending connection.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use locker_schemas::Filter;
use locker_tests::edge::*;
use locker_tests::eventually;
use rumqttc::{LastWill, QoS, SubscribeReasonCode};

const A_DOOR: &str = "lk/v1/CAB-A/up/door";
const B_DOOR: &str = "lk/v1/CAB-B/up/door";

/// An observer on the broker itself, subscribed to every uplink.
async fn uplink_observer(fx: &mut EdgeFixture) -> Observer {
    fx.observer(&["lk/v1/+/up/#"]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cabinet_cannot_publish_into_another_cabinets_topics() {
    let mut fx = EdgeFixture::start(|_| {}).await;
    let obs = uplink_observer(&mut fx).await;
    let (a, b) = (fx.cabinet("CAB-A"), fx.cabinet("CAB-B"));
    let ca = fx.client("CAB-A", Some(&a));
    let cb = fx.client("CAB-B", Some(&b));
    ca.wait_connected("A connects").await;
    cb.wait_connected("B connects").await;

    ca.client
        .publish(A_DOOR, QoS::AtLeastOnce, false, b"a".to_vec())
        .await
        .expect("publish");
    eventually("A's own event arrives", || obs.received(A_DOOR) == 1).await;

    ca.client
        .publish(B_DOOR, QoS::AtLeastOnce, false, b"forged".to_vec())
        .await
        .expect("publish");
    ca.wait_failed("A is disconnected for publishing as B")
        .await;
    eventually("acl_publish counted", || fx.rejections("acl_publish") == 1).await;
    assert_eq!(
        fx.metric(
            "locker_edge_acl_violations_total",
            Some(("reason", "acl_publish"))
        ),
        1
    );

    // B is unaffected, and the only B event the broker ever saw is B's own.
    assert!(cb.connected());
    cb.client
        .publish(B_DOOR, QoS::AtLeastOnce, false, b"b".to_vec())
        .await
        .expect("publish");
    eventually("B's event arrives", || obs.received(B_DOOR) == 1).await;
    let b_events: Vec<_> = obs
        .seen()
        .into_iter()
        .filter(|(t, _)| t == B_DOOR)
        .collect();
    assert_eq!(b_events, vec![(B_DOOR.to_owned(), b"b".to_vec())]);
    fx.wait_connected(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cabinet_cannot_subscribe_to_another_cabinets_downlinks() {
    let mut fx = EdgeFixture::start(|_| {}).await;
    let (a, b) = (fx.cabinet("CAB-A"), fx.cabinet("CAB-B"));
    let ca = fx.client("CAB-A", Some(&a));
    let cb = fx.client("CAB-B", Some(&b));
    ca.wait_connected("A connects").await;
    cb.wait_connected("B connects").await;

    cb.client
        .subscribe("lk/v1/CAB-B/down/#", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    eventually("B subscribed", || !cb.seen().suback_codes.is_empty()).await;
    assert!(matches!(
        cb.seen().suback_codes[0],
        SubscribeReasonCode::Success(_)
    ));

    ca.client
        .subscribe("lk/v1/CAB-B/down/#", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    ca.wait_failed("A is disconnected for subscribing to B's downlinks")
        .await;
    eventually("acl_subscribe counted", || {
        fx.rejections("acl_subscribe") == 1
    })
    .await;
    assert!(ca.seen().suback_codes.is_empty());

    // B still gets its commands.
    let obs = fx.observer(&[]).await;
    obs.publish("lk/v1/CAB-B/down/cmd", b"open".to_vec()).await;
    eventually("B receives its command", || {
        cb.received("lk/v1/CAB-B/down/cmd") == 1
    })
    .await;
    assert_eq!(ca.received("lk/v1/CAB-B/down/cmd"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integrators_read_what_their_acl_allows_and_never_publish() {
    let mut fx = EdgeFixture::start(|cfg| {
        let door = vec![Filter::new("lk/v1/+/up/door").expect("filter")];
        cfg.integrator_acls.insert("bi".into(), door.clone());
        cfg.integrator_acls.insert("crm".into(), door);
    })
    .await;
    let (a, erp, bi, crm) = (
        fx.cabinet("CAB-A"),
        fx.integrator("erp"),
        fx.integrator("bi"),
        fx.integrator("crm"),
    );
    let reader = fx.client("erp-reader", Some(&erp));
    reader.wait_connected("integrator connects").await;
    reader
        .client
        .subscribe("lk/v1/+/up/door", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    eventually("integrator subscribed", || {
        !reader.seen().suback_codes.is_empty()
    })
    .await;

    let ca = fx.client("CAB-A", Some(&a));
    ca.wait_connected("A connects").await;
    ca.client
        .publish(A_DOOR, QoS::AtLeastOnce, false, b"door".to_vec())
        .await
        .expect("publish");
    eventually("integrator receives the cabinet's event", || {
        reader.received(A_DOOR) == 1
    })
    .await;

    // Publishing, even to an uplink topic, closes an integrator's connection.
    let writer = fx.client("bi", Some(&bi));
    writer.wait_connected("bi connects").await;
    writer
        .client
        .publish(A_DOOR, QoS::AtLeastOnce, false, b"fake".to_vec())
        .await
        .expect("publish");
    writer
        .wait_failed("integrator publishing is disconnected")
        .await;
    eventually("acl_publish counted", || fx.rejections("acl_publish") == 1).await;

    // Subscribing outside the ACL (all uplinks, downlinks) is refused with SUBACK 0x80 and
    // the connection stays (issue 15: a refused filter used to close it, and stock clients
    // reconnected into the same refusal).
    let wide = fx.client("crm", Some(&crm));
    wide.wait_connected("crm connects").await;
    for (n, filter) in ["lk/v1/+/up/#", "lk/v1/CAB-A/down/cmd"]
        .into_iter()
        .enumerate()
    {
        wide.client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .expect("subscribe");
        eventually("SUBACK", || wide.seen().suback_codes.len() == n + 1).await;
        assert_eq!(wide.seen().suback_codes[n], SubscribeReasonCode::Failure);
        eventually("acl_subscribe counted", || {
            fx.rejections("acl_subscribe") == n as u64 + 1
        })
        .await;
    }
    assert!(
        wide.connected(),
        "a refused filter does not cost the connection"
    );
    assert_eq!(wide.received(A_DOOR), 0);

    // The faithful reader never saw the fake event and is still connected.
    ca.client
        .publish(A_DOOR, QoS::AtLeastOnce, false, b"door2".to_vec())
        .await
        .expect("publish");
    eventually("second event", || reader.received(A_DOOR) == 2).await;
    let payloads: Vec<Vec<u8>> = reader
        .seen()
        .publishes
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    assert_eq!(payloads, vec![b"door".to_vec(), b"door2".to_vec()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_knows_a_client_by_its_certificate_identity() {
    let mut fx = EdgeFixture::start(|_| {}).await;
    let a = fx.cabinet("CAB-A");
    let first = fx.client("first-id", Some(&a));
    first.wait_connected("first connection").await;
    eventually("A online", || fx.presence().len() == 1).await;

    // Another connection of the same cabinet with another client id takes over the first:
    // the broker saw the same client id (the identity) both times.
    let second = fx.client("second-id", Some(&a));
    second.wait_connected("second connection").await;
    first.wait_failed("first connection taken over").await;
    fx.wait_connected(1).await;

    second
        .client
        .subscribe("lk/v1/CAB-A/down/#", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    eventually("subscribed", || !second.seen().suback_codes.is_empty()).await;
    let obs = fx.observer(&[]).await;
    obs.publish("lk/v1/CAB-A/down/cmd", b"x".to_vec()).await;
    eventually("command delivered", || {
        second.received("lk/v1/CAB-A/down/cmd") == 1
    })
    .await;

    // Presence: online once; the overlap produced no offline; the last close does.
    let p = fx.presence();
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(p[0].online && p[0].cabinet.as_str() == "CAB-A");
    drop(second);
    eventually("A offline after its last connection", || {
        let p = fx.presence();
        p.len() == 2 && !p[1].online
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_will_outside_the_acl_is_refused() {
    let mut fx = EdgeFixture::start(|_| {}).await;
    let a = fx.cabinet("CAB-A");
    let mut o = mqtt_options("CAB-A", fx.addr, fx.tls(Some(&a)));
    o.set_last_will(LastWill::new(B_DOOR, "gone", QoS::AtLeastOnce, false));
    let c = Client::start(o);
    c.wait_failed("forged will refused").await;
    assert_eq!(c.seen().connacks, 0);
    // CONNACK 0x05 (not authorized) before the close (issue 15), not a bare close.
    let err = c.seen().error.unwrap_or_default();
    assert!(err.contains("NotAuthorized"), "{err}");
    eventually("acl_will counted", || fx.rejections("acl_will") == 1).await;

    let mut o = mqtt_options("CAB-A", fx.addr, fx.tls(Some(&a)));
    o.set_last_will(LastWill::new(
        "lk/v1/CAB-A/up/network",
        "gone",
        QoS::AtLeastOnce,
        false,
    ));
    let ok = Client::start(o);
    ok.wait_connected("own will accepted").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_after_connect_closes_only_that_connection() {
    let mut fx = EdgeFixture::start(|_| {}).await;
    let obs = uplink_observer(&mut fx).await;
    let (a, b) = (fx.cabinet("CAB-A"), fx.cabinet("CAB-B"));
    let cb = fx.client("CAB-B", Some(&b));
    cb.wait_connected("B connects").await;

    let cases: [(&[u8], &str); 3] = [
        (&[0xf0, 0x00], "malformed"),
        (&[0x30, 0xff, 0xff, 0xff, 0xff, 0x7f], "malformed"),
        (&[0x30, 0xff, 0xff, 0x7f], "oversized"),
    ];
    for (garbage, reason) in cases {
        let before = fx.rejections(reason);
        let mut s = raw_tls(fx.addr, fx.tls(Some(&a))).await.expect("TLS");
        send(&mut s, &connect_bytes("x", false)).await;
        let mut connack = [0u8; 4];
        tokio::io::AsyncReadExt::read_exact(&mut s, &mut connack)
            .await
            .expect("CONNACK");
        assert_eq!(connack, [0x20, 0x02, 0x00, 0x00]);
        send(&mut s, garbage).await;
        read_until_closed(&mut s).await;
        eventually("counted", || fx.rejections(reason) == before + 1).await;
    }

    assert!(cb.connected(), "B is unaffected");
    cb.client
        .publish(B_DOOR, QoS::AtLeastOnce, false, b"b".to_vec())
        .await
        .expect("publish");
    eventually("B still relayed", || obs.received(B_DOOR) == 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_3_1_1_or_5_connect_may_come_first() {
    let mut fx = EdgeFixture::start(|_| {}).await;
    let a = fx.cabinet("CAB-A");

    // MQTT 3.1 ("MQIsdp", level 3): CONNACK "unacceptable protocol version", then the close
    // (MQTT 5 is served since issue 15: see edge_mqtt5.rs).
    let mut s = raw_tls(fx.addr, fx.tls(Some(&a))).await.expect("TLS");
    let mqtt31 = [
        0x10, 15, 0x00, 0x06, b'M', b'Q', b'I', b's', b'd', b'p', 0x03, 0x02, 0x00, 0x3c, 0x00,
        0x01, b'x',
    ];
    send(&mut s, &mqtt31).await;
    assert_eq!(read_until_closed(&mut s).await, [0x20, 0x02, 0x00, 0x01]);
    eventually("protocol_version counted", || {
        fx.rejections("protocol_version") == 1
    })
    .await;

    let mut s = raw_tls(fx.addr, fx.tls(Some(&a))).await.expect("TLS");
    send(&mut s, &[0xc0, 0x00]).await; // PINGREQ
    assert!(read_until_closed(&mut s).await.is_empty());
    eventually("not_connect_first counted", || {
        fx.rejections("not_connect_first") == 1
    })
    .await;

    // A second CONNECT on a relayed connection.
    let mut s = raw_tls(fx.addr, fx.tls(Some(&a))).await.expect("TLS");
    send(&mut s, &connect_bytes("x", false)).await;
    send(&mut s, &connect_bytes("y", false)).await;
    read_until_closed(&mut s).await;
    eventually("unexpected_packet counted", || {
        fx.rejections("unexpected_packet") == 1
    })
    .await;
    fx.wait_connected(0).await;
}
