//! This node's role for the domain, decided when the gateway starts:
//! - **leader**: it took the lease ([`super::lease`]), caught up with the domain stream, and its
//!   domain actors (the command queue, parcels, rules, outbound) write through the replicated
//!   stores ([`super::domain::stores`]); a task renews the lease;
//! - **follower**: its domain actors do not run; it applies the stream to its own trees
//!   ([`super::domain::apply::follow`]), its API forwards the domain's routes to the leader
//!   named by the lease, and it takes the lease when the leader stops renewing it.
//!
//! A node whose role must change (a follower that took the lease, a leader fenced or past its
//! lease) cancels [`Role::change`]; the gateway's process then restarts its gateway in the new
//! role ([`crate::app::Gateway::role_changed`]). The restart drops this node's cabinet
//! connections once (they reconnect, to any node); the domain actors only ever start from a
//! state loaded whole, which is the path single-node restarts already take.

use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::domain::{apply, stores, Fencing, Writer, DOMAIN_STREAM};
use super::lease::{Claim, Leader, Lease};
use super::node::Task;
use super::{Cluster, ClusterError};
use crate::store::Store;

/// The lease renewal (leader).
pub const LEASE: &str = "cluster domain lease";
/// The stream applier (follower).
pub const APPLIER: &str = "cluster domain applier";
/// Watching for a role change.
pub const ROLE_WATCH: &str = "cluster role watch";

/// This node's role.
pub struct Role {
    pub leader: bool,
    /// The lease holder as this node last read it (the leader itself on the leader).
    pub holder: watch::Receiver<Option<Leader>>,
    /// Cancelled when the node must restart in its other role.
    pub change: CancellationToken,
    /// The leader's fencing (always held on a follower, which never writes).
    pub fencing: Fencing,
    tasks: Vec<Task>,
}

impl Role {
    /// The role's tasks, to be stopped with the gateway.
    pub fn take_tasks(&mut self) -> Vec<Task> {
        std::mem::take(&mut self.tasks)
    }
}

impl Cluster {
    /// Decides this node's role and starts its tasks; on the leader, returns `store` with the
    /// replicated writers. `api` is the base URL this node's API answers at.
    pub async fn take_role(
        &self,
        store: Store,
        api: String,
        tracker: &TaskTracker,
        stop: &CancellationToken,
    ) -> Result<(Role, Store), ClusterError> {
        let ttl = Duration::from_millis(self.cfg.lease_ttl_ms);
        let lease = Lease::new(
            self.lease_kv.clone(),
            self.node(),
            api.clone(),
            ttl,
            self.cfg.domain,
        );
        let change = CancellationToken::new();
        match lease.claim().await? {
            Claim::Won { revision } => {
                self.metrics.domain_takeovers.inc();
                let fencing = Fencing::default();
                // renew from now on: the catch-up may take a while
                let hold = tracker.spawn(lease.clone().hold(
                    revision,
                    fencing.clone(),
                    self.metrics.clone(),
                    stop.clone(),
                ));
                let catch_up = Duration::from_millis(self.cfg.catch_up_timeout_ms);
                let heads = match apply::catch_up(&self.js, &store, &self.metrics, catch_up).await {
                    Ok(h) => h,
                    Err(e) => {
                        hold.abort();
                        return Err(e);
                    }
                };
                let stream = self
                    .js
                    .get_stream(DOMAIN_STREAM)
                    .await
                    .map_err(|e| ClusterError::js("domain stream", e))?;
                let run = format!("{}:{}", self.node(), ulid::Ulid::new());
                let rt = tokio::runtime::Handle::current();
                let writers = stores::writers(&store, self.cfg.snapshot_min_bytes, |part| {
                    let w = Writer::new(
                        self.js.clone(),
                        stream.clone(),
                        rt.clone(),
                        part,
                        heads.get(&part).copied().unwrap_or(0),
                        run.clone(),
                        fencing.clone(),
                        self.metrics.clone(),
                    );
                    match self.cfg.max_record_bytes {
                        0 => w,
                        n => w.with_chunk_size(n),
                    }
                });
                tracing::info!(node = %self.node(), ?heads, "this node runs the domain");
                let watch_change = {
                    let (fencing, change, stop) = (fencing.clone(), change.clone(), stop.clone());
                    tracker.spawn(async move {
                        tokio::select! {
                            _ = fencing.lost() => change.cancel(),
                            _ = stop.cancelled() => {}
                        }
                    })
                };
                let me = Leader {
                    node: self.node().to_string(),
                    api,
                    since: locker_schemas::now_millis(),
                };
                let (_, holder) = watch::channel(Some(me));
                Ok((
                    Role {
                        leader: true,
                        holder,
                        change,
                        fencing,
                        tasks: vec![(LEASE, hold), (ROLE_WATCH, watch_change)],
                    },
                    store.with_writers(writers),
                ))
            }
            Claim::Lost(current) => {
                tracing::info!(
                    node = %self.node(),
                    leader = current.as_ref().map(|l| l.node.as_str()).unwrap_or("none yet"),
                    "the domain runs on another node: following it"
                );
                let (tx, holder) = watch::channel(current);
                let applier = tracker.spawn(apply::follow(
                    self.js.clone(),
                    store.clone(),
                    self.metrics.clone(),
                    stop.clone(),
                ));
                let follow = tracker.spawn(lease.follow(tx, change.clone(), stop.clone()));
                Ok((
                    Role {
                        leader: false,
                        holder,
                        change,
                        fencing: Fencing::default(),
                        tasks: vec![(APPLIER, applier), (ROLE_WATCH, follow)],
                    },
                    store,
                ))
            }
        }
    }
}

/// The base URL of this node's API as the other cluster nodes reach it.
pub fn api_url(configured: &str, tls: bool, bound: std::net::SocketAddr) -> String {
    if !configured.is_empty() {
        return configured.trim_end_matches('/').to_string();
    }
    let scheme = match tls {
        true => "https",
        false => "http",
    };
    let mut addr = bound;
    if addr.ip().is_unspecified() {
        tracing::warn!(
            listen = %bound,
            "cluster.api_url is not set and the API listens on every address: the other nodes \
             are told 127.0.0.1, which only works with every node on this machine"
        );
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    format!("{scheme}://{addr}")
}
