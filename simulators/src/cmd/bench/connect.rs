//! `bench connect`: N mTLS cabinets connect (TCP, TLS 1.3 with a client certificate, MQTT
//! CONNECT/CONNACK) and stay connected: time, handshakes per second and RSS per connection, of
//! the gateway and of Mosquitto.

use std::sync::Arc;
use std::time::{Duration, Instant};

use locker_sim::bench::cpu::CpuSpan;
use locker_sim::bench::mosquitto::Mosquitto;
use locker_sim::bench::mqtt::connect_hold;
use locker_sim::fleet::api::{metric_sum, Api};
use locker_sim::fleet::rss_kib;
use tokio::sync::Semaphore;

use super::{client_configs, fresh_gateway, Common, TOKEN};

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

pub(super) async fn connect(c: &Common, n: usize, concurrency: usize) -> anyhow::Result<()> {
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
