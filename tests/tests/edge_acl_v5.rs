//! The ACL, authentication and abuse probes of `edge_acl.rs`, `edge_auth.rs` and
//! `edge_abuse.rs`, again in MQTT 5 with rumqttc's v5 client (issue 15): the rules are exactly
//! as strict; only the way a refusal is told changes (DISCONNECT / CONNACK / PUBACK / SUBACK
//! reason codes).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use locker_broker_config::pki::Pki;
use locker_schemas::{CabinetId, Filter};
use locker_tests::edge::*;
use locker_tests::eventually;
use rumqttc::v5::mqttbytes::v5::{
    ConnectReturnCode, DisconnectReasonCode as Dr, LastWill, Packet, PubAckReason,
    SubscribeReasonCode,
};
use rumqttc::v5::mqttbytes::QoS;

const A_DOOR: &str = "lk/v1/CAB-A/up/door";
const B_DOOR: &str = "lk/v1/CAB-B/up/door";

async fn pub1(c: &ClientV5, topic: &str, payload: &str) {
    c.client
        .publish(topic, QoS::AtLeastOnce, false, payload.as_bytes().to_vec())
        .await
        .expect("publish");
}

async fn sub1(c: &ClientV5, filter: &str) {
    c.client
        .subscribe(filter, QoS::AtLeastOnce)
        .await
        .expect("subscribe");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_a_cabinet_cannot_publish_into_another_cabinets_topics() {
    let mut fx = EdgeFixture::start(|_| {}).await;
    let obs = fx.observer(&["lk/v1/+/up/#"]).await;
    let (a, b) = (fx.cabinet("CAB-A"), fx.cabinet("CAB-B"));
    let ca = fx.client_v5("CAB-A", Some(&a));
    let cb = fx.client_v5("CAB-B", Some(&b));
    ca.wait_connected("A").await;
    cb.wait_connected("B").await;

    pub1(&ca, A_DOOR, "a").await;
    eventually("A's own event", || obs.received(A_DOOR) == 1).await;
    pub1(&ca, B_DOOR, "forged").await;
    assert_eq!(
        ca.wait_disconnected("A disconnected").await,
        Dr::NotAuthorized
    );
    eventually("acl_publish", || fx.rejections("acl_publish") == 1).await;

    assert!(cb.connected(), "B is unaffected");
    pub1(&cb, B_DOOR, "b").await;
    eventually("B's event", || obs.received(B_DOOR) == 1).await;
    let b_events: Vec<_> = obs
        .seen()
        .into_iter()
        .filter(|(t, _)| t == B_DOOR)
        .collect();
    assert_eq!(b_events, vec![(B_DOOR.to_owned(), b"b".to_vec())]);
    fx.wait_connected(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_a_cabinet_cannot_subscribe_to_another_cabinets_downlinks() {
    let mut fx = EdgeFixture::start(|_| {}).await;
    let (a, b) = (fx.cabinet("CAB-A"), fx.cabinet("CAB-B"));
    let ca = fx.client_v5("CAB-A", Some(&a));
    let cb = fx.client_v5("CAB-B", Some(&b));
    ca.wait_connected("A").await;
    cb.wait_connected("B").await;

    sub1(&cb, "lk/v1/CAB-B/down/#").await;
    eventually("B subscribed", || !cb.seen().suback_codes.is_empty()).await;
    assert_eq!(
        cb.seen().suback_codes,
        vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    sub1(&ca, "lk/v1/CAB-B/down/#").await;
    assert_eq!(
        ca.wait_disconnected("A disconnected").await,
        Dr::NotAuthorized
    );
    eventually("acl_subscribe", || fx.rejections("acl_subscribe") == 1).await;
    assert!(ca.seen().suback_codes.is_empty());

    let obs = fx.observer(&[]).await;
    obs.publish("lk/v1/CAB-B/down/cmd", b"open".to_vec()).await;
    eventually("B receives its command", || {
        cb.received("lk/v1/CAB-B/down/cmd") == 1
    })
    .await;
    assert_eq!(ca.received("lk/v1/CAB-B/down/cmd"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_integrators_read_what_their_acl_allows_and_never_publish() {
    let mut fx = EdgeFixture::start(|cfg| {
        let door = vec![Filter::new("lk/v1/+/up/door").expect("filter")];
        cfg.integrator_acls.insert("bi".into(), door);
    })
    .await;
    let obs = fx.observer(&["lk/v1/#"]).await;
    let (a, erp, bi) = (
        fx.cabinet("CAB-A"),
        fx.integrator("erp"),
        fx.integrator("bi"),
    );
    let reader = fx.client_v5("erp-reader", Some(&erp));
    reader.wait_connected("erp").await;
    sub1(&reader, "lk/v1/+/up/door").await;
    eventually("subscribed", || !reader.seen().suback_codes.is_empty()).await;

    let ca = fx.client_v5("CAB-A", Some(&a));
    ca.wait_connected("A").await;
    pub1(&ca, A_DOOR, "door").await;
    eventually("erp receives it", || reader.received(A_DOOR) == 1).await;

    // Publishing: PUBACK 0x87, the connection stays, nothing reaches the broker.
    let writer = fx.client_v5("bi", Some(&bi));
    writer.wait_connected("bi").await;
    pub1(&writer, A_DOOR, "fake").await;
    pub1(&writer, "lk/v1/CAB-A/down/cmd", "open").await;
    eventually("two PUBACKs", || writer.seen().pubacks.len() == 2).await;
    assert_eq!(
        writer.seen().pubacks,
        vec![PubAckReason::NotAuthorized, PubAckReason::NotAuthorized]
    );
    eventually("acl_publish", || fx.rejections("acl_publish") == 2).await;
    assert!(writer.connected());

    // Subscribing outside the ACL: SUBACK 0x87, the connection stays.
    for (n, filter) in ["lk/v1/+/up/#", "lk/v1/CAB-A/down/cmd"]
        .into_iter()
        .enumerate()
    {
        sub1(&writer, filter).await;
        eventually("SUBACK", || writer.seen().suback_codes.len() == n + 1).await;
        assert_eq!(
            writer.seen().suback_codes[n],
            SubscribeReasonCode::NotAuthorized
        );
        eventually("acl_subscribe", || {
            fx.rejections("acl_subscribe") == n as u64 + 1
        })
        .await;
    }
    assert!(writer.connected());

    pub1(&ca, A_DOOR, "door2").await;
    eventually("second event", || reader.received(A_DOOR) == 2).await;
    assert_eq!(
        reader.payloads(A_DOOR),
        vec![b"door".to_vec(), b"door2".to_vec()]
    );
    assert_eq!(
        writer.received(A_DOOR),
        0,
        "its refused filters deliver nothing"
    );
    let fakes = obs
        .seen()
        .into_iter()
        .filter(|(_, p)| p == b"fake" || p == b"open")
        .count();
    assert_eq!(fakes, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_the_broker_knows_a_client_by_its_certificate_identity() {
    let mut fx = EdgeFixture::start(|_| {}).await;
    let a = fx.cabinet("CAB-A");
    let first = fx.client_v5("first-id", Some(&a));
    first.wait_connected("first").await;
    let second = fx.client_v5("second-id", Some(&a));
    second.wait_connected("second").await;
    first.wait_failed("first taken over").await;
    fx.wait_connected(1).await;

    sub1(&second, "lk/v1/CAB-A/down/#").await;
    eventually("subscribed", || !second.seen().suback_codes.is_empty()).await;
    let obs = fx.observer(&[]).await;
    obs.publish("lk/v1/CAB-A/down/cmd", b"x".to_vec()).await;
    eventually("command delivered", || {
        second.received("lk/v1/CAB-A/down/cmd") == 1
    })
    .await;
    let p = fx.presence();
    assert_eq!(p.len(), 1, "{p:?}");
    drop(second);
    eventually("A offline", || {
        let p = fx.presence();
        p.len() == 2 && !p[1].online
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_a_will_outside_the_acl_is_refused() {
    let mut fx = EdgeFixture::start(|_| {}).await;
    let a = fx.cabinet("CAB-A");
    let mut o = mqtt5_options("CAB-A", fx.addr, fx.tls(Some(&a)));
    o.set_last_will(LastWill::new(B_DOOR, "gone", QoS::AtLeastOnce, false, None));
    let c = ClientV5::start(o);
    c.wait_failed("forged will refused").await;
    assert!(c.seen().connacks.is_empty());
    assert_eq!(c.seen().refused, Some(ConnectReturnCode::NotAuthorized));
    eventually("acl_will", || fx.rejections("acl_will") == 1).await;

    let mut o = mqtt5_options("CAB-A", fx.addr, fx.tls(Some(&a)));
    o.set_last_will(LastWill::new(
        "lk/v1/CAB-A/up/network",
        "gone",
        QoS::AtLeastOnce,
        false,
        None,
    ));
    ClientV5::start(o).wait_connected("own will accepted").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_garbage_after_connect_closes_only_that_connection() {
    let mut fx = EdgeFixture::start(|_| {}).await;
    let obs = fx.observer(&["lk/v1/+/up/#"]).await;
    let (a, b) = (fx.cabinet("CAB-A"), fx.cabinet("CAB-B"));
    let cb = fx.client_v5("CAB-B", Some(&b));
    cb.wait_connected("B").await;

    let cases: [(&[u8], &str); 2] = [
        (&[0x30, 0xff, 0xff, 0xff, 0xff, 0x7f], "malformed"),
        (&[0x30, 0xff, 0xff, 0x7f], "oversized"),
    ];
    for (garbage, reason) in cases {
        let before = fx.rejections(reason);
        let (mut raw, _) = fx.raw_v5_connected(&a, None).await;
        raw.send_bytes(garbage).await;
        let rest = raw.until_closed().await;
        if reason == "malformed" {
            assert!(
                matches!(rest.as_slice(), [Packet::Disconnect(d)] if d.reason_code == Dr::MalformedPacket),
                "{rest:?}"
            );
        }
        eventually("counted", || fx.rejections(reason) == before + 1).await;
    }
    assert!(cb.connected(), "B is unaffected");
    pub1(&cb, B_DOOR, "b").await;
    eventually("B still relayed", || obs.received(B_DOOR) == 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_clients_without_a_valid_certificate_never_reach_the_broker() {
    let mut fx = EdgeFixture::start(|_| {}).await;
    let none = fx.client_v5("nobody", None);
    none.wait_failed("no certificate").await;

    let other_dir = tempfile::tempdir().expect("temp dir");
    let mut other = Pki::init(other_dir.path(), &["localhost".into()]).expect("other PKI");
    let foreign = other
        .issue_cabinet(&CabinetId::new("CAB-1").expect("id"))
        .expect("foreign cert");
    let f = fx.client_v5("CAB-1", Some(&foreign));
    f.wait_failed("foreign certificate").await;

    let revoked = fx.cabinet("CAB-R");
    fx.pki.revoke("CAB-R");
    fx.edge.reload_revocations().await.expect("reload");
    let r = fx.client_v5("CAB-R", Some(&revoked));
    r.wait_failed("revoked").await;
    eventually("counted", || {
        fx.rejections("no_cert") >= 1
            && fx.rejections("bad_cert") >= 1
            && fx.rejections("revoked") >= 1
    })
    .await;
    for c in [&none, &f, &r] {
        assert!(c.seen().connacks.is_empty(), "never a CONNACK");
    }
    assert!(fx.edge.connected().await.is_empty());
    assert!(fx.presence().is_empty());

    // Revoking a connected v5 cabinet disconnects it.
    let ok = fx.cabinet("CAB-2");
    let good = fx.client_v5("CAB-2", Some(&ok));
    good.wait_connected("valid cabinet").await;
    fx.pki.revoke("CAB-2");
    good.wait_failed("disconnected after revocation").await;
    fx.wait_connected(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_a_cabinet_cannot_plant_retained_state() {
    let mut fx = EdgeFixture::start(|cfg| {
        cfg.integrator_acls.insert(
            "erp".into(),
            vec![Filter::new("lk/v1/+/up/#").expect("filter")],
        );
    })
    .await;
    let obs = fx.observer(&["lk/v1/+/up/#"]).await;
    let (a, erp) = (fx.cabinet("CAB-A"), fx.integrator("erp"));
    let ca = fx.client_v5("CAB-A", Some(&a));
    ca.wait_connected("A").await;
    ca.client
        .publish(A_DOOR, QoS::AtLeastOnce, true, b"planted".to_vec())
        .await
        .expect("publish");
    eventually("the retained publish flows", || obs.received(A_DOOR) == 1).await;
    eventually("and is acknowledged", || ca.seen().pubacks.len() == 1).await;

    let ci = fx.client_v5("erp", Some(&erp));
    ci.wait_connected("erp").await;
    sub1(&ci, "lk/v1/+/up/#").await;
    eventually("subscribed", || !ci.seen().suback_codes.is_empty()).await;
    pub1(&ca, A_DOOR, "live").await;
    eventually("live event", || ci.received(A_DOOR) == 1).await;
    assert_eq!(
        ci.payloads(A_DOOR),
        vec![b"live".to_vec()],
        "nothing retained replayed"
    );
    assert!(ci.seen().publishes.iter().all(|p| !p.retain));
    assert_eq!(
        fx.metric(
            "locker_edge_retain_cleared_total",
            Some(("what", "publish"))
        ),
        1
    );
    assert!(ca.connected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_a_cabinet_subscribes_only_to_exactly_its_downlink_filters() {
    let mut fx = EdgeFixture::start(|_| {}).await;
    let a = fx.cabinet("CAB-A");
    let ok = fx.client_v5("CAB-A", Some(&a));
    ok.wait_connected("A").await;
    for f in [
        "lk/v1/CAB-A/down/#",
        "lk/v1/CAB-A/down/cmd",
        "lk/v1/CAB-A/down/ack",
        "lk/v1/CAB-A/down/creds",
    ] {
        sub1(&ok, f).await;
    }
    eventually("four SUBACKs", || ok.seen().suback_codes.len() == 4).await;
    assert!(ok
        .seen()
        .suback_codes
        .iter()
        .all(|c| matches!(c, SubscribeReasonCode::Success(_))));
    drop(ok);
    fx.wait_connected(0).await;

    for (n, f) in [
        "lk/v1/CAB-A/down/+",
        "lk/v1/CAB-A/down/x1",
        "lk/v1/CAB-A/down/cmd/#",
        "$share/g/lk/v1/CAB-A/down/#",
    ]
    .into_iter()
    .enumerate()
    {
        let c = fx.client_v5("CAB-A", Some(&a));
        c.wait_connected("A").await;
        sub1(&c, f).await;
        assert_eq!(c.wait_disconnected(f).await, Dr::NotAuthorized, "{f}");
        eventually("counted", || fx.rejections("acl_subscribe") == n as u64 + 1).await;
        fx.wait_connected(0).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_an_integrator_holds_at_most_its_filter_cap() {
    let mut fx = EdgeFixture::start(|cfg| {
        cfg.integrator_acls.insert(
            "erp".into(),
            vec![Filter::new("lk/v1/+/up/#").expect("filter")],
        );
        cfg.max_filters_per_client = 3;
    })
    .await;
    let erp = fx.integrator("erp");
    let ci = fx.client_v5("erp", Some(&erp));
    ci.wait_connected("erp").await;
    for f in [
        "lk/v1/A/up/#",
        "lk/v1/B/up/#",
        "lk/v1/C/up/#",
        "lk/v1/A/up/#",
    ] {
        sub1(&ci, f).await;
    }
    eventually("four SUBACKs", || ci.seen().suback_codes.len() == 4).await;
    ci.client
        .unsubscribe("lk/v1/C/up/#")
        .await
        .expect("unsubscribe");
    sub1(&ci, "lk/v1/D/up/#").await;
    eventually("fifth SUBACK", || ci.seen().suback_codes.len() == 5).await;
    assert_eq!(
        ci.seen().suback_codes[4],
        SubscribeReasonCode::QuotaExceeded
    );
    assert!(ci.connected(), "the connection stays");
    eventually("counted", || fx.rejections("too_many_filters") == 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_only_a_connect_may_come_first_and_only_once() {
    let mut fx = EdgeFixture::start(|_| {}).await;
    let a = fx.cabinet("CAB-A");

    let mut s = raw_tls(fx.addr, fx.tls(Some(&a))).await.expect("TLS");
    send(&mut s, &[0xc0, 0x00]).await; // PINGREQ
    assert!(read_until_closed(&mut s).await.is_empty());
    eventually("not_connect_first", || {
        fx.rejections("not_connect_first") == 1
    })
    .await;

    // A second CONNECT on a v5 connection: closed (a DISCONNECT may say why first).
    let (mut raw, _) = fx.raw_v5_connected(&a, None).await;
    raw.send(Packet::Connect(connect_v5("y", None), None, None))
        .await;
    let rest = raw.until_closed().await;
    assert!(
        rest.iter().all(|p| matches!(p, Packet::Disconnect(_))),
        "{rest:?}"
    );
    eventually("unexpected_packet", || {
        fx.rejections("unexpected_packet") == 1
    })
    .await;
    fx.wait_connected(0).await;
}

/// A v5 cabinet client with a will on its own network topic.
fn v5_with_will(fx: &EdgeFixture, id: &str, tls: std::sync::Arc<rustls::ClientConfig>) -> ClientV5 {
    let mut o = mqtt5_options(id, fx.addr, tls);
    let topic = format!("lk/v1/{id}/up/network");
    o.set_last_will(LastWill::new(topic, "gone", QoS::AtMostOnce, false, None));
    ClientV5::start(o)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_a_client_cut_off_by_revocation_publishes_no_will_and_cannot_resume() {
    let mut fx = EdgeFixture::start(|_| {}).await;
    let obs = fx.observer(&["lk/v1/+/up/#"]).await;
    let (a, b) = (fx.cabinet("CAB-A"), fx.cabinet("CAB-B"));
    let tls_a = fx.tls(Some(&a));
    let ca = v5_with_will(&fx, "CAB-A", tls_a.clone());
    let cb = v5_with_will(&fx, "CAB-B", fx.tls(Some(&b)));
    ca.wait_connected("A").await;
    cb.wait_connected("B").await;

    fx.pki.revoke("CAB-A");
    ca.wait_failed("A cut off by the CRL poller").await;
    fx.wait_connected(1).await;
    fx.edge
        .disconnect(&locker_gateway::edge::Identity::Cabinet(
            CabinetId::new("CAB-B").expect("id"),
        ))
        .await;
    eventually("B's will", || obs.received("lk/v1/CAB-B/up/network") == 1).await;
    assert_eq!(obs.received("lk/v1/CAB-A/up/network"), 0, "no will from A");

    // The TLS config holding A's resumption ticket does not get it back in.
    let before = fx.rejections("revoked");
    let again = ClientV5::start(mqtt5_options("CAB-A", fx.addr, tls_a));
    again.wait_failed("revoked A cannot come back").await;
    assert!(again.seen().connacks.is_empty());
    eventually("counted", || fx.rejections("revoked") > before).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_a_connection_ends_with_its_certificate() {
    let mut fx = EdgeFixture::start(|_| {}).await;
    let obs = fx.observer(&["lk/v1/+/up/#"]).await;
    let a = fx.cabinet_valid_for("CAB-A", 3);
    let b = fx.cabinet("CAB-B");
    let ca = v5_with_will(&fx, "CAB-A", fx.tls(Some(&a)));
    let cb = v5_with_will(&fx, "CAB-B", fx.tls(Some(&b)));
    ca.wait_connected("A, while its certificate is valid").await;
    cb.wait_connected("B").await;
    ca.wait_failed("A closed when its certificate expires")
        .await;
    eventually("counted", || fx.rejections("cert_expired") == 1).await;
    fx.wait_connected(1).await;

    // B, closed on demand, leaves its will: once it is there, A's would be too.
    fx.edge
        .disconnect(&locker_gateway::edge::Identity::Cabinet(
            CabinetId::new("CAB-B").expect("id"),
        ))
        .await;
    eventually("B's will", || obs.received("lk/v1/CAB-B/up/network") == 1).await;
    assert_eq!(obs.received("lk/v1/CAB-A/up/network"), 0, "no will from A");
}
