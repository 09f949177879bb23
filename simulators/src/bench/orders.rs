//! `locker-sim bench orders`: order creation through the gateway's API on a site map of light
//! cabinets.
//!
//! The gateway runs as a separate process (the release `locker-gateway` binary, as the unlock
//! benchmark runs it; `--in-process` for the small test run). Light cabinets stand in for the
//! hardware: each connects over mutual TLS with its own certificate, publishes one `hello`
//! (its compartments, mixed sizes) and then only holds its connection, so the gateway's parcel
//! domain knows every compartment. The operator token makes the sites (one, or several of equal
//! size), two carriers (`dhl`, `ups`, each with its own scoped API token) and partitions of a
//! few compartments on every fifth cabinet. Then three measured phases, each with N concurrent
//! API clients that alternate the two carrier tokens:
//!
//! 1. `single`: `POST /v1/orders` (mixed sizes, random site) until the target count;
//! 2. `batch`: `POST /v1/orders/batch` (size S, which fits any compartment) until every
//!    carrier finds its site full (an order comes back `created` with `no_compartment`);
//! 3. `full site`: `POST /v1/orders` on the full sites: every allocation scans the site and
//!    fails, and the order is kept waiting with the `no_compartment` exception.
//!
//! Each phase prints orders/s, the latency of the call (p50/p99/p99.9) and the gateway's CPU.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use locker_gateway::api::scope::{ScopeName, ScopedToken, TokenSpec};
use locker_schemas::{
    codec, CabinetId, CompartmentId, CompartmentInfo, Hello, NetworkKind, Size, Topic, UpKind,
    Uplink, UplinkBody,
};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::Semaphore;

use super::cpu::{CpuReport, CpuSpan};
use super::mqtt::connect_hold;
use super::{BenchError, Percentiles};
use crate::fleet::gateway::{default_gateway_bin, fleet_gateway_config, GatewayRunner};
use crate::fleet::link::{FleetTls, LinkSwitch};
use crate::fleet::{self, api::metric_sum};

/// A phase gives up after this many failed calls (its first error is printed).
pub(super) const MAX_FAILED_CALLS: u64 = 20;
pub(super) const OPERATOR: &str = "bench-token-0123456789abcdef";
/// The two carriers and their API tokens.
pub(super) const CARRIERS: [(&str, &str); 2] = [
    ("dhl", "bench-dhl-token-0123456789abcdef"),
    ("ups", "bench-ups-token-0123456789abcdef"),
];

/// Options of `locker-sim bench orders`.
#[derive(Debug, Clone, clap::Args)]
pub struct OrdersArgs {
    /// State directory (PKI reused across runs; gateway data made fresh per run).
    #[arg(long, default_value = "state/bench")]
    pub state: PathBuf,
    /// The locker-gateway binary (default: next to this executable).
    #[arg(long)]
    pub gateway_bin: Option<PathBuf>,
    /// Run the gateway inside this process instead (small runs and tests; its CPU is then
    /// the simulator's).
    #[arg(long)]
    pub in_process: bool,
    /// Light cabinets (each connects over mTLS and says hello).
    #[arg(long, default_value_t = 1_000)]
    pub cabinets: usize,
    /// Sites the cabinets are split into (1 = one site of all of them, 10 = ten of 100).
    #[arg(long, default_value_t = 1)]
    pub sites: usize,
    /// Compartments per cabinet: 40% S, 30% M, 20% L, 10% XL.
    #[arg(long, default_value_t = 24)]
    pub compartments: u16,
    /// Concurrent API clients (alternating the two carrier tokens).
    #[arg(long, default_value_t = 8)]
    pub clients: usize,
    /// Orders created one per call in the `single` phase.
    #[arg(long, default_value_t = 2_000)]
    pub orders: usize,
    /// Orders per call in the `batch` phase (which fills the sites).
    #[arg(long, default_value_t = 50)]
    pub batch: usize,
    /// Orders created one per call on the full sites.
    #[arg(long, default_value_t = 1_000)]
    pub full_orders: usize,
    /// Cabinet connections in flight at once while the map comes up.
    #[arg(long, default_value_t = 128)]
    pub connect_concurrency: usize,
}

/// The figures of one phase.
#[derive(Debug, Clone)]
pub struct Phase {
    pub name: &'static str,
    /// Calls answered with success, and failed calls.
    pub calls: u64,
    pub failed_calls: u64,
    /// Orders created, and of those how many got a compartment.
    pub orders: u64,
    pub reserved: u64,
    pub elapsed: Duration,
    /// Latency of one call, microseconds.
    pub latency: Percentiles,
    pub cpu: CpuReport,
    pub first_error: Option<String>,
}

impl Phase {
    /// Orders created per second.
    pub fn rate(&self) -> f64 {
        self.orders as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{}: {} orders ({} with a compartment, {} waiting with no_compartment) in {} calls ({} failed) in {:.2} s = {:.0} orders/s",
            self.name,
            self.orders,
            self.reserved,
            self.orders - self.reserved,
            self.calls,
            self.failed_calls,
            self.elapsed.as_secs_f64(),
            self.rate()
        )?;
        writeln!(f, "  latency per call: {}", self.latency)?;
        if let Some(e) = &self.first_error {
            writeln!(f, "  first error: {e}")?;
        }
        write!(f, "  phase {}", self.cpu)
    }
}

/// What the benchmark measured.
#[derive(Debug, Clone)]
pub struct OrdersReport {
    pub cabinets: usize,
    pub compartments: usize,
    pub sites: usize,
    pub map_ready: Duration,
    pub phases: Vec<Phase>,
}

/// The size of compartment `i` (0-based) of `n`: 40% S, 30% M, 20% L, 10% XL.
fn size_of(i: u16, n: u16) -> Size {
    let x = u32::from(i) * 10 / u32::from(n.max(1));
    match x {
        0..=3 => Size::S,
        4..=6 => Size::M,
        7..=8 => Size::L,
        _ => Size::Xl,
    }
}

/// A random order size: 45% S, 30% M, 20% L, 5% XL.
fn random_size(rng: &mut impl rand::Rng) -> &'static str {
    match rng.gen_range(0..100) {
        0..=44 => "S",
        45..=74 => "M",
        75..=94 => "L",
        _ => "XL",
    }
}

fn publish_packet(topic: &str, pid: u16, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(topic.len() + payload.len() + 4);
    body.extend_from_slice(&u16::try_from(topic.len()).unwrap_or(0).to_be_bytes());
    body.extend_from_slice(topic.as_bytes());
    body.extend_from_slice(&pid.to_be_bytes());
    body.extend_from_slice(payload);
    let mut out = vec![0x32]; // PUBLISH, QoS 1
    let mut len = body.len();
    loop {
        let mut b = u8::try_from(len % 128).unwrap_or(0);
        len /= 128;
        if len > 0 {
            b |= 0x80;
        }
        out.push(b);
        if len == 0 {
            break;
        }
    }
    out.extend(body);
    out
}

type Stream = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// A light cabinet connects (mTLS, MQTT CONNECT) and publishes its hello.
pub(super) async fn connect_and_hello(
    edge: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    id: CabinetId,
    compartments: u16,
) -> Result<Stream, BenchError> {
    let mut s = None;
    let mut last = None;
    for _ in 0..5 {
        match connect_hold(edge, "127.0.0.1", tls.clone(), id.as_str(), 600).await {
            Ok(x) => {
                s = Some(x);
                break;
            }
            Err(e) => {
                last = Some(e);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    let Some(mut s) = s else {
        return Err(last.unwrap_or_else(|| BenchError::Mqtt("no connection".into())));
    };
    let hello = Uplink {
        cabinet: id.clone(),
        boot: 1,
        seq: 1,
        ts: locker_schemas::now_millis(),
        body: UplinkBody::Hello(Hello {
            firmware: "bench-light".into(),
            hardware: "light-cabinet".into(),
            compartments: (0..compartments)
                .map(|i| CompartmentInfo {
                    id: CompartmentId(i + 1),
                    size: size_of(i, compartments),
                })
                .collect(),
            network: NetworkKind::Lan,
            creds_version: 0,
        }),
    };
    let payload = codec::encode_uplink(&hello).map_err(|e| BenchError::Codec(e.to_string()))?;
    let topic = Topic::Up(id, UpKind::Hello).to_string();
    s.write_all(&publish_packet(&topic, 1, &payload)).await?;
    s.flush().await?;
    Ok(s)
}

/// Then it only holds the connection, reading and dropping what the gateway sends, until the
/// task is aborted or the gateway closes it.
pub(super) async fn hold(mut s: Stream) -> Result<(), BenchError> {
    let mut buf = vec![0u8; 16 * 1024];
    while s.read(&mut buf).await? > 0 {}
    Ok(())
}

/// The API as the operator and the carriers call it.
#[derive(Clone)]
pub(super) struct Http {
    client: reqwest::Client,
    base: String,
}

impl Http {
    pub(super) fn new(addr: SocketAddr, clients: usize) -> Result<Self, BenchError> {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(clients.max(8))
            .timeout(Duration::from_secs(120))
            .build()
            .map_err(|e| BenchError::Api(e.to_string()))?;
        Ok(Self {
            client,
            base: format!("http://{addr}"),
        })
    }

    pub(super) async fn call(
        &self,
        method: reqwest::Method,
        token: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), BenchError> {
        let mut r = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let r = r.send().await.map_err(|e| BenchError::Api(e.to_string()))?;
        let status = r.status().as_u16();
        let bytes = r
            .bytes()
            .await
            .map_err(|e| BenchError::Api(e.to_string()))?;
        Ok((
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ))
    }

    pub(super) async fn ok(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Value,
    ) -> Result<Value, BenchError> {
        let (s, v) = self.call(method, OPERATOR, path, Some(body)).await?;
        if !(200..300).contains(&s) {
            return Err(BenchError::Api(format!("{path}: {s} {v}")));
        }
        Ok(v)
    }
}

/// The gateway configuration of the parcel benchmarks: loopback listeners on free ports, the
/// operator token, both carriers' tokens, no uplink rate limit.
pub(super) fn bench_gateway_config(
    dir: &std::path::Path,
    paths: &locker_broker_config::pki::PkiPaths,
) -> Result<locker_gateway::config::GatewayConfig, BenchError> {
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let mut cfg = fleet_gateway_config(dir, paths, loopback, loopback, OPERATOR);
    cfg.edge.uplink_rate_per_s = 0;
    for (carrier, token) in CARRIERS {
        let carrier = carrier
            .parse()
            .map_err(|e: locker_schemas::SlugError| BenchError::Setup(e.to_string()))?;
        cfg.api.tokens.insert(
            token.into(),
            TokenSpec::Scoped(ScopedToken {
                name: format!("{carrier}-api"),
                scope: ScopeName::Carrier,
                carrier: Some(carrier),
                sites: Default::default(),
            }),
        );
    }
    Ok(cfg)
}

pub(super) fn site_id(k: usize) -> String {
    format!("bench-site-{k}")
}

/// Runs the benchmark and prints its figures.
pub async fn run(a: &OrdersArgs) -> Result<OrdersReport, BenchError> {
    let n = a.cabinets.max(1);
    let sites = a.sites.clamp(1, n);
    let pki = a.state.join("pki");
    let ids = fleet::cabinet_ids("ORD-", n).map_err(|e| BenchError::Setup(e.to_string()))?;
    let t = Instant::now();
    let (p2, ids2) = (pki.clone(), ids.clone());
    let (ca, certs) = tokio::task::spawn_blocking(move || {
        fleet::prepare_pki(&p2, &ids2).map(|(p, c)| (p.ca_cert_der().to_vec(), c))
    })
    .await
    .map_err(|e| BenchError::Setup(e.to_string()))?
    .map_err(|e| BenchError::Setup(e.to_string()))?;
    let fleet_tls = FleetTls::new(&ca).map_err(|e| BenchError::Tls(e.to_string()))?;
    let mut tls = Vec::with_capacity(n);
    for (cert, key) in certs {
        tls.push(
            fleet_tls
                .client_config(cert, key, LinkSwitch::default())
                .map_err(|e| BenchError::Tls(e.to_string()))?,
        );
    }
    println!(
        "{n} cabinet certificates ready in {:.1} s (PKI {})",
        t.elapsed().as_secs_f64(),
        pki.display()
    );

    let dir = a.state.join("gw-orders");
    let _ = std::fs::remove_dir_all(&dir);
    let paths = locker_broker_config::pki::PkiPaths::new(&pki);
    let cfg = bench_gateway_config(&dir, &paths)?;
    let gw = if a.in_process {
        GatewayRunner::in_process(cfg, OPERATOR).await
    } else {
        let bin = a.gateway_bin.clone().unwrap_or_else(default_gateway_bin);
        GatewayRunner::child(&bin, &cfg, &dir, OPERATOR).await
    }
    .map_err(|e| BenchError::Setup(format!("starting the gateway: {e}")))?;
    let r = measure(a, &gw, &ids, tls, sites).await;
    gw.stop().await;
    r
}

async fn measure(
    a: &OrdersArgs,
    gw: &GatewayRunner,
    ids: &[CabinetId],
    tls: Vec<Arc<rustls::ClientConfig>>,
    sites: usize,
) -> Result<OrdersReport, BenchError> {
    let n = ids.len();
    let http = Http::new(gw.api, a.clients)?;
    let put = reqwest::Method::PUT;
    for (carrier, _) in CARRIERS {
        http.ok(
            put.clone(),
            &format!("/v1/carriers/{carrier}"),
            json!({"name": carrier.to_uppercase()}),
        )
        .await?;
        http.ok(
            put.clone(),
            &format!("/v1/carriers/{carrier}/couriers/{carrier}-c1"),
            json!({"name": "courier", "badge": format!("BADGE-{carrier}-1")}),
        )
        .await?;
    }
    let per_site = n.div_ceil(sites);
    for (k, chunk) in ids.chunks(per_site).enumerate() {
        http.ok(
            put.clone(),
            &format!("/v1/sites/{}", site_id(k)),
            json!({"name": format!("Bench site {k}"), "time_zone": "Europe/Berlin",
                   "cabinets": chunk}),
        )
        .await?;
    }
    let sites = ids.chunks(per_site).count();

    // the site map comes up: every cabinet connects and says hello
    let t = Instant::now();
    let cpu = CpuSpan::start(gw.pid());
    let gate = Arc::new(Semaphore::new(a.connect_concurrency.max(1)));
    let connected = Arc::new(AtomicUsize::new(0));
    let mut cabinets = tokio::task::JoinSet::new();
    for (id, tls) in ids.iter().zip(tls) {
        let (edge, id, gate, connected) = (gw.edge, id.clone(), gate.clone(), connected.clone());
        let comps = a.compartments;
        cabinets.spawn(async move {
            let s = {
                let _permit = gate.acquire_owned().await;
                connect_and_hello(edge, tls, id.clone(), comps).await
            };
            let r = match s {
                Ok(s) => {
                    connected.fetch_add(1, Ordering::Relaxed);
                    hold(s).await
                }
                Err(e) => Err(e),
            };
            if let Err(e) = r {
                tracing::warn!(cabinet = %id, error = %e, "light cabinet");
            }
        });
    }
    let total = n * usize::from(a.compartments);
    let known = wait_compartments(&http, sites, total, Duration::from_secs(300)).await?;
    let map_ready = t.elapsed();
    println!(
        "site map: {n} cabinets x {} compartments in {sites} site(s); {} cabinets connected and said hello, {known}/{total} compartments known to the parcel domain after {:.2} s",
        a.compartments,
        connected.load(Ordering::Relaxed),
        map_ready.as_secs_f64()
    );
    println!("  map phase {}", cpu.stop(gw.pid()));
    if known < total {
        return Err(BenchError::Setup(format!(
            "only {known} of {total} compartments known after 300 s"
        )));
    }
    // partitions: on every fifth cabinet, its first quarter of compartments for one carrier
    let quarter: Vec<u16> = (1..=a.compartments.div_ceil(4)).collect();
    let mut parts = 0;
    for (k, id) in ids.iter().enumerate().filter(|(k, _)| k % 5 == 0) {
        let carrier = CARRIERS[(k / 5) % 2].0;
        http.ok(
            put.clone(),
            &format!("/v1/cabinets/{id}/partitions"),
            json!({"compartments": quarter, "carrier": carrier}),
        )
        .await?;
        parts += 1;
    }
    println!(
        "partitions: compartments 1..={} of {parts} cabinets (every fifth) reserved for dhl or ups in turn",
        quarter.len()
    );

    let mut phases = Vec::new();
    let ctx = super::phases::Ctx {
        http: http.clone(),
        sites,
        clients: a.clients.max(1),
    };
    let p = ctx
        .phase("single", gw.pid(), a.orders, |_, rng, _| {
            super::phases::Work::Single(random_size(rng))
        })
        .await?;
    println!("{p}");
    phases.push(p);
    let b = ctx.fill(gw.pid(), a.batch.max(1)).await?;
    println!("{b}");
    phases.push(b);
    let p = ctx
        .phase("full site", gw.pid(), a.full_orders, |_, rng, _| {
            super::phases::Work::Single(random_size(rng))
        })
        .await?;
    println!("{p}");
    phases.push(p);
    if let Ok(text) = metrics_text(&http).await {
        println!(
            "  gateway: allocation failures {:.0}, parcel commits {:.0}, credential set parts sent {:.0}",
            metric_sum(&text, "locker_parcel_allocation_failures_total"),
            metric_sum(&text, "locker_parcel_commits_total"),
            metric_sum(&text, "locker_parcel_creds_parts_sent_total"),
        );
    }
    if let Some(rss) = fleet::rss_kib(gw.pid()) {
        println!("  gateway RSS at the end: {rss} KiB");
    }
    cabinets.abort_all();
    Ok(OrdersReport {
        cabinets: n,
        compartments: total,
        sites,
        map_ready,
        phases,
    })
}

pub(super) async fn metrics_text(http: &Http) -> Result<String, BenchError> {
    http.client
        .get(format!("{}/metrics", http.base))
        .bearer_auth(OPERATOR)
        .send()
        .await
        .map_err(|e| BenchError::Api(e.to_string()))?
        .text()
        .await
        .map_err(|e| BenchError::Api(e.to_string()))
}

/// Sums the compartments the parcel domain knows over every site, until `total` or `limit`.
pub(super) async fn wait_compartments(
    http: &Http,
    sites: usize,
    total: usize,
    limit: Duration,
) -> Result<usize, BenchError> {
    let t = Instant::now();
    loop {
        let mut known = 0;
        for k in 0..sites {
            let (_, v) = http
                .call(
                    reqwest::Method::GET,
                    OPERATOR,
                    &format!("/v1/sites/{}/occupancy", site_id(k)),
                    None,
                )
                .await?;
            for c in v["cabinets"].as_array().into_iter().flatten() {
                for s in c["by_size"].as_array().into_iter().flatten() {
                    if s["size"].is_null() {
                        known += s["total"].as_u64().unwrap_or(0) as usize;
                    }
                }
            }
        }
        if known >= total || t.elapsed() > limit {
            return Ok(known);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
