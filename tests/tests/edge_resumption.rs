//! TLS session resumption between real agents and the real gateway (issue 13): a reconnecting
//! agent resumes its TLS session (an abbreviated handshake, counted in
//! `locker_edge_tls_handshakes_total{kind="resumed"}`); a revoked cabinet holding tickets is
//! refused on its resumed handshakes after the CRL reload; the session cache resumes clients
//! when tickets are off; with both off every handshake is a full one; tickets survive a restart
//! (the keys are kept in the data directory) while a cabinet revoked meanwhile stays out.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use locker_gateway::edge::Identity;
use locker_schemas::CabinetId;
use locker_tests::agent::TestCabinet;
use locker_tests::eventually_async;
use locker_tests::gateway::TestGateway;
use locker_tests::pki::TestPki;

const FULL: &str = r#"locker_edge_tls_handshakes_total{kind="full"}"#;
const RESUMED: &str = r#"locker_edge_tls_handshakes_total{kind="resumed"}"#;
const CABINET_SESSIONS: &str = r#"locker_edge_sessions_total{role="cabinet"}"#;

/// Waits until `sample` in the gateway's /metrics is at least `n`.
async fn metric_at_least(gw: &TestGateway, sample: &'static str, n: f64) {
    eventually_async(&format!("{sample} >= {n}"), || {
        let api = gw.api.clone();
        async move { (api.metric(sample).await >= n).then_some(()) }
    })
    .await;
}

/// Waits until the gateway has accepted `n` cabinet sessions in all.
async fn sessions(gw: &TestGateway, n: f64) {
    metric_at_least(gw, CABINET_SESSIONS, n).await;
}

fn identity(id: &str) -> Identity {
    Identity::Cabinet(CabinetId::new(id).expect("cabinet id"))
}

/// Closes the cabinet's connection at the edge; the agent reconnects by itself.
async fn drop_connection(gw: &TestGateway, id: &str) {
    eventually_async(&format!("{id}'s connection closed"), || {
        let (edge, who) = (gw.gw.edge.clone(), identity(id));
        async move { (edge.disconnect(&who).await == 1).then_some(()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnecting_agent_resumes_its_tls_session() {
    let mut pki = TestPki::new();
    let gw = TestGateway::start(&pki).await;
    let _cab = TestCabinet::start(&mut pki, "CAB-1", gw.edge_addr()).await;
    sessions(&gw, 1.0).await;
    assert_eq!(
        gw.api.metric(FULL).await,
        1.0,
        "the first connect is a full handshake"
    );
    assert_eq!(gw.api.metric(RESUMED).await, 0.0);

    // The agent keeps its TLS configuration (and the tickets it got) across reconnects.
    for n in 2..=3 {
        drop_connection(&gw, "CAB-1").await;
        sessions(&gw, f64::from(n)).await;
        assert_eq!(
            gw.api.metric(RESUMED).await,
            f64::from(n - 1),
            "reconnect {} resumed",
            n - 1
        );
    }
    assert_eq!(gw.api.metric(FULL).await, 1.0, "no further full handshake");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_cabinet_cannot_resume_after_the_crl_reload() {
    let mut pki = TestPki::new();
    let gw = TestGateway::start(&pki).await;
    let cab = TestCabinet::start(&mut pki, "CAB-R", gw.edge_addr()).await;
    let other = TestCabinet::start(&mut pki, "CAB-OK", gw.edge_addr()).await;
    sessions(&gw, 2.0).await;
    // A resumed reconnect first: CAB-R holds working tickets.
    drop_connection(&gw, "CAB-R").await;
    sessions(&gw, 3.0).await;
    let resumed = gw.api.metric(RESUMED).await;
    assert!(resumed >= 1.0, "CAB-R resumed before its revocation");

    pki.revoke("CAB-R");
    gw.gw.edge.reload_revocations().await.expect("CRL reload");
    // The connected CAB-R is cut off; its reconnects resume (with tickets from before the
    // revocation) and are refused all the same.
    metric_at_least(
        &gw,
        r#"locker_edge_rejections_total{reason="revoked"}"#,
        2.0,
    )
    .await;
    metric_at_least(&gw, RESUMED, resumed + 1.0).await;
    assert_eq!(
        gw.api.metric(CABINET_SESSIONS).await,
        3.0,
        "no session accepted after the revocation"
    );
    assert!(!cab.status().mqtt_connected);
    assert!(other.status().mqtt_connected, "CAB-OK is unaffected");
    let connected = gw.gw.edge.connected().await;
    assert_eq!(connected.len(), 1);
    assert_eq!(connected[0].identity.to_string(), "CAB-OK");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_tickets_the_session_cache_resumes_and_without_both_nothing_does() {
    let mut pki = TestPki::new();
    // Tickets off, session cache on: TLS 1.3 resumes by session id.
    let gw = TestGateway::start_with(&pki, |c| {
        c.edge.tls_tickets = false;
        c.edge.tls_session_cache = 16;
    })
    .await;
    let mut cab = TestCabinet::start(&mut pki, "CAB-C", gw.edge_addr()).await;
    sessions(&gw, 1.0).await;
    drop_connection(&gw, "CAB-C").await;
    sessions(&gw, 2.0).await;
    assert_eq!(gw.api.metric(RESUMED).await, 1.0, "resumed from the cache");
    cab.stop().await;
    gw.gw.shutdown().await;

    // Both off: every reconnect is a full handshake.
    let gw = TestGateway::start_with(&pki, |c| {
        c.edge.tls_tickets = false;
        c.edge.tls_session_cache = 0;
    })
    .await;
    cab.set_edge(gw.edge_addr());
    cab.boot().await;
    sessions(&gw, 1.0).await;
    drop_connection(&gw, "CAB-C").await;
    sessions(&gw, 2.0).await;
    assert_eq!(gw.api.metric(FULL).await, 2.0);
    assert_eq!(gw.api.metric(RESUMED).await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tickets_survive_a_restart_and_a_cabinet_revoked_meanwhile_stays_out() {
    let mut pki = TestPki::new();
    let gw = TestGateway::start(&pki).await;
    let _revoked = TestCabinet::start(&mut pki, "CAB-R", gw.edge_addr()).await;
    let _ok = TestCabinet::start(&mut pki, "CAB-OK", gw.edge_addr()).await;
    sessions(&gw, 2.0).await;
    for id in ["CAB-R", "CAB-OK"] {
        drop_connection(&gw, id).await;
    }
    sessions(&gw, 4.0).await;
    assert_eq!(
        gw.api.metric(RESUMED).await,
        2.0,
        "both hold working tickets"
    );

    // Revoked while the gateway restarts (the edge reads the new CRL at start).
    pki.revoke("CAB-R");
    let gw = gw.restart().await;
    sessions(&gw, 1.0).await;
    metric_at_least(
        &gw,
        r#"locker_edge_rejections_total{reason="revoked"}"#,
        1.0,
    )
    .await;
    // The ticket keys are kept in the data directory: the cabinet resumes the session it had
    // before the restart (no full handshake in a reconnect storm), while the revoked one is
    // refused even though its ticket still opens.
    // (CAB-R keeps retrying, and each retry resumes and is refused: at least two.)
    metric_at_least(&gw, RESUMED, 2.0).await;
    assert_eq!(
        gw.api.metric(FULL).await,
        0.0,
        "no full handshake was needed"
    );
    assert_eq!(gw.api.metric(CABINET_SESSIONS).await, 1.0);
    let connected = gw.gw.edge.connected().await;
    assert_eq!(connected.len(), 1);
    assert_eq!(connected[0].identity.to_string(), "CAB-OK");
    // And the tickets issued after the restart work too.
    drop_connection(&gw, "CAB-OK").await;
    sessions(&gw, 2.0).await;
    assert_eq!(gw.api.metric(FULL).await, 0.0, "resumed again");
}
