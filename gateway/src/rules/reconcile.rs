//! How the engine turns signals into conditions and alerts: evaluation of one cabinet, the
//! pending -> active -> cleared life of a condition (with its clear delay), and the actions an
//! alert asks for (recorded once in the alert).

use std::collections::HashSet;

use locker_schemas::{CabinetId, CommandId, Millis};

use super::engine::{Effect, Engine};
use super::signals::{self, Sig, Signal};
use super::state::{cond_key, Cond};
use super::{ActionTaken, Alert, AlertKind, RuleAction};

impl Engine {
    /// Evaluates one cabinet's rules and reconciles its conditions.
    pub fn evaluate(&mut self, id: &CabinetId, now: Millis) {
        let Some(c) = self.cabs.get(id) else {
            return;
        };
        let rules = self.rules.for_site(c.site.as_ref()).clone();
        let sigs = signals::evaluate(c, &rules, now);
        let effects_before = self.out.len();
        let mut seen: HashSet<String> = HashSet::new();
        let mut changed = false;
        for s in sigs {
            let key = cond_key(s.kind, &s.subject);
            seen.insert(key.clone());
            changed |= self.apply(id, key, s, &rules, now);
        }
        // conditions with no signal are over
        let over: Vec<(String, AlertKind, String)> = self
            .cabs
            .get(id)
            .map(|c| {
                c.conds
                    .iter()
                    .filter(|(k, _)| !seen.contains(*k))
                    .map(|(k, v)| (k.clone(), v.kind, v.subject.clone()))
                    .collect()
            })
            .unwrap_or_default();
        for (key, kind, subject) in over {
            let s = Signal {
                kind,
                subject,
                sig: Sig::Clear { after: 0 },
            };
            changed |= self.apply(id, key, s, &rules, now);
        }
        // an alert raised, cleared or acted on is stored before it is published; a condition
        // that only became (or stopped being) pending is stored with the readings
        if self.out.len() > effects_before {
            self.dirty.insert(id.clone());
        } else if changed {
            self.touched.insert(id.clone());
        }
        if self.cabs.get(id).is_some_and(|c| c.timed()) {
            self.timed.insert(id.clone());
        } else {
            self.timed.remove(id);
        }
    }

    /// Applies one signal to its condition; true if the cabinet's state changed.
    fn apply(
        &mut self,
        id: &CabinetId,
        key: String,
        s: Signal,
        rules: &super::config::RuleSet,
        now: Millis,
    ) -> bool {
        let max = self.max_conds;
        let Some(c) = self.cabs.get_mut(id) else {
            return false;
        };
        match s.sig {
            Sig::Raise {
                since,
                wait,
                detail,
                value,
            } => {
                if !c.conds.contains_key(&key) {
                    if c.conds.len() >= max {
                        self.out.push(Effect::Refused {
                            cabinet: id.clone(),
                        });
                        return false;
                    }
                    c.conds.insert(
                        key.clone(),
                        Cond {
                            kind: s.kind,
                            subject: s.subject.clone(),
                            pending_since: None,
                            clear_since: None,
                            alert: None,
                        },
                    );
                }
                let Some(cond) = c.conds.get_mut(&key) else {
                    return false;
                };
                let mut changed = false;
                if cond.clear_since.take().is_some() {
                    changed = true;
                }
                if let Some(aid) = &cond.alert {
                    if let Some(a) = self.active.get_mut(aid) {
                        a.detail = detail;
                        a.value = value;
                    }
                    return changed;
                }
                let started = match cond.pending_since {
                    Some(p) => p,
                    None => {
                        let p = since.min(now);
                        cond.pending_since = Some(p);
                        changed = true;
                        p
                    }
                };
                if now >= started.saturating_add(wait) {
                    let alert_id = format!("ALR-{}", ulid::Ulid::new());
                    cond.alert = Some(alert_id.clone());
                    let mut a = Alert {
                        id: alert_id.clone(),
                        cabinet: id.clone(),
                        site: c.site.clone(),
                        kind: s.kind,
                        subject: s.subject,
                        severity: severity(rules, s.kind),
                        started,
                        raised_at: now,
                        cleared_at: None,
                        clear_reason: None,
                        detail,
                        value,
                        acked_by: None,
                        acked_at: None,
                        ack_note: None,
                        actions: Vec::new(),
                    };
                    if s.kind == AlertKind::BatteryLow
                        && a.subject.is_empty()
                        && rules.battery_low.power_save
                    {
                        self.action(&mut a, RuleAction::PowerSave, now);
                    }
                    self.active.insert(alert_id, a.clone());
                    self.out.push(Effect::Raised(a));
                    changed = true;
                }
                changed
            }
            Sig::Hold => match c.conds.get_mut(&key) {
                Some(cond) if cond.alert.is_some() => cond.clear_since.take().is_some(),
                Some(_) => {
                    c.conds.remove(&key);
                    true
                }
                None => false,
            },
            Sig::Clear { after } => {
                let Some(cond) = c.conds.get_mut(&key) else {
                    return false;
                };
                let Some(aid) = cond.alert.clone() else {
                    c.conds.remove(&key);
                    return true;
                };
                let cs = *cond.clear_since.get_or_insert(now);
                if now < cs.saturating_add(after) {
                    return true;
                }
                c.conds.remove(&key);
                if let Some(mut a) = self.active.remove(&aid) {
                    a.cleared_at = Some(now);
                    a.clear_reason = Some(if a.kind.is_one_shot() && a.acked_at.is_some() {
                        "acknowledged".into()
                    } else if a.kind.is_one_shot() {
                        "settled or expired".into()
                    } else {
                        "condition ended".into()
                    });
                    if a.kind == AlertKind::BatteryLow
                        && a.subject.is_empty()
                        && a.actions.iter().any(|x| x.action == RuleAction::PowerSave)
                    {
                        self.action(&mut a, RuleAction::PowerNormal, now);
                    }
                    if a.kind == AlertKind::Offline
                        && rules.offline.sync_credentials_after_ms > 0
                        && now.saturating_sub(a.started) >= rules.offline.sync_credentials_after_ms
                    {
                        self.action(&mut a, RuleAction::SyncCredentials, now);
                    }
                    self.out.push(Effect::Cleared(a));
                }
                true
            }
        }
    }

    /// Records an action in the alert (at most once per action) and asks for its command.
    fn action(&mut self, a: &mut Alert, action: RuleAction, now: Millis) {
        if a.actions.iter().any(|x| x.action == action) {
            return;
        }
        let command = CommandId::generate();
        a.actions.push(ActionTaken {
            action,
            command,
            at: now,
        });
        self.out.push(Effect::Action {
            alert: a.id.clone(),
            cabinet: a.cabinet.clone(),
            action,
            command,
        });
    }
}

/// The severity the rules give a kind.
pub fn severity(r: &super::config::RuleSet, k: AlertKind) -> super::Severity {
    match k {
        AlertKind::Offline => r.offline.severity,
        AlertKind::Flapping => r.flapping.severity,
        AlertKind::ReplayBacklog => r.replay_backlog.severity,
        AlertKind::NetworkFailover => r.network_failover.severity,
        AlertKind::BatteryLow => r.battery_low.severity,
        AlertKind::SolarDeficit => r.solar_deficit.severity,
        AlertKind::ChargerFault => r.charger_fault.severity,
        AlertKind::OnBattery => r.on_battery.severity,
        AlertKind::DoorLeftOpen => r.door_left_open.severity,
        AlertKind::DoorForced => r.door_forced.severity,
        AlertKind::LockJammed => r.lock_jammed.severity,
        AlertKind::ParcelSensor => r.parcel_sensor.severity,
        AlertKind::QueueWaiting => r.queue_waiting.severity,
        AlertKind::QueueDeep => r.queue_deep.severity,
        AlertKind::CommandNoOutcome => r.command_no_outcome.severity,
        AlertKind::BoardOffline => r.board_offline.severity,
        AlertKind::OutboxFull => r.outbox_full.severity,
        AlertKind::ClockSkew => r.clock_skew.severity,
    }
}
