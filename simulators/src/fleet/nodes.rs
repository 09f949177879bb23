//! The gateway nodes a run talks to ([`Gateways`]): one gateway (in-process, a child process on
//! sled, or external), or N cluster nodes (`locker-gateway` child processes) on a three-server
//! NATS JetStream cluster ([`crate::nats::NatsCluster`], its stores and logs under the run's
//! state directory), node 1 the domain node. Every node gets the same PKI and token, its own
//! data directory, and the `[cluster]` table of [`NatsCluster::configure_node`] (three
//! replicas). Used by `locker-sim fleet --cluster-nodes` and `bench uplink|unlock
//! --cluster-nodes`.
//!
//! [`Gateways`] dereferences to the domain node's [`GatewayRunner`] (the one gateway outside
//! cluster mode): what talks to "the gateway" talks to it. The cluster's faults are here too:
//! `kill -9` of a gateway node ([`Gateways::kill_node`], [`Gateways::start_node`]) and of a
//! NATS server ([`Gateways::kill_nats`], [`Gateways::start_nats`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use locker_gateway::config::GatewayConfig;

use super::api::{metric_sum, Api};
use super::gateway::{fleet_gateway_config, GatewayError, GatewayRunner};
use crate::nats::{NatsCluster, NatsError};

/// Why the nodes could not be started, or a fault not done.
#[derive(Debug, thiserror::Error)]
pub enum NodesError {
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("NATS: {0}")]
    Nats(#[from] NatsError),
    #[error("starting {bin}: {source}")]
    Gateway {
        bin: String,
        #[source]
        source: GatewayError,
    },
    #[error("gateway node {0}: {1}")]
    Node(usize, GatewayError),
    #[error("no such node or server: {0}")]
    NoSuch(String),
    #[error("a blocking task failed: {0}")]
    Join(String),
}

/// How the nodes are started.
#[derive(Debug, Clone)]
pub struct GatewaySpec {
    /// The `locker-gateway` binary.
    pub bin: PathBuf,
    /// The run's state directory: node `i`'s data in `{state}/{name}` (one node) or
    /// `{state}/{name}-node{i+1}`, the NATS servers' in `{state}/{name}-nats`.
    pub state: PathBuf,
    /// The run's name.
    pub name: String,
    /// The PKI directory.
    pub pki: PathBuf,
    /// The API token.
    pub token: String,
}

/// The faults a cluster run's script injects: each `kill -9`, then a start again after
/// `down_for`.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterFaults {
    /// Kill a non-domain gateway node (the last node) at `restart_at`, where a run against one
    /// gateway restarts it.
    pub node: bool,
    /// Kill NATS server 1 (the domain node's first server) at this share of the run.
    pub nats_at: Option<f64>,
    /// How long the killed process stays down.
    pub down_for: Duration,
}

impl Default for ClusterFaults {
    fn default() -> Self {
        Self {
            node: true,
            nats_at: Some(0.8),
            down_for: Duration::from_secs(3),
        }
    }
}

/// Servers per NATS cluster (three: the stream is replicated three times).
pub const NATS_SERVERS: usize = 3;

/// The gateway nodes of a run and, in cluster mode, their NATS cluster.
pub struct Gateways {
    /// Node 1: the domain node (the one gateway outside cluster mode).
    domain: GatewayRunner,
    /// Nodes 2..N.
    others: Vec<GatewayRunner>,
    /// The NATS cluster (None for one gateway on sled). None for a moment while a server is
    /// started again on a blocking thread.
    nats: Option<NatsCluster>,
    cluster: bool,
}

impl std::fmt::Debug for Gateways {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Gateways({} nodes, {:?})", self.len(), self.nats)
    }
}

impl std::ops::Deref for Gateways {
    type Target = GatewayRunner;
    fn deref(&self) -> &GatewayRunner {
        &self.domain
    }
}

impl std::ops::DerefMut for Gateways {
    fn deref_mut(&mut self) -> &mut GatewayRunner {
        &mut self.domain
    }
}

impl Gateways {
    /// One gateway (not a cluster).
    pub fn single(gw: GatewayRunner) -> Self {
        Self {
            domain: gw,
            others: Vec::new(),
            nats: None,
            cluster: false,
        }
    }

    /// Starts `cluster_nodes` nodes on a fresh NATS cluster, or one gateway on sled for 0; each
    /// is configured by [`fleet_gateway_config`], then (cluster) the `[cluster]` table with
    /// node 1 the domain node, then `tweak(node index, config)`. Data directories are made
    /// fresh.
    pub async fn start(
        spec: &GatewaySpec,
        cluster_nodes: usize,
        tweak: impl Fn(usize, &mut GatewayConfig),
    ) -> Result<Self, NodesError> {
        // the child reads relative paths against its own configuration file: none here
        let state = std::path::absolute(&spec.state)?;
        let paths = locker_broker_config::pki::PkiPaths::new(std::path::absolute(&spec.pki)?);
        let any: SocketAddr = ([127, 0, 0, 1], 0).into();
        let node = |dir: &Path, i: usize, nats: Option<&NatsCluster>| {
            let _ = std::fs::remove_dir_all(dir);
            let mut cfg = fleet_gateway_config(dir, &paths, any, any, &spec.token);
            if let Some(nats) = nats {
                nats.configure_node(&mut cfg, i);
                // only node 1 may run the domain: it always does (the script kills the last)
                cfg.cluster.domain = i == 0;
                // a loaded machine: JetStream's first leader election may take a while
                cfg.cluster.connect_timeout_ms = 60_000;
            }
            tweak(i, &mut cfg);
            cfg
        };
        let gw_err = |source| NodesError::Gateway {
            bin: spec.bin.display().to_string(),
            source,
        };
        if cluster_nodes == 0 {
            let dir = state.join(&spec.name);
            let cfg = node(&dir, 0, None);
            let gw = GatewayRunner::child(&spec.bin, &cfg, &dir, &spec.token)
                .await
                .map_err(gw_err)?;
            return Ok(Self::single(gw));
        }
        let nats_dir = state.join(format!("{}-nats", spec.name));
        let t = Instant::now();
        let nats =
            tokio::task::spawn_blocking(move || NatsCluster::start_in(&nats_dir, NATS_SERVERS))
                .await
                .map_err(|e| NodesError::Join(e.to_string()))??;
        let mut nodes = Vec::with_capacity(cluster_nodes);
        for i in 0..cluster_nodes {
            let dir = state.join(format!("{}-node{}", spec.name, i + 1));
            let cfg = node(&dir, i, Some(&nats));
            nodes.push(
                GatewayRunner::child(&spec.bin, &cfg, &dir, &spec.token)
                    .await
                    .map_err(gw_err)?,
            );
        }
        println!(
            "cluster: {NATS_SERVERS} nats-server (JetStream, R{}) in {} and {cluster_nodes} gateway nodes (node 1 the domain node) started in {:.1} s",
            NATS_SERVERS.clamp(1, 3),
            nats.dir().display(),
            t.elapsed().as_secs_f64()
        );
        let mut nodes = nodes.into_iter();
        let domain = nodes
            .next()
            .ok_or_else(|| NodesError::NoSuch("no gateway node".into()))?;
        Ok(Self {
            domain,
            others: nodes.collect(),
            nats: Some(nats),
            cluster: true,
        })
    }

    /// Whether this is a cluster (not one gateway).
    pub fn is_cluster(&self) -> bool {
        self.cluster
    }

    /// How many gateway nodes (1 outside cluster mode).
    pub fn len(&self) -> usize {
        1 + self.others.len()
    }

    /// Never empty: there is always the domain node.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The domain node (node 1; the one gateway outside cluster mode).
    pub fn domain(&self) -> &GatewayRunner {
        &self.domain
    }

    /// Every node, node 1 first.
    pub fn nodes(&self) -> impl Iterator<Item = &GatewayRunner> {
        std::iter::once(&self.domain).chain(&self.others)
    }

    /// Node `i` (0 = node 1).
    pub fn node(&self, i: usize) -> Option<&GatewayRunner> {
        if i == 0 {
            Some(&self.domain)
        } else {
            self.others.get(i - 1)
        }
    }

    fn node_mut(&mut self, i: usize) -> Result<&mut GatewayRunner, NodesError> {
        if i == 0 {
            Ok(&mut self.domain)
        } else {
            self.others
                .get_mut(i - 1)
                .ok_or_else(|| NodesError::NoSuch(format!("gateway node {}", i + 1)))
        }
    }

    /// Node `i`'s name in cluster mode (`gw{i+1}`, [`NatsCluster::configure_node`]).
    pub fn node_name(i: usize) -> String {
        format!("gw{}", i + 1)
    }

    /// Every node's MQTT edge, node 1 first.
    pub fn edges(&self) -> Vec<SocketAddr> {
        self.nodes().map(|g| g.edge).collect()
    }

    /// A client of every node's API, node 1 first.
    pub fn apis(&self) -> Vec<Api> {
        self.nodes().map(|g| Api::new(g.api, &g.token)).collect()
    }

    /// The gateway nodes' process ids (of those running as child processes).
    pub fn gateway_pids(&self) -> Vec<u32> {
        self.nodes().filter_map(GatewayRunner::pid).collect()
    }

    /// The NATS servers' process ids.
    pub fn nats_pids(&self) -> Vec<u32> {
        self.nats
            .as_ref()
            .map(|n| (0..n.len()).filter_map(|i| n.pid(i)).collect())
            .unwrap_or_default()
    }

    /// How many NATS servers (0 outside cluster mode).
    pub fn nats_servers(&self) -> usize {
        self.nats.as_ref().map_or(0, NatsCluster::len)
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

    /// `kill -9` of gateway node `i` (a child process); false if it is not one.
    pub async fn kill_node(&mut self, i: usize) -> Result<bool, NodesError> {
        Ok(self.node_mut(i)?.kill().await)
    }

    /// Starts killed node `i` again (same configuration, data and ports) and waits until its
    /// API answers.
    pub async fn start_node(&mut self, i: usize) -> Result<(), NodesError> {
        self.node_mut(i)?
            .respawn()
            .await
            .map_err(|e| NodesError::Node(i + 1, e))
    }

    /// `kill -9` of NATS server `i` (its store stays as it was on disk).
    pub async fn kill_nats(&mut self, i: usize) -> Result<(), NodesError> {
        self.with_nats(move |n| {
            if i < n.len() {
                n.kill9(i);
                Ok(())
            } else {
                Err(NodesError::NoSuch(format!("NATS server {}", i + 1)))
            }
        })
        .await
    }

    /// Starts NATS server `i` again on its ports and store and waits until it accepts clients.
    pub async fn start_nats(&mut self, i: usize) -> Result<(), NodesError> {
        self.with_nats(move |n| {
            if i < n.len() {
                Ok(n.restart(i)?)
            } else {
                Err(NodesError::NoSuch(format!("NATS server {}", i + 1)))
            }
        })
        .await
    }

    /// Runs `f` on the NATS cluster on a blocking thread (killing and waiting for processes,
    /// polling a port).
    async fn with_nats(
        &mut self,
        f: impl FnOnce(&mut NatsCluster) -> Result<(), NodesError> + Send + 'static,
    ) -> Result<(), NodesError> {
        let mut nats = self
            .nats
            .take()
            .ok_or_else(|| NodesError::NoSuch("NATS cluster".into()))?;
        let (nats, r) = tokio::task::spawn_blocking(move || {
            let r = f(&mut nats);
            (nats, r)
        })
        .await
        .map_err(|e| NodesError::Join(e.to_string()))?;
        self.nats = Some(nats);
        r
    }

    /// Stops every node (SIGTERM, then kill), then the NATS servers.
    pub async fn stop(self) {
        self.domain.stop().await;
        for g in self.others {
            g.stop().await;
        }
        if let Some(n) = self.nats {
            let _ = tokio::task::spawn_blocking(move || drop(n)).await;
        }
    }
}
