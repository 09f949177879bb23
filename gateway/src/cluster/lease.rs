//! The domain lease: which node runs the domain (the command queue, the parcel domain, the rules
//! engine, webhooks and notifications). One key, `leader`, in the key-value bucket `lk_domain`,
//! whose entries expire `lease_ttl_ms` after they were written:
//! - a node takes the lease by creating the key (compare-and-set: only one creation succeeds),
//!   or, after its own restart, by updating the key that still names it;
//! - the holder renews it (update at the revision it holds) every quarter of the TTL, and stops
//!   writing the domain two thirds of a TTL after the last renewal it sent that was confirmed
//!   ([`super::domain::Fencing`]), before any other node can take the lease over;
//! - a holder that stops (its gateway shuts down) deletes the key, so another node takes over
//!   at once;
//! - the other nodes read it every quarter of the TTL: the leader's API address (the API
//!   forwards the domain's routes to it) and, when the key is gone (the holder stopped renewing
//!   it), they try to take it.
//!
//! The lease only decides who should run the domain; the fenced writes of
//! [`super::domain::Writer`] are what keep two nodes from both writing it.

use std::time::Duration;

use async_nats::jetstream::kv::{self, CreateErrorKind, Operation, UpdateErrorKind};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::domain::Fencing;
use super::{ClusterError, ClusterMetrics};

/// The lease bucket.
pub const LEASE_BUCKET: &str = "lk_domain";
const KEY: &str = "leader";

/// The lease's value: who holds it and where its API answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Leader {
    pub node: String,
    /// The base URL of the leader's HTTP API (`http://host:port`).
    pub api: String,
    /// When it took the lease (ms since the epoch).
    pub since: u64,
}

/// The outcome of a claim.
#[derive(Debug)]
pub enum Claim {
    /// This node holds the lease at `revision`.
    Won { revision: u64 },
    /// Another node holds it (or this node may not run the domain).
    Lost(Option<Leader>),
}

/// This node's view of the lease.
#[derive(Clone)]
pub struct Lease {
    kv: kv::Store,
    node: String,
    api: String,
    ttl: Duration,
    eligible: bool,
    since: u64,
}

fn js(what: &'static str, e: impl std::fmt::Display) -> ClusterError {
    ClusterError::JetStream {
        what,
        detail: e.to_string(),
    }
}

impl Lease {
    /// The lease as node `node` (whose API answers at `api`) sees it; `eligible`: whether the
    /// node may run the domain at all.
    pub fn new(kv: kv::Store, node: &str, api: String, ttl: Duration, eligible: bool) -> Self {
        Self {
            kv,
            node: node.to_string(),
            api,
            ttl,
            eligible,
            since: locker_schemas::now_millis(),
        }
    }

    fn value(&self) -> Result<Bytes, ClusterError> {
        let v = Leader {
            node: self.node.clone(),
            api: self.api.clone(),
            since: self.since,
        };
        serde_json::to_vec(&v)
            .map(Bytes::from)
            .map_err(|e| js("lease value", e))
    }

    /// The current holder, if any.
    pub async fn current(&self) -> Result<Option<(Leader, u64)>, ClusterError> {
        match self
            .kv
            .entry(KEY)
            .await
            .map_err(|e| js("domain lease", e))?
        {
            Some(e) if e.operation == Operation::Put => {
                let l: Leader =
                    serde_json::from_slice(&e.value).map_err(|e| js("domain lease value", e))?;
                Ok(Some((l, e.revision)))
            }
            _ => Ok(None),
        }
    }

    /// Tries to take the lease.
    pub async fn claim(&self) -> Result<Claim, ClusterError> {
        let current = self.current().await?;
        if !self.eligible {
            return Ok(Claim::Lost(current.map(|(l, _)| l)));
        }
        match current {
            Some((l, rev)) if l.node == self.node => {
                // this node's own lease from before a restart: take it up again
                match self.kv.update(KEY, self.value()?, rev).await {
                    Ok(revision) => Ok(Claim::Won { revision }),
                    Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => {
                        Ok(Claim::Lost(self.current().await?.map(|(l, _)| l)))
                    }
                    Err(e) => Err(js("domain lease", e)),
                }
            }
            Some((l, _)) => Ok(Claim::Lost(Some(l))),
            None => match self.kv.create(KEY, self.value()?).await {
                Ok(revision) => Ok(Claim::Won { revision }),
                Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {
                    Ok(Claim::Lost(self.current().await?.map(|(l, _)| l)))
                }
                Err(e) => Err(js("domain lease", e)),
            },
        }
    }

    /// The holder's side: renews the lease held at `revision` until `stop`, moving `fencing`'s
    /// deadline with every confirmed renewal; loses `fencing` when another node holds the key.
    pub async fn hold(
        self,
        mut revision: u64,
        fencing: Fencing,
        metrics: ClusterMetrics,
        stop: CancellationToken,
    ) {
        let period = self.ttl / 4;
        let safe = self.ttl * 2 / 3;
        fencing.renewed(locker_schemas::now_millis() + safe.as_millis() as u64);
        metrics.domain_leader.set(1);
        let mut failing = false;
        let mut lost = false;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(period) => {}
                _ = stop.cancelled() => break,
                _ = fencing.lost() => {
                    lost = true;
                    break;
                }
            }
            let sent = locker_schemas::now_millis();
            let value = match self.value() {
                Ok(v) => v,
                Err(e) => {
                    tracing::error!(error = %e, "domain lease value");
                    continue;
                }
            };
            match self.kv.update(KEY, value, revision).await {
                Ok(r) => {
                    revision = r;
                    fencing.renewed(sent + safe.as_millis() as u64);
                    if failing {
                        tracing::info!("domain lease renewed again");
                        failing = false;
                    }
                }
                Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => {
                    // the key moved: it expired during an outage (take it again if nobody
                    // else did; the fenced writes catch anyone who wrote meanwhile), or
                    // another node holds it
                    match self.claim().await {
                        Ok(Claim::Won { revision: r }) => {
                            revision = r;
                            fencing.renewed(sent + safe.as_millis() as u64);
                            tracing::info!(
                                "domain lease expired during an interruption; taken again"
                            );
                        }
                        Ok(Claim::Lost(holder)) => {
                            let by = holder.map(|l| l.node).unwrap_or_default();
                            fencing.lose(&format!("another node ({by}) holds the domain lease"));
                            lost = true;
                            break;
                        }
                        Err(e) => {
                            if !failing {
                                tracing::warn!(error = %e, "domain lease not renewed; trying again");
                                failing = true;
                            }
                        }
                    }
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "domain lease not renewed; trying again (writes stop when it runs out)");
                        failing = true;
                    }
                }
            }
        }
        metrics.domain_leader.set(0);
        if !lost {
            // a stop (the gateway shuts down, its actors have saved their state): hand the
            // domain over now rather than when the lease runs out
            match self.kv.delete_expect_revision(KEY, Some(revision)).await {
                Ok(()) => tracing::info!("domain lease released"),
                Err(e) => tracing::debug!(error = %e, "domain lease not released; it runs out"),
            }
        }
    }

    /// The other nodes' side: publishes the holder in `leader` and, when nobody holds the lease
    /// and this node may run the domain, takes it; then cancels `promote` and returns.
    pub async fn follow(
        self,
        leader: watch::Sender<Option<Leader>>,
        promote: CancellationToken,
        stop: CancellationToken,
    ) {
        let period = self.ttl / 4;
        loop {
            let claimed = if self.eligible {
                self.claim().await
            } else {
                self.current().await.map(|c| Claim::Lost(c.map(|(l, _)| l)))
            };
            match claimed {
                Ok(Claim::Won { .. }) => {
                    tracing::info!(node = %self.node, "took the domain lease: this node runs the domain now");
                    promote.cancel();
                    return;
                }
                Ok(Claim::Lost(l)) => {
                    leader.send_if_modified(|cur| {
                        let changed = *cur != l;
                        *cur = l;
                        changed
                    });
                }
                Err(e) => tracing::debug!(error = %e, "reading the domain lease"),
            }
            tokio::select! {
                _ = tokio::time::sleep(period) => {}
                _ = stop.cancelled() => return,
            }
        }
    }
}
