//! The measured phases of `locker-sim bench orders`: N concurrent API clients alternating the
//! carrier tokens, each call timed, orders counted as reserved or waiting, a phase ending at
//! its target count (or, for the fill, when every carrier is refused at every site).

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use rand::Rng as _;
use serde_json::{json, Value};

use super::cpu::CpuSpan;
use super::orders::{site_id, Http, Phase, CARRIERS, MAX_FAILED_CALLS};
use super::{BenchError, Percentiles};

/// One call of a phase.
pub(super) enum Work {
    Single(&'static str),
    /// A batch of `n` orders of size S at one site.
    Batch(usize, usize),
    Done,
}

pub(super) struct Ctx {
    pub(super) http: Http,
    pub(super) sites: usize,
    pub(super) clients: usize,
}

/// What the clients of a phase share.
pub(super) struct Shared {
    hist: hdrhistogram::Histogram<u64>,
    calls: u64,
    failed: u64,
    orders: u64,
    reserved: u64,
    first_error: Option<String>,
    /// (carrier index, site) pairs found full.
    full: HashSet<(usize, usize)>,
}

impl Ctx {
    /// `count` single orders (or, for the fill, batches until every carrier's sites are full).
    pub(super) async fn phase(
        &self,
        name: &'static str,
        pid: Option<u32>,
        count: usize,
        work: impl Fn(usize, &mut rand::rngs::ThreadRng, &Shared) -> Work + Send + Sync + 'static,
    ) -> Result<Phase, BenchError> {
        self.run(name, pid, Some(count), Arc::new(work)).await
    }

    pub(super) async fn fill(&self, pid: Option<u32>, batch: usize) -> Result<Phase, BenchError> {
        let sites = self.sites;
        let work = move |client: usize, _: &mut rand::rngs::ThreadRng, s: &Shared| {
            let carrier = client % CARRIERS.len();
            // the next site this carrier has not found full, starting at the client's own
            (0..sites)
                .map(|k| (client / CARRIERS.len() + k) % sites)
                .find(|site| !s.full.contains(&(carrier, *site)))
                .map_or(Work::Done, |site| Work::Batch(batch, site))
        };
        self.run("batch (filling the sites)", pid, None, Arc::new(work))
            .await
    }

    #[allow(clippy::type_complexity)]
    async fn run(
        &self,
        name: &'static str,
        pid: Option<u32>,
        count: Option<usize>,
        work: Arc<dyn Fn(usize, &mut rand::rngs::ThreadRng, &Shared) -> Work + Send + Sync>,
    ) -> Result<Phase, BenchError> {
        let hist = hdrhistogram::Histogram::new_with_bounds(1, 600_000_000, 3)
            .map_err(|e| BenchError::Setup(e.to_string()))?;
        let shared = Arc::new(Mutex::new(Shared {
            hist,
            calls: 0,
            failed: 0,
            orders: 0,
            reserved: 0,
            first_error: None,
            full: HashSet::new(),
        }));
        let issued = Arc::new(AtomicUsize::new(0));
        let cpu = CpuSpan::start(pid);
        let start = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for client in 0..self.clients {
            let (http, shared, issued, work) = (
                self.http.clone(),
                shared.clone(),
                issued.clone(),
                work.clone(),
            );
            let sites = self.sites;
            tasks.spawn(async move {
                let (carrier, token) = CARRIERS[client % CARRIERS.len()];
                let mut seq = 0u64;
                loop {
                    let w = {
                        let s = shared.lock().unwrap_or_else(PoisonError::into_inner);
                        work(client, &mut rand::thread_rng(), &s)
                    };
                    if let Some(c) = count {
                        if issued.fetch_add(1, Ordering::Relaxed) >= c {
                            break;
                        }
                    }
                    let mut order = |size: &str, site: usize| {
                        seq += 1;
                        json!({"site": site_id(site), "size": size,
                               "tracking": format!("{carrier}-{name}-{client}-{seq}"),
                               "recipient": {"phone": "+4915100000000", "language": "de"}})
                    };
                    let (path, body, site) = match w {
                        Work::Done => break,
                        Work::Single(size) => {
                            let site = rand::thread_rng().gen_range(0..sites);
                            ("/v1/orders", order(size, site), site)
                        }
                        Work::Batch(k, site) => {
                            let orders: Vec<Value> = (0..k).map(|_| order("S", site)).collect();
                            ("/v1/orders/batch", json!({ "orders": orders }), site)
                        }
                    };
                    let t = Instant::now();
                    let r = http
                        .call(reqwest::Method::POST, token, path, Some(body))
                        .await;
                    let us = u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX);
                    let mut s = shared.lock().unwrap_or_else(PoisonError::into_inner);
                    let (ok, views) = match &r {
                        Ok((201 | 200, v)) if path == "/v1/orders" => (true, vec![v.clone()]),
                        Ok((200, v)) => (
                            true,
                            v["results"]
                                .as_array()
                                .into_iter()
                                .flatten()
                                .filter_map(|x| x.get("order").cloned())
                                .collect(),
                        ),
                        _ => (false, Vec::new()),
                    };
                    if !ok {
                        s.failed += 1;
                        if s.first_error.is_none() {
                            s.first_error = Some(match r {
                                Ok((st, v)) => format!("{st} {v}"),
                                Err(e) => e.to_string(),
                            });
                        }
                        if s.failed >= MAX_FAILED_CALLS {
                            break; // the phase is reported with its first error
                        }
                        continue;
                    }
                    s.calls += 1;
                    let _ = s.hist.record(us.max(1));
                    for v in views {
                        s.orders += 1;
                        if v["state"] == "reserved" {
                            s.reserved += 1;
                        } else {
                            s.full.insert((client % CARRIERS.len(), site));
                        }
                    }
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        let elapsed = start.elapsed();
        let cpu = cpu.stop(pid);
        let s = shared.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(Phase {
            name,
            calls: s.calls,
            failed_calls: s.failed,
            orders: s.orders,
            reserved: s.reserved,
            elapsed,
            latency: Percentiles::of(&s.hist),
            cpu,
            first_error: s.first_error.clone(),
        })
    }
}
