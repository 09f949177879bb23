//! Cluster mode end to end: three real `nats-server` processes as a JetStream cluster, gateway
//! nodes on it (in-process, or as `locker-gateway` processes for `kill -9`), real agents on real
//! Modbus boards and raw MQTT cabinets spread over the nodes. Every node must hold every uplink
//! exactly once and in order, a command issued on any node must open its door exactly once
//! wherever the cabinet is connected (and wherever it moves), and losing a NATS server or a
//! gateway node must lose and duplicate nothing.

use locker_tests::agent::TestCabinet;
use locker_tests::cabinet::{bodies, RawCabinet};
use locker_tests::cluster::{
    audit_seqs, drained, outcome, same_audit_everywhere, settle, unlock, wait_presence,
    DoorTraffic, ProcessCluster, TestCluster,
};
use locker_tests::eventually;
use locker_tests::nats::NatsCluster;
use locker_tests::parcels;
use locker_tests::pki::TestPki;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_node_holds_every_uplink_once_and_commands_reach_cabinets_on_any_node() {
    let mut pki = TestPki::new();
    let cl = TestCluster::start(&pki, 3).await;
    let mut cabs = Vec::new();
    for i in 0..3 {
        let id = format!("CAB-CL{i}");
        cabs.push(TestCabinet::start(&mut pki, &id, cl.nodes[i].edge_addr()).await);
    }
    // every node sees the whole fleet online, wherever each cabinet is connected
    for n in 0..3 {
        for c in &cabs {
            wait_presence(cl.api(n), &c.id, true).await;
        }
    }
    // a command issued on each node, for the cabinet on the next node
    for i in 0..3 {
        let j = (i + 1) % 3;
        let compartment = 2 + i as u16;
        let r = unlock(cl.api(i), &cabs[j].id, compartment, 30_000).await;
        let id = r["id"].as_str().expect("command id").to_owned();
        let done = outcome(cl.api(i), &id).await;
        assert_eq!(done["outcome"], json!("opened"), "{done}");
        assert_eq!(cabs[j].pulses(compartment), 1, "one pulse for one command");
        cabs[j]
            .board
            .close_door(usize::from(compartment - 1))
            .expect("close");
    }
    settle().await;
    for (i, c) in cabs.iter().enumerate() {
        let compartment = 2 + ((i + 2) % 3) as u16;
        assert_eq!(c.pulses(compartment), 1, "never a second pulse");
    }
    // every node has the same audit log of every cabinet: each event once, in order
    let apis: Vec<_> = (0..3).map(|i| cl.api(i)).collect();
    for c in &cabs {
        let n = drained(c).await;
        let log = same_audit_everywhere(&apis, &c.id, n).await;
        assert!(log.iter().any(|(_, k)| k == "result"), "{log:?}");
    }
    // the stream did the work: each node fed its ingest every node's uplinks
    for api in &apis {
        let (s, ready) = api.get("/readyz").await;
        assert_eq!(s, 200, "{ready}");
        assert!(
            ready["checks"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["name"] == "cluster" && c["ok"] == true)),
            "{ready}"
        );
        assert!(api.metric("locker_cluster_feed_total").await > 0.0);
        assert_eq!(api.metric("locker_cluster_journal_failing").await, 0.0);
        assert_eq!(api.metric("locker_cluster_nats_connected").await, 1.0);
    }
    let forwarded: f64 = {
        let mut t = 0.0;
        for api in &apis {
            t += api
                .metric("locker_cluster_downlinks_total{result=\"forwarded\"}")
                .await;
        }
        t
    };
    // the commands are all the domain node's (node 0): those for the cabinets on nodes 1
    // and 2 travelled there
    assert!(
        forwarded >= 2.0,
        "commands travelled between nodes: {forwarded}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cabinet_that_moves_to_another_node_gets_its_queued_command_once() {
    let mut pki = TestPki::new();
    let cl = TestCluster::start(&pki, 3).await;
    let mut cab = TestCabinet::start(&mut pki, "CAB-MOVE", cl.nodes[1].edge_addr()).await;
    wait_presence(cl.api(0), "CAB-MOVE", true).await;
    cab.stop().await;
    for n in 0..3 {
        wait_presence(cl.api(n), "CAB-MOVE", false).await;
    }
    // queued on node 0 while the cabinet is connected nowhere
    let r = unlock(cl.api(0), "CAB-MOVE", 5, 120_000).await;
    let id = r["id"].as_str().expect("id").to_owned();
    assert!(r["outcome"].is_null(), "not executed while offline: {r}");
    // the cabinet comes back on node 2
    cab.set_edge(cl.nodes[2].edge_addr());
    cab.boot().await;
    let done = outcome(cl.api(0), &id).await;
    assert_eq!(done["outcome"], json!("opened"), "{done}");
    cab.board.close_door(4).expect("close");
    settle().await;
    assert_eq!(cab.pulses(5), 1, "opened once across the move");
    let n = drained(&cab).await;
    // every node's audit log has the result (a command's record lives on the node that
    // queued it; its result is an uplink, in the stream)
    let apis: Vec<_> = (0..3).map(|i| cl.api(i)).collect();
    let log = same_audit_everywhere(&apis, "CAB-MOVE", n).await;
    assert_eq!(
        log.iter().filter(|(_, k)| k == "result").count(),
        1,
        "{log:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn losing_a_nats_server_under_load_loses_and_duplicates_nothing() {
    let mut pki = TestPki::new();
    let mut cl = TestCluster::start(&pki, 2).await;
    // a real agent under door traffic on node 0, and a raw cabinet streaming on node 1
    let cab = TestCabinet::start(&mut pki, "CAB-NK", cl.nodes[0].edge_addr()).await;
    let traffic = DoorTraffic::start(cab.board.clone(), 0, 8);
    let cert = pki.cabinet("CAB-RAW");
    let raw = RawCabinet::connect(&pki, &cert, "CAB-RAW", cl.nodes[1].edge_addr());
    eventually("raw cabinet connected", || raw.connected()).await;
    raw.send(&raw.uplink(1, bodies::hello(4))).await;
    for seq in 2..=150u64 {
        raw.send(&raw.uplink(seq, bodies::door((seq % 4 + 1) as u16, seq % 2 == 0)))
            .await;
    }
    eventually("the agent's first events acknowledged", || {
        cab.status().last_acked_seq >= 10
    })
    .await;
    // kill -9 of the first NATS server, the one node 0 connects to first
    cl.nats.kill9(0);
    for seq in 151..=300u64 {
        raw.send(&raw.uplink(seq, bodies::door((seq % 4 + 1) as u16, seq % 2 == 0)))
            .await;
    }
    let acked_at_kill = cab.status().last_acked_seq;
    eventually("the agent's events acknowledged after the loss", || {
        cab.status().last_acked_seq > acked_at_kill + 10
    })
    .await;
    eventually("every raw uplink acknowledged", || raw.acked() == 300).await;
    // a command still crosses nodes with one NATS server down
    let r = unlock(cl.api(1), "CAB-NK", 12, 30_000).await;
    let done = outcome(cl.api(1), r["id"].as_str().expect("id")).await;
    assert_eq!(done["outcome"], json!("opened"), "{done}");
    traffic.stop().await;
    cab.board.close_door(11).expect("close");
    let n = drained(&cab).await;
    let apis: Vec<_> = (0..2).map(|i| cl.api(i)).collect();
    same_audit_everywhere(&apis, "CAB-NK", n).await;
    same_audit_everywhere(&apis, "CAB-RAW", 300).await;
    assert_eq!(cab.pulses(12), 1);
    // the server comes back and catches up; nothing changes for the nodes
    cl.nats.restart(0);
    assert_eq!(audit_seqs(cl.api(0), "CAB-RAW").await.len(), 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_of_a_gateway_node_loses_nothing_and_the_node_catches_up_when_back() {
    let mut pki = TestPki::new();
    let nats = NatsCluster::start(3);
    // both may run the domain: node 1 takes it over when node 0 dies
    let mut cl = ProcessCluster::start(&pki, &nats, 2, |_| {}).await;
    let nodes = &mut cl.nodes;
    let mut cab = TestCabinet::start(&mut pki, "CAB-GK", nodes[0].edge_addr).await;
    wait_presence(&nodes[1].api, "CAB-GK", true).await;
    // a cabinet that will not reconnect anywhere while its node is dead
    let cert = pki.cabinet("CAB-STRANDED");
    let stranded = RawCabinet::connect(&pki, &cert, "CAB-STRANDED", nodes[0].edge_addr);
    eventually("stranded cabinet connected", || stranded.connected()).await;
    wait_presence(&nodes[1].api, "CAB-STRANDED", true).await;
    let traffic = DoorTraffic::start(cab.board.clone(), 0, 8);
    eventually("events acknowledged", || cab.status().last_acked_seq >= 20).await;
    nodes[0].kill9();
    // the dead node stops renewing its liveness: the survivor takes its cabinets' presence away
    wait_presence(&nodes[1].api, "CAB-STRANDED", false).await;
    // the cabinet's node is gone: it reconnects to the other one (a load balancer's job)
    let acked = cab.status().last_acked_seq;
    cab.stop().await;
    cab.set_edge(nodes[1].edge_addr);
    cab.boot().await;
    eventually("events acknowledged by the surviving node", || {
        cab.status().last_acked_seq > acked + 10
    })
    .await;
    let r = unlock(&nodes[1].api, "CAB-GK", 14, 30_000).await;
    let done = outcome(&nodes[1].api, r["id"].as_str().expect("id")).await;
    assert_eq!(done["outcome"], json!("opened"), "{done}");
    traffic.stop().await;
    cab.board.close_door(13).expect("close");
    let n = drained(&cab).await;
    // the killed node comes back on its data and catches up from the stream
    nodes[0].restart();
    let apis = [&nodes[0].api, &nodes[1].api];
    same_audit_everywhere(&apis, "CAB-GK", n).await;
    wait_presence(&nodes[0].api, "CAB-GK", true).await;
    assert_eq!(cab.pulses(14), 1);
    cab.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn any_node_serves_the_parcel_workflow_and_every_node_holds_the_domain_state() {
    let mut pki = TestPki::new();
    let cl = TestCluster::start_with(&pki, 3, parcels::tokens).await;
    // node 0 runs the domain (it took the lease first); the cabinet is on node 2
    let cab = TestCabinet::start(&mut pki, "CAB-DOM", cl.nodes[2].edge_addr()).await;
    assert!(cl.nodes[0].gw.domain_here);
    assert!(!cl.nodes[1].gw.domain_here && !cl.nodes[2].gw.domain_here);
    // the operator works on node 1, the carrier on node 2: both are served by node 0
    let op = cl.api(1);
    parcels::online(op, "CAB-DOM").await;
    parcels::setup(op, &["CAB-DOM"]).await;
    let (s, h, _) = op.get_text("/v1/orders", &[]).await;
    assert_eq!(s, 200);
    assert_eq!(
        h.get("x-locker-served-by").and_then(|v| v.to_str().ok()),
        Some("gw1"),
        "forwarded to the node running the domain"
    );
    let dhl = cl.api(2).with_token(parcels::DHL_TOKEN);
    let order = parcels::order(&dhl, "TRK-CLUSTER-1", "M").await;
    parcels::creds_current(op, &cab).await;
    parcels::remote_deposit(&dhl, &cab, &order).await;
    parcels::creds_current(op, &cab).await;
    let id = order["id"].as_str().expect("order id").to_owned();
    // the node's own health and metrics are its own
    let (s, _) = cl.api(2).get("/readyz").await;
    assert_eq!(s, 200);
    assert_eq!(cl.api(2).metric("locker_cluster_domain_leader").await, 0.0);
    assert_eq!(cl.api(0).metric("locker_cluster_domain_leader").await, 1.0);
    // the harness's 2 KiB messages: some records went in chunks, and are applied whole below
    let mut chunked = 0.0;
    for part in ["commands", "parcels", "alerts", "outbound"] {
        chunked += cl
            .api(0)
            .metric(&format!(
                "locker_cluster_domain_chunked_total{{part=\"{part}\"}}"
            ))
            .await;
    }
    assert!(chunked >= 1.0, "no record was written in chunks");
    // every node's own trees hold the domain's state, applied from the stream
    let leader = cl.nodes[0].gw.store().clone();
    let want = locker_tests::cluster::domain_state(&leader, &id).await;
    for n in 1..3 {
        let follower = cl.nodes[n].gw.store().clone();
        let id = id.clone();
        let want = want.clone();
        locker_tests::eventually_async(&format!("node {n} holds the domain state"), || {
            let (follower, id, want) = (follower.clone(), id.clone(), want.clone());
            async move {
                let got = locker_tests::cluster::domain_state(&follower, &id).await;
                (got == want).then_some(())
            }
        })
        .await;
        assert!(
            cl.api(n)
                .metric("locker_cluster_domain_applied_total{part=\"parcels\",result=\"applied\"}")
                .await
                >= 1.0
        );
    }
    // the console too: a login through node 2 is a session the other nodes honour
    let http = reqwest::Client::new();
    let login = http
        .post(format!(
            "http://{}/console/session",
            cl.nodes[2].gw.api_addr
        ))
        .json(&json!({"token": locker_tests::api::TEST_TOKEN}))
        .send()
        .await
        .expect("login");
    assert_eq!(login.status(), 200);
    let cookie = login
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .expect("session cookie")
        .to_owned();
    let me = http
        .get(format!(
            "http://{}/console/session",
            cl.nodes[1].gw.api_addr
        ))
        .header("cookie", cookie)
        .send()
        .await
        .expect("session");
    assert_eq!(me.status(), 200);
    assert_eq!(
        me.headers()
            .get("x-locker-served-by")
            .and_then(|v| v.to_str().ok()),
        Some("gw1")
    );
    // only the domain node ever sends credential sets: the cabinet's version is the domain's
    settle().await;
    let (_, c) = op.get("/v1/cabinets/CAB-DOM/compartments").await;
    assert_eq!(
        Some(cab.status().creds_version),
        c["creds_version"].as_u64(),
        "no other node replaced the domain's set"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_of_the_domain_node_moves_the_domain_with_its_orders_and_queued_commands() {
    let mut pki = TestPki::new();
    let nats = NatsCluster::start(3);
    let mut cl = ProcessCluster::start(&pki, &nats, 2, parcels::tokens).await;
    let nodes = &mut cl.nodes;
    // a cabinet on node 1; the domain on node 0; everything asked through node 1
    let mut cab = TestCabinet::start(&mut pki, "CAB-DF", nodes[1].edge_addr).await;
    let api = nodes[1].api.clone();
    parcels::online(&api, "CAB-DF").await;
    parcels::setup(&api, &["CAB-DF"]).await;
    let dhl = api.with_token(parcels::DHL_TOKEN);
    let order = parcels::order(&dhl, "TRK-FAILOVER-1", "M").await;
    let order_id = order["id"].as_str().expect("order id").to_owned();
    parcels::creds_current(&api, &cab).await;
    let (_, before) = api.get("/v1/cabinets/CAB-DF/compartments").await;
    // the cabinet goes away, and a command is queued for it on the domain node
    cab.stop().await;
    wait_presence(&api, "CAB-DF", false).await;
    let r = unlock(&api, "CAB-DF", 9, 120_000).await;
    let command = r["id"].as_str().expect("command id").to_owned();
    // the domain node dies; node 1 takes the lease over and restarts as the domain's node
    nodes[0].kill9();
    locker_tests::cluster::wait_leader(&api, "gw2").await;
    // the order and its compartment are still there, exactly as they were
    let (s, o) = api.get(&format!("/v1/orders/{order_id}")).await;
    assert_eq!(s, 200, "{o}");
    assert_eq!(o["tracking"], json!("TRK-FAILOVER-1"), "{o}");
    assert_eq!(o["compartment"], order["compartment"], "{o}");
    let (_, after) = api.get("/v1/cabinets/CAB-DF/compartments").await;
    let holding = |table: &serde_json::Value| -> usize {
        table["compartments"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|c| c.to_string().contains(&order_id))
                    .count()
            })
            .unwrap_or(0)
    };
    assert_eq!(holding(&before), 1, "{before}");
    assert_eq!(
        holding(&after),
        1,
        "the order's compartment is still its own: {after}"
    );
    // the command queued on the dead node is not stuck: the new domain node sends it
    cab.set_edge(nodes[1].edge_addr);
    cab.boot().await;
    let done = outcome(&api, &command).await;
    assert_eq!(done["outcome"], json!("opened"), "{done}");
    cab.board.close_door(8).expect("close");
    settle().await;
    assert_eq!(
        cab.pulses(9),
        1,
        "opened once across the move of the domain"
    );
    // a new order on the new domain node never gets a compartment already taken
    let second = parcels::order(&dhl, "TRK-FAILOVER-2", "M").await;
    assert_ne!(
        second["compartment"], order["compartment"],
        "{second} vs {order}"
    );
    // the old domain node comes back as a follower and serves the API through the new one
    nodes[0].restart();
    let (s, h, _) = nodes[0]
        .api
        .get_text(&format!("/v1/orders/{order_id}"), &[])
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        h.get("x-locker-served-by").and_then(|v| v.to_str().ok()),
        Some("gw2")
    );
    assert_eq!(
        nodes[1]
            .api
            .metric("locker_cluster_domain_takeovers_total")
            .await,
        1.0
    );
    cab.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_uplink_lost_on_its_way_to_the_stream_leaves_no_gap_on_any_node() {
    let mut pki = TestPki::new();
    let cl = TestCluster::start(&pki, 2).await;
    let cert = pki.cabinet("CAB-GAP");
    let raw = RawCabinet::connect(&pki, &cert, "CAB-GAP", cl.nodes[0].edge_addr());
    eventually("raw cabinet connected", || raw.connected()).await;
    raw.send(&raw.uplink(1, bodies::hello(4))).await;
    eventually("hello acknowledged", || raw.acked() == 1).await;
    // the first publish of the next round of several is lost on its way to the stream, while
    // the later ones of the round are stored: they must not end up before it (a gap every
    // node would drop, and this cabinet, which never resends, would never fill)
    let faults = cl.nodes[0]
        .gw
        .cluster
        .as_ref()
        .expect("cluster mode")
        .journal_faults
        .clone();
    faults.lose_first_of_next_round();
    for seq in 2..=200u64 {
        raw.send(&raw.uplink(seq, bodies::door((seq % 4 + 1) as u16, seq % 2 == 0)))
            .await;
    }
    eventually("the publish was lost", || !faults.armed()).await;
    eventually("every uplink acknowledged", || raw.acked() == 200).await;
    let apis = [cl.api(0), cl.api(1)];
    same_audit_everywhere(&apis, "CAB-GAP", 200).await;
    assert!(
        cl.api(0)
            .metric("locker_cluster_journal_total{result=\"failed\"}")
            .await
            >= 1.0
    );
}
