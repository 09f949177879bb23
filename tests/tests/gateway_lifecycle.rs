//! The gateway's life cycle: a clean shutdown leaves every component's state on disk (the
//! fleet's final snapshot included), and `locker-gateway --check` refuses, naming the key and
//! the file, what would fail at start.

use std::path::Path;
use std::process::{Command, Output};

use locker_gateway::config::GatewayConfig;
use locker_gateway::model::CabinetSnapshot;
use locker_gateway::store::Store;
use locker_schemas::{CompartmentId, CompartmentInfo, Hello, NetworkKind, Size, UplinkBody};
use locker_tests::cabinet::RawCabinet;
use locker_tests::gateway::{test_config, workspace_bin, TestGateway};
use locker_tests::pki::TestPki;
use locker_tests::{eventually, eventually_async};

fn hello() -> UplinkBody {
    UplinkBody::Hello(Hello {
        firmware: "lifecycle 1".into(),
        hardware: "raw".into(),
        compartments: (1..=2)
            .map(|i| CompartmentInfo {
                id: CompartmentId(i),
                size: Size::S,
            })
            .collect(),
        network: NetworkKind::Lan,
        creds_version: 0,
    })
}

/// The snapshots a stopped gateway left in its database (waits for the database lock, which
/// blocking calls of the stopped instance may hold for a moment).
async fn saved_snapshots(data: &Path) -> Vec<CabinetSnapshot> {
    let path = data.join("gateway.sled");
    let store = eventually_async("the stopped gateway's database opens", || {
        let path = path.clone();
        async move { Store::open(&path).ok() }
    })
    .await;
    store
        .load_cabinets()
        .expect("load cabinets")
        .into_iter()
        .map(|(s, _)| s)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_saves_the_fleets_final_snapshot() {
    let mut pki = TestPki::new();
    let cert = pki.cabinet("CAB-SNAP");
    let gw = TestGateway::start(&pki).await;
    let cab = RawCabinet::connect(&pki, &cert, "CAB-SNAP", gw.edge_addr());
    eventually("cabinet connected", || cab.connected()).await;
    cab.send(&cab.uplink(1, hello())).await;
    eventually("hello acknowledged", || cab.acked() >= 1).await;

    // Shut down at once: what the fleet learnt since its last periodic save (the hello, and
    // the connection the edge closes while stopping) is only on disk if the fleet saved its
    // final snapshot.
    let TestGateway { gw, data, .. } = gw;
    gw.shutdown().await;

    let snaps = saved_snapshots(data.path()).await;
    let snap = snaps
        .iter()
        .find(|s| s.id.as_str() == "CAB-SNAP")
        .expect("the cabinet's snapshot");
    assert_eq!(
        snap.firmware, "lifecycle 1",
        "the hello is in the final snapshot"
    );
    assert_eq!(snap.compartments.len(), 2);
    assert!(
        !snap.online,
        "the connection the edge closed at shutdown is in the final snapshot"
    );
}

/// Runs `locker-gateway --check` on `cfg` written as TOML.
fn check(cfg: &GatewayConfig, dir: &Path) -> Output {
    let path = dir.join("gateway.toml");
    std::fs::write(&path, toml::to_string(cfg).expect("config to TOML")).expect("write config");
    Command::new(workspace_bin("locker-gateway", "locker-gateway"))
        .arg("--config")
        .arg(&path)
        .arg("--check")
        .env("RUST_LOG", "warn")
        .output()
        .expect("run locker-gateway --check")
}

#[test]
fn check_accepts_a_good_configuration_and_names_what_would_fail_at_start() {
    let pki = TestPki::new();
    let dir = tempfile::tempdir().expect("temp dir");
    let good = test_config(&pki, &dir.path().join("data"));
    let out = check(&good, dir.path());
    assert!(
        out.status.success(),
        "a good configuration passes: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let missing = dir.path().join("nowhere").join("server.key");
    let mut cfg = good.clone();
    cfg.edge.server_key = missing.clone();
    let out = check(&cfg, dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a missing key file fails the check");
    assert!(
        stderr.contains("edge.server_key") && stderr.contains(&missing.display().to_string()),
        "the error names the key and the file: {stderr}"
    );

    let mut cfg = good.clone();
    cfg.edge.crl = Some(dir.path().join("no-crl.pem"));
    let out = check(&cfg, dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a missing CRL fails the check");
    assert!(stderr.contains("no-crl.pem"), "{stderr}");

    for (key, tweak) in [
        (
            "ingest.max_batch",
            (|c: &mut GatewayConfig| c.ingest.max_batch = 0) as fn(&mut GatewayConfig),
        ),
        ("broker.max_inflight_count", |c| {
            c.broker.max_inflight_count = 0
        }),
        ("commands.tick_ms", |c| c.commands.tick_ms = 0),
        ("shutdown_grace_ms", |c| c.shutdown_grace_ms = 0),
    ] {
        let mut cfg = good.clone();
        tweak(&mut cfg);
        let out = check(&cfg, dir.path());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{key} = 0 fails the check");
        assert!(stderr.contains(key), "the error names {key}: {stderr}");
    }
}
