//! `bench storm`: N real agents connected, the broker killed (`kill -9`) and started again:
//! how long until all are back online and (the gateway) their backlogs replayed and
//! acknowledged; the gateway, then Mosquitto.

use std::time::{Duration, Instant};

use locker_sim::bench::cpu::CpuSpan;
use locker_sim::bench::mosquitto::Mosquitto;
use locker_sim::fleet::{self, GatewayMode};

use super::{agent_options, gateway_bin, secs, wait_for, Common, TOKEN};

pub(super) async fn storm(c: &Common, n: usize, backlog: usize) -> anyhow::Result<()> {
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
