//! The fleet simulator against a cluster: three real `nats-server` processes (JetStream, R3)
//! and three `locker-gateway` processes on them (node 1 the domain node), real agents spread
//! over the nodes' edges, carriers, couriers and recipients following real orders, an outage
//! with offline pickups, `kill -9` of a non-domain gateway node and of a NATS server (each
//! started again). The invariant report must be clean: every event once in every node's audit
//! log of every cabinet (all nodes the same), every command one outcome, no door opened twice,
//! no compartment double-booked, pickups right, alerts and webhooks as the script says.
//!
//! The only cluster test of this binary: it takes no turn (`locker_tests::nats`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use locker_sim::fleet::{self, ClusterFaults, FleetOptions, GatewayMode};
use locker_tests::gateway::workspace_bin;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_fleet_on_three_nodes_survives_a_node_and_a_nats_server_killed() {
    let dir = tempfile::tempdir().unwrap();
    let opts = FleetOptions {
        ramp: Duration::from_secs(1),
        activity_per_min: 30.0,
        outage_share: 0.25,
        outage_at: 0.15,
        outage_for: Duration::from_secs(3),
        // the last node killed at 40% of the run, NATS server 1 at 70%, each down 2 s
        restart_at: Some(0.4),
        cluster_faults: ClusterFaults {
            node: true,
            nats_at: Some(0.7),
            down_for: Duration::from_secs(2),
        },
        ..FleetOptions::for_tests(9, dir.path().join("fleet"))
    };
    let token = "fleet-test-token-0123456789";
    let mode = GatewayMode::Cluster {
        bin: workspace_bin("locker-gateway", "locker-gateway"),
        nodes: 3,
    };
    let mut l = fleet::launch(opts, &dir.path().join("pki"), mode, token)
        .await
        .expect("launch");
    assert!(l.gateway.is_cluster());
    assert_eq!(l.gateway.edges().len(), 3);
    l.fleet.ramp_up().await.expect("agents start");
    let log = fleet::script::run(
        &l.fleet,
        &mut l.gateway,
        Duration::from_secs(24),
        std::future::pending(),
        |_, _, _| {},
    )
    .await;
    let what: Vec<&str> = log.iter().map(|h| h.what.as_str()).collect();
    println!("{what:#?}");
    for want in [
        "network outage: 2 cabinets",
        "gateway node gw3 killed (kill -9)",
        "gateway node gw3 started again",
        "NATS server n1 killed (kill -9)",
        "NATS server n1 started again",
    ] {
        assert!(what.iter().any(|w| w.starts_with(want)), "{want}: {what:?}");
    }
    assert!(
        l.fleet.settle(Duration::from_secs(90)).await,
        "fleet settles: {:?}",
        l.fleet.snapshot()
    );
    let report = l.fleet.verify().await;
    println!("{report}");
    println!("{}", l.fleet.ctx.stats);
    assert!(report.is_clean(), "{report}");
    // every node was read, and every node holds every cabinet's whole audit log
    let c = &report.cluster;
    assert_eq!(c.nodes.len(), 3, "{report}");
    assert_eq!(c.cabinets, 9, "{report}");
    assert_eq!(c.disagreements, 0, "{report}");
    for node in &c.nodes {
        assert_eq!(node.agreeing, 9, "{report}");
        // (read after the domain node: a battery report may have come since)
        assert!(node.events >= report.events_stored, "{report}");
    }
    assert!(report.events_stored > 0);
    assert!(report.orders_created > 0, "orders were created: {report}");
    assert!(
        report.commands_created > 0,
        "couriers opened compartments by remote unlock: {report}"
    );
    assert_eq!(report.pickups_reported, report.pickups_people, "{report}");
    l.fleet.shutdown().await;
    l.gateway.stop().await;
}
