//! Cluster mode for tests: a three-server NATS JetStream cluster ([`crate::nats`]) and gateway
//! nodes on it, in-process ([`TestCluster`]) or as processes for `kill -9`
//! ([`cluster_config`] with [`crate::gateway::GatewayProcess`]); and what the tests ask every
//! node (a cabinet's audit log, its presence, a command's outcome).

use std::time::Duration;

use locker_gateway::config::GatewayConfig;
use serde_json::{json, Value};

use crate::api::ApiClient;
use crate::eventually_async;
use crate::gateway::{test_config, GatewayProcess, TestGateway};
use crate::nats::NatsCluster;
use crate::pki::TestPki;

/// Makes `cfg` node `i` (named `gw{i+1}`) of a cluster on `nats`, connecting first to NATS
/// server `i` (modulo the servers), with three replicas; only node 0 may run the domain (so
/// it does, whatever order the nodes start in).
pub fn cluster_config(cfg: &mut GatewayConfig, nats: &NatsCluster, i: usize, servers: usize) {
    cfg.cluster.enabled = true;
    cfg.cluster.node_id = format!("gw{}", i + 1);
    cfg.cluster.domain = i == 0;
    cfg.cluster.nats_urls = nats.urls_from(i % servers);
    cfg.cluster.replicas = servers.min(3);
    cfg.cluster.publish_timeout_ms = 2_000;
    cfg.cluster.connect_timeout_ms = 60_000;
    cfg.cluster.node_ttl_ms = 4_000;
    cfg.cluster.lease_ttl_ms = 5_000;
    // small enough that the larger domain records (orders with their compartments, credential
    // sets) go in chunks: the suite runs both framings
    cfg.cluster.max_record_bytes = 2_048;
}

/// Gateway nodes as `locker-gateway` processes (for `kill -9`) on a NATS cluster, each on its
/// own reserved ports (kept across restarts) and data directory. Every node may run the domain;
/// node 0 starts first and takes it (waited for).
pub struct ProcessCluster {
    pub nodes: Vec<GatewayProcess>,
    _held: Vec<(tempfile::TempDir, [crate::net::PortReservation; 2])>,
}

impl ProcessCluster {
    /// `n` nodes on `nats`, every configuration changed by `tweak` too.
    pub async fn start(
        pki: &TestPki,
        nats: &NatsCluster,
        n: usize,
        tweak: impl Fn(&mut GatewayConfig),
    ) -> Self {
        let mut nodes = Vec::with_capacity(n);
        let mut held = Vec::with_capacity(n);
        for i in 0..n {
            let dir = tempfile::tempdir().expect("dir");
            let mut cfg = test_config(pki, dir.path());
            tweak(&mut cfg);
            let (edge, api) = (crate::net::reserve(), crate::net::reserve());
            cfg.edge.listen = edge.addr();
            cfg.api.listen = api.addr();
            cluster_config(&mut cfg, nats, i, 3);
            cfg.cluster.domain = true;
            nodes.push(GatewayProcess::start(&cfg));
            if i == 0 {
                wait_leader(&nodes[0].api, "gw1").await;
            }
            held.push((dir, [edge, api]));
        }
        Self { nodes, _held: held }
    }
}

/// NATS servers and gateway nodes, in-process.
pub struct TestCluster {
    /// (Declared first: dropped before the NATS servers.)
    pub nodes: Vec<TestGateway>,
    pub nats: NatsCluster,
}

impl TestCluster {
    /// Three NATS servers and `nodes` gateway nodes on them (node 0 the domain node).
    pub async fn start(pki: &TestPki, nodes: usize) -> Self {
        Self::start_with(pki, nodes, |_| {}).await
    }

    /// [`TestCluster::start`] with every node's configuration changed by `tweak` too.
    pub async fn start_with(
        pki: &TestPki,
        nodes: usize,
        tweak: impl Fn(&mut GatewayConfig),
    ) -> Self {
        let nats = NatsCluster::start(3);
        let mut gws = Vec::with_capacity(nodes);
        for i in 0..nodes {
            let gw = TestGateway::start_with(pki, |c| {
                cluster_config(c, &nats, i, 3);
                tweak(c);
            })
            .await;
            gws.push(gw);
        }
        Self { nodes: gws, nats }
    }

    /// Node `i`'s API.
    pub fn api(&self, i: usize) -> &ApiClient {
        &self.nodes[i].api
    }
}

/// The (seq, kind) of a cabinet's audit log on one node (its own copy, not forwarded).
pub async fn audit_seqs(api: &ApiClient, cab: &str) -> Vec<(u64, String)> {
    api.node_local()
        .events(cab)
        .await
        .iter()
        .map(|e| {
            (
                e["seq"].as_u64().unwrap_or(0),
                e["kind"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

/// Waits until one node's own fleet view says `cab` is online (or offline).
pub async fn wait_presence(api: &ApiClient, cab: &str, online: bool) {
    let path = format!("/v1/cabinets/{cab}");
    let api = api.node_local();
    eventually_async(&format!("{cab} online={online} at {path}"), || {
        let (api, path) = (api.clone(), path.clone());
        async move {
            // a node restarting in its other domain role refuses connections for a moment
            let (s, _, body) = api.try_get_text(&path).await.ok()?;
            let c: Value = serde_json::from_str(&body).ok()?;
            (s == 200 && c["online"] == json!(online)).then_some(())
        }
    })
    .await;
}

/// Queues an unlock of `compartment` at `cab` through one node's API; the command's JSON.
///
/// Like any integrator, it tries again on `503 domain_unavailable` (the documented answer while
/// the domain lease moves, e.g. during a NATS server's election: nothing was created), for up
/// to a minute.
pub async fn unlock(api: &ApiClient, cab: &str, compartment: u16, ttl_ms: u32) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (s, r) = api
            .post(
                &format!("/v1/cabinets/{cab}/commands"),
                json!({"action": {"type": "unlock", "compartment": compartment}, "ttl_ms": ttl_ms, "wait_ms": 0}),
            )
            .await;
        if s == 503 && r["error"] == "domain_unavailable" && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        }
        assert!(s == 200 || s == 202, "{s} {r}");
        return r;
    }
}

/// Waits for a command's outcome on one node (or on the one gateway of a single-node test).
pub async fn outcome(api: &ApiClient, id: &str) -> Value {
    let path = format!("/v1/commands/{id}");
    eventually_async(&format!("outcome of {id}"), || {
        let (api, path) = (api.clone(), path.clone());
        async move {
            let (_, r) = api.get(&path).await;
            r["outcome"].is_string().then_some(r)
        }
    })
    .await
}

/// Waits until every node's audit log of `cab` is the same and holds at least `1..=n`, then
/// checks it is contiguous from 1 (each event once, in order) and returns it. (The agent may
/// still be adding events: only the common, settled log is compared.)
pub async fn same_audit_everywhere(apis: &[&ApiClient], cab: &str, n: u64) -> Vec<(u64, String)> {
    let apis: Vec<ApiClient> = apis.iter().map(|a| (*a).clone()).collect();
    let log = eventually_async(
        &format!("every node has the same log of {cab}, {n}+ events"),
        || {
            let apis = apis.clone();
            async move {
                let mut logs = Vec::with_capacity(apis.len());
                for api in &apis {
                    logs.push(audit_seqs(api, cab).await);
                }
                let first = logs.first()?.clone();
                (first.len() as u64 >= n && logs.iter().all(|l| *l == first)).then_some(first)
            }
        },
    )
    .await;
    let seqs: Vec<u64> = log.iter().map(|(s, _)| *s).collect();
    let want: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(
        seqs, want,
        "every event of {cab} once, in order, on every node"
    );
    log
}

/// A short pause for things that must *not* happen (a second door opening).
pub async fn settle() {
    tokio::time::sleep(Duration::from_millis(500)).await;
}

/// Someone opening and closing a cabinet's doors (door events, forced-door alarms) until
/// dropped or [`DoorTraffic::stop`]ped: steady uplink load from a real agent.
pub struct DoorTraffic {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl DoorTraffic {
    /// Starts on doors `first..first+doors` of `board` (0-based).
    pub fn start(board: locker_sim::LockBoardSim, first: usize, doors: usize) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let task = tokio::spawn(async move {
            let mut i = 0usize;
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                let door = first + i % doors.max(1);
                let _ = board.open_door(door);
                tokio::time::sleep(Duration::from_millis(40)).await;
                let _ = board.close_door(door);
                tokio::time::sleep(Duration::from_millis(40)).await;
                i += 1;
            }
        });
        Self {
            stop,
            task: Some(task),
        }
    }

    /// Stops after the current opening is closed again.
    pub async fn stop(mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for DoorTraffic {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Waits until the agent's outbox is empty and everything it made is acknowledged; the last
/// acknowledged seq.
pub async fn drained(cab: &crate::agent::TestCabinet) -> u64 {
    eventually_async(&format!("{}'s outbox drained", cab.id), || {
        let s = cab.status();
        async move {
            (s.outbox_depth == 0 && s.last_acked_seq + 1 == s.next_seq).then_some(s.last_acked_seq)
        }
    })
    .await
}

/// Waits until the node behind `api` answers the domain's routes from `node` (the holder of
/// the domain lease; every response of a cluster node names the node that served it).
pub async fn wait_leader(api: &ApiClient, node: &str) {
    eventually_async(&format!("{node} runs the domain"), || async {
        let (s, h, _) = api.try_get_text("/v1/orders?limit=1").await.ok()?;
        let by = h
            .get("x-locker-served-by")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        (s == 200 && by == node).then_some(())
    })
    .await;
}

/// What a node's own trees hold of the domain, for comparing nodes: an order as stored, the
/// parcel outbox's and audit trail's heads and the whole parcel audit trail.
pub async fn domain_state(store: &locker_gateway::store::Store, order: &str) -> Value {
    use locker_gateway::store::parcels::ParcelStore;
    let (store, order) = (store.clone(), order.to_owned());
    tokio::task::spawn_blocking(move || {
        let id: locker_schemas::OrderId = order.parse().expect("order id");
        let p = store.parcels();
        let stored = p.stored_order(id).expect("order read");
        let heads = p.heads().expect("heads");
        let audit = p.audit(0, 10_000).expect("audit");
        json!({
            "order": serde_json::to_value(stored).expect("json"),
            "heads": [heads.0, heads.1],
            "audit": serde_json::to_value(audit).expect("json"),
        })
    })
    .await
    .expect("join")
}
