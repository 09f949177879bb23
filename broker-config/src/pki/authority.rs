//! The certificate authority itself: [`Pki`] creates a PKI directory, opens it, issues client
//! certificates, revokes identities and re-signs the CRL. File layout and certificate contents
//! are documented on the [parent module](super).

use std::collections::HashSet;
use std::fs;
use std::path::Path;

use locker_schemas::CabinetId;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, ExtendedKeyUsagePurpose,
    IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams, SerialNumber,
    PKCS_ECDSA_P256_SHA256,
};
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::certs::{
    check_validity, clear_role_dir, first_name, now, parse_serial, random_serial, server_sans,
    subject, DEFAULT_SERVER_NAMES,
};
use super::inspect::{crl_number, pem_or_der, verify_crl_signature};
use super::store::{
    ensure_dir, io_err, read_text, DirLock, Index, PkiPaths, Writer, KEY_MODE, PUBLIC_MODE,
};
use super::{
    validate_identity, CertRecord, IssuedCert, PkiError, Role, CA_COMMON_NAME, SERVER_UNIT,
};

/// How far `notBefore` is set in the past, to tolerate clocks that run a little behind.
const BACKDATE: Duration = Duration::hours(1);

/// Options for [`Pki::init_with`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitOptions {
    /// Replace an existing CA. This discards the old CA, its server certificate, every client
    /// certificate in `cabinets/` and `integrators/`, the index and the CRL.
    pub force: bool,
    /// Validity of the CA certificate. Default 10 years (3650 days).
    pub ca_validity: Duration,
    /// Validity of the server certificate and, for the returned handle, of issued client
    /// certificates. Default 2 years (730 days).
    pub leaf_validity: Duration,
    /// How far ahead each CRL's `nextUpdate` is set. Default 365 days; re-sign with
    /// [`Pki::refresh_crl`] before then if your verifier enforces CRL expiry.
    pub crl_validity: Duration,
    /// fsync every written file and folder (default `true`). Turn off only for throwaway PKIs
    /// (tests, simulators): files are still replaced atomically, but a power loss may lose the
    /// newest writes. Applies to `init` and to the returned handle; see [`Pki::set_fsync`].
    pub fsync: bool,
}

impl Default for InitOptions {
    fn default() -> Self {
        Self {
            force: false,
            ca_validity: Pki::DEFAULT_CA_VALIDITY,
            leaf_validity: Pki::DEFAULT_LEAF_VALIDITY,
            crl_validity: Pki::DEFAULT_CRL_VALIDITY,
            fsync: true,
        }
    }
}

/// A handle on a PKI directory holding the loaded CA key.
///
/// Every writing operation takes the directory's advisory lock and re-reads `index.json` first,
/// so several handles or `locker-pki` processes on one directory never lose updates.
/// [`list`](Pki::list) returns the index as of the last operation of this handle (or
/// [`reload`](Pki::reload)).
pub struct Pki {
    paths: PkiPaths,
    issuer: Issuer<'static, KeyPair>,
    ca_cert_pem: String,
    ca_cert_der: Vec<u8>,
    ca_not_after: OffsetDateTime,
    leaf_validity: Duration,
    crl_validity: Duration,
    writer: Writer,
    records: Vec<CertRecord>,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki")
            .field("dir", &self.paths.dir())
            .field("ca_not_after", &self.ca_not_after)
            .field("leaf_validity", &self.leaf_validity)
            .field("certs", &self.records.len())
            .finish_non_exhaustive()
    }
}

impl Pki {
    /// Default CA validity: 10 years.
    pub const DEFAULT_CA_VALIDITY: Duration = Duration::days(3650);
    /// Default server and client certificate validity: 2 years.
    pub const DEFAULT_LEAF_VALIDITY: Duration = Duration::days(730);
    /// Default CRL `nextUpdate` distance: 1 year.
    pub const DEFAULT_CRL_VALIDITY: Duration = Duration::days(365);
    /// Server names used when `init` gets none.
    pub const DEFAULT_SERVER_NAMES: [&'static str; 2] = DEFAULT_SERVER_NAMES;

    /// Creates a new fleet CA in `dir` (created if missing) with default options: a CA, a server
    /// certificate for `server_names` (IP addresses become IP SANs, anything else a DNS SAN;
    /// empty means `localhost` and `127.0.0.1`), an empty CRL and an empty index.
    ///
    /// Refuses if `dir` already holds a CA; see [`init_with`](Pki::init_with) and
    /// [`InitOptions::force`].
    pub fn init(dir: impl AsRef<Path>, server_names: &[String]) -> Result<Pki, PkiError> {
        Self::init_with(dir, server_names, &InitOptions::default())
    }

    /// [`init`](Pki::init) with explicit options.
    pub fn init_with(
        dir: impl AsRef<Path>,
        server_names: &[String],
        opts: &InitOptions,
    ) -> Result<Pki, PkiError> {
        check_validity("CA", opts.ca_validity)?;
        check_validity("leaf", opts.leaf_validity)?;
        check_validity("CRL", opts.crl_validity)?;
        let sans = server_sans(server_names)?;
        let paths = PkiPaths::new(dir.as_ref());
        ensure_dir(paths.dir())?;
        let _lock = DirLock::acquire(&paths)?;
        if !opts.force {
            for path in [paths.ca_cert(), paths.ca_key()] {
                if path.try_exists().map_err(io_err(&path, "checking for"))? {
                    return Err(PkiError::AlreadyInitialized { path });
                }
            }
        }

        let now = now();
        let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut ca_params = CertificateParams::default();
        ca_params.distinguished_name = subject(CA_COMMON_NAME, None);
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        ca_params.not_before = now - BACKDATE;
        ca_params.not_after = now + opts.ca_validity;
        ca_params.serial_number = Some(random_serial(&HashSet::new()).0);
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let ca_not_after = ca_params.not_after;
        let ca_key_pem = ca_key.serialize_pem();
        let pki = Pki {
            paths,
            issuer: Issuer::new(ca_params, ca_key),
            ca_cert_pem: ca_cert.pem(),
            ca_cert_der: ca_cert.der().to_vec(),
            ca_not_after,
            leaf_validity: opts.leaf_validity,
            crl_validity: opts.crl_validity,
            writer: Writer { fsync: opts.fsync },
            records: Vec::new(),
        };

        let server_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut server = pki.leaf_params(first_name(server_names), SERVER_UNIT, now);
        server.subject_alt_names = sans;
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        server.serial_number = Some(random_serial(&HashSet::new()).0);
        let server_cert = server.signed_by(&server_key, &pki.issuer)?;

        if opts.force {
            for role in [Role::Cabinet, Role::Integrator] {
                clear_role_dir(&pki.paths.role_dir(role))?;
            }
        }
        for role in [Role::Cabinet, Role::Integrator] {
            ensure_dir(&pki.paths.role_dir(role))?;
        }
        // The CA files go last: a crash before them leaves a directory `init` accepts again.
        pki.writer.write(
            &pki.paths.server_key(),
            server_key.serialize_pem().as_bytes(),
            KEY_MODE,
        )?;
        pki.writer.write(
            &pki.paths.server_cert(),
            server_cert.pem().as_bytes(),
            PUBLIC_MODE,
        )?;
        let mut index = Index::new();
        index.crl_number = 1;
        index.save(&pki.paths, pki.writer)?;
        pki.write_crl(&index, now)?;
        pki.writer
            .write(&pki.paths.ca_key(), ca_key_pem.as_bytes(), KEY_MODE)?;
        pki.writer.write(
            &pki.paths.ca_cert(),
            pki.ca_cert_pem.as_bytes(),
            PUBLIC_MODE,
        )?;
        Ok(pki)
    }

    /// Opens an existing PKI directory: loads the CA key and certificate (checking that they
    /// match) and the index, and re-signs `crl.pem` if it is missing, unreadable, not signed by
    /// this CA, or numbered differently from the index (which only a crash in the middle of a
    /// revocation or a forced `init` can cause).
    pub fn open(dir: impl AsRef<Path>) -> Result<Pki, PkiError> {
        let paths = PkiPaths::new(dir.as_ref());
        let ca_cert_pem = read_text(&paths.ca_cert())?;
        let ca_key_pem = read_text(&paths.ca_key())?;
        let bad = |path: &Path, what: String| PkiError::BadFile {
            path: path.to_path_buf(),
            what,
        };
        let key = KeyPair::from_pem(&ca_key_pem)
            .map_err(|e| bad(&paths.ca_key(), format!("not a usable private key: {e}")))?;
        let ca_cert_der = pem_or_der(ca_cert_pem.as_bytes(), "CERTIFICATE")
            .map_err(|e| bad(&paths.ca_cert(), e))?;
        let (_, parsed) = X509Certificate::from_der(&ca_cert_der)
            .map_err(|e| bad(&paths.ca_cert(), format!("not a certificate: {e}")))?;
        if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(bad(
                &paths.ca_key(),
                format!(
                    "does not match the CA certificate {}",
                    paths.ca_cert().display()
                ),
            ));
        }
        let ca_not_after = parsed.validity().not_after.to_datetime();
        let issuer = Issuer::from_ca_cert_der(&ca_cert_der.as_slice().into(), key)
            .map_err(|e| bad(&paths.ca_cert(), format!("not usable as an issuer: {e}")))?;
        let mut pki = Pki {
            paths,
            issuer,
            ca_cert_pem,
            ca_cert_der,
            ca_not_after,
            leaf_validity: Self::DEFAULT_LEAF_VALIDITY,
            crl_validity: Self::DEFAULT_CRL_VALIDITY,
            writer: Writer { fsync: true },
            records: Vec::new(),
        };
        let _lock = DirLock::acquire(&pki.paths)?;
        let mut index = Index::load(&pki.paths)?;
        pki.repair_crl(&mut index)?;
        pki.records = index.certs;
        Ok(pki)
    }

    /// The file layout of this PKI.
    pub fn paths(&self) -> &PkiPaths {
        &self.paths
    }

    /// The CA certificate, PEM (the content of `ca.pem`).
    pub fn ca_cert_pem(&self) -> &str {
        &self.ca_cert_pem
    }

    /// The CA certificate, DER (a trust anchor for rustls' `RootCertStore`).
    pub fn ca_cert_der(&self) -> &[u8] {
        &self.ca_cert_der
    }

    /// When the CA certificate expires; no certificate is issued past it.
    pub fn ca_not_after(&self) -> OffsetDateTime {
        self.ca_not_after
    }

    /// Validity of the client certificates this handle issues.
    pub fn leaf_validity(&self) -> Duration {
        self.leaf_validity
    }

    /// Sets the validity of the client certificates this handle issues (clamped to the CA's
    /// expiry at issue time). Errors if not positive or over 100 years.
    pub fn set_leaf_validity(&mut self, validity: Duration) -> Result<(), PkiError> {
        check_validity("leaf", validity)?;
        self.leaf_validity = validity;
        Ok(())
    }

    /// Sets how far ahead `nextUpdate` is put in the CRLs this handle signs.
    pub fn set_crl_validity(&mut self, validity: Duration) -> Result<(), PkiError> {
        check_validity("CRL", validity)?;
        self.crl_validity = validity;
        Ok(())
    }

    /// Whether this handle fsyncs what it writes (default `true`). Turning it off makes issuing
    /// much cheaper on a busy disk; files are still replaced atomically, but a power loss may
    /// lose the newest writes. Meant for throwaway PKIs in tests and simulators.
    pub fn set_fsync(&mut self, on: bool) {
        self.writer.fsync = on;
    }

    /// Every issued client certificate, oldest first, as of this handle's last operation.
    pub fn list(&self) -> Vec<CertRecord> {
        self.records.clone()
    }

    /// Re-reads `index.json` (to see what other handles or processes did).
    pub fn reload(&mut self) -> Result<(), PkiError> {
        self.records = Index::load(&self.paths)?.certs;
        Ok(())
    }

    /// Issues a certificate for a cabinet and writes `cabinets/{id}.pem` and `.key`.
    pub fn issue_cabinet(&mut self, id: &CabinetId) -> Result<IssuedCert, PkiError> {
        self.issue_one(Role::Cabinet, id.as_str())
    }

    /// Issues a certificate for an integrator and writes `integrators/{name}.pem` and `.key`.
    /// The name must follow the [`CabinetId`] rules and must not be a cabinet's identity.
    pub fn issue_integrator(&mut self, name: &str) -> Result<IssuedCert, PkiError> {
        validate_identity(name)?;
        self.issue_one(Role::Integrator, name)
    }

    /// Issues certificates for many cabinets under one lock and one index write: what a fleet
    /// simulator or test harness wants for thousands of cabinets.
    pub fn issue_cabinets(&mut self, ids: &[CabinetId]) -> Result<Vec<IssuedCert>, PkiError> {
        let names: Vec<&str> = ids.iter().map(CabinetId::as_str).collect();
        self.issue_many(Role::Cabinet, &names)
    }

    fn issue_one(&mut self, role: Role, identity: &str) -> Result<IssuedCert, PkiError> {
        let mut issued = self.issue_many(role, &[identity])?;
        issued
            .pop()
            .ok_or_else(|| PkiError::UnknownIdentity(identity.to_owned()))
    }

    /// Signs every certificate in memory, records them all in the index, then writes the files:
    /// a crash can leave an index record without files (harmless, still revocable), never a
    /// valid certificate on disk that the index, and so `revoke`, does not know.
    fn issue_many(&mut self, role: Role, identities: &[&str]) -> Result<Vec<IssuedCert>, PkiError> {
        let mut seen = HashSet::with_capacity(identities.len());
        for identity in identities {
            validate_identity(identity)?;
            if !seen.insert(*identity) {
                return Err(PkiError::DuplicateIdentity((*identity).to_owned()));
            }
        }
        let _lock = DirLock::acquire(&self.paths)?;
        let mut index = Index::load(&self.paths)?;
        for identity in identities {
            if let Some(other) = index
                .certs
                .iter()
                .find(|r| r.identity == *identity && r.role != role)
            {
                return Err(PkiError::IdentityTaken {
                    identity: (*identity).to_owned(),
                    existing: other.role,
                });
            }
        }
        let now = now();
        if self.ca_not_after <= now {
            return Err(PkiError::CaExpired(self.ca_not_after));
        }
        let mut serials: HashSet<String> = index.certs.iter().map(|r| r.serial.clone()).collect();
        let mut issued = Vec::with_capacity(identities.len());
        for identity in identities {
            let cert = self.sign_client(role, identity, now, &mut serials)?;
            index.certs.push(cert.record.clone());
            issued.push(cert);
        }
        index.save(&self.paths, self.writer)?;
        self.records = index.certs;
        ensure_dir(&self.paths.role_dir(role))?;
        // In chunks, to bound the number of open temp files.
        for chunk in issued.chunks(256) {
            let mut files = Vec::with_capacity(chunk.len() * 2);
            for cert in chunk {
                files.push((cert.key_path.as_path(), cert.key_pem.as_bytes(), KEY_MODE));
                files.push((
                    cert.cert_path.as_path(),
                    cert.cert_pem.as_bytes(),
                    PUBLIC_MODE,
                ));
            }
            self.writer.write_all(&files)?;
        }
        Ok(issued)
    }

    fn sign_client(
        &self,
        role: Role,
        identity: &str,
        now: OffsetDateTime,
        serials: &mut HashSet<String>,
    ) -> Result<IssuedCert, PkiError> {
        validate_identity(identity)?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = self.leaf_params(identity, role.as_str(), now);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let (serial, serial_text) = random_serial(serials);
        serials.insert(serial_text.clone());
        params.serial_number = Some(serial);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedCert {
            record: CertRecord {
                identity: identity.to_owned(),
                role,
                serial: serial_text,
                not_before: params.not_before,
                not_after: params.not_after,
                revoked_at: None,
            },
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            key_pem: key.serialize_pem(),
            key_der: key.serialize_der(),
            cert_path: self.paths.client_cert(role, identity),
            key_path: self.paths.client_key(role, identity),
        })
    }

    /// The parameters shared by the server and client certificates.
    fn leaf_params(&self, cn: &str, unit: &str, now: OffsetDateTime) -> CertificateParams {
        let mut params = CertificateParams::default();
        params.distinguished_name = subject(cn, Some(unit));
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        params.not_before = now - BACKDATE;
        params.not_after = (now + self.leaf_validity).min(self.ca_not_after);
        params
    }

    /// Revokes every not yet revoked certificate of `identity` (cabinet or integrator),
    /// records it in `index.json` and re-signs `crl.pem` with the next CRL number.
    ///
    /// Returns the newly revoked serials; empty if all were already revoked (nothing is
    /// rewritten then). Errors if the identity never got a certificate.
    pub fn revoke(&mut self, identity: &str) -> Result<Vec<String>, PkiError> {
        validate_identity(identity)?;
        let _lock = DirLock::acquire(&self.paths)?;
        let mut index = Index::load(&self.paths)?;
        if !index.certs.iter().any(|r| r.identity == identity) {
            self.records = index.certs;
            return Err(PkiError::UnknownIdentity(identity.to_owned()));
        }
        let now = now();
        let mut revoked = Vec::new();
        for record in index.certs.iter_mut() {
            if record.identity == identity && record.revoked_at.is_none() {
                record.revoked_at = Some(now);
                revoked.push(record.serial.clone());
            }
        }
        if !revoked.is_empty() {
            index.crl_number += 1;
            // Index first: it is the source of truth `open` repairs the CRL from.
            index.save(&self.paths, self.writer)?;
            self.write_crl(&index, now)?;
        }
        self.records = index.certs;
        Ok(revoked)
    }

    /// Re-signs `crl.pem` with the next CRL number and a fresh `thisUpdate`/`nextUpdate`,
    /// without changing what is revoked. Returns the new CRL number.
    pub fn refresh_crl(&mut self) -> Result<u64, PkiError> {
        let _lock = DirLock::acquire(&self.paths)?;
        let mut index = Index::load(&self.paths)?;
        index.crl_number += 1;
        index.save(&self.paths, self.writer)?;
        self.write_crl(&index, now())?;
        self.records = index.certs;
        Ok(index.crl_number)
    }

    /// Brings `crl.pem` in line with the index if it is missing, unreadable or numbered
    /// differently, or not signed by this CA. Call with the lock held.
    fn repair_crl(&self, index: &mut Index) -> Result<(), PkiError> {
        let path = self.paths.crl();
        let on_disk = match fs::read(&path) {
            // A CRL this CA did not sign (say, left by an interrupted `init --force`) counts
            // as unreadable.
            Ok(bytes) => match verify_crl_signature(&bytes, &self.ca_cert_der) {
                Ok(()) => crl_number(&bytes).ok().flatten(),
                Err(_) => None,
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_err(&path, "reading")(e)),
        };
        if on_disk == Some(index.crl_number) {
            return Ok(());
        }
        index.crl_number = index.crl_number.max(on_disk.unwrap_or(0)) + 1;
        index.save(&self.paths, self.writer)?;
        self.write_crl(index, now())
    }

    /// Signs and writes `crl.pem` listing every revoked record of `index`.
    fn write_crl(&self, index: &Index, now: OffsetDateTime) -> Result<(), PkiError> {
        let mut revoked_certs = Vec::new();
        for record in &index.certs {
            if let Some(at) = record.revoked_at {
                revoked_certs.push(RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&parse_serial(
                        &self.paths,
                        &record.serial,
                    )?),
                    revocation_time: at,
                    reason_code: None,
                    invalidity_date: None,
                });
            }
        }
        let params = CertificateRevocationListParams {
            this_update: now,
            next_update: now + self.crl_validity,
            crl_number: SerialNumber::from(index.crl_number),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&self.issuer)?;
        self.writer
            .write(&self.paths.crl(), crl.pem()?.as_bytes(), PUBLIC_MODE)
    }
}
