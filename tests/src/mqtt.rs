//! MQTT clients for tests: rumqttc over mutual TLS with a certificate from the test PKI, the
//! same way a cabinet or an integrator connects.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, EventLoop, MqttOptions, TlsConfiguration, Transport};

pub use crate::pki::client_tls;

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
