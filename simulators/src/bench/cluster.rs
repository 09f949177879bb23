//! The gateways of `bench uplink` and `bench unlock`: one `locker-gateway` process on sled
//! (`--cluster-nodes 0`, the default) or N cluster nodes (`--cluster-nodes N`) on a
//! three-server NATS JetStream cluster ([`crate::nats::NatsCluster`], its stores and logs under
//! the bench's state directory). Every node gets the same PKI and token, its own data
//! directory, and the `[cluster]` table of [`NatsCluster::configure_node`] (three replicas).
//!
//! [`ProcessesCpu`] measures the CPU of all of them (gateway nodes, NATS servers) over a phase:
//! on one machine they share its cores with the load generator.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use locker_gateway::config::GatewayConfig;

use super::cpu::cpu_seconds;
use super::BenchError;
use crate::fleet::api::{metric_sum, Api};
use crate::fleet::gateway::{fleet_gateway_config, GatewayRunner};
use crate::nats::NatsCluster;

/// How the nodes are started.
#[derive(Debug, Clone)]
pub struct GatewaySpec {
    /// The `locker-gateway` binary.
    pub bin: PathBuf,
    /// The bench's state directory: node `i`'s data in `{state}/{name}` (one node) or
    /// `{state}/{name}-node{i+1}`, the NATS servers' in `{state}/{name}-nats`.
    pub state: PathBuf,
    /// The run's name.
    pub name: String,
    /// The PKI directory.
    pub pki: PathBuf,
    /// The API token.
    pub token: String,
}

/// Servers per NATS cluster (three: the stream is replicated three times).
pub const NATS_SERVERS: usize = 3;

/// The gateway nodes of a run and, in cluster mode, their NATS cluster.
pub struct Gateways {
    pub nodes: Vec<GatewayRunner>,
    /// The NATS cluster (None for a single node on sled).
    pub nats: Option<NatsCluster>,
    token: String,
}

impl Gateways {
    /// Starts `cluster_nodes` nodes on a fresh NATS cluster, or one gateway on sled for 0; each
    /// is configured by [`fleet_gateway_config`], then `tweak`, then (cluster) the `[cluster]`
    /// table. Data directories are made fresh.
    pub async fn start(
        spec: &GatewaySpec,
        cluster_nodes: usize,
        tweak: impl Fn(&mut GatewayConfig),
    ) -> Result<Self, BenchError> {
        // the child reads relative paths against its own configuration file: none here
        let state = std::path::absolute(&spec.state)?;
        let paths = locker_broker_config::pki::PkiPaths::new(std::path::absolute(&spec.pki)?);
        let any: SocketAddr = ([127, 0, 0, 1], 0).into();
        let node = |dir: &Path, i: Option<(usize, &NatsCluster)>| {
            let _ = std::fs::remove_dir_all(dir);
            let mut cfg = fleet_gateway_config(dir, &paths, any, any, &spec.token);
            tweak(&mut cfg);
            if let Some((i, nats)) = i {
                nats.configure_node(&mut cfg, i);
                // a loaded machine: JetStream's first leader election may take a while
                cfg.cluster.connect_timeout_ms = 60_000;
            }
            cfg
        };
        let gw_err = |e: crate::fleet::gateway::GatewayError| {
            BenchError::Setup(format!("starting {}: {e}", spec.bin.display()))
        };
        if cluster_nodes == 0 {
            let dir = state.join(&spec.name);
            let cfg = node(&dir, None);
            let gw = GatewayRunner::child(&spec.bin, &cfg, &dir, &spec.token)
                .await
                .map_err(gw_err)?;
            return Ok(Self {
                nodes: vec![gw],
                nats: None,
                token: spec.token.clone(),
            });
        }
        let nats_dir = state.join(format!("{}-nats", spec.name));
        let t = Instant::now();
        let nats =
            tokio::task::spawn_blocking(move || NatsCluster::start_in(&nats_dir, NATS_SERVERS))
                .await
                .map_err(|e| BenchError::Setup(e.to_string()))?
                .map_err(|e| BenchError::Setup(e.to_string()))?;
        let mut nodes = Vec::with_capacity(cluster_nodes);
        for i in 0..cluster_nodes {
            let dir = state.join(format!("{}-node{}", spec.name, i + 1));
            let cfg = node(&dir, Some((i, &nats)));
            nodes.push(
                GatewayRunner::child(&spec.bin, &cfg, &dir, &spec.token)
                    .await
                    .map_err(gw_err)?,
            );
        }
        println!(
            "cluster: {NATS_SERVERS} nats-server (JetStream, R{}) in {} and {cluster_nodes} gateway nodes started in {:.1} s",
            NATS_SERVERS.clamp(1, 3),
            nats.dir().display(),
            t.elapsed().as_secs_f64()
        );
        Ok(Self {
            nodes,
            nats: Some(nats),
            token: spec.token.clone(),
        })
    }

    /// Whether this is a cluster (not one node on sled).
    pub fn is_cluster(&self) -> bool {
        self.nats.is_some()
    }

    /// Every node's MQTT edge, node 1 first.
    pub fn edges(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|g| g.edge).collect()
    }

    /// A client of every node's API, node 1 first.
    pub fn apis(&self) -> Vec<Api> {
        self.nodes
            .iter()
            .map(|g| Api::new(g.api, &self.token))
            .collect()
    }

    /// The gateway nodes' process ids.
    pub fn gateway_pids(&self) -> Vec<u32> {
        self.nodes.iter().filter_map(GatewayRunner::pid).collect()
    }

    /// The NATS servers' process ids.
    pub fn nats_pids(&self) -> Vec<u32> {
        self.nats
            .as_ref()
            .map(|n| (0..n.len()).filter_map(|i| n.pid(i)).collect())
            .unwrap_or_default()
    }

    /// The sum of a metric on every node, node 1 first (NaN where a node did not answer).
    pub async fn metric_each(&self, apis: &[Api], name: &str) -> Vec<f64> {
        let mut out = Vec::with_capacity(apis.len());
        for api in apis {
            out.push(
                api.metrics()
                    .await
                    .map(|m| metric_sum(&m, name))
                    .unwrap_or(f64::NAN),
            );
        }
        out
    }

    /// Polls every node until `metric` has grown by at least `want` over `before` on each
    /// (every node ingests every node's uplinks); how long that took, or None after `limit`.
    pub async fn wait_all_reach(
        &self,
        apis: &[Api],
        metric: &str,
        before: &[f64],
        want: f64,
        limit: Duration,
    ) -> Option<Duration> {
        let t = Instant::now();
        while t.elapsed() < limit {
            let now = self.metric_each(apis, metric).await;
            if now.iter().zip(before).all(|(n, b)| n - b >= want) {
                return Some(t.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    /// Stops every node (SIGTERM, then kill), then the NATS servers.
    pub async fn stop(self) {
        for g in self.nodes {
            g.stop().await;
        }
        drop(self.nats);
    }
}

/// CPU of a set of processes over a phase (the gateway nodes, the NATS servers).
#[derive(Debug, Clone)]
pub struct ProcessesCpu {
    wall: Instant,
    start: Vec<(u32, Option<f64>)>,
}

impl ProcessesCpu {
    /// Samples `pids` now.
    pub fn start(pids: &[u32]) -> Self {
        Self {
            wall: Instant::now(),
            start: pids.iter().map(|&p| (p, cpu_seconds(Some(p)))).collect(),
        }
    }

    /// Core-seconds used by all of them since [`Self::start`], and the cores busy on average
    /// (None when a process could not be read).
    pub fn stop(&self) -> Option<(f64, f64)> {
        let wall = self.wall.elapsed().as_secs_f64().max(1e-9);
        let mut sum = 0.0;
        for (pid, before) in &self.start {
            sum += cpu_seconds(Some(*pid))? - before.unwrap_or(0.0);
        }
        Some((sum, sum / wall))
    }

    /// One line: "{what} {core-s} core-s = {cores} cores".
    pub fn line(&self, what: &str) -> String {
        match self.stop() {
            Some((s, c)) => format!("{what} {s:.2} core-s = {c:.3} cores"),
            None => format!("{what} unknown"),
        }
    }
}
