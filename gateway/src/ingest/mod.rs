//! Ingest: every uplink the broker forwards to the gateway's link goes through here. It is
//! decoded, checked (the envelope's cabinet must match the topic's), deduplicated against the
//! cabinet's high-water mark, appended to the audit log with one flush per group of events
//! (group commit), acknowledged up to what is durably stored, and then handed to the fleet
//! state and the command dispatcher.
//!
//! Ordering: a cabinet's events are accepted only in sequence (`seq == last + 1`). A duplicate
//! (`seq <= last`) or a gap (`seq > last + 1`, e.g. when the broker skipped a message) is dropped
//! and answered with an ack of `last`, and the cabinet resends from there (go-back-N). A cabinet
//! the gateway has never seen starts at whatever sequence number it sends first.

use std::collections::HashMap;
use std::time::Instant;

use bytes::Bytes;
use locker_schemas::codec::encode_downlink;
use locker_schemas::{codec, Ack, CabinetId, DownKind, Downlink, DownlinkBody, Topic, Uplink};
use tokio::sync::mpsc;

use crate::broker::{Inbound, Publisher};
use crate::metrics::IngestMetrics;
use crate::model::CabinetSnapshot;
use crate::store::{self, NewEvent, Store, StoreError};

/// Events stored in one commit, passed on to the fleet state and the dispatcher.
pub type Committed = std::sync::Arc<Vec<Uplink>>;

/// Ingest settings (the `[ingest]` table of gateway.toml).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct IngestConfig {
    /// The largest group commit, events.
    pub max_batch: usize,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self { max_batch: 8192 }
    }
}

/// The ingest actor's state: the high-water mark of every cabinet.
pub struct Ingest {
    cfg: IngestConfig,
    store: Store,
    publisher: Publisher,
    metrics: IngestMetrics,
    hwm: HashMap<CabinetId, u64>,
    committed: Vec<mpsc::Sender<Committed>>,
    logged: LogOnce,
}

/// Remembers which (cabinet, reason) pairs were already logged, so a misbehaving cabinet is
/// logged once (and counted every time) instead of flooding the log. Bounded: when full it
/// forgets everything and starts again.
#[derive(Default)]
struct LogOnce(std::collections::HashSet<(CabinetId, &'static str)>);

impl LogOnce {
    const MAX: usize = 10_000;

    fn first(&mut self, cabinet: &CabinetId, reason: &'static str) -> bool {
        if self.0.len() >= Self::MAX {
            self.0.clear();
        }
        self.0.insert((cabinet.clone(), reason))
    }
}

/// What became of one inbound publish.
enum Verdict {
    Accept(Uplink),
    Duplicate,
    Gap,
    Reject,
}

impl Ingest {
    /// Creates the actor with the high-water marks loaded from the store; every commit is
    /// sent to each of `committed` (bounded: a slow consumer slows ingest, it never loses).
    pub fn new(
        cfg: IngestConfig,
        store: Store,
        publisher: Publisher,
        metrics: IngestMetrics,
        known: impl IntoIterator<Item = (CabinetId, u64)>,
        committed: Vec<mpsc::Sender<Committed>>,
    ) -> Self {
        Self {
            cfg,
            store,
            publisher,
            metrics,
            hwm: known.into_iter().collect(),
            committed,
            logged: LogOnce::default(),
        }
    }

    fn judge(
        &mut self,
        msg: &Inbound,
        pending: &mut HashMap<CabinetId, u64>,
    ) -> (Verdict, Option<CabinetId>) {
        let topic = match std::str::from_utf8(&msg.topic)
            .ok()
            .and_then(|t| t.parse::<Topic>().ok())
        {
            Some(Topic::Up(c, k)) => (c, k),
            _ => {
                self.metrics.foreign.inc();
                return (Verdict::Reject, None);
            }
        };
        let (cabinet, kind) = topic;
        let u = match codec::decode_uplink(&msg.payload) {
            Ok(u) => u,
            Err(e) => {
                self.metrics
                    .decode_errors
                    .with_label_values(&[e.label()])
                    .inc();
                tracing::debug!(%cabinet, error = %e, "undecodable uplink dropped");
                return (Verdict::Reject, Some(cabinet));
            }
        };
        if u.cabinet != cabinet || u.body.kind() != kind {
            self.metrics.foreign.inc();
            if self.logged.first(&cabinet, "foreign") {
                tracing::warn!(%cabinet, claimed = %u.cabinet, kind = %kind, "uplink envelope does not match its topic; dropped (logged once per cabinet)");
            }
            return (Verdict::Reject, Some(cabinet));
        }
        let last = match pending.get(&cabinet).or_else(|| self.hwm.get(&cabinet)) {
            Some(l) => *l,
            // a cabinet never seen before starts wherever it is
            None => u.seq.saturating_sub(1),
        };
        if u.seq <= last {
            self.metrics.duplicates.inc();
            pending.entry(cabinet.clone()).or_insert(last);
            (Verdict::Duplicate, Some(cabinet))
        } else if u.seq > last + 1 {
            self.metrics.gaps.inc();
            pending.entry(cabinet.clone()).or_insert(last);
            (Verdict::Gap, Some(cabinet))
        } else {
            pending.insert(cabinet.clone(), u.seq);
            (Verdict::Accept(u), Some(cabinet))
        }
    }

    /// Runs until the inbound channel closes.
    /// Runs until the inbound channel closes or `cancel` fires (then it commits what it
    /// already received and returns).
    pub async fn run(
        mut self,
        mut inbound: mpsc::Receiver<Inbound>,
        cancel: tokio_util::sync::CancellationToken,
    ) -> Result<(), StoreError> {
        let mut buf = Vec::with_capacity(self.cfg.max_batch);
        loop {
            buf.clear();
            let n = tokio::select! {
                n = inbound.recv_many(&mut buf, self.cfg.max_batch) => n,
                _ = cancel.cancelled() => {
                    while buf.len() < self.cfg.max_batch {
                        match inbound.try_recv() {
                            Ok(m) => buf.push(m),
                            Err(_) => break,
                        }
                    }
                    if !buf.is_empty() {
                        self.commit(&buf).await?;
                    }
                    return Ok(());
                }
            };
            if n == 0 {
                return Ok(());
            }
            self.commit(&buf).await?;
        }
    }

    async fn commit(&mut self, msgs: &[Inbound]) -> Result<(), StoreError> {
        let started = Instant::now();
        // cabinet -> last seq after this batch (only cabinets that need an ack)
        let mut pending: HashMap<CabinetId, u64> = HashMap::new();
        let mut accepted = Vec::new();
        let mut rows = Vec::new();
        let mut new_cabinets = Vec::new();
        for m in msgs {
            if let (Verdict::Accept(u), Some(cab)) = self.judge(m, &mut pending) {
                if !self.hwm.contains_key(&cab)
                    && !new_cabinets.iter().any(|c: &CabinetSnapshot| c.id == cab)
                {
                    new_cabinets.push(CabinetSnapshot::new(cab.clone()));
                }
                rows.push(NewEvent {
                    cabinet: cab,
                    seq: u.seq,
                    raw: m.payload.clone(),
                });
                accepted.push(u);
            }
        }
        if !rows.is_empty() {
            let store = self.store.clone();
            let n = rows.len();
            let flush_started = Instant::now();
            store::blocking(move || store.append_events(&rows, &new_cabinets)).await?;
            self.metrics
                .flush_seconds
                .observe(flush_started.elapsed().as_secs_f64());
            self.metrics.batch_size.observe(n as f64);
            self.metrics
                .lag_seconds
                .observe(started.elapsed().as_secs_f64());
        }
        for u in &accepted {
            self.metrics
                .events
                .with_label_values(&[u.body.kind().as_str()])
                .inc();
        }
        // Everything in `pending` is now durable: advance and acknowledge.
        for (cab, seq) in pending {
            self.hwm.insert(cab.clone(), seq);
            self.ack(&cab, seq).await;
        }
        if !accepted.is_empty() {
            let committed: Committed = std::sync::Arc::new(accepted);
            for tx in &self.committed {
                let _ = tx.send(committed.clone()).await;
            }
        }
        Ok(())
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
