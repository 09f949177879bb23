//! `locker-sim bench webhooks`: webhook deliveries per second to a local receiver, and what the
//! outbox adds to an event's latency.
//!
//! For each subscription count (default 1, then 4) a fresh gateway runs in this process (its
//! outbox as configured by `--poll-ms` and `--concurrency`, `allow_http` for the receiver) with
//! a site of light cabinets (mTLS, hello, then idle; see [`super::orders`]). The receiver
//! ([`crate::fleet::hooks::HookReceiver`], one endpoint per subscription, each subscribed to
//! `order.*`, signatures verified with the `standardwebhooks` crate) is started, then N API
//! clients produce order transitions as fast as the API takes them: a carrier creates an order
//! (reserved at a cabinet) and cancels it (cancelled). Once the trail's every order
//! event reached every endpoint, the run prints:
//! - deliveries per second: events received (after dedup) over all endpoints, divided by the
//!   time from the first order to the last receipt; and the rate the API produced transitions;
//! - the outbox's added latency, from the event's `at` (when the parcel domain committed it)
//!   to its receipt: p50/p99/max over every delivery (ms resolution: `at` is in ms), and the
//!   gateway's own `locker_outbound_delay_seconds` histogram (bucket bounds, and its mean);
//! - that every endpoint received every event once, in order per cabinet, with no bad
//!   signature ([`crate::fleet::hooks::check_webhooks`]).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use locker_schemas::CabinetId;
use serde_json::json;

use super::orders::{
    bench_gateway_config, connect_and_hello, hold, metrics_text, site_id, wait_compartments, Http,
    CARRIERS,
};
use super::BenchError;
use crate::fleet::alerts::now_ms;
use crate::fleet::api::{metric_sum, Api};
use crate::fleet::gateway::GatewayRunner;
use crate::fleet::hooks::{check_webhooks, trail_expectations, HookReceiver};
use crate::fleet::link::{FleetTls, LinkSwitch};
use crate::fleet::{self};

/// Options of `locker-sim bench webhooks`.
#[derive(Debug, Clone, clap::Args)]
pub struct WebhooksArgs {
    /// State directory (PKI reused across runs; gateway data made fresh per run).
    #[arg(long, default_value = "state/bench")]
    pub state: PathBuf,
    /// Subscription counts to measure, one run each (each subscription its own endpoint).
    #[arg(long, value_delimiter = ',', default_values_t = vec![1usize, 4])]
    pub subscriptions: Vec<usize>,
    /// Orders created and cancelled per run (two order events each: `order.reserved`, as an
    /// order with a free compartment is created reserved, and `order.cancelled`).
    #[arg(long, default_value_t = 2_000)]
    pub orders: usize,
    /// Concurrent API clients producing orders.
    #[arg(long, default_value_t = 8)]
    pub clients: usize,
    /// Light cabinets (events are ordered per cabinet: more cabinets, more parallel queues).
    #[arg(long, default_value_t = 50)]
    pub cabinets: usize,
    /// Compartments per light cabinet.
    #[arg(long, default_value_t = 24)]
    pub compartments: u16,
    /// The outbox's `webhooks.poll_ms`.
    #[arg(long, default_value_t = 100)]
    pub poll_ms: u64,
    /// The outbox's `webhooks.concurrency_per_endpoint`.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// How long to wait for the last deliveries after the last order, seconds.
    #[arg(long, default_value_t = 60)]
    pub drain_secs: u64,
}

/// The figures of one run.
#[derive(Debug, Clone)]
pub struct HooksRun {
    pub subscriptions: usize,
    /// Order events in the trail, and deliveries received over all endpoints (after dedup).
    pub events: u64,
    pub delivered: u64,
    pub produce_s: f64,
    pub deliver_s: f64,
    pub latency_p50_ms: u64,
    pub latency_p99_ms: u64,
    pub latency_max_ms: u64,
    pub violations: u64,
}

impl HooksRun {
    /// Deliveries per second (first order to last receipt).
    pub fn rate(&self) -> f64 {
        self.delivered as f64 / self.deliver_s.max(1e-9)
    }
}

/// Runs the benchmark and prints its figures.
pub async fn run(a: &WebhooksArgs) -> Result<Vec<HooksRun>, BenchError> {
    let n = a.cabinets.max(1);
    let pki = a.state.join("pki");
    let ids = fleet::cabinet_ids("WHK-", n).map_err(|e| BenchError::Setup(e.to_string()))?;
    let (p2, ids2) = (pki.clone(), ids.clone());
    let (ca, certs) = tokio::task::spawn_blocking(move || {
        fleet::prepare_pki(&p2, &ids2).map(|(p, c)| (p.ca_cert_der().to_vec(), c))
    })
    .await
    .map_err(|e| BenchError::Setup(e.to_string()))?
    .map_err(|e| BenchError::Setup(e.to_string()))?;
    let fleet_tls = FleetTls::new(&ca).map_err(|e| BenchError::Tls(e.to_string()))?;
    let mut out = Vec::new();
    for &subs in &a.subscriptions {
        let mut tls = Vec::with_capacity(n);
        for (cert, key) in &certs {
            tls.push(
                fleet_tls
                    .client_config(cert.clone(), key.clone(), LinkSwitch::default())
                    .map_err(|e| BenchError::Tls(e.to_string()))?,
            );
        }
        let dir = a.state.join("gw-webhooks");
        let _ = std::fs::remove_dir_all(&dir);
        let paths = locker_broker_config::pki::PkiPaths::new(&pki);
        let mut cfg = bench_gateway_config(&dir, &paths)?;
        cfg.webhooks.allow_http = true;
        cfg.webhooks.poll_ms = a.poll_ms.max(1);
        cfg.webhooks.concurrency_per_endpoint = a.concurrency.max(1);
        let gw = GatewayRunner::in_process(cfg, super::orders::OPERATOR)
            .await
            .map_err(|e| BenchError::Setup(format!("starting the gateway: {e}")))?;
        let r = measure(a, &gw, &ids, tls, subs.max(1)).await;
        gw.stop().await;
        out.push(r?);
    }
    Ok(out)
}

async fn measure(
    a: &WebhooksArgs,
    gw: &GatewayRunner,
    ids: &[CabinetId],
    tls: Vec<Arc<rustls::ClientConfig>>,
    subs: usize,
) -> Result<HooksRun, BenchError> {
    let http = Http::new(gw.api, a.clients)?;
    let put = reqwest::Method::PUT;
    for (carrier, _) in CARRIERS {
        http.ok(
            put.clone(),
            &format!("/v1/carriers/{carrier}"),
            json!({"name": carrier.to_uppercase()}),
        )
        .await?;
    }
    http.ok(
        put.clone(),
        &format!("/v1/sites/{}", site_id(0)),
        json!({"name": "Bench site", "time_zone": "Europe/Berlin", "cabinets": ids}),
    )
    .await?;
    let mut cabinets = tokio::task::JoinSet::new();
    for (id, tls) in ids.iter().zip(tls) {
        let (edge, id, comps) = (gw.edge, id.clone(), a.compartments);
        cabinets.spawn(async move {
            let r = match connect_and_hello(edge, tls, id.clone(), comps).await {
                Ok(s) => hold(s).await,
                Err(e) => Err(e),
            };
            if let Err(e) = r {
                tracing::warn!(cabinet = %id, error = %e, "light cabinet");
            }
        });
    }
    let total = ids.len() * usize::from(a.compartments);
    let known = wait_compartments(&http, 1, total, Duration::from_secs(120)).await?;
    if known < total {
        return Err(BenchError::Setup(format!(
            "only {known} of {total} compartments known"
        )));
    }
    let api = Api::new(gw.api, super::orders::OPERATOR);
    let receiver = HookReceiver::start(subs)
        .await
        .map_err(|e| BenchError::Setup(e.to_string()))?;
    let mut sub_ids = Vec::with_capacity(subs);
    for k in 0..subs {
        sub_ids.push(
            receiver
                .subscribe(&api, k, &["order.*"], &format!("bench {k}"))
                .await
                .map_err(|e| BenchError::Setup(e.to_string()))?,
        );
    }
    let (_, head) = trail_expectations(&api, 0)
        .await
        .map_err(|e| BenchError::Api(e.to_string()))?;

    // production: create and cancel, as fast as the API takes it
    let started = Instant::now();
    let started_ms = now_ms();
    let issued = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut clients = tokio::task::JoinSet::new();
    for c in 0..a.clients.max(1) {
        let (http, issued, failed) = (http.clone(), issued.clone(), failed.clone());
        let (carrier, token) = CARRIERS[c % CARRIERS.len()];
        let target = a.orders as u64;
        clients.spawn(async move {
            let mut seq = 0u64;
            while issued.fetch_add(1, Ordering::Relaxed) < target {
                seq += 1;
                let body = json!({"site": site_id(0), "size": "S",
                    "tracking": format!("{carrier}-wh-{c}-{seq}"),
                    "recipient": {"phone": "+4915100000000", "language": "de"}});
                let id = match http
                    .call(reqwest::Method::POST, token, "/v1/orders", Some(body))
                    .await
                {
                    Ok((200 | 201, v)) => v["id"].as_str().map(str::to_owned),
                    _ => None,
                };
                let Some(id) = id else {
                    failed.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let path = format!("/v1/orders/{id}/cancel");
                match http
                    .call(reqwest::Method::POST, token, &path, Some(json!({})))
                    .await
                {
                    Ok((200..=299, _)) => {}
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
    }
    while clients.join_next().await.is_some() {}
    let produce_s = started.elapsed().as_secs_f64();
    let (expected, _) = trail_expectations(&api, head)
        .await
        .map_err(|e| BenchError::Api(e.to_string()))?;
    let events = expected.len() as u64;
    let want = events * subs as u64;
    let deadline = Instant::now() + Duration::from_secs(a.drain_secs);
    while receiver.total().unique < want && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // the last receipt, from the receiver's own clock
    let last_ms = (0..subs)
        .flat_map(|k| receiver.sequences(k).into_values().flatten())
        .map(|r| r.received_ms)
        .max()
        .unwrap_or(started_ms);
    let deliver_s = (last_ms.saturating_sub(started_ms)) as f64 / 1000.0;
    let counts = receiver.total();
    let mut problems = Vec::new();
    for (k, id) in sub_ids.iter().enumerate() {
        let pending = match api.get(&format!("/v1/webhooks/{id}")).await {
            Ok(v) => {
                v["health"]["pending"].as_u64().unwrap_or(0)
                    + v["health"]["in_flight"].as_u64().unwrap_or(0)
            }
            Err(e) => {
                problems.push(format!("subscription {id}: {e}"));
                0
            }
        };
        check_webhooks(
            &expected,
            &receiver.received(k),
            &receiver.sequences(k),
            receiver.counts(k),
            pending,
            |p| problems.push(p),
        );
    }
    let lat = receiver.latency_ms();
    let q = |x: f64| lat.as_ref().map_or(0, |h| h.value_at_quantile(x));
    let r = HooksRun {
        subscriptions: subs,
        events,
        delivered: counts.unique,
        produce_s,
        deliver_s,
        latency_p50_ms: q(0.5),
        latency_p99_ms: q(0.99),
        latency_max_ms: lat.as_ref().map_or(0, |h| h.max()),
        violations: problems.len() as u64,
    };
    println!(
        "{subs} subscription(s), poll_ms {}, concurrency_per_endpoint {}: {} orders created and cancelled by {} clients ({} failed calls) in {:.2} s = {:.0} order events/s produced",
        a.poll_ms,
        a.concurrency,
        a.orders,
        a.clients,
        failed.load(Ordering::Relaxed),
        produce_s,
        events as f64 / produce_s.max(1e-9)
    );
    println!(
        "  delivered {} of {} ({} events x {subs}) in {:.2} s from the first order = {:.0} deliveries/s; {} requests, {} redeliveries, {} bad signatures",
        counts.unique,
        want,
        events,
        deliver_s,
        r.rate(),
        counts.requests,
        counts.duplicates,
        counts.bad_signatures
    );
    println!(
        "  outbox latency (event at -> receipt, every delivery): p50 {} ms, p99 {} ms, max {} ms",
        r.latency_p50_ms, r.latency_p99_ms, r.latency_max_ms
    );
    if let Ok(text) = metrics_text(&http).await {
        println!(
            "  gateway locker_outbound_delay_seconds: {}",
            delay_summary(&text)
        );
        println!(
            "  gateway: queued {:.0}, delivered {:.0}, failed attempts {:.0}",
            metric_sum(&text, "locker_outbound_queued_total"),
            metric_sum(&text, "locker_outbound_delivered_total"),
            metric_sum(&text, "locker_outbound_failed_total"),
        );
    }
    if problems.is_empty() {
        println!("  every endpoint got every order event once, in order per cabinet, signed");
    } else {
        println!("  {} VIOLATIONS:", problems.len());
        for p in problems.iter().take(10) {
            println!("    - {p}");
        }
    }
    cabinets.abort_all();
    Ok(r)
}

/// `locker_outbound_delay_seconds` from Prometheus text: the bucket bounds of p50 and p99, the
/// mean and the count.
pub fn delay_summary(text: &str) -> String {
    let name = "locker_outbound_delay_seconds";
    let mut buckets: Vec<(f64, f64)> = text
        .lines()
        .filter(|l| l.starts_with(&format!("{name}_bucket{{")))
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            let le = key.split_once("le=\"")?.1.split_once('"')?.0;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, value.parse().ok()?))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let count = metric_sum(text, &format!("{name}_count"));
    let sum = metric_sum(text, &format!("{name}_sum"));
    let bound = |q: f64| {
        buckets
            .iter()
            .find(|(_, c)| *c >= q * count)
            .map_or(f64::NAN, |(le, _)| *le)
    };
    let ms = |s: f64| {
        if s.is_finite() {
            format!("{:.0} ms", s * 1000.0)
        } else {
            "+Inf".into()
        }
    };
    format!(
        "p50 <= {}, p99 <= {}, mean {:.1} ms over {count:.0} deliveries",
        ms(bound(0.5)),
        ms(bound(0.99)),
        if count > 0.0 {
            sum / count * 1000.0
        } else {
            0.0
        }
    )
}
