//! `locker-sim bench connect|storm|unlock|uplink|orders|code|webhooks|console`: load benchmarks against the gateway run as a
//! separate process (the `locker-gateway` binary, so its memory is its own), side by side with
//! Mosquitto (TLS, client certificates required) where the comparison means something. Each
//! prints its figures and the machine. Not part of `cargo test`.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use locker_sim::bench::cluster::{GatewaySpec, Gateways, ProcessesCpu};
use locker_sim::bench::cpu::CpuSpan;
use locker_sim::bench::machine::Machine;
use locker_sim::bench::mosquitto::Mosquitto;
use locker_sim::bench::mqtt::{connect_hold, publisher, PublishStats};
use locker_sim::bench::Percentiles;
use locker_sim::fleet::api::{metric_sum, Api};
use locker_sim::fleet::gateway::{default_gateway_bin, fleet_gateway_config, GatewayRunner};
use locker_sim::fleet::link::{FleetTls, LinkSwitch};
use locker_sim::fleet::{self, rss_kib, FleetOptions, GatewayMode};
use rand::Rng as _;
use tokio::sync::Semaphore;

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
        } => connect(&common, cabinets, concurrency).await,
        Bench::Storm {
            common,
            cabinets,
            backlog,
        } => storm(&common, cabinets, backlog).await,
        Bench::Unlock {
            common,
            cabinets,
            unlocks,
            concurrency,
            activity,
            cluster_nodes,
        } => {
            let run = UnlockRun {
                n: cabinets,
                unlocks,
                concurrency,
                activity,
                cluster_nodes,
            };
            unlock(&common, &run).await
        }
        Bench::Uplink {
            common,
            publishers,
            messages,
            mix,
            rules,
            cluster_nodes,
        } => uplink(&common, publishers, messages, mix, rules, cluster_nodes).await,
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

struct ConnectResult {
    elapsed: Duration,
    ok: usize,
    failed: usize,
    /// The open connections (held until dropped).
    _held: Vec<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
}

async fn connect_all(
    addr: std::net::SocketAddr,
    clients: &[(String, Arc<rustls::ClientConfig>)],
    concurrency: usize,
) -> ConnectResult {
    let gate = Arc::new(Semaphore::new(concurrency.max(1)));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (id, cfg) in clients {
        let (id, cfg, gate) = (id.clone(), cfg.clone(), gate.clone());
        tasks.spawn(async move {
            let _p = gate.acquire_owned().await;
            let mut last = None;
            for _ in 0..5 {
                match connect_hold(addr, "127.0.0.1", cfg.clone(), &id, 600).await {
                    Ok(s) => return Ok(s),
                    Err(e) => {
                        last = Some(e);
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
            Err(last.map(|e| e.to_string()).unwrap_or_default())
        });
    }
    let mut held = Vec::with_capacity(clients.len());
    let mut failed = 0;
    let mut first_err = None;
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(Ok(s)) => held.push(s),
            Ok(Err(e)) => {
                failed += 1;
                first_err.get_or_insert(e);
            }
            Err(_) => failed += 1,
        }
    }
    if let Some(e) = first_err {
        println!("  first connection error: {e}");
    }
    ConnectResult {
        elapsed: start.elapsed(),
        ok: held.len(),
        failed,
        _held: held,
    }
}

fn report_connect(who: &str, r: &ConnectResult, rss0: Option<u64>, rss1: Option<u64>) -> f64 {
    let rate = r.ok as f64 / r.elapsed.as_secs_f64().max(1e-9);
    let per = match (rss0, rss1) {
        (Some(a), Some(b)) if r.ok > 0 => {
            format!(
                "{:.1} KiB per connection (RSS {a} -> {b} KiB)",
                b.saturating_sub(a) as f64 / r.ok as f64
            )
        }
        _ => "RSS unknown".into(),
    };
    println!(
        "{who}: {} connected, {} failed, in {:.2} s = {rate:.0} connections/s; {per}",
        r.ok,
        r.failed,
        r.elapsed.as_secs_f64()
    );
    rate
}

async fn settle_rss(pid: Option<u32>) -> Option<u64> {
    tokio::time::sleep(Duration::from_secs(2)).await;
    rss_kib(pid)
}

async fn connect(c: &Common, n: usize, concurrency: usize) -> anyhow::Result<()> {
    let (pki, clients) = client_configs(c, "CAB-", n).await?;
    let gw = fresh_gateway(c, "gw-connect", &pki, |_| {}).await?;
    let rss0 = settle_rss(gw.pid()).await;
    let cpu = CpuSpan::start(gw.pid());
    let r = connect_all(gw.edge, &clients, concurrency).await;
    let cpu = cpu.stop(gw.pid());
    let rss1 = settle_rss(gw.pid()).await;
    let g_rate = report_connect("gateway", &r, rss0, rss1);
    println!("  connect phase {cpu}");
    let api = Api::new(gw.api, TOKEN);
    if let Ok(m) = api.metrics().await {
        println!(
            "  gateway metrics: locker_edge_connections_open {:.0}, locker_edge_accepted_total {:.0}, rejections {:.0}",
            metric_sum(&m, "locker_edge_connections_open"),
            metric_sum(&m, "locker_edge_accepted_total"),
            metric_sum(&m, "locker_edge_rejections_total")
        );
    }
    drop(r);
    gw.stop().await;
    if c.no_mosquitto {
        return Ok(());
    }
    let paths = locker_broker_config::pki::PkiPaths::new(&pki);
    let m = Mosquitto::start(&c.state.join("mosquitto"), &paths).await?;
    let rss0 = settle_rss(m.pid()).await;
    let cpu = CpuSpan::start(None);
    let r = connect_all(m.addr, &clients, concurrency).await;
    let cpu = cpu.stop(None);
    let rss1 = settle_rss(m.pid()).await;
    let m_rate = report_connect("mosquitto", &r, rss0, rss1);
    println!("  connect phase {cpu}");
    drop(r);
    m.stop().await;
    println!(
        "ratio gateway/mosquitto connect rate: {:.2}",
        g_rate / m_rate.max(1e-9)
    );
    Ok(())
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

async fn storm(c: &Common, n: usize, backlog: usize) -> anyhow::Result<()> {
    let pki = c.state.join("pki");
    let name = "storm-gw";
    let _ = std::fs::remove_dir_all(c.state.join(name));
    let mode = GatewayMode::Child {
        bin: gateway_bin(c),
    };
    let mut l = fleet::launch(agent_options(c, n, name), &pki, mode, TOKEN).await?;
    let cpu = CpuSpan::start(l.gateway.pid());
    l.fleet.ramp_up().await?;
    let up = wait_for(Duration::from_secs(300), || {
        l.fleet.snapshot().connected == n
    })
    .await;
    println!("gateway: {n} agents connected after the ramp: {}", secs(up));
    let drained = wait_for(Duration::from_secs(120), || l.fleet.snapshot().outbox == 0).await;
    println!("  initial outboxes drained: {}", secs(drained));
    println!("  ramp and connect phase {}", cpu.stop(l.gateway.pid()));
    l.gateway.kill().await;
    let down = wait_for(Duration::from_secs(30), || {
        l.fleet.snapshot().connected == 0
    })
    .await;
    println!("gateway killed (-9); all agents saw it: {}", secs(down));
    for cab in &l.fleet.cabinets {
        for k in 0..backlog {
            let _ = cab
                .scan(locker_schemas::ScanSource::Barcode, format!("BACKLOG-{k}"))
                .await;
        }
    }
    let s = l.fleet.snapshot();
    println!(
        "backlog stored in the agents' outboxes: {} events",
        s.outbox
    );
    let t = Instant::now();
    let cpu = CpuSpan::start(None);
    l.gateway.respawn().await?;
    let started = t.elapsed();
    // Right after start: the store is open, (almost) no cabinet is connected yet.
    let rss_start = fleet::rss_kib(l.gateway.pid());
    let mut online = None;
    let mut replayed = None;
    while t.elapsed() < Duration::from_secs(300) && replayed.is_none() {
        let s = l.fleet.snapshot();
        if online.is_none() && s.connected == n {
            online = Some(t.elapsed());
        }
        if online.is_some() && s.outbox == 0 {
            replayed = Some(t.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "gateway storm: process started and healthy in {:.2} s; all {n} agents back online in {}; all backlogs replayed and acknowledged in {}",
        started.as_secs_f64(),
        secs(online),
        secs(replayed)
    );
    println!("  storm phase {}", cpu.stop(l.gateway.pid()));
    if let Ok(m) = l.fleet.ctx.api.metrics().await {
        let with = |name: &str, label: &str| locker_sim::fleet::api::metric_with(&m, name, label);
        println!(
            "  gateway handshakes: {:.0} resumed, {:.0} full; refused as busy {:.0}, handshake timeouts {:.0}",
            with("locker_edge_tls_handshakes_total", "kind=\"resumed\""),
            with("locker_edge_tls_handshakes_total", "kind=\"full\""),
            with("locker_edge_rejections_total", "reason=\"busy\""),
            with("locker_edge_rejections_total", "reason=\"handshake_timeout\""),
        );
    }
    let g_online = online;
    if let Some(g) = fleet::rss_kib(l.gateway.pid()) {
        let per = g as f64 / n as f64;
        let growth = rss_start.map_or(String::new(), |s0| {
            format!(
                "; {:.1} KiB per cabinet above the freshly started process ({s0} KiB)",
                g.saturating_sub(s0) as f64 / n as f64
            )
        });
        println!(
            "  gateway RSS after the storm: {g} KiB = {per:.1} KiB per connected cabinet{growth}"
        );
    }
    l.fleet.shutdown().await;
    l.gateway.stop().await;
    if c.no_mosquitto {
        return Ok(());
    }
    // The same agents against Mosquitto (nothing acknowledges their events there).
    let paths = locker_broker_config::pki::PkiPaths::new(&pki);
    let mut m = Mosquitto::start(&c.state.join("mosquitto"), &paths).await?;
    let name = "storm-mosq";
    let _ = std::fs::remove_dir_all(c.state.join(name));
    let mode = GatewayMode::External {
        edge: m.addr,
        api: ([127, 0, 0, 1], 9).into(),
        token: TOKEN.into(),
    };
    let l = fleet::launch(agent_options(c, n, name), &pki, mode, TOKEN).await?;
    l.fleet.ramp_up().await?;
    let up = wait_for(Duration::from_secs(300), || {
        l.fleet.snapshot().connected == n
    })
    .await;
    println!(
        "mosquitto: {n} agents connected after the ramp: {}",
        secs(up)
    );
    let t = Instant::now();
    let cpu = CpuSpan::start(None);
    m.restart().await?;
    let started = t.elapsed();
    let _ = wait_for(Duration::from_secs(30), || l.fleet.snapshot().connected < n).await;
    let online = wait_for(Duration::from_secs(300), || {
        l.fleet.snapshot().connected == n
    })
    .await
    .map(|d| d + started);
    println!(
        "mosquitto storm: restarted in {:.2} s; all {n} agents back online in {}",
        started.as_secs_f64(),
        secs(online)
    );
    println!("  storm phase {}", cpu.stop(None));
    if let (Some(g), Some(mq)) = (g_online, online) {
        println!(
            "ratio (mosquitto time / gateway time, >1 = gateway faster): {:.2}",
            mq.as_secs_f64() / g.as_secs_f64().max(1e-9)
        );
    }
    l.fleet.shutdown().await;
    m.stop().await;
    Ok(())
}

/// What `bench unlock` runs.
struct UnlockRun {
    /// Agents.
    n: usize,
    unlocks: usize,
    concurrency: usize,
    activity: f64,
    cluster_nodes: usize,
}

/// The nodes of a run started by [`Gateways::start`].
fn gateway_spec(c: &Common, name: &str, pki: &Path) -> GatewaySpec {
    GatewaySpec {
        bin: gateway_bin(c),
        state: c.state.clone(),
        name: name.into(),
        pki: pki.to_path_buf(),
        token: TOKEN.into(),
    }
}

async fn unlock(c: &Common, run: &UnlockRun) -> anyhow::Result<()> {
    let &UnlockRun {
        n,
        unlocks,
        concurrency,
        activity,
        cluster_nodes,
    } = run;
    let pki = c.state.join("pki");
    let name = "unlock";
    let _ = std::fs::remove_dir_all(c.state.join(name));
    let mut opts = FleetOptions {
        activity_per_min: activity,
        ..agent_options(c, n, name)
    };
    // Cluster mode: the nodes are started here (the PKI first: their server certificate), the
    // agents spread over their edges round robin; the fleet's own API calls go to node 1.
    let cluster = if cluster_nodes > 0 {
        let ids = fleet::cabinet_ids(&opts.prefix, n)?;
        let p2 = pki.clone();
        tokio::task::spawn_blocking(move || fleet::prepare_pki(&p2, &ids).map(drop)).await??;
        let rules = locker_sim::fleet::gateway::SimRules::for_fleet(&opts);
        let spec = gateway_spec(c, "unlock-gw", &pki);
        let g = Gateways::start(&spec, cluster_nodes, |cfg| rules.apply(cfg)).await?;
        opts.edges = g.edges();
        Some(g)
    } else {
        None
    };
    let mode = match &cluster {
        Some(g) => GatewayMode::External {
            edge: g.nodes[0].edge,
            api: g.nodes[0].api,
            token: TOKEN.into(),
        },
        None => GatewayMode::Child {
            bin: gateway_bin(c),
        },
    };
    let l = fleet::launch(opts, &pki, mode, TOKEN).await?;
    // every node's API (the one gateway's alone on sled); the unlocks go to them round robin
    let apis = match &cluster {
        Some(g) => g.apis(),
        None => vec![l.fleet.ctx.api.clone()],
    };
    let nodes = apis.len();
    l.fleet.ramp_up().await?;
    let up = wait_for(Duration::from_secs(300), || {
        l.fleet.snapshot().connected == n
    })
    .await;
    println!("{n} agents connected: {}", secs(up));
    let _ = wait_for(Duration::from_secs(60), || l.fleet.snapshot().outbox == 0).await;
    if let Some(g) = &cluster {
        // every node sees the whole fleet online, wherever each agent is connected
        let here = g.metric_each(&apis, "locker_cluster_cabinets_here").await;
        println!("  cabinets held per node (presence bucket): {here:?}");
    }
    let hist = Arc::new(std::sync::Mutex::new(
        hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?,
    ));
    let outcomes = Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::<
        String,
        u64,
    >::new()));
    let gate = Arc::new(Semaphore::new(concurrency.max(1)));
    let locks = usize::from(l.fleet.opts.locks);
    let mut tasks = tokio::task::JoinSet::new();
    // the fleet's normal traffic, if asked: scenarios started every 100 ms, as in `fleet`
    let traffic = async {
        let (mut carry, mut last) = (0.0, Instant::now());
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = Instant::now();
            l.fleet.tick(now - last, &mut carry);
            last = now;
        }
    };
    tokio::pin!(traffic);
    if activity > 0.0 {
        // a few seconds of traffic before measuring
        let _ = tokio::time::timeout(Duration::from_secs(3), &mut traffic).await;
        println!("fleet traffic: {activity} scenarios per cabinet per minute");
    }
    let flushes = |text: &str, store: &str| {
        locker_sim::fleet::api::metric_with(
            text,
            "locker_store_flushes_total",
            &format!("store=\"{store}\""),
        )
    };
    let m0 = metrics_each(&apis).await;
    let cpu = CpuSpan::start(l.gateway.pid());
    let cluster_cpu = cluster.as_ref().map(|g| {
        (
            ProcessesCpu::start(&g.gateway_pids()),
            ProcessesCpu::start(&g.nats_pids()),
        )
    });
    let crossing = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let start = Instant::now();
    let mut order: Vec<usize> = (0..unlocks).collect();
    {
        let mut rng = rand::thread_rng();
        for i in (1..order.len()).rev() {
            order.swap(i, rng.gen_range(0..=i));
        }
    }
    // the unlocks, issued and awaited while the traffic (if any) keeps running
    let work = async {
        for (j, k) in order.into_iter().enumerate() {
            // the API node round robin; the cabinet is on node (k % n) % nodes
            let at = j % nodes;
            if at != (k % n) % nodes {
                crossing.fetch_add(1, Ordering::Relaxed);
            }
            let (api, hist, outcomes, gate) = (
                apis[at].clone(),
                hist.clone(),
                outcomes.clone(),
                gate.clone(),
            );
            let cab = l.fleet.cabinets[k % n].id.to_string();
            let compartment = u16::try_from((k / n) % locks + 1).unwrap_or(1);
            let Ok(permit) = gate.clone().acquire_owned().await else {
                break;
            };
            tasks.spawn(async move {
                let t = Instant::now();
                let r = api.unlock(&cab, compartment, 60_000, 10_000).await;
                let us = u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX);
                drop(permit);
                let o = match r {
                    Ok(v) => v["outcome"].as_str().unwrap_or("none").to_owned(),
                    Err(e) => format!("error: {e}"),
                };
                if o == "opened" {
                    let _ = hist.lock().map(|mut h| h.record(us.max(1))).map_err(|_| ());
                }
                if let Ok(mut m) = outcomes.lock() {
                    *m.entry(o).or_default() += 1;
                }
            });
        }
        while tasks.join_next().await.is_some() {}
    };
    if activity > 0.0 {
        tokio::select! {
            _ = work => {}
            _ = &mut traffic => {}
        }
    } else {
        work.await;
    }
    let elapsed = start.elapsed();
    let m1 = metrics_each(&apis).await;
    let cpu = cpu.stop(l.gateway.pid());
    let cluster_cpu = cluster_cpu.map(|(g, nats)| {
        format!(
            "{}; {}",
            g.line(&format!("{nodes} gateway nodes")),
            nats.line("NATS servers")
        )
    });
    let p = hist.lock().map(|h| Percentiles::of(&h)).unwrap_or_default();
    let mode = if cluster.is_some() {
        format!(
            "{nodes} cluster nodes, {} of the calls to a node other than the cabinet's",
            crossing.load(Ordering::Relaxed)
        )
    } else {
        "one node on sled".into()
    };
    println!(
        "remote unlock with {n} agents connected ({mode}), {unlocks} unlocks, {concurrency} in flight, in {:.1} s: opened round trip {p}",
        elapsed.as_secs_f64()
    );
    println!(
        "  outcomes: {:?}",
        outcomes.lock().map(|m| m.clone()).unwrap_or_default()
    );
    let per = |store: &str| {
        let d: f64 = m0
            .iter()
            .zip(&m1)
            .map(|(a, b)| flushes(b, store) - flushes(a, store))
            .sum();
        d / unlocks.max(1) as f64
    };
    println!(
        "  gateway flushes per unlock (all nodes): commands {:.2}, audit {:.2} (shared with all other traffic)",
        per("commands"),
        per("audit")
    );
    if cluster.is_some() {
        let delta = |name: &str, label: &str| -> Vec<f64> {
            m0.iter()
                .zip(&m1)
                .map(|(a, b)| {
                    locker_sim::fleet::api::metric_with(b, name, label)
                        - locker_sim::fleet::api::metric_with(a, name, label)
                })
                .collect()
        };
        println!(
            "  per node: commands created {:?}, opened {:?}, downlinks forwarded {:?}, received {:?}, uplinks fed from the stream {:?}",
            delta("locker_commands_created_total", ""),
            delta("locker_commands_outcomes_total", "outcome=\"opened\""),
            delta("locker_cluster_downlinks_total", "result=\"forwarded\""),
            delta("locker_cluster_downlinks_total", "result=\"received\""),
            delta("locker_cluster_feed_total", ""),
        );
    }
    println!("  unlock phase {cpu}");
    if let Some(line) = cluster_cpu {
        println!("  unlock phase CPU: {line}");
    }
    // every event the agents made (results, door events) acknowledged
    let drained = wait_for(Duration::from_secs(60), || l.fleet.snapshot().outbox == 0).await;
    println!(
        "  agents' outboxes drained (all acknowledged): {}",
        secs(drained)
    );
    // (an external runner has no pid: rss_kib(None) would be this process's own)
    if let Some(g) = l.gateway.pid().and_then(|p| fleet::rss_kib(Some(p))) {
        println!(
            "  gateway RSS after the unlocks: {g} KiB = {:.1} KiB per connected cabinet",
            g as f64 / n as f64
        );
    }
    l.fleet.shutdown().await;
    l.gateway.stop().await;
    if let Some(g) = cluster {
        for (i, node) in g.nodes.iter().enumerate() {
            if let Some(r) = fleet::rss_kib(node.pid()) {
                println!("  node {} RSS after the unlocks: {r} KiB", i + 1);
            }
        }
        g.stop().await;
    }
    Ok(())
}

/// Every node's `/metrics` text (empty where a node did not answer).
async fn metrics_each(apis: &[Api]) -> Vec<String> {
    let mut out = Vec::with_capacity(apis.len());
    for a in apis {
        out.push(a.metrics().await.unwrap_or_default());
    }
    out
}

async fn uplink(
    c: &Common,
    publishers: usize,
    messages: u64,
    mix: locker_sim::bench::mqtt::Mix,
    rules: RulesRun,
    cluster_nodes: usize,
) -> anyhow::Result<()> {
    let (pki, clients) = client_configs(c, "UPL-", publishers).await?;
    let runs: &[bool] = match rules {
        RulesRun::On => &[true],
        RulesRun::Off => &[false],
        RulesRun::Both => &[false, true],
    };
    let mut rates = Vec::new();
    for &rules_on in runs {
        let run = UplinkRun {
            messages,
            mix,
            rules_on,
            cluster_nodes,
        };
        rates.push(uplink_gateway(c, &pki, &clients, &run).await?);
    }
    if let [off, on] = rates[..] {
        println!(
            "rules engine on/off: {on:.0} / {off:.0} events/s = {:.3} ({:+.1}%)",
            on / off.max(1e-9),
            (on / off.max(1e-9) - 1.0) * 100.0
        );
    }
    let g_rate = rates.last().copied().unwrap_or(0.0);
    let total = publishers as u64 * messages;
    if c.no_mosquitto {
        return Ok(());
    }
    let paths = locker_broker_config::pki::PkiPaths::new(&pki);
    let mq = Mosquitto::start(&c.state.join("mosquitto"), &paths).await?;
    let cpu = CpuSpan::start(None);
    let r = run_publishers(&[mq.addr], &clients, messages, false, mix).await?;
    println!("  uplink phase {}", cpu.stop(None));
    let m_rate = total as f64 / r.0.as_secs_f64().max(1e-9);
    println!(
        "mosquitto raw uplink (QoS 1 PUBACKed, not durable): {total} messages in {:.2} s = {m_rate:.0} messages/s",
        r.0.as_secs_f64()
    );
    mq.stop().await;
    println!("ratio gateway/mosquitto: {:.2}", g_rate / m_rate.max(1e-9));
    Ok(())
}

/// One gateway run of `bench uplink`.
struct UplinkRun {
    /// Events per publisher.
    messages: u64,
    mix: locker_sim::bench::mqtt::Mix,
    rules_on: bool,
    cluster_nodes: usize,
}

/// One gateway run of `bench uplink` (one node on sled, or a cluster's nodes with the
/// publishers spread over their edges round robin); returns its rate (events/s acknowledged).
async fn uplink_gateway(
    c: &Common,
    pki: &Path,
    clients: &[(String, Arc<rustls::ClientConfig>)],
    run: &UplinkRun,
) -> anyhow::Result<f64> {
    let &UplinkRun {
        messages,
        mix,
        rules_on,
        cluster_nodes,
    } = run;
    let publishers = clients.len();
    let name = match (rules_on, cluster_nodes) {
        (true, 0) => "gw-uplink".to_owned(),
        (false, 0) => "gw-uplink-norules".to_owned(),
        (true, k) => format!("gw-uplink-cluster{k}"),
        (false, k) => format!("gw-uplink-norules-cluster{k}"),
    };
    // A few publishers each far above a cabinet's rate: the per-cabinet uplink limit is off
    // for this raw-throughput measurement.
    let gws = Gateways::start(&gateway_spec(c, &name, pki), cluster_nodes, |cfg| {
        cfg.edge.uplink_rate_per_s = 0;
        cfg.rules.enabled = rules_on;
    })
    .await?;
    let apis = gws.apis();
    const STORED: &str = "locker_ingest_events_total";
    let before = gws.metric_each(&apis, STORED).await;
    let total = publishers as u64 * messages;
    let single_pid = gws.nodes.first().and_then(GatewayRunner::pid);
    let cpu = CpuSpan::start(if gws.is_cluster() { None } else { single_pid });
    let procs = (
        ProcessesCpu::start(&gws.gateway_pids()),
        ProcessesCpu::start(&gws.nats_pids()),
    );
    let g = run_publishers(&gws.edges(), clients, messages, true, mix).await?;
    // Acknowledged by each publisher's own node; every other node ingests them from the stream
    // too: how far behind the last of them is.
    let caught_up = gws
        .wait_all_reach(
            &apis,
            STORED,
            &before,
            total as f64,
            Duration::from_secs(120),
        )
        .await;
    let cpu = cpu.stop(if gws.is_cluster() { None } else { single_pid });
    let procs = (procs.0.line("gateway nodes"), procs.1.line("NATS servers"));
    let g_rate = total as f64 / g.0.as_secs_f64().max(1e-9);
    let how = if gws.is_cluster() {
        format!(
            "{cluster_nodes} cluster nodes, R3 stream; acknowledged after the stream held it and the publisher's node stored it"
        )
    } else {
        "one node; durable, acknowledged after the sled group commit".into()
    };
    println!(
        "gateway uplink, rules engine {} ({mix:?} events; {how}): {total} events from {publishers} mTLS publishers in {:.2} s = {g_rate:.0} events/s; publishes incl. resends {}, rewinds {}",
        if rules_on { "on" } else { "off" },
        g.0.as_secs_f64(),
        g.1,
        g.2
    );
    if gws.is_cluster() {
        println!(
            "  every node stored all {total} events {} after the last acknowledgement",
            secs(caught_up)
        );
    }
    for (i, api) in apis.iter().enumerate() {
        let m = api.metrics().await.unwrap_or_default();
        let stored = metric_sum(&m, STORED) - before.get(i).copied().unwrap_or(0.0);
        let mut last_ok = 0;
        for (id, _) in clients {
            if let Ok(v) = api.cabinet(id).await {
                if v["last_seq"].as_u64() == Some(messages) {
                    last_ok += 1;
                }
            }
        }
        println!(
            "  node {}: stored (metric) {stored:.0}; cabinets with last_seq = {messages}: {last_ok}/{publishers}; duplicates dropped {:.0}, gaps dropped {:.0}, mean batch {:.1} events; rules: events evaluated {:.0}, alerts raised {:.0}, actions {:.0}",
            i + 1,
            metric_sum(&m, "locker_ingest_duplicates_total"),
            metric_sum(&m, "locker_ingest_gaps_total"),
            metric_sum(&m, "locker_ingest_batch_events_sum")
                / metric_sum(&m, "locker_ingest_batch_events_count").max(1.0),
            metric_sum(&m, "locker_rules_events_total"),
            metric_sum(&m, "locker_alerts_raised_total"),
            metric_sum(&m, "locker_rule_actions_total"),
        );
        if gws.is_cluster() {
            println!(
                "    journal: stored {:.0}, duplicate {:.0}, failed {:.0}; fed from the stream {:.0}",
                locker_sim::fleet::api::metric_with(&m, "locker_cluster_journal_total", "result=\"stored\""),
                locker_sim::fleet::api::metric_with(&m, "locker_cluster_journal_total", "result=\"duplicate\""),
                locker_sim::fleet::api::metric_with(&m, "locker_cluster_journal_total", "result=\"failed\""),
                metric_sum(&m, "locker_cluster_feed_total"),
            );
        }
    }
    if gws.is_cluster() {
        println!("  uplink phase {cpu}; {}; {}", procs.0, procs.1);
    } else {
        println!("  uplink phase {cpu}");
    }
    gws.stop().await;
    Ok(g_rate)
}

/// The publishers, publisher `i` on `addrs[i % len]`.
async fn run_publishers(
    addrs: &[std::net::SocketAddr],
    clients: &[(String, Arc<rustls::ClientConfig>)],
    messages: u64,
    end_to_end: bool,
    mix: locker_sim::bench::mqtt::Mix,
) -> anyhow::Result<(Duration, u64, u64)> {
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let mut stats = Vec::new();
    for (i, (id, cfg)) in clients.iter().enumerate() {
        let addr = *addrs
            .get(i % addrs.len().max(1))
            .context("no address to publish to")?;
        let st = Arc::new(PublishStats::default());
        stats.push(st.clone());
        let cab = locker_schemas::CabinetId::new(id.clone())?;
        let cfg = cfg.clone();
        tasks.spawn(async move {
            publisher(
                addr,
                "127.0.0.1",
                cfg,
                cab,
                1,
                messages,
                end_to_end,
                mix,
                st,
            )
            .await
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    let elapsed = start.elapsed();
    let published = stats
        .iter()
        .map(|s| s.published.load(Ordering::Relaxed))
        .sum();
    let rewinds = stats
        .iter()
        .map(|s| s.rewinds.load(Ordering::Relaxed))
        .sum();
    Ok((elapsed, published, rewinds))
}
