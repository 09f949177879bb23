//! The gateway's alerts as the fleet checks them: the [`Timeline`] of what the script did that
//! should (or should not) raise alerts, recorded by the simulator itself in wall-clock ms (the
//! gateway stamps its alerts with the same clock), the alerts read back from
//! `GET /v1/alerts?state=all` ([`AlertRecord`]), and the alert invariants ([`check_alerts`]):
//! - each alert cleared after it was raised, raised after its condition began;
//! - no duplicates: never two alerts of one (cabinet, kind, subject) overlapping in time;
//! - every cabinet the outage cut for longer than `offline.after_ms` plus slack (measured by
//!   the simulator: from the cut to the last moment its agent was seen disconnected) has
//!   exactly one `offline` alert for that outage, cleared after the link came back;
//! - no `offline` alert otherwise, except one that began around a gateway (re)start: after a
//!   restart the engine counts every cabinet offline until it reconnects, and on a loaded
//!   machine a reconnect may take longer than `after_ms`; those are counted, and must clear;
//! - after nightfall, a solar cabinet has a `solar_deficit` or `battery_low` alert, judged once
//!   the night has lasted [`SimRules::night_alert_within`].
//!
//! Alerts that began before this run (a reused state directory) are counted, not judged.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use super::api::{Api, ApiError};
use super::gateway::SimRules;

/// Wall-clock ms since the epoch (the gateway's `Millis`).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// One outage: its cabinets and when.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outage {
    /// Before the script started cutting (it may first wait for visitors).
    pub began_ms: u64,
    /// When every cabinet of it was cut.
    pub cut_ms: u64,
    /// When the links came back.
    pub restored_ms: Option<u64>,
    /// The cabinets cut, and for each the last moment its agent was seen disconnected (the
    /// restore time until the script saw it connected again).
    pub cabinets: Vec<(String, u64)>,
}

/// What the script did, for the alert checks.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TimelineFacts {
    /// Before the gateway was started.
    pub started_ms: u64,
    /// When the script began (every agent started).
    pub script_ms: Option<u64>,
    pub outages: Vec<Outage>,
    /// Gateway restarts: (began, healthy again).
    pub restarts: Vec<(u64, u64)>,
    pub nightfall_ms: Option<u64>,
    /// The solar cabinets.
    pub solar: BTreeSet<String>,
    /// The rules the simulator gave the gateway (`None`: an external gateway's own).
    pub rules: Option<SimRules>,
}

/// The timeline of a run, written by the script and read by the checks.
#[derive(Debug, Default)]
pub struct Timeline(Mutex<TimelineFacts>);

impl Timeline {
    fn with<R>(&self, f: impl FnOnce(&mut TimelineFacts) -> R) -> R {
        f(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// The run began at `at` with these rules (`None`: not the simulator's).
    pub fn begin(&self, at: u64, rules: Option<SimRules>, solar: BTreeSet<String>) {
        self.with(|t| {
            t.started_ms = at;
            t.rules = rules;
            t.solar = solar;
        });
    }

    pub fn script_started(&self) {
        self.with(|t| t.script_ms = Some(now_ms()));
    }

    /// An outage began at `began` and its cabinets are cut now.
    pub fn outage(&self, began: u64, cabinets: Vec<String>) {
        let cut = now_ms();
        self.with(|t| {
            t.outages.push(Outage {
                began_ms: began,
                cut_ms: cut,
                restored_ms: None,
                cabinets: cabinets.into_iter().map(|c| (c, cut)).collect(),
            })
        });
    }

    /// The links of the last outage are about to come back.
    pub fn restored(&self) {
        let at = now_ms();
        self.with(|t| {
            if let Some(o) = t.outages.last_mut().filter(|o| o.restored_ms.is_none()) {
                o.restored_ms = Some(at);
                for c in &mut o.cabinets {
                    c.1 = at;
                }
            }
        });
    }

    /// The cabinets of the last outage still seen disconnected now.
    pub fn still_down(&self, down: &[&str]) {
        let at = now_ms();
        self.with(|t| {
            if let Some(o) = t.outages.last_mut().filter(|o| o.restored_ms.is_some()) {
                for c in o
                    .cabinets
                    .iter_mut()
                    .filter(|c| down.contains(&c.0.as_str()))
                {
                    c.1 = at;
                }
            }
        });
    }

    pub fn restart(&self, began: u64, done: u64) {
        self.with(|t| t.restarts.push((began, done)));
    }

    pub fn nightfall(&self) {
        self.with(|t| t.nightfall_ms = Some(now_ms()));
    }

    pub fn facts(&self) -> TimelineFacts {
        self.with(|t| t.clone())
    }
}

/// One alert as `GET /v1/alerts` lists it, reduced to what the checks need.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertRecord {
    pub id: String,
    pub cabinet: String,
    pub kind: String,
    pub subject: String,
    pub started: u64,
    pub raised_at: u64,
    pub cleared_at: Option<u64>,
    pub detail: String,
}

impl AlertRecord {
    /// From the API's JSON; `None` if a field is missing.
    pub fn from_json(v: &Value) -> Option<Self> {
        Some(Self {
            id: v["id"].as_str()?.to_owned(),
            cabinet: v["cabinet"].as_str()?.to_owned(),
            kind: v["kind"].as_str()?.to_owned(),
            subject: v["subject"].as_str().unwrap_or("").to_owned(),
            started: v["started"].as_u64()?,
            raised_at: v["raised_at"].as_u64()?,
            cleared_at: v["cleared_at"].as_u64(),
            detail: v["detail"].as_str().unwrap_or("").to_owned(),
        })
    }

    fn end(&self) -> u64 {
        self.cleared_at.unwrap_or(u64::MAX)
    }
}

/// Every alert the gateway lists (`GET /v1/alerts?state=all`, paged by `before`), newest
/// first.
pub async fn list_alerts(api: &Api, query: &str) -> Result<Vec<AlertRecord>, ApiError> {
    let mut out = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let q = match &before {
            Some(b) => format!("/v1/alerts?limit=1000&{query}&before={b}"),
            None => format!("/v1/alerts?limit=1000&{query}"),
        };
        let page = api.get(&q).await?;
        out.extend(
            page["alerts"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(AlertRecord::from_json),
        );
        match page["next_before"].as_str() {
            Some(n) if before.as_deref() != Some(n) => before = Some(n.to_owned()),
            _ => return Ok(out),
        }
    }
}

/// The newest `n` alerts, active or cleared, newest first (one page).
pub async fn newest_alerts(api: &Api, n: usize) -> Result<Vec<AlertRecord>, ApiError> {
    let page = api.get(&format!("/v1/alerts?state=all&limit={n}")).await?;
    Ok(page["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(AlertRecord::from_json)
        .collect())
}

/// Whether a solar cabinet has a power alert raised at or after `nightfall`.
pub fn night_alerted(alerts: &[AlertRecord], t: &TimelineFacts, nightfall: u64) -> bool {
    alerts.iter().any(|a| {
        (a.kind == "solar_deficit" || a.kind == "battery_low")
            && a.raised_at >= nightfall
            && t.solar.contains(&a.cabinet)
    })
}

/// What nightfall produced.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Night {
    /// The script did not run nightfall.
    #[default]
    None,
    /// Solar cabinets with a `solar_deficit` or `battery_low` alert raised after nightfall.
    Alerts { cabinets: u64, solar: u64 },
    /// None yet, and the night was too short to judge.
    TooShort { night: Duration, needed: Duration },
    /// None though the night lasted long enough (a violation).
    Missing { night: Duration },
}

/// The alert part of the report.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AlertSummary {
    /// Whether the rules were the simulator's (else only counted).
    pub judged: bool,
    /// Alerts raised in this run, by kind.
    pub raised: u64,
    pub by_kind: BTreeMap<String, u64>,
    pub cleared: u64,
    pub duplicates: u64,
    /// Alerts whose condition began before this run.
    pub carried_over: u64,
    /// Cabinets cut long enough to need an `offline` alert, and those that had exactly one,
    /// cleared after the link came back.
    pub offline_expected: u64,
    pub offline_found: u64,
    /// `offline` alerts of cabinets that began around a gateway (re)start.
    pub offline_restart: u64,
    pub night: Night,
}

/// Checks the alerts against the timeline (see the module doc). `problem` records violations.
pub fn check_alerts(
    alerts: &[AlertRecord],
    t: &TimelineFacts,
    now: u64,
    mut problem: impl FnMut(String),
) -> AlertSummary {
    let mut s = AlertSummary {
        judged: t.rules.is_some(),
        ..AlertSummary::default()
    };
    for a in alerts {
        if a.started < t.started_ms {
            s.carried_over += 1;
        } else if a.raised_at >= t.started_ms {
            s.raised += 1;
            *s.by_kind.entry(a.kind.clone()).or_default() += 1;
            s.cleared += u64::from(a.cleared_at.is_some());
        }
        if a.cleared_at.is_some_and(|c| c < a.raised_at) || a.raised_at < a.started {
            problem(format!(
                "alert {} ({} {}): started {}, raised {}, cleared {:?}: out of order",
                a.id, a.cabinet, a.kind, a.started, a.raised_at, a.cleared_at
            ));
        }
    }
    // no two alerts of one (cabinet, kind, subject) overlapping in time
    let mut groups: HashMap<(&str, &str, &str), Vec<&AlertRecord>> = HashMap::new();
    for a in alerts {
        groups
            .entry((&a.cabinet, &a.kind, &a.subject))
            .or_default()
            .push(a);
    }
    for ((cab, kind, subject), mut list) in groups {
        list.sort_by_key(|a| (a.raised_at, a.id.clone()));
        for w in list.windows(2) {
            if w[1].raised_at < w[0].end() {
                s.duplicates += 1;
                problem(format!(
                    "{cab}: two {kind} alerts for {subject:?} at once: {} (raised {}, cleared {:?}) and {} (raised {})",
                    w[0].id, w[0].raised_at, w[0].cleared_at, w[1].id, w[1].raised_at
                ));
            }
        }
    }
    let Some(rules) = &t.rules else {
        return s;
    };
    // offline: expected for the cabinets cut long enough, and nowhere else
    let offline: Vec<&AlertRecord> = alerts.iter().filter(|a| a.kind == "offline").collect();
    let mut explained: BTreeSet<&str> = BTreeSet::new();
    for o in &t.outages {
        let Some(restored) = o.restored_ms else {
            continue;
        };
        for (cab, down_until) in &o.cabinets {
            let mine: Vec<&&AlertRecord> = offline
                .iter()
                .filter(|a| &a.cabinet == cab && a.started <= restored && a.end() >= o.began_ms)
                .collect();
            explained.extend(mine.iter().map(|a| a.id.as_str()));
            for a in &mine {
                if a.cleared_at.is_some_and(|c| c < restored) {
                    problem(format!(
                        "{cab}: offline alert {} cleared at {:?}, before the link came back at {restored}",
                        a.id, a.cleared_at
                    ));
                }
            }
            let off = down_until.saturating_sub(o.cut_ms);
            if off < rules.offline_after_ms + rules.offline_slack_ms() {
                continue;
            }
            s.offline_expected += 1;
            match mine.as_slice() {
                [a] if a.cleared_at.is_some() => s.offline_found += 1,
                [a] => problem(format!(
                    "{cab}: offline alert {} still active after the cabinet reconnected",
                    a.id
                )),
                [] => problem(format!(
                    "{cab}: offline for at least {off} ms (outage), no offline alert (after_ms {})",
                    rules.offline_after_ms
                )),
                more => problem(format!(
                    "{cab}: {} offline alerts for one outage: {:?}",
                    more.len(),
                    more.iter().map(|a| a.id.as_str()).collect::<Vec<_>>()
                )),
            }
        }
    }
    // a (re)start of the gateway: from before it was started to a moment after it answered
    let mut starts: Vec<(u64, u64)> = t.restarts.clone();
    starts.push((t.started_ms, t.script_ms.unwrap_or(now)));
    for a in offline {
        if explained.contains(a.id.as_str()) || a.started < t.started_ms {
            continue;
        }
        if starts
            .iter()
            .any(|(b, d)| a.started + 1_000 >= *b && a.started <= d + 1_000)
        {
            s.offline_restart += 1;
            if a.cleared_at.is_none() {
                problem(format!(
                    "{}: offline alert {} from a gateway restart still active after the cabinet reconnected",
                    a.cabinet, a.id
                ));
            }
        } else {
            problem(format!(
                "{}: offline alert {} (started {}, {}) though the cabinet was not cut off and no restart was near",
                a.cabinet, a.id, a.started, a.detail
            ));
        }
    }
    // nightfall: a power alert on a solar cabinet
    if let Some(nf) = t.nightfall_ms {
        let cabinets: BTreeSet<&str> = alerts
            .iter()
            .filter(|a| night_alerted(std::slice::from_ref(*a), t, nf))
            .map(|a| a.cabinet.as_str())
            .collect();
        let night = Duration::from_millis(now.saturating_sub(nf));
        let needed = rules.night_alert_within();
        s.night = if !cabinets.is_empty() {
            Night::Alerts {
                cabinets: cabinets.len() as u64,
                solar: t.solar.len() as u64,
            }
        } else if t.solar.is_empty() || night < needed {
            Night::TooShort { night, needed }
        } else {
            problem(format!(
                "nightfall: no solar cabinet has a solar_deficit or battery_low alert after {:.0} s of night",
                night.as_secs_f64()
            ));
            Night::Missing { night }
        };
    }
    s
}

impl fmt::Display for AlertSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kinds: Vec<String> = self
            .by_kind
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        let kinds = if kinds.is_empty() {
            String::new()
        } else {
            format!(" ({})", kinds.join(", "))
        };
        write!(
            f,
            "  alerts: {} raised{kinds}, {} cleared, {} duplicates",
            self.raised, self.cleared, self.duplicates
        )?;
        if self.carried_over > 0 {
            write!(f, "; {} from before this run", self.carried_over)?;
        }
        if !self.judged {
            return write!(f, " (the gateway's own rules: counted, not judged)");
        }
        write!(
            f,
            "\n  offline alerts: {} of {} cabinets cut long enough had exactly one, cleared after the link came back; {} around gateway restarts",
            self.offline_found, self.offline_expected, self.offline_restart
        )?;
        match &self.night {
            Night::None => Ok(()),
            Night::Alerts { cabinets, solar } => write!(
                f,
                "\n  nightfall: solar_deficit or battery_low on {cabinets} of {solar} solar cabinets"
            ),
            Night::TooShort { night, needed } => write!(
                f,
                "\n  nightfall: no power alert yet; not judged (the night lasted {:.0} s, {:.0} s needed)",
                night.as_secs_f64(),
                needed.as_secs_f64()
            ),
            Night::Missing { night } => write!(
                f,
                "\n  nightfall: NO power alert after {:.0} s of night",
                night.as_secs_f64()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::FleetOptions;

    fn alert(
        id: &str,
        cab: &str,
        kind: &str,
        started: u64,
        raised: u64,
        cleared: Option<u64>,
    ) -> AlertRecord {
        AlertRecord {
            id: id.into(),
            cabinet: cab.into(),
            kind: kind.into(),
            subject: String::new(),
            started,
            raised_at: raised,
            cleared_at: cleared,
            detail: String::new(),
        }
    }

    /// A run from 1 000 000: an outage cutting A (long) and B (short), a restart at 1 020 000,
    /// nightfall at 1 030 000 on solar cabinet S.
    fn timeline() -> TimelineFacts {
        let rules = SimRules::for_fleet(&FleetOptions {
            outage_for: Duration::from_secs(5),
            ..FleetOptions::default()
        });
        assert_eq!(rules.offline_after_ms, 2_000);
        TimelineFacts {
            started_ms: 1_000_000,
            script_ms: Some(1_002_000),
            outages: vec![Outage {
                began_ms: 1_009_000,
                cut_ms: 1_010_000,
                restored_ms: Some(1_015_000),
                cabinets: vec![("A".into(), 1_015_500), ("B".into(), 1_011_000)],
            }],
            restarts: vec![(1_020_000, 1_020_500)],
            nightfall_ms: Some(1_030_000),
            solar: ["S".to_owned()].into(),
            rules: Some(rules),
        }
    }

    fn run(alerts: &[AlertRecord], now: u64) -> (AlertSummary, Vec<String>) {
        let mut problems = Vec::new();
        let s = check_alerts(alerts, &timeline(), now, |p| problems.push(p));
        (s, problems)
    }

    #[test]
    fn an_outage_and_a_night_with_their_alerts_are_clean() {
        let alerts = vec![
            alert("1", "A", "offline", 1_010_010, 1_012_100, Some(1_015_600)),
            // C reconnected slowly after the restart: tolerated, counted
            alert("2", "C", "offline", 1_020_100, 1_022_200, Some(1_022_400)),
            alert("3", "S", "solar_deficit", 1_040_000, 1_040_000, None),
            // from a previous run: counted only
            alert("4", "D", "offline", 900_000, 1_000_500, Some(1_001_000)),
        ];
        let (s, problems) = run(&alerts, 1_100_000);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!((s.raised, s.cleared, s.carried_over), (3, 2, 1));
        assert_eq!(
            (s.offline_expected, s.offline_found, s.offline_restart),
            (1, 1, 1)
        );
        assert_eq!(
            s.night,
            Night::Alerts {
                cabinets: 1,
                solar: 1
            }
        );
        let line = s.to_string();
        assert!(
            line.contains("alerts: 3 raised (offline 2, solar_deficit 1), 2 cleared, 0 duplicates"),
            "{line}"
        );
    }

    #[test]
    fn missing_duplicate_unexplained_and_early_cleared_alerts_are_violations() {
        // A cut 5.5 s: no alert at all; the night long enough and no power alert
        let (s, problems) = run(&[], 1_100_000);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(matches!(s.night, Night::Missing { .. }));
        // two overlapping alerts for A, one cleared before the link came back; an offline
        // alert for E, never cut, far from the restart; one cleared before it was raised
        let alerts = vec![
            alert("1", "A", "offline", 1_010_010, 1_012_100, Some(1_014_000)),
            alert("2", "A", "offline", 1_010_010, 1_013_000, Some(1_016_000)),
            alert("3", "E", "offline", 1_050_000, 1_052_000, Some(1_053_000)),
            alert(
                "4",
                "F",
                "door_left_open",
                1_060_000,
                1_070_000,
                Some(1_065_000),
            ),
            alert("5", "S", "battery_low", 1_040_000, 1_041_000, None),
        ];
        let (s, problems) = run(&alerts, 1_100_000);
        assert_eq!(s.duplicates, 1);
        // duplicate, 1 cleared early, 2 alerts for one outage, E unexplained, 4 out of order
        assert_eq!(problems.len(), 5, "{problems:?}");
        // a short night is not judged; B (cut 1 s) needs no alert
        let (s, problems) = run(&[], 1_031_000);
        assert!(matches!(s.night, Night::TooShort { .. }));
        assert_eq!(problems.len(), 1, "{problems:?}");
    }

    #[test]
    fn an_external_gateways_alerts_are_only_counted() {
        let t = TimelineFacts {
            rules: None,
            ..timeline()
        };
        let alerts = vec![alert("3", "E", "offline", 1_050_000, 1_052_000, None)];
        let mut n = 0;
        let s = check_alerts(&alerts, &t, 1_100_000, |_| n += 1);
        assert_eq!((n, s.raised, s.judged), (0, 1, false));
    }
}
