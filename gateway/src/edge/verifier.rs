//! The client certificate verifier: rustls' WebPKI verifier against the fleet CA, with the
//! revocation check done against the edge's own revoked set instead of by WebPKI.
//!
//! WebPKI verifies a CRL's signature every time it consults it (rustls/webpki issue 81), so
//! with the CRL handed to it every full handshake paid one more P-256 signature verification,
//! about a quarter of the handshake's CPU. The edge verifies the CRL's signature once, when it
//! loads it (`tls::load_crl`), and keeps the revoked serials; this verifier refuses a revoked
//! leaf certificate with the same TLS error WebPKI gives (`certificate_revoked` alert,
//! [`CertificateError::Revoked`]), so clients and the edge's metrics see no difference. The
//! fleet CA signs leaf certificates directly (no intermediates), so the leaf is all there is to
//! check. Resumed handshakes skip verification; the edge checks them itself after the handshake.

use std::collections::HashSet;
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, Error, SignatureScheme};
use rustls_pki_types::{CertificateDer, UnixTime};

/// WebPKI's verifier plus the edge's revoked serials.
#[derive(Debug)]
pub(crate) struct RevocationAware {
    inner: Arc<dyn ClientCertVerifier>,
    revoked: Arc<HashSet<String>>,
}

impl RevocationAware {
    pub fn new(inner: Arc<dyn ClientCertVerifier>, revoked: Arc<HashSet<String>>) -> Self {
        Self { inner, revoked }
    }
}

/// The serial of a DER certificate in the PKI's form, if it parses.
fn serial(der: &[u8]) -> Option<String> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    Some(locker_broker_config::pki::serial_hex(cert.raw_serial()))
}

impl ClientCertVerifier for RevocationAware {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        match serial(end_entity.as_ref()) {
            Some(s) if self.revoked.contains(&s) => {
                Err(Error::InvalidCertificate(CertificateError::Revoked))
            }
            Some(_) => Ok(verified),
            // WebPKI accepted it, so it parses; be strict anyway.
            None => Err(Error::InvalidCertificate(CertificateError::BadEncoding)),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
