//! Ingest: every uplink the broker forwards to the gateway's link goes through here. It is
//! judged against its cabinet's storage life ([`plan`]: deduplication by (cabinet, boot, seq),
//! new lives after a wiped agent, quarantine of what cannot be accepted as is), written to the
//! audit log with one flush per group of events (group commit), acknowledged up to what is
//! durably stored, and then handed to the fleet state and the command dispatcher.
//!
//! Storage failures never stop ingest: the batch is kept and retried with capped exponential
//! backoff, nothing of it is acknowledged until it is durable, `locker_ingest_storage_failing`
//! is 1 and `/readyz` answers 503 meanwhile ([`IngestHandle`]). While it retries, the inbound
//! channel fills and the broker holds, then skips (go-back-N resends; nothing is lost).
//!
//! Owns: the lives of the cabinets ([`plan::Core`]), the retention task ([`retention`]).

pub mod head;
mod logonce;
mod plan;
pub mod retention;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use locker_schemas::codec::encode_downlink;
use locker_schemas::{now_millis, Ack, CabinetId, DownKind, Downlink, DownlinkBody, Topic, Uplink};
use tokio::sync::mpsc;

use crate::broker::{Inbound, Publisher};
use crate::metrics::IngestMetrics;
use crate::store::{QuarantineLimits, Store, StoreError};

/// Events stored in one commit, passed on to the fleet state, the dispatcher and the parcel
/// domain.
pub type Committed = std::sync::Arc<Commit>;

/// One group commit: the accepted uplinks in order, with their audit positions (so a consumer
/// that keeps its own durable cursor can catch up from the audit log after a crash).
#[derive(Debug, Default)]
pub struct Commit {
    pub events: Vec<Uplink>,
    pub positions: Vec<u64>,
}

impl Commit {
    /// A commit of `events` without audit positions (tests of consumers).
    pub fn of(events: Vec<Uplink>) -> Committed {
        std::sync::Arc::new(Commit {
            positions: vec![0; events.len()],
            events,
        })
    }
}

impl std::ops::Deref for Commit {
    type Target = Vec<Uplink>;
    fn deref(&self) -> &Vec<Uplink> {
        &self.events
    }
}

/// Ingest settings (the `[ingest]` table of gateway.toml).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct IngestConfig {
    /// The largest group commit, events.
    pub max_batch: usize,
    /// First wait before retrying a group commit that failed, ms (doubles per failure).
    pub retry_initial_ms: u64,
    /// Longest wait between retries of a failing group commit, ms.
    pub retry_max_ms: u64,
    /// `/readyz` fails when a batch has waited longer than this to become durable, ms.
    pub ready_max_lag_ms: u64,
    /// Quarantined uplinks kept per cabinet (oldest dropped first, counted).
    pub quarantine_max_per_cabinet: u64,
    /// Quarantined uplinks kept in all.
    pub quarantine_max_total: u64,
    /// Audit log retention, days by the cabinet's clock (0 = keep forever).
    pub retention_days: u64,
    /// Most audit entries kept per cabinet (0 = no limit).
    pub retention_max_events: u64,
    /// How often the retention task runs, ms.
    pub retention_interval_ms: u64,
    /// Most entries deleted per blocking step of the retention task.
    pub retention_batch: usize,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            max_batch: 8192,
            retry_initial_ms: 50,
            retry_max_ms: 5_000,
            ready_max_lag_ms: 10_000,
            quarantine_max_per_cabinet: 1_000,
            quarantine_max_total: 100_000,
            retention_days: 0,
            retention_max_events: 0,
            retention_interval_ms: 3_600_000,
            retention_batch: 1_000,
        }
    }
}

impl IngestConfig {
    fn limits(&self) -> QuarantineLimits {
        QuarantineLimits {
            max_per_cabinet: self.quarantine_max_per_cabinet.max(1),
            max_total: self.quarantine_max_total.max(1),
        }
    }
}

/// What ingest reports about itself (shared with [`IngestHandle`]).
#[derive(Default)]
struct Health {
    storage_failing: AtomicBool,
    last_error: Mutex<String>,
    /// Gateway clock when the batch being committed was taken in, ms (0 = idle).
    batch_since_ms: AtomicU64,
    /// Whether the inbound channel from the broker is closed (the link is gone).
    inbound_closed: AtomicBool,
}

/// One `/readyz` check.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

/// A cloneable view of ingest for readiness checks.
#[derive(Clone)]
pub struct IngestHandle {
    health: Arc<Health>,
    publisher: Publisher,
    max_lag: Duration,
}

impl IngestHandle {
    /// The readiness checks: storage writable, broker link alive, ingest lag under the limit.
    pub fn checks(&self) -> Vec<Check> {
        let h = &self.health;
        let failing = h.storage_failing.load(Ordering::SeqCst);
        let storage = Check {
            name: "storage",
            ok: !failing,
            detail: if failing {
                h.last_error
                    .lock()
                    .map(|e| e.clone())
                    .unwrap_or_else(|p| p.into_inner().clone())
            } else {
                "writable".into()
            },
        };
        let link_ok = !h.inbound_closed.load(Ordering::SeqCst) && self.publisher.is_open();
        let broker = Check {
            name: "broker",
            ok: link_ok,
            detail: if link_ok {
                "linked"
            } else {
                "the gateway's broker link is closed"
            }
            .into(),
        };
        let since = h.batch_since_ms.load(Ordering::SeqCst);
        let lag = if since == 0 {
            0
        } else {
            now_millis().saturating_sub(since)
        };
        let lag_ok = u128::from(lag) <= self.max_lag.as_millis();
        let lag = Check {
            name: "ingest_lag",
            ok: lag_ok,
            detail: format!("{lag} ms (limit {} ms)", self.max_lag.as_millis()),
        };
        vec![storage, broker, lag]
    }
}

/// The ingest actor.
pub struct Ingest {
    cfg: IngestConfig,
    core: Arc<Mutex<plan::Core>>,
    publisher: Publisher,
    metrics: IngestMetrics,
    committed: Vec<mpsc::Sender<Committed>>,
    health: Arc<Health>,
    /// Cluster mode: the highest uplink-stream sequence made durable here.
    progress: Option<tokio::sync::watch::Sender<u64>>,
}

impl Ingest {
    /// Creates the actor (cabinets' lives are read from the audit log on first sight); every
    /// commit is sent to each of `committed` (bounded: a slow consumer slows ingest, it never
    /// loses).
    pub fn new(
        cfg: IngestConfig,
        store: Store,
        publisher: Publisher,
        metrics: IngestMetrics,
        committed: Vec<mpsc::Sender<Committed>>,
    ) -> Self {
        let core = plan::Core::new(store, cfg.limits(), metrics.clone());
        Self {
            cfg,
            core: Arc::new(Mutex::new(core)),
            publisher,
            metrics,
            committed,
            health: Arc::new(Health::default()),
            progress: None,
        }
    }

    /// Cluster mode: reports on `progress` the highest uplink-stream sequence of every batch
    /// made durable (the stream consumer acknowledges the stream up to it).
    pub fn with_progress(mut self, progress: tokio::sync::watch::Sender<u64>) -> Self {
        self.progress = Some(progress);
        self
    }

    /// The readiness view.
    pub fn handle(&self) -> IngestHandle {
        IngestHandle {
            health: self.health.clone(),
            publisher: self.publisher.clone(),
            max_lag: Duration::from_millis(self.cfg.ready_max_lag_ms),
        }
    }

    /// Runs until the inbound channel closes or `cancel` fires (then it commits what it
    /// already received, if storage lets it, and returns).
    pub async fn run(
        mut self,
        mut inbound: mpsc::Receiver<Inbound>,
        cancel: tokio_util::sync::CancellationToken,
    ) {
        let max = self.cfg.max_batch.max(1);
        let mut buf = Vec::with_capacity(max);
        loop {
            buf.clear();
            let n = tokio::select! {
                n = inbound.recv_many(&mut buf, max) => n,
                _ = cancel.cancelled() => {
                    while buf.len() < max {
                        match inbound.try_recv() {
                            Ok(m) => buf.push(m),
                            Err(_) => break,
                        }
                    }
                    if !buf.is_empty() {
                        // one attempt: a failing store must not hold up shutdown
                        let _ = self.commit(std::mem::take(&mut buf)).await;
                    }
                    return;
                }
            };
            if n == 0 {
                self.health.inbound_closed.store(true, Ordering::SeqCst);
                return;
            }
            buf = self
                .commit_until_durable(std::mem::take(&mut buf), &cancel)
                .await;
        }
    }

    /// Commits a batch, retrying with capped exponential backoff while storage fails.
    /// Returns the (emptied or abandoned) buffer for reuse.
    async fn commit_until_durable(
        &mut self,
        mut msgs: Vec<Inbound>,
        cancel: &tokio_util::sync::CancellationToken,
    ) -> Vec<Inbound> {
        self.health
            .batch_since_ms
            .store(now_millis().max(1), Ordering::SeqCst);
        let mut wait = Duration::from_millis(self.cfg.retry_initial_ms.max(1));
        let max_wait = Duration::from_millis(self.cfg.retry_max_ms.max(1));
        let mut failures = 0u64;
        loop {
            match self.commit(msgs).await {
                (back, Ok(())) => {
                    msgs = back;
                    if failures > 0 {
                        tracing::warn!(failures, "storage writable again; ingest resumed");
                    }
                    self.health.storage_failing.store(false, Ordering::SeqCst);
                    self.metrics.faults.storage_failing.set(0);
                    break;
                }
                (back, Err(e)) => {
                    msgs = back;
                    failures += 1;
                    self.metrics.faults.storage_errors.inc();
                    self.metrics.faults.storage_failing.set(1);
                    self.health.storage_failing.store(true, Ordering::SeqCst);
                    if let Ok(mut last) = self.health.last_error.lock() {
                        *last = e.to_string();
                    }
                    if failures == 1 {
                        tracing::error!(error = %e, "group commit failed: nothing acknowledged; retrying with backoff (logged once per outage)");
                    } else {
                        tracing::debug!(error = %e, failures, "group commit failed again");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = cancel.cancelled() => break,
                    }
                    wait = (wait * 2).min(max_wait);
                }
            }
        }
        self.health.batch_since_ms.store(0, Ordering::SeqCst);
        msgs.clear();
        msgs
    }

    /// One attempt at a batch: judge, write, flush on a blocking thread; then acknowledge and
    /// pass on. Returns the messages (for a retry) and whether it is durable.
    async fn commit(&mut self, msgs: Vec<Inbound>) -> (Vec<Inbound>, Result<(), StoreError>) {
        let started = Instant::now();
        let core = self.core.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let r = {
                let mut c = core.lock().unwrap_or_else(|p| p.into_inner());
                c.process(&msgs, now_millis())
            };
            (msgs, r)
        })
        .await;
        let (msgs, out) = match joined {
            Ok((msgs, Ok(out))) => (msgs, out),
            Ok((msgs, Err(e))) => return (msgs, Err(e)),
            Err(e) => return (Vec::new(), Err(StoreError::Join(e.to_string()))),
        };
        if let Some(flush) = out.flush {
            self.metrics.flushes.with_label_values(&["audit"]).inc();
            self.metrics.flush_seconds.observe(flush.as_secs_f64());
            self.metrics.batch_size.observe(out.stored as f64);
            self.metrics
                .lag_seconds
                .observe(started.elapsed().as_secs_f64());
        }
        for (_, u) in &out.accepted {
            self.metrics
                .events
                .with_label_values(&[u.body.kind().as_str()])
                .inc();
        }
        // Stored events go on to the consumers (the dispatcher first: a Result is the end of
        // a remote unlock someone is waiting for) before the acks, which only free outboxes.
        if !out.accepted.is_empty() {
            let (positions, events) = out.accepted.into_iter().unzip();
            let committed: Committed = std::sync::Arc::new(Commit { events, positions });
            for tx in &self.committed {
                let _ = tx.send(committed.clone()).await;
            }
        }
        for (cab, seq) in &out.acks {
            self.ack(cab, *seq).await;
        }
        if let Some(progress) = &self.progress {
            if let Some(top) = msgs.iter().filter_map(|m| m.journal).max() {
                progress.send_if_modified(|v| {
                    let newer = top > *v;
                    if newer {
                        *v = top;
                    }
                    newer
                });
            }
        }
        (msgs, Ok(()))
    }

    async fn ack(&self, cabinet: &CabinetId, seq: u64) {
        let msg = Downlink {
            body: DownlinkBody::Ack(Ack { seq }),
        };
        match encode_downlink(&msg) {
            Ok(bytes) => {
                let topic = Topic::Down(cabinet.clone(), DownKind::Ack);
                if self.publisher.publish(topic, Bytes::from(bytes)).await {
                    self.metrics.acks.inc();
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot encode ack"),
        }
    }
}
