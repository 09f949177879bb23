//! The synchronous core of ingest, run on a blocking thread once per group commit: judges every
//! uplink of a batch against its cabinet's storage life, places accepted and quarantined events
//! at their audit positions, writes and flushes the batch, and only then advances its state.
//! If the write fails nothing is advanced, nothing is acknowledged, and the same batch can be
//! judged again.
//!
//! The rules (see README "Ingest"), for an uplink with a readable head `(boot, seq)` on the
//! topic of cabinet C whose current life is `(base, last)`:
//! - `seq == last + 1`: placed at `base + seq`, acknowledged;
//! - `seq > last + 1`: a gap; dropped, not acknowledged (the agent goes back after its ack
//!   timeout);
//! - `seq <= last`: if the entry at `base + seq` has the same bytes (the agent replays byte
//!   for byte), or was pruned by retention, it is a duplicate: acknowledged with `last`;
//!   otherwise, at `seq == 1`, it starts a new storage life (the agent's storage was wiped):
//!   `base` becomes the last position and the event is placed after it; any other mismatch is
//!   stale (dropped, not acknowledged, never acknowledged with the old life's numbers).
//!
//! An uplink the codec cannot accept (broken body, another schema version, an envelope naming
//! another cabinet or kind) but whose head is readable is placed the same way, as a quarantine
//! marker, with its bytes in the quarantine store; so it is acknowledged and never stalls its
//! cabinet. One whose head is unreadable is quarantined unplaced and not acknowledged.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use locker_schemas::{codec, CabinetId, Millis, Topic, Uplink};

use super::head::{digest, read_head};
use super::logonce::{LogLevel, LogOnce};
use crate::broker::Inbound;
use crate::metrics::IngestMetrics;
use crate::model::CabinetSnapshot;
use crate::store::{
    AuditEntry, Life, NewEntry, QuarantineLimits, QuarantineRecord, Store, StoreError,
};

/// What a committed batch produced.
pub(super) struct BatchOutcome {
    /// (cabinet, seq of its current life) to acknowledge.
    pub acks: Vec<(CabinetId, u64)>,
    /// Accepted uplinks, in order, for the committed-event stream.
    /// Accepted uplinks with their audit positions, in commit order.
    pub accepted: Vec<(u64, Uplink)>,
    /// Entries written (events and quarantine markers).
    pub stored: usize,
    /// Time to write and flush, if anything was written.
    pub flush: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Place,
    NewLife,
    Duplicate,
    Gap,
    Stale,
}

/// Counter increments of one batch, applied only once the batch is durable (a batch retried
/// after a storage failure is counted once).
#[derive(Default)]
struct Tally {
    duplicates: u64,
    gaps: u64,
    stale: u64,
    new_lives: u64,
    foreign: u64,
    decode_errors: HashMap<&'static str, u64>,
    quarantined: HashMap<&'static str, u64>,
}

/// The head fields ingest places an event by.
struct PlaceBy {
    boot: u32,
    seq: u64,
    ts: Option<u64>,
    version: Option<u64>,
}

/// Ingest's state: the current life of every cabinet seen since start (others are read from
/// the audit log on first sight).
pub(super) struct Core {
    store: Store,
    lives: HashMap<CabinetId, Life>,
    limits: QuarantineLimits,
    metrics: IngestMetrics,
    logged: LogOnce,
}

impl Core {
    pub(super) fn new(store: Store, limits: QuarantineLimits, metrics: IngestMetrics) -> Self {
        Self {
            store,
            lives: HashMap::new(),
            limits,
            metrics,
            logged: LogOnce::default(),
        }
    }

    fn log(&mut self, cabinet: &str, reason: &'static str, detail: &str) {
        match self.logged.level(cabinet, reason) {
            LogLevel::Warn => tracing::warn!(
                cabinet,
                reason,
                detail,
                "uplink not accepted as is (quarantined or dropped, counted; logged once per reason)"
            ),
            LogLevel::Debug => tracing::debug!(cabinet, reason, detail, "uplink not accepted as is"),
            LogLevel::Silent => {}
        }
    }

    fn life(&mut self, cabinet: &CabinetId) -> Result<Option<Life>, StoreError> {
        if let Some(l) = self.lives.get(cabinet) {
            return Ok(Some(*l));
        }
        let l = self.store.audit().life(cabinet)?;
        if let Some(l) = l {
            self.lives.insert(cabinet.clone(), l);
        }
        Ok(l)
    }

    /// Judges, writes and flushes one batch; advances the state only if the write succeeded.
    pub(super) fn process(
        &mut self,
        msgs: &[Inbound],
        now: Millis,
    ) -> Result<BatchOutcome, StoreError> {
        let mut overlay: HashMap<CabinetId, Life> = HashMap::new();
        let mut written: HashMap<(CabinetId, u64), u64> = HashMap::new();
        let mut entries = Vec::new();
        let mut quarantined = Vec::new();
        let mut new_cabinets: Vec<CabinetSnapshot> = Vec::new();
        let mut acks: HashMap<CabinetId, u64> = HashMap::new();
        let mut accepted = Vec::new();
        let mut tally = Tally::default();

        for m in msgs {
            let topic = String::from_utf8_lossy(&m.topic).into_owned();
            let Ok(Topic::Up(cabinet, kind)) = topic.parse::<Topic>() else {
                // the gateway subscribes to uplink topics only: cannot happen, but is contained
                tally.foreign += 1;
                *tally.quarantined.entry("topic").or_default() += 1;
                self.log("", "topic", &topic);
                quarantined.push(self.record(
                    None,
                    None,
                    None,
                    "topic",
                    "not an uplink topic",
                    &topic,
                    m,
                    now,
                )?);
                continue;
            };
            let (problem, uplink, head) = match codec::decode_uplink(&m.payload) {
                Ok(u) => {
                    let head = Some(PlaceBy {
                        boot: u.boot,
                        seq: u.seq,
                        ts: Some(u.ts),
                        version: Some(u64::from(locker_schemas::SCHEMA_VERSION)),
                    });
                    if u.cabinet != cabinet {
                        let d = format!("envelope names cabinet {}", u.cabinet);
                        (Some(("foreign", d)), None, head)
                    } else if u.body.kind() != kind {
                        let d = format!("a {} body on the {kind} topic", u.body.kind());
                        (Some(("kind_mismatch", d)), None, head)
                    } else {
                        (None, Some(u), head)
                    }
                }
                Err(e) => {
                    let head = read_head(&m.payload).map(|h| PlaceBy {
                        boot: h.boot,
                        seq: h.seq,
                        ts: h.ts,
                        version: Some(h.version),
                    });
                    (Some((e.label(), e.to_string())), None, head)
                }
            };
            if let Some((reason, detail)) = &problem {
                if *reason == "foreign" || *reason == "kind_mismatch" {
                    tally.foreign += 1;
                } else {
                    *tally.decode_errors.entry(reason).or_default() += 1;
                }
                self.log(cabinet.as_str(), reason, detail);
            }
            let Some(head) = head.filter(|h| h.seq > 0) else {
                let (reason, detail) = problem.unwrap_or(("malformed", "sequence number 0".into()));
                *tally.quarantined.entry(reason).or_default() += 1;
                let rec =
                    self.record(Some(&cabinet), None, None, reason, &detail, &topic, m, now)?;
                quarantined.push(rec);
                continue;
            };

            let known = match overlay.get(&cabinet) {
                Some(l) => Some(*l),
                None => self.life(&cabinet)?,
            };
            let is_new = known.is_none();
            let mut life = known.unwrap_or(Life {
                base: 0,
                last_seq: head.seq - 1,
            });
            let dig = digest(&m.payload);
            let verdict = if head.seq == life.last_seq + 1 {
                Verdict::Place
            } else if head.seq > life.last_seq + 1 {
                Verdict::Gap
            } else {
                let pos = life.base + head.seq;
                let stored = match written.get(&(cabinet.clone(), pos)) {
                    Some(d) => Some(*d),
                    None => self.store.audit().get(&cabinet, pos)?.map(|e| e.digest()),
                };
                match stored {
                    Some(d) if d == dig => Verdict::Duplicate,
                    _ if head.seq == 1 => Verdict::NewLife,
                    None if self
                        .store
                        .audit()
                        .first_position(&cabinet)?
                        .is_some_and(|first| pos < first) =>
                    {
                        Verdict::Duplicate // pruned by retention
                    }
                    _ => Verdict::Stale,
                }
            };
            match verdict {
                Verdict::Place | Verdict::NewLife => {
                    if verdict == Verdict::NewLife {
                        tally.new_lives += 1;
                        tracing::info!(
                            %cabinet,
                            boot = head.boot,
                            old_last_seq = life.last_seq,
                            base = life.last_position(),
                            "cabinet starts a new storage life at seq 1 (its storage was wiped); the old life's events stay in the audit log"
                        );
                        life.base = life.last_position();
                    }
                    life.last_seq = head.seq;
                    let position = life.last_position();
                    let entry = match (problem, uplink) {
                        (None, Some(u)) => {
                            accepted.push((position, u));
                            AuditEntry::Event(m.payload.to_vec())
                        }
                        (problem, _) => {
                            let (reason, detail) = problem.unwrap_or(("malformed", String::new()));
                            *tally.quarantined.entry(reason).or_default() += 1;
                            let mut rec = self.record(
                                Some(&cabinet),
                                Some(position),
                                Some(&head),
                                reason,
                                &detail,
                                &topic,
                                m,
                                now,
                            )?;
                            rec.version = head.version;
                            let q = rec.id;
                            quarantined.push(rec);
                            AuditEntry::Quarantined {
                                boot: head.boot,
                                seq: head.seq,
                                ts: head.ts.unwrap_or(now),
                                digest: dig,
                                quarantine: q,
                            }
                        }
                    };
                    written.insert((cabinet.clone(), position), dig);
                    entries.push(NewEntry {
                        cabinet: cabinet.clone(),
                        position,
                        entry,
                    });
                    if is_new && !new_cabinets.iter().any(|c| c.id == cabinet) {
                        new_cabinets.push(CabinetSnapshot::new(cabinet.clone()));
                    }
                    overlay.insert(cabinet.clone(), life);
                    acks.insert(cabinet, life.last_seq);
                }
                Verdict::Duplicate => {
                    tally.duplicates += 1;
                    acks.insert(cabinet, life.last_seq);
                }
                Verdict::Gap => tally.gaps += 1,
                Verdict::Stale => {
                    tally.stale += 1;
                    let detail = format!(
                        "seq {} of boot {} matches nothing stored in the current life (last seq {})",
                        head.seq, head.boot, life.last_seq
                    );
                    self.log(cabinet.as_str(), "stale", &detail);
                }
            }
        }

        let mut flush = None;
        if !entries.is_empty() || !quarantined.is_empty() {
            let started = Instant::now();
            let dropped =
                self.store
                    .append_events(&entries, &quarantined, self.limits, &new_cabinets)?;
            flush = Some(started.elapsed());
            self.metrics.faults.quarantine_dropped.inc_by(dropped);
            self.metrics
                .faults
                .quarantine_held
                .set(i64::try_from(self.store.quarantine().len()).unwrap_or(i64::MAX));
        }
        // durable: advance and count
        self.lives.extend(overlay);
        let m = &self.metrics;
        m.duplicates.inc_by(tally.duplicates);
        m.gaps.inc_by(tally.gaps);
        m.faults.stale.inc_by(tally.stale);
        m.faults.new_lives.inc_by(tally.new_lives);
        m.foreign.inc_by(tally.foreign);
        for (reason, n) in tally.decode_errors {
            m.decode_errors.with_label_values(&[reason]).inc_by(n);
        }
        for (reason, n) in tally.quarantined {
            m.faults.quarantined.with_label_values(&[reason]).inc_by(n);
        }
        Ok(BatchOutcome {
            acks: acks.into_iter().collect(),
            accepted,
            stored: entries.len(),
            flush,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn record(
        &self,
        cabinet: Option<&CabinetId>,
        position: Option<u64>,
        head: Option<&PlaceBy>,
        reason: &str,
        detail: &str,
        topic: &str,
        m: &Inbound,
        now: Millis,
    ) -> Result<QuarantineRecord, StoreError> {
        Ok(QuarantineRecord {
            id: self.store.quarantine().next_id()?,
            cabinet: cabinet.cloned(),
            position,
            boot: head.map(|h| h.boot),
            seq: head.map(|h| h.seq),
            version: head.and_then(|h| h.version),
            reason: reason.to_owned(),
            detail: detail.to_owned(),
            topic: topic.to_owned(),
            received_at: now,
            raw: m.payload.to_vec(),
        })
    }
}
