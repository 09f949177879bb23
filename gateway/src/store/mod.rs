//! Durable state in one sled database: the audit log of every stored uplink, the cabinets the
//! gateway knows (with their last fleet snapshot), and the command log with its per-cabinet
//! offline queue.
//!
//! Trees and keys:
//! - `events`: `cabinet \0 seq(u64 BE)` -> the uplink exactly as the cabinet sent it (CBOR);
//!   the per-cabinet high-water mark is the last key under the cabinet's prefix, so events and
//!   the ingest position can never disagree after a crash;
//! - `cabinets`: `cabinet` -> JSON [`CabinetSnapshot`];
//! - `commands`, `queue`: the command log, behind [`commands::CommandStore`].
//!
//! Every method here blocks (sled I/O); actors call them through `spawn_blocking`.

use locker_schemas::CabinetId;
use serde::{de::DeserializeOwned, Serialize};

use crate::model::CabinetSnapshot;

pub mod commands;
pub use commands::CommandStore;

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    #[error("corrupt record in tree {tree}: {detail}")]
    Corrupt { tree: &'static str, detail: String },
    #[error("cannot encode record: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("storage task failed: {0}")]
    Join(String),
}

/// Handle to the gateway's sled database (cheap to clone).
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    events: sled::Tree,
    cabinets: sled::Tree,
    commands: CommandStore,
}

/// One uplink to append to the audit log.
pub struct NewEvent {
    pub cabinet: CabinetId,
    pub seq: u64,
    pub raw: bytes::Bytes,
}

fn event_key(cabinet: &CabinetId, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(cabinet.as_str().len() + 9);
    k.extend_from_slice(cabinet.as_str().as_bytes());
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn prefix(cabinet: &CabinetId) -> Vec<u8> {
    let mut k = cabinet.as_str().as_bytes().to_vec();
    k.push(0);
    k
}

fn decode<T: DeserializeOwned>(tree: &'static str, v: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(v).map_err(|e| StoreError::Corrupt {
        tree,
        detail: e.to_string(),
    })
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    Ok(serde_json::to_vec(v)?)
}

/// Runs a blocking storage call off the async workers.
pub async fn blocking<T, F>(f: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, StoreError> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Join(e.to_string()))?
}

impl Store {
    /// Opens (or creates) the database at `path`.
    pub fn open(path: &std::path::Path) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(128 * 1024 * 1024)
            .open()?;
        Ok(Self {
            events: db.open_tree("events")?,
            cabinets: db.open_tree("cabinets")?,
            commands: CommandStore::open(&db)?,
            db,
        })
    }

    /// Every known cabinet with its snapshot and the last stored sequence number.
    ///
    /// Cabinets are taken from the audit log itself as well as from the snapshots, so a crash
    /// between an event write and its snapshot write can never make the gateway forget where
    /// a cabinet's sequence stands.
    pub fn load_cabinets(&self) -> Result<Vec<(CabinetSnapshot, u64)>, StoreError> {
        let mut snaps = std::collections::BTreeMap::new();
        for kv in self.cabinets.iter() {
            let (_, v) = kv?;
            let snap: CabinetSnapshot = decode("cabinets", &v)?;
            snaps.insert(snap.id.clone(), snap);
        }
        // walk the distinct cabinet prefixes of the events tree: one seek per cabinet
        let mut from: Vec<u8> = Vec::new();
        while let Some(kv) = self.events.range(from.clone()..).next() {
            let (k, _) = kv?;
            let Some(end) = k.iter().position(|b| *b == 0) else {
                break;
            };
            let name = String::from_utf8_lossy(&k[..end]).into_owned();
            if let Ok(id) = CabinetId::new(name) {
                snaps
                    .entry(id.clone())
                    .or_insert_with(|| CabinetSnapshot::new(id));
            }
            from = k[..end].to_vec();
            from.push(1); // the first key after every `cabinet \0 ...` key
        }
        let mut out = Vec::with_capacity(snaps.len());
        for (id, snap) in snaps {
            let hwm = self.high_water(&id)?;
            out.push((snap, hwm));
        }
        Ok(out)
    }

    /// The last stored sequence number of a cabinet (0 if none).
    pub fn high_water(&self, cabinet: &CabinetId) -> Result<u64, StoreError> {
        match self.events.scan_prefix(prefix(cabinet)).next_back() {
            None => Ok(0),
            Some(kv) => {
                let (k, _) = kv?;
                let n = k.len();
                let seq: [u8; 8] = k
                    .get(n.saturating_sub(8)..)
                    .and_then(|s| s.try_into().ok())
                    .ok_or(StoreError::Corrupt {
                        tree: "events",
                        detail: "short key".into(),
                    })?;
                Ok(u64::from_be_bytes(seq))
            }
        }
    }

    /// Appends a group of events and the snapshots of new cabinets, then flushes: when this
    /// returns Ok, everything in the batch is on disk and may be acknowledged.
    pub fn append_events(
        &self,
        events: &[NewEvent],
        new_cabinets: &[CabinetSnapshot],
    ) -> Result<(), StoreError> {
        let mut b = sled::Batch::default();
        for e in events {
            b.insert(event_key(&e.cabinet, e.seq), e.raw.as_ref());
        }
        self.events.apply_batch(b)?;
        for c in new_cabinets {
            self.cabinets.insert(c.id.as_str().as_bytes(), encode(c)?)?;
        }
        self.db.flush()?;
        Ok(())
    }

    /// Saves fleet snapshots (not flushed: they are caches rebuilt from events and presence).
    pub fn save_snapshots(&self, snaps: &[CabinetSnapshot]) -> Result<(), StoreError> {
        for c in snaps {
            self.cabinets.insert(c.id.as_str().as_bytes(), encode(c)?)?;
        }
        Ok(())
    }

    /// A page of a cabinet's audit log: events with `seq > after`, oldest first.
    pub fn events_page(
        &self,
        cabinet: &CabinetId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let start = event_key(cabinet, after.saturating_add(1));
        let end = event_key(cabinet, u64::MAX);
        let mut out = Vec::new();
        for kv in self.events.range(start..=end).take(limit) {
            let (k, v) = kv?;
            let n = k.len();
            let seq = k
                .get(n.saturating_sub(8)..)
                .and_then(|s| <[u8; 8]>::try_from(s).ok())
                .map(u64::from_be_bytes)
                .unwrap_or(0);
            out.push((seq, v.to_vec()));
        }
        Ok(out)
    }

    /// The command log (owned by the dispatcher).
    pub fn commands(&self) -> &CommandStore {
        &self.commands
    }

    /// Bytes on disk.
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }

    /// Flushes everything (shutdown).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(cab: &str, seq: u64) -> NewEvent {
        NewEvent {
            cabinet: CabinetId::new(cab).expect("id"),
            seq,
            raw: bytes::Bytes::from_static(b"x"),
        }
    }

    #[test]
    fn high_water_marks_come_from_the_audit_log_even_without_snapshots() {
        let dir = tempfile::tempdir().expect("dir");
        {
            let s = Store::open(dir.path()).expect("open");
            let batch: Vec<_> = (1..=5)
                .map(|i| ev("CAB-1", i))
                .chain((7..=9).map(|i| ev("CAB-10", i)))
                .chain([ev("A", 1)])
                .collect();
            // no snapshots written: as after a crash between the two writes
            s.append_events(&batch, &[]).expect("append");
        }
        let s = Store::open(dir.path()).expect("reopen");
        let mut got: Vec<(String, u64)> = s
            .load_cabinets()
            .expect("load")
            .into_iter()
            .map(|(c, h)| (c.id.to_string(), h))
            .collect();
        got.sort();
        assert_eq!(
            got,
            vec![("A".into(), 1), ("CAB-1".into(), 5), ("CAB-10".into(), 9)]
        );
        let page = s
            .events_page(&CabinetId::new("CAB-1").expect("id"), 2, 2)
            .expect("page");
        assert_eq!(page.iter().map(|(q, _)| *q).collect::<Vec<_>>(), vec![3, 4]);
    }
}
