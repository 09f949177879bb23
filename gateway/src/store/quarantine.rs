//! The quarantine (sled trees `quarantine` and `quarantine_by_cabinet`): uplinks ingest could
//! not accept as they are (undecodable, an unknown schema version, an envelope that does not
//! match its topic), kept with their raw bytes, the reason, the topic and the time, so nothing
//! a cabinet sent is lost and an operator can read it through the API.
//!
//! Keys: `quarantine`: `id(u64 BE)` -> `meta length(u32 BE) meta(JSON) raw bytes`, ids from
//! sled's monotonic id generator (so the tree is in arrival order, fleet-wide);
//! `quarantine_by_cabinet`: `cabinet \0 id` -> empty.
//!
//! Bounded: at most `max_per_cabinet` records per cabinet and `max_total` in all; the oldest
//! are dropped first (the caller counts them in a metric). Every method blocks.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use locker_schemas::{CabinetId, Millis};
use serde::{Deserialize, Serialize};

use super::events::prefix;
use super::StoreError;

/// One quarantined uplink.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QuarantineRecord {
    pub id: u64,
    /// The cabinet of the topic it arrived on (the edge bound the topic to the certificate);
    /// None only for a topic that is not a cabinet uplink topic at all.
    pub cabinet: Option<CabinetId>,
    /// Its place in the cabinet's audit log, if its envelope head was readable.
    pub position: Option<u64>,
    pub boot: Option<u32>,
    pub seq: Option<u64>,
    /// The schema version the envelope claims, if readable.
    pub version: Option<u64>,
    /// A stable short reason (`version`, `malformed`, `foreign`, `kind_mismatch`, ...).
    pub reason: String,
    /// The decoder's message.
    pub detail: String,
    pub topic: String,
    /// Gateway clock at receipt, ms.
    pub received_at: Millis,
    #[serde(skip)]
    pub raw: Vec<u8>,
}

impl QuarantineRecord {
    fn encode(&self) -> Result<Vec<u8>, StoreError> {
        let meta = serde_json::to_vec(self)?;
        let len = u32::try_from(meta.len()).map_err(|_| StoreError::Corrupt {
            tree: "quarantine",
            detail: "record metadata too large".into(),
        })?;
        let mut v = Vec::with_capacity(4 + meta.len() + self.raw.len());
        v.extend_from_slice(&len.to_be_bytes());
        v.extend_from_slice(&meta);
        v.extend_from_slice(&self.raw);
        Ok(v)
    }

    fn decode(v: &[u8]) -> Result<Self, StoreError> {
        let corrupt = |detail: String| StoreError::Corrupt {
            tree: "quarantine",
            detail,
        };
        let len = v
            .get(..4)
            .and_then(|s| <[u8; 4]>::try_from(s).ok())
            .map(u32::from_be_bytes)
            .ok_or_else(|| corrupt("short record".into()))? as usize;
        let meta = v
            .get(4..4 + len)
            .ok_or_else(|| corrupt("short metadata".into()))?;
        let mut rec: QuarantineRecord =
            serde_json::from_slice(meta).map_err(|e| corrupt(e.to_string()))?;
        rec.raw = v.get(4 + len..).unwrap_or_default().to_vec();
        Ok(rec)
    }
}

/// Caps of the quarantine.
#[derive(Debug, Clone, Copy)]
pub struct QuarantineLimits {
    pub max_per_cabinet: u64,
    pub max_total: u64,
}

/// The quarantine's store interface (cheap to clone: one pointer).
#[derive(Clone)]
pub struct QuarantineStore(Arc<Inner>);

struct Inner {
    db: sled::Db,
    items: sled::Tree,
    by_cabinet: sled::Tree,
    /// Records held (counted once at open, then kept up to date).
    count: AtomicU64,
}

fn index_key(cabinet: &CabinetId, id: u64) -> Vec<u8> {
    let mut k = prefix(cabinet);
    k.extend_from_slice(&id.to_be_bytes());
    k
}

fn id_of(k: &[u8]) -> u64 {
    k.get(k.len().saturating_sub(8)..)
        .and_then(|s| <[u8; 8]>::try_from(s).ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0)
}

impl QuarantineStore {
    pub(super) fn open(db: &sled::Db) -> Result<Self, StoreError> {
        let items = db.open_tree("quarantine")?;
        let count = items.len() as u64;
        Ok(Self(Arc::new(Inner {
            db: db.clone(),
            by_cabinet: db.open_tree("quarantine_by_cabinet")?,
            items,
            count: AtomicU64::new(count),
        })))
    }

    /// A new record id (monotonic across restarts, from 1: 0 is the paging start).
    pub fn next_id(&self) -> Result<u64, StoreError> {
        Ok(self.0.db.generate_id()? + 1)
    }

    /// Records held.
    pub fn len(&self) -> u64 {
        self.0.count.load(Ordering::Relaxed)
    }

    /// Whether the quarantine is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes records (not flushed: the caller flushes the database with the batch they belong
    /// to), then drops the oldest beyond the limits; returns how many were dropped.
    pub(super) fn insert(
        &self,
        recs: &[QuarantineRecord],
        limits: QuarantineLimits,
    ) -> Result<u64, StoreError> {
        if recs.is_empty() {
            return Ok(0);
        }
        let mut touched: Vec<&CabinetId> = Vec::new();
        for r in recs {
            self.0.items.insert(r.id.to_be_bytes(), r.encode()?)?;
            if let Some(c) = &r.cabinet {
                self.0.by_cabinet.insert(index_key(c, r.id), &[])?;
                if !touched.contains(&c) {
                    touched.push(c);
                }
            }
            self.0.count.fetch_add(1, Ordering::Relaxed);
        }
        let mut dropped = 0;
        for c in touched {
            let held = self.0.by_cabinet.scan_prefix(prefix(c)).count() as u64;
            let over = held.saturating_sub(limits.max_per_cabinet);
            let old: Vec<u64> = self
                .0
                .by_cabinet
                .scan_prefix(prefix(c))
                .keys()
                .take(over as usize)
                .map(|k| k.map(|k| id_of(&k)))
                .collect::<Result<_, _>>()?;
            for id in old {
                dropped += u64::from(self.remove(id)?);
            }
        }
        while self.len() > limits.max_total {
            let Some(kv) = self.0.items.iter().next() else {
                break;
            };
            let (k, _) = kv?;
            dropped += u64::from(self.remove(id_of(&k))?);
        }
        Ok(dropped)
    }

    fn remove(&self, id: u64) -> Result<bool, StoreError> {
        let Some(v) = self.0.items.remove(id.to_be_bytes())? else {
            return Ok(false);
        };
        self.0.count.fetch_sub(1, Ordering::Relaxed);
        if let Ok(rec) = QuarantineRecord::decode(&v) {
            if let Some(c) = &rec.cabinet {
                self.0.by_cabinet.remove(index_key(c, id))?;
            }
        }
        Ok(true)
    }

    /// One record.
    pub fn get(&self, id: u64) -> Result<Option<QuarantineRecord>, StoreError> {
        match self.0.items.get(id.to_be_bytes())? {
            None => Ok(None),
            Some(v) => Ok(Some(QuarantineRecord::decode(&v)?)),
        }
    }

    /// Fleet-wide, records with `id > after`, oldest first.
    pub fn page(&self, after: u64, limit: usize) -> Result<Vec<QuarantineRecord>, StoreError> {
        let mut out = Vec::new();
        for kv in self
            .0
            .items
            .range(after.saturating_add(1).to_be_bytes()..)
            .take(limit)
        {
            out.push(QuarantineRecord::decode(&kv?.1)?);
        }
        Ok(out)
    }

    /// One cabinet's records with `id > after`, oldest first.
    pub fn cabinet_page(
        &self,
        cabinet: &CabinetId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<QuarantineRecord>, StoreError> {
        let start = index_key(cabinet, after.saturating_add(1));
        let end = index_key(cabinet, u64::MAX);
        let mut out = Vec::new();
        for k in self.0.by_cabinet.range(start..=end).keys().take(limit) {
            if let Some(r) = self.get(id_of(&k?))? {
                out.push(r);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(q: &QuarantineStore, cab: &str) -> QuarantineRecord {
        QuarantineRecord {
            id: q.next_id().expect("id"),
            cabinet: Some(CabinetId::new(cab).expect("id")),
            position: None,
            boot: None,
            seq: None,
            version: None,
            reason: "malformed".into(),
            detail: String::new(),
            topic: format!("lk/v1/{cab}/up/door"),
            received_at: 1,
            raw: vec![0xff, 0, 0x13],
        }
    }

    #[test]
    fn bounded_per_cabinet_and_in_all_oldest_dropped_first() {
        let dir = tempfile::tempdir().expect("dir");
        let db = sled::open(dir.path()).expect("db");
        let q = QuarantineStore::open(&db).expect("open");
        let limits = QuarantineLimits {
            max_per_cabinet: 3,
            max_total: 5,
        };
        let a: Vec<_> = (0..4).map(|_| rec(&q, "A")).collect();
        assert_eq!(q.insert(&a, limits).expect("insert"), 1);
        let ids: Vec<u64> = q
            .cabinet_page(&CabinetId::new("A").expect("id"), 0, 10)
            .expect("page")
            .iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(ids, a[1..].iter().map(|r| r.id).collect::<Vec<_>>());
        let b: Vec<_> = (0..3).map(|_| rec(&q, "B")).collect();
        assert_eq!(q.insert(&b, limits).expect("insert"), 1);
        assert_eq!(q.len(), 5);
        let all = q.page(0, 100).expect("page");
        assert_eq!(all.len(), 5);
        assert_eq!(all[0].id, a[2].id, "the oldest went first");
        assert_eq!(all[0].raw, vec![0xff, 0, 0x13]);
    }
}
