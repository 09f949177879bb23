//! The console's login sessions, behind [`SessionStore`] (sled here; a JetStream key-value
//! bucket in cluster mode later, so a session works on every node).
//!
//! Tree `console_sessions`: `SHA-256(session id)` -> JSON [`SessionRecord`]. Only the hash of
//! the id is stored, so a copy of the database does not hold a usable cookie; the record
//! names the API token by its SHA-256 too, never the token itself.
//!
//! Blocking; the console calls it through `spawn_blocking`.

use serde::{Deserialize, Serialize};

use super::{decode, encode, StoreError};

/// A login session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// SHA-256 of the API token the user logged in with (hex): the session has that token's
    /// scope for as long as the token stays in `[api.tokens]`.
    pub token_sha256: String,
    /// The token's client name (for logs and the console's header).
    pub client: String,
    /// The CSRF token every unsafe request of this session must send.
    pub csrf: String,
    pub created_ms: u64,
    /// Last use (written at most once a minute).
    pub seen_ms: u64,
    /// Ends here whatever the use (`console.session_max_h`).
    pub expires_ms: u64,
}

/// The session store's interface.
pub trait SessionStore: Send + Sync {
    /// The session of this id hash, if any.
    fn get(&self, id_hash: &[u8; 32]) -> Result<Option<SessionRecord>, StoreError>;
    /// Creates or updates a session (flushed: a login survives a crash right after it).
    fn put(&self, id_hash: &[u8; 32], s: &SessionRecord) -> Result<(), StoreError>;
    /// Updates a session's last use without a flush (losing it costs an earlier idle expiry).
    fn touch(&self, id_hash: &[u8; 32], s: &SessionRecord) -> Result<(), StoreError>;
    /// Ends a session (flushed: a logout is final).
    fn remove(&self, id_hash: &[u8; 32]) -> Result<(), StoreError>;
    /// Removes every session `expired` says is over; returns how many.
    fn prune(&self, expired: &dyn Fn(&SessionRecord) -> bool) -> Result<usize, StoreError>;
    /// Sessions held.
    fn count(&self) -> usize;
}

/// [`SessionStore`] on one sled tree.
#[derive(Clone)]
pub struct SledSessions {
    tree: sled::Tree,
}

const TREE: &str = "console_sessions";

impl SledSessions {
    pub fn open(db: &sled::Db) -> Result<Self, StoreError> {
        Ok(Self {
            tree: db.open_tree(TREE)?,
        })
    }
}

impl SessionStore for SledSessions {
    fn get(&self, id_hash: &[u8; 32]) -> Result<Option<SessionRecord>, StoreError> {
        self.tree
            .get(id_hash)?
            .map(|v| decode(TREE, &v))
            .transpose()
    }

    fn put(&self, id_hash: &[u8; 32], s: &SessionRecord) -> Result<(), StoreError> {
        self.tree.insert(id_hash, encode(s)?)?;
        self.tree.flush()?;
        Ok(())
    }

    fn touch(&self, id_hash: &[u8; 32], s: &SessionRecord) -> Result<(), StoreError> {
        self.tree.insert(id_hash, encode(s)?)?;
        Ok(())
    }

    fn remove(&self, id_hash: &[u8; 32]) -> Result<(), StoreError> {
        self.tree.remove(id_hash)?;
        self.tree.flush()?;
        Ok(())
    }

    fn prune(&self, expired: &dyn Fn(&SessionRecord) -> bool) -> Result<usize, StoreError> {
        let mut n = 0;
        for kv in self.tree.iter() {
            let (k, v) = kv?;
            // an unreadable record is no session anyone can use: removed too
            let gone = decode::<SessionRecord>(TREE, &v).map_or(true, |s| expired(&s));
            if gone {
                self.tree.remove(k)?;
                n += 1;
            }
        }
        if n > 0 {
            self.tree.flush()?;
        }
        Ok(n)
    }

    fn count(&self) -> usize {
        self.tree.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(expires_ms: u64) -> SessionRecord {
        SessionRecord {
            token_sha256: "ab".into(),
            client: "ops".into(),
            csrf: "c".into(),
            created_ms: 1,
            seen_ms: 1,
            expires_ms,
        }
    }

    #[test]
    fn sessions_round_trip_and_prune() {
        let dir = tempfile::tempdir().expect("dir");
        let db = sled::open(dir.path()).expect("db");
        let s = SledSessions::open(&db).expect("tree");
        s.put(&[1; 32], &rec(10)).expect("put");
        s.put(&[2; 32], &rec(100)).expect("put");
        s.tree.insert([3; 32], b"not json".to_vec()).expect("raw");
        assert_eq!(s.get(&[1; 32]).expect("get"), Some(rec(10)));
        assert_eq!(s.get(&[9; 32]).expect("get"), None);
        assert_eq!(s.prune(&|r| r.expires_ms < 50).expect("prune"), 2);
        assert_eq!(s.count(), 1);
        s.remove(&[2; 32]).expect("remove");
        assert_eq!(s.get(&[2; 32]).expect("get"), None);
    }
}
