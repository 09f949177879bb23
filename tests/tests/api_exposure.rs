//! The API's exposure over real sockets: slow clients that never finish a request head are
//! cut after `api.header_read_timeout_ms` while others are served; connections beyond
//! `api.max_connections` never reach a handler and the MQTT edge keeps accepting cabinets;
//! and the API over TLS for a client that trusts the fleet CA.

use std::net::SocketAddr;

use locker_gateway::api::serve::ApiTlsConfig;
use locker_tests::cabinet::bodies::hello;
use locker_tests::cabinet::RawCabinet;
use locker_tests::edge::read_until_closed;
use locker_tests::gateway::TestGateway;
use locker_tests::pki::TestPki;
use locker_tests::wait::DEADLINE;
use locker_tests::{eventually, eventually_async};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// A client that sends half a request head and stalls.
async fn slowloris(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect to the API");
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\nX-Slow: ")
        .await
        .expect("write half a head");
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_after_the_header_timeout_while_others_are_served() {
    let pki = TestPki::new();
    let gw = TestGateway::start_with(&pki, |c| c.api.header_read_timeout_ms = 300).await;
    let addr = gw.gw.api_addr;

    let mut slow = Vec::new();
    for _ in 0..20 {
        slow.push(slowloris(addr).await);
    }
    // everyone else is served meanwhile
    let (status, _) = gw.api.get("/v1/cabinets").await;
    assert_eq!(status, 200);

    // every slow client is closed by the server (a deadline, not a timing assertion)
    for s in &mut slow {
        let got = tokio::time::timeout(DEADLINE, read_until_closed(s))
            .await
            .expect("a stalled client is closed by the API");
        assert!(
            !String::from_utf8_lossy(&got).contains("200 OK"),
            "a half request must not be answered"
        );
    }
    let refused = || {
        gw.gw
            .metrics
            .api
            .connections_refused
            .with_label_values(&["header_timeout"])
            .get()
    };
    eventually("header timeouts counted", || refused() >= 20).await;

    // the same clock closes a keep-alive connection left idle after its answer
    let mut idle = TcpStream::connect(addr).await.expect("connect");
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n")
        .await
        .expect("write a request");
    let got = read_until_closed(&mut idle).await;
    assert!(
        String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"),
        "answered, then closed when idle: {}",
        String::from_utf8_lossy(&got)
    );
    let (status, _) = gw.api.get("/v1/cabinets").await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_dripping_its_body_is_answered_408_and_closed() {
    let pki = TestPki::new();
    let gw = TestGateway::start_with(&pki, |c| {
        c.api.max_wait_ms = 100;
        c.api.request_timeout_ms = 300;
    })
    .await;
    let mut s = TcpStream::connect(gw.gw.api_addr).await.expect("connect");
    let head = format!(
        "POST /v1/cabinets/CAB-1/commands HTTP/1.1\r\nHost: gateway\r\n\
         Authorization: Bearer {}\r\ncontent-type: application/json\r\n\
         Content-Length: 1000\r\n\r\n{{\"action\": ",
        locker_tests::api::TEST_TOKEN
    );
    s.write_all(head.as_bytes()).await.expect("write head");
    let got = read_until_closed(&mut s).await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("request_timeout"), "{text}");
    let (status, _) = gw.api.get("/v1/cabinets").await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_never_reach_handlers_and_the_edge_still_accepts() {
    let mut pki = TestPki::new();
    let cert = pki.cabinet("CAB-CAP");
    let gw = TestGateway::start_with(&pki, |c| {
        c.api.max_connections = 4;
        c.api.header_read_timeout_ms = 120_000;
    })
    .await;
    let addr = gw.gw.api_addr;
    let m = gw.gw.metrics.clone();

    let mut slow = Vec::new();
    for _ in 0..4 {
        slow.push(slowloris(addr).await);
    }
    eventually("4 API connections open", || {
        m.api.connections_open.get() == 4
    })
    .await;
    let healthz = || {
        m.store
            .api_requests
            .with_label_values(&["/healthz", "2xx"])
            .get()
    };
    let served_before = healthz();

    // a fifth, complete request is closed without an answer
    let mut extra = TcpStream::connect(addr).await.expect("connect");
    let _ = extra
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n")
        .await;
    let got = tokio::time::timeout(DEADLINE, read_until_closed(&mut extra))
        .await
        .expect("the extra connection is closed");
    assert!(got.is_empty(), "no answer beyond the cap: {got:?}");
    assert_eq!(healthz(), served_before, "no handler ran");
    assert!(
        m.api
            .connections_refused
            .with_label_values(&["too_many_connections"])
            .get()
            >= 1
    );
    assert!(gw.api.try_get("/healthz").await.is_err());

    // the MQTT edge still takes a cabinet, and its events are stored
    let cab = RawCabinet::connect(&pki, &cert, "CAB-CAP", gw.edge_addr());
    eventually("cabinet connected", || cab.connected()).await;
    cab.send(&cab.uplink(1, hello(1))).await;
    eventually("hello acknowledged", || cab.acked() >= 1).await;

    // once the slow clients go, the API answers again
    drop(slow);
    let api = gw.api.clone();
    eventually_async("API answers after the slow clients left", || {
        let api = api.clone();
        async move {
            match api.try_get("/v1/cabinets/CAB-CAP").await {
                Ok((200, c)) => Some(c),
                _ => None,
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_is_served_over_tls_to_a_client_that_trusts_the_fleet_ca() {
    let pki = TestPki::new();
    let paths = pki.pki.paths();
    let gw = TestGateway::start_with(&pki, |c| {
        c.api.tls = Some(ApiTlsConfig {
            cert: paths.server_cert(),
            key: paths.server_key(),
        })
    })
    .await;

    let (status, body) = gw.api.get("/v1/cabinets").await;
    assert_eq!(status, 200, "{body}");
    assert!(body["cabinets"].is_array());
    assert!(gw
        .api
        .metrics()
        .await
        .contains("locker_api_connections_open"));

    // plain HTTP on the TLS port gets no answer (the bearer token never travels in clear)
    let plain = locker_tests::api::ApiClient::new(gw.gw.api_addr, "x");
    assert!(plain.try_get("/healthz").await.is_err());
    eventually("the failed handshake is counted", || {
        gw.gw
            .metrics
            .api
            .connections_refused
            .with_label_values(&["tls_handshake"])
            .get()
            >= 1
    })
    .await;
}
