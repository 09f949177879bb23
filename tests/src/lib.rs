//! The shared test harness for Locker Hub's end-to-end tests: everything a test needs to stand
//! up real parts on real sockets, so tests never copy setup.
//!
//! - [`pki::TestPki`]: a fleet PKI in a temp dir, per test;
//! - [`gateway::TestGateway`]: the real gateway in-process with its embedded broker, the edge on
//!   `127.0.0.1:0` and the API on `127.0.0.1:0`; [`gateway::GatewayProcess`]: the real
//!   `locker-gateway` binary, for `kill -9` tests;
//! - [`mqtt`]: rumqttc clients with a cabinet's or an integrator's certificate;
//! - [`api::ApiClient`]: the HTTP API with a bearer token; [`console::Session`]: with a
//!   console login's cookie and CSRF token, and the live feed;
//! - [`browser::Browser`]: headless Chromium over WebDriver, for the console's tests;
//! - [`hooks::Receiver`]: a real webhook receiver (and the signature check with Python's hmac);
//! - [`eventually`]: polls a condition until a deadline (tests never sleep a fixed time);
//! - [`serial`]: socat pseudo-terminal pairs as RS-485 lines, and a cabinet on one (Modbus RTU);
//! - [`nats::NatsCluster`]: real `nats-server` processes as a JetStream cluster on loopback, and
//!   [`cluster`]: gateway nodes on it and what the cluster tests ask every node;
//! - [`net`]: ports reserved for servers that start (or restart) later, without the
//!   bind-and-release race.

pub mod agent;
pub mod api;
pub mod browser;
pub mod cabinet;
pub mod cluster;
pub mod console;
pub mod edge;
pub mod gateway;
pub mod hooks;
pub mod interop;
pub mod mqtt;
pub mod nats;
pub mod net;
pub mod parcels;
pub mod pki;
pub mod serial;
pub mod wait;

pub use wait::{eventually, eventually_async};

/// Installs a tracing subscriber for the test binary once (`RUST_LOG` selects the level).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}
