//! How far this node has applied each part of the replicated domain log (cluster mode): one
//! sled tree, `domain_marks`: `part` -> the stream sequence (u64 BE) of the last record of that
//! part applied to this node's trees. Written after the record's own writes, so a crash between
//! them applies the record again (every record applies idempotently), never skips it.
//!
//! Blocking, like the rest of the store.

use std::collections::HashMap;

use super::StoreError;

/// The `domain_marks` tree (cheap to clone).
#[derive(Clone)]
pub struct DomainMarks {
    tree: sled::Tree,
}

impl DomainMarks {
    pub(super) fn open(db: &sled::Db) -> Result<Self, StoreError> {
        Ok(Self {
            tree: db.open_tree("domain_marks")?,
        })
    }

    /// The last applied sequence of every part named (0 when none).
    pub fn get(&self, part: &str) -> Result<u64, StoreError> {
        Ok(match self.tree.get(part.as_bytes())? {
            Some(v) => {
                let b: [u8; 8] = v.as_ref().try_into().map_err(|_| StoreError::Corrupt {
                    tree: "domain_marks",
                    detail: format!("{part}: {} bytes", v.len()),
                })?;
                u64::from_be_bytes(b)
            }
            None => 0,
        })
    }

    /// Every part's mark.
    pub fn all(&self) -> Result<HashMap<String, u64>, StoreError> {
        let mut out = HashMap::new();
        for kv in self.tree.iter() {
            let (k, _) = kv?;
            let part = String::from_utf8_lossy(&k).into_owned();
            let seq = self.get(&part)?;
            out.insert(part, seq);
        }
        Ok(out)
    }

    /// Records that `part` is applied up to `seq` (never moves a mark back). Not flushed: the
    /// next flush of the database takes it (a mark lost in a crash only re-applies records).
    pub fn set(&self, part: &str, seq: u64) -> Result<(), StoreError> {
        if self.get(part)? < seq {
            self.tree.insert(part.as_bytes(), &seq.to_be_bytes())?;
        }
        Ok(())
    }
}
