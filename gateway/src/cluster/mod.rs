//! Cluster mode (ARCHITECTURE section 8): several gateway nodes on one NATS JetStream cluster.
//! This module owns the node's NATS connection and what travels through it:
//! - [`journal`]: the cabinet uplinks this node receives go into the replicated stream
//!   (`LK_UPLINK`, one subject per cabinet), de-duplicated by JetStream's message id; nothing
//!   reaches ingest, so no cabinet is acknowledged, before the stream has confirmed the write;
//! - [`feed`]: this node's durable consumer of that stream feeds its own ingest (audit log, fleet
//!   state, command dispatcher, ...) with every node's uplinks, and acknowledges the stream only
//!   once ingest has made them durable;
//! - [`presence`]: which node holds each cabinet's connection, in the replicated key-value bucket
//!   `lk_presence`, and every node's view of the whole fleet's presence built from it;
//! - [`route`]: a downlink for a cabinet connected to another node travels on
//!   `lk.node.{node}.down.{cabinet}` to that node, which hands it to the cabinet's session;
//! - [`domain`]: the domain's state (command queue, parcels, alerts, outboxes) in the
//!   replicated stream `LK_DOMAIN`, written by one node at a time (fenced) and applied by the
//!   others to their own trees;
//! - [`lease`] and [`role`]: which node runs the domain, and the others' following of it;
//! - [`node`]: how the gateway's wiring starts all of these.
//!
//! Single-node mode (the default, `[cluster] enabled = false`) uses none of this.

pub mod domain;
pub mod feed;
pub mod journal;
pub mod lease;
mod metrics;
pub mod node;
pub mod presence;
pub mod role;
pub mod route;

use std::time::Duration;

use async_nats::jetstream;
use locker_schemas::CabinetId;
use serde::{Deserialize, Serialize};

pub use metrics::ClusterMetrics;

/// The key-value bucket of cabinet presence.
pub const PRESENCE_BUCKET: &str = "lk_presence";
/// The key-value bucket of node liveness (one key per node, expiring after `node_ttl_ms`).
pub const NODES_BUCKET: &str = "lk_nodes";

/// Cluster settings (the `[cluster]` table of gateway.toml).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ClusterConfig {
    /// Run as one node of a cluster; `false` (the default) runs a single node on sled alone.
    pub enabled: bool,
    /// This node's name, unique in the cluster: 1 to 32 ASCII letters, digits, '-' or '_'.
    pub node_id: String,
    /// Whether this node may run the domain (the command queue, the parcel domain, the rules
    /// engine, webhooks and notifications). One node at a time does, the holder of the domain
    /// lease; when it stops renewing the lease, another node with `domain = true` takes it over.
    /// The domain's state is in the replicated stream `LK_DOMAIN`, applied by every node.
    pub domain: bool,
    /// The base URL of this node's HTTP API as the other nodes reach it
    /// (`http://10.0.0.5:8080`); the nodes that do not run the domain forward its routes there.
    /// Empty: `http(s)://` and the API's listening address (127.0.0.1 for an unspecified one,
    /// which only works on one machine).
    pub api_url: String,
    /// How long the domain lease lasts without renewal, ms: a dead leader's domain moves to
    /// another node after about this long (set when the lease bucket is created).
    pub lease_ttl_ms: u64,
    /// Longest catch-up with the domain stream before a node starts running the domain, ms.
    pub catch_up_timeout_ms: u64,
    /// Largest message of the domain stream, bytes: a longer record (a commit touching every
    /// cabinet of a large network) goes as several messages, applied whole or not at all.
    /// 0: the NATS server's `max_payload` (1 MB by default) less room for the headers.
    pub max_record_bytes: usize,
    /// A part of the domain is snapshotted (its whole state written as one record, its older
    /// records purged from the stream) once it has written the larger of this and its last
    /// snapshot's size since, bytes. The stream then holds at most about twice the state.
    /// 0 (the default): never. Off by default because nats-server 2.9.10 (Debian bookworm) was
    /// seen to replay such a purge wrongly on a server that restarted (README, cluster mode).
    pub snapshot_min_bytes: u64,
    /// NATS servers to connect to (any of the cluster's; the client learns the others).
    pub nats_urls: Vec<String>,
    /// Replicas of the stream and the bucket (at most the number of NATS servers; 3 survives
    /// the loss of one).
    pub replicas: usize,
    /// The uplink stream's name.
    pub stream: String,
    /// How long JetStream remembers a message id to drop a resent uplink, s. Older resends are
    /// still recognised by every node's ingest (by the cabinet's sequence); this only spares
    /// the stream the copy.
    pub duplicate_window_s: u64,
    /// How long the stream keeps uplinks, h: a node that was away longer than this cannot
    /// catch up from the stream.
    pub stream_max_age_h: u64,
    /// Longest wait for the stream to confirm a write before it is tried again, ms.
    pub publish_timeout_ms: u64,
    /// Most uplinks written to the stream in one round.
    pub journal_batch: usize,
    /// How long a node waits at start for NATS and JetStream to answer, ms.
    pub connect_timeout_ms: u64,
    /// A node that has not renewed its liveness key for this long is dead: the other nodes
    /// take its cabinets' presence away, ms (set when the bucket is created, by its first node).
    pub node_ttl_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            node_id: "node-1".into(),
            domain: true,
            api_url: String::new(),
            lease_ttl_ms: 10_000,
            catch_up_timeout_ms: 120_000,
            max_record_bytes: 0,
            snapshot_min_bytes: 0,
            nats_urls: vec!["nats://127.0.0.1:4222".into()],
            replicas: 3,
            stream: "LK_UPLINK".into(),
            duplicate_window_s: 600,
            stream_max_age_h: 168,
            publish_timeout_ms: 5_000,
            journal_batch: 1_024,
            connect_timeout_ms: 30_000,
            node_ttl_ms: 15_000,
        }
    }
}

impl ClusterConfig {
    /// Checks the values serde cannot.
    pub fn validate(&self) -> Result<(), ClusterError> {
        if !self.enabled {
            return Ok(());
        }
        let bad = |what: String| Err(ClusterError::Config(what));
        if self.node_id.is_empty()
            || self.node_id.len() > 32
            || !self
                .node_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return bad(format!(
                "cluster.node_id {:?}: 1 to 32 ASCII letters, digits, '-' or '_'",
                self.node_id
            ));
        }
        if self.nats_urls.is_empty() {
            return bad("cluster.nats_urls is empty: name at least one NATS server".into());
        }
        if !(1..=5).contains(&self.replicas) {
            return bad(format!(
                "cluster.replicas {}: JetStream keeps 1 to 5 replicas",
                self.replicas
            ));
        }
        if self.stream.is_empty()
            || !self
                .stream
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return bad(format!(
                "cluster.stream {:?}: letters, digits, '-', '_'",
                self.stream
            ));
        }
        if self.duplicate_window_s == 0
            || self.stream_max_age_h == 0
            || self.publish_timeout_ms == 0
            || self.journal_batch == 0
            || self.node_ttl_ms < 1_000
            || self.lease_ttl_ms < 1_000
            || self.catch_up_timeout_ms == 0
        {
            return bad(
                "cluster.duplicate_window_s, stream_max_age_h, publish_timeout_ms and \
                 journal_batch, catch_up_timeout_ms must be above 0, node_ttl_ms and \
                 lease_ttl_ms at least 1000"
                    .into(),
            );
        }
        let url_ok = self.api_url.is_empty()
            || self.api_url.starts_with("http://")
            || self.api_url.starts_with("https://");
        if !url_ok {
            return bad(format!(
                "cluster.api_url {:?}: an http:// or https:// base URL",
                self.api_url
            ));
        }
        if self.duplicate_window_s > self.stream_max_age_h * 3600 {
            return bad("cluster.duplicate_window_s must not exceed the stream's max age".into());
        }
        Ok(())
    }
}

/// Why cluster mode could not start or a cluster operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("cannot connect to NATS at {urls}: {detail}")]
    Connect { urls: String, detail: String },
    #[error("JetStream {what}: {detail}")]
    JetStream { what: &'static str, detail: String },
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

impl ClusterError {
    fn js(what: &'static str, e: impl std::fmt::Display) -> Self {
        Self::JetStream {
            what,
            detail: e.to_string(),
        }
    }
}

/// The NATS subject token of a cabinet: cabinet ids may contain '.', NATS's token separator,
/// and never '~', so '.' becomes '~' (one to one).
pub fn subject_token(cabinet: &CabinetId) -> String {
    cabinet.as_str().replace('.', "~")
}

/// The cabinet of a subject token made by [`subject_token`].
pub fn cabinet_of_token(token: &str) -> Option<CabinetId> {
    CabinetId::new(token.replace('~', ".")).ok()
}

/// A node's connection to the NATS cluster, with the stream and the bucket it uses.
#[derive(Clone)]
pub struct Cluster {
    pub cfg: ClusterConfig,
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub presence_kv: jetstream::kv::Store,
    pub nodes_kv: jetstream::kv::Store,
    /// The domain lease's bucket.
    pub lease_kv: jetstream::kv::Store,
    pub metrics: ClusterMetrics,
    /// The journal's fault-injection seam (tests).
    pub journal_faults: journal::Faults,
}

impl Cluster {
    /// Connects to NATS and makes sure the uplink stream and the presence bucket exist (created
    /// with the configured replicas by the first node; later nodes use them as they are). Waits
    /// up to `connect_timeout_ms` for a JetStream that answers (a cluster still electing its
    /// leader answers "unavailable" for a moment).
    pub async fn connect(
        cfg: &ClusterConfig,
        registry: &prometheus::Registry,
    ) -> Result<Self, ClusterError> {
        cfg.validate()?;
        let metrics = ClusterMetrics::new(registry)?;
        let urls = cfg.nats_urls.join(",");
        let deadline = tokio::time::Instant::now() + Duration::from_millis(cfg.connect_timeout_ms);
        let connected = metrics.connected.clone();
        let client = async_nats::ConnectOptions::new()
            .name(format!("locker-gateway {}", cfg.node_id))
            .connection_timeout(Duration::from_secs(5))
            .retry_on_initial_connect()
            .event_callback(move |ev| {
                let connected = connected.clone();
                async move {
                    match ev {
                        async_nats::Event::Connected => {
                            connected.set(1);
                            tracing::info!("connected to NATS");
                        }
                        async_nats::Event::Disconnected => {
                            connected.set(0);
                            tracing::warn!("disconnected from NATS; reconnecting");
                        }
                        other => tracing::debug!(event = %other, "NATS"),
                    }
                }
            })
            .connect(cfg.nats_urls.clone())
            .await
            .map_err(|e| ClusterError::Connect {
                urls: urls.clone(),
                detail: e.to_string(),
            })?;
        let js = jetstream::ContextBuilder::new()
            .timeout(Duration::from_millis(cfg.publish_timeout_ms))
            .ack_timeout(Duration::from_millis(cfg.publish_timeout_ms))
            .build(client.clone());
        let stream_cfg = jetstream::stream::Config {
            name: cfg.stream.clone(),
            subjects: vec!["lk.up.>".into()],
            num_replicas: cfg.replicas,
            duplicate_window: Duration::from_secs(cfg.duplicate_window_s),
            max_age: Duration::from_secs(cfg.stream_max_age_h * 3600),
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        };
        // The bucket's stream, made as `create_key_value` would make it: that call first asks
        // for the account's info, which async-nats 0.50 cannot read from a 2.9 server (Debian's).
        let kv_stream_cfg = jetstream::stream::Config {
            name: format!("KV_{PRESENCE_BUCKET}"),
            description: Some("the gateway node holding each cabinet's connection".into()),
            subjects: vec![format!("$KV.{PRESENCE_BUCKET}.>")],
            max_messages_per_subject: 1,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: jetstream::stream::DiscardPolicy::New,
            num_replicas: cfg.replicas,
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        };
        let nodes_stream_cfg = jetstream::stream::Config {
            name: format!("KV_{NODES_BUCKET}"),
            description: Some("gateway nodes alive (keys expire)".into()),
            subjects: vec![format!("$KV.{NODES_BUCKET}.>")],
            max_age: Duration::from_millis(cfg.node_ttl_ms),
            ..kv_stream_cfg.clone()
        };
        let lease_stream_cfg = jetstream::stream::Config {
            name: format!("KV_{}", lease::LEASE_BUCKET),
            description: Some("the node running the domain (the key expires)".into()),
            subjects: vec![format!("$KV.{}.>", lease::LEASE_BUCKET)],
            max_age: Duration::from_millis(cfg.lease_ttl_ms),
            ..kv_stream_cfg.clone()
        };
        let domain_cfg = domain::stream_config(cfg.replicas);
        let mut last_err;
        loop {
            let attempt = async {
                js.get_or_create_stream(stream_cfg.clone())
                    .await
                    .map_err(|e| ClusterError::js("uplink stream", e))?;
                js.get_or_create_stream(kv_stream_cfg.clone())
                    .await
                    .map_err(|e| ClusterError::js("presence bucket", e))?;
                let kv = js
                    .get_key_value(PRESENCE_BUCKET)
                    .await
                    .map_err(|e| ClusterError::js("presence bucket", e))?;
                js.get_or_create_stream(nodes_stream_cfg.clone())
                    .await
                    .map_err(|e| ClusterError::js("nodes bucket", e))?;
                let nodes = js
                    .get_key_value(NODES_BUCKET)
                    .await
                    .map_err(|e| ClusterError::js("nodes bucket", e))?;
                js.get_or_create_stream(lease_stream_cfg.clone())
                    .await
                    .map_err(|e| ClusterError::js("domain lease bucket", e))?;
                let lease = js
                    .get_key_value(lease::LEASE_BUCKET)
                    .await
                    .map_err(|e| ClusterError::js("domain lease bucket", e))?;
                js.get_or_create_stream(domain_cfg.clone())
                    .await
                    .map_err(|e| ClusterError::js("domain stream", e))?;
                Ok::<_, ClusterError>((kv, nodes, lease))
            };
            match tokio::time::timeout(Duration::from_secs(5), attempt).await {
                Ok(Ok((kv, nodes, lease))) => {
                    // JetStream answered: connected (later changes come from the events)
                    if client.connection_state() == async_nats::connection::State::Connected {
                        metrics.connected.set(1);
                    }
                    tracing::info!(
                        node = %cfg.node_id,
                        nats = %urls,
                        stream = %cfg.stream,
                        replicas = cfg.replicas,
                        "cluster mode: JetStream ready"
                    );
                    return Ok(Self {
                        cfg: cfg.clone(),
                        client,
                        js,
                        presence_kv: kv,
                        nodes_kv: nodes,
                        lease_kv: lease,
                        metrics,
                        journal_faults: journal::Faults::default(),
                    });
                }
                Ok(Err(e)) => last_err = e,
                Err(_) => {
                    last_err = ClusterError::Connect {
                        urls: urls.clone(),
                        detail: "no answer from JetStream within 5 s".into(),
                    }
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(last_err);
            }
            tracing::debug!(error = %last_err, "JetStream not ready yet; retrying");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.cfg.node_id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_tokens_round_trip_every_cabinet_id() {
        for id in [
            "CAB-1",
            "site.a.cab_2",
            "...",
            "a~b".replace('~', "-").as_str(),
        ] {
            let cab = CabinetId::new(id).expect("valid id");
            let token = subject_token(&cab);
            assert!(!token.contains('.'), "{token}");
            assert_eq!(cabinet_of_token(&token), Some(cab));
        }
    }

    #[test]
    fn configuration_is_checked_only_when_enabled() {
        let mut c = ClusterConfig {
            node_id: "bad.node".into(),
            ..Default::default()
        };
        assert!(c.validate().is_ok(), "disabled: not checked");
        c.enabled = true;
        assert!(c.validate().is_err());
        c.node_id = "node-2".into();
        assert!(c.validate().is_ok());
        c.replicas = 0;
        assert!(c.validate().is_err());
        c.replicas = 3;
        c.nats_urls.clear();
        assert!(c.validate().is_err());
    }
}
