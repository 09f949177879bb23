//! A fleet PKI made per test in a temp dir, through the real `locker_broker_config::pki`.

use std::path::{Path, PathBuf};

use locker_broker_config::pki::{IssuedCert, Pki};
use locker_schemas::CabinetId;

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
