//! MQTT sessions through the edge (a cabinet's served by the edge itself, an integrator's over
//! its in-process link to the broker): the will is published by the edge on an abnormal end
//! only (and its topic is checked), keep alive is enforced, PINGREQ is answered, QoS 1 flows
//! both ways beyond the inflight window, a client cannot confuse the edge with a stray PUBACK,
//! an integrator's persistent session resumes, and a cabinet has no broker session (its
//! commands wait in the gateway's queue instead).

use std::time::Duration;

use locker_gateway::edge::Identity;
use locker_schemas::CabinetId;
use locker_tests::edge::*;
use locker_tests::eventually;
use rumqttc::mqttbytes::v4::{Connect, LastWill as RawWill, Packet, PubAck};
use rumqttc::{LastWill, QoS, SubscribeReasonCode};

const WILL: &str = "lk/v1/CAB-A/up/network";
const CONNACK_OK: [u8; 4] = [0x20, 0x02, 0x00, 0x00];
const DISCONNECT: [u8; 2] = [0xe0, 0x00];

/// A CONNECT with a keep alive and, optionally, a will.
fn connect_with(keep_alive: u16, will: Option<(&str, &str)>) -> Vec<u8> {
    let mut c = Connect::new("ignored");
    c.keep_alive = keep_alive;
    c.last_will =
        will.map(|(t, m)| RawWill::new(t, m, rumqttc::mqttbytes::QoS::AtLeastOnce, false));
    encode(Packet::Connect(c))
}

/// The payloads the observer received on `topic`, in order.
fn payloads(obs: &Observer, topic: &str) -> Vec<String> {
    obs.seen()
        .into_iter()
        .filter(|(t, _)| t == topic)
        .map(|(_, p)| String::from_utf8_lossy(&p).into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_will_is_published_on_an_abnormal_end_only() {
    let mut fx = EdgeFixture::start(|_| {}).await;
    let obs = fx.observer(&["lk/v1/+/up/#"]).await;
    let a = fx.cabinet("CAB-A");

    // A clean DISCONNECT: no will.
    let mut o = mqtt_options("CAB-A", fx.addr, fx.tls(Some(&a)));
    o.set_last_will(LastWill::new(WILL, "clean", QoS::AtLeastOnce, false));
    let c = Client::start(o);
    c.wait_connected("A connects").await;
    c.client.disconnect().await.expect("disconnect");
    fx.wait_connected(0).await;

    // The connection drops without DISCONNECT: the will.
    let mut s = raw_tls(fx.addr, fx.tls(Some(&a))).await.expect("TLS");
    send(&mut s, &connect_with(60, Some((WILL, "dropped")))).await;
    assert_eq!(read_exact(&mut s, 4).await, CONNACK_OK);
    drop(s);
    eventually("the dropped connection's will", || obs.received(WILL) == 1).await;
    // Had the clean one published its will, it would have arrived first (one log, in order).
    assert_eq!(payloads(&obs, WILL), vec!["dropped"]);

    // Keep alive expiry (1 s, so 1.5 s of silence) ends the session with the will.
    let mut s = raw_tls(fx.addr, fx.tls(Some(&a))).await.expect("TLS");
    send(&mut s, &connect_with(1, Some((WILL, "silent")))).await;
    assert_eq!(read_exact(&mut s, 4).await, CONNACK_OK);
    assert!(read_until_closed(&mut s).await.is_empty());
    eventually("keep_alive_timeout counted", || {
        fx.rejections("keep_alive_timeout") == 1
    })
    .await;
    eventually("the silent connection's will", || obs.received(WILL) == 2).await;

    // Closed by the edge (on demand): the will too.
    let mut s = raw_tls(fx.addr, fx.tls(Some(&a))).await.expect("TLS");
    send(&mut s, &connect_with(60, Some((WILL, "kicked")))).await;
    assert_eq!(read_exact(&mut s, 4).await, CONNACK_OK);
    fx.wait_connected(1).await;
    let cab = Identity::Cabinet(CabinetId::new("CAB-A").expect("id"));
    assert_eq!(fx.edge.disconnect(&cab).await, 1);
    read_until_closed(&mut s).await;
    eventually("the kicked connection's will", || obs.received(WILL) == 3).await;

    // A will on another cabinet's topic is refused with the CONNECT: never published.
    let forged = "lk/v1/CAB-B/up/network";
    let mut s = raw_tls(fx.addr, fx.tls(Some(&a))).await.expect("TLS");
    send(&mut s, &connect_with(60, Some((forged, "forged")))).await;
    assert_eq!(
        read_until_closed(&mut s).await,
        vec![0x20, 0x02, 0x00, 0x05],
        "CONNACK 0x05 not authorized, then the close"
    );
    eventually("acl_will counted", || fx.rejections("acl_will") == 1).await;

    // A last clean session proves the order: nothing else was published in between.
    let mut s = raw_tls(fx.addr, fx.tls(Some(&a))).await.expect("TLS");
    send(&mut s, &connect_with(60, Some((WILL, "last")))).await;
    assert_eq!(read_exact(&mut s, 4).await, CONNACK_OK);
    send(&mut s, &DISCONNECT).await;
    read_until_closed(&mut s).await;
    fx.wait_connected(0).await;
    let c = fx.client("CAB-A", Some(&a));
    c.wait_connected("A again").await;
    c.client
        .publish(
            "lk/v1/CAB-A/up/door",
            QoS::AtLeastOnce,
            false,
            b"marker".to_vec(),
        )
        .await
        .expect("publish");
    eventually("marker", || obs.received("lk/v1/CAB-A/up/door") == 1).await;
    assert_eq!(payloads(&obs, WILL), vec!["dropped", "silent", "kicked"]);
    assert_eq!(obs.received(forged), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_answers_pings_and_keep_alive_zero_is_refused() {
    let mut fx = EdgeFixture::start(|_| {}).await;
    let a = fx.cabinet("CAB-A");

    let mut s = raw_tls(fx.addr, fx.tls(Some(&a))).await.expect("TLS");
    send(&mut s, &connect_with(60, None)).await;
    assert_eq!(read_exact(&mut s, 4).await, CONNACK_OK);
    send(&mut s, &[0xc0, 0x00, 0xc0, 0x00]).await;
    assert_eq!(read_exact(&mut s, 4).await, [0xd0, 0x00, 0xd0, 0x00]);
    drop(s);

    let mut s = raw_tls(fx.addr, fx.tls(Some(&a))).await.expect("TLS");
    send(&mut s, &connect_with(0, None)).await;
    assert!(read_until_closed(&mut s).await.is_empty(), "no CONNACK");
    eventually("zero_keep_alive counted", || {
        fx.rejections("zero_keep_alive") == 1
    })
    .await;

    // A client that pings in time (keep alive 1 s) stays connected across many windows.
    let mut o = mqtt_options("CAB-A", fx.addr, fx.tls(Some(&a)));
    o.set_keep_alive(Duration::from_secs(1));
    let c = Client::start(o);
    c.wait_connected("A connects").await;
    eventually("three PINGRESPs", || c.seen().pingresps >= 3).await;
    assert!(c.connected());
    assert_eq!(fx.rejections("keep_alive_timeout"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos1_flows_both_ways_beyond_the_inflight_window() {
    const N: usize = 350; // the router allows 100 unacknowledged publishes per connection
    let mut fx = EdgeFixture::start(|_| {}).await;
    let obs = fx.observer(&["lk/v1/+/up/#"]).await;
    let a = fx.cabinet("CAB-A");
    let c = fx.client("CAB-A", Some(&a));
    c.wait_connected("A connects").await;
    c.client
        .subscribe("lk/v1/CAB-A/down/cmd", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    // QoS 2 is granted as QoS 1.
    c.client
        .subscribe("lk/v1/CAB-A/down/ack", QoS::ExactlyOnce)
        .await
        .expect("subscribe");
    eventually("subscribed", || c.seen().suback_codes.len() == 2).await;
    assert_eq!(
        c.seen().suback_codes,
        vec![
            SubscribeReasonCode::Success(QoS::AtLeastOnce),
            SubscribeReasonCode::Success(QoS::AtLeastOnce)
        ]
    );

    for i in 0..N {
        obs.publish("lk/v1/CAB-A/down/cmd", format!("cmd {i}"))
            .await;
    }
    obs.publish("lk/v1/CAB-A/down/ack", "ack").await;
    eventually("every command delivered and acknowledged", || {
        c.received("lk/v1/CAB-A/down/cmd") == N && c.received("lk/v1/CAB-A/down/ack") == 1
    })
    .await;
    let cmds: Vec<String> = c
        .seen()
        .publishes
        .into_iter()
        .filter(|(t, _)| t == "lk/v1/CAB-A/down/cmd")
        .map(|(_, p)| String::from_utf8_lossy(&p).into_owned())
        .collect();
    assert_eq!(cmds, (0..N).map(|i| format!("cmd {i}")).collect::<Vec<_>>());

    for i in 0..N {
        c.client
            .publish(
                "lk/v1/CAB-A/up/door",
                QoS::AtLeastOnce,
                false,
                format!("ev {i}"),
            )
            .await
            .expect("publish");
    }
    eventually("every event PUBACKed", || c.seen().pubacks == N).await;
    eventually("every event routed", || {
        obs.received("lk/v1/CAB-A/up/door") == N
    })
    .await;
    assert!(c.connected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stray_puback_closes_only_that_connection() {
    let mut fx = EdgeFixture::start(|_| {}).await;
    let obs = fx.observer(&[]).await;
    let (a, b) = (fx.cabinet("CAB-A"), fx.cabinet("CAB-B"));
    let cb = fx.client("CAB-B", Some(&b));
    cb.wait_connected("B connects").await;
    cb.client
        .subscribe("lk/v1/CAB-B/down/#", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    eventually("B subscribed", || !cb.seen().suback_codes.is_empty()).await;

    let mut s = raw_tls(fx.addr, fx.tls(Some(&a))).await.expect("TLS");
    send(&mut s, &connect_with(60, None)).await;
    assert_eq!(read_exact(&mut s, 4).await, CONNACK_OK);
    send(&mut s, &encode(Packet::PubAck(PubAck::new(7)))).await;
    read_until_closed(&mut s).await;
    eventually("unexpected_packet counted", || {
        fx.rejections("unexpected_packet") == 1
    })
    .await;

    obs.publish("lk/v1/CAB-B/down/cmd", "open").await;
    eventually("B still served", || {
        cb.received("lk/v1/CAB-B/down/cmd") == 1
    })
    .await;
}

/// Options of a client asking for a persistent session (clean session off).
fn persistent(
    fx: &EdgeFixture,
    id: &str,
    cert: &locker_broker_config::pki::IssuedCert,
) -> rumqttc::MqttOptions {
    let mut o = mqtt_options(id, fx.addr, fx.tls(Some(cert)));
    o.set_clean_session(false);
    o
}

/// Connects (a first session: none present), subscribes to `filter`, and disconnects cleanly.
async fn subscribe_and_leave(fx: &EdgeFixture, options: rumqttc::MqttOptions, filter: &str) {
    let c = Client::start(options);
    c.wait_connected("connects").await;
    assert_eq!(c.seen().sessions_present, vec![false]);
    c.client
        .subscribe(filter, QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    eventually("subscribed", || !c.seen().suback_codes.is_empty()).await;
    c.client.disconnect().await.expect("disconnect");
    fx.wait_connected(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_integrators_persistent_session_resumes_with_what_came_meanwhile() {
    let mut fx = EdgeFixture::start(|_| {}).await;
    let erp = fx.integrator("erp");
    let a = fx.cabinet("CAB-A");
    let options = || persistent(&fx, "erp", &erp);
    subscribe_and_leave(&fx, options(), "lk/v1/+/up/door").await;

    let cab = fx.client("CAB-A", Some(&a));
    cab.wait_connected("A connects").await;
    cab.client
        .publish("lk/v1/CAB-A/up/door", QoS::AtLeastOnce, false, "while away")
        .await
        .expect("publish");
    eventually("PUBACKed", || cab.seen().pubacks == 1).await;
    let c = Client::start(options());
    c.wait_connected("erp reconnects").await;
    assert_eq!(c.seen().sessions_present, vec![true]);
    eventually("the event published while away", || {
        c.received("lk/v1/CAB-A/up/door") == 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cabinet_has_no_broker_session_and_downlinks_while_away_are_counted_as_dropped() {
    let mut fx = EdgeFixture::start(|_| {}).await;
    let obs = fx.observer(&[]).await;
    let a = fx.cabinet("CAB-A");
    let options = || persistent(&fx, "CAB-A", &a);
    subscribe_and_leave(&fx, options(), "lk/v1/CAB-A/down/#").await;

    // The gateway's command queue (sled) is what keeps a cabinet's commands while it is away;
    // the broker keeps nothing for it.
    obs.publish("lk/v1/CAB-A/down/cmd", "while away").await;
    eventually("counted as dropped", || {
        fx.metric(
            "locker_broker_downlinks_dropped_total",
            Some(("reason", "offline")),
        ) == 1
    })
    .await;
    let c = Client::start(options());
    c.wait_connected("A reconnects").await;
    assert_eq!(c.seen().sessions_present, vec![false]);
    // Connected but not subscribed (yet): not delivered, and counted.
    obs.publish("lk/v1/CAB-A/down/cmd", "before subscribing")
        .await;
    eventually("counted as not subscribed", || {
        fx.metric(
            "locker_broker_downlinks_dropped_total",
            Some(("reason", "not_subscribed")),
        ) == 1
    })
    .await;
    c.client
        .subscribe("lk/v1/CAB-A/down/#", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    eventually("subscribed", || !c.seen().suback_codes.is_empty()).await;
    obs.publish("lk/v1/CAB-A/down/cmd", "now").await;
    eventually("the command sent while connected", || {
        c.received("lk/v1/CAB-A/down/cmd") == 1
    })
    .await;
    assert_eq!(c.seen().publishes[0].1, b"now".to_vec());
}
