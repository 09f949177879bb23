//! The uplink/downlink session with the gateway: reconnect backoff ([`backoff`]), the go-back-N
//! uplink window ([`window`]), the TLS client configuration ([`tls`]) and the rumqttc event-loop
//! task ([`mqtt`]).

pub mod backoff;
pub mod mqtt;
pub mod tls;
pub mod window;

pub use backoff::Backoff;
pub use mqtt::MqttEvent;
pub use tls::{client_config_from_files, client_config_from_pem, TlsError};
pub use window::Window;
