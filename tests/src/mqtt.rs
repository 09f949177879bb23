//! MQTT clients for tests: rumqttc over mutual TLS with a certificate from the test PKI, the
//! same way a cabinet or an integrator connects.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use locker_broker_config::pki::IssuedCert;
use rumqttc::{AsyncClient, EventLoop, MqttOptions, TlsConfiguration, Transport};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A rustls client config trusting `ca_pem` and presenting `cert` (or no certificate).
pub fn client_tls(ca_pem: &[u8], cert: Option<&IssuedCert>) -> Arc<rustls::ClientConfig> {
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
    let cfg = match cert {
        Some(c) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from(c.cert_der.clone())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(c.key_der.clone())),
            )
            .expect("client auth cert"),
        None => builder.with_no_client_auth(),
    };
    Arc::new(cfg)
}

/// A rumqttc client connecting to the edge at `addr` with TLS config `tls`.
pub fn client(
    client_id: &str,
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
) -> (AsyncClient, EventLoop) {
    let mut o = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
    o.set_keep_alive(Duration::from_secs(30));
    o.set_transport(Transport::Tls(TlsConfiguration::Rustls(tls)));
    o.set_max_packet_size(256 * 1024, 256 * 1024);
    AsyncClient::new(o, 64)
}
