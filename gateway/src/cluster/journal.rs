//! The journal: every cabinet uplink this node's edge receives is written to the replicated
//! uplink stream before anything else happens to it. The subject is the cabinet's
//! (`lk.up.{cabinet}`), so the stream keeps each cabinet's order; the MQTT topic travels in the
//! `Lk-Topic` header.
//!
//! The message id is `{cabinet}:{boot}:{seq}:{digest of the bytes}`, so JetStream drops a
//! resend (an agent that did not get its ack in time, a cabinet that reconnected to another
//! node) within its duplicate window. The digest is there because the same (boot, seq) can
//! legitimately carry other bytes: an agent whose storage was wiped starts again at seq 1 in a
//! new storage life (ingest's rules), and that event must reach every node.
//!
//! A resend the stream recognises as a duplicate is not delivered to the consumers again, so it
//! is handed to this node's ingest directly: ingest knows it (by the cabinet's sequence) and
//! acknowledges it, which is what the cabinet is waiting for. Nothing else goes to ingest from
//! here: the stream's consumers (see [`super::feed`]) feed every node, this one included, which
//! is how the rule "acknowledged only once the replicated stream holds it" is kept.
//!
//! While writes fail (NATS unreachable, no quorum) the round is tried again with capped
//! exponential backoff, in order; the channel from the edge fills, and the cabinets' sessions
//! wait (TCP pushes back on the agents, whose outboxes keep everything).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::Context;
use locker_schemas::Topic;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{subject_token, ClusterMetrics};
use crate::broker::Inbound;
use crate::ingest::head::{digest, read_head};

/// The header carrying an uplink's MQTT topic.
pub const TOPIC_HEADER: &str = "Lk-Topic";

/// First wait before a failed round is tried again.
const RETRY_INITIAL: Duration = Duration::from_millis(50);
/// Longest wait between tries.
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Writes uplinks to the stream (one task; see the module docs).
pub struct Journal {
    js: Context,
    ingest: mpsc::Sender<Inbound>,
    metrics: ClusterMetrics,
    batch: usize,
    faults: Faults,
}

/// The journal's fault-injection seam, for tests: a publish lost on its way to the stream.
#[derive(Clone, Default)]
pub struct Faults(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Faults {
    /// The first publish of the next round of two or more uplinks is not sent (it fails like a
    /// publish the stream never saw), while the rest of the round is.
    pub fn lose_first_of_next_round(&self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether a loss is still armed.
    pub fn armed(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn take(&self, round: usize) -> bool {
        round >= 2 && self.0.swap(false, std::sync::atomic::Ordering::SeqCst)
    }
}

/// The stream subject of an uplink, from its topic (`lk.up._` for a topic that names no
/// cabinet; ingest rejects those on every node).
pub fn subject_of(topic: &[u8]) -> String {
    match std::str::from_utf8(topic)
        .ok()
        .and_then(|t| t.parse::<Topic>().ok())
    {
        Some(t) => format!("lk.up.{}", subject_token(t.cabinet())),
        None => "lk.up._".into(),
    }
}

/// The de-duplication id of an uplink (`None` if its head is unreadable: such an uplink is
/// never acknowledged, so it is never resent for an acknowledgement either).
pub fn message_id(subject: &str, payload: &[u8]) -> Option<String> {
    let head = read_head(payload)?;
    Some(format!(
        "{}:{}:{}:{:016x}",
        subject.trim_start_matches("lk.up."),
        head.boot,
        head.seq,
        digest(payload)
    ))
}

impl Journal {
    /// A journal writing with `js`, handing recognised resends to `ingest`.
    pub fn new(
        js: Context,
        ingest: mpsc::Sender<Inbound>,
        metrics: ClusterMetrics,
        batch: usize,
        faults: Faults,
    ) -> Self {
        Self {
            js,
            ingest,
            metrics,
            batch: batch.max(1),
            faults,
        }
    }

    /// Runs until the channel from the edge closes or `stop` fires (then it makes one attempt
    /// at what it already received and returns).
    pub async fn run(self, mut rx: mpsc::Receiver<Inbound>, stop: CancellationToken) {
        let mut buf = Vec::with_capacity(self.batch);
        loop {
            let n = tokio::select! {
                n = rx.recv_many(&mut buf, self.batch) => n,
                _ = stop.cancelled() => {
                    while buf.len() < self.batch {
                        match rx.try_recv() {
                            Ok(m) => buf.push(m),
                            Err(_) => break,
                        }
                    }
                    if !buf.is_empty() {
                        let round = std::mem::take(&mut buf).into_iter().map(Pending::new).collect();
                        let _ = self.write(round).await;
                    }
                    return;
                }
            };
            if n == 0 {
                return;
            }
            self.write_until_stored(std::mem::take(&mut buf), &stop)
                .await;
        }
    }

    /// Writes a round, trying what failed again (in order) with capped exponential backoff.
    async fn write_until_stored(&self, msgs: Vec<Inbound>, stop: &CancellationToken) {
        let mut pending: Vec<Pending> = msgs.into_iter().map(Pending::new).collect();
        let mut wait = RETRY_INITIAL;
        let mut failures = 0u64;
        loop {
            let (failed, error) = self.write(pending).await;
            if failed.is_empty() {
                if failures > 0 {
                    tracing::warn!(failures, "the uplink stream takes writes again");
                    self.metrics.journal_failing.set(0);
                }
                return;
            }
            failures += 1;
            self.metrics.journal_failing.set(1);
            if failures == 1 {
                tracing::error!(
                    error = %error,
                    waiting = failed.len(),
                    "cannot write uplinks to the replicated stream: nothing of them is \
                     acknowledged; retrying with backoff (logged once per outage)"
                );
            }
            pending = failed;
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.cancelled() => return,
            }
            wait = (wait * 2).min(RETRY_MAX);
        }
    }

    /// One attempt at a round: every publish is sent, then every confirmation awaited.
    /// Returns what must be written again, in order, and the last error.
    ///
    /// Once an uplink of a cabinet fails, the cabinet's later uplinks of the round are written
    /// again after it even if the stream took them: the stream would otherwise hold them before
    /// it, every node's ingest would drop them as a gap, and the agent's resend would then be
    /// a duplicate the stream drops. They are written again without a message id (the copy
    /// already stored would swallow them), and ingest drops whichever copy it already has.
    async fn write(&self, msgs: Vec<Pending>) -> (Vec<Pending>, String) {
        let started = Instant::now();
        let mut sent = Vec::with_capacity(msgs.len());
        let mut error = String::new();
        let mut lose_first = self.faults.take(msgs.len());
        for p in msgs {
            let subject = subject_of(&p.msg.topic);
            let mut publish = PublishMessage::build()
                .payload(p.msg.payload.clone())
                .header(TOPIC_HEADER, String::from_utf8_lossy(&p.msg.topic).as_ref());
            if p.with_id {
                if let Some(id) = message_id(&subject, &p.msg.payload) {
                    publish = publish.message_id(id);
                }
            }
            if std::mem::take(&mut lose_first) {
                let lost = async_nats::jetstream::context::PublishError::new(
                    async_nats::jetstream::context::PublishErrorKind::Other,
                );
                sent.push((p, subject, Err(lost)));
                continue;
            }
            let ack = self.js.send_publish(subject.clone(), publish).await;
            sent.push((p, subject, ack));
        }
        let mut failed = Vec::new();
        let mut failed_subjects: HashSet<String> = HashSet::new();
        for (p, subject, ack) in sent {
            let confirmed = match ack {
                Ok(fut) => fut.await,
                Err(e) => Err(e),
            };
            if failed_subjects.contains(&subject) {
                match confirmed {
                    Ok(_) => {
                        self.metrics.journal.with_label_values(&["stored"]).inc();
                        failed.push(Pending {
                            msg: p.msg,
                            with_id: false,
                        });
                    }
                    Err(e) => {
                        self.metrics.journal.with_label_values(&["failed"]).inc();
                        error = e.to_string();
                        failed.push(p);
                    }
                }
                continue;
            }
            match confirmed {
                Ok(a) if a.duplicate => {
                    self.metrics.journal.with_label_values(&["duplicate"]).inc();
                    // ingest acknowledges it again (it has it, or will have it from the feed)
                    let _ = self.ingest.send(p.msg).await;
                }
                Ok(_) => self.metrics.journal.with_label_values(&["stored"]).inc(),
                Err(e) => {
                    self.metrics.journal.with_label_values(&["failed"]).inc();
                    error = e.to_string();
                    failed_subjects.insert(subject);
                    failed.push(p);
                }
            }
        }
        self.metrics
            .journal_seconds
            .observe(started.elapsed().as_secs_f64());
        (failed, error)
    }
}

/// An uplink waiting to be written, and whether it carries its message id.
struct Pending {
    msg: Inbound,
    with_id: bool,
}

impl Pending {
    fn new(msg: Inbound) -> Self {
        Self { msg, with_id: true }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use locker_schemas::codec::encode_uplink;
    use locker_schemas::{CabinetId, Network, NetworkKind, Uplink, UplinkBody};

    fn uplink(cab: &str, boot: u32, seq: u64, ts: u64) -> Vec<u8> {
        encode_uplink(&Uplink {
            cabinet: CabinetId::new(cab).expect("id"),
            boot,
            seq,
            ts,
            body: UplinkBody::Network(Network {
                kind: NetworkKind::Cellular,
                signal_dbm: None,
            }),
        })
        .expect("encodes")
    }

    #[test]
    fn subjects_are_per_cabinet_and_ids_tell_new_lives_from_resends() {
        let s = subject_of(b"lk/v1/site.1.cab-2/up/network");
        assert_eq!(s, "lk.up.site~1~cab-2");
        assert_eq!(subject_of(b"not a topic"), "lk.up._");
        let a = uplink("site.1.cab-2", 1, 7, 1_000);
        let id = message_id(&s, &a).expect("readable head");
        assert!(id.starts_with("site~1~cab-2:1:7:"), "{id}");
        // a byte-for-byte resend has the same id; the same (boot, seq) with other bytes (a
        // wiped agent's new storage life) has another
        assert_eq!(message_id(&s, &a.clone()), Some(id.clone()));
        let b = uplink("site.1.cab-2", 1, 7, 2_000);
        assert_ne!(message_id(&s, &b), Some(id));
        assert_eq!(message_id(&s, b"\xff\x00"), None);
    }
}
