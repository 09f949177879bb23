//! `locker-sim bench console`: the operations console (issue 12) in a real browser at fleet
//! size. Starts the gateway (a child `locker-gateway` process as the other benchmarks do, or
//! in this process with `--in-process`) and N real agents with the parcel world (sites of `--per-site`
//! cabinets, carriers, tokens) through the fleet simulator's own start code
//! ([`crate::fleet::launch`]), keeps the fleet's normal parcel activity running, waits until
//! every agent is online and drained, then drives headless Chromium through the shared harness
//! ([`crate::browser::Browser`]) and prints min / median / max over repeated runs of:
//!
//! - the fleet page (summary and first page of 50 sites rendered): cold (a fresh browser
//!   profile, from the login click), warm (full reloads of `#/fleet`) and in-app navigation;
//! - the fleet page filtered (`q`), a site page and a cabinet page (in-app navigation);
//! - live: an admin override (API call with a reason) until the cabinet page's tile shows the
//!   door open, without a reload; a cabinet cut off until the fleet page counts it offline;
//! - server side: `GET /v1/fleet/summary` and `GET /v1/fleet/sites?limit=50` latency.
//!
//! How the page times are taken: in the page, with `performance.now()`. A navigation starts at
//! the click / hash change (or, for a reload, at the document's navigation start,
//! `performance.timeOrigin`), and ends at the first animation frame after a `MutationObserver`
//! saw the content in the DOM. The live figures are taken on the harness side: from just
//! before the API call (or the link cut) until the page's observer reports the change.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::cpu::CpuSpan;
use crate::browser::{Browser, BrowserError};
use crate::fleet::api::{Api, ApiError};
use crate::fleet::gateway::GatewayRunner;
use crate::fleet::{self, Fleet, FleetError, FleetOptions, GatewayMode};

const TOKEN: &str = "bench-token-0123456789abcdef";
/// The fleet page's page size (`gateway/console/assets/js/pages/fleet.js`).
const PAGE: usize = 50;

/// Why the console benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleBenchError {
    #[error("fleet: {0}")]
    Fleet(#[from] FleetError),
    #[error("browser: {0}")]
    Browser(#[from] BrowserError),
    #[error("API: {0}")]
    Api(#[from] ApiError),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Setup(String),
}

/// Options of `locker-sim bench console`.
#[derive(Debug, Clone, clap::Args)]
pub struct ConsoleArgs {
    /// State directory (PKI reused across runs; the agents' and gateway's data made fresh).
    #[arg(long, default_value = "state/bench")]
    pub state: PathBuf,
    /// Cabinets (each a real agent with its simulated lock board and charger).
    #[arg(long, default_value_t = 10_000)]
    pub cabinets: usize,
    /// Cabinets per site.
    #[arg(long, default_value_t = 10)]
    pub per_site: usize,
    /// The fleet's parcel activity while measuring: scenarios (order, deposit, pickup) per
    /// cabinet per minute, as `fleet --activity`.
    #[arg(long, default_value_t = 1.0)]
    pub activity: f64,
    /// Repetitions of each warm measurement (reloads, navigations, live updates).
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Cold fleet-page loads, each in a fresh browser profile.
    #[arg(long, default_value_t = 3)]
    pub cold_runs: usize,
    /// Calls of each fleet API route for the server-side latency.
    #[arg(long, default_value_t = 50)]
    pub api_calls: usize,
    /// Save a screenshot of the fleet page (1280x900) here.
    #[arg(long)]
    pub screenshot: Option<PathBuf>,
    /// The `locker-gateway` binary run as a child process, as the other benchmarks do
    /// (default: next to this executable). A child keeps the gateway's file descriptors out of
    /// this process: 10,000 cabinets in one process would need two each.
    #[arg(long)]
    pub gateway_bin: Option<PathBuf>,
    /// Run the gateway in this process instead (as `demo` does; up to ~9,000 cabinets with
    /// 20,000 open files).
    #[arg(long, conflicts_with = "gateway_bin")]
    pub in_process: bool,
}

/// Min, median and max of repeated runs, in milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Spread {
    pub n: usize,
    pub min: f64,
    pub median: f64,
    pub max: f64,
}

impl Spread {
    /// Of `ms`; `None` when empty.
    pub fn of(ms: &[f64]) -> Option<Self> {
        let mut v: Vec<f64> = ms.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let mid = v.len() / 2;
        let median = if v.len().is_multiple_of(2) {
            (v[mid - 1] + v[mid]) / 2.0
        } else {
            v[mid]
        };
        Some(Self {
            n: v.len(),
            min: v[0],
            median,
            max: v[v.len() - 1],
        })
    }
}

impl std::fmt::Display for Spread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "min {:.0} ms, median {:.0} ms, max {:.0} ms (n={})",
            self.min, self.median, self.max, self.n
        )
    }
}

fn report(what: &str, ms: &[f64]) {
    match Spread::of(ms) {
        Some(s) => println!("{what}: {s}"),
        None => println!("{what}: no run completed"),
    }
}

/// The page-side wait: resolves (the async script's callback) with `performance.now()` minus
/// the start, at the first animation frame after the content is in the DOM. Arguments:
/// hash to navigate to (null: measure from the navigation start of this document), the kind
/// of content, its parameter.
const WAIT_RENDERED: &str = r#"
const [hash, kind, arg, done] = arguments;
const t0 = hash === null ? 0 : performance.now();
function ready() {
  if (kind === "fleet") {
    const v = document.querySelector("[data-test=fleet-sites-value]");
    const rows = document.querySelectorAll("[data-test=site-row]");
    if (!v || !rows.length) return false;
    if (arg) for (const r of rows) if (!(r.dataset.site || "").includes(arg)) return false;
    return true;
  }
  if (kind === "site") return document.querySelectorAll("[data-test=cabinet-row]").length >= arg;
  if (kind === "cabinet") return !!document.querySelector(`[data-test=compartment-${arg}]`);
  return false;
}
let finished = false;
const obs = new MutationObserver(check);
function check() {
  if (finished || !ready()) return;
  finished = true;
  obs.disconnect();
  requestAnimationFrame(() => done(performance.now() - t0));
}
obs.observe(document, { childList: true, subtree: true, attributes: true, characterData: true });
if (hash !== null) location.hash = hash;
check();
"#;

/// What the fleet looks like to the benchmark.
struct Run<'a> {
    base: String,
    fleet: &'a Fleet,
    gateway: &'a GatewayRunner,
    api: Api,
    args: &'a ConsoleArgs,
}

/// Runs the benchmark.
pub async fn run(args: &ConsoleArgs) -> Result<(), ConsoleBenchError> {
    let n = args.cabinets.max(1);
    let pki = args.state.join("pki");
    let name = "console";
    let _ = std::fs::remove_dir_all(args.state.join(name));
    let mode = if args.in_process {
        GatewayMode::InProcess
    } else {
        GatewayMode::Child {
            bin: args
                .gateway_bin
                .clone()
                .unwrap_or_else(crate::fleet::gateway::default_gateway_bin),
        }
    };
    let opts = FleetOptions {
        cabinets: n,
        state_dir: args.state.join(name),
        ramp: Duration::from_secs_f64((n as f64 / 500.0).max(2.0)),
        activity_per_min: args.activity,
        outage_share: 0.0,
        restart_at: None,
        nightfall_at: None,
        cabinets_per_site: args.per_site.max(1),
        ..FleetOptions::default()
    };
    let t = Instant::now();
    println!("preparing {n} cabinets in sites of {} ...", args.per_site);
    let l = fleet::launch(opts, &pki, mode, TOKEN).await?;
    println!(
        "gateway: api http://{} ({}); certificates, parcel world ({} sites) and hardware ready in {:.1} s",
        l.gateway.api,
        if l.gateway.pid().is_some() {
            "child process"
        } else {
            "in this process"
        },
        l.fleet.ctx.world.sites.len(),
        t.elapsed().as_secs_f64()
    );
    let cpu = CpuSpan::start(l.gateway.pid());
    l.fleet.ramp_up().await?;
    let up = wait_until(Duration::from_secs(300), || {
        l.fleet.snapshot().connected == n
    })
    .await;
    let drained = wait_until(Duration::from_secs(120), || l.fleet.snapshot().outbox == 0).await;
    println!(
        "{} of {n} agents connected {:.1} s after the ramp started (outboxes drained: {}); {}",
        l.fleet.snapshot().connected,
        t.elapsed().as_secs_f64(),
        drained,
        cpu.stop(l.gateway.pid())
    );
    if !up {
        tracing::warn!("not every agent connected; measuring anyway");
    }
    let r = Run {
        base: format!("http://{}", l.gateway.api),
        fleet: &l.fleet,
        gateway: &l.gateway,
        api: l.fleet.ctx.api.clone(),
        args,
    };
    // the fleet's normal traffic, as in `fleet` and `bench unlock`: scenarios every 100 ms
    let traffic = async {
        let (mut carry, mut last) = (0.0, Instant::now());
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = Instant::now();
            l.fleet.tick(now - last, &mut carry);
            last = now;
        }
    };
    let result = tokio::select! {
        r = r.measure() => r,
        () = traffic => Ok(()),
    };
    println!("activity: {}", l.fleet.ctx.stats);
    l.fleet.shutdown().await;
    l.gateway.stop().await;
    result
}

async fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn as_ms(v: &Value) -> Result<f64, ConsoleBenchError> {
    v.as_f64()
        .ok_or_else(|| ConsoleBenchError::Setup(format!("page returned {v} instead of a time")))
}

impl Run<'_> {
    async fn measure(&self) -> Result<(), ConsoleBenchError> {
        let runs = self.args.runs.max(1);
        // the fleet as the API sees it before the browser looks
        let s = self.api.get("/v1/fleet/summary").await?;
        println!(
            "fleet summary: {} sites, {} cabinets, {} online, {} offline",
            s["sites"], s["cabinets"], s["online"], s["offline"]
        );
        self.server_side().await?;

        // cold: a fresh profile each time, from the login click to the fleet page rendered
        let mut cold = Vec::new();
        for _ in 0..self.args.cold_runs {
            let b = Browser::try_start().await?;
            b.try_goto(&format!("{}/console/#/login", self.base))
                .await?;
            b.try_fill("[data-test=login-token]", TOKEN).await?;
            let v = b
                .try_eval_async(
                    r#"const done = arguments[arguments.length - 1];
                       const t0 = performance.now();
                       const rendered = () => document.querySelector("[data-test=fleet-sites-value]")
                           && document.querySelector("[data-test=site-row]");
                       const obs = new MutationObserver(() => {
                         if (!rendered()) return;
                         obs.disconnect();
                         requestAnimationFrame(() => done(performance.now() - t0));
                       });
                       obs.observe(document, { childList: true, subtree: true, attributes: true });
                       document.querySelector("[data-test=login-submit]").click();"#,
                    vec![],
                )
                .await?;
            cold.push(as_ms(&v)?);
            b.close().await;
        }
        report(
            "fleet page, cold (fresh browser profile: login click until the summary and the first 50 sites are rendered)",
            &cold,
        );

        let b = Browser::try_start().await?;
        b.try_login(&self.base, TOKEN).await?;
        self.render(&b, None, "fleet", json!(null)).await?;
        // warm: full reloads of the fleet page (assets revalidated, session checked)
        let mut warm = Vec::new();
        for _ in 0..runs {
            b.client
                .refresh()
                .await
                .map_err(|e| ConsoleBenchError::Setup(format!("reload: {e}")))?;
            warm.push(self.render(&b, None, "fleet", json!(null)).await?);
        }
        report(
            "fleet page, warm (full reload of /console/#/fleet: navigation start until the summary and the first 50 sites are rendered)",
            &warm,
        );
        if let Some(path) = &self.args.screenshot {
            b.try_screenshot(path).await?;
            println!("screenshot of the fleet page: {}", path.display());
        }
        let mut nav = Vec::new();
        for _ in 0..runs {
            self.away(&b).await?;
            nav.push(
                self.render(&b, Some("#/fleet"), "fleet", json!(null))
                    .await?,
            );
        }
        report(
            "fleet page, in-app navigation (hash change until the summary and the first 50 sites are rendered)",
            &nav,
        );

        // filtered, site and cabinet pages: in-app navigations, a different one each run
        let sites = &self.fleet.ctx.world.sites;
        let mut filtered = Vec::new();
        let mut site_ms = Vec::new();
        let mut cabinet_ms = Vec::new();
        let locks = self.fleet.opts.locks;
        for k in 0..runs {
            let site = &sites[(k * 97 + 13) % sites.len()];
            // a filter matching about ten sites: the site id without its last digit
            let q: String = site
                .id
                .chars()
                .take(site.id.len().saturating_sub(1))
                .collect();
            self.away(&b).await?;
            filtered.push(
                self.render(&b, Some(&format!("#/fleet?q={q}")), "fleet", json!(q))
                    .await?,
            );
            self.away(&b).await?;
            site_ms.push(
                self.render(
                    &b,
                    Some(&format!("#/sites/{}", site.id)),
                    "site",
                    json!(site.cabinets.len()),
                )
                .await?,
            );
            let cab = &self.fleet.cabinets[site.cabinets.first().copied().unwrap_or(0)];
            self.away(&b).await?;
            cabinet_ms.push(
                self.render(
                    &b,
                    Some(&format!("#/cabinets/{}", cab.id)),
                    "cabinet",
                    json!(locks),
                )
                .await?,
            );
        }
        report(
            "fleet page filtered (q = a site id prefix, ~10 sites)",
            &filtered,
        );
        report(
            &format!("site page ({} cabinets)", self.args.per_site),
            &site_ms,
        );
        report(&format!("cabinet page ({locks} compartments)"), &cabinet_ms);

        // a live measurement that fails is reported, the others still run
        if let Err(e) = self.live_door(&b, runs).await {
            println!("live door: FAILED: {e}");
        }
        if let Err(e) = self.live_offline(&b, runs.min(3)).await {
            println!("live offline: FAILED: {e}");
        }
        b.close().await;
        Ok(())
    }

    /// Navigates to a light page that shows none of the measured content (so the next
    /// measurement cannot see the previous page's).
    async fn away(&self, b: &Browser) -> Result<(), BrowserError> {
        b.try_eval("location.hash = '#/webhooks';", vec![]).await?;
        b.try_poll(
            "the measured pages gone",
            "return location.hash === '#/webhooks'
                 && !document.querySelector('[data-test=site-row],[data-test=cabinet-row],[data-test=compartment-1]');",
            vec![],
        )
        .await
        .map(drop)
    }

    /// Navigates to `hash` (or measures this document's load) and returns the in-page time
    /// until `kind` is rendered.
    async fn render(
        &self,
        b: &Browser,
        hash: Option<&str>,
        kind: &str,
        arg: Value,
    ) -> Result<f64, ConsoleBenchError> {
        let v = b
            .try_eval_async(WAIT_RENDERED, vec![json!(hash), json!(kind), arg])
            .await?;
        as_ms(&v)
    }

    /// `GET /v1/fleet/summary` and `GET /v1/fleet/sites?limit=50` as an integrator calls them.
    async fn server_side(&self) -> Result<(), ConsoleBenchError> {
        for path in [
            "/v1/fleet/summary".to_owned(),
            format!("/v1/fleet/sites?limit={PAGE}"),
        ] {
            let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
                .map_err(|e| ConsoleBenchError::Setup(e.to_string()))?;
            for _ in 0..self.args.api_calls.max(1) {
                let t = Instant::now();
                self.api.get(&path).await?;
                let us = u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX);
                let _ = h.record(us.max(1));
            }
            println!("server side GET {path}: {}", super::Percentiles::of(&h));
        }
        Ok(())
    }

    /// Admin override through the API until the cabinet page shows the door open.
    async fn live_door(&self, b: &Browser, runs: usize) -> Result<(), ConsoleBenchError> {
        let mut times = Vec::new();
        let mut reloaded = false;
        let n = self.fleet.cabinets.len();
        for k in 0..runs {
            let cab = &self.fleet.cabinets[(k * 1_009 + 501) % n];
            // no scenario at this cabinet while we open one of its doors
            if !wait_until(Duration::from_secs(30), || cab.try_claim()).await {
                return Err(ConsoleBenchError::Setup(format!("{} stays busy", cab.id)));
            }
            let r = self.door_once(b, cab.id.as_str()).await;
            cab.release();
            let (t, same_page) = r?;
            reloaded |= !same_page;
            times.push(t);
        }
        report(
            "live: admin override API call until the cabinet page's tile shows the door open (harness side, includes the agent)",
            &times,
        );
        println!("  page reloaded during the live runs: {reloaded}");
        Ok(())
    }

    async fn door_once(&self, b: &Browser, cab: &str) -> Result<(f64, bool), ConsoleBenchError> {
        let list = self
            .api
            .get(&format!("/v1/cabinets/{cab}/compartments"))
            .await?;
        let free = list["compartments"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["status"] == "free")
            .filter_map(|c| c["id"].as_u64())
            .max()
            .ok_or_else(|| ConsoleBenchError::Setup(format!("{cab}: no free compartment")))?;
        self.away(b).await?;
        self.render(
            b,
            Some(&format!("#/cabinets/{cab}")),
            "cabinet",
            json!(self.fleet.opts.locks),
        )
        .await?;
        b.try_wait_attr("[data-test=live]", "data-state", "live")
            .await?;
        let tile = format!("[data-test=compartment-{free}]");
        // a compartment never opened shows its door as "unknown": anything but open will do
        b.try_poll(
            &format!("{tile} not open"),
            "const e = document.querySelector(arguments[0]);
             return !!e && e.getAttribute('data-door') !== 'open';",
            vec![json!(tile)],
        )
        .await?;
        b.try_eval(
            r#"window.__lkMarker = "still-here";
               const sel = arguments[0];
               window.__lkDoor = new Promise((resolve) => {
                 const open = () => document.querySelector(sel)?.getAttribute("data-door") === "open";
                 const obs = new MutationObserver(() => {
                   if (!open()) return;
                   obs.disconnect();
                   requestAnimationFrame(() => resolve(true));
                 });
                 obs.observe(document, { childList: true, subtree: true, attributes: true });
               });"#,
            vec![json!(tile)],
        )
        .await?;
        let t = Instant::now();
        self.api
            .post(
                &format!("/v1/cabinets/{cab}/compartments/{free}/open"),
                &json!({"reason": "console benchmark: live door"}),
                None,
            )
            .await?;
        b.try_eval_async(
            "const done = arguments[arguments.length - 1]; window.__lkDoor.then(done);",
            vec![],
        )
        .await?;
        let elapsed = ms(t.elapsed());
        let same = b
            .try_eval("return window.__lkMarker === 'still-here';", vec![])
            .await?
            == json!(true);
        Ok((elapsed, same))
    }

    /// A cabinet's link cut (the gateway sees it go) until the fleet page counts it offline.
    async fn live_offline(&self, b: &Browser, runs: usize) -> Result<(), ConsoleBenchError> {
        let mut times = Vec::new();
        let n = self.fleet.cabinets.len();
        self.away(b).await?;
        self.render(b, Some("#/fleet"), "fleet", json!(null))
            .await?;
        b.try_wait_attr("[data-test=live]", "data-state", "live")
            .await?;
        b.try_eval("window.__lkMarker = 'still-here';", vec![])
            .await?;
        let offline_js = "const e = document.querySelector('[data-test=fleet-offline-value]');
                          const n = e ? parseInt(e.textContent.replace(/\\D/g, ''), 10) : NaN;
                          return Number.isNaN(n) ? 0 : n;";
        for k in 0..runs {
            let cab = &self.fleet.cabinets[(k * 2_003 + 7) % n];
            let before = b.try_eval(offline_js, vec![]).await?.as_u64().unwrap_or(0);
            let t = Instant::now();
            cab.link.set_down(true);
            if !self.gateway.disconnect(&cab.id).await {
                // a child gateway: the agent's connection is cut by restarting it
                let _ = cab.start().await;
            }
            // polled from the harness (every 50 ms): the page may take seconds to refetch
            let seen = b
                .try_poll(
                    "the fleet page counting the cabinet offline",
                    &format!(
                        "const count = () => {{ {offline_js} }}; return count() > arguments[0];"
                    ),
                    vec![json!(before)],
                )
                .await;
            if seen.is_err() {
                let s = self.api.get("/v1/fleet/summary").await?;
                println!(
                    "  {} not seen offline on the page; API summary offline {}, agent connected {:?}, page shows {}",
                    cab.id,
                    s["offline"],
                    cab.brief().map(|b| b.0),
                    b.try_eval(offline_js, vec![]).await?
                );
            }
            let elapsed = ms(t.elapsed());
            cab.link.set_down(false);
            seen?;
            times.push(elapsed);
            // back online, and counted so on the page, before the next run
            wait_until(Duration::from_secs(60), || {
                cab.brief().is_some_and(|(connected, ..)| connected)
            })
            .await;
            b.try_poll(
                "the fleet page counting the cabinet online again",
                &format!("const count = () => {{ {offline_js} }}; return count() <= arguments[0];"),
                vec![json!(before)],
            )
            .await?;
        }
        let same = b
            .try_eval("return window.__lkMarker === 'still-here';", vec![])
            .await?
            == json!(true);
        report(
            "live: a cabinet's link cut until the fleet page counts it offline (harness side, polled every 50 ms)",
            &times,
        );
        println!("  fleet page stayed the same document (no reload): {same}");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Spread;

    #[test]
    fn spread_is_min_median_max() {
        assert_eq!(Spread::of(&[]), None);
        let s = Spread::of(&[30.0, 10.0, 20.0]).expect("spread");
        assert_eq!((s.min, s.median, s.max, s.n), (10.0, 20.0, 30.0, 3));
        let s = Spread::of(&[4.0, 1.0, 3.0, 2.0]).expect("spread");
        assert_eq!(s.median, 2.5);
    }
}
