//! The offline credential cache (invariant 7): the set the gateway last sent, matched against
//! codes typed or scanned at the cabinet by `SHA-256(code || cabinet id)`, so no code is ever
//! held in clear.
//!
//! A set may arrive in parts ([`Assembly`]): the cache is replaced only by a complete set.
//! With an insane wall clock, expiry is not judged (the locker keeps working offline).
//! What each kind allows at the cabinet is decided in `agent::doors::access`.

use std::collections::BTreeMap;

use locker_schemas::{CabinetId, CompartmentId, CredKind, Credential, Credentials, Millis};
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

    /// The unexpired credentials of `kind` usable by `carrier` (theirs, or a shared one with
    /// no carrier), by compartment number.
    pub fn of_kind(&self, kind: CredKind, carrier: &str, now: Option<Millis>) -> Vec<&Credential> {
        let mut v: Vec<&Credential> = self
            .set
            .iter()
            .flat_map(|s| s.entries.iter())
            .filter(|c| {
                c.kind == kind
                    && (c.carrier == carrier || c.carrier.is_empty())
                    && now.is_none_or(|n| n < c.expires_at)
            })
            .collect();
        v.sort_by_key(|c| c.compartment.unwrap_or(CompartmentId(u16::MAX)));
        v
    }

    /// Removes one credential equal to `c` (a credential is used once); whether one was held.
    pub fn remove_entry(&mut self, c: &Credential) -> bool {
        match &mut self.set {
            Some(s) => match s.entries.iter().position(|e| e == c) {
                Some(i) => {
                    s.entries.remove(i);
                    true
                }
                None => false,
            },
            None => false,
        }
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

/// What became of one part of a credential set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartOutcome {
    /// The set is complete: every part of its version arrived.
    Complete(Credentials),
    /// More parts of this version are awaited (`have` of `of`).
    Waiting { have: u16, of: u16 },
    /// A part of an older version than the one being collected: ignored.
    Stale,
    /// A malformed part (`parts == 0`, `part >= parts`, or a part count that differs from the
    /// other parts of its version): refused.
    Refused(&'static str),
}

/// Collects the parts of one version of a set, in memory. A part of a newer version discards
/// the incomplete older one; parts of older versions are ignored.
#[derive(Debug, Clone, Default)]
pub struct Assembly {
    version: u64,
    parts: u16,
    got: BTreeMap<u16, Vec<Credential>>,
}

impl Assembly {
    /// The version being collected, if any part is held.
    pub fn collecting(&self) -> Option<u64> {
        (!self.got.is_empty()).then_some(self.version)
    }

    /// Takes one part.
    pub fn offer(&mut self, c: Credentials) -> PartOutcome {
        if c.parts == 0 || c.part >= c.parts {
            return PartOutcome::Refused("part out of range");
        }
        if !self.got.is_empty() {
            if c.version < self.version {
                return PartOutcome::Stale;
            }
            if c.version == self.version && c.parts != self.parts {
                return PartOutcome::Refused("part count differs within a version");
            }
            if c.version > self.version {
                self.got.clear();
            }
        }
        self.version = c.version;
        self.parts = c.parts;
        self.got.insert(c.part, c.entries);
        let have = u16::try_from(self.got.len()).unwrap_or(u16::MAX);
        if have < self.parts {
            return PartOutcome::Waiting {
                have,
                of: self.parts,
            };
        }
        let entries = std::mem::take(&mut self.got)
            .into_values()
            .flatten()
            .collect();
        PartOutcome::Complete(Credentials {
            version: self.version,
            entries,
            part: 0,
            parts: 1,
        })
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

    fn part(version: u64, part: u16, parts: u16, refs: &[&str]) -> Credentials {
        Credentials {
            version,
            entries: refs
                .iter()
                .map(|r| Credential {
                    kind: CredKind::Pickup,
                    secret_hash: r.as_bytes().to_vec(),
                    compartment: Some(CompartmentId(1)),
                    reference: (*r).into(),
                    expires_at: 9,
                    carrier: String::new(),
                })
                .collect(),
            part,
            parts,
        }
    }

    fn refs(c: &Credentials) -> Vec<&str> {
        c.entries.iter().map(|e| e.reference.as_str()).collect()
    }

    #[test]
    fn parts_complete_a_set_only_together() {
        let mut a = Assembly::default();
        assert_eq!(
            a.offer(part(4, 2, 3, &["c"])),
            PartOutcome::Waiting { have: 1, of: 3 }
        );
        assert_eq!(
            a.offer(part(4, 0, 3, &["a"])),
            PartOutcome::Waiting { have: 2, of: 3 }
        );
        // a newer version discards the incomplete one; an older one is ignored
        assert_eq!(
            a.offer(part(5, 0, 2, &["x"])),
            PartOutcome::Waiting { have: 1, of: 2 }
        );
        assert_eq!(a.offer(part(4, 1, 3, &["b"])), PartOutcome::Stale);
        assert!(matches!(
            a.offer(part(5, 1, 3, &["y"])),
            PartOutcome::Refused(_)
        ));
        assert!(matches!(
            a.offer(part(6, 2, 2, &[])),
            PartOutcome::Refused(_)
        ));
        assert!(matches!(
            a.offer(part(6, 0, 0, &[])),
            PartOutcome::Refused(_)
        ));
        match a.offer(part(5, 1, 2, &["y", "z"])) {
            PartOutcome::Complete(c) => {
                assert_eq!(c.version, 5);
                assert_eq!(refs(&c), ["x", "y", "z"]);
            }
            o => panic!("{o:?}"),
        }
        assert_eq!(a.collecting(), None);
        match a.offer(part(9, 0, 1, &["q"])) {
            PartOutcome::Complete(c) => assert_eq!(refs(&c), ["q"]),
            o => panic!("{o:?}"),
        }
    }

    proptest::proptest! {
        /// Whatever order parts of several versions arrive in (with duplicates), a complete set
        /// is only ever made of every part of one version, in part order.
        #[test]
        fn never_half_a_set(
            arrivals in proptest::collection::vec((1u64..4, 0u16..4), 0..40),
        ) {
            let mut a = Assembly::default();
            // version v has v + 1 parts; part p holds "v.p"
            for (v, p) in arrivals {
                let parts = u16::try_from(v).unwrap() + 1;
                if p >= parts {
                    continue;
                }
                let name = format!("{v}.{p}");
                if let PartOutcome::Complete(c) = a.offer(part(v, p, parts, &[name.as_str()])) {
                    let want: Vec<String> = (0..parts).map(|q| format!("{v}.{q}")).collect();
                    proptest::prop_assert_eq!(c.version, v);
                    proptest::prop_assert_eq!(refs(&c), want.iter().map(String::as_str).collect::<Vec<_>>());
                }
            }
        }
    }
}
