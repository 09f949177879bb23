//! The domain's state in cluster mode: the command queue, the parcel domain (orders, compartment
//! reservations, credential versions, notices, the parcel audit trail), the rules engine's
//! alerts and the webhook and notification outboxes live in one replicated JetStream stream,
//! `LK_DOMAIN`, one subject per part (`lk.dom.commands`, `lk.dom.parcels`, `lk.dom.alerts`,
//! `lk.dom.outbound`). Each record is one commit of the part's actor, as JSON; a record longer
//! than one NATS message goes as consecutive chunks, applied whole or not at all ([`chunks`]).
//!
//! - One node at a time runs the domain (it holds the lease, [`super::lease`]). Its actors write
//!   through the replicated stores of [`stores`]: the record goes to the stream first, then to
//!   the node's own sled trees, which the API and the export read.
//! - Every write is **fenced**: it carries `Nats-Expected-Last-Subject-Sequence`, the stream
//!   sequence of the part's last record this node applied. A node that is not up to date, or
//!   that another node has overtaken, has its write refused by the stream: it cannot fork the
//!   history, never two orders in one compartment, never a command sent by two nodes. The
//!   refused node stops running the domain ([`Fencing`]).
//! - The other nodes apply the stream to their own trees as it grows ([`apply`]), so a node that
//!   takes the domain over starts from the whole state after a short catch-up, and the audit
//!   trail, alerts and orders can be read on every node.
//!
//! The stream has no age limit: it is the domain's source of truth, and a node with an empty disk
//! rebuilds its trees from it. It stays short because each part is snapshotted now and then (its
//! whole state as one record) and its older records purged ([`stores`]).

pub mod apply;
pub mod chunks;
pub mod stores;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::stream::LastRawMessageErrorKind;
use async_nats::jetstream::{self, context::PublishErrorKind};
use bytes::Bytes;
use tokio::sync::watch;

use crate::store::StoreError;

/// The domain stream's name.
pub const DOMAIN_STREAM: &str = "LK_DOMAIN";
/// Every subject of the domain stream.
pub const DOMAIN_SUBJECTS: &str = "lk.dom.>";
/// The header naming the node and run that wrote a record.
pub const WRITER_HEADER: &str = "Lk-Writer";

/// A part of the domain's state: one actor's commits, one subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Part {
    Commands,
    Parcels,
    Alerts,
    Outbound,
}

impl Part {
    pub const ALL: [Part; 4] = [Part::Commands, Part::Parcels, Part::Alerts, Part::Outbound];

    /// The part's name (its mark in `domain_marks`, the metrics label).
    pub fn name(self) -> &'static str {
        match self {
            Part::Commands => "commands",
            Part::Parcels => "parcels",
            Part::Alerts => "alerts",
            Part::Outbound => "outbound",
        }
    }

    /// The part's subject in the stream.
    pub fn subject(self) -> String {
        format!("lk.dom.{}", self.name())
    }

    /// The part of a subject.
    pub fn of_subject(subject: &str) -> Option<Part> {
        Part::named(subject.strip_prefix("lk.dom.")?)
    }

    /// The part of a name.
    pub fn named(name: &str) -> Option<Part> {
        Part::ALL.into_iter().find(|p| p.name() == name)
    }
}

/// The stream's configuration.
pub fn stream_config(replicas: usize) -> jetstream::stream::Config {
    jetstream::stream::Config {
        name: DOMAIN_STREAM.into(),
        description: Some("the parcel domain's state: commands, orders, alerts, outboxes".into()),
        subjects: vec![DOMAIN_SUBJECTS.into()],
        num_replicas: replicas,
        // a resend of a record whose ack was lost is recognised by its id for this long
        duplicate_window: Duration::from_secs(120),
        storage: jetstream::stream::StorageType::File,
        ..Default::default()
    }
}

/// Whether this node may still write the domain: cleared for good when the stream refuses a
/// write (another node wrote since) or the lease is lost; the node then stops running the
/// domain ([`Fencing::lost`] tells the gateway).
#[derive(Clone)]
pub struct Fencing {
    held: Arc<AtomicBool>,
    lost: watch::Sender<bool>,
    /// Milliseconds since the epoch until which the lease is known held (renewals move it);
    /// writes are refused after it, before another node can have taken the lease over.
    valid_until: Arc<AtomicU64>,
}

impl Default for Fencing {
    fn default() -> Self {
        Self {
            held: Arc::new(AtomicBool::new(true)),
            lost: watch::channel(false).0,
            valid_until: Arc::new(AtomicU64::new(u64::MAX)),
        }
    }
}

impl Fencing {
    /// Whether the domain may be written now.
    pub fn check(&self) -> Result<(), StoreError> {
        if !self.held.load(Ordering::Acquire) {
            return Err(StoreError::NotLeader("this node lost the domain".into()));
        }
        if locker_schemas::now_millis() > self.valid_until.load(Ordering::Acquire) {
            // not lost yet: the renewal may get through (a NATS server changing leaders)
            return Err(StoreError::Replication(
                "the domain lease is not confirmed: writes wait for its renewal".into(),
            ));
        }
        Ok(())
    }

    /// The lease is held until `until` (ms since the epoch).
    pub fn renewed(&self, until: u64) {
        self.valid_until.store(until, Ordering::Release);
    }

    /// This node must stop running the domain.
    pub fn lose(&self, why: &str) {
        if self.held.swap(false, Ordering::AcqRel) {
            tracing::error!(reason = why, "this node no longer runs the domain");
        }
        self.lost.send_replace(true);
    }

    /// Resolves when the domain was lost.
    pub async fn lost(&self) {
        let mut rx = self.lost.subscribe();
        // the sender lives in self: wait_for only ends when the value is true
        let _ = rx.wait_for(|lost| *lost).await;
    }
}

/// How long a domain write is tried again before its error reaches the actor.
const RETRY_FOR: Duration = Duration::from_secs(15);

/// Appends one part's records to the stream, fenced; blocking (the stores call it from their
/// `spawn_blocking` threads).
pub struct Writer {
    js: jetstream::Context,
    stream: jetstream::stream::Stream,
    rt: tokio::runtime::Handle,
    part: Part,
    /// The stream sequence of the part's last record (this node's view); each write expects it.
    last: tokio::sync::Mutex<u64>,
    /// `node:run` (a run is one start of the gateway).
    writer: String,
    written: AtomicU64,
    fencing: Fencing,
    metrics: super::ClusterMetrics,
    /// A record longer than this goes as several messages ([`chunks`]).
    chunk: usize,
}

impl Writer {
    /// A writer of `part` whose last record is at `last`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        js: jetstream::Context,
        stream: jetstream::stream::Stream,
        rt: tokio::runtime::Handle,
        part: Part,
        last: u64,
        writer: String,
        fencing: Fencing,
        metrics: super::ClusterMetrics,
    ) -> Self {
        let chunk = chunks::chunk_size(js.client().max_payload());
        Self {
            js,
            stream,
            rt,
            part,
            last: tokio::sync::Mutex::new(last),
            writer,
            written: AtomicU64::new(0),
            fencing,
            metrics,
            chunk,
        }
    }

    /// Cuts records longer than `bytes` into several messages (the default follows the
    /// server's `max_payload`; tests make it small).
    pub fn with_chunk_size(mut self, bytes: usize) -> Self {
        self.chunk = bytes.max(1);
        self
    }

    /// Writes one record and returns its stream sequence. Blocks; never call it on an async
    /// worker.
    pub fn append(&self, record: Vec<u8>) -> Result<u64, StoreError> {
        Ok(self.append_span(record)?.1)
    }

    /// Writes one record and returns the stream sequences of its first and last message (the
    /// same unless it went in chunks). Blocks.
    pub fn append_span(&self, record: Vec<u8>) -> Result<(u64, u64), StoreError> {
        self.rt.block_on(self.append_async(Bytes::from(record)))
    }

    /// Counts a snapshot written and the messages its purge removed.
    pub fn snapshot_written(&self, purged: u64) {
        let label = self.part.name();
        self.metrics
            .domain_snapshots
            .with_label_values(&[label, "written"])
            .inc();
        self.metrics
            .domain_purged
            .with_label_values(&[label])
            .inc_by(purged);
    }

    /// Counts a snapshot that failed (written or purged).
    pub fn snapshot_failed(&self) {
        self.metrics
            .domain_snapshots
            .with_label_values(&[self.part.name(), "failed"])
            .inc();
    }

    /// Removes the part's messages before stream sequence `seq` (below a snapshot) and returns
    /// how many went. Blocks.
    pub fn purge_below(&self, seq: u64) -> Result<u64, StoreError> {
        let purge = self
            .stream
            .purge()
            .filter(self.part.subject())
            .sequence(seq);
        self.rt
            .block_on(async move { purge.await })
            .map(|r| r.purged)
            .map_err(|e| StoreError::Replication(format!("{}: purge: {e}", self.part.name())))
    }

    /// Tries a write again while it fails for a passing reason (a NATS server lost, a stream
    /// electing its leader, the lease being renewed), for up to [`RETRY_FOR`]; the same
    /// message id every time, so a try that landed is not written twice.
    ///
    /// A record longer than the chunk size goes as consecutive messages of the part's subject
    /// ([`chunks`]); the lock on `last` keeps them together, and the returned sequence is the
    /// last one's.
    async fn append_async(&self, record: Bytes) -> Result<(u64, u64), StoreError> {
        let started = std::time::Instant::now();
        let mut last = self.last.lock().await;
        let mut seq = *last;
        let mut first = None;
        let pieces = chunks::pieces(&record, self.chunk);
        let label = self.part.name();
        if pieces.len() > 1 {
            self.metrics
                .domain_chunked
                .with_label_values(&[label])
                .inc();
        }
        for (piece, chunk) in pieces {
            seq = self
                .append_piece(&piece, chunk.as_deref(), &mut last, started)
                .await?;
            first.get_or_insert(seq);
        }
        self.metrics
            .domain_writes
            .with_label_values(&[label, "ok"])
            .inc();
        self.metrics
            .domain_write_seconds
            .observe(started.elapsed().as_secs_f64());
        self.metrics
            .domain_record_bytes
            .observe(record.len() as f64);
        Ok((first.unwrap_or(seq), seq))
    }

    async fn append_piece(
        &self,
        record: &Bytes,
        chunk: Option<&str>,
        last: &mut u64,
        started: std::time::Instant,
    ) -> Result<u64, StoreError> {
        let n = self.written.fetch_add(1, Ordering::Relaxed);
        let msg_id = format!("{}:{}:{n}", self.writer, self.part.name());
        let mut wait = Duration::from_millis(100);
        loop {
            match self.try_append(record, chunk, &msg_id, last).await {
                Err(StoreError::Replication(e)) if started.elapsed() + wait < RETRY_FOR => {
                    tracing::debug!(part = self.part.name(), error = %e, "domain write not taken yet; trying again");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(2));
                }
                other => return other,
            }
        }
    }

    async fn try_append(
        &self,
        record: &Bytes,
        chunk: Option<&str>,
        msg_id: &str,
        last: &mut u64,
    ) -> Result<u64, StoreError> {
        self.fencing.check()?;
        let label = self.part.name();
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", msg_id);
        headers.insert(
            "Nats-Expected-Last-Subject-Sequence",
            last.to_string().as_str(),
        );
        headers.insert(WRITER_HEADER, self.writer.as_str());
        if let Some(c) = chunk {
            headers.insert(chunks::CHUNK_HEADER, c);
        }
        let sent = async {
            self.js
                .publish_with_headers(self.part.subject(), headers, record.clone())
                .await?
                .await
        };
        let result = match sent.await {
            Ok(ack) => Ok(ack.sequence),
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                // Another writer wrote the part since, or an earlier try of this very record
                // landed and its ack was lost: only the second is ours.
                match self
                    .stream
                    .get_last_raw_message_by_subject(&self.part.subject())
                    .await
                {
                    Ok(m)
                        if m.headers.get(WRITER_HEADER).map(|v| v.as_str())
                            == Some(self.writer.as_str())
                            && m.payload == *record =>
                    {
                        Ok(m.sequence)
                    }
                    Ok(m) => {
                        let by = m
                            .headers
                            .get(WRITER_HEADER)
                            .map(|v| v.as_str().to_string())
                            .unwrap_or_default();
                        self.metrics
                            .domain_writes
                            .with_label_values(&[label, "fenced"])
                            .inc();
                        self.fencing.lose(&format!(
                            "the {label} log moved on (record {} by {by})",
                            m.sequence
                        ));
                        return Err(StoreError::NotLeader(format!(
                            "the {label} log has a newer record ({}) than this node's ({})",
                            m.sequence, last
                        )));
                    }
                    Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => {
                        // the stream says the part moved on, yet holds none of it: its history
                        // is not the one this node wrote on. Stop: the next holder starts from
                        // what the stream holds (trying again would be refused for ever).
                        self.metrics
                            .domain_writes
                            .with_label_values(&[label, "fenced"])
                            .inc();
                        self.fencing.lose(&format!(
                            "the {label} log has no record, this node expected {last}"
                        ));
                        return Err(StoreError::NotLeader(format!(
                            "the {label} log holds no record; this node expected {last}"
                        )));
                    }
                    Err(e) => Err(StoreError::Replication(format!(
                        "{label}: write refused, and its last record cannot be read: {e}"
                    ))),
                }
            }
            Err(e) => Err(StoreError::Replication(format!("{label}: {e}"))),
        };
        match result {
            Ok(seq) => {
                *last = seq;
                Ok(seq)
            }
            Err(e) => {
                self.metrics
                    .domain_writes
                    .with_label_values(&[label, "failed"])
                    .inc();
                Err(e)
            }
        }
    }
}
