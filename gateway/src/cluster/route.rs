//! Downlinks between nodes. A downlink the gateway publishes for a cabinet whose session is not
//! on this node (a command queued here for a cabinet connected to another node, a credential
//! set) goes, through core NATS, to the node the presence [`Directory`] names, on the subject
//! `lk.node.{node}.down.{cabinet}` with the kind in the `Lk-Kind` header; that node hands it to
//! the cabinet's session. Acknowledgements never travel: every node's ingest sees every uplink
//! and acknowledges it, and only the node holding the session delivers its own.
//!
//! Nothing here is durable, exactly like the broker's direct path: a downlink lost between the
//! nodes (the cabinet moved meanwhile, a node died) is recovered by the end-to-end protocol (the
//! dispatcher resends a command until its result arrives, the parcel domain resends a credential
//! set the cabinet's hello shows it lacks).

use async_nats::HeaderMap;
use bytes::Bytes;
use futures::StreamExt;
use locker_schemas::{CabinetId, DownKind};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::presence::Directory;
use super::{cabinet_of_token, subject_token, ClusterMetrics};
use crate::broker::{Delivery, Direct, Remote};

/// The header carrying a forwarded downlink's kind.
const KIND_HEADER: &str = "Lk-Kind";
/// Downlinks queued for forwarding before further ones are dropped (and resent end to end).
const QUEUE: usize = 4_096;

/// A downlink on its way to another node.
struct Forward {
    node: String,
    cabinet: CabinetId,
    kind: DownKind,
    payload: Bytes,
}

/// Forwards downlinks to the node holding the cabinet (the broker's [`Remote`]).
pub struct Router {
    node: String,
    directory: Directory,
    tx: mpsc::Sender<Forward>,
    metrics: ClusterMetrics,
}

impl Router {
    /// A router and the task that publishes what it forwards (ends when the router is dropped).
    pub fn new(
        client: async_nats::Client,
        node: String,
        directory: Directory,
        metrics: ClusterMetrics,
    ) -> (Self, impl std::future::Future<Output = ()>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let router = Self {
            node,
            directory,
            tx,
            metrics,
        };
        (router, send(client, rx))
    }
}

impl Remote for Router {
    fn forward(&self, cabinet: &CabinetId, kind: DownKind, payload: Bytes) -> bool {
        let node = match self.directory.node_of(cabinet) {
            Some(n) if n != self.node => n,
            // connected nowhere, or here without a session (it is just leaving or arriving)
            _ => {
                self.metrics
                    .downlinks
                    .with_label_values(&["unroutable"])
                    .inc();
                return false;
            }
        };
        let f = Forward {
            node,
            cabinet: cabinet.clone(),
            kind,
            payload,
        };
        match self.tx.try_send(f) {
            Ok(()) => {
                self.metrics
                    .downlinks
                    .with_label_values(&["forwarded"])
                    .inc();
                true
            }
            Err(_) => {
                self.metrics.downlinks.with_label_values(&["dropped"]).inc();
                false
            }
        }
    }
}

async fn send(client: async_nats::Client, mut rx: mpsc::Receiver<Forward>) {
    while let Some(f) = rx.recv().await {
        let subject = format!("lk.node.{}.down.{}", f.node, subject_token(&f.cabinet));
        let mut headers = HeaderMap::new();
        headers.insert(KIND_HEADER, f.kind.as_str());
        if let Err(e) = client
            .publish_with_headers(subject, headers, f.payload)
            .await
        {
            tracing::debug!(error = %e, cabinet = %f.cabinet, "downlink not forwarded");
        }
    }
}

/// Receives the downlinks other nodes forward to this node's cabinets and hands them to their
/// sessions, until `stop` fires.
pub async fn receive(
    client: async_nats::Client,
    node: String,
    direct: Direct,
    metrics: ClusterMetrics,
    stop: CancellationToken,
) {
    let mut sub = match client.subscribe(format!("lk.node.{node}.down.>")).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot subscribe to this node's downlinks: commands queued on other nodes will not reach its cabinets");
            return;
        }
    };
    loop {
        let m = tokio::select! {
            m = sub.next() => m,
            _ = stop.cancelled() => return,
        };
        let Some(m) = m else { return };
        let cabinet = m
            .subject
            .as_str()
            .rsplit('.')
            .next()
            .and_then(cabinet_of_token);
        let kind = m
            .headers
            .as_ref()
            .and_then(|h| h.get(KIND_HEADER))
            .and_then(|k| k.as_str().parse::<DownKind>().ok());
        let (Some(cabinet), Some(kind)) = (cabinet, kind) else {
            tracing::debug!(subject = %m.subject, "malformed forwarded downlink dropped");
            continue;
        };
        metrics.downlinks.with_label_values(&["received"]).inc();
        if direct.deliver(&cabinet, kind, m.payload) != Delivery::Queued {
            tracing::debug!(cabinet = %cabinet, "forwarded downlink for a cabinet no longer here");
        }
    }
}
