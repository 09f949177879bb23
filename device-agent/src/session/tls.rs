//! The rustls client configuration of the MQTT session: the fleet CA as the only root and the
//! cabinet's certificate and key for client authentication, with the `ring` provider.
//!
//! A `ClientConfig` carries ONE client identity and its own TLS session (resumption) cache, so
//! agents may share an `Arc<ClientConfig>` only if they share the certificate too: a resumed
//! session keeps the identity of the handshake that created it.
//!
//! Resumption: the agent builds its configuration once and keeps the same `Arc` for its whole
//! life (rumqttc's `TlsConfiguration::Rustls` clones that `Arc` for every connect), so the
//! tickets the gateway sent on one connection make the next handshake an abbreviated one. The
//! store is in memory (a restarted agent makes one full handshake) and small: a cabinet talks
//! to one gateway ([`RESUMPTION_SERVERS`]).

use std::path::Path;
use std::sync::Arc;

use rustls::client::Resumption;
use rustls::{ClientConfig, RootCertStore};

/// Server names whose resumption tickets are kept (rustls keeps a few tickets per name); the
/// agent talks to one gateway, so a couple covers a changed address.
pub const RESUMPTION_SERVERS: usize = 2;

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{what}: no PEM certificate found")]
    NoCert { what: &'static str },
    #[error("{what}: bad PEM: {source}")]
    Pem {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("client key: no PEM private key found")]
    NoKey,
    #[error("CA certificate rejected: {0}")]
    Ca(rustls::Error),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

fn certs(
    pem: &[u8],
    what: &'static str,
) -> Result<Vec<rustls_pki_types::CertificateDer<'static>>, TlsError> {
    let v = rustls_pemfile::certs(&mut &pem[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem { what, source })?;
    if v.is_empty() {
        return Err(TlsError::NoCert { what });
    }
    Ok(v)
}

/// Builds a client configuration from PEM bytes.
pub fn client_config_from_pem(
    ca_pem: &[u8],
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<ClientConfig, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in certs(ca_pem, "CA certificate")? {
        roots.add(c).map_err(TlsError::Ca)?;
    }
    let chain = certs(cert_pem, "client certificate")?;
    let key = rustls_pemfile::private_key(&mut &key_pem[..])
        .map_err(|source| TlsError::Pem {
            what: "client key",
            source,
        })?
        .ok_or(TlsError::NoKey)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    cfg.resumption = Resumption::in_memory_sessions(RESUMPTION_SERVERS);
    Ok(cfg)
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// Builds a client configuration from PEM files (blocking file reads: call before the runtime
/// or from `spawn_blocking`).
pub fn client_config_from_files(
    ca: &Path,
    cert: &Path,
    key: &Path,
) -> Result<Arc<ClientConfig>, TlsError> {
    Ok(Arc::new(client_config_from_pem(
        &read(ca)?,
        &read(cert)?,
        &read(key)?,
    )?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_a_clear_error() {
        let e = client_config_from_pem(b"nope", b"nope", b"nope").expect_err("garbage");
        assert!(e.to_string().contains("CA certificate"), "{e}");
    }
}
