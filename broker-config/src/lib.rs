//! Locker Hub broker configuration and fleet PKI.
//!
//! The [`pki`] module owns the fleet certificate authority: it creates the CA and the gateway's
//! server certificate, issues cabinet and integrator client certificates, revokes them into a
//! signed X.509 CRL, and offers the pure parsing helpers the gateway's edge uses to turn a
//! verified client certificate into an identity ([`identity_from_cert_der`]) and to load the
//! revoked serials ([`revoked_serials`]). The `locker-pki` binary is a thin CLI over it.

pub mod pki;

pub use pki::{
    identity_from_cert_der, revoked_serials, serial_hex, verify_crl_signature, CertRecord,
    InitOptions, IssuedCert, Pki, PkiError, PkiPaths, Role,
};
