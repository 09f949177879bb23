//! The Locker Hub fleet PKI: one ECDSA P-256 certificate authority that signs the gateway's
//! server certificate and every cabinet's and integrator's client certificate, plus a signed
//! X.509 CRL of revoked client certificates. "Identity is the certificate" (architecture
//! invariant 5): the gateway's edge trusts only `ca.pem`, rejects serials in `crl.pem`, and
//! takes the client's identity and role from the certificate subject.
//!
//! # Directory layout
//!
//! ```text
//! DIR/
//!   ca.pem                   fleet CA certificate (PEM)                          0644
//!   ca.key                   fleet CA private key (PKCS#8 PEM)                   0600
//!   server.pem               gateway TLS server certificate (PEM)                0644
//!   server.key               gateway TLS server key (PKCS#8 PEM)                 0600
//!   crl.pem                  X.509 v2 CRL signed by the CA (PEM "X509 CRL")      0644
//!   index.json               every issued client certificate + last CRL number   0644
//!   cabinets/{id}.pem        newest certificate of cabinet {id}                  0644
//!   cabinets/{id}.key        its private key (PKCS#8 PEM)                        0600
//!   integrators/{name}.pem   newest certificate of integrator {name}             0644
//!   integrators/{name}.key   its private key (PKCS#8 PEM)                        0600
//!   .lock                    advisory lock taken by every writer                 0600
//! ```
//!
//! Every file is written atomically (temp file in the same folder, fsync, rename, fsync of the
//! folder) with exactly the mode above, whatever the umask ([`Pki::set_fsync`] can drop the
//! fsyncs for throwaway PKIs in tests). `crl.pem` exists from `init` on
//! (empty), so the gateway can always load it; it is re-signed with a strictly increasing CRL
//! number on every revocation. `index.json` is the source of truth for the CRL: it is written
//! before `crl.pem`, and [`Pki::open`] re-signs `crl.pem` if a crash left it behind the index.
//!
//! `index.json` looks like:
//!
//! ```json
//! { "version": 1, "crl_number": 2, "certs": [
//!   { "identity": "CAB-0001", "role": "cabinet", "serial": "5c0f…",
//!     "not_before": "2025-01-01T11:00:00Z", "not_after": "2027-01-01T12:00:00Z",
//!     "revoked_at": null } ] }
//! ```
//!
//! The server certificate is not in the index (it is not a client identity and is never put in
//! the CRL); re-run `init --force` to replace it.
//!
//! # Certificate contents
//!
//! | | CA | server | cabinet / integrator |
//! |---|---|---|---|
//! | subject `CN` | `Locker Hub fleet CA` | first server name | the identity |
//! | subject `OU` | — | `server` | `cabinet` / `integrator` |
//! | subject `O` | `Locker Hub fleet` | `Locker Hub fleet` | `Locker Hub fleet` |
//! | SubjectAltName | — | DNS names and IP addresses | — |
//! | BasicConstraints | CA, pathlen 0 | not a CA | not a CA |
//! | KeyUsage | keyCertSign, cRLSign, digitalSignature | digitalSignature | digitalSignature |
//! | ExtendedKeyUsage | — | serverAuth | clientAuth |
//! | validity (default) | 10 years | 2 years | 2 years |
//!
//! The subject's `CN`, `OU` and `O` appear exactly once each, as UTF8String. An identity is a
//! cabinet id or an integrator name; both follow the [`CabinetId`] rules
//! (`[A-Za-z0-9._-]{1,64}`), so an identity is always a safe MQTT client id and topic level.
//! Cabinets and integrators share one namespace: a name issued to one role cannot be issued to
//! the other. Serials are 16 random bytes, positive, written everywhere in [`serial_hex`] form.
//! `notBefore` is backdated one hour to tolerate clock skew; a leaf never outlives the CA.
//! All keys are ECDSA P-256, signatures ECDSA with SHA-256.
//!
//! Re-issuing for an identity overwrites its `.pem`/`.key` files; the older certificate stays
//! valid (and listed) until it expires or the identity is revoked.

mod authority;
mod certs;
mod inspect;
mod store;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use locker_schemas::{CabinetId, IdError};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

pub use authority::{InitOptions, Pki};
pub use inspect::{
    crl_number, identity_from_cert_der, revoked_serials, serial_hex, verify_crl_signature,
};
pub use store::PkiPaths;

/// The subject `O` of every fleet certificate.
pub const FLEET_ORGANIZATION: &str = "Locker Hub fleet";
/// The subject `CN` of the fleet CA.
pub const CA_COMMON_NAME: &str = "Locker Hub fleet CA";
/// The subject `OU` of the gateway's server certificate.
pub const SERVER_UNIT: &str = "server";

/// Everything that can go wrong in the PKI, each naming the file or input at fault.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A file system operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What was being done, e.g. "reading".
        op: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// `init` found an existing CA and `force` was not given.
    #[error("{} already exists: this directory holds a fleet CA; use --force (InitOptions::force) to replace the CA and every certificate it issued", path.display())]
    AlreadyInitialized {
        /// The existing CA file.
        path: PathBuf,
    },
    /// A file of the PKI directory is missing.
    #[error("{} is missing: is this a PKI directory? create one with `locker-pki init`", path.display())]
    NotInitialized {
        /// The missing file.
        path: PathBuf,
    },
    /// A file of the PKI directory exists but its content is unusable.
    #[error("{}: {what}", path.display())]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        what: String,
    },
    /// An identity (cabinet id, integrator name) breaks the [`CabinetId`] rules.
    #[error("invalid identity {name:?}: {source}")]
    InvalidIdentity {
        /// The rejected name.
        name: String,
        /// Which rule it breaks.
        #[source]
        source: IdError,
    },
    /// A server name is neither a DNS name nor an IP address.
    #[error("invalid server name {name:?}: {reason}")]
    InvalidServerName {
        /// The rejected name.
        name: String,
        /// Why.
        reason: String,
    },
    /// The identity already has certificates under the other role.
    #[error("identity {identity:?} already belongs to a{} {existing}; cabinets and integrators share one namespace", if *existing == Role::Integrator { "n" } else { "" })]
    IdentityTaken {
        /// The contested identity.
        identity: String,
        /// The role it already has.
        existing: Role,
    },
    /// A batch names the same identity twice.
    #[error("identity {0:?} appears more than once in the batch")]
    DuplicateIdentity(String),
    /// `revoke` was asked about an identity that never got a certificate.
    #[error("no certificate was ever issued to {0:?}")]
    UnknownIdentity(String),
    /// A role string is not `cabinet` or `integrator`.
    #[error("unknown role {0:?}: expected \"cabinet\" or \"integrator\"")]
    UnknownRole(String),
    /// A validity period is zero, negative or too large.
    #[error("invalid validity: {0}")]
    InvalidValidity(String),
    /// The CA certificate has expired (or expires now), so it cannot issue anything.
    #[error("the fleet CA expired at {0}; create a new one with `locker-pki init --force`")]
    CaExpired(OffsetDateTime),
    /// rcgen refused to build or sign a certificate or CRL.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// Bytes that should be a certificate are not one.
    #[error("malformed certificate: {0}")]
    CertParse(String),
    /// A well-formed certificate that is not a Locker Hub client certificate.
    #[error("not a Locker Hub client certificate: {0}")]
    NotFleetCert(String),
    /// Bytes that should be a CRL are not one, or it is not signed by the CA.
    #[error("bad CRL: {0}")]
    CrlParse(String),
}

/// The role of a client certificate, carried in its subject `OU`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A locker cabinet (`OU=cabinet`): publishes and reads its own topics only.
    Cabinet,
    /// An integrator (`OU=integrator`): reads what its ACL allows, never publishes to cabinets.
    Integrator,
}

impl Role {
    /// The `OU` value and the `index.json` spelling: `cabinet` or `integrator`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Cabinet => "cabinet",
            Role::Integrator => "integrator",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = PkiError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cabinet" => Ok(Role::Cabinet),
            "integrator" => Ok(Role::Integrator),
            other => Err(PkiError::UnknownRole(other.to_owned())),
        }
    }
}

/// One issued client certificate, as recorded in `index.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertRecord {
    /// The cabinet id or integrator name (the subject `CN`).
    pub identity: String,
    /// The role (the subject `OU`).
    pub role: Role,
    /// The serial number in [`serial_hex`] form.
    pub serial: String,
    /// Start of validity (RFC 3339 in the file).
    #[serde(with = "time::serde::rfc3339")]
    pub not_before: OffsetDateTime,
    /// End of validity (RFC 3339 in the file).
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    /// When it was revoked, if it was.
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub revoked_at: Option<OffsetDateTime>,
}

impl CertRecord {
    /// Whether the certificate is in the CRL.
    pub fn is_revoked(&self) -> bool {
        self.revoked_at.is_some()
    }

    /// Whether the certificate is past its `notAfter` at `now`.
    pub fn is_expired(&self, now: OffsetDateTime) -> bool {
        now > self.not_after
    }
}

/// A freshly issued client certificate with its private key, as also written to disk.
#[derive(Clone)]
pub struct IssuedCert {
    /// Its index record (identity, role, serial, validity).
    pub record: CertRecord,
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The certificate, DER (ready for `rustls_pki_types::CertificateDer::from`).
    pub cert_der: Vec<u8>,
    /// The private key, PKCS#8 PEM. Secret.
    pub key_pem: String,
    /// The private key, PKCS#8 DER (ready for `PrivatePkcs8KeyDer::from`). Secret.
    pub key_der: Vec<u8>,
    /// Where the certificate was written.
    pub cert_path: PathBuf,
    /// Where the key was written (mode 0600).
    pub key_path: PathBuf,
}

impl fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedCert")
            .field("record", &self.record)
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .field("key", &"[elided]")
            .finish()
    }
}

/// Checks an identity (cabinet id or integrator name) against the [`CabinetId`] rules.
pub(crate) fn validate_identity(name: &str) -> Result<(), PkiError> {
    CabinetId::validate(name).map_err(|source| PkiError::InvalidIdentity {
        name: name.to_owned(),
        source,
    })
}
