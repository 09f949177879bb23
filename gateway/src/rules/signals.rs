//! The rules themselves: from one cabinet's [`CabState`] and its [`RuleSet`], what holds now.
//! A pure function, one section per kind; the engine turns its signals into pending
//! conditions and alerts.
//!
//! Each signal is `Raise` (the condition holds: it becomes an alert once it has lasted `wait`
//! from `since`), `Hold` (inside the hysteresis band: an active alert stays, a pending one is
//! dropped), or absent / `Clear` (the condition is over).

use locker_schemas::{Millis, NetworkKind};

use super::config::{RuleSet, Supply};
use super::state::CabState;
use super::AlertKind;

/// What one condition does now.
#[derive(Debug, Clone, PartialEq)]
pub enum Sig {
    Raise {
        /// When the condition began (a door's opening, the first low reading).
        since: Millis,
        /// How long it must last before the alert is raised, ms.
        wait: u64,
        detail: String,
        value: Option<f64>,
    },
    Hold,
    /// Over, but an active alert waits `after` ms before it clears (0 = now).
    Clear { after: u64 },
}

/// One condition's signal.
#[derive(Debug, Clone, PartialEq)]
pub struct Signal {
    pub kind: AlertKind,
    pub subject: String,
    pub sig: Sig,
}

fn raise(
    kind: AlertKind,
    subject: impl Into<String>,
    since: Millis,
    wait: u64,
    detail: String,
    value: Option<f64>,
) -> Signal {
    Signal {
        kind,
        subject: subject.into(),
        sig: Sig::Raise {
            since,
            wait,
            detail,
            value,
        },
    }
}

fn hold(kind: AlertKind, subject: impl Into<String>) -> Signal {
    Signal {
        kind,
        subject: subject.into(),
        sig: Sig::Hold,
    }
}

fn clear_after(kind: AlertKind, subject: impl Into<String>, after: u64) -> Signal {
    Signal {
        kind,
        subject: subject.into(),
        sig: Sig::Clear { after },
    }
}

fn mins(ms: u64) -> f64 {
    (ms as f64 / 60_000.0 * 10.0).round() / 10.0
}

/// Every condition of the cabinet that holds (or is held) at `now`.
pub fn evaluate(c: &CabState, r: &RuleSet, now: Millis) -> Vec<Signal> {
    let mut out = Vec::new();
    network(c, r, now, &mut out);
    power(c, r, now, &mut out);
    doors(c, r, now, &mut out);
    queue(c, r, now, &mut out);
    alarms(c, r, &mut out);
    facts(c, r, &mut out);
    clock(c, r, &mut out);
    out
}

fn network(c: &CabState, r: &RuleSet, now: Millis, out: &mut Vec<Signal>) {
    if r.offline.enabled && c.online == Some(false) {
        let off = now.saturating_sub(c.since);
        out.push(raise(
            AlertKind::Offline,
            "",
            c.since,
            r.offline.after_ms,
            format!("offline for {} min (no connection at the edge)", mins(off)),
            Some(mins(off)),
        ));
    }
    if r.flapping.enabled {
        let w = r.flapping.window_ms;
        let n = c
            .disconnects
            .iter()
            .filter(|t| now.saturating_sub(**t) < w)
            .count();
        if n >= r.flapping.disconnects as usize {
            let first = c.disconnects.iter().copied().min().unwrap_or(now);
            out.push(raise(
                AlertKind::Flapping,
                "",
                first,
                0,
                format!("{n} disconnects within {} min", mins(w)),
                Some(n as f64),
            ));
        } else if n > 0 {
            // hysteresis: the link is calm again only after a whole window without a drop
            out.push(hold(AlertKind::Flapping, ""));
        }
    }
    if r.replay_backlog.enabled {
        if let Some(p) = &c.replay {
            let rb = &r.replay_backlog;
            let age = p.oldest.map(|o| p.connected_at.saturating_sub(o)).unwrap_or(0);
            if p.events > rb.events || age > rb.age_ms {
                let detail = format!(
                    "replayed {} events after reconnecting, the oldest {} min old{}",
                    p.events,
                    mins(age),
                    if p.done_at.is_some() { "" } else { " (still replaying)" }
                );
                match p.done_at {
                    Some(done) if now.saturating_sub(done) >= rb.hold_ms => {
                        out.push(clear_after(AlertKind::ReplayBacklog, "", 0))
                    }
                    _ => out.push(raise(
                        AlertKind::ReplayBacklog,
                        "",
                        p.connected_at,
                        0,
                        detail,
                        Some(p.events as f64),
                    )),
                }
            }
        }
    }
    if r.network_failover.enabled {
        let home = r
            .home_network
            .map(|n| NetworkKind::from(n) as u8)
            .or(c.home_network);
        if let (Some(home), Some((now_kind, since))) = (home, c.network) {
            if home != NetworkKind::Cellular as u8 && now_kind == NetworkKind::Cellular as u8 {
                let name = if home == NetworkKind::Lan as u8 { "LAN" } else { "Wi-Fi" };
                out.push(raise(
                    AlertKind::NetworkFailover,
                    "",
                    since,
                    r.network_failover.for_ms,
                    format!("on cellular failover; its home network is {name}"),
                    None,
                ));
            }
        }
    }
}

fn power(c: &CabState, r: &RuleSet, now: Millis, out: &mut Vec<Signal>) {
    let Some(p) = c.power else {
        return;
    };
    let b = &r.battery_low;
    if b.enabled {
        if p.soc_pct < b.below_pct {
            out.push(raise(
                AlertKind::BatteryLow,
                "",
                p.ts.min(now),
                b.for_ms,
                format!(
                    "state of charge {}% (under {}%), battery {:.2} V",
                    p.soc_pct,
                    b.below_pct,
                    f64::from(p.battery_mv) / 1000.0
                ),
                Some(f64::from(p.soc_pct)),
            ));
        } else if p.soc_pct <= b.clear_above_pct {
            out.push(hold(AlertKind::BatteryLow, ""));
        }
    }
    let s = &r.solar_deficit;
    if s.enabled && r.supply == Supply::Solar {
        let (e_in, e_out, covered) = c.energy.balance(s.window_ms, now);
        if covered >= s.min_coverage_ms && covered > 0 {
            let net = e_in - e_out;
            let hours = covered as f64 / 3_600_000.0;
            let drain_w = -net / hours;
            let left_wh = f64::from(p.soc_pct) / 100.0 * s.battery_wh;
            let to_empty = if drain_w > 0.0 {
                left_wh / drain_w
            } else {
                f64::INFINITY
            };
            if net < 0.0 && to_empty < s.empty_within_h {
                out.push(raise(
                    AlertKind::SolarDeficit,
                    "",
                    now,
                    0,
                    format!(
                        "energy balance {net:.0} Wh over the last {hours:.1} h (in {e_in:.0} Wh, out {e_out:.0} Wh): empty in about {to_empty:.1} h at {}% charge",
                        p.soc_pct
                    ),
                    Some((to_empty * 10.0).round() / 10.0),
                ));
            } else if net < 0.0 && to_empty <= s.clear_beyond_h {
                out.push(hold(AlertKind::SolarDeficit, ""));
            }
        } else {
            // not enough telemetry to judge: an active alert stays until the balance says
            out.push(hold(AlertKind::SolarDeficit, ""));
        }
    }
    let o = &r.on_battery;
    if o.enabled && r.supply == Supply::Mains && p.pv_w < o.input_below_w {
        out.push(raise(
            AlertKind::OnBattery,
            "",
            p.ts.min(now),
            o.for_ms,
            format!(
                "no input power ({} W): running on battery at {}%",
                p.pv_w, p.soc_pct
            ),
            Some(f64::from(p.soc_pct)),
        ));
    }
}

fn doors(c: &CabState, r: &RuleSet, now: Millis, out: &mut Vec<Signal>) {
    for (comp, d) in &c.doors {
        if !d.open {
            continue;
        }
        let subject = format!("compartment {comp}");
        if r.door_left_open.enabled {
            out.push(raise(
                AlertKind::DoorLeftOpen,
                subject.clone(),
                d.since,
                r.door_left_open.after_ms,
                format!(
                    "compartment {comp} open for {} min",
                    mins(now.saturating_sub(d.since))
                ),
                Some(mins(now.saturating_sub(d.since))),
            ));
        }
        if r.door_forced.enabled && d.forced {
            out.push(raise(
                AlertKind::DoorForced,
                subject,
                d.since,
                0,
                format!("compartment {comp} opened without a command or a code"),
                None,
            ));
        }
    }
    let j = &r.lock_jammed;
    if j.enabled {
        for (comp, times) in &c.jams {
            let n = times
                .iter()
                .filter(|t| now.saturating_sub(**t) < j.window_ms)
                .count();
            let subject = format!("compartment {comp}");
            if n >= j.jams as usize {
                out.push(raise(
                    AlertKind::LockJammed,
                    subject,
                    times.iter().copied().min().unwrap_or(now),
                    0,
                    format!(
                        "the lock of compartment {comp} jammed {n} times within {} min",
                        mins(j.window_ms)
                    ),
                    Some(n as f64),
                ));
            } else if n > 0 {
                out.push(hold(AlertKind::LockJammed, subject));
            }
        }
    }
}

fn queue(c: &CabState, r: &RuleSet, now: Millis, out: &mut Vec<Signal>) {
    let Some((depth, oldest)) = c.queue else {
        return;
    };
    if r.queue_waiting.enabled && depth > 0 {
        out.push(raise(
            AlertKind::QueueWaiting,
            "",
            oldest,
            r.queue_waiting.waiting_ms,
            format!(
                "{depth} command(s) waiting, the oldest for {} min",
                mins(now.saturating_sub(oldest))
            ),
            Some(mins(now.saturating_sub(oldest))),
        ));
    }
    let q = &r.queue_deep;
    if q.enabled {
        if depth > q.depth {
            out.push(raise(
                AlertKind::QueueDeep,
                "",
                now,
                0,
                format!("{depth} commands waiting (more than {})", q.depth),
                Some(depth as f64),
            ));
        } else if depth > q.depth / 2 {
            out.push(hold(AlertKind::QueueDeep, ""));
        }
    }
}

/// The cabinet's own alarms: lock boards, the outbox, the charge controller, the battery floor.
fn alarms(c: &CabState, r: &RuleSet, out: &mut Vec<Signal>) {
    for (key, since) in &c.alarms {
        let Some((kind, subject)) = key.split_once('|') else {
            continue;
        };
        let Some(kind) = AlertKind::parse(kind) else {
            continue;
        };
        let (enabled, wait, detail) = match kind {
            AlertKind::BoardOffline => (
                r.board_offline.enabled,
                r.board_offline.for_ms,
                format!("lock {subject} not answering on the bus"),
            ),
            AlertKind::OutboxFull => (
                r.outbox_full.enabled,
                r.outbox_full.for_ms,
                "the cabinet's outbox is nearly full (events may be shed)".to_string(),
            ),
            AlertKind::ChargerFault => (
                r.charger_fault.enabled,
                r.charger_fault.for_ms,
                "the charge controller reports a fault or is not answering".to_string(),
            ),
            AlertKind::BatteryLow => (
                r.battery_low.enabled,
                0,
                "battery under its voltage floor".to_string(),
            ),
            AlertKind::DoorForced => (
                r.door_forced.enabled,
                0,
                "the cabinet's tamper switch fired".to_string(),
            ),
            _ => continue,
        };
        if enabled {
            out.push(raise(kind, subject, *since, wait, detail, None));
        }
    }
}

fn facts(c: &CabState, r: &RuleSet, out: &mut Vec<Signal>) {
    for (key, f) in &c.facts {
        let Some((kind, subject)) = key.split_once('|') else {
            continue;
        };
        let enabled = match AlertKind::parse(kind) {
            Some(AlertKind::CommandNoOutcome) => r.command_no_outcome.enabled,
            Some(AlertKind::ParcelSensor) => r.parcel_sensor.enabled,
            _ => false,
        };
        if let (true, Some(kind)) = (enabled, AlertKind::parse(kind)) {
            out.push(raise(kind, subject, f.at, 0, f.detail.clone(), None));
        }
    }
}

fn clock(c: &CabState, r: &RuleSet, out: &mut Vec<Signal>) {
    let k = &r.clock_skew;
    let Some((skew, at)) = c.skew else {
        return;
    };
    if !k.enabled {
        return;
    }
    let off = skew.unsigned_abs();
    if off > k.max_skew_ms {
        let dir = if skew > 0 { "ahead" } else { "behind" };
        out.push(raise(
            AlertKind::ClockSkew,
            "",
            at,
            0,
            format!("the cabinet's clock is {:.1} s {dir}", off as f64 / 1000.0),
            Some(skew as f64 / 1000.0),
        ));
    } else if off > k.max_skew_ms / 2 {
        out.push(hold(AlertKind::ClockSkew, ""));
    }
}
