//! A node's cluster tasks, as the gateway's wiring (`app.rs`) starts them: the publisher's
//! router, the uplink journal and feed, the downlink receiver and the presence tasks. Each is
//! returned with its name, to be stopped in the gateway's shutdown phases.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::feed::Feed;
use super::journal::Journal;
use super::presence::{self, Directory};
use super::route::{self, Router};
use super::Cluster;
use crate::broker::{Direct, Inbound, Remote};
use crate::edge::PresenceEvent;

/// A named task of the node.
pub type Task = (&'static str, JoinHandle<()>);

/// The journal (uplinks into the stream).
pub const JOURNAL: &str = "cluster journal";
/// The feed (the stream into ingest).
pub const FEED: &str = "cluster feed";
/// This node's presence changes into the bucket.
pub const PRESENCE: &str = "cluster presence";
/// The bucket into the actors' presence.
pub const WATCH: &str = "cluster presence watch";
/// This node's liveness key.
pub const LIVENESS: &str = "cluster liveness";
/// The sweep of dead nodes' presence.
pub const SWEEP: &str = "cluster sweep";
/// Downlinks other nodes forward here.
pub const DOWNLINKS: &str = "cluster downlinks";

/// The tasks that stop with ingest (the first phase after the edge).
pub const INGEST_PHASE: &[&str] = &[PRESENCE, WATCH, LIVENESS, SWEEP, JOURNAL, FEED];

impl Cluster {
    /// The broker publisher's router to the other nodes; its forwarding task ends when the
    /// last publisher (and so the router) is dropped.
    pub fn router(&self, directory: &Directory) -> Arc<dyn Remote> {
        let (router, forward) = Router::new(
            self.client.clone(),
            self.node().to_owned(),
            directory.clone(),
            self.metrics.clone(),
        );
        tokio::spawn(forward);
        Arc::new(router)
    }

    /// The journal (reading what the edge hands `journal_rx`) and the feed (into ingest's
    /// `ingest_tx`). Returns the watch ingest reports its durable stream sequence on.
    pub fn spawn_uplinks(
        &self,
        journal_rx: mpsc::Receiver<Inbound>,
        ingest_tx: mpsc::Sender<Inbound>,
        tracker: &TaskTracker,
        stop: &CancellationToken,
    ) -> (watch::Sender<u64>, Vec<Task>) {
        let (progress_tx, progress_rx) = watch::channel(0);
        let journal = Journal::new(
            self.js.clone(),
            ingest_tx.clone(),
            self.metrics.clone(),
            self.cfg.journal_batch,
            self.journal_faults.clone(),
        );
        let feed = Feed::new(
            self.js.clone(),
            self.cfg.stream.clone(),
            self.node(),
            ingest_tx,
            progress_rx,
            self.metrics.clone(),
        );
        let tasks = vec![
            (
                JOURNAL,
                tracker.spawn(journal.run(journal_rx, stop.clone())),
            ),
            (FEED, tracker.spawn(feed.run(stop.clone()))),
        ];
        (progress_tx, tasks)
    }

    /// The receiver of downlinks other nodes forward to this node's cabinets.
    pub fn spawn_downlinks(
        &self,
        direct: Direct,
        tracker: &TaskTracker,
        stop: &CancellationToken,
    ) -> Task {
        let task = tracker.spawn(route::receive(
            self.client.clone(),
            self.node().to_owned(),
            direct,
            self.metrics.clone(),
            stop.clone(),
        ));
        (DOWNLINKS, task)
    }

    /// Presence: clears what this node's last run left, then writes the edge's changes
    /// (`edge_rx`) to the bucket, watches the bucket into `directory` and the returned
    /// receiver (for the actors), renews this node's liveness and sweeps dead nodes'.
    pub async fn spawn_presence(
        &self,
        edge_rx: mpsc::Receiver<PresenceEvent>,
        directory: &Directory,
        direct: Option<Direct>,
        tracker: &TaskTracker,
        stop: &CancellationToken,
    ) -> (mpsc::Receiver<PresenceEvent>, Vec<Task>) {
        presence::clear_stale(&self.presence_kv, self.node()).await;
        let (tx, rx) = mpsc::channel::<PresenceEvent>(4096);
        let node = self.node().to_owned();
        let ttl = Duration::from_millis(self.cfg.node_ttl_ms);
        let write = presence::write_local(
            self.presence_kv.clone(),
            node.clone(),
            self.metrics.clone(),
            edge_rx,
            stop.clone(),
        );
        let watch = presence::watch(
            self.presence_kv.clone(),
            node.clone(),
            directory.clone(),
            self.metrics.clone(),
            tx,
            stop.clone(),
        );
        let liveness = presence::Liveness::default();
        let heartbeat = presence::heartbeat(
            self.nodes_kv.clone(),
            node.clone(),
            ttl,
            liveness.clone(),
            stop.clone(),
        );
        let sweep = presence::sweep(
            self.presence_kv.clone(),
            self.nodes_kv.clone(),
            node,
            directory.clone(),
            direct,
            self.metrics.clone(),
            ttl,
            liveness,
            stop.clone(),
        );
        let tasks = vec![
            (PRESENCE, tracker.spawn(write)),
            (WATCH, tracker.spawn(watch)),
            (LIVENESS, tracker.spawn(heartbeat)),
            (SWEEP, tracker.spawn(sweep)),
        ];
        (rx, tasks)
    }
}
