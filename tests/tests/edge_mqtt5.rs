//! MQTT 5 at the edge (issue 15), byte for byte with a raw v5 client ([`RawV5`], rumqttc's v5
//! codec over the fixture's mutual TLS): protocol versions and their refusals, the CONNACK's
//! properties, SUBACK reason codes per filter, an integrator's refused publish, cabinets
//! stepping outside their topics, topic aliases both ways, the client's receive maximum and
//! maximum packet size. Sessions, message expiry and user properties: `edge_mqtt5_session.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use locker_tests::edge::*;
use locker_tests::eventually;
use rumqttc::v5::mqttbytes::v5::{
    ConnectProperties, ConnectReturnCode, DisconnectReasonCode, Filter as SubFilter, LastWill,
    Packet, PingReq, PubAckReason, PublishProperties, Subscribe, SubscribeReasonCode,
};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::QoS as QoS4;

const A_DOOR: &str = "lk/v1/CAB-A/up/door";
const B_DOOR: &str = "lk/v1/CAB-B/up/door";

/// A hand-made CONNECT with protocol name `name` and level `level` (client id "x", keep alive
/// 60, clean session; an empty property list for level 5 and above).
fn connect_with_level(name: &str, level: u8) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend((name.len() as u16).to_be_bytes());
    body.extend(name.as_bytes());
    body.extend([level, 0x02, 0x00, 0x3c]);
    if level >= 5 {
        body.push(0x00);
    }
    body.extend([0x00, 0x01, b'x']);
    let mut out = vec![0x10, body.len() as u8];
    out.extend(body);
    out
}

fn props() -> ConnectProperties {
    ConnectProperties::new()
}

/// Reads until the close and returns the DISCONNECT reason the edge sent before it.
async fn disconnect_reason(raw: &mut RawV5) -> DisconnectReasonCode {
    let rest = raw.until_closed().await;
    match rest.iter().find_map(|p| match p {
        Packet::Disconnect(d) => Some(d.reason_code),
        _ => None,
    }) {
        Some(r) => r,
        None => panic!("closed without DISCONNECT: {rest:?}"),
    }
}

/// A cabinet (3.1.1 rumqttc) publishing QoS 1 `payload` on its door topic.
async fn door_event(c: &Client, topic: &str, payload: &str) {
    c.client
        .publish(topic, QoS4::AtLeastOnce, false, payload.as_bytes().to_vec())
        .await
        .expect("publish");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_protocol_versions_get_the_connack_the_spec_defines() {
    let mut fx = EdgeFixture::start(|_| {}).await;
    let a = fx.cabinet("CAB-A");
    // MQTT 3.1: "unacceptable protocol version" in the 3.1.1 CONNACK shape, byte for byte.
    let mut n = 0;
    for connect in [
        connect_with_level("MQIsdp", 3),
        connect_with_level("MQTT", 3),
    ] {
        let mut s = raw_tls(fx.addr, fx.tls(Some(&a))).await.expect("TLS");
        send(&mut s, &connect).await;
        assert_eq!(read_until_closed(&mut s).await, [0x20, 0x02, 0x00, 0x01]);
        n += 1;
        eventually("protocol_version counted", || {
            fx.rejections("protocol_version") == n
        })
        .await;
    }
    // Above 5: a v5 CONNACK with 0x84 (unsupported protocol version), then the close. (The
    // edge may add a reason string: `20 03 00 84 00` is the bare form.)
    for level in [6, 9] {
        let mut s = raw_tls(fx.addr, fx.tls(Some(&a))).await.expect("TLS");
        send(&mut s, &connect_with_level("MQTT", level)).await;
        let bytes = read_until_closed(&mut s).await;
        let mut buf = bytes::BytesMut::from(&bytes[..]);
        match Packet::read(&mut buf, None) {
            Ok(Packet::ConnAck(c)) => {
                assert_eq!(c.code, ConnectReturnCode::UnsupportedProtocolVersion);
                assert!(!c.session_present);
            }
            other => panic!("level {level}: {other:?} from {bytes:?}"),
        }
        assert!(buf.is_empty(), "nothing after the CONNACK");
        assert_eq!(&bytes[..1], [0x20]);
        n += 1;
        eventually("protocol_version counted", || {
            fx.rejections("protocol_version") == n
        })
        .await;
    }
    fx.wait_connected(0).await;

    // 3.1.1 and 5 are both served.
    let mut s = raw_tls(fx.addr, fx.tls(Some(&a))).await.expect("TLS");
    send(&mut s, &connect_bytes("x", false)).await;
    assert_eq!(read_exact(&mut s, 4).await, [0x20, 0x02, 0x00, 0x00]);
    drop(s);
    let (_raw, first) = fx.raw_v5(&a, connect_v5("x", None), None).await;
    assert!(
        matches!(&first, Some(Packet::ConnAck(c)) if c.code == ConnectReturnCode::Success),
        "{first:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v5_connack_announces_the_edges_limits_and_assigns_the_identity() {
    let mut fx = EdgeFixture::start_with(
        |cfg| cfg.max_packet_bytes = 20_000,
        |b| b.max_payload_size = 1 << 20,
    )
    .await;
    let (a, erp) = (fx.cabinet("CAB-A"), fx.integrator("erp"));
    for (cert, name) in [(&a, "CAB-A"), (&erp, "erp")] {
        let (_raw, ack) = fx.raw_v5_connected(cert, None).await;
        let p = ack.properties.expect("CONNACK properties");
        assert_eq!(p.max_qos, Some(1), "{name}");
        assert_eq!(p.retain_available, Some(0), "{name}");
        assert_eq!(p.max_packet_size, Some(20_000), "{name}");
        assert_eq!(
            p.topic_alias_max,
            Some(10),
            "{name}: edge.topic_alias_max default"
        );
        assert_eq!(p.receive_max, Some(100), "{name}: edge.receive_max default");
        // Absent means "available" for these two: either is right, 0 is not.
        assert_eq!(p.wildcard_subscription_available.unwrap_or(1), 1, "{name}");
        assert_eq!(p.shared_subscription_available.unwrap_or(1), 1, "{name}");
        assert_eq!(p.subscription_identifiers_available, Some(0), "{name}");
        // The client sent "raw": an integrator's session has that id (none assigned); a
        // cabinet's id is always its identity, which the edge may say.
        if name == "erp" {
            assert_eq!(p.assigned_client_identifier, None, "{name}");
        } else {
            assert!(
                matches!(
                    p.assigned_client_identifier.as_deref(),
                    None | Some("CAB-A")
                ),
                "{name}: {:?}",
                p.assigned_client_identifier
            );
        }
        drop(_raw);
        fx.wait_connected(0).await;

        // An empty client id gets one assigned (MQTT 5 requires it): a cabinet its identity,
        // an integrator one unique to the session (an identity may hold several).
        let (raw, first) = fx.raw_v5(cert, connect_v5("", None), None).await;
        let Some(Packet::ConnAck(ack)) = first else {
            panic!("{name}: no CONNACK: {first:?}")
        };
        assert_eq!(ack.code, ConnectReturnCode::Success);
        let assigned = ack
            .properties
            .and_then(|p| p.assigned_client_identifier)
            .unwrap_or_else(|| panic!("{name}: no assigned client identifier for an empty one"));
        if name == "erp" {
            assert!(!assigned.is_empty());
        } else {
            assert_eq!(assigned, name);
        }
        drop(raw);
        fx.wait_connected(0).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_integrator_subscribe_gets_one_reason_code_per_filter_and_stays() {
    let mut fx = EdgeFixture::start(|cfg| cfg.max_filters_per_client = 3).await;
    let (a, erp) = (fx.cabinet("CAB-A"), fx.integrator("erp"));
    let (mut raw, _) = fx.raw_v5_connected(&erp, None).await;

    // erp may read lk/v1/+/up/door: allowed, refused by the ACL, not a filter, allowed at
    // QoS 2 (granted 1), refused by the ACL again.
    let filters = [
        ("lk/v1/+/up/door", QoS::AtLeastOnce),
        ("lk/v1/+/up/#", QoS::AtLeastOnce),
        ("lk/v1/#/up", QoS::AtLeastOnce),
        ("lk/v1/CAB-Z/up/door", QoS::ExactlyOnce),
        ("lk/v1/CAB-A/down/cmd", QoS::AtMostOnce),
    ];
    let mut sub = Subscribe::new_many(filters.iter().map(|(f, q)| SubFilter::new(*f, *q)), None);
    sub.pkid = 3;
    raw.send(Packet::Subscribe(sub)).await;
    let Packet::SubAck(ack) = raw.expect_next("SUBACK").await else {
        panic!("expected SUBACK")
    };
    assert_eq!(ack.pkid, 3);
    assert_eq!(
        ack.return_codes,
        vec![
            SubscribeReasonCode::Success(QoS::AtLeastOnce),
            SubscribeReasonCode::NotAuthorized,
            SubscribeReasonCode::TopicFilterInvalid,
            SubscribeReasonCode::Success(QoS::AtLeastOnce),
            SubscribeReasonCode::NotAuthorized,
        ]
    );
    eventually("each refused filter counted", || {
        fx.rejections("acl_subscribe") == 2
    })
    .await;

    // The allowed filter of the same SUBSCRIBE delivers, at QoS 1.
    let ca = fx.client("CAB-A", Some(&a));
    ca.wait_connected("A").await;
    door_event(&ca, A_DOOR, "d1").await;
    let got = raw.publishes(1).await;
    assert_eq!(got[0].topic, A_DOOR.as_bytes());
    assert_eq!(got[0].qos, QoS::AtLeastOnce);

    // Beyond max_filters_per_client (3) distinct filters: quota exceeded, the rest granted.
    let mut sub = Subscribe::new_many(
        [
            "lk/v1/CAB-Y/up/door",
            "lk/v1/CAB-X/up/door",
            "lk/v1/+/up/door",
        ]
        .into_iter()
        .map(|f| SubFilter::new(f, QoS::AtLeastOnce)),
        None,
    );
    sub.pkid = 4;
    raw.send(Packet::Subscribe(sub)).await;
    let Packet::SubAck(ack) = raw.expect_next("SUBACK").await else {
        panic!("expected SUBACK")
    };
    assert_eq!(
        ack.return_codes,
        vec![
            SubscribeReasonCode::Success(QoS::AtLeastOnce),
            SubscribeReasonCode::QuotaExceeded,
            SubscribeReasonCode::Success(QoS::AtLeastOnce),
        ],
        "the third distinct filter fits, the fourth does not, a held one again does"
    );
    eventually("too_many_filters counted", || {
        fx.rejections("too_many_filters") == 1
    })
    .await;

    // Still connected and served.
    door_event(&ca, A_DOOR, "d2").await;
    let got = raw.publishes(1).await;
    assert_eq!(got[0].payload.as_ref(), b"d2");
    fx.wait_connected(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_integrator_publishing_in_v5_gets_not_authorized_and_stays() {
    let mut fx = EdgeFixture::start(|_| {}).await;
    let obs = fx.observer(&["lk/v1/#"]).await;
    let erp = fx.integrator("erp");
    let (mut raw, _) = fx.raw_v5_connected(&erp, None).await;

    raw.send(publish_v5(A_DOOR, QoS::AtLeastOnce, 7, "fake", None))
        .await;
    match raw.expect_next("PUBACK").await {
        Packet::PubAck(a) => {
            assert_eq!(a.pkid, 7);
            assert_eq!(a.reason, PubAckReason::NotAuthorized);
        }
        other => panic!("expected PUBACK 0x87, got {other:?}"),
    }
    raw.send(publish_v5(
        "lk/v1/CAB-A/down/cmd",
        QoS::AtMostOnce,
        0,
        "open",
        None,
    ))
    .await;
    eventually("both counted", || fx.rejections("acl_publish") == 2).await;

    // The connection stays: a SUBSCRIBE is answered.
    let (codes, _) = raw.subscribe(9, &["lk/v1/+/up/door"]).await;
    assert_eq!(codes, vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]);
    fx.wait_connected(1).await;
    assert!(obs.seen().is_empty(), "nothing reached the broker");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v5_cabinet_outside_its_topics_gets_disconnect_not_authorized() {
    let mut fx = EdgeFixture::start(|_| {}).await;
    let obs = fx.observer(&["lk/v1/#"]).await;
    let a = fx.cabinet("CAB-A");

    // Publishing as B.
    let (mut raw, _) = fx.raw_v5_connected(&a, None).await;
    raw.send(publish_v5(B_DOOR, QoS::AtLeastOnce, 1, "forged", None))
        .await;
    assert_eq!(
        disconnect_reason(&mut raw).await,
        DisconnectReasonCode::NotAuthorized
    );
    eventually("acl_publish", || fx.rejections("acl_publish") == 1).await;

    // Subscribing to B's downlinks, or to a shared subscription (cabinets get none).
    for (n, f) in ["lk/v1/CAB-B/down/#", "$share/g/lk/v1/CAB-A/down/#"]
        .into_iter()
        .enumerate()
    {
        let (mut raw, _) = fx.raw_v5_connected(&a, None).await;
        raw.send(Packet::Subscribe(Subscribe::new(
            SubFilter::new(f, QoS::AtLeastOnce),
            None,
        )))
        .await;
        assert_eq!(
            disconnect_reason(&mut raw).await,
            DisconnectReasonCode::NotAuthorized,
            "{f}"
        );
        eventually("acl_subscribe", || {
            fx.rejections("acl_subscribe") == n as u64 + 1
        })
        .await;
    }

    // A will outside: CONNACK 0x87, then the close.
    let will = LastWill::new(B_DOOR, "gone", QoS::AtLeastOnce, false, None);
    let (mut raw, first) = fx.raw_v5(&a, connect_v5("x", None), Some(will)).await;
    match first {
        Some(Packet::ConnAck(c)) => assert_eq!(c.code, ConnectReturnCode::NotAuthorized),
        other => panic!("expected CONNACK 0x87, got {other:?}"),
    }
    assert!(raw.until_closed().await.is_empty());
    eventually("acl_will", || fx.rejections("acl_will") == 1).await;

    // Malformed: 0x81; QoS 2: 0x9B (QoS not supported).
    let (mut raw, _) = fx.raw_v5_connected(&a, None).await;
    raw.send_bytes(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x7f]).await;
    assert_eq!(
        disconnect_reason(&mut raw).await,
        DisconnectReasonCode::MalformedPacket
    );
    let (mut raw, _) = fx.raw_v5_connected(&a, None).await;
    raw.send(publish_v5(A_DOOR, QoS::ExactlyOnce, 1, "q2", None))
        .await;
    assert_eq!(
        disconnect_reason(&mut raw).await,
        DisconnectReasonCode::QoSNotSupported
    );

    fx.wait_connected(0).await;
    assert!(
        obs.seen().is_empty(),
        "nothing reached the broker: {:?}",
        obs.seen()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_3_1_1_will_outside_the_acl_gets_connack_not_authorized() {
    let mut fx = EdgeFixture::start(|_| {}).await;
    let a = fx.cabinet("CAB-A");
    let mut c = rumqttc::mqttbytes::v4::Connect::new("x");
    c.keep_alive = 60;
    c.last_will = Some(rumqttc::LastWill::new(
        B_DOOR,
        "gone",
        QoS4::AtLeastOnce,
        false,
    ));
    let mut s = raw_tls(fx.addr, fx.tls(Some(&a))).await.expect("TLS");
    send(&mut s, &encode(rumqttc::mqttbytes::v4::Packet::Connect(c))).await;
    assert_eq!(read_until_closed(&mut s).await, [0x20, 0x02, 0x00, 0x05]);
    eventually("acl_will", || fx.rejections("acl_will") == 1).await;
}

/// Publishes of a raw v5 cabinet with topic alias `alias` on `topic` ("" to use the alias).
fn aliased(topic: &str, alias: u16, payload: &str) -> Packet {
    let props = PublishProperties {
        topic_alias: Some(alias),
        ..Default::default()
    };
    publish_v5(topic, QoS::AtMostOnce, 0, payload, Some(props))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_topic_aliases_are_bounded() {
    let mut fx = EdgeFixture::start(|_| {}).await;
    let obs = fx.observer(&["lk/v1/+/up/#"]).await;
    let a = fx.cabinet("CAB-A");

    // Set alias 10 (the default maximum), then use it: both arrive on the full topic.
    let (mut raw, _) = fx.raw_v5_connected(&a, None).await;
    raw.send(aliased(A_DOOR, 10, "1")).await;
    raw.send(aliased("", 10, "2")).await;
    eventually("both aliased publishes", || obs.received(A_DOOR) == 2).await;
    // An alias pointing outside its topics is still checked by its topic.
    raw.send(aliased(B_DOOR, 2, "x")).await;
    assert_eq!(
        disconnect_reason(&mut raw).await,
        DisconnectReasonCode::NotAuthorized
    );

    let cases = [
        (
            aliased(A_DOOR, 0, "zero"),
            DisconnectReasonCode::TopicAliasInvalid,
        ),
        (
            aliased(A_DOOR, 11, "above"),
            DisconnectReasonCode::TopicAliasInvalid,
        ),
        (aliased("", 3, "unset"), DisconnectReasonCode::ProtocolError),
    ];
    for (packet, reason) in cases {
        let (mut raw, _) = fx.raw_v5_connected(&a, None).await;
        raw.send(packet).await;
        assert_eq!(disconnect_reason(&mut raw).await, reason);
    }
    fx.wait_connected(0).await;
    assert_eq!(obs.received(A_DOOR), 2);
    assert_eq!(obs.received(B_DOOR), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_topic_aliases_stay_within_the_clients_maximum() {
    let mut fx = EdgeFixture::start(|_| {}).await;
    let erp = fx.integrator("erp");
    let ids = ["CAB-A", "CAB-B", "CAB-C", "CAB-D"];
    let cabinets: Vec<Client> = ids
        .iter()
        .map(|id| {
            let cert = fx.cabinet(id);
            fx.client(id, Some(&cert))
        })
        .collect();
    for c in &cabinets {
        c.wait_connected("cabinet").await;
    }
    let with_aliases = ConnectProperties {
        topic_alias_max: Some(2),
        ..props()
    };
    let (mut aliasing, _) = fx.raw_v5_connected(&erp, Some(with_aliases)).await;
    aliasing.subscribe(1, &["lk/v1/+/up/door"]).await;

    const ROUNDS: usize = 3;
    for round in 0..ROUNDS {
        for (id, c) in ids.iter().zip(&cabinets) {
            door_event(c, &format!("lk/v1/{id}/up/door"), &format!("{id}:{round}")).await;
        }
    }
    let got = aliasing.publishes(ids.len() * ROUNDS).await;
    let mut aliases = std::collections::HashMap::new();
    let mut resolved = Vec::new();
    for p in &got {
        let alias = p.properties.as_ref().and_then(|p| p.topic_alias);
        let topic = match alias {
            Some(n) => {
                assert!(
                    (1..=2).contains(&n),
                    "alias {n} above the client's maximum 2"
                );
                if p.topic.is_empty() {
                    aliases
                        .get(&n)
                        .cloned()
                        .expect("an alias the edge set before")
                } else {
                    aliases.insert(n, p.topic.to_vec());
                    p.topic.to_vec()
                }
            }
            None => {
                assert!(!p.topic.is_empty(), "an empty topic needs an alias");
                p.topic.to_vec()
            }
        };
        let topic = String::from_utf8(topic).expect("topic");
        let payload = String::from_utf8(p.payload.to_vec()).expect("payload");
        assert_eq!(
            topic,
            format!("lk/v1/{}/up/door", payload.split(':').next().expect("id")),
            "every message resolves to its own full topic"
        );
        resolved.push(payload);
    }
    resolved.sort();
    let mut want: Vec<String> = (0..ROUNDS)
        .flat_map(|r| ids.iter().map(move |id| format!("{id}:{r}")))
        .collect();
    want.sort();
    assert_eq!(resolved, want);

    // A client that declared no topic alias maximum never gets one.
    let (mut plain, _) = fx.raw_v5_connected(&erp, None).await;
    plain.subscribe(1, &["lk/v1/+/up/door"]).await;
    for _ in 0..2 {
        door_event(&cabinets[0], "lk/v1/CAB-A/up/door", "CAB-A:x").await;
    }
    for p in plain.publishes(2).await {
        assert_eq!(p.topic, b"lk/v1/CAB-A/up/door".as_slice());
        assert_eq!(p.properties.and_then(|p| p.topic_alias), None);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clients_receive_maximum_and_maximum_packet_size_are_honoured() {
    let mut fx = EdgeFixture::start(|_| {}).await;
    let obs = fx.observer(&["lk/v1/+/up/#"]).await;
    let (a, erp) = (fx.cabinet("CAB-A"), fx.integrator("erp"));
    let ca = fx.client("CAB-A", Some(&a));
    ca.wait_connected("A").await;
    let limits = ConnectProperties {
        receive_maximum: Some(2),
        max_packet_size: Some(300),
        ..props()
    };
    let (mut raw, _) = fx.raw_v5_connected(&erp, Some(limits)).await;
    raw.subscribe(1, &["lk/v1/+/up/door"]).await;

    const N: usize = 6;
    for i in 0..N {
        door_event(&ca, A_DOOR, &format!("{i}")).await;
    }
    eventually("the broker has all of them", || obs.received(A_DOOR) == N).await;
    eventually("A's publishes acknowledged", || ca.seen().pubacks == N).await;

    // Nothing acknowledged yet: at most 2 in flight. A PINGREQ's answer comes after whatever
    // the edge had to send by then.
    let mut unacked = Vec::new();
    raw.send(Packet::PingReq(PingReq)).await;
    loop {
        match raw.expect_next("PINGRESP").await {
            Packet::Publish(p) => unacked.push(p),
            Packet::PingResp(_) => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    while unacked.len() < 2 {
        match raw.expect_next("two publishes").await {
            Packet::Publish(p) => unacked.push(p),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(unacked.len(), 2, "receive maximum 2");

    // Acknowledge one at a time: the next comes, never more than 2 unacknowledged.
    let mut payloads = Vec::new();
    while payloads.len() < N {
        let p = unacked.remove(0);
        assert_eq!(p.qos, QoS::AtLeastOnce);
        payloads.push(String::from_utf8(p.payload.to_vec()).expect("utf-8"));
        raw.puback(p.pkid).await;
        if payloads.len() + unacked.len() < N {
            match raw.expect_next("the next publish").await {
                Packet::Publish(p) => unacked.push(p),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(unacked.len() <= 2);
    }
    let want: Vec<String> = (0..N).map(|i| i.to_string()).collect();
    assert_eq!(payloads, want);

    // A message larger than the client's maximum packet size (300) is not sent to it; the
    // next one is.
    door_event(&ca, A_DOOR, &"x".repeat(1_000)).await;
    door_event(&ca, A_DOOR, "after").await;
    let got = raw.publishes(1).await;
    assert_eq!(got[0].payload.as_ref(), b"after");
    eventually("counted", || {
        fx.metric(
            "locker_edge_dropped_total",
            Some(("reason", "client_max_packet")),
        ) == 1
    })
    .await;
    fx.wait_connected(2).await;
}
