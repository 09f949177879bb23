//! Edge authentication: only certificates of the fleet CA that are not revoked reach the
//! broker; revoking a connected client's certificate disconnects it (and a resumed TLS session
//! does not get around the CRL); an older CRL never replaces a newer one; a client cut off by
//! revocation or expiry leaves no will; a connection ends when its certificate does, and an
//! expired certificate cannot come back through TLS session resumption.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use locker_broker_config::pki::Pki;
use locker_schemas::CabinetId;
use locker_tests::edge::*;
use locker_tests::eventually;
use rumqttc::{LastWill, QoS};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_without_a_valid_certificate_never_reach_the_broker() {
    let mut fx = EdgeFixture::start(|_| {}).await;

    // No certificate at all.
    let none = fx.client("nobody", None);
    none.wait_failed("client without certificate refused").await;
    eventually("no_cert counted", || fx.rejections("no_cert") >= 1).await;

    // A certificate from another CA (with a valid-looking identity).
    let other_dir = tempfile::tempdir().expect("temp dir");
    let mut other = Pki::init(other_dir.path(), &["localhost".into()]).expect("other PKI");
    let foreign = other
        .issue_cabinet(&CabinetId::new("CAB-1").expect("id"))
        .expect("foreign cert");
    let c = fx.client("CAB-1", Some(&foreign));
    c.wait_failed("foreign certificate refused").await;
    eventually("bad_cert counted", || fx.rejections("bad_cert") >= 1).await;

    // A revoked certificate of our own CA.
    let revoked = fx.cabinet("CAB-R");
    fx.pki.revoke("CAB-R");
    fx.edge.reload_revocations().await.expect("reload");
    let r = fx.client("CAB-R", Some(&revoked));
    r.wait_failed("revoked certificate refused").await;
    eventually("revoked counted", || fx.rejections("revoked") >= 1).await;

    for c in [&none, &c, &r] {
        assert_eq!(
            c.seen().connacks,
            0,
            "a refused client never gets a CONNACK"
        );
    }
    assert!(fx.edge.connected().await.is_empty());
    assert!(fx.presence().is_empty());

    // A valid cabinet still gets in.
    let ok = fx.cabinet("CAB-2");
    let good = fx.client("whatever", Some(&ok));
    good.wait_connected("valid cabinet connects").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_connected_cabinet_disconnects_it_and_resumption_does_not_help() {
    let mut fx = EdgeFixture::start(|_| {}).await;
    let a = fx.cabinet("CAB-A");
    let b = fx.cabinet("CAB-B");
    let tls_a = fx.tls(Some(&a));
    let ca = Client::start(mqtt_options("CAB-A", fx.addr, tls_a.clone()));
    let cb = fx.client("CAB-B", Some(&b));
    ca.wait_connected("A connects").await;
    cb.wait_connected("B connects").await;
    fx.wait_connected(2).await;

    // Revoke A: the edge notices the new crl.pem by itself (polling).
    fx.pki.revoke("CAB-A");
    ca.wait_failed("A is disconnected after revocation").await;
    eventually("revocation counted", || fx.rejections("revoked") >= 1).await;
    fx.wait_connected(1).await;
    assert!(cb.connected(), "B is unaffected");
    let listed = fx.edge.connected().await;
    assert_eq!(listed[0].identity.to_string(), "CAB-B");
    eventually("A offline", || {
        fx.presence()
            .iter()
            .any(|p| p.cabinet.as_str() == "CAB-A" && !p.online)
    })
    .await;

    // Reconnecting with the same client TLS config (which holds a resumption ticket) is
    // still refused.
    let before = fx.rejections("revoked");
    let again = Client::start(mqtt_options("CAB-A", fx.addr, tls_a));
    again.wait_failed("revoked A cannot come back").await;
    eventually("refusal counted", || fx.rejections("revoked") > before).await;
    assert_eq!(again.seen().connacks, 0);
    assert!(
        fx.metric(
            "locker_edge_tls_handshakes_total",
            Some(("kind", "resumed"))
        ) >= 1,
        "the refused reconnect resumed its TLS session"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_crl_is_refused_and_the_previous_one_kept() {
    let mut fx = EdgeFixture::start(|_| {}).await;
    let (good, bad) = (fx.cabinet("CAB-G"), fx.cabinet("CAB-X"));
    fx.pki.revoke("CAB-X");
    fx.edge.reload_revocations().await.expect("reload");
    let crl_path = fx.pki.pki.paths().crl();

    // A CRL from another CA, then plain garbage: both refused, the old list stays.
    let other_dir = tempfile::tempdir().expect("temp dir");
    let other = Pki::init(other_dir.path(), &["localhost".into()]).expect("other PKI");
    let foreign = std::fs::read(other.paths().crl()).expect("foreign CRL");
    for content in [foreign, b"not a CRL".to_vec()] {
        std::fs::write(&crl_path, content).expect("write crl");
        assert!(fx.edge.reload_revocations().await.is_err());
    }
    assert!(fx.metric("locker_edge_crl_reloads_total", Some(("result", "error"))) >= 2);
    let x = fx.client("CAB-X", Some(&bad));
    x.wait_failed("still revoked").await;
    let g = fx.client("CAB-G", Some(&good));
    g.wait_connected("others still get in").await;

    // Rewriting a valid CRL (by revoking another identity) is picked up by the poller.
    fx.pki.revoke("CAB-G");
    g.wait_failed("G disconnected once a valid CRL is back")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_crl_is_refused_and_the_installed_one_kept() {
    let mut fx = EdgeFixture::start(|_| {}).await;
    let (a, b) = (fx.cabinet("CAB-A"), fx.cabinet("CAB-B"));
    let crl_path = fx.pki.pki.paths().crl();
    fx.pki.revoke("CAB-A");
    fx.edge.reload_revocations().await.expect("reload");
    let older = std::fs::read(&crl_path).expect("CRL");
    let older_number = fx.metric("locker_edge_crl_number", None);
    assert!(older_number >= 1);
    fx.pki.revoke("CAB-B");
    fx.edge.reload_revocations().await.expect("reload");
    assert_eq!(fx.metric("locker_edge_crl_number", None), older_number + 1);
    let newer = std::fs::read(&crl_path).expect("CRL");

    // The same CRL again is a no-op.
    assert_eq!(fx.edge.reload_revocations().await.expect("no-op"), 0);

    // The older CRL (validly signed, but it does not revoke B) put back: refused.
    std::fs::write(&crl_path, &older).expect("write older CRL");
    let err = fx
        .edge
        .reload_revocations()
        .await
        .expect_err("older CRL refused");
    assert!(err.to_string().contains("CRL Number"), "{err}");
    assert!(fx.metric("locker_edge_crl_reloads_total", Some(("result", "stale"))) >= 1);
    assert_eq!(fx.metric("locker_edge_crl_number", None), older_number + 1);
    let cb = fx.client("CAB-B", Some(&b));
    cb.wait_failed("B stays revoked").await;
    let ca = fx.client("CAB-A", Some(&a));
    ca.wait_failed("A stays revoked").await;

    // The newer one back in place: nothing to do; `refresh-crl` moves on.
    std::fs::write(&crl_path, &newer).expect("write newer CRL");
    assert_eq!(fx.edge.reload_revocations().await.expect("same CRL"), 0);
    let next = fx.pki.pki.refresh_crl().expect("refresh");
    fx.edge.reload_revocations().await.expect("refreshed CRL");
    assert_eq!(fx.metric("locker_edge_crl_number", None), next);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cut_off_by_revocation_publishes_no_will() {
    let mut fx = EdgeFixture::start(|_| {}).await;
    let obs = fx.observer(&["lk/v1/+/up/#"]).await;
    let (a, b) = (fx.cabinet("CAB-A"), fx.cabinet("CAB-B"));
    let with_will = |id: &str, cert| {
        let mut o = mqtt_options(id, fx.addr, fx.tls(Some(cert)));
        let topic = format!("lk/v1/{id}/up/network");
        o.set_last_will(LastWill::new(topic, "gone", QoS::AtMostOnce, false));
        Client::start(o)
    };
    let ca = with_will("CAB-A", &a);
    let cb = with_will("CAB-B", &b);
    ca.wait_connected("A").await;
    cb.wait_connected("B").await;

    fx.pki.revoke("CAB-A");
    fx.edge.reload_revocations().await.expect("reload");
    ca.wait_failed("A cut off").await;
    fx.wait_connected(1).await;

    // B, closed on demand (not revoked), leaves its will: once it is there, A's would be too.
    fx.edge
        .disconnect(&locker_gateway::edge::Identity::Cabinet(
            CabinetId::new("CAB-B").expect("id"),
        ))
        .await;
    eventually("B's will", || obs.received("lk/v1/CAB-B/up/network") == 1).await;
    assert_eq!(obs.received("lk/v1/CAB-A/up/network"), 0, "no will from A");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_ends_with_its_certificate_and_resumption_cannot_extend_it() {
    let mut fx = EdgeFixture::start(|_| {}).await;
    let obs = fx.observer(&["lk/v1/+/up/#"]).await;
    let a = fx.cabinet_valid_for("CAB-A", 3);
    let b = fx.cabinet("CAB-B");
    let tls_a = fx.tls(Some(&a));
    let with_will = |id: &str, tls| {
        let mut o = mqtt_options(id, fx.addr, tls);
        let topic = format!("lk/v1/{id}/up/network");
        o.set_last_will(LastWill::new(topic, "gone", QoS::AtMostOnce, false));
        Client::start(o)
    };
    let ca = with_will("CAB-A", tls_a.clone());
    let cb = with_will("CAB-B", fx.tls(Some(&b)));
    ca.wait_connected("A connects while its certificate is valid")
        .await;
    cb.wait_connected("B").await;
    ca.wait_failed("A is closed when its certificate expires")
        .await;
    eventually("counted", || fx.rejections("cert_expired") == 1).await;
    fx.wait_connected(1).await;
    assert!(cb.connected(), "B is unaffected");

    // No will for A (B's, closed on demand, shows that wills flow: A's would be there first).
    fx.edge
        .disconnect(&locker_gateway::edge::Identity::Cabinet(
            CabinetId::new("CAB-B").expect("id"),
        ))
        .await;
    eventually("B's will", || obs.received("lk/v1/CAB-B/up/network") == 1).await;
    assert_eq!(obs.received("lk/v1/CAB-A/up/network"), 0, "no will from A");

    // Reconnecting with the TLS config that holds A's resumption ticket: refused all the same.
    let again = Client::start(mqtt_options("CAB-A", fx.addr, tls_a));
    again.wait_failed("expired A cannot resume").await;
    eventually("refusal counted", || fx.rejections("cert_expired") == 2).await;
    assert_eq!(again.seen().connacks, 0);
    assert!(
        fx.metric(
            "locker_edge_tls_handshakes_total",
            Some(("kind", "resumed"))
        ) >= 1,
        "the refused reconnect resumed its TLS session"
    );
}
