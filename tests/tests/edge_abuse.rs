//! The edge under abuse by authenticated clients: a cabinet cannot plant retained state (its
//! retain flags are cleared, the messages still flow), subscribes only to exactly its own
//! downlink filters, an integrator holds at most `max_filters_per_client` distinct filters
//! (beyond it a filter gets a SUBACK failure code and the connection stays),
//! and a cabinet flooding its uplink is slowed down by backpressure without delaying others.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use locker_schemas::Filter;
use locker_tests::edge::*;
use locker_tests::eventually;
use rumqttc::mqttbytes::v4::{Packet, Publish};
use rumqttc::{LastWill, QoS, SubscribeReasonCode};

const A_DOOR: &str = "lk/v1/CAB-A/up/door";
const B_NETWORK: &str = "lk/v1/CAB-B/up/network";

/// Integrator `erp` may read every uplink.
fn erp_reads_uplinks(cfg: &mut locker_gateway::edge::EdgeConfig) {
    cfg.integrator_acls.insert(
        "erp".into(),
        vec![Filter::new("lk/v1/+/up/#").expect("filter")],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cabinet_cannot_plant_retained_state() {
    let mut fx = EdgeFixture::start(erp_reads_uplinks).await;
    let obs = fx.observer(&["lk/v1/+/up/#"]).await;
    let (a, b, erp) = (
        fx.cabinet("CAB-A"),
        fx.cabinet("CAB-B"),
        fx.integrator("erp"),
    );

    // A stock client publishes with retain.
    let ca = fx.client("CAB-A", Some(&a));
    ca.wait_connected("A").await;
    ca.client
        .publish(A_DOOR, QoS::AtLeastOnce, true, b"planted".to_vec())
        .await
        .expect("publish");
    eventually("the retained publish still flows", || {
        obs.received(A_DOOR) == 1
    })
    .await;
    eventually("and is acknowledged", || ca.seen().pubacks == 1).await;

    // B leaves a retained will and drops its connection.
    let mut o = mqtt_options("CAB-B", fx.addr, fx.tls(Some(&b)));
    o.set_last_will(LastWill::new(B_NETWORK, "gone", QoS::AtLeastOnce, true));
    let cb = Client::start(o);
    cb.wait_connected("B").await;
    drop(cb);
    eventually("B's will still flows", || obs.received(B_NETWORK) == 1).await;

    // An integrator subscribing afterwards is replayed nothing.
    let ci = fx.client("erp", Some(&erp));
    ci.wait_connected("erp").await;
    ci.client
        .subscribe("lk/v1/+/up/#", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    eventually("erp subscribed", || !ci.seen().suback_codes.is_empty()).await;
    ca.client
        .publish(A_DOOR, QoS::AtLeastOnce, false, b"live".to_vec())
        .await
        .expect("publish");
    eventually("erp gets the live event", || ci.received(A_DOOR) == 1).await;
    // A retained message would have been delivered at the subscription, before the live one.
    assert_eq!(
        ci.seen().publishes,
        vec![(A_DOOR.to_owned(), b"live".to_vec())],
        "nothing retained was replayed"
    );
    assert_eq!(
        fx.metric(
            "locker_edge_retain_cleared_total",
            Some(("what", "publish"))
        ),
        1
    );
    assert_eq!(
        fx.metric("locker_edge_retain_cleared_total", Some(("what", "will"))),
        1
    );
    assert!(ca.connected(), "a retain flag does not cost the connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cabinet_subscribes_only_to_exactly_its_downlink_filters() {
    let mut fx = EdgeFixture::start(|_| {}).await;
    let a = fx.cabinet("CAB-A");

    // Exactly its own filters: `down/#` (what the agent uses) and each `down/{kind}`.
    let ok = fx.client("CAB-A", Some(&a));
    ok.wait_connected("A").await;
    for f in [
        "lk/v1/CAB-A/down/#",
        "lk/v1/CAB-A/down/cmd",
        "lk/v1/CAB-A/down/ack",
        "lk/v1/CAB-A/down/creds",
    ] {
        ok.client
            .subscribe(f, QoS::AtLeastOnce)
            .await
            .expect("subscribe");
    }
    eventually("four SUBACKs", || ok.seen().suback_codes.len() == 4).await;
    assert!(ok
        .seen()
        .suback_codes
        .iter()
        .all(|c| matches!(c, SubscribeReasonCode::Success(_))));
    assert!(ok.connected());
    drop(ok);
    fx.wait_connected(0).await;

    // Made-up filters within its downlinks are refused (each one would be broker state).
    for (n, f) in [
        "lk/v1/CAB-A/down/+",
        "lk/v1/CAB-A/down/x1",
        "lk/v1/CAB-A/down/cmd/#",
    ]
    .into_iter()
    .enumerate()
    {
        let c = fx.client("CAB-A", Some(&a));
        c.wait_connected("A").await;
        c.client
            .subscribe(f, QoS::AtLeastOnce)
            .await
            .expect("subscribe");
        c.wait_failed(&format!("subscribing to {f} closes the connection"))
            .await;
        eventually("counted", || {
            fx.metric(
                "locker_edge_acl_violations_total",
                Some(("reason", "acl_subscribe")),
            ) == n as u64 + 1
        })
        .await;
        fx.wait_connected(0).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_integrator_holds_at_most_its_filter_cap() {
    let mut fx = EdgeFixture::start(|cfg| {
        erp_reads_uplinks(cfg);
        cfg.max_filters_per_client = 3;
    })
    .await;
    let erp = fx.integrator("erp");
    let ci = fx.client("erp", Some(&erp));
    ci.wait_connected("erp").await;
    for f in [
        "lk/v1/A/up/#",
        "lk/v1/B/up/#",
        "lk/v1/C/up/#",
        "lk/v1/A/up/#",
    ] {
        ci.client
            .subscribe(f, QoS::AtMostOnce)
            .await
            .expect("subscribe");
    }
    eventually("three distinct filters (one twice) granted", || {
        ci.seen().suback_codes.len() == 4
    })
    .await;
    assert!(ci.connected());

    // Unsubscribing does not make room: the broker keeps a filter's state after it.
    ci.client
        .unsubscribe("lk/v1/C/up/#")
        .await
        .expect("unsubscribe");
    ci.client
        .subscribe("lk/v1/D/up/#", QoS::AtMostOnce)
        .await
        .expect("subscribe");
    // A fourth distinct filter gets SUBACK 0x80 and the connection stays (issue 15).
    eventually("fifth SUBACK", || ci.seen().suback_codes.len() == 5).await;
    assert_eq!(ci.seen().suback_codes[4], SubscribeReasonCode::Failure);
    eventually("counted", || fx.rejections("too_many_filters") == 1).await;
    assert!(ci.connected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_cabinet_is_slowed_without_delaying_others_or_losing_anything() {
    const FLOOD: usize = 1000;
    let mut fx = EdgeFixture::start(|cfg| {
        cfg.uplink_rate_per_s = 200;
        cfg.uplink_burst = 20;
    })
    .await;
    let obs = fx.observer(&["lk/v1/+/up/#"]).await;
    let (a, b) = (fx.cabinet("CAB-A"), fx.cabinet("CAB-B"));

    // A writes a flood of QoS 0 uplinks as fast as its socket takes them.
    let mut flood = raw_tls(fx.addr, fx.tls(Some(&a))).await.expect("TLS");
    send(&mut flood, &connect_bytes("a", false)).await;
    assert_eq!(read_exact(&mut flood, 4).await, [0x20, 0x02, 0x00, 0x00]);
    let mut bytes = Vec::new();
    for i in 0..FLOOD {
        bytes.extend(encode(Packet::Publish(Publish::new(
            A_DOOR,
            rumqttc::mqttbytes::QoS::AtMostOnce,
            format!("{i}"),
        ))));
    }
    let writer = tokio::spawn(async move {
        send(&mut flood, &bytes).await;
        flood
    });

    // B's events go through at once while A is held back.
    let cb = fx.client("CAB-B", Some(&b));
    cb.wait_connected("B").await;
    for i in 0..20 {
        cb.client
            .publish(B_NETWORK, QoS::AtLeastOnce, false, format!("{i}"))
            .await
            .expect("publish");
    }
    eventually("all of B's events", || obs.received(B_NETWORK) == 20).await;
    let through = obs.received(A_DOOR);
    assert!(
        through < FLOOD,
        "A's flood is paced, not let through at once ({through} of {FLOOD})"
    );
    assert!(fx.metric("locker_edge_uplink_throttled_total", None) > 0);

    // Backpressure, not dropping: all of A's uplinks arrive, in order, on the same connection.
    let _flood = writer.await.expect("writer");
    eventually("all of A's flood, eventually", || {
        obs.received(A_DOOR) == FLOOD
    })
    .await;
    let order: Vec<String> = obs
        .seen()
        .into_iter()
        .filter(|(t, _)| t == A_DOOR)
        .map(|(_, p)| String::from_utf8_lossy(&p).into_owned())
        .collect();
    let expected: Vec<String> = (0..FLOOD).map(|i| i.to_string()).collect();
    assert_eq!(order, expected);
    assert_eq!(
        fx.edge.connected().await.len(),
        2,
        "nobody was disconnected"
    );
}
