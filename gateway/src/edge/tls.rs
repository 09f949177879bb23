//! TLS for the edge: loads the fleet CA, the server certificate and the CRL, builds the
//! mutual-TLS rustls server configuration (ring provider, client certificates verified against
//! the fleet CA and the CRL, session resumption tickets), and swaps it when the CRL changes.
//!
//! Session resumption (`edge.tls_tickets`, `tls_ticket_rotation_s`, `tls_ticket_key_file`,
//! `tls_session_cache`): the ticketer (stateless TLS 1.3 tickets under rotating keys kept in a
//! file, see [`super::tickets`]) and the session cache (by id) are shared by every configuration
//! built here, so clients keep resuming across CRL reloads and, through the key file, across
//! restarts (the session-id cache starts empty). Because a resumed session skips certificate verification, the edge also checks
//! each client's serial against [`TlsState::revoked`] (and the certificate's validity period)
//! itself after every handshake, full or resumed.
//!
//! A CRL replaces the installed one only if its CRL Number (the X.509 extension) is higher: an
//! older CRL put back (a restored backup, a stale copy) could un-revoke certificates. A CRL
//! with the same number and the same bytes is a no-op; anything else is refused and the
//! installed CRL stays.

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::{
    NoServerSessionStorage, ProducesTickets, ServerSessionMemoryCache, StoresServerSessions,
    WebPkiClientVerifier,
};
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

use super::config::EdgeConfig;
use super::metrics::Reason;
use super::tickets::{Loaded, TicketError, TicketKeys};
use super::verifier::RevocationAware;

/// Why the TLS material could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: {what}", path.display())]
    Bad { path: PathBuf, what: String },
    #[error("building the TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("building the client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("TLS loading task failed: {0}")]
    Join(String),
    #[error("TLS ticket keys: {0}")]
    Tickets(#[from] TicketError),
    #[error(
        "{}: CRL Number {offered:?} is not higher than the installed CRL's ({installed:?}); \
         keeping the installed one (re-sign with `locker-pki refresh-crl`)",
        path.display()
    )]
    Stale {
        path: PathBuf,
        installed: Option<u64>,
        offered: Option<u64>,
    },
}

/// The revocation list as loaded: DER for rustls, serials for the edge's own checks.
#[derive(Default)]
pub(crate) struct Crl {
    pub ders: Vec<CertificateRevocationListDer<'static>>,
    pub serials: HashSet<String>,
    /// The CRL Number (the highest, if the file holds several CRLs).
    pub number: Option<u64>,
}

/// The fixed TLS material (CA and server identity), read once at start.
struct Fixed {
    roots: Arc<RootCertStore>,
    ca_ders: Vec<CertificateDer<'static>>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

/// The live TLS configuration and revocation set of the edge.
pub(crate) struct TlsState {
    fixed: Fixed,
    provider: Arc<CryptoProvider>,
    ticketer: Arc<dyn ProducesTickets>,
    /// The ticket keys (when tickets are on), for the rotation task.
    tickets: Option<Arc<TicketKeys>>,
    sessions: Arc<dyn StoresServerSessions>,
    config: ArcSwap<ServerConfig>,
    revoked: ArcSwap<HashSet<String>>,
    crl_path: Option<PathBuf>,
    /// The installed CRL's number and bytes (to refuse older ones and skip identical ones).
    installed: Mutex<(Option<u64>, Vec<CertificateRevocationListDer<'static>>)>,
}

/// The change-detection signature of the CRL file.
pub(crate) type FileSig = Option<(SystemTime, u64)>;

impl TlsState {
    /// Loads everything named in `cfg` (blocking file reads: call from `spawn_blocking`).
    pub fn load(cfg: &EdgeConfig) -> Result<(Self, FileSig), TlsError> {
        let ca_ders = read_certs(&cfg.ca_cert)?;
        let mut roots = RootCertStore::empty();
        for der in &ca_ders {
            roots.add(der.clone()).map_err(|e| TlsError::Bad {
                path: cfg.ca_cert.clone(),
                what: format!("not a usable CA certificate: {e}"),
            })?;
        }
        let chain = read_certs(&cfg.server_cert)?;
        let key = read_key(&cfg.server_key)?;
        let fixed = Fixed {
            roots: Arc::new(roots),
            ca_ders,
            chain,
            key,
        };
        let (crl, sig) = match &cfg.crl {
            Some(p) => {
                let sig = file_sig(p);
                (load_crl(p, &fixed.ca_ders)?, sig)
            }
            None => (Crl::default(), None),
        };
        let provider = Arc::new(provider());
        let tickets = if cfg.tls_tickets {
            let (keys, loaded) = TicketKeys::load(
                cfg.tls_ticket_rotation_s,
                cfg.tls_ticket_key_file.as_deref(),
            )?;
            match loaded {
                Loaded::InMemory => {
                    tracing::info!("edge: TLS ticket keys in memory only (no key file)")
                }
                Loaded::Restored(n) => {
                    tracing::info!(
                        keys = n,
                        "edge: TLS ticket keys restored: tickets issued before the restart resume"
                    )
                }
                Loaded::Fresh(why) => {
                    tracing::info!(%why, "edge: new TLS ticket keys (earlier tickets need a full handshake)")
                }
            }
            Some(Arc::new(keys))
        } else {
            None
        };
        let ticketer: Arc<dyn ProducesTickets> = match &tickets {
            Some(k) => k.clone(),
            None => Arc::new(NoTickets),
        };
        let sessions: Arc<dyn StoresServerSessions> = match cfg.tls_session_cache {
            0 => Arc::new(NoServerSessionStorage {}),
            n => ServerSessionMemoryCache::new(n),
        };
        let config = build(&fixed, &provider, &ticketer, &sessions, &crl)?;
        let installed = Mutex::new((crl.number, crl.ders.clone()));
        Ok((
            Self {
                fixed,
                provider,
                ticketer,
                tickets,
                sessions,
                config: ArcSwap::from_pointee(config),
                revoked: ArcSwap::from_pointee(crl.serials),
                crl_path: cfg.crl.clone(),
                installed,
            },
            sig,
        ))
    }

    /// The ticket keys, when tickets are on (rotated by the edge's rotation task).
    pub fn tickets(&self) -> Option<&Arc<TicketKeys>> {
        self.tickets.as_ref()
    }

    /// The current server configuration.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.config.load_full()
    }

    /// The serials currently revoked.
    pub fn revoked(&self) -> Arc<HashSet<String>> {
        self.revoked.load_full()
    }

    /// The CRL file, if revocation is configured.
    pub fn crl_path(&self) -> Option<&Path> {
        self.crl_path.as_deref()
    }

    /// Reads and verifies the CRL file (blocking: call from `spawn_blocking`).
    pub fn read_crl(&self) -> Result<Option<Crl>, TlsError> {
        match &self.crl_path {
            Some(p) => load_crl(p, &self.fixed.ca_ders).map(Some),
            None => Ok(None),
        }
    }

    /// The installed CRL's number.
    pub fn crl_number(&self) -> Option<u64> {
        self.installed.lock().unwrap_or_else(|p| p.into_inner()).0
    }

    /// Installs a new revocation list if its CRL Number is higher than the installed one's:
    /// new handshakes use it at once. Returns the new set, or `None` if `crl` is the installed
    /// one again (same number, same bytes). A lower or equal number is [`TlsError::Stale`].
    pub fn install_crl(&self, crl: Crl) -> Result<Option<Arc<HashSet<String>>>, TlsError> {
        let mut installed = self.installed.lock().unwrap_or_else(|p| p.into_inner());
        let (number, ders) = &*installed;
        match replacement(*number, ders, &crl) {
            Replace::Install => {}
            Replace::Same => return Ok(None),
            Replace::Stale => {
                return Err(TlsError::Stale {
                    path: self.crl_path.clone().unwrap_or_default(),
                    installed: *number,
                    offered: crl.number,
                })
            }
        }
        let config = build(
            &self.fixed,
            &self.provider,
            &self.ticketer,
            &self.sessions,
            &crl,
        )?;
        let serials = Arc::new(crl.serials);
        self.config.store(Arc::new(config));
        self.revoked.store(serials.clone());
        *installed = (crl.number, crl.ders);
        Ok(Some(serials))
    }
}

/// What to do with an offered CRL, given the installed one's number and bytes.
#[derive(Debug, PartialEq, Eq)]
enum Replace {
    Install,
    /// The installed CRL again: nothing to do.
    Same,
    /// Not newer than the installed one: refused.
    Stale,
}

fn replacement(
    number: Option<u64>,
    ders: &[CertificateRevocationListDer<'static>],
    offered: &Crl,
) -> Replace {
    if offered.number == number && offered.ders == ders {
        return Replace::Same;
    }
    match (number, offered.number) {
        // A CRL without a number was installed (not made by locker-pki): any replaces it.
        (None, _) => Replace::Install,
        (Some(old), Some(new)) if new > old => Replace::Install,
        _ => Replace::Stale,
    }
}

/// No tickets (`edge.tls_tickets = false`): clients resume through the session cache, if any.
#[derive(Debug)]
struct NoTickets;

impl ProducesTickets for NoTickets {
    fn enabled(&self) -> bool {
        false
    }

    fn lifetime(&self) -> u32 {
        0
    }

    fn encrypt(&self, _plain: &[u8]) -> Option<Vec<u8>> {
        None
    }

    fn decrypt(&self, _cipher: &[u8]) -> Option<Vec<u8>> {
        None
    }
}

/// The modification time and length of a file, `None` if it cannot be read.
pub(crate) fn file_sig(path: &Path) -> FileSig {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// Maps a failed TLS accept to a rejection reason.
pub(crate) fn classify(e: &io::Error) -> Reason {
    use rustls::{CertificateError, Error};
    match e.get_ref().and_then(|i| i.downcast_ref::<Error>()) {
        Some(Error::NoCertificatesPresented) => Reason::NoCert,
        Some(Error::InvalidCertificate(CertificateError::Revoked)) => Reason::Revoked,
        Some(Error::InvalidCertificate(_)) => Reason::BadCert,
        _ => Reason::TlsError,
    }
}

fn build(
    fixed: &Fixed,
    provider: &Arc<CryptoProvider>,
    ticketer: &Arc<dyn ProducesTickets>,
    sessions: &Arc<dyn StoresServerSessions>,
    crl: &Crl,
) -> Result<ServerConfig, TlsError> {
    // Revocation against the serials of the CRL verified once at load, not by WebPKI on
    // every handshake (see `verifier`).
    let webpki = WebPkiClientVerifier::builder_with_provider(fixed.roots.clone(), provider.clone())
        .build()?;
    let verifier = Arc::new(RevocationAware::new(webpki, Arc::new(crl.serials.clone())));
    let mut config = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(fixed.chain.clone(), fixed.key.clone_key())?;
    config.ticketer = ticketer.clone();
    config.session_storage = sessions.clone();
    // The server picks the suite (see [`provider`]); spare tickets let a client whose
    // attempt was refused (busy) still resume on its next one.
    config.ignore_client_order = true;
    config.send_tls13_tickets = TICKETS_PER_HANDSHAKE;
    Ok(config)
}

/// Tickets sent after each handshake (rustls' default is 2): a client spends one per attempt,
/// also on an attempt the edge refuses as busy in a storm.
const TICKETS_PER_HANDSHAKE: usize = 4;

/// rustls' ring provider with the TLS 1.3 suites in the edge's order of preference: AES-128-GCM
/// with SHA-256 first. Every handshake, full or resumed, runs its key schedule and transcript
/// on the suite's hash, and SHA-256 has hardware support where SHA-384 does not (the storm
/// profile showed `sha512_block_data_order_nohw` as the edge's top function).
fn provider() -> CryptoProvider {
    use rustls::crypto::ring::cipher_suite as cs;
    let mut p = rustls::crypto::ring::default_provider();
    let rank = |s: &rustls::SupportedCipherSuite| match s.suite() {
        x if x == cs::TLS13_AES_128_GCM_SHA256.suite() => 0,
        x if x == cs::TLS13_CHACHA20_POLY1305_SHA256.suite() => 1,
        x if x == cs::TLS13_AES_256_GCM_SHA384.suite() => 2,
        _ => 3,
    };
    p.cipher_suites.sort_by_key(rank);
    p
}

fn load_crl(path: &Path, ca_ders: &[CertificateDer<'static>]) -> Result<Crl, TlsError> {
    let pem = read(path)?;
    let ders: Vec<CertificateRevocationListDer<'static>> =
        rustls_pemfile::crls(&mut pem.as_slice())
            .collect::<Result<_, _>>()
            .map_err(|e| bad(path, format!("not PEM: {e}")))?;
    if ders.is_empty() {
        return Err(bad(path, "no X509 CRL block in the file".into()));
    }
    let mut serials = HashSet::new();
    let mut number = None;
    for der in &ders {
        // A CRL not signed by the fleet CA would make rustls refuse every client: refuse it
        // here instead and keep the previous one.
        let signed = ca_ders.iter().any(|ca| {
            locker_broker_config::pki::verify_crl_signature(der.as_ref(), ca.as_ref()).is_ok()
        });
        if !signed {
            return Err(bad(path, "CRL is not signed by the fleet CA".into()));
        }
        let s = locker_broker_config::pki::revoked_serials(der.as_ref())
            .map_err(|e| bad(path, e.to_string()))?;
        serials.extend(s);
        let n = locker_broker_config::pki::crl_number(der.as_ref())
            .map_err(|e| bad(path, e.to_string()))?;
        number = number.max(n);
    }
    Ok(Crl {
        ders,
        serials,
        number,
    })
}

/// A PEM private key (the API's TLS loads its key the same way).
pub(crate) fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| bad(path, format!("not PEM: {e}")))?
        .ok_or_else(|| bad(path, "no private key in the file".into()))
}

/// A PEM certificate chain (the API's TLS loads its chain the same way).
pub(crate) fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| bad(path, format!("not PEM: {e}")))?;
    if certs.is_empty() {
        return Err(bad(path, "no CERTIFICATE block in the file".into()));
    }
    Ok(certs)
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

fn bad(path: &Path, what: String) -> TlsError {
    TlsError::Bad {
        path: path.to_owned(),
        what,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crl(number: Option<u64>, bytes: &[u8]) -> Crl {
        Crl {
            ders: vec![CertificateRevocationListDer::from(bytes.to_vec())],
            serials: HashSet::new(),
            number,
        }
    }

    #[test]
    fn without_tickets_none_are_issued() {
        assert!(!NoTickets.enabled());
        assert_eq!(NoTickets.encrypt(b"session"), None);
    }

    #[test]
    fn only_a_higher_crl_number_replaces_the_installed_crl() {
        let installed = crl(Some(5), b"five");
        let ders = &installed.ders;
        let r = |offered: &Crl| replacement(installed.number, ders, offered);
        assert_eq!(r(&crl(Some(6), b"six")), Replace::Install);
        assert_eq!(r(&crl(Some(5), b"five")), Replace::Same);
        assert_eq!(r(&crl(Some(5), b"other five")), Replace::Stale);
        assert_eq!(r(&crl(Some(4), b"four")), Replace::Stale);
        assert_eq!(r(&crl(None, b"unnumbered")), Replace::Stale);
        // Nothing numbered installed yet: anything newer-looking goes in.
        assert_eq!(
            replacement(None, &crl(None, b"x").ders, &crl(Some(1), b"one")),
            Replace::Install
        );
        assert_eq!(
            replacement(None, &crl(None, b"x").ders, &crl(None, b"x")),
            Replace::Same
        );
    }
}
