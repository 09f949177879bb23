//! The fleet simulator at small scale against the real gateway (in-process: mTLS edge, embedded
//! broker, ingest, sled, API, parcel domain): real agents with simulated boards over in-process
//! Modbus, carriers creating real orders, couriers depositing by remote unlock, recipients
//! typing the codes the notification outbox gave them (delivered to the cabinets by the
//! gateway over `down/creds`), pickups while a cabinet is offline, an outage, nightfall on the
//! solar cabinets and a gateway restart; the invariant report must be clean, the rules engine's
//! alerts included (the outage's `offline` alerts, a power alert after nightfall).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::Ordering;
use std::time::Duration;

use locker_sim::fleet::alerts::Night;
use locker_sim::fleet::report::Report;
use locker_sim::fleet::{self, Fleet, FleetOptions, GatewayMode};

/// The outage raised one `offline` alert per cabinet it cut, when it lasted long enough for
/// the scaled rule (measured by the simulator from its timeline; the report already counts a
/// missing, doubled or early-cleared alert as a violation).
fn assert_outage_alerts(fleet: &Fleet, report: &Report) {
    let t = fleet.timeline.facts();
    let rules = t.rules.clone().expect("the simulator's rules");
    let need = rules.offline_after_ms + rules.offline_slack_ms();
    let long: usize = t
        .outages
        .iter()
        .flat_map(|o| {
            o.cabinets
                .iter()
                .map(move |(_, down)| down.saturating_sub(o.cut_ms))
        })
        .filter(|off| *off >= need)
        .count();
    assert!(!t.outages.is_empty(), "the script ran an outage");
    assert_eq!(report.alerts.offline_expected, long as u64, "{report}");
    assert_eq!(report.alerts.offline_found, long as u64, "{report}");
    if long > 0 {
        assert!(
            report.alerts.by_kind.get("offline").copied().unwrap_or(0) >= long as u64,
            "{report}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_cabinets_follow_real_orders_with_an_offline_pickup() {
    let dir = tempfile::tempdir().unwrap();
    let opts = FleetOptions {
        activity_per_min: 90.0,
        outage_share: 0.4,
        outage_at: 0.6,
        outage_for: Duration::from_secs(4),
        ..FleetOptions::for_tests(5, dir.path().join("fleet"))
    };
    let token = "fleet-test-token-0123456789";
    let mut l = fleet::launch(opts, &dir.path().join("pki"), GatewayMode::InProcess, token)
        .await
        .expect("launch");
    l.fleet.ramp_up().await.expect("agents start");
    let log = fleet::script::run(
        &l.fleet,
        &mut l.gateway,
        Duration::from_secs(14),
        std::future::pending(),
        |_, _, _| {},
    )
    .await;
    let what: Vec<&str> = log.iter().map(|h| h.what.as_str()).collect();
    assert!(
        what.iter()
            .any(|w| w.starts_with("network outage: 2 cabinets")),
        "{what:?}"
    );
    assert!(
        l.fleet.settle(Duration::from_secs(40)).await,
        "fleet settles: {:?}",
        l.fleet.snapshot()
    );
    let report = l.fleet.verify().await;
    println!("{report}");
    println!("{}", l.fleet.ctx.stats);
    assert!(report.is_clean(), "{report}");
    assert_outage_alerts(&l.fleet, &report);
    assert!(report.orders_created > 0, "orders were created");
    assert!(
        report
            .orders_by_state
            .get("picked_up")
            .copied()
            .unwrap_or(0)
            > 0,
        "orders ended picked up: {report}"
    );
    assert!(
        report.pickups_offline > 0,
        "a recipient picked up while the cabinet was offline, and the cabinet reported it: {report}"
    );
    assert_eq!(report.pickups_reported, report.pickups_people);
    let stats = &l.fleet.ctx.stats;
    let n = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        n(&stats.deposits_badge) > 0 && n(&stats.deposits_api) > 0,
        "couriers deposited with badge and barcode and by remote unlock: {stats}"
    );
    l.fleet.shutdown().await;
    l.gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_fleet_run_keeps_every_invariant() {
    let dir = tempfile::tempdir().unwrap();
    let opts = FleetOptions {
        ramp: Duration::from_secs(1),
        activity_per_min: 30.0,
        outage_share: 0.25,
        outage_at: 0.2,
        outage_for: Duration::from_secs(3),
        restart_at: Some(0.6),
        nightfall_at: Some(0.4),
        solar_share: 0.3,
        // late afternoon: little sun left before nightfall, so the night's deficit shows soon
        start_hour: 17.0,
        recall_after: Duration::from_secs(20),
        ..FleetOptions::for_tests(20, dir.path().join("fleet"))
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
    // a power alert after nightfall, or the night lasted as long as the scaled rules need
    // (then the report counts its absence as a violation)
    let night_alert = l.fleet.wait_night_alert().await;
    let report = l.fleet.verify().await;
    println!("{report}");
    assert!(
        night_alert
            && matches!(report.alerts.night, Night::Alerts { cabinets, .. } if cabinets > 0),
        "nightfall raised solar_deficit or battery_low on a solar cabinet: {report}"
    );
    let (deposits, pickups) = l.fleet.ctx.stats.done();
    println!(
        "deposits {deposits}, pickups {pickups}, {:?}",
        l.fleet.ctx.stats
    );
    assert!(report.is_clean(), "{report}");
    assert_outage_alerts(&l.fleet, &report);
    assert!(deposits > 0, "some deposits happened");
    assert!(report.events_stored > 0);
    assert!(
        report.local_accesses > 0,
        "recipients picked up with their codes"
    );
    l.fleet.shutdown().await;
    l.gateway.stop().await;
}

/// Recipients who never come, with a 1-minute pickup window: the parcels really expire, the
/// cabinets refuse the old PINs, couriers collect the parcels (badge and `key:collect`, or a
/// remote unlock) and the orders end `returned`. Runs until a parcel was collected after its
/// expiry (a deadline, not a wall-time assertion).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_cabinets_let_parcels_expire_and_couriers_collect_them() {
    let dir = tempfile::tempdir().unwrap();
    let opts = FleetOptions {
        activity_per_min: 60.0,
        outage_share: 0.4,
        outage_at: 0.05,
        outage_for: Duration::from_secs(4),
        expire_share: 0.4,
        expire_window_min: 1,
        recall_share: 0.1,
        ..FleetOptions::for_tests(5, dir.path().join("fleet"))
    };
    let token = "fleet-test-token-0123456789";
    let mut l = fleet::launch(opts, &dir.path().join("pki"), GatewayMode::InProcess, token)
        .await
        .expect("launch");
    l.fleet.ramp_up().await.expect("agents start");
    let ctx = l.fleet.ctx.clone();
    // until a courier collected parcels after their window ended (at most the script's length)
    let collected = async move {
        loop {
            let n = ctx.stats.collected_expired.load(Ordering::Relaxed);
            if n >= 2 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let log = fleet::script::run(
        &l.fleet,
        &mut l.gateway,
        Duration::from_secs(300),
        collected,
        |_, _, _| {},
    )
    .await;
    let what: Vec<&str> = log.iter().map(|h| h.what.as_str()).collect();
    assert!(
        what.iter().any(|w| w.starts_with("stopped")),
        "parcels expired and were collected before the deadline: {what:?} {}",
        l.fleet.ctx.stats
    );
    assert!(
        l.fleet.settle(Duration::from_secs(40)).await,
        "fleet settles: {:?}",
        l.fleet.snapshot()
    );
    let report = l.fleet.verify().await;
    println!("{report}");
    println!("{}", l.fleet.ctx.stats);
    assert!(report.is_clean(), "{report}");
    assert!(report.expired_seen > 0, "{report}");
    assert!(
        report.expired_returned > 0,
        "an order went expired -> returned: {report}"
    );
    assert!(
        report.late_pins_tried > 0 && report.late_pins_refused == report.late_pins_tried,
        "the old PINs were refused: {report}"
    );
    l.fleet.shutdown().await;
    l.gateway.stop().await;
}

/// The offline collection path runs: parcels expire (a 1-minute pickup window, recipients
/// who never come), their cabinets get the collect credentials, then a network outage cuts
/// cabinets off and couriers collect expired parcels there with badge and `key:collect` from
/// the cached set. Runs until a collection happened while its cabinet was offline (a deadline,
/// not a wall-time assertion); the report must stay clean once the cabinets are back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_cabinets_collect_expired_parcels_while_offline() {
    let dir = tempfile::tempdir().unwrap();
    let opts = FleetOptions {
        activity_per_min: 60.0,
        // the outage comes once the first parcels expired (after about 70 s of 300)
        outage_share: 0.6,
        outage_at: 0.25,
        outage_for: Duration::from_secs(60),
        expire_share: 0.8,
        expire_window_min: 1,
        recall_share: 0.0,
        ..FleetOptions::for_tests(5, dir.path().join("fleet"))
    };
    let token = "fleet-test-token-0123456789";
    let mut l = fleet::launch(opts, &dir.path().join("pki"), GatewayMode::InProcess, token)
        .await
        .expect("launch");
    l.fleet.ramp_up().await.expect("agents start");
    let ctx = l.fleet.ctx.clone();
    let offline = async move {
        while ctx.stats.collected_offline.load(Ordering::Relaxed) == 0 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let log = fleet::script::run(
        &l.fleet,
        &mut l.gateway,
        Duration::from_secs(300),
        offline,
        |_, _, _| {},
    )
    .await;
    let what: Vec<&str> = log.iter().map(|h| h.what.as_str()).collect();
    let stats = &l.fleet.ctx.stats;
    assert!(
        stats.collected_offline.load(Ordering::Relaxed) > 0,
        "a courier collected an expired parcel at an offline cabinet: {what:?} {stats}"
    );
    assert!(
        l.fleet.settle(Duration::from_secs(40)).await,
        "fleet settles: {:?}",
        l.fleet.snapshot()
    );
    let report = l.fleet.verify().await;
    println!("{report}");
    println!("{}", l.fleet.ctx.stats);
    assert!(report.is_clean(), "{report}");
    assert!(report.expired_returned > 0, "{report}");
    l.fleet.shutdown().await;
    l.gateway.stop().await;
}
