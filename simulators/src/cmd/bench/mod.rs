//! `locker-sim bench connect|storm|unlock|uplink|orders|code|webhooks|console|rs485`: load
//! benchmarks against the gateway run as a separate process (the `locker-gateway` binary, so its
//! memory is its own), side by side with Mosquitto (TLS, client certificates required) where the
//! comparison means something. Each prints its figures and the machine. Not part of
//! `cargo test`.
//!
//! This module owns the command line and what the benchmarks share (the PKI's client
//! configurations, a fresh gateway, waiting); one module per benchmark: [`connect`], [`storm`],
//! [`unlock`], [`uplink`] (the others live in the library, `locker_sim::bench`).

mod connect;
mod storm;
mod unlock;
mod uplink;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use locker_sim::bench::machine::Machine;
use locker_sim::fleet::api::Api;
use locker_sim::fleet::gateway::{default_gateway_bin, fleet_gateway_config, GatewayRunner};
use locker_sim::fleet::link::{FleetTls, LinkSwitch};
use locker_sim::fleet::nodes::GatewaySpec;
use locker_sim::fleet::{self, FleetOptions};

const TOKEN: &str = "bench-token-0123456789abcdef";

/// Options shared by every benchmark.
#[derive(Debug, Clone, clap::Args)]
pub struct Common {
    /// State directory (PKI reused across runs; gateway data made fresh per run).
    #[arg(long, default_value = "state/bench")]
    state: PathBuf,
    /// The locker-gateway binary (default: next to this executable).
    #[arg(long)]
    gateway_bin: Option<PathBuf>,
    /// Skip the Mosquitto side-by-side run.
    #[arg(long)]
    no_mosquitto: bool,
}

/// The benchmarks.
#[derive(Debug, clap::Subcommand)]
pub enum Bench {
    /// N mTLS cabinets connect (TCP + TLS 1.3 with client certificate + MQTT CONNECT/CONNACK)
    /// and stay connected: time, handshakes/s, server RSS per connection; gateway vs Mosquitto.
    Connect {
        #[command(flatten)]
        common: Common,
        /// Connections.
        #[arg(long, default_value_t = 10_000)]
        cabinets: usize,
        /// Connection attempts in flight at once.
        #[arg(long, default_value_t = 512)]
        concurrency: usize,
    },
    /// N real agents connected; the broker is killed (-9) and started again: time until all are
    /// back online (and, for the gateway, their outbox backlog replayed and acknowledged).
    Storm {
        #[command(flatten)]
        common: Common,
        /// Agents.
        #[arg(long, default_value_t = 2_000)]
        cabinets: usize,
        /// Events each agent stores while the gateway is down.
        #[arg(long, default_value_t = 5)]
        backlog: usize,
    },
    /// Remote unlock round trip (API call with wait_ms until the `opened` outcome) with N real
    /// agents connected; simulated locks with a 1 ms pulse so the software path is measured.
    Unlock {
        #[command(flatten)]
        common: Common,
        /// Agents connected.
        #[arg(long, default_value_t = 2_000)]
        cabinets: usize,
        /// Unlock commands.
        #[arg(long, default_value_t = 1_000)]
        unlocks: usize,
        /// Unlock calls in flight at once.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// The fleet's normal traffic while measuring: scenarios (deposits, pickups: scans,
        /// door events) per cabinet per minute, as `fleet --activity`; power telemetry runs
        /// anyway. 0 = an idle fleet.
        #[arg(long, default_value_t = 0.0)]
        activity: f64,
        /// Gateway nodes in cluster mode, on a three-server NATS JetStream cluster (R3) started
        /// under the state directory; 0 = one gateway on sled alone.
        #[arg(long, default_value_t = 0)]
        cluster_nodes: usize,
    },
    /// Sustained uplink: P mTLS publishers each send M events at QoS 1; through the gateway
    /// (edge, broker, ingest, sled, acknowledged = durable, verified via the API) vs Mosquitto
    /// (PUBACKed, not durable).
    Uplink {
        #[command(flatten)]
        common: Common,
        /// Publishers.
        #[arg(long, default_value_t = 10)]
        publishers: usize,
        /// Events per publisher.
        #[arg(long, default_value_t = 20_000)]
        messages: u64,
        /// What is sent: scans only, or a cabinet's mix of doors, power and scans.
        #[arg(long, value_enum, default_value_t = locker_sim::bench::mqtt::Mix::Scan)]
        mix: locker_sim::bench::mqtt::Mix,
        /// Run the gateway with its rules engine on, off, or both one after the other (the
        /// rules engine's cost on the uplink path).
        #[arg(long, value_enum, default_value_t = RulesRun::On)]
        rules: RulesRun,
        /// Gateway nodes in cluster mode, on a three-server NATS JetStream cluster (R3) started
        /// under the state directory; 0 = one gateway on sled alone.
        #[arg(long, default_value_t = 0)]
        cluster_nodes: usize,
    },
    /// Order creation through the API (carrier tokens, single and batch) on a site map of light
    /// cabinets, then on the full site: orders/s, latency of `POST /v1/orders`, gateway CPU.
    Orders(locker_sim::bench::orders::OrdersArgs),
    /// Code-to-door latency at an offline cabinet: a real agent, a simulated lock board (in
    /// memory and over Modbus TCP), a credential set of pickup codes and courier badges.
    Code(locker_sim::bench::code::CodeArgs),
    /// Webhook deliveries per second to a local receiver (1 and 4 subscriptions) while the API
    /// creates and cancels orders, and the outbox's added latency (event to receipt).
    Webhooks(locker_sim::bench::webhooks::WebhooksArgs),
    /// The operations console in headless Chromium with N real agents and their parcel
    /// traffic: fleet, site and cabinet pages, live updates, the fleet API's latency.
    Console(locker_sim::bench::console::ConsoleArgs),
    /// Door-sensor polls per second one RS-485 line (Modbus RTU) sustains at 9,600 and
    /// 115,200 baud with 1, 4 and 8 boards (wire time emulated on a pty), next to the need.
    Rs485(locker_sim::bench::rs485::Rs485Args),
}

/// Which gateway runs `bench uplink` measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RulesRun {
    On,
    Off,
    Both,
}

/// Runs a benchmark.
pub async fn run(b: Bench) -> anyhow::Result<()> {
    println!("{}", Machine::detect());
    match b {
        Bench::Connect {
            common,
            cabinets,
            concurrency,
        } => connect::connect(&common, cabinets, concurrency).await,
        Bench::Storm {
            common,
            cabinets,
            backlog,
        } => storm::storm(&common, cabinets, backlog).await,
        Bench::Unlock {
            common,
            cabinets,
            unlocks,
            concurrency,
            activity,
            cluster_nodes,
        } => {
            let run = unlock::UnlockRun {
                n: cabinets,
                unlocks,
                concurrency,
                activity,
                cluster_nodes,
            };
            unlock::unlock(&common, &run).await
        }
        Bench::Uplink {
            common,
            publishers,
            messages,
            mix,
            rules,
            cluster_nodes,
        } => uplink::uplink(&common, publishers, messages, mix, rules, cluster_nodes).await,
        Bench::Orders(a) => Ok(locker_sim::bench::orders::run(&a).await.map(drop)?),
        Bench::Code(a) => Ok(locker_sim::bench::code::run(&a).await.map(drop)?),
        Bench::Webhooks(a) => Ok(locker_sim::bench::webhooks::run(&a).await.map(drop)?),
        Bench::Console(a) => Ok(locker_sim::bench::console::run(&a).await?),
        Bench::Rs485(a) => Ok(locker_sim::bench::rs485::run(&a).await.map(drop)?),
    }
}

fn gateway_bin(c: &Common) -> PathBuf {
    c.gateway_bin.clone().unwrap_or_else(default_gateway_bin)
}

async fn fresh_gateway(
    c: &Common,
    name: &str,
    pki: &Path,
    tweak: impl FnOnce(&mut locker_gateway::config::GatewayConfig),
) -> anyhow::Result<GatewayRunner> {
    let dir = c.state.join(name);
    let _ = std::fs::remove_dir_all(&dir);
    let paths = locker_broker_config::pki::PkiPaths::new(pki);
    let mut cfg = fleet_gateway_config(
        &dir,
        &paths,
        ([127, 0, 0, 1], 0).into(),
        ([127, 0, 0, 1], 0).into(),
        TOKEN,
    );
    tweak(&mut cfg);
    GatewayRunner::child(&gateway_bin(c), &cfg, &dir, TOKEN)
        .await
        .with_context(|| format!("starting {}", gateway_bin(c).display()))
}

async fn client_configs(
    c: &Common,
    prefix: &str,
    n: usize,
) -> anyhow::Result<(PathBuf, Vec<(String, Arc<rustls::ClientConfig>)>)> {
    let pki = c.state.join("pki");
    let ids = fleet::cabinet_ids(prefix, n)?;
    let (p2, ids2) = (pki.clone(), ids.clone());
    let t = Instant::now();
    let (ca, certs) = tokio::task::spawn_blocking(move || {
        fleet::prepare_pki(&p2, &ids2).map(|(p, c)| (p.ca_cert_der().to_vec(), c))
    })
    .await??;
    let tls = FleetTls::new(&ca)?;
    let mut out = Vec::with_capacity(n);
    for (id, (cert, key)) in ids.into_iter().zip(certs) {
        out.push((
            id.to_string(),
            tls.client_config(cert, key, LinkSwitch::default())?,
        ));
    }
    println!(
        "{n} client certificates ready in {:.1}s (PKI {})",
        t.elapsed().as_secs_f64(),
        pki.display()
    );
    Ok((pki, out))
}

fn agent_options(c: &Common, n: usize, name: &str) -> FleetOptions {
    FleetOptions {
        cabinets: n,
        state_dir: c.state.join(name),
        ramp: Duration::from_secs_f64((n as f64 / 1_000.0).max(1.0)),
        activity_per_min: 0.0,
        outage_share: 0.0,
        restart_at: None,
        nightfall_at: None,
        solar_share: 0.0,
        backoff_base_ms: 200,
        backoff_max_ms: 3_000,
        auto_close: Duration::from_millis(1_000),
        pulse: Duration::from_millis(1),
        spring: Duration::from_millis(1),
        ..FleetOptions::default()
    }
}

async fn wait_for(limit: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

fn secs(d: Option<Duration>) -> String {
    d.map_or("NOT within the limit".into(), |d| {
        format!("{:.2} s", d.as_secs_f64())
    })
}

/// The nodes of a run started by [`locker_sim::fleet::nodes::Gateways::start`].
fn gateway_spec(c: &Common, name: &str, pki: &Path) -> GatewaySpec {
    GatewaySpec {
        bin: gateway_bin(c),
        state: c.state.clone(),
        name: name.into(),
        pki: pki.to_path_buf(),
        token: TOKEN.into(),
    }
}

/// Every node's `/metrics` text (empty where a node did not answer).
async fn metrics_each(apis: &[Api]) -> Vec<String> {
    let mut out = Vec::with_capacity(apis.len());
    for a in apis {
        out.push(a.metrics().await.unwrap_or_default());
    }
    out
}
