//! Admission control at the ClientHello (`edge.max_handshakes_in_progress`): when that many
//! TLS handshakes are running, a new one is closed at once and counted as `busy` (the client
//! retries after its backoff) instead of every handshake slowing down together; a client that
//! offers a session to resume (it was connected before) may use all the places, one that
//! offers nothing only half. And what each handshake costs: the edge picks the SHA-256 suite
//! (hardware-accelerated) whatever the client prefers, and hands out spare tickets.

use locker_tests::edge::*;
use locker_tests::eventually;

const CONNACK_OK: [u8; 4] = [0x20, 0x02, 0x00, 0x00];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_limit_new_handshakes_are_refused_at_once_and_resuming_ones_preferred() {
    let mut fx = EdgeFixture::start(|c| {
        c.max_handshakes_in_progress = 2;
        c.admission_hold_ms = 60_000;
        c.tls_timeout_ms = 60_000;
        c.handshake_timeout_ms = 60_000;
    })
    .await;
    let (a, b) = (fx.cabinet("CAB-A"), fx.cabinet("CAB-B"));
    let a_tls = fx.tls(Some(&a));

    // A connects once (a full handshake) and so holds a ticket.
    let mut s = raw_tls(fx.addr, a_tls.clone()).await.expect("TLS");
    send(&mut s, &connect_bytes("CAB-A", false)).await;
    assert_eq!(read_exact(&mut s, 4).await, CONNACK_OK);
    drop(s);
    fx.wait_connected(0).await;

    // One client stalls in its handshake after the ClientHello: the one place a handshake
    // that resumes nothing may take (half of 2) is used.
    let _stalled = stalled_after_hello(fx.addr, fx.tls(Some(&b))).await;
    eventually("the stalled handshake is admitted", || {
        fx.metric("locker_edge_handshakes_in_flight", None) == 1
    })
    .await;

    // A new full handshake is refused at once (not after a deadline) and counted.
    let refused = raw_tls(fx.addr, fx.tls(Some(&b))).await;
    assert!(refused.is_err(), "refused: {:?}", refused.map(|_| ()));
    eventually("counted as busy", || fx.rejections("busy") == 1).await;

    // A, offering its ticket, is let in and resumes.
    let mut s = raw_tls(fx.addr, a_tls).await.expect("A resumes while busy");
    send(&mut s, &connect_bytes("CAB-A", false)).await;
    assert_eq!(read_exact(&mut s, 4).await, CONNACK_OK);
    assert_eq!(
        fx.metric(
            "locker_edge_tls_handshakes_total",
            Some(("kind", "resumed"))
        ),
        1
    );
    assert_eq!(fx.rejections("busy"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_admission_off_a_stalled_handshake_refuses_no_one() {
    let mut fx = EdgeFixture::start(|c| c.max_handshakes_in_progress = 0).await;
    let b = fx.cabinet("CAB-B");
    let _stalled: Vec<_> =
        futures::future::join_all((0..3).map(|_| stalled_after_hello(fx.addr, fx.tls(Some(&b)))))
            .await;
    let c = fx.cabinet("CAB-C");
    let mut s = raw_tls(fx.addr, fx.tls(Some(&c))).await.expect("TLS");
    send(&mut s, &connect_bytes("CAB-C", false)).await;
    assert_eq!(read_exact(&mut s, 4).await, CONNACK_OK);
    assert_eq!(fx.rejections("busy"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_picks_aes128_sha256_and_hands_out_spare_tickets() {
    let mut fx = EdgeFixture::start(|_| {}).await;
    let a = fx.cabinet("CAB-A");
    // A stock rustls client prefers AES-256-GCM-SHA384; the edge's order wins.
    let mut s = raw_tls(fx.addr, fx.tls(Some(&a))).await.expect("TLS");
    let suite = s.get_ref().1.negotiated_cipher_suite().map(|c| c.suite());
    assert_eq!(suite, Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256));
    send(&mut s, &connect_bytes("CAB-A", false)).await;
    assert_eq!(read_exact(&mut s, 4).await, CONNACK_OK);
    // Four tickets came with the handshake: four attempts can resume (one per attempt, also
    // one refused as busy).
    let tls = fx.tls(Some(&a));
    let first = raw_tls(fx.addr, tls.clone()).await.expect("TLS");
    let mut first = first;
    send(&mut first, &connect_bytes("CAB-A", false)).await;
    assert_eq!(read_exact(&mut first, 4).await, CONNACK_OK);
    drop(first);
    for n in 1..=4u64 {
        let s = raw_tls(fx.addr, tls.clone()).await.expect("TLS");
        drop(s);
        eventually("resumed", || {
            fx.metric(
                "locker_edge_tls_handshakes_total",
                Some(("kind", "resumed")),
            ) == n
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_handshake_gives_its_place_back_after_the_hold() {
    let mut fx = EdgeFixture::start(|c| {
        c.max_handshakes_in_progress = 2;
        c.admission_hold_ms = 200;
        c.tls_timeout_ms = 60_000;
        c.handshake_timeout_ms = 60_000;
    })
    .await;
    let (b, c) = (fx.cabinet("CAB-B"), fx.cabinet("CAB-C"));
    // A stalled handshake takes the one place a full handshake may use (half of 2) ...
    let _stalled = stalled_after_hello(fx.addr, fx.tls(Some(&b))).await;
    // ... and gives it back 200 ms after it was admitted: a new full handshake is refused
    // until then (maybe not at all on a slow machine), and gets in while the stall is still
    // open.
    let started = std::time::Instant::now();
    let mut refused = 0;
    let mut s = loop {
        match raw_tls(fx.addr, fx.tls(Some(&c))).await {
            Ok(s) => break s,
            Err(_) => {
                refused += 1;
                assert!(
                    started.elapsed() < std::time::Duration::from_secs(30),
                    "the stalled handshake never gave its place back"
                );
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    };
    send(&mut s, &connect_bytes("CAB-C", false)).await;
    assert_eq!(read_exact(&mut s, 4).await, CONNACK_OK);
    assert_eq!(fx.rejections("busy"), refused);
    assert_eq!(
        fx.metric("locker_edge_handshakes_in_flight", None),
        1,
        "the stall is still open"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_certificate_gets_the_certificate_revoked_alert_in_the_handshake() {
    use tokio::io::AsyncReadExt;
    // The edge checks revocation against the serials of the CRL it verified once (not by
    // verifying the CRL's signature again in every handshake); the client still learns why.
    let mut fx = EdgeFixture::start(|_| {}).await;
    let r = fx.cabinet("CAB-R");
    fx.pki.revoke("CAB-R");
    fx.edge.reload_revocations().await.expect("reload");
    let err = match raw_tls(fx.addr, fx.tls(Some(&r))).await {
        // TLS 1.3: the client may finish its side first; the alert comes with the next read.
        Ok(mut s) => {
            let mut b = [0u8; 8];
            s.read(&mut b).await.expect_err("refused")
        }
        Err(e) => e,
    };
    assert!(
        format!("{err:?}").contains("CertificateRevoked"),
        "alert: {err:?}"
    );
    eventually("counted", || fx.rejections("revoked") == 1).await;
}
