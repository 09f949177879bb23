//! The cluster's metrics (`locker_cluster_*`), registered when a node starts in cluster mode.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

fn register<M: prometheus::core::Collector + Clone + 'static>(
    r: &Registry,
    m: M,
) -> Result<M, prometheus::Error> {
    r.register(Box::new(m.clone()))?;
    Ok(m)
}

/// What the cluster paths count.
#[derive(Clone)]
pub struct ClusterMetrics {
    /// Uplinks written to the stream, by result (`stored`, `duplicate`, `failed`).
    pub journal: IntCounterVec,
    /// 1 while writes to the stream fail (uplinks wait, nothing is acknowledged).
    pub journal_failing: IntGauge,
    /// Time from handing a round of uplinks to JetStream to its last confirmation.
    pub journal_seconds: Histogram,
    /// Uplinks this node's consumer fed to its ingest.
    pub feed: IntCounter,
    /// Times the consumer had to be opened again (NATS gone, leader change).
    pub feed_restarts: IntCounter,
    /// Downlinks between nodes, by result (`forwarded`, `received`, `unroutable`, `dropped`).
    pub downlinks: IntCounterVec,
    /// Presence bucket updates by this node (`online`, `offline`, `moved`, `dead_node`, `restored`, `failed`).
    pub presence: IntCounterVec,
    /// Cabinets connected to this node, as the bucket says.
    pub cabinets_here: IntGauge,
    /// 1 while the node is connected to NATS.
    pub connected: IntGauge,
    /// Records this node wrote to the domain stream, by part and result (`ok`, `failed`,
    /// `fenced`).
    pub domain_writes: IntCounterVec,
    /// Time for a domain record to be confirmed by the stream.
    pub domain_write_seconds: Histogram,
    /// Size of the domain records this node wrote, bytes.
    pub domain_record_bytes: Histogram,
    /// Domain records this node wrote as several messages (longer than one), by part.
    pub domain_chunked: IntCounterVec,
    /// Snapshots of a part this node wrote, by part and result (`written`, `failed`).
    pub domain_snapshots: IntCounterVec,
    /// Messages of the domain stream removed below a snapshot, by part.
    pub domain_purged: IntCounterVec,
    /// Records of other nodes applied to this node's trees, by part and result (`applied`,
    /// `undecodable`, `abandoned`: an unfinished record in chunks, never applied).
    pub domain_applied: IntCounterVec,
    /// 1 while this node runs the domain (holds the lease).
    pub domain_leader: IntGauge,
    /// Times this node took the domain lease.
    pub domain_takeovers: IntCounter,
}

impl ClusterMetrics {
    /// Creates and registers the metrics in `r`.
    pub fn new(r: &Registry) -> Result<Self, prometheus::Error> {
        let journal = register(
            r,
            IntCounterVec::new(
                Opts::new(
                    "locker_cluster_journal_total",
                    "Uplinks written to the replicated stream, by result: stored, duplicate \
                     (already there: acknowledged, not stored again), failed (tried again)",
                ),
                &["result"],
            )?,
        )?;
        for l in ["stored", "duplicate", "failed"] {
            journal.with_label_values(&[l]);
        }
        let downlinks = register(
            r,
            IntCounterVec::new(
                Opts::new(
                    "locker_cluster_downlinks_total",
                    "Downlinks for cabinets on other nodes: forwarded (sent to the node holding \
                     the cabinet), received (from another node, for a cabinet here), unroutable \
                     (the cabinet is connected nowhere), dropped (the forwarding queue was full)",
                ),
                &["result"],
            )?,
        )?;
        for l in ["forwarded", "received", "unroutable", "dropped"] {
            downlinks.with_label_values(&[l]);
        }
        let presence = register(
            r,
            IntCounterVec::new(
                Opts::new(
                    "locker_cluster_presence_updates_total",
                    "Updates of the presence bucket by this node: online, offline, moved \
                     (an offline not written: the cabinet is already on another node), \
                     dead_node (a cabinet's presence on a node that stopped renewing its \
                     liveness removed), restored (a cabinet connected here that the bucket no \
                     longer named, written again), failed",
                ),
                &["op"],
            )?,
        )?;
        for l in [
            "online",
            "offline",
            "moved",
            "dead_node",
            "restored",
            "failed",
        ] {
            presence.with_label_values(&[l]);
        }
        let domain_writes = register(
            r,
            IntCounterVec::new(
                Opts::new(
                    "locker_cluster_domain_writes_total",
                    "Domain records (commits of the command queue, parcels, alerts, outboxes) \
                     this node wrote to the replicated stream, by part and result: ok, failed \
                     (tried again), fenced (another node wrote since: this node stops running \
                     the domain)",
                ),
                &["part", "result"],
            )?,
        )?;
        let domain_applied = register(
            r,
            IntCounterVec::new(
                Opts::new(
                    "locker_cluster_domain_applied_total",
                    "Domain records of the node running the domain applied to this node's \
                     own trees, by part and result: applied, undecodable (skipped, logged), \
                     abandoned (a record in chunks its writer never finished, never applied)",
                ),
                &["part", "result"],
            )?,
        )?;
        let domain_chunked = register(
            r,
            IntCounterVec::new(
                Opts::new(
                    "locker_cluster_domain_chunked_total",
                    "Domain records this node wrote as several messages, by part: longer than \
                     cluster.max_record_bytes (by default the NATS server's max_payload)",
                ),
                &["part"],
            )?,
        )?;
        let domain_snapshots = register(
            r,
            IntCounterVec::new(
                Opts::new(
                    "locker_cluster_domain_snapshots_total",
                    "Snapshots of a part of the domain (its whole state, after which its older \
                     records are purged) this node wrote, by part and result: written, failed \
                     (tried again after the next writes)",
                ),
                &["part", "result"],
            )?,
        )?;
        let domain_purged = register(
            r,
            IntCounterVec::new(
                Opts::new(
                    "locker_cluster_domain_purged_total",
                    "Messages of the domain stream this node purged below a snapshot, by part",
                ),
                &["part"],
            )?,
        )?;
        for p in ["commands", "parcels", "alerts", "outbound"] {
            domain_chunked.with_label_values(&[p]);
            domain_purged.with_label_values(&[p]);
            for r in ["written", "failed"] {
                domain_snapshots.with_label_values(&[p, r]);
            }
            for r in ["ok", "failed", "fenced"] {
                domain_writes.with_label_values(&[p, r]);
            }
            for r in ["applied", "undecodable", "abandoned"] {
                domain_applied.with_label_values(&[p, r]);
            }
        }
        Ok(Self {
            domain_writes,
            domain_applied,
            domain_chunked,
            domain_snapshots,
            domain_purged,
            domain_record_bytes: register(
                r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "locker_cluster_domain_record_bytes",
                        "Size of the domain records this node wrote, bytes (one record is one \
                         commit of an actor)",
                    )
                    .buckets(prometheus::exponential_buckets(256.0, 4.0, 9)?),
                )?,
            )?,
            domain_write_seconds: register(
                r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "locker_cluster_domain_write_seconds",
                        "Time for a domain record to be confirmed by the replicated stream",
                    )
                    .buckets(vec![
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
                    ]),
                )?,
            )?,
            domain_leader: register(
                r,
                IntGauge::new(
                    "locker_cluster_domain_leader",
                    "1 while this node runs the parcel domain, the rules engine, webhooks and \
                     the command queue (it holds the domain lease)",
                )?,
            )?,
            domain_takeovers: register(
                r,
                IntCounter::new(
                    "locker_cluster_domain_takeovers_total",
                    "Times this node took the domain lease",
                )?,
            )?,
            journal,
            journal_failing: register(
                r,
                IntGauge::new(
                    "locker_cluster_journal_failing",
                    "1 while writes of uplinks to the replicated stream fail",
                )?,
            )?,
            journal_seconds: register(
                r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "locker_cluster_journal_seconds",
                        "Time for a round of uplinks to be confirmed by the replicated stream",
                    )
                    .buckets(vec![
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
                    ]),
                )?,
            )?,
            feed: register(
                r,
                IntCounter::new(
                    "locker_cluster_feed_total",
                    "Uplinks from the stream (every node's) fed to this node's ingest",
                )?,
            )?,
            feed_restarts: register(
                r,
                IntCounter::new(
                    "locker_cluster_feed_restarts_total",
                    "Times this node's stream consumer was opened again after an error",
                )?,
            )?,
            downlinks,
            presence,
            cabinets_here: register(
                r,
                IntGauge::new(
                    "locker_cluster_cabinets_here",
                    "Cabinets whose connection this node holds, by the presence bucket",
                )?,
            )?,
            connected: register(
                r,
                IntGauge::new(
                    "locker_cluster_nats_connected",
                    "1 while this node is connected to NATS",
                )?,
            )?,
        })
    }
}
