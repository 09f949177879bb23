//! Presence across nodes: which node holds each cabinet's connection, in the replicated
//! key-value bucket `lk_presence` (key: the cabinet id; value: [`Record`]).
//!
//! - [`write_local`]: this node's edge is the authority on its own connections; each change is
//!   written to the bucket. An online overwrites whatever was there (the newest connection
//!   wins: a cabinet that moved has already left its old node). An offline deletes the key
//!   only if it still names this node and that connection (compare-and-set on the key's
//!   revision), so a late offline from the old node never hides the cabinet on its new one.
//! - [`watch`]: every node watches the whole bucket. It keeps the [`Directory`] (cabinet ->
//!   node) that routes downlinks ([`super::route`]) and turns the fleet's transitions (offline
//!   to online and back, wherever the cabinet is) into [`PresenceEvent`]s for this node's
//!   actors (fleet state, dispatcher, parcels, rules, webhooks), exactly as the local edge does
//!   in single-node mode.
//!
//! Node liveness: every node renews its key in the bucket `lk_nodes` ([`heartbeat`]), whose
//! entries expire after `node_ttl_ms`. Every node sweeps ([`sweep`]): a cabinet whose presence
//! names a node without a live key loses its presence (compare-and-set, so a reconnect
//! elsewhere meanwhile wins), and every node's actors see it go offline. A node starting again
//! after a crash first deletes the keys that still name it: none of those connections survived
//! it.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::jetstream::kv::{Operation, Store};
use bytes::Bytes;
use futures::StreamExt;
use locker_schemas::{now_millis, CabinetId, Millis};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::ClusterMetrics;
use crate::edge::PresenceEvent;

/// A presence key's value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The node holding the cabinet's connection.
    pub node: String,
    /// That node's connection id.
    pub conn: u64,
    /// When the connection was relayed, ms since the epoch.
    pub at: Millis,
}

/// Cabinet -> the node holding its connection (shared, cheap to clone).
#[derive(Clone, Default)]
pub struct Directory(Arc<RwLock<HashMap<CabinetId, String>>>);

impl Directory {
    /// The node holding `cabinet`'s connection, if it is connected anywhere.
    pub fn node_of(&self, cabinet: &CabinetId) -> Option<String> {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(cabinet)
            .cloned()
    }

    /// Sets (Some) or clears (None) a cabinet's node; returns the previous one.
    fn set(&self, cabinet: CabinetId, node: Option<String>) -> Option<String> {
        let mut m = self.0.write().unwrap_or_else(|p| p.into_inner());
        match node {
            Some(n) => m.insert(cabinet, n),
            None => m.remove(&cabinet),
        }
    }

    fn entries(&self) -> Vec<(CabinetId, String)> {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(c, n)| (c.clone(), n.clone()))
            .collect()
    }

    fn cabinets(&self) -> Vec<CabinetId> {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect()
    }
}

/// Deletes the keys that still name `node` (its connections died with it). Returns how many.
pub async fn clear_stale(kv: &Store, node: &str) -> usize {
    let keys: Vec<String> = match kv.keys().await {
        Ok(k) => k.filter_map(|k| async move { k.ok() }).collect().await,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list the presence bucket");
            return 0;
        }
    };
    let mut cleared = 0;
    for key in keys {
        if let Ok(Some(e)) = kv.entry(key.clone()).await {
            let ours = e.operation == Operation::Put
                && serde_json::from_slice::<Record>(&e.value).is_ok_and(|r| r.node == node);
            if ours
                && kv
                    .delete_expect_revision(&key, Some(e.revision))
                    .await
                    .is_ok()
            {
                cleared += 1;
            }
        }
    }
    if cleared > 0 {
        tracing::info!(
            cleared,
            "presence of connections lost in this node's last run removed"
        );
    }
    cleared
}

/// Writes this node's edge presence changes to the bucket until the edge's channel closes
/// (then every change it reported has been written) or `stop` fires and the channel is empty.
pub async fn write_local(
    kv: Store,
    node: String,
    metrics: ClusterMetrics,
    mut rx: mpsc::Receiver<PresenceEvent>,
    stop: CancellationToken,
) {
    loop {
        let ev = tokio::select! {
            biased;
            ev = rx.recv() => ev,
            _ = stop.cancelled() => rx.try_recv().ok(),
        };
        let Some(ev) = ev else { return };
        let mut wait = Duration::from_millis(50);
        for attempt in 0.. {
            match write_one(&kv, &node, &ev).await {
                Ok(op) => {
                    metrics.presence.with_label_values(&[op]).inc();
                    break;
                }
                Err(e) => {
                    metrics.presence.with_label_values(&["failed"]).inc();
                    if attempt == 0 {
                        tracing::warn!(cabinet = %ev.cabinet, error = %e, "cannot write presence; retrying");
                    }
                    if stop.is_cancelled() && attempt >= 3 {
                        break;
                    }
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(2));
                }
            }
        }
    }
}

async fn write_one(
    kv: &Store,
    node: &str,
    ev: &PresenceEvent,
) -> Result<&'static str, async_nats::Error> {
    let key = ev.cabinet.as_str();
    if ev.online {
        let rec = Record {
            node: node.to_owned(),
            conn: ev.conn_id,
            at: ev.at,
        };
        kv.put(key, Bytes::from(serde_json::to_vec(&rec)?)).await?;
        return Ok("online");
    }
    let Some(e) = kv.entry(key).await? else {
        return Ok("offline");
    };
    let ours = e.operation == Operation::Put
        && serde_json::from_slice::<Record>(&e.value)
            .is_ok_and(|r| r.node == node && r.conn == ev.conn_id);
    if !ours {
        return Ok("moved");
    }
    match kv.delete_expect_revision(key, Some(e.revision)).await {
        Ok(()) => Ok("offline"),
        // written meanwhile: the cabinet is connected again, elsewhere or here
        Err(e) if e.kind() == async_nats::jetstream::kv::DeleteErrorKind::WrongLastRevision => {
            Ok("moved")
        }
        Err(e) => Err(e.into()),
    }
}

/// Watches the bucket until `stop` fires: keeps `directory` and hands the fleet's presence
/// transitions to `actors`.
pub async fn watch(
    kv: Store,
    node: String,
    directory: Directory,
    metrics: ClusterMetrics,
    actors: mpsc::Sender<PresenceEvent>,
    stop: CancellationToken,
) {
    let mut failures = 0u64;
    loop {
        let r = tokio::select! {
            r = watch_once(&kv, &node, &directory, &metrics, &actors) => r,
            _ = stop.cancelled() => return,
        };
        match r {
            Ok(()) => return, // the actors are gone
            Err(e) => {
                failures += 1;
                if failures == 1 {
                    tracing::warn!(error = %e, "presence watch interrupted; opening it again (logged once)");
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = stop.cancelled() => return,
        }
    }
}

async fn watch_once(
    kv: &Store,
    node: &str,
    directory: &Directory,
    metrics: &ClusterMetrics,
    actors: &mpsc::Sender<PresenceEvent>,
) -> Result<(), async_nats::Error> {
    // what was deleted while the watch was down: the current keys, then the changes
    let keys: std::collections::HashSet<String> = kv
        .keys()
        .await?
        .filter_map(|k| async move { k.ok() })
        .collect()
        .await;
    for cab in directory.cabinets() {
        if !keys.contains(cab.as_str())
            && transition(directory, node, metrics, actors, cab, None, now_millis(), 0)
                .await
                .is_err()
        {
            return Ok(());
        }
    }
    let mut w = kv.watch_with_history(">").await?;
    while let Some(e) = w.next().await {
        let e = e?;
        let Ok(cab) = CabinetId::new(e.key.clone()) else {
            continue;
        };
        let rec = match e.operation {
            Operation::Put => serde_json::from_slice::<Record>(&e.value).ok(),
            Operation::Delete | Operation::Purge => None,
        };
        let (at, conn) = rec
            .as_ref()
            .map(|r| (r.at, r.conn))
            .unwrap_or((now_millis(), 0));
        let node_of = rec.map(|r| r.node);
        if transition(directory, node, metrics, actors, cab, node_of, at, conn)
            .await
            .is_err()
        {
            return Ok(());
        }
    }
    Err("the presence watch ended".into())
}

/// Applies one cabinet's presence to the directory and tells the actors if it went online or
/// offline. `Err` if the actors are gone.
#[allow(clippy::too_many_arguments)]
async fn transition(
    directory: &Directory,
    node: &str,
    metrics: &ClusterMetrics,
    actors: &mpsc::Sender<PresenceEvent>,
    cabinet: CabinetId,
    now_on: Option<String>,
    at: Millis,
    conn_id: u64,
) -> Result<(), ()> {
    let online = now_on.is_some();
    let is_here = now_on.as_deref() == Some(node);
    let before = directory.set(cabinet.clone(), now_on);
    let was_here = before.as_deref() == Some(node);
    if is_here && !was_here {
        metrics.cabinets_here.inc();
    } else if was_here && !is_here {
        metrics.cabinets_here.dec();
    }
    if before.is_some() == online {
        return Ok(()); // no transition (a move between nodes, a repeated state)
    }
    actors
        .send(PresenceEvent {
            cabinet,
            online,
            conn_id,
            at,
        })
        .await
        .map_err(|_| ())
}

/// When this node last renewed its liveness key (ms since the epoch; 0 = never): the sweep
/// judges other nodes only while its own renewals succeed.
#[derive(Clone, Default)]
pub struct Liveness(Arc<std::sync::atomic::AtomicU64>);

impl Liveness {
    fn renewed(&self, at: Millis) {
        self.0.store(at, std::sync::atomic::Ordering::Relaxed);
    }

    fn healthy(&self, now: Millis, ttl: Duration) -> bool {
        let last = self.0.load(std::sync::atomic::Ordering::Relaxed);
        last > 0 && now.saturating_sub(last) < ttl.as_millis() as u64 / 2
    }
}

/// Renews this node's liveness key every third of `ttl` (sooner again after a failure) until
/// `stop` (then deletes it: a node that stops cleanly has already closed its connections).
pub async fn heartbeat(
    nodes: Store,
    node: String,
    ttl: Duration,
    liveness: Liveness,
    stop: CancellationToken,
) {
    let every = (ttl / 3).max(Duration::from_millis(100));
    let mut failing = false;
    loop {
        let now = now_millis();
        let wait = match nodes.put(&node, Bytes::from(now.to_string())).await {
            Ok(_) => {
                liveness.renewed(now);
                failing = false;
                every
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "cannot renew this node's liveness key; retrying");
                }
                failing = true;
                Duration::from_millis(200)
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.cancelled() => {
                let _ = nodes.delete(&node).await;
                return;
            }
        }
    }
}

/// Every half `ttl`, until `stop`:
/// - removes the presence of cabinets whose node is dead: its liveness key was missing at two
///   sweeps in a row, while this node's own renewals succeeded (a NATS hiccup, which delays
///   every node's renewal alike, kills nobody);
/// - writes again the presence of this node's own cabinets that the bucket no longer names
///   (a sweep elsewhere that was wrong, an offline of a connection that was replaced here), and
///   removes what names this node for a cabinet without a session here (older than a sweep).
#[allow(clippy::too_many_arguments)]
pub async fn sweep(
    presence: Store,
    nodes: Store,
    node: String,
    directory: Directory,
    direct: Option<crate::broker::Direct>,
    metrics: ClusterMetrics,
    ttl: Duration,
    liveness: Liveness,
    stop: CancellationToken,
) {
    let every = (ttl / 2).max(Duration::from_millis(100));
    // nodes whose key was missing at the last sweep
    let mut suspects: std::collections::HashSet<String> = Default::default();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
        if let Some(direct) = &direct {
            let here = direct.sessions();
            let with_session: std::collections::HashSet<&CabinetId> =
                here.iter().map(|(c, _)| c).collect();
            // named here, but no session (an offline that lost a race with the write above)
            for (cab, on) in directory.entries() {
                if on != node || with_session.contains(&cab) {
                    continue;
                }
                let Ok(Some(e)) = presence.entry(cab.as_str()).await else {
                    continue;
                };
                let stale = e.operation == Operation::Put
                    && serde_json::from_slice::<Record>(&e.value).is_ok_and(|r| {
                        r.node == node
                            && now_millis().saturating_sub(r.at) > every.as_millis() as u64
                    });
                if stale
                    && presence
                        .delete_expect_revision(cab.as_str(), Some(e.revision))
                        .await
                        .is_ok()
                {
                    metrics.presence.with_label_values(&["offline"]).inc();
                }
            }
            drop(with_session);
            for (cab, conn) in here {
                if directory.node_of(&cab).is_none() {
                    let rec = Record {
                        node: node.clone(),
                        conn,
                        at: now_millis(),
                    };
                    if let Ok(v) = serde_json::to_vec(&rec) {
                        if presence.put(cab.as_str(), Bytes::from(v)).await.is_ok() {
                            metrics.presence.with_label_values(&["restored"]).inc();
                        }
                    }
                }
            }
        }
        if !liveness.healthy(now_millis(), ttl) {
            suspects.clear();
            continue;
        }
        let mut dead: HashMap<String, bool> = HashMap::new();
        let mut missing_now = std::collections::HashSet::new();
        for (cab, on) in directory.entries() {
            if on == node {
                continue;
            }
            let is_dead = match dead.get(&on) {
                Some(d) => *d,
                None => {
                    let missing = match nodes.entry(on.clone()).await {
                        Ok(e) => !e.is_some_and(|e| e.operation == Operation::Put),
                        Err(_) => false, // cannot tell: leave it
                    };
                    if missing {
                        missing_now.insert(on.clone());
                    }
                    let d = missing && suspects.contains(&on);
                    dead.insert(on.clone(), d);
                    d
                }
            };
            if !is_dead {
                continue;
            }
            let Ok(Some(e)) = presence.entry(cab.as_str()).await else {
                continue;
            };
            let still = e.operation == Operation::Put
                && serde_json::from_slice::<Record>(&e.value).is_ok_and(|r| r.node == on);
            if still
                && presence
                    .delete_expect_revision(cab.as_str(), Some(e.revision))
                    .await
                    .is_ok()
            {
                metrics.presence.with_label_values(&["dead_node"]).inc();
                tracing::info!(cabinet = %cab, node = %on, "presence of a cabinet on a dead node removed");
            }
        }
        suspects = missing_now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_judges_others_only_while_its_own_renewals_succeed() {
        let l = Liveness::default();
        let ttl = Duration::from_secs(10);
        assert!(!l.healthy(1_000_000, ttl), "never renewed: judges nobody");
        l.renewed(1_000_000);
        assert!(l.healthy(1_004_000, ttl));
        assert!(
            !l.healthy(1_006_000, ttl),
            "its own renewal is late: judges nobody"
        );
    }
}
