//! A cabinet's simulated network link: its own rustls client configuration (its certificate)
//! wrapped so the simulator can cut the link ("outage") without touching the agent.
//!
//! While the link is down, every new TLS handshake fails: the session store hands out no
//! resumption ticket (so the handshake is a full one) and the server certificate verifier
//! refuses. The agent sees a connection failure and keeps retrying with its own backoff, exactly
//! as when a 4G link is down. The fleet cuts an established connection separately (through the
//! gateway's edge when it runs in-process, or by restarting the agent).
//!
//! The fleet CA verifier is built once and shared; each cabinet adds only its key, chain and a
//! small session cache.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{
    ClientSessionMemoryCache, ClientSessionStore, Resumption, WebPkiServerVerifier,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, NamedGroup, RootCertStore, SignatureScheme};

/// Why a cabinet's TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("fleet CA certificate: {0}")]
    Ca(String),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The switch of one cabinet's link (cheap to clone).
#[derive(Clone, Default)]
pub struct LinkSwitch(Arc<AtomicBool>);

impl fmt::Debug for LinkSwitch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LinkSwitch(down={})", self.is_down())
    }
}

impl LinkSwitch {
    /// Cuts (true) or restores (false) the link for new connections.
    pub fn set_down(&self, down: bool) {
        self.0.store(down, Ordering::SeqCst);
    }

    /// Whether the link is cut.
    pub fn is_down(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// The shared part: the fleet CA verifier and the crypto provider.
#[derive(Clone)]
pub struct FleetTls {
    verifier: Arc<WebPkiServerVerifier>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl fmt::Debug for FleetTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FleetTls")
    }
}

impl FleetTls {
    /// From the fleet CA certificate (DER).
    pub fn new(ca_der: &[u8]) -> Result<Self, LinkError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from(ca_der.to_vec()))
            .map_err(|e| LinkError::Ca(e.to_string()))?;
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| LinkError::Ca(e.to_string()))?;
        Ok(Self { verifier, provider })
    }

    /// A cabinet's client configuration (its certificate and key, PKCS#8 DER), gated by `link`.
    pub fn client_config(
        &self,
        cert_der: Vec<u8>,
        key_der: Vec<u8>,
        link: LinkSwitch,
    ) -> Result<Arc<ClientConfig>, LinkError> {
        let verifier = Arc::new(GatedVerifier {
            inner: self.verifier.clone(),
            link: link.clone(),
        });
        let mut cfg = ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(
                vec![CertificateDer::from(cert_der)],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_der)),
            )?;
        cfg.resumption = Resumption::store(Arc::new(GatedStore {
            inner: ClientSessionMemoryCache::new(2),
            link,
        }));
        Ok(Arc::new(cfg))
    }
}

#[derive(Debug)]
struct GatedVerifier {
    inner: Arc<WebPkiServerVerifier>,
    link: LinkSwitch,
}

impl ServerCertVerifier for GatedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.link.is_down() {
            return Err(rustls::Error::General("simulated network outage".into()));
        }
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[derive(Debug)]
struct GatedStore {
    inner: ClientSessionMemoryCache,
    link: LinkSwitch,
}

impl ClientSessionStore for GatedStore {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.inner.set_kx_hint(server_name, group)
    }
    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.inner.kx_hint(server_name)
    }
    fn set_tls12_session(
        &self,
        server_name: ServerName<'static>,
        value: rustls::client::Tls12ClientSessionValue,
    ) {
        self.inner.set_tls12_session(server_name, value)
    }
    fn tls12_session(
        &self,
        server_name: &ServerName<'_>,
    ) -> Option<rustls::client::Tls12ClientSessionValue> {
        if self.link.is_down() {
            return None;
        }
        self.inner.tls12_session(server_name)
    }
    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.inner.remove_tls12_session(server_name)
    }
    fn insert_tls13_ticket(
        &self,
        server_name: ServerName<'static>,
        value: rustls::client::Tls13ClientSessionValue,
    ) {
        self.inner.insert_tls13_ticket(server_name, value)
    }
    fn take_tls13_ticket(
        &self,
        server_name: &ServerName<'static>,
    ) -> Option<rustls::client::Tls13ClientSessionValue> {
        if self.link.is_down() {
            return None;
        }
        self.inner.take_tls13_ticket(server_name)
    }
}
