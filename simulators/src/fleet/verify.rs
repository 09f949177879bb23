//! The end-of-run checks of a fleet: reads every cabinet's audit log, command outcomes,
//! compartments and simulated board, every order the gateway lists and what the people did
//! (the [`super::ledger`]: pickups, and what couriers found at expired parcels), and hands
//! them to the checks of [`super::report`].
//!
//! In cluster mode the API read is the domain node's; every other node's audit logs are
//! compared with it ([`super::nodecheck`]).
//!
//! The parcel checks are repeated for a few seconds until they add no violation: an offline
//! pickup reported at the end of the run reaches the orders a moment after the audit log, and
//! an order may expire between the read of the orders and of the people's notices. So are the
//! alert checks ([`super::alerts`], from `GET /v1/alerts?state=all` and the script's
//! timeline): an `offline` alert clears a moment after its cabinet reconnected.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::Semaphore;

use super::alerts::{check_alerts, list_alerts, night_alerted, now_ms};
use super::report::{
    check_cabinet, check_expiry, check_parcels, CabinetFacts, CabinetParcels, Report,
};
use super::Fleet;

const PARCEL_TRIES: usize = 20;
const ALERT_TRIES: usize = 20;

impl Fleet {
    /// Checks the invariants against the gateway's API (see [`super::report`]).
    pub async fn verify(&self) -> Report {
        let mut by_cab: Vec<Vec<String>> = vec![Vec::new(); self.cabinets.len()];
        for (i, id) in self
            .ctx
            .commands
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            by_cab[*i].push(id.clone());
        }
        let mut report = Report::default();
        let api = self.ctx.api.clone();
        let gate = Arc::new(Semaphore::new(16));
        let mut tasks = tokio::task::JoinSet::new();
        for (i, cab) in self.cabinets.iter().enumerate() {
            let (cab, api, cmds, gate) =
                (cab.clone(), api.clone(), by_cab[i].clone(), gate.clone());
            tasks.spawn(async move {
                let _p = gate.acquire_owned().await;
                // Read the agent, then the audit log, then the agent again: compare only when
                // the agent made no event in between (a door or a battery can report any time).
                let mut events = api.events(cab.id.as_str()).await;
                let mut brief = cab.brief();
                for _ in 0..20 {
                    let before = cab.brief();
                    if before.is_some_and(|b| b.1 == 0) {
                        events = api.events(cab.id.as_str()).await;
                        brief = cab.brief();
                        if brief == before {
                            break;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                let mut outcomes = Vec::with_capacity(cmds.len());
                for id in cmds {
                    let o = api
                        .command(&id)
                        .await
                        .ok()
                        .and_then(|v| v["outcome"].as_str().map(str::to_owned));
                    outcomes.push((id, o));
                }
                (i, cab, events, outcomes, brief)
            });
        }
        let mut access: Vec<Vec<(String, u16)>> = vec![Vec::new(); self.cabinets.len()];
        let mut logs: Vec<Option<Vec<super::api::AuditEvent>>> = vec![None; self.cabinets.len()];
        while let Some(r) = tasks.join_next().await {
            let Ok((i, cab, events, outcomes, brief)) = r else {
                report.problem("a verification task failed".into());
                continue;
            };
            let events = match events {
                Ok(e) => e,
                Err(e) => {
                    report.problem(format!("{}: audit log not readable: {e}", cab.id));
                    continue;
                }
            };
            let first_seq = cab.first_seq.load(Ordering::Acquire);
            access[i] = events
                .iter()
                .filter(|e| e.seq >= first_seq && e.kind == "access")
                .filter(|e| e.data["action"] == "pickup")
                .map(|e| {
                    (
                        e.data["reference"].as_str().unwrap_or("").to_owned(),
                        e.data["compartment"]
                            .as_u64()
                            .and_then(|c| u16::try_from(c).ok())
                            .unwrap_or(0),
                    )
                })
                .collect();
            let (_, outbox, _, acked, next) = brief.unwrap_or((false, u64::MAX, 0, 0, 1));
            check_cabinet(
                &mut report,
                &CabinetFacts {
                    id: cab.id.as_str(),
                    events: &events,
                    agent_last_seq: next.saturating_sub(1),
                    agent_outbox: outbox,
                    agent_acked: acked,
                    board_pulses: cab.board.total_pulses(),
                    first_seq,
                    commands: &outcomes,
                },
            );
            logs[i] = Some(events);
        }
        self.check_nodes(&mut report, logs).await;
        for attempt in 1..=PARCEL_TRIES {
            let mut trial = report.clone();
            self.parcels(&mut trial, &access).await;
            // judged by what the parcel checks found (an earlier violation stays either way):
            // an order that expires between the read of the orders and of the people's notices
            // disagrees once, and agrees on the next try
            if trial.violations == report.violations || attempt == PARCEL_TRIES {
                report = trial;
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        self.check_alerts(&mut report).await;
        self.check_webhooks(&mut report).await;
        self.check_notifications(&mut report).await;
        report
    }

    /// Every notice of the run reached the fleet's SMS provider with its code
    /// ([`super::sms::SmsProvider::verify`]).
    async fn check_notifications(&self, report: &mut Report) {
        match &self.sms {
            Ok((p, after)) => {
                let mut problems = Vec::new();
                report.notifications = p
                    .verify(&self.ctx.api, *after, super::hooks::DRAIN_WAIT, |x| {
                        problems.push(x)
                    })
                    .await;
                for x in problems {
                    report.problem(x);
                }
            }
            Err(why) => {
                report.notifications = super::sms::SmsSummary {
                    note: why.clone(),
                    ..Default::default()
                };
            }
        }
    }

    /// The webhook checks ([`super::hooks::FleetHooks::verify`]): waits (bounded) for the
    /// last deliveries, then compares what the receiver got with the parcel trail.
    async fn check_webhooks(&self, report: &mut Report) {
        match &self.hooks {
            Ok(h) => {
                let mut problems = Vec::new();
                report.webhooks = h
                    .verify(&self.ctx.api, super::hooks::DRAIN_WAIT, |p| {
                        problems.push(p)
                    })
                    .await;
                for p in problems {
                    report.problem(p);
                }
            }
            Err(why) => {
                report.webhooks = super::hooks::WebhookSummary {
                    note: why.clone(),
                    ..Default::default()
                };
            }
        }
    }

    /// The alert checks ([`super::alerts::check_alerts`]), repeated for a few seconds until
    /// they pass: the rules engine clears an `offline` alert a moment after the reconnection
    /// the simulator saw.
    async fn check_alerts(&self, report: &mut Report) {
        let t = self.timeline.facts();
        let mut problems = Vec::new();
        for attempt in 1..=ALERT_TRIES {
            problems.clear();
            match list_alerts(&self.ctx.api, "state=all").await {
                Ok(list) => {
                    report.alerts = check_alerts(&list, &t, now_ms(), |p| problems.push(p));
                }
                Err(e) => problems.push(format!("alerts not readable: {e}")),
            }
            if problems.is_empty() || attempt == ALERT_TRIES {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        for p in problems {
            report.problem(p);
        }
    }

    /// After nightfall: waits until a solar cabinet has a `solar_deficit` or `battery_low`
    /// alert, or until the night lasted long enough that one was due
    /// ([`super::gateway::SimRules::night_alert_within`]); true if one was seen. False at
    /// once without a nightfall or with a gateway whose rules are not the simulator's.
    pub async fn wait_night_alert(&self) -> bool {
        let t = self.timeline.facts();
        let (Some(nf), Some(rules)) = (t.nightfall_ms, &t.rules) else {
            return false;
        };
        let until = nf + rules.night_alert_within().as_millis() as u64;
        loop {
            if let Ok(list) = list_alerts(&self.ctx.api, "state=all").await {
                if night_alerted(&list, &t, nf) {
                    return true;
                }
            }
            if now_ms() >= until {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The parcel checks, once.
    async fn parcels(&self, r: &mut Report, access: &[Vec<(String, u16)>]) {
        let orders = match self.ctx.api.orders().await {
            Ok(o) => o,
            Err(e) => {
                r.problem(format!("orders not readable: {e}"));
                return;
            }
        };
        let mut cabinets = Vec::with_capacity(self.cabinets.len());
        for cab in &self.cabinets {
            let comps: HashMap<u16, Option<String>> = match self
                .ctx
                .api
                .get(&format!("/v1/cabinets/{}/compartments", cab.id))
                .await
            {
                Ok(v) => v["compartments"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|c| {
                        let id = u16::try_from(c["id"].as_u64()?).ok()?;
                        Some((id, c["order"].as_str().map(str::to_owned)))
                    })
                    .collect(),
                Err(e) => {
                    r.problem(format!("{}: compartments not readable: {e}", cab.id));
                    HashMap::new()
                }
            };
            let parcels: Vec<bool> = (0..usize::from(self.opts.locks))
                .map(|i| cab.board.parcel_present(i).unwrap_or(false))
                .collect();
            cabinets.push(CabinetParcels {
                id: cab.id.to_string(),
                compartments: comps,
                parcels,
            });
        }
        let (people, created, pickups) = self.ctx.ledger.dump();
        let by_id: HashMap<&str, &Value> = orders
            .iter()
            .filter_map(|o| Some((o["id"].as_str()?, o)))
            .collect();
        check_parcels(r, &by_id, &cabinets, &people, &created, &pickups, access);
        let expiry = self.ctx.ledger.expiry();
        check_expiry(r, &by_id, &cabinets, &people, &created, &expiry, access);
    }
}
