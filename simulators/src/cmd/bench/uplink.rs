//! `bench uplink`: P mTLS publishers each send M events at QoS 1, through the gateway (edge,
//! ingest, durable store or the cluster's replicated stream, acknowledged once stored) and
//! through Mosquitto (PUBACKed, not durable); the rules engine on, off or both.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use locker_sim::bench::cpu::{CpuSpan, ProcessesCpu};
use locker_sim::bench::mosquitto::Mosquitto;
use locker_sim::bench::mqtt::{publisher, PublishStats};
use locker_sim::fleet::api::metric_sum;
use locker_sim::fleet::nodes::Gateways;

use super::{client_configs, gateway_spec, secs, Common, RulesRun};

pub(super) async fn uplink(
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
    let gws = Gateways::start(&gateway_spec(c, &name, pki), cluster_nodes, |_, cfg| {
        cfg.edge.uplink_rate_per_s = 0;
        cfg.rules.enabled = rules_on;
    })
    .await?;
    let apis = gws.apis();
    const STORED: &str = "locker_ingest_events_total";
    let before = gws.metric_each(&apis, STORED).await;
    let total = publishers as u64 * messages;
    let single_pid = gws.domain().pid();
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
