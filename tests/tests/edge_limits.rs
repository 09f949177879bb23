//! Edge robustness and control: stalled sockets never block real clients, the connection
//! limit refuses at once, and the handle lists, disconnects and shuts down connections.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use locker_gateway::edge::Identity;
use locker_schemas::CabinetId;
use locker_tests::edge::*;
use locker_tests::eventually;
use tokio::io::AsyncWriteExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_do_not_stop_a_cabinet_from_connecting() {
    // A deadline longer than the test's own: if stalled sockets held up the cabinet, the test
    // would time out rather than pass after they expire. The retired handshake-slot setting
    // is still accepted (and ignored).
    let mut fx = EdgeFixture::start(|cfg| {
        handshake_deadlines(cfg, 120_000);
        cfg.max_concurrent_handshakes = Some(8);
    })
    .await;
    let mut idle = Vec::new();
    for i in 0..200 {
        let mut s = tokio::net::TcpStream::connect(fx.addr)
            .await
            .expect("connect");
        if i % 2 == 0 {
            // Half of them start a TLS record and stop.
            s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
                .await
                .expect("write");
        }
        idle.push(s);
    }
    eventually("all sockets accepted", || {
        fx.metric("locker_edge_accepted_total", None) >= 200
    })
    .await;

    let a = fx.cabinet("CAB-A");
    let c = fx.client("CAB-A", Some(&a));
    c.wait_connected("a real cabinet connects despite 200 stalled sockets")
        .await;
    fx.wait_connected(1).await;
    drop(idle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalls_at_every_phase_do_not_delay_a_cabinet() {
    // The case: ~1,100 sockets that sent a real ClientHello and stalled (more than
    // the 1,024 handshake slots the edge used to have), plus stalls before the ClientHello and
    // before the CONNECT. Every deadline is far beyond the test's own, so the cabinet can only
    // get in while all of them are still held open.
    const BEFORE_HELLO: usize = 300;
    const AFTER_HELLO: usize = 1100;
    const BEFORE_CONNECT: usize = 300;
    let mut fx = EdgeFixture::start(|cfg| {
        handshake_deadlines(cfg, 60_000);
        // Admission control off: this is about stalls holding nothing (with it on, a stalled
        // handshake holds a place for `admission_hold_ms` only: edge_admission.rs).
        cfg.max_handshakes_in_progress = 0;
    })
    .await;
    let (a, x) = (fx.cabinet("CAB-A"), fx.cabinet("CAB-X"));
    let tls_x = fx.tls(Some(&x));
    let mut raw = Vec::new();
    for _ in 0..BEFORE_HELLO {
        raw.push(stalled_before_hello(fx.addr).await);
    }
    let mut hellos = Vec::new();
    for _ in 0..AFTER_HELLO {
        hellos.push(stalled_after_hello(fx.addr, tls_x.clone()).await);
    }
    let mut tls = Vec::new();
    for _ in 0..BEFORE_CONNECT {
        tls.push(stalled_before_connect(fx.addr, tls_x.clone()).await);
    }
    eventually(
        // At least as many as the 1,024 handshake slots the edge used to have.
        "the stalled ClientHellos are mid-handshake at the edge",
        || fx.metric("locker_edge_handshakes_in_flight", None) >= 1024,
    )
    .await;

    let started = std::time::Instant::now();
    let c = fx.client("CAB-A", Some(&a));
    c.wait_connected("a valid cabinet connects while every stall is held open")
        .await;
    eprintln!(
        "valid cabinet connected {:?} after {BEFORE_HELLO} + {AFTER_HELLO} + {BEFORE_CONNECT} stalled sockets",
        started.elapsed()
    );
    assert_eq!(fx.rejections("handshake_timeout"), 0, "no stall expired");
    eventually(
        "every stalled ClientHello is mid-handshake, none given up",
        || fx.metric("locker_edge_handshakes_in_flight", None) == AFTER_HELLO as u64,
    )
    .await;
    assert_eq!(fx.rejections("handshake_timeout"), 0, "no stall expired");
    drop((raw, hellos, tls));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_handshake_phase_has_its_own_deadline() {
    let mut fx = EdgeFixture::start(|cfg| {
        cfg.handshake_timeout_ms = 60_000;
        cfg.hello_timeout_ms = 300;
        cfg.tls_timeout_ms = 300;
        cfg.connect_timeout_ms = 300;
    })
    .await;
    let x = fx.cabinet("CAB-X");
    let tls_x = fx.tls(Some(&x));
    let mut raw = stalled_before_hello(fx.addr).await;
    let mut hello = stalled_after_hello(fx.addr, tls_x.clone()).await;
    let mut tls = stalled_before_connect(fx.addr, tls_x).await;
    assert!(read_until_closed(&mut raw).await.is_empty());
    read_until_closed(&mut hello).await;
    read_until_closed(&mut tls).await;
    eventually("three phase timeouts counted", || {
        fx.rejections("handshake_timeout") == 3
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_address_handshake_limit_refuses_at_once_when_configured() {
    let mut fx = EdgeFixture::start(|cfg| {
        handshake_deadlines(cfg, 60_000);
        cfg.max_handshakes_per_address = 2;
    })
    .await;
    let a = fx.cabinet("CAB-A");
    let stalls = vec![
        stalled_before_hello(fx.addr).await,
        stalled_before_hello(fx.addr).await,
    ];
    let mut third = stalled_before_hello(fx.addr).await;
    assert!(read_until_closed(&mut third).await.is_empty());
    eventually("refusal counted", || {
        fx.rejections("too_many_from_address") == 1
    })
    .await;
    drop(stalls);
    eventually("the dropped stalls end their handshakes", || {
        fx.rejections("tls_error") == 2
    })
    .await;
    // Established connections do not count: the slots are the handshakes'.
    let c = fx.client("CAB-A", Some(&a));
    c.wait_connected("A once the stalls are gone").await;
    let more = [
        stalled_before_hello(fx.addr).await,
        stalled_before_hello(fx.addr).await,
    ];
    eventually("both accepted", || {
        fx.metric("locker_edge_accepted_total", None) >= 6
    })
    .await;
    assert_eq!(fx.rejections("too_many_from_address"), 1);
    drop(more);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_handshakes_time_out_and_are_counted() {
    let fx = EdgeFixture::start(|cfg| cfg.handshake_timeout_ms = 200).await;
    let mut idle = Vec::new();
    for _ in 0..5 {
        idle.push(
            tokio::net::TcpStream::connect(fx.addr)
                .await
                .expect("connect"),
        );
    }
    eventually("timeouts counted", || {
        fx.rejections("handshake_timeout") >= 5
    })
    .await;
    for mut s in idle {
        assert!(read_until_closed(&mut s).await.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_are_refused() {
    let mut fx = EdgeFixture::start(|cfg| cfg.max_connections = 2).await;
    let (a, b, c) = (
        fx.cabinet("CAB-A"),
        fx.cabinet("CAB-B"),
        fx.cabinet("CAB-C"),
    );
    let ca = fx.client("CAB-A", Some(&a));
    let cb = fx.client("CAB-B", Some(&b));
    ca.wait_connected("A").await;
    cb.wait_connected("B").await;

    let cc = fx.client("CAB-C", Some(&c));
    cc.wait_failed("C is refused").await;
    eventually("too_many_connections counted", || {
        fx.rejections("too_many_connections") >= 1
    })
    .await;

    let closed = fx
        .edge
        .disconnect(&Identity::Cabinet(CabinetId::new("CAB-A").expect("id")))
        .await;
    assert_eq!(closed, 1);
    ca.wait_failed("A disconnected on demand").await;
    fx.wait_connected(1).await;
    let cc = fx.client("CAB-C", Some(&c));
    cc.wait_connected("C gets the freed slot").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handle_lists_disconnects_and_shuts_down() {
    let mut fx = EdgeFixture::start(|_| {}).await;
    let (a, erp) = (fx.cabinet("CAB-A"), fx.integrator("erp"));
    let ca = fx.client("CAB-A", Some(&a));
    let ci = fx.client("erp", Some(&erp));
    ca.wait_connected("A").await;
    ci.wait_connected("erp").await;
    fx.wait_connected(2).await;

    let listed = fx.edge.connected().await;
    let mut who: Vec<(String, &str)> = listed
        .iter()
        .map(|c| (c.identity.to_string(), c.identity.role()))
        .collect();
    who.sort();
    assert_eq!(
        who,
        vec![
            ("CAB-A".to_owned(), "cabinet"),
            ("int:erp".to_owned(), "integrator")
        ]
    );
    assert!(listed.iter().all(|c| !c.serial.is_empty()));
    assert_eq!(
        fx.metric("locker_edge_connections_open", Some(("role", "cabinet"))),
        1
    );
    assert!(fx.metric("locker_edge_bytes_in_total", None) > 0);
    assert!(fx.metric("locker_edge_bytes_out_total", None) > 0);

    let presence = fx.presence();
    assert_eq!(
        presence.len(),
        1,
        "integrators have no presence: {presence:?}"
    );
    assert!(presence[0].online);

    fx.edge.shutdown().await;
    ca.wait_failed("A closed by shutdown").await;
    ci.wait_failed("erp closed by shutdown").await;
    assert!(fx.edge.connected().await.is_empty());
    assert!(
        tokio::net::TcpStream::connect(fx.addr).await.is_err(),
        "listener closed"
    );
    eventually("A offline after shutdown", || {
        fx.presence().last().is_some_and(|p| !p.online)
    })
    .await;
    fx.edge.shutdown().await; // idempotent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_does_not_stall_others() {
    use rumqttc::mqttbytes::v4::{Packet, Subscribe};
    use rumqttc::QoS;
    let mut fx = EdgeFixture::start(|_| {}).await;
    let (a, b) = (fx.cabinet("CAB-A"), fx.cabinet("CAB-B"));

    // A subscribes to its downlinks, then never reads again.
    let mut slow = raw_tls(fx.addr, fx.tls(Some(&a))).await.expect("TLS");
    let mut bytes = bytes::BytesMut::new();
    let mut sub = Subscribe::new("lk/v1/CAB-A/down/#", rumqttc::mqttbytes::QoS::AtMostOnce);
    sub.pkid = 1;
    Packet::Subscribe(sub)
        .write(&mut bytes, 1 << 16)
        .expect("encode");
    send(&mut slow, &connect_bytes("a", false)).await;
    send(&mut slow, &bytes).await;
    let mut acks = [0u8; 4 + 5];
    tokio::io::AsyncReadExt::read_exact(&mut slow, &mut acks)
        .await
        .expect("CONNACK, SUBACK");

    let cb = fx.client("CAB-B", Some(&b));
    cb.wait_connected("B").await;
    cb.client
        .subscribe("lk/v1/CAB-B/down/#", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    eventually("B subscribed", || !cb.seen().suback_codes.is_empty()).await;

    let obs = fx.observer(&[]).await;
    let chunk = vec![7u8; 8 * 1024];
    for _ in 0..640 {
        obs.publish("lk/v1/CAB-A/down/cmd", chunk.clone()).await;
    }
    obs.publish("lk/v1/CAB-B/down/cmd", b"open".to_vec()).await;
    eventually("B gets its command while A's backlog is stuck", || {
        cb.received("lk/v1/CAB-B/down/cmd") == 1
    })
    .await;
    drop(slow);
}
