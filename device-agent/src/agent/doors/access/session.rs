//! The courier session (pure): who is signed in (courier reference and carrier), until when,
//! and what the courier scanned last (a parcel the cabinet knows, for `bigger`, or an unknown
//! barcode, for a size key). One courier at a time; every courier action extends the session.

use locker_schemas::{Credential, ScanSource};

/// The signed-in courier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The courier reference (reported as the actor).
    pub courier: String,
    pub carrier: String,
    /// Wall-clock end (ms).
    pub until: u64,
    /// The last known parcel scanned, and how.
    pub parcel: Option<(Credential, ScanSource)>,
    /// The last unknown barcode scanned, and how.
    pub unknown: Option<(String, ScanSource)>,
}

impl Session {
    /// A session for the courier of a Deposit credential, from `now` for `ttl_ms`.
    pub fn sign_in(cred: &Credential, now: u64, ttl_ms: u64) -> Self {
        Self {
            courier: cred.reference.clone(),
            carrier: cred.carrier.clone(),
            until: now.saturating_add(ttl_ms),
            parcel: None,
            unknown: None,
        }
    }

    /// Whether the session still holds at `now`.
    pub fn active(&self, now: u64) -> bool {
        now < self.until
    }

    /// A courier action at `now`: the session runs for `ttl_ms` more.
    pub fn touch(&mut self, now: u64, ttl_ms: u64) {
        self.until = self.until.max(now.saturating_add(ttl_ms));
    }

    /// A known parcel was scanned (it replaces an unknown barcode).
    pub fn scanned_parcel(&mut self, cred: Credential, source: ScanSource) {
        self.parcel = Some((cred, source));
        self.unknown = None;
    }

    /// An unknown barcode was scanned (it replaces a known parcel).
    pub fn scanned_unknown(&mut self, barcode: String, source: ScanSource) {
        self.unknown = Some((barcode, source));
        self.parcel = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use locker_schemas::CredKind;

    #[test]
    fn actions_extend_and_scans_replace_each_other() {
        let badge = Credential {
            kind: CredKind::Deposit,
            secret_hash: vec![1],
            compartment: None,
            reference: "COURIER-7".into(),
            expires_at: u64::MAX,
            carrier: "DHL".into(),
        };
        let mut s = Session::sign_in(&badge, 1_000, 500);
        assert_eq!(
            (s.courier.as_str(), s.carrier.as_str()),
            ("COURIER-7", "DHL")
        );
        assert!(s.active(1_499) && !s.active(1_500));
        s.touch(1_400, 500);
        assert!(s.active(1_899));
        s.scanned_unknown("TRK1".into(), ScanSource::Barcode);
        s.scanned_parcel(badge.clone(), ScanSource::Barcode);
        assert!(s.unknown.is_none() && s.parcel.is_some());
        s.scanned_unknown("TRK2".into(), ScanSource::Barcode);
        assert!(s.parcel.is_none());
    }
}
