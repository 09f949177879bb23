//! The outbox: every uplink event gets the next per-cabinet sequence number, is encoded ONCE and
//! stored in sled until the gateway acknowledges it, and is replayed byte-identically.
//!
//! Admission policy (the gateway accepts only `seq == last_stored + 1`, so an event that got a
//! seq can never be removed before it is acknowledged without stalling the stream forever;
//! shedding therefore happens before a seq is given):
//! - below `max_events` everything is stored;
//! - from `max_events` on, telemetry ([`UplinkBody::is_sheddable`]: power, network) is shed
//!   (counted), critical events (door, scan, alarm, result, access, hello) are still stored;
//! - from `hard_max_events` on, critical events are dropped too, counted and logged as errors;
//!   their side writes (a command's outcome) are still applied so a command never runs twice.
//!
//! Critical events are flushed before `append` returns; telemetry waits for a group commit.

use std::sync::atomic::{AtomicU64, Ordering};

use locker_schemas::{codec, CabinetId, Millis, Uplink, UplinkBody};
use sled::Tree;

use crate::config::OutboxConfig;
use crate::storage::{self, Durability, Loaded, Storage, StorageError, StoredEvent, Write};

/// Why the outbox failed.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("could not encode an event: {0}")]
    Encode(String),
}

/// What the admission policy decides for a new event at a given depth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Store,
    /// Telemetry not stored because the outbox is at its soft limit.
    Shed,
    /// A critical event not stored because the outbox is at its hard limit.
    Drop,
}

/// The admission policy (pure).
pub fn admit(limits: &OutboxConfig, depth: u64, sheddable: bool) -> Admission {
    if sheddable && depth >= limits.max_events {
        Admission::Shed
    } else if depth >= limits.hard_max_events {
        Admission::Drop
    } else {
        Admission::Store
    }
}

/// The depth at which OutboxNearlyFull is raised.
pub fn nearly_full_mark(limits: &OutboxConfig) -> u64 {
    (limits.max_events * u64::from(limits.nearly_full_percent) / 100).max(1)
}

/// The result of an append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Appended {
    Stored(StoredEvent),
    Shed,
    Dropped,
}

/// One cabinet's outbox (owned by the agent's main loop).
pub struct Outbox {
    storage: Storage,
    tree: Tree,
    cabinet: CabinetId,
    boot: u32,
    acked: u64,
    next_seq: u64,
    limits: OutboxConfig,
    /// Telemetry events shed at the soft limit.
    pub shed: u64,
    /// Critical events dropped at the hard limit.
    pub dropped: u64,
    /// Acks for a seq this storage never assigned (ignored: they must never delete anything).
    pub stray_acks: u64,
    /// Storage writes this outbox (and the parts writing through it) waited to be flushed.
    flushed_writes: AtomicU64,
}

impl Outbox {
    /// Opens the cabinet's tree, increments the boot counter (durably) and loads the state.
    pub async fn open(
        storage: &Storage,
        cabinet: &CabinetId,
        limits: OutboxConfig,
    ) -> Result<(Outbox, Loaded), OutboxError> {
        let db = storage.db().clone();
        let name = cabinet.as_str().to_owned();
        let (tree, loaded) = storage
            .run(Durability::Flush, move || {
                let tree = db.open_tree(name)?;
                let loaded = storage::load(&tree)?;
                Ok::<_, StorageError>((tree, loaded))
            })
            .await??;
        let last = loaded.last_seq.unwrap_or(0).max(loaded.acked);
        let ob = Outbox {
            storage: storage.clone(),
            tree,
            cabinet: cabinet.clone(),
            boot: loaded.boot,
            acked: loaded.acked,
            next_seq: last + 1,
            limits,
            shed: 0,
            dropped: 0,
            stray_acks: 0,
            flushed_writes: AtomicU64::new(0),
        };
        Ok((ob, loaded))
    }

    /// The cabinet's tree (for the other stores of the agent).
    pub fn tree(&self) -> &Tree {
        &self.tree
    }

    /// The storage worker.
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// This start's boot counter.
    pub fn boot(&self) -> u32 {
        self.boot
    }

    /// Events stored and not acknowledged.
    pub fn depth(&self) -> u64 {
        self.next_seq - 1 - self.acked
    }

    /// The last acknowledged seq.
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// The seq the next stored event gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The last stored seq (0 if none ever).
    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// How many storage writes of this cabinet waited for a flush (events, command claims,
    /// credential writes): the agent's flushes per action.
    pub fn flushed_writes(&self) -> u64 {
        self.flushed_writes.load(Ordering::Relaxed)
    }

    /// The limits.
    pub fn limits(&self) -> &OutboxConfig {
        &self.limits
    }

    /// Stores an event (see the module doc for the policy), with `extra` writes applied
    /// atomically with it (or alone if the event is not stored).
    pub async fn append(
        &mut self,
        ts: Millis,
        body: UplinkBody,
        extra: Vec<Write>,
    ) -> Result<Appended, OutboxError> {
        let mut out = self.append_many(vec![(ts, body, extra)]).await?;
        out.pop()
            .ok_or_else(|| OutboxError::Encode("no event appended".into()))
    }

    /// Stores several events in order, each under the policy of the module doc, in ONE atomic
    /// storage write with ONE flush (if any of them needs one): a door opening and the Result
    /// of the command that opened it cost one flush, and a crash keeps both or neither.
    pub async fn append_many(
        &mut self,
        items: Vec<(Millis, UplinkBody, Vec<Write>)>,
    ) -> Result<Vec<Appended>, OutboxError> {
        let mut depth = self.depth();
        let mut next = self.next_seq;
        let mut entries: Vec<storage::Entry> = Vec::with_capacity(items.len());
        let mut out = Vec::with_capacity(items.len());
        let mut durability = Durability::None;
        for (ts, body, extra) in items {
            let sheddable = body.is_sheddable();
            match admit(&self.limits, depth, sheddable) {
                Admission::Store => {}
                Admission::Shed => {
                    self.shed += 1;
                    if self.shed.is_power_of_two() {
                        tracing::warn!(cabinet = %self.cabinet, shed = self.shed, "outbox full: shedding telemetry");
                    }
                    if !extra.is_empty() {
                        durability = Durability::Flush;
                        entries.push((None, extra));
                    }
                    out.push(Appended::Shed);
                    continue;
                }
                Admission::Drop => {
                    self.dropped += 1;
                    tracing::error!(
                        cabinet = %self.cabinet,
                        dropped = self.dropped,
                        kind = %body.kind(),
                        "outbox at its hard limit: CRITICAL EVENT DROPPED"
                    );
                    if !extra.is_empty() {
                        durability = Durability::Flush;
                        entries.push((None, extra));
                    }
                    out.push(Appended::Dropped);
                    continue;
                }
            }
            let seq = next;
            let kind = body.kind();
            let up = Uplink {
                cabinet: self.cabinet.clone(),
                boot: self.boot,
                seq,
                ts,
                body,
            };
            let payload =
                codec::encode_uplink(&up).map_err(|e| OutboxError::Encode(e.to_string()))?;
            durability = match (durability, sheddable) {
                (_, false) | (Durability::Flush, _) => Durability::Flush,
                _ => Durability::Group,
            };
            entries.push((Some((seq, kind, payload.clone())), extra));
            out.push(Appended::Stored(StoredEvent { seq, kind, payload }));
            next += 1;
            depth += 1;
        }
        if entries.is_empty() {
            return Ok(out);
        }
        if durability == Durability::Flush {
            self.flushed_writes.fetch_add(1, Ordering::Relaxed);
        }
        let tree = self.tree.clone();
        self.storage
            .run(durability, move || storage::append_many(&tree, &entries))
            .await??;
        self.next_seq = next;
        Ok(out)
    }

    /// Applies the gateway's "stored everything up to `seq`": deletes those events (queued on
    /// the worker, not awaited). Returns whether the ack made progress.
    ///
    /// An ack beyond the last seq this storage assigned cannot be about its events (the gateway
    /// speaks of another storage life, e.g. before this storage was wiped): it is ignored,
    /// counted in `stray_acks` and logged once, and deletes nothing.
    pub async fn ack(&mut self, seq: u64) -> Result<bool, OutboxError> {
        if seq <= self.acked {
            return Ok(false);
        }
        if seq > self.last_seq() {
            self.stray_acks += 1;
            if self.stray_acks == 1 {
                tracing::warn!(
                    cabinet = %self.cabinet,
                    ack = seq,
                    last = self.last_seq(),
                    "gateway acknowledged a seq this storage never assigned; ignored (logged once, counted)"
                );
            }
            return Ok(false);
        }
        self.acked = seq;
        let tree = self.tree.clone();
        self.storage
            .detach(Durability::None, move || {
                if let Err(e) = storage::ack(&tree, seq) {
                    tracing::error!(error = %e, "could not delete acknowledged events");
                }
            })
            .await?;
        Ok(true)
    }

    /// Reads up to `max` stored events from `from` on.
    pub async fn read(&self, from: u64, max: usize) -> Result<Vec<StoredEvent>, OutboxError> {
        let tree = self.tree.clone();
        Ok(self
            .storage
            .run(Durability::None, move || storage::read(&tree, from, max))
            .await??)
    }

    /// Every stored event, decoded.
    pub async fn snapshot(&self) -> Result<Vec<Uplink>, OutboxError> {
        let tree = self.tree.clone();
        Ok(self
            .storage
            .run(Durability::None, move || storage::read_all(&tree))
            .await??)
    }

    /// Runs a synchronous job on the cabinet's tree on the storage worker.
    pub async fn with_tree<T, F>(&self, durability: Durability, f: F) -> Result<T, OutboxError>
    where
        T: Send + 'static,
        F: FnOnce(&Tree) -> Result<T, StorageError> + Send + 'static,
    {
        if durability == Durability::Flush {
            self.flushed_writes.fetch_add(1, Ordering::Relaxed);
        }
        let tree = self.tree.clone();
        Ok(self.storage.run(durability, move || f(&tree)).await??)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_ack_beyond_what_this_storage_assigned_deletes_nothing() {
        let dir = tempfile::tempdir().expect("dir");
        let st = Storage::open(&dir.path().join("db"), std::time::Duration::from_millis(5))
            .expect("storage");
        let cab = CabinetId::new("CAB-1").expect("id");
        let limits = OutboxConfig {
            max_events: 100,
            nearly_full_percent: 80,
            hard_max_events: 200,
        };
        let (mut ob, _) = Outbox::open(&st, &cab, limits).await.expect("open");
        for i in 0..3 {
            let body = UplinkBody::Scan(locker_schemas::Scan {
                source: locker_schemas::ScanSource::Keypad,
                value: format!("{i}"),
            });
            ob.append(1_000, body, Vec::new()).await.expect("append");
        }
        // a gateway that remembers an older storage life acknowledges its old high-water mark
        assert!(!ob.ack(10).await.expect("ack"));
        assert!(!ob.ack(11).await.expect("ack"));
        assert_eq!(ob.stray_acks, 2);
        assert_eq!((ob.acked(), ob.depth(), ob.next_seq()), (0, 3, 4));
        let kept: Vec<u64> = ob
            .read(1, 10)
            .await
            .expect("read")
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(kept, vec![1, 2, 3], "nothing deleted");
        // a real ack still works
        assert!(ob.ack(2).await.expect("ack"));
        assert_eq!(ob.depth(), 1);
    }

    #[test]
    fn admission_sheds_telemetry_first_and_keeps_critical_to_the_hard_limit() {
        let l = OutboxConfig {
            max_events: 10,
            nearly_full_percent: 80,
            hard_max_events: 15,
        };
        assert_eq!(admit(&l, 9, true), Admission::Store);
        assert_eq!(admit(&l, 10, true), Admission::Shed);
        assert_eq!(admit(&l, 10, false), Admission::Store);
        assert_eq!(admit(&l, 14, false), Admission::Store);
        assert_eq!(admit(&l, 15, false), Admission::Drop);
        assert_eq!(nearly_full_mark(&l), 8);
    }
}
