//! The live summary of a fleet run, shared by `fleet` and `demo`: an indicatif status line block
//! refreshed every second when standard output and error are a terminal (otherwise a plain
//! line on standard output every 5 s, no colour, no cursor movement) with cabinets online,
//! events per second (from the gateway's metrics), commands and outcomes, alarms, outbox backlog,
//! webhooks (received by the fleet's receiver, redelivered, refused, bad signatures, pending at
//! the gateway), the rules engine's active alerts by kind (`locker_alerts_active`) with the newest alerts as
//! they are raised and cleared (`GET /v1/alerts?state=all`), and the last things the script
//! did.

use std::io::IsTerminal as _;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use locker_sim::fleet::alerts::newest_alerts;
use locker_sim::fleet::api::{metric_sum, metric_with, Api};
use locker_sim::fleet::gateway::GatewayRunner;
use locker_sim::fleet::nodes::Gateways;
use locker_sim::fleet::script::Happening;
use locker_sim::fleet::Fleet;

/// What the gateway's /metrics said last.
#[derive(Debug, Default, Clone)]
pub struct GatewayView {
    pub events_total: f64,
    pub events_per_s: f64,
    pub online: f64,
    pub outcomes: Vec<(String, f64)>,
    pub pending: f64,
    pub reachable: bool,
    /// Active alerts by kind (`locker_alerts_active`, summed over severities).
    pub alerts_active: Vec<(String, f64)>,
    /// The newest alert changes, newest last: `raised CAB-000003 offline: offline for 0.2 min`.
    pub alert_news: Vec<String>,
    /// Webhook deliveries waiting at the gateway (`locker_outbound_pending`, all targets).
    pub webhooks_pending: f64,
}

/// Alert changes kept for the display.
const NEWS: usize = 4;

/// `locker_alerts_active` by kind, summed over severities, non-zero only.
fn active_by_kind(text: &str) -> Vec<(String, f64)> {
    let mut by: std::collections::BTreeMap<String, f64> = std::collections::BTreeMap::new();
    for l in text
        .lines()
        .filter(|l| l.starts_with("locker_alerts_active{"))
    {
        let Some((key, value)) = l.rsplit_once(' ') else {
            continue;
        };
        let kind = key
            .split_once("kind=\"")
            .and_then(|(_, r)| r.split_once('"'))
            .map(|(k, _)| k.to_owned());
        if let (Some(k), Ok(v)) = (kind, value.parse::<f64>()) {
            *by.entry(k).or_default() += v;
        }
    }
    by.into_iter().filter(|(_, n)| *n > 0.0).collect()
}

/// Polls the gateway's /metrics every second in the background.
pub fn poll_metrics(api: Api) -> (Arc<Mutex<GatewayView>>, tokio::task::JoinHandle<()>) {
    let view = Arc::new(Mutex::new(GatewayView::default()));
    let v = view.clone();
    let task = tokio::spawn(async move {
        let mut last: Option<(Instant, f64)> = None;
        // alert id -> cleared, as last seen (`None` until the first poll: old alerts are not news)
        let mut seen: Option<std::collections::HashMap<String, bool>> = None;
        loop {
            if let Ok(list) = newest_alerts(&api, 50).await {
                let mut news = Vec::new();
                let known = seen.get_or_insert_with(|| {
                    list.iter()
                        .map(|a| (a.id.clone(), a.cleared_at.is_some()))
                        .collect()
                });
                // oldest first, so the news read in order
                for a in list.iter().rev() {
                    let cleared = a.cleared_at.is_some();
                    if known.insert(a.id.clone(), cleared) != Some(cleared) {
                        let what = if cleared { "cleared" } else { "raised " };
                        news.push(format!("{what} {} {}: {}", a.cabinet, a.kind, a.detail));
                    }
                }
                // an alert that fell off the newest page never comes back to it
                let ids: std::collections::HashSet<&str> =
                    list.iter().map(|a| a.id.as_str()).collect();
                known.retain(|id, _| ids.contains(id.as_str()));
                let mut g = v.lock().unwrap_or_else(PoisonError::into_inner);
                g.alert_news.extend(news);
                let n = g.alert_news.len();
                g.alert_news.drain(..n.saturating_sub(NEWS));
            }
            let m = api.metrics().await;
            {
                let mut g = v.lock().unwrap_or_else(PoisonError::into_inner);
                match m {
                    Ok(text) => {
                        let total = metric_sum(&text, "locker_ingest_events_total");
                        let now = Instant::now();
                        if let Some((t, prev)) = last {
                            let dt = now.duration_since(t).as_secs_f64().max(0.001);
                            // A restarted gateway starts its counters again from 0.
                            g.events_per_s = ((total - prev).max(0.0)) / dt;
                        }
                        last = Some((now, total));
                        g.events_total = total;
                        g.online = metric_sum(&text, "locker_cabinets_online");
                        g.pending = metric_sum(&text, "locker_commands_pending");
                        g.outcomes = [
                            "opened",
                            "already_open",
                            "jammed",
                            "rejected",
                            "expired",
                            "cancelled",
                        ]
                        .iter()
                        .map(|o| {
                            (
                                (*o).to_owned(),
                                metric_with(
                                    &text,
                                    "locker_commands_outcomes_total",
                                    &format!("outcome=\"{o}\""),
                                ),
                            )
                        })
                        .filter(|(_, n)| *n > 0.0)
                        .collect();
                        g.alerts_active = active_by_kind(&text);
                        g.webhooks_pending = metric_sum(&text, "locker_outbound_pending");
                        g.reachable = true;
                    }
                    Err(_) => {
                        g.reachable = false;
                        g.events_per_s = 0.0;
                        last = None;
                    }
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    (view, task)
}

/// The display.
pub struct Live {
    bar: Option<ProgressBar>,
    started: Instant,
    last_plain: Instant,
    view: Arc<Mutex<GatewayView>>,
}

impl Live {
    /// A display reading gateway figures from `view`.
    pub fn new(view: Arc<Mutex<GatewayView>>) -> Self {
        let terminal = std::io::stdout().is_terminal() && std::io::stderr().is_terminal();
        let bar = terminal.then(|| {
            let b = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(2));
            b.set_style(
                ProgressStyle::with_template("{spinner} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            b.enable_steady_tick(Duration::from_millis(250));
            b
        });
        Self {
            bar,
            started: Instant::now(),
            last_plain: Instant::now(),
            view,
        }
    }

    /// Prints a line above the live block.
    pub fn println(&self, line: &str) {
        match &self.bar {
            Some(b) => b.println(line),
            None => println!("{line}"),
        }
    }

    /// Refreshes from the fleet, the gateway and the script's log.
    pub fn update(&mut self, fleet: &Fleet, gw: &Gateways, log: &[Happening]) {
        let s = fleet.snapshot();
        let g = self
            .view
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let outcomes: Vec<String> = g
            .outcomes
            .iter()
            .map(|(k, n)| format!("{k} {n:.0}"))
            .collect();
        let alerts: Vec<String> = g
            .alerts_active
            .iter()
            .map(|(k, n)| format!("{k} {n:.0}"))
            .collect();
        let news: String = g
            .alert_news
            .iter()
            .map(|l| format!("\n    alert {l}"))
            .collect();
        let last: Vec<String> = log
            .iter()
            .rev()
            .take(3)
            .rev()
            .map(|h| format!("    [{:>5.1}s] {}", h.at.as_secs_f64(), h.what))
            .collect();
        let hooks = match s.webhooks {
            Some(h) => format!(
                "\n  webhooks received {}  redelivered {}  refused while down {}  bad signatures {}  pending at the gateway {:.0}",
                h.unique, h.duplicates, h.refused_down, h.bad_signatures, g.webhooks_pending
            ),
            None => String::new(),
        };
        let hooks = match s.sms {
            Some(n) => format!("{hooks}\n  notifications delivered to the SMS provider {n}"),
            None => hooks,
        };
        let msg = format!(
            "t={:.0}s  cabinets {}  connected {}  (gateway sees {:.0} online{})  links cut {}\n  \
             events stored {:.0}  ({:.0}/s)  outbox backlog {}\n  \
             deliveries {}  pickups {}  API unlocks {} -> outcomes [{}]  pending {:.0}\n  \
             active alarms {}  gateway restarts {}{}\n  \
             alerts active {}{}{}\n{}",
            self.started.elapsed().as_secs_f64(),
            s.cabinets,
            s.connected,
            g.online,
            if g.reachable { "" } else { ", gateway DOWN" },
            s.links_down,
            g.events_total,
            g.events_per_s,
            s.outbox,
            s.deposits,
            s.pickups,
            s.commands,
            outcomes.join(", "),
            g.pending,
            s.alarms,
            // (a cluster: every node's restarts)
            gw.nodes().map(GatewayRunner::restarts).sum::<u32>(),
            hooks,
            g.alerts_active.iter().map(|(_, n)| *n as u64).sum::<u64>(),
            if alerts.is_empty() {
                String::new()
            } else {
                format!(" ({})", alerts.join(", "))
            },
            news,
            last.join("\n"),
        );
        match &self.bar {
            Some(b) => b.set_message(msg),
            None => {
                if self.last_plain.elapsed() >= Duration::from_secs(5) {
                    self.last_plain = Instant::now();
                    println!("{}", msg.replace('\n', " |"));
                }
            }
        }
    }

    /// Removes the live block.
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
