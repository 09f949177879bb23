//! `locker-sim fleet`: N real agents in this process against a gateway (started as a child
//! process by default, in-process with `--in-process`, external with `--gateway`, or a
//! cluster of `--cluster-nodes` child processes on three NATS servers), the
//! parcel world set up through its API (sites of `--per-site` cabinets, three carriers with
//! their own tokens, couriers), people following real orders, outages with offline pickups and
//! a gateway restart (in a cluster: `kill -9` of a gateway node and of a NATS server); then the
//! invariant report (events, commands, orders, compartments, pickups; a cluster's nodes all
//! agreeing) and the memory per agent.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use locker_sim::bench::cpu::{CpuSpan, ProcessesCpu};
use locker_sim::fleet::nodes::Gateways;
use locker_sim::fleet::{self, ClusterFaults, FleetOptions, GatewayMode, Launched};

use super::live::{poll_metrics, Live};

/// What a fleet run does (shared by `fleet` and `demo`).
#[derive(Debug, Clone, clap::Args)]
pub struct Script {
    /// Number of simulated cabinets (each a real agent with its own lock board and charger).
    #[arg(long, default_value_t = 1_000)]
    pub cabinets: usize,
    /// How long the scripted activity runs, in seconds (Ctrl-C stops earlier).
    #[arg(long, default_value_t = 60)]
    pub duration: u64,
    /// Connections are started over this many seconds, each at a random instant.
    #[arg(long, default_value_t = 10.0)]
    pub ramp: f64,
    /// Simulated seconds per real second for the chargers' day (144: a day in 10 minutes).
    #[arg(long, default_value_t = 144.0)]
    pub speed: f64,
    /// Simulated hour of day at start.
    #[arg(long, default_value_t = 8.0)]
    pub start_hour: f64,
    /// Scenarios (an order created, a deposit, a pickup, a recall) per cabinet per real minute.
    #[arg(long, default_value_t = 1.0)]
    pub activity: f64,
    /// Cabinets per site.
    #[arg(long, default_value_t = 50)]
    pub per_site: usize,
    /// Recipients who never come and whose order the carrier recalls (`--recall-share`) have it
    /// recalled this many seconds after it became ready.
    #[arg(long, default_value_t = 20)]
    pub recall_secs: u64,
    /// Share of orders (0..1) whose recipient never comes and whose parcel expires: created
    /// with `pickup_window_min` = `--expire-window-min`, then collected by a courier.
    #[arg(long, default_value_t = 0.1)]
    pub expire_share: f64,
    /// The short pickup window of those orders, in minutes (1..43200).
    #[arg(long, default_value_t = 1)]
    pub expire_window_min: u32,
    /// Share of orders (0..1) whose recipient never comes and which the carrier recalls.
    #[arg(long, default_value_t = 0.05)]
    pub recall_share: f64,
    /// Share of the fleet (0..1) that loses its network once, at 30% of the run.
    #[arg(long, default_value_t = 0.1)]
    pub outage_share: f64,
    /// Length of that outage, in seconds.
    #[arg(long, default_value_t = 15)]
    pub outage_secs: u64,
    /// Do not restart the gateway at 60% of the run (in a cluster: kill no gateway node).
    #[arg(long)]
    pub no_restart: bool,
    /// Share of the cabinets on solar power with a small battery (night falls at 50% of the run).
    #[arg(long, default_value_t = 0.3)]
    pub solar_share: f64,
    /// Locks per cabinet (16, 24 or 48).
    #[arg(long, default_value_t = 16)]
    pub locks: u16,
    /// Agent reconnect backoff cap in ms (the base is 200 ms, full jitter).
    #[arg(long, default_value_t = 5_000)]
    pub backoff_max_ms: u64,
    /// After the script: how long to wait for every agent to be connected and drained, seconds.
    #[arg(long, default_value_t = 120)]
    pub settle_secs: u64,
    /// Skip the invariant report.
    #[arg(long)]
    pub no_verify: bool,
}

/// Options of `locker-sim fleet`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub script: Script,
    /// State directory: the agents' sled database, the gateway's data (when started here) and,
    /// unless --pki is given, the PKI.
    #[arg(long, default_value = "state/fleet")]
    pub state: PathBuf,
    /// PKI directory (created if missing; cabinet certificates are issued in one batch).
    #[arg(long)]
    pub pki: Option<PathBuf>,
    /// Use an external gateway: its mTLS edge address (needs --api, --token and --pki).
    #[arg(long, requires_all = ["api", "token", "pki"])]
    pub gateway: Option<SocketAddr>,
    /// The external gateway's HTTP API address.
    #[arg(long)]
    pub api: Option<SocketAddr>,
    /// A bearer token of the gateway's API.
    #[arg(long, default_value = "fleet-sim-token-0123456789")]
    pub token: String,
    /// Run the gateway in this process instead of as a child process.
    #[arg(long, conflicts_with = "gateway")]
    pub in_process: bool,
    /// The locker-gateway binary to start as a child (default: next to this executable).
    #[arg(long)]
    pub gateway_bin: Option<PathBuf>,
    /// Cluster mode: start three `nats-server` (JetStream, R3) and this many gateway nodes as
    /// child processes (node 1 the domain node), the agents spread over their edges round
    /// robin. Starts fresh (the state directory's agents, nodes and NATS stores are wiped).
    /// 0 = one gateway.
    #[arg(long, default_value_t = 0, conflicts_with_all = ["gateway", "in_process"])]
    pub cluster_nodes: usize,
    /// The faults of a cluster run: `kill -9` of the last gateway node at 60% of the run
    /// (where one gateway is restarted; not with --no-restart), of NATS server 1 at 80%, each
    /// started again after --fault-down-secs.
    #[arg(long, value_enum, default_value_t = FaultsArg::Both)]
    pub cluster_faults: FaultsArg,
    /// How long a killed cluster process stays down, seconds.
    #[arg(long, default_value_t = 3.0)]
    pub fault_down_secs: f64,
}

/// Which processes a cluster run kills.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FaultsArg {
    Both,
    Node,
    Nats,
    None,
}

impl FaultsArg {
    /// The library's faults.
    pub fn faults(self, down_secs: f64) -> ClusterFaults {
        let d = ClusterFaults::default();
        ClusterFaults {
            node: matches!(self, Self::Both | Self::Node),
            nats_at: d
                .nats_at
                .filter(|_| matches!(self, Self::Both | Self::Nats)),
            down_for: Duration::from_secs_f64(down_secs.clamp(0.0, 600.0)),
        }
    }
}

impl Script {
    /// The library options for this script.
    pub fn options(&self, state: PathBuf) -> FleetOptions {
        FleetOptions {
            cabinets: self.cabinets,
            state_dir: state,
            locks: self.locks,
            ramp: Duration::from_secs_f64(self.ramp.max(0.0)),
            speed: self.speed,
            start_hour: self.start_hour,
            activity_per_min: self.activity,
            outage_share: self.outage_share,
            outage_for: Duration::from_secs(self.outage_secs),
            restart_at: (!self.no_restart).then_some(0.6),
            solar_share: self.solar_share,
            backoff_max_ms: self.backoff_max_ms.max(200),
            cabinets_per_site: self.per_site.max(1),
            recall_after: Duration::from_secs(self.recall_secs),
            expire_share: self.expire_share,
            expire_window_min: self.expire_window_min,
            recall_share: self.recall_share,
            ..FleetOptions::default()
        }
    }
}

/// Runs the fleet subcommand.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let pki = args.pki.clone().unwrap_or_else(|| args.state.join("pki"));
    let mode = match (args.gateway, args.api) {
        (Some(edge), Some(api)) => GatewayMode::External {
            edge,
            api,
            token: args.token.clone(),
        },
        _ if args.in_process => GatewayMode::InProcess,
        _ => {
            let bin = args
                .gateway_bin
                .clone()
                .unwrap_or_else(fleet::gateway::default_gateway_bin);
            if args.cluster_nodes > 0 {
                GatewayMode::Cluster {
                    bin,
                    nodes: args.cluster_nodes,
                }
            } else {
                GatewayMode::Child { bin }
            }
        }
    };
    let mut opts = args.script.options(args.state.clone());
    opts.cluster_faults = args.cluster_faults.faults(args.fault_down_secs);
    session(&args.script, opts, &pki, mode, &args.token, |_| {}).await
}

/// Launches, runs the script with the live display, settles, verifies and shuts down.
pub async fn session(
    script: &Script,
    opts: FleetOptions,
    pki: &std::path::Path,
    mode: GatewayMode,
    token: &str,
    banner: impl FnOnce(&Launched),
) -> anyhow::Result<()> {
    let n = opts.cabinets;
    let t0 = Instant::now();
    println!("preparing {n} cabinets (PKI in {}) ...", pki.display());
    let mut l = fleet::launch(opts, pki, mode, token)
        .await
        .context("starting the fleet")?;
    println!(
        "gateway: edge {} api http://{}{}; certificates and hardware ready in {:.1}s",
        l.gateway.edge,
        l.gateway.api,
        l.gateway
            .pid()
            .map(|p| format!(" (child pid {p})"))
            .unwrap_or_default(),
        t0.elapsed().as_secs_f64()
    );
    if l.gateway.is_cluster() {
        for (i, g) in l.gateway.nodes().enumerate() {
            println!(
                "  node {}{}: edge {} api http://{}{}",
                Gateways::node_name(i),
                if i == 0 { " (domain)" } else { "" },
                g.edge,
                g.api,
                g.pid().map(|p| format!(" (pid {p})")).unwrap_or_default()
            );
        }
    }
    banner(&l);
    let (view, poller) = poll_metrics(l.fleet.ctx.api.clone());
    let mut live = Live::new(view);
    // Ctrl-C (or SIGTERM) at any point from here on stops cleanly.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let signals = tokio::spawn(async move {
        let _ = super::wait_for_shutdown().await;
        let _ = stop_tx.send(true);
    });
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            while !*rx.borrow_and_update() {
                if rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        }
    };
    let t1 = Instant::now();
    let start_cpu = CpuSpan::start(l.gateway.pid());
    let ramp = l.fleet.ramp_up();
    tokio::pin!(ramp);
    let mut interrupted = false;
    loop {
        tokio::select! {
            r = &mut ramp => { r.context("starting the agents")?; break; }
            _ = stopped() => { interrupted = true; break; }
            _ = tokio::time::sleep(Duration::from_secs(1)) => live.update(&l.fleet, &l.gateway, &[]),
        }
    }
    if interrupted {
        live.finish();
        println!("stopped by the user while starting; shutting down ...");
        l.fleet.shutdown().await;
        poller.abort();
        l.gateway.stop().await;
        return Ok(());
    }
    let rss_agents = fleet::rss_kib(None);
    live.println(&format!(
        "{n} agents started in {:.1}s",
        t1.elapsed().as_secs_f64()
    ));
    let connected_by = Instant::now() + Duration::from_secs(120);
    let stop_check = stopped();
    tokio::pin!(stop_check);
    while Instant::now() < connected_by && l.fleet.snapshot().connected < n {
        if futures::poll!(&mut stop_check).is_ready() {
            break;
        }
        live.update(&l.fleet, &l.gateway, &[]);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    live.println(&format!(
        "{} of {n} agents connected {:.1}s after the first start",
        l.fleet.snapshot().connected,
        t1.elapsed().as_secs_f64()
    ));
    live.println(&format!(
        "  starting and connecting: {}",
        start_cpu.stop(l.gateway.pid())
    ));
    let rss_connected = fleet::rss_kib(None);
    let script_cpu = CpuSpan::start(l.gateway.pid());
    let cluster_cpu = l.gateway.is_cluster().then(|| {
        (
            ProcessesCpu::start(&l.gateway.gateway_pids()),
            ProcessesCpu::start(&l.gateway.nats_pids()),
        )
    });
    let stop = stopped();
    let log = fleet::script::run(
        &l.fleet,
        &mut l.gateway,
        Duration::from_secs(script.duration),
        stop,
        |f, g, log| live.update(f, g, log),
    )
    .await;
    let cpu = script_cpu.stop(l.gateway.pid());
    live.finish();
    for h in &log {
        println!("[{:>6.1}s] {}", h.at.as_secs_f64(), h.what);
    }
    println!(
        "script phase with {n} agents: {cpu}{}",
        cpu.simulator
            .map(|s| format!(
                "; simulator {:.1} us of CPU per agent per second{}",
                s.us_per_unit_s(n),
                if l.gateway.in_process_gateway().is_some() {
                    " (the in-process gateway included)"
                } else {
                    ""
                }
            ))
            .unwrap_or_default()
    );
    if let Some((nodes, nats)) = cluster_cpu {
        println!(
            "  script phase CPU: {}; {}",
            nodes.line_with(
                &format!("{} gateway nodes", l.gateway.len()),
                &l.gateway.gateway_pids()
            ),
            nats.line_with("NATS servers", &l.gateway.nats_pids())
        );
    }
    let interrupted = log.iter().any(|h| h.what == "stopped by the user");
    let mut clean = true;
    if !script.no_verify && !interrupted {
        println!(
            "settling: restoring links, waiting for every agent to be connected and drained ..."
        );
        let settled = tokio::select! {
            s = l.fleet.settle(Duration::from_secs(script.settle_secs)) => s,
            _ = stopped() => false,
        };
        let s = l.fleet.snapshot();
        println!(
            "settled: {settled} (connected {}/{}, outbox backlog {})",
            s.connected, s.cabinets, s.outbox
        );
        let report = l.fleet.verify().await;
        println!("{report}");
        clean = report.is_clean();
    }
    println!("activity: {}", l.fleet.ctx.stats);
    if let (Some(before), Some(after), Some(conn)) = (l.rss_before_kib, rss_agents, rss_connected) {
        println!(
            "memory (simulator process RSS): {before} KiB before the cabinets, {after} KiB with {n} agents started, {conn} KiB connected: {:.1} KiB per cabinet (agent + simulated hardware + TLS client{})",
            (conn.saturating_sub(before)) as f64 / n.max(1) as f64,
            if l.gateway.in_process_gateway().is_some() { " + the in-process gateway's share" } else { "" }
        );
    }
    for (i, g) in l.gateway.nodes().enumerate() {
        if let Some(r) = g.pid().and_then(|p| fleet::rss_kib(Some(p))) {
            if l.gateway.is_cluster() {
                println!("gateway node {} RSS: {r} KiB", Gateways::node_name(i));
            } else {
                println!("gateway process RSS: {r} KiB");
            }
        }
    }
    println!(
        "shutting down: agents, then the gateway{} ...",
        if l.gateway.is_cluster() {
            " nodes and NATS"
        } else {
            ""
        }
    );
    l.fleet.shutdown().await;
    poller.abort();
    signals.abort();
    l.gateway.stop().await;
    if !clean {
        anyhow::bail!("invariant violations (see the report above)");
    }
    Ok(())
}
