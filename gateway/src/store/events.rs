//! The audit log (sled tree `events`): every uplink the gateway placed in a cabinet's sequence,
//! keyed by a gateway-assigned, per-cabinet, monotonic **audit position**.
//!
//! Key `cabinet \0 position(u64 BE)`. Value: either the uplink exactly as the cabinet sent it
//! (CBOR, always an array, so its first byte is 0x80..=0x9f), or a 37-byte marker for an event
//! that was placed but quarantined (`0x00 boot(u32) seq(u64) ts(u64) digest(u64)
//! quarantine id(u64)`, all BE); the marker keeps the event's place and lets a replay of it be
//! recognised, the bytes themselves are in the quarantine store.
//!
//! Storage lives: a cabinet's events map its own sequence numbers to positions by an offset,
//! `position = base + seq`. A cabinet whose storage was wiped starts a new life at seq 1; ingest
//! then sets `base` to the last position, so the old life's events stay where they are. The
//! base is derived from the last stored entry (`position - seq`), so it needs no state of its
//! own that could disagree with the log after a crash. Databases written before positions
//! existed have `position == seq` (base 0), which is the same rule.
//!
//! Every method blocks (sled I/O); callers use [`super::blocking`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use locker_schemas::CabinetId;

use super::StoreError;
use crate::ingest::head::{digest, read_head};

const MARKER: u8 = 0x00;
const MARKER_LEN: usize = 37;

/// A cabinet's current storage life: its seq `s` is stored at position `base + s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Life {
    pub base: u64,
    pub last_seq: u64,
}

impl Life {
    /// The last position of this life.
    pub fn last_position(&self) -> u64 {
        self.base + self.last_seq
    }
}

/// What is stored at one position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditEntry {
    /// The uplink as the cabinet sent it.
    Event(Vec<u8>),
    /// A placed, quarantined event (its bytes are in the quarantine store under `quarantine`).
    Quarantined {
        boot: u32,
        seq: u64,
        ts: u64,
        digest: u64,
        quarantine: u64,
    },
}

impl AuditEntry {
    fn decode(v: &[u8]) -> Result<Self, StoreError> {
        if v.first() != Some(&MARKER) {
            return Ok(AuditEntry::Event(v.to_vec()));
        }
        let corrupt = || StoreError::Corrupt {
            tree: "events",
            detail: format!("quarantine marker of {} bytes", v.len()),
        };
        if v.len() != MARKER_LEN {
            return Err(corrupt());
        }
        let u64_at = |i: usize| {
            v.get(i..i + 8)
                .and_then(|s| <[u8; 8]>::try_from(s).ok())
                .map(u64::from_be_bytes)
                .ok_or_else(corrupt)
        };
        let boot = v
            .get(1..5)
            .and_then(|s| <[u8; 4]>::try_from(s).ok())
            .map(u32::from_be_bytes)
            .ok_or_else(corrupt)?;
        Ok(AuditEntry::Quarantined {
            boot,
            seq: u64_at(5)?,
            ts: u64_at(13)?,
            digest: u64_at(21)?,
            quarantine: u64_at(29)?,
        })
    }

    /// The stored value.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            AuditEntry::Event(raw) => raw.clone(),
            AuditEntry::Quarantined {
                boot,
                seq,
                ts,
                digest,
                quarantine,
            } => {
                let mut v = Vec::with_capacity(MARKER_LEN);
                v.push(MARKER);
                v.extend_from_slice(&boot.to_be_bytes());
                v.extend_from_slice(&seq.to_be_bytes());
                v.extend_from_slice(&ts.to_be_bytes());
                v.extend_from_slice(&digest.to_be_bytes());
                v.extend_from_slice(&quarantine.to_be_bytes());
                v
            }
        }
    }

    /// The digest a replay of this entry must match.
    pub fn digest(&self) -> u64 {
        match self {
            AuditEntry::Event(raw) => digest(raw),
            AuditEntry::Quarantined { digest, .. } => *digest,
        }
    }

    /// The cabinet's seq and clock, if readable.
    fn seq_ts(&self) -> Option<(u64, Option<u64>)> {
        match self {
            AuditEntry::Event(raw) => read_head(raw).map(|h| (h.seq, h.ts)),
            AuditEntry::Quarantined { seq, ts, .. } => Some((*seq, Some(*ts))),
        }
    }
}

/// One entry to append.
pub struct NewEntry {
    pub cabinet: CabinetId,
    pub position: u64,
    pub entry: AuditEntry,
}

/// The audit log's store interface (cheap to clone).
#[derive(Clone)]
pub struct AuditLog {
    events: sled::Tree,
    /// Fault injection: while set, appends fail as a full disk would.
    fault: Arc<AtomicBool>,
}

pub(super) fn key(cabinet: &CabinetId, position: u64) -> Vec<u8> {
    let mut k = prefix(cabinet);
    k.extend_from_slice(&position.to_be_bytes());
    k
}

pub(super) fn prefix(cabinet: &CabinetId) -> Vec<u8> {
    let mut k = cabinet.as_str().as_bytes().to_vec();
    k.push(0);
    k
}

fn position_of(k: &[u8]) -> Result<u64, StoreError> {
    k.get(k.len().saturating_sub(8)..)
        .and_then(|s| <[u8; 8]>::try_from(s).ok())
        .map(u64::from_be_bytes)
        .ok_or(StoreError::Corrupt {
            tree: "events",
            detail: "short key".into(),
        })
}

impl AuditLog {
    pub(super) fn open(db: &sled::Db) -> Result<Self, StoreError> {
        Ok(Self {
            events: db.open_tree("events")?,
            fault: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Fault injection for tests and drills: while `on`, every append fails with an I/O error
    /// (as on a full disk) and writes nothing.
    pub fn set_write_fault(&self, on: bool) {
        self.fault.store(on, Ordering::SeqCst);
    }

    /// Fails if a write fault is injected.
    pub fn check_writable(&self) -> Result<(), StoreError> {
        if self.fault.load(Ordering::SeqCst) {
            return Err(StoreError::Sled(sled::Error::Io(std::io::Error::other(
                "injected write fault (no space left on device)",
            ))));
        }
        Ok(())
    }

    /// Queues entries in one sled batch (not flushed: the caller flushes the database).
    pub(super) fn append(&self, entries: &[NewEntry]) -> Result<(), StoreError> {
        self.check_writable()?;
        let mut b = sled::Batch::default();
        for e in entries {
            b.insert(key(&e.cabinet, e.position), e.entry.encode());
        }
        self.events.apply_batch(b)?;
        Ok(())
    }

    /// Every cabinet with at least one entry, one seek per cabinet.
    pub fn cabinets(&self) -> Result<Vec<CabinetId>, StoreError> {
        let mut out = Vec::new();
        let mut from: Vec<u8> = Vec::new();
        while let Some(kv) = self.events.range(from.clone()..).next() {
            let (k, _) = kv?;
            let Some(end) = k.iter().position(|b| *b == 0) else {
                break;
            };
            if let Ok(id) = CabinetId::new(String::from_utf8_lossy(&k[..end]).into_owned()) {
                out.push(id);
            }
            from = k[..end].to_vec();
            from.push(1); // the first key after every `cabinet \0 ...` key
        }
        Ok(out)
    }

    /// The last position of a cabinet (0 if none).
    pub fn high_water(&self, cabinet: &CabinetId) -> Result<u64, StoreError> {
        match self.events.scan_prefix(prefix(cabinet)).next_back() {
            None => Ok(0),
            Some(kv) => position_of(&kv?.0),
        }
    }

    /// The first position still stored (retention prunes from the front).
    pub fn first_position(&self, cabinet: &CabinetId) -> Result<Option<u64>, StoreError> {
        match self.events.scan_prefix(prefix(cabinet)).next() {
            None => Ok(None),
            Some(kv) => Ok(Some(position_of(&kv?.0)?)),
        }
    }

    /// The cabinet's current life, from its last entry (None for a cabinet never seen).
    pub fn life(&self, cabinet: &CabinetId) -> Result<Option<Life>, StoreError> {
        let Some(kv) = self.events.scan_prefix(prefix(cabinet)).next_back() else {
            return Ok(None);
        };
        let (k, v) = kv?;
        let position = position_of(&k)?;
        let life = match AuditEntry::decode(&v)?.seq_ts() {
            Some((seq, _)) if seq <= position => Life {
                base: position - seq,
                last_seq: seq,
            },
            // unreadable (cannot happen for entries ingest wrote): continue from the position
            _ => Life {
                base: 0,
                last_seq: position,
            },
        };
        Ok(Some(life))
    }

    /// The entry at a position.
    pub fn get(
        &self,
        cabinet: &CabinetId,
        position: u64,
    ) -> Result<Option<AuditEntry>, StoreError> {
        match self.events.get(key(cabinet, position))? {
            None => Ok(None),
            Some(v) => Ok(Some(AuditEntry::decode(&v)?)),
        }
    }

    /// A page of the audit log with quarantine markers: entries after `after`, oldest first.
    pub fn page(
        &self,
        cabinet: &CabinetId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, AuditEntry)>, StoreError> {
        let start = key(cabinet, after.saturating_add(1));
        let end = key(cabinet, u64::MAX);
        let mut out = Vec::new();
        for kv in self.events.range(start..=end).take(limit) {
            let (k, v) = kv?;
            out.push((position_of(&k)?, AuditEntry::decode(&v)?));
        }
        Ok(out)
    }

    /// A page of stored uplinks (quarantine markers skipped): `(position, CBOR)` with
    /// `position > after`, oldest first.
    pub fn events_page(
        &self,
        cabinet: &CabinetId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let start = key(cabinet, after.saturating_add(1));
        let end = key(cabinet, u64::MAX);
        let mut out = Vec::new();
        for kv in self.events.range(start..=end) {
            if out.len() >= limit {
                break;
            }
            let (k, v) = kv?;
            if let AuditEntry::Event(raw) = AuditEntry::decode(&v)? {
                out.push((position_of(&k)?, raw));
            }
        }
        Ok(out)
    }

    /// Deletes up to `batch` of a cabinet's oldest entries that are older than `cutoff_ms`
    /// (by the cabinet's clock; 0 = no age limit) or beyond the newest `max_events`
    /// (0 = no count limit). Never deletes the cabinet's last entry (it carries its place in
    /// the sequence) nor an entry newer than the cutoff while under the count limit. Returns
    /// how many were deleted.
    pub fn prune(
        &self,
        cabinet: &CabinetId,
        cutoff_ms: u64,
        max_events: u64,
        batch: usize,
    ) -> Result<u64, StoreError> {
        let Some(first) = self.first_position(cabinet)? else {
            return Ok(0);
        };
        let last = self.high_water(cabinet)?;
        // positions are contiguous (quarantined events keep their place with a marker)
        let count = last - first + 1;
        let over = if max_events == 0 {
            0
        } else {
            count.saturating_sub(max_events)
        };
        let mut b = sled::Batch::default();
        let mut n = 0u64;
        for kv in self.events.scan_prefix(prefix(cabinet)) {
            if n as usize >= batch {
                break;
            }
            let (k, v) = kv?;
            let position = position_of(&k)?;
            if position >= last {
                break;
            }
            let too_old = cutoff_ms > 0
                && AuditEntry::decode(&v)?
                    .seq_ts()
                    .and_then(|(_, ts)| ts)
                    .is_some_and(|ts| ts < cutoff_ms);
            if n < over || too_old {
                b.remove(k);
                n += 1;
            } else {
                break;
            }
        }
        if n > 0 {
            self.check_writable()?;
            self.events.apply_batch(b)?;
        }
        Ok(n)
    }

    /// The first entry at or after `position` with its position and the cabinet's clock
    /// (`None` when unreadable), or `None` past the end (read-only; the audit export).
    pub fn entry_at_or_after(
        &self,
        cabinet: &CabinetId,
        position: u64,
    ) -> Result<Option<(u64, Option<u64>)>, StoreError> {
        let start = key(cabinet, position);
        let end = key(cabinet, u64::MAX);
        match self.events.range(start..=end).next() {
            None => Ok(None),
            Some(kv) => {
                let (k, v) = kv?;
                let ts = AuditEntry::decode(&v)?.seq_ts().and_then(|(_, ts)| ts);
                Ok(Some((position_of(&k)?, ts)))
            }
        }
    }

    /// The cursor (`after`, for [`AuditLog::events_page`]) of a cabinet's first entry whose
    /// clock is at or after `ts`, by a binary search over its positions: O(log n) reads, never a
    /// scan of the log. Exact while the cabinet's clock never went back (entries are stored in
    /// its sequence order); an entry with an unreadable clock counts as earlier (read-only;
    /// the audit export).
    pub fn seek_time(&self, cabinet: &CabinetId, ts: u64) -> Result<u64, StoreError> {
        let Some(first) = self.first_position(cabinet)? else {
            return Ok(0);
        };
        let (mut lo, mut hi) = (first, self.high_water(cabinet)?.saturating_add(1));
        // invariant: every entry before `lo` is earlier than `ts`; the entry at or after `hi`
        // (if any) is not
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.entry_at_or_after(cabinet, mid)? {
                Some((p, Some(t))) if t >= ts => hi = mid.min(p),
                Some((p, _)) if p < hi => lo = p + 1,
                _ => hi = mid,
            }
        }
        Ok(lo.saturating_sub(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_round_trip_and_never_look_like_an_event() {
        let m = AuditEntry::Quarantined {
            boot: 7,
            seq: 42,
            ts: 1_700_000_000_000,
            digest: 99,
            quarantine: 5,
        };
        let v = m.encode();
        assert_eq!(v.len(), MARKER_LEN);
        assert_eq!(AuditEntry::decode(&v).expect("decode"), m);
        assert!(matches!(
            AuditEntry::decode(&[0x87, 1]).expect("event"),
            AuditEntry::Event(_)
        ));
        assert!(AuditEntry::decode(&[0x00, 1]).is_err());
    }

    fn uplink(seq: u64, ts: u64) -> Vec<u8> {
        let mut u = locker_schemas::vectors::door_examples()[0].clone();
        u.seq = seq;
        u.ts = ts;
        locker_schemas::codec::encode_uplink(&u).expect("encode")
    }

    #[test]
    fn prune_by_age_and_count_never_takes_the_last_entry() {
        let dir = tempfile::tempdir().expect("dir");
        let db = sled::open(dir.path()).expect("db");
        let log = AuditLog::open(&db).expect("open");
        let cab = CabinetId::new("CAB-1").expect("id");
        let entries: Vec<NewEntry> = (1..=6)
            .map(|p| NewEntry {
                cabinet: cab.clone(),
                position: p,
                entry: AuditEntry::Event(uplink(p, 1_000 * p)),
            })
            .collect();
        log.append(&entries).expect("append");
        // older than 3.5 s by the cabinet's clock: positions 1..=3, two per batch
        assert_eq!(log.prune(&cab, 3_500, 0, 2).expect("prune"), 2);
        assert_eq!(log.prune(&cab, 3_500, 0, 2).expect("prune"), 1);
        assert_eq!(log.prune(&cab, 3_500, 0, 2).expect("prune"), 0);
        assert_eq!(log.first_position(&cab).expect("first"), Some(4));
        // keep at most 1: everything but the last
        assert_eq!(log.prune(&cab, 0, 1, 100).expect("prune"), 2);
        // everything is old: the last entry stays anyway
        assert_eq!(log.prune(&cab, u64::MAX, 0, 100).expect("prune"), 0);
        assert_eq!(log.first_position(&cab).expect("first"), Some(6));
        assert_eq!(
            log.life(&cab).expect("life"),
            Some(Life {
                base: 0,
                last_seq: 6
            })
        );
    }

    #[test]
    fn seek_time_finds_the_first_entry_at_or_after_a_time_by_binary_search() {
        let dir = tempfile::tempdir().expect("dir");
        let db = sled::open(dir.path()).expect("db");
        let log = AuditLog::open(&db).expect("open");
        let cab = CabinetId::new("CAB-1").expect("id");
        assert_eq!(log.seek_time(&cab, 5).expect("seek"), 0);
        // positions 11..=110 at 1000, 1010, ... (pruned before 11)
        let entries: Vec<NewEntry> = (11..=110)
            .map(|p| NewEntry {
                cabinet: cab.clone(),
                position: p,
                entry: AuditEntry::Event(uplink(p, 1_000 + 10 * (p - 11))),
            })
            .collect();
        log.append(&entries).expect("append");
        assert_eq!(log.seek_time(&cab, 0).expect("seek"), 10);
        assert_eq!(log.seek_time(&cab, 1_000).expect("seek"), 10);
        assert_eq!(log.seek_time(&cab, 1_001).expect("seek"), 11);
        assert_eq!(log.seek_time(&cab, 1_500).expect("seek"), 60);
        assert_eq!(log.seek_time(&cab, 1_990).expect("seek"), 109);
        assert_eq!(log.seek_time(&cab, 1_991).expect("seek"), 110);
        let page = log.events_page(&cab, 60, 1).expect("page");
        assert_eq!(page[0].0, 61);
    }
}
