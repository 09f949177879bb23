//! A fleet PKI made per test in a temp dir, through the real `locker_broker_config::pki`, and
//! the TLS client configurations tests connect with (the one home of TLS setup for tests).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use locker_broker_config::pki::{IssuedCert, Pki};
use locker_schemas::CabinetId;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A PKI directory that lives as long as the value.
pub struct TestPki {
    pub pki: Pki,
    dir: tempfile::TempDir,
}

impl TestPki {
    /// A new CA and a server certificate for `localhost` and `127.0.0.1`.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let pki =
            Pki::init(dir.path(), &["localhost".into(), "127.0.0.1".into()]).expect("PKI init");
        Self { pki, dir }
    }

    /// The PKI directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Issues a cabinet certificate.
    pub fn cabinet(&mut self, id: &str) -> IssuedCert {
        let id = CabinetId::new(id).expect("valid cabinet id");
        self.pki.issue_cabinet(&id).expect("issue cabinet cert")
    }

    /// Issues an integrator certificate.
    pub fn integrator(&mut self, name: &str) -> IssuedCert {
        self.pki
            .issue_integrator(name)
            .expect("issue integrator cert")
    }

    /// Revokes every certificate of an identity (rewrites crl.pem).
    pub fn revoke(&mut self, identity: &str) {
        self.pki.revoke(identity).expect("revoke");
    }

    pub fn ca_pem(&self) -> PathBuf {
        self.pki.paths().ca_cert()
    }
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}

/// A rustls client config (ring, safe defaults) trusting `ca_pem` and presenting `cert` (or no
/// certificate), the way a cabinet or an integrator connects.
pub fn client_tls(ca_pem: &[u8], cert: Option<&IssuedCert>) -> Arc<rustls::ClientConfig> {
    let auth = cert.map(|c| {
        (
            vec![CertificateDer::from(c.cert_der.clone())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(c.key_der.clone())),
        )
    });
    tls_config(ca_pem, auth)
}

/// [`client_tls`] from the PEM files of a certificate and its key (for a process that has only
/// the files, e.g. a child started by a test).
pub fn client_tls_pem(ca_pem: &[u8], cert_pem: &[u8], key_pem: &[u8]) -> Arc<rustls::ClientConfig> {
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut &cert_pem[..])
        .map(|c| c.expect("certificate PEM"))
        .collect();
    let key = rustls_pemfile::private_key(&mut &key_pem[..])
        .expect("key PEM")
        .expect("a key in the PEM");
    tls_config(ca_pem, Some((chain, key)))
}

type ClientAuth = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

fn tls_config(ca_pem: &[u8], auth: Option<ClientAuth>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut &ca_pem[..]) {
        roots.add(c.expect("CA PEM")).expect("add CA");
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_root_certificates(roots);
    let cfg = match auth {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .expect("client auth cert"),
        None => builder.with_no_client_auth(),
    };
    Arc::new(cfg)
}
