//! The timeline of a fleet run: activity ticks every 100 ms, then at their share of the run an
//! outage for part of the fleet (restored after its length), nightfall on the solar cabinets
//! and a gateway restart (the integrator's webhook receiver is down, answering 503, while the
//! outage lasts). Against a cluster ([`super::nodes::Gateways`]) the restart is a `kill -9` of
//! a non-domain gateway node (the last one), started again after
//! [`super::ClusterFaults::down_for`] (its agents reconnect to it: each agent knows one edge),
//! and at another moment a NATS server is killed the same way ([`super::ClusterFaults`]).
//! Every second the caller's observer sees the fleet and the log of what happened so far. What should raise alerts (the outage, each cabinet's reconnection after it,
//! restarts, nightfall) is written to the fleet's [`super::alerts::Timeline`].

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use super::alerts::now_ms;
use super::nodes::Gateways;
use super::Fleet;

/// One thing the script did, with the run time at which it happened.
#[derive(Debug, Clone)]
pub struct Happening {
    pub at: Duration,
    pub what: String,
}

/// Runs the script for `duration` (or until `stop` resolves). Returns what happened.
pub async fn run<S, O>(
    fleet: &Fleet,
    gw: &mut Gateways,
    duration: Duration,
    stop: S,
    mut observe: O,
) -> Vec<Happening>
where
    S: Future<Output = ()>,
    O: FnMut(&Fleet, &Gateways, &[Happening]),
{
    tokio::pin!(stop);
    let o = fleet.opts.clone();
    let start = Instant::now();
    let mut log: Vec<Happening> = Vec::new();
    let at = |share: f64| duration.mul_f64(share.clamp(0.0, 1.0));
    let mut outage: Option<(Instant, Vec<usize>)> = None;
    let mut outage_done = o.outage_share <= 0.0;
    let mut night_done = o.nightfall_at.is_none();
    let cluster = gw.is_cluster();
    let faults = &o.cluster_faults;
    let mut restart_done = o.restart_at.is_none() || !gw.can_restart();
    // a cluster's faults: the node killed (with one node there is none but the domain node)
    let victim = gw.len().checked_sub(1).filter(|&i| i > 0);
    if cluster && (!faults.node || victim.is_none()) {
        restart_done = true;
        if o.restart_at.is_some() && faults.node {
            log.push(Happening {
                at: Duration::ZERO,
                what: "no gateway node killed: the only node is the domain node".into(),
            });
        }
    }
    let mut nats_done = !cluster || faults.nats_at.is_none() || gw.nats_servers() == 0;
    // a killed process to start again: (when, what, began ms)
    let mut down: Vec<(Instant, Fault, u64)> = Vec::new();
    let mut carry = 0.0;
    let mut last_observe = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_tick = Instant::now();
    // cut cabinets not yet seen connected again after the outage
    let mut reconnecting: Vec<usize> = Vec::new();
    fleet.timeline.script_started();
    loop {
        tokio::select! {
            _ = &mut stop => {
                log.push(Happening { at: start.elapsed(), what: "stopped by the user".into() });
                break;
            }
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        let t = now - start;
        if t >= duration {
            break;
        }
        fleet.tick(now - last_tick, &mut carry);
        last_tick = now;
        if !outage_done && t >= at(o.outage_at) {
            outage_done = true;
            let began = now_ms();
            let cut = fleet.start_outage(gw, o.outage_share).await;
            let ids = cut
                .iter()
                .map(|&i| fleet.cabinets[i].id.to_string())
                .collect();
            fleet.timeline.outage(began, ids);
            log.push(Happening {
                at: t,
                what: format!(
                    "network outage: {} cabinets cut off for {:?}",
                    cut.len(),
                    o.outage_for
                ),
            });
            outage = Some((Instant::now() + o.outage_for, cut));
            // the integrator's receiver is down as long (it answers 503: the outbox retries)
            if let Ok(h) = &fleet.hooks {
                h.receiver.set_down(true);
                log.push(Happening {
                    at: t,
                    what: format!("webhook receiver down (503) for {:?}", o.outage_for),
                });
            }
        }
        if let Some((until, cut)) = &outage {
            if now >= *until {
                fleet.timeline.restored();
                fleet.end_outage(cut);
                if let Ok(h) = &fleet.hooks {
                    h.receiver.set_down(false);
                }
                reconnecting = cut.clone();
                log.push(Happening {
                    at: t,
                    what: format!("network back for {} cabinets", cut.len()),
                });
                outage = None;
            }
        }
        if !reconnecting.is_empty() {
            reconnecting.retain(|&i| fleet.cabinets[i].brief().is_none_or(|b| !b.0));
            let down: Vec<&str> = reconnecting
                .iter()
                .map(|&i| fleet.cabinets[i].id.as_str())
                .collect();
            fleet.timeline.still_down(&down);
        }
        if !night_done && o.nightfall_at.is_some_and(|s| t >= at(s)) {
            night_done = true;
            fleet.timeline.nightfall();
            let n = fleet.nightfall();
            log.push(Happening {
                at: t,
                what: format!("nightfall: {n} solar cabinets at 20:00 with the evening load"),
            });
        }
        if !restart_done && o.restart_at.is_some_and(|s| t >= at(s)) {
            restart_done = true;
            match victim.filter(|_| cluster) {
                Some(i) => {
                    let what = match gw.kill_node(i).await {
                        Ok(true) => {
                            down.push((now + faults.down_for, Fault::Node(i), now_ms()));
                            format!(
                                "gateway node {} killed (kill -9), down for {:?}",
                                Gateways::node_name(i),
                                faults.down_for
                            )
                        }
                        Ok(false) => "gateway node kill FAILED: not a child process".into(),
                        Err(e) => format!("gateway node kill FAILED: {e}"),
                    };
                    log.push(Happening { at: t, what });
                }
                None => {
                    let began = Instant::now();
                    let began_ms = now_ms();
                    let what = match gw.restart().await {
                        Ok(_) => format!("gateway restarted in {} ms", began.elapsed().as_millis()),
                        Err(e) => format!("gateway restart FAILED: {e}"),
                    };
                    fleet.timeline.restart(began_ms, now_ms());
                    log.push(Happening { at: t, what });
                }
            }
        }
        if !nats_done && faults.nats_at.is_some_and(|s| t >= at(s)) {
            nats_done = true;
            let what = match gw.kill_nats(NATS_VICTIM).await {
                Ok(()) => {
                    down.push((now + faults.down_for, Fault::Nats(NATS_VICTIM), now_ms()));
                    format!(
                        "NATS server n{} killed (kill -9), down for {:?}",
                        NATS_VICTIM + 1,
                        faults.down_for
                    )
                }
                Err(e) => format!("NATS server kill FAILED: {e}"),
            };
            log.push(Happening { at: t, what });
        }
        if let Some(k) = down.iter().position(|(until, _, _)| now >= *until) {
            let (_, fault, began_ms) = down.remove(k);
            log.push(Happening {
                at: start.elapsed(),
                what: fault.start_again(gw, fleet, began_ms).await,
            });
        }
        if last_observe.elapsed() >= Duration::from_secs(1) {
            last_observe = Instant::now();
            observe(fleet, gw, &log);
        }
    }
    // a fault still down when the run ends: started again now
    for (_, fault, began_ms) in std::mem::take(&mut down) {
        log.push(Happening {
            at: start.elapsed(),
            what: fault.start_again(gw, fleet, began_ms).await,
        });
    }
    if let Some((_, cut)) = outage.take() {
        fleet.timeline.restored();
        fleet.end_outage(&cut);
    }
    if let Ok(h) = &fleet.hooks {
        h.receiver.set_down(false);
    }
    log
}

/// The NATS server a cluster run kills: server 1, the first the domain node connects to.
const NATS_VICTIM: usize = 0;

/// A process of a cluster the script killed.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// Gateway node `i`.
    Node(usize),
    /// NATS server `i`.
    Nats(usize),
}

impl Fault {
    /// Starts it again; what happened, for the log. A gateway node's downtime (from the kill to
    /// its API answering again) is a restart in the fleet's timeline: the cabinets it held are
    /// offline meanwhile, and an `offline` alert that began then must clear.
    async fn start_again(self, gw: &mut Gateways, fleet: &Fleet, began_ms: u64) -> String {
        let t = Instant::now();
        match self {
            Fault::Node(i) => {
                let r = gw.start_node(i).await;
                fleet.timeline.restart(began_ms, now_ms());
                match r {
                    Ok(()) => format!(
                        "gateway node {} started again, healthy in {} ms",
                        Gateways::node_name(i),
                        t.elapsed().as_millis()
                    ),
                    Err(e) => format!("gateway node restart FAILED: {e}"),
                }
            }
            Fault::Nats(i) => match gw.start_nats(i).await {
                Ok(()) => format!(
                    "NATS server n{} started again, accepting in {} ms",
                    i + 1,
                    t.elapsed().as_millis()
                ),
                Err(e) => format!("NATS server restart FAILED: {e}"),
            },
        }
    }
}
