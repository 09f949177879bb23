//! Load benchmarks (`locker-sim bench ...`): the building blocks.
//!
//! - [`machine`]: what the figures were measured on;
//! - [`cpu`]: the simulator's and a child gateway's CPU over a measured phase (and a set of
//!   processes': a cluster's nodes and NATS servers, started by [`crate::fleet::nodes`]);
//! - [`mosquitto`]: a Mosquitto broker with TLS and required client certificates from the same
//!   PKI, for side-by-side runs;
//! - [`mqtt`]: minimal mTLS MQTT 3.1.1 clients (connect-and-hold for the connect benchmark) and
//!   rumqttc publishers (QoS 1) for the uplink benchmark, with go-back-N on the gateway's acks;
//! - [`orders`]: `bench orders`, order creation through the API on a site map of light cabinets
//!   (its measured phases in `phases`);
//! - [`console`]: `bench console`, the operations console in headless Chromium at fleet size;
//! - [`code`]: `bench code`, code-to-door latency of a real agent, offline;
//! - [`rs485`]: `bench rs485`, door-sensor polls one RS-485 line sustains (Modbus RTU);
//! - [`webhooks`]: `bench webhooks`, webhook deliveries per second to a local receiver and the
//!   outbox's added latency.

pub mod code;
pub mod console;
pub mod cpu;
pub mod machine;
pub mod mosquitto;
pub mod mqtt;
pub mod orders;
mod phases;
pub mod rs485;
pub mod webhooks;

/// Why a benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("MQTT: {0}")]
    Mqtt(String),
    #[error("mosquitto: {0}")]
    Mosquitto(String),
    #[error("codec: {0}")]
    Codec(String),
    #[error("setup: {0}")]
    Setup(String),
    #[error("agent: {0}")]
    Agent(String),
    #[error("API: {0}")]
    Api(String),
}

/// Percentile summary of latencies in microseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Percentiles {
    pub count: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl Percentiles {
    /// From an HDR histogram of microseconds.
    pub fn of(h: &hdrhistogram::Histogram<u64>) -> Self {
        Self {
            count: h.len(),
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }
    }
}

impl std::fmt::Display for Percentiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |us: u64| us as f64 / 1000.0;
        write!(
            f,
            "n={} p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms, max {:.1} ms",
            self.count,
            ms(self.p50_us),
            ms(self.p90_us),
            ms(self.p99_us),
            ms(self.p999_us),
            ms(self.max_us)
        )
    }
}
