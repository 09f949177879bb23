//! The offline credential cache (invariant 7): the set the gateway last sent, matched against
//! codes typed or scanned at the cabinet by `SHA-256(code || cabinet id)`, so no code is ever
//! held in clear.
//!
//! Pickup credentials name their compartment. Deposit credentials name none: the agent opens an
//! empty compartment (parcel sensor off, door closed, board online) of ANY size, the smallest
//! first, then the lowest number (kept simple: no size is asked at the keypad).
//! With an insane wall clock, expiry is not judged (the locker keeps working offline).

use locker_schemas::{CabinetId, Credential, Credentials, Millis};
use sha2::{Digest, Sha256};

/// `SHA-256(code || cabinet id)`, as the gateway computes it.
pub fn secret_hash(code: &str, cabinet: &CabinetId) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(code.as_bytes());
    h.update(cabinet.as_str().as_bytes());
    h.finalize().into()
}

/// The cached credential set.
#[derive(Debug, Clone, Default)]
pub struct CredCache {
    set: Option<Credentials>,
}

impl CredCache {
    /// A cache holding `set`.
    pub fn new(set: Option<Credentials>) -> Self {
        Self { set }
    }

    /// The version of the held set (0 = none).
    pub fn version(&self) -> u64 {
        self.set.as_ref().map_or(0, |s| s.version)
    }

    /// How many credentials are held.
    pub fn len(&self) -> usize {
        self.set.as_ref().map_or(0, |s| s.entries.len())
    }

    /// Whether no credential is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Replaces the set.
    pub fn replace(&mut self, set: Credentials) {
        self.set = Some(set);
    }

    /// The set (for persisting).
    pub fn set(&self) -> Option<&Credentials> {
        self.set.as_ref()
    }

    /// The unexpired credential matching `hash`; `now` is `None` when the clock is not sane.
    pub fn find(&self, hash: &[u8], now: Option<Millis>) -> Option<&Credential> {
        self.set
            .as_ref()?
            .entries
            .iter()
            .find(|c| c.secret_hash.as_slice() == hash && now.is_none_or(|n| n < c.expires_at))
    }

    /// Removes a used credential (a pickup code opens its compartment once).
    pub fn remove(&mut self, hash: &[u8]) -> bool {
        match &mut self.set {
            Some(s) => {
                let before = s.entries.len();
                s.entries.retain(|c| c.secret_hash.as_slice() != hash);
                s.entries.len() != before
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use locker_schemas::{CompartmentId, CredKind};

    #[test]
    fn matches_by_salted_hash_and_expiry() {
        let cab = CabinetId::new("CAB-1").expect("id");
        let h = secret_hash("123456", &cab);
        assert_ne!(
            h,
            secret_hash("123456", &CabinetId::new("CAB-2").expect("id"))
        );
        let mut c = CredCache::new(Some(Credentials {
            version: 3,
            entries: vec![Credential {
                kind: CredKind::Pickup,
                secret_hash: h.to_vec(),
                compartment: Some(CompartmentId(4)),
                reference: "ORD-1".into(),
                expires_at: 2_000,
                carrier: String::new(),
            }],
            part: 0,
            parts: 1,
        }));
        assert!(c.find(&h, Some(1_000)).is_some());
        assert!(c.find(&h, Some(2_000)).is_none(), "expired");
        assert!(c.find(&h, None).is_some(), "insane clock: not judged");
        assert!(c.find(&secret_hash("654321", &cab), None).is_none());
        assert!(c.remove(&h));
        assert!(c.find(&h, None).is_none());
        assert_eq!(c.version(), 3);
    }
}
