//! The fleet simulator at small scale against the real gateway (in-process: mTLS edge, embedded
//! broker, ingest, sled, API): 20 real agents with simulated boards over in-process Modbus,
//! couriers and recipients, an outage for a quarter of the fleet, nightfall on the solar
//! cabinets and a gateway restart; the invariant report from the gateway's API must be clean.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use locker_sim::fleet::{self, FleetOptions, GatewayMode};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_fleet_run_keeps_every_invariant() {
    let dir = tempfile::tempdir().unwrap();
    let opts = FleetOptions {
        cabinets: 20,
        state_dir: dir.path().join("fleet"),
        ramp: Duration::from_secs(1),
        activity_per_min: 30.0,
        outage_share: 0.25,
        outage_at: 0.2,
        outage_for: Duration::from_secs(3),
        restart_at: Some(0.6),
        nightfall_at: Some(0.4),
        solar_share: 0.3,
        backoff_base_ms: 100,
        backoff_max_ms: 1_000,
        auto_close: Duration::from_millis(800),
        ..FleetOptions::default()
    };
    let token = "fleet-test-token-0123456789";
    let mut l = fleet::launch(opts, &dir.path().join("pki"), GatewayMode::InProcess, token)
        .await
        .expect("launch");
    l.fleet.ramp_up().await.expect("agents start");
    let log = fleet::script::run(
        &l.fleet,
        &mut l.gateway,
        Duration::from_secs(12),
        std::future::pending(),
        |_, _, _| {},
    )
    .await;
    let what: Vec<&str> = log.iter().map(|h| h.what.as_str()).collect();
    assert!(
        what.iter()
            .any(|w| w.starts_with("network outage: 5 cabinets")),
        "{what:?}"
    );
    assert!(
        what.iter().any(|w| w.starts_with("gateway restarted")),
        "{what:?}"
    );
    assert!(
        l.fleet.settle(Duration::from_secs(40)).await,
        "fleet settles: {:?}",
        l.fleet.snapshot()
    );
    let report = l.fleet.verify().await;
    println!("{report}");
    let (deposits, pickups) = l.fleet.ctx.stats.done();
    println!(
        "deposits {deposits}, pickups {pickups}, {:?}",
        l.fleet.ctx.stats
    );
    assert!(report.is_clean(), "{report}");
    assert!(deposits > 0, "some deposits happened");
    assert!(report.events_stored > 0);
    assert!(report.local_accesses > 0, "offline-capable access happened");
    l.fleet.shutdown().await;
    l.gateway.stop().await;
}
