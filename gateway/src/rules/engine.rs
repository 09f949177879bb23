//! The rules engine's state machine, without I/O: it takes what happened (committed events,
//! presence, the dispatcher's and the parcel domain's notes, ticks, acknowledgements) with the
//! time, updates each cabinet's [`CabState`], evaluates the rules ([`super::signals`]) and
//! turns the signals into pending conditions and alerts ([`Effect`]s for the actor to store,
//! publish and act on; the reconciliation is in [`super::reconcile`]). Deterministic given its
//! inputs, so the tests drive it with explicit times.

use std::collections::{HashMap, HashSet};

use locker_schemas::{
    AlarmKind, CabinetId, CommandId, DoorCause, Millis, Outcome, SiteId, Uplink, UplinkBody,
};

use super::config::Compiled;
use super::state::{cond_key, CabState, DoorSeen, Fact, PowerSeen, Replay};
use super::{Alert, AlertKind, DispatchNote, RuleAction, SensorNote};

/// An event recorded this long before the cabinet's connection counts as replayed, ms.
const REPLAY_GRACE_MS: u64 = 5_000;
/// Open doors remembered per cabinet at most (a cabinet reporting doors it does not have
/// cannot grow the state without bound).
const MAX_OPEN_DOORS: usize = 512;
/// One-shot facts (commands without an outcome, sensor conflicts) per cabinet at most; the
/// oldest goes first.
const MAX_FACTS: usize = 64;

/// What the engine decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    Raised(Alert),
    Cleared(Alert),
    /// An acknowledgement (stored, not published).
    Acked(Alert),
    /// A command to create for an alert (recorded in the alert's `actions` first).
    Action {
        alert: String,
        cabinet: CabinetId,
        action: RuleAction,
        command: CommandId,
    },
    /// A new condition refused: the cabinet holds `max_conditions_per_cabinet`.
    Refused {
        cabinet: CabinetId,
    },
}

/// The engine.
pub struct Engine {
    pub rules: Compiled,
    pub max_conds: usize,
    pub cabs: HashMap<CabinetId, CabState>,
    /// Active alerts by id.
    pub active: HashMap<String, Alert>,
    /// Cabinets whose conditions or alerts changed since the last [`Engine::take_dirty`]:
    /// stored before the batch's effects take effect.
    pub(super) dirty: HashSet<CabinetId>,
    /// Cabinets whose readings changed (doors, power, windows, presence) but not their
    /// conditions: stored every few seconds ([`Engine::take_touched`]), so a busy fleet does not
    /// rewrite every cabinet's state with every batch.
    pub(super) touched: HashSet<CabinetId>,
    /// Cabinets whose conditions change with time alone.
    pub(super) timed: HashSet<CabinetId>,
    /// Cabinets with an offline queue at the dispatcher's last report.
    queued: HashSet<CabinetId>,
    pub(super) out: Vec<Effect>,
}

impl Engine {
    /// An engine over stored state. Presence is unknown after a restart: cabinets stored as
    /// online count as offline from `now` until the edge says otherwise (an offline cabinet
    /// keeps its start time).
    pub fn new(
        rules: Compiled,
        max_conds: usize,
        cabs: HashMap<CabinetId, CabState>,
        active: Vec<Alert>,
        now: Millis,
    ) -> Self {
        let mut e = Self {
            rules,
            max_conds,
            cabs,
            active: active.into_iter().map(|a| (a.id.clone(), a)).collect(),
            dirty: HashSet::new(),
            touched: HashSet::new(),
            timed: HashSet::new(),
            queued: HashSet::new(),
            out: Vec::new(),
        };
        for (id, c) in e.cabs.iter_mut() {
            if c.online == Some(true) {
                c.online = Some(false);
                c.since = now;
                e.dirty.insert(id.clone());
            }
            if c.queue.is_some() {
                e.queued.insert(id.clone());
            }
        }
        e.timed = e
            .cabs
            .iter()
            .filter(|(_, c)| c.timed())
            .map(|(id, _)| id.clone())
            .collect();
        // a cabinet now counted offline starts its offline condition here, so the tick sees
        // it even if the cabinet never connects again (nothing else would evaluate it)
        let now_offline: Vec<CabinetId> = e.dirty.iter().cloned().collect();
        for id in now_offline {
            e.evaluate(&id, now);
        }
        e
    }

    /// The effects decided since the last call.
    pub fn take_effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.out)
    }

    /// The cabinets changed since the last call, with their state.
    pub fn take_dirty(&mut self) -> Vec<(CabinetId, CabState)> {
        let ids: Vec<CabinetId> = self.dirty.drain().collect();
        for id in &ids {
            self.touched.remove(id);
        }
        ids.into_iter()
            .filter_map(|id| self.cabs.get(&id).map(|c| (id, c.clone())))
            .collect()
    }

    /// The cabinets whose readings changed since the last call (and not since stored as
    /// dirty), with their state.
    pub fn take_touched(&mut self) -> Vec<(CabinetId, CabState)> {
        let ids: Vec<CabinetId> = self.touched.drain().collect();
        ids.into_iter()
            .filter_map(|id| self.cabs.get(&id).map(|c| (id, c.clone())))
            .collect()
    }

    /// Records that the cabinet's audit-log position `pos` is applied (stored with its
    /// readings).
    pub fn applied(&mut self, id: &CabinetId, pos: u64) {
        if let Some(c) = self.cabs.get_mut(id) {
            if pos > c.applied {
                c.applied = pos;
                self.touched.insert(id.clone());
            }
        }
    }

    /// Places cabinets in sites (from the parcel domain).
    pub fn set_sites(&mut self, sites: &HashMap<CabinetId, SiteId>, now: Millis) {
        let ids: Vec<CabinetId> = self.cabs.keys().cloned().collect();
        for id in ids {
            let want = sites.get(&id).cloned();
            if let Some(c) = self.cabs.get_mut(&id) {
                if c.site != want {
                    c.site = want.clone();
                    // its active alerts move with it (a site manager lists them by site); they
                    // are stored with it at their next change, and set again after a restart
                    for a in self.active.values_mut().filter(|a| a.cabinet == id) {
                        a.site = want.clone();
                    }
                    self.dirty.insert(id.clone());
                    self.evaluate(&id, now);
                }
            }
        }
    }

    fn cab(&mut self, id: &CabinetId) -> &mut CabState {
        if !self.cabs.contains_key(id) {
            self.cabs.insert(id.clone(), CabState::default());
        }
        self.touched.insert(id.clone());
        self.cabs.entry(id.clone()).or_default()
    }

    /// A presence change at the edge.
    pub fn presence(&mut self, id: &CabinetId, online: bool, at: Millis, now: Millis) {
        let r = self
            .rules
            .for_site(self.cabs.get(id).and_then(|c| c.site.as_ref()));
        let cap = r.flapping.disconnects as usize;
        let window = r.flapping.window_ms;
        let c = self.cab(id);
        if c.online == Some(online) {
            return;
        }
        c.online = Some(online);
        c.since = at.min(now);
        if online {
            c.replay = Some(Replay {
                connected_at: c.since,
                events: 0,
                oldest: None,
                done_at: None,
            });
        } else {
            c.disconnects.push_back(c.since);
            while c.disconnects.len() > cap
                || c.disconnects
                    .front()
                    .is_some_and(|t| now.saturating_sub(*t) >= window)
            {
                c.disconnects.pop_front();
            }
        }
        self.evaluate(id, now);
    }

    /// Events ingest committed.
    pub fn uplinks(&mut self, events: &[Uplink], now: Millis) {
        let mut touched: Vec<CabinetId> = Vec::new();
        for u in events {
            if touched.last() != Some(&u.cabinet) {
                touched.push(u.cabinet.clone());
            }
            self.observe(u, now);
        }
        touched.sort();
        touched.dedup();
        for id in touched {
            self.evaluate(&id, now);
        }
    }

    fn observe(&mut self, u: &Uplink, now: Millis) {
        let site = self.cabs.get(&u.cabinet).and_then(|c| c.site.clone());
        let r = self.rules.for_site(site.as_ref()).clone();
        let c = self.cab(&u.cabinet);
        let ts = u.ts.min(now);
        // the replay after a return: events recorded before the connection
        if let Some(p) = c.replay.as_mut() {
            if p.done_at.is_none() {
                if u.ts.saturating_add(REPLAY_GRACE_MS) < p.connected_at {
                    p.events += 1;
                    p.oldest = Some(p.oldest.map_or(u.ts, |o| o.min(u.ts)));
                } else {
                    p.done_at = Some(now);
                    if p.events == 0 {
                        c.replay = None;
                    }
                }
            }
        }
        // a clock ahead of the gateway's; once judged ahead, every later event judges it
        // again (they arrive in the cabinet's order), so the alert ends when the clock is set,
        // not at the next connection's hello
        let ahead = u.ts as i64 - now as i64;
        if u.ts > now.saturating_add(r.clock_skew.max_skew_ms) {
            c.skew = Some((ahead, now));
        } else if c.skew.is_some_and(|(s, _)| s > 0) {
            c.skew = Some((ahead.max(0), now));
        }
        match &u.body {
            UplinkBody::Hello(h) => {
                let kind = h.network as u8;
                if c.network.map(|(k, _)| k) != Some(kind) {
                    c.network = Some((kind, ts));
                }
                if c.home_network.is_none() {
                    c.home_network = Some(kind);
                }
                // a hello is stamped after its connection opened: stamped well before it,
                // the clock is behind (judged only for a hello that arrives promptly)
                if c.online == Some(true)
                    && now.saturating_sub(c.since) <= r.clock_skew.hello_within_ms
                {
                    let skew = if u.ts < c.since {
                        u.ts as i64 - c.since as i64
                    } else if u.ts > now {
                        u.ts as i64 - now as i64
                    } else {
                        0
                    };
                    c.skew = Some((skew, now));
                }
            }
            UplinkBody::Network(n) => {
                let kind = n.kind as u8;
                if c.network.map(|(k, _)| k) != Some(kind) {
                    c.network = Some((kind, ts));
                }
            }
            UplinkBody::Door(d) => {
                let comp = d.compartment.0;
                if d.open && (c.doors.len() < MAX_OPEN_DOORS || c.doors.contains_key(&comp)) {
                    c.doors.insert(
                        comp,
                        DoorSeen {
                            open: true,
                            since: ts,
                            forced: d.cause == DoorCause::Unknown,
                        },
                    );
                } else {
                    c.doors.remove(&comp);
                    if d.parcel.is_some() {
                        // a new sensor reading settles an earlier conflict
                        let key = cond_key(AlertKind::ParcelSensor, &format!("compartment {comp}"));
                        if c.facts.get(&key).is_some_and(|f| f.at < u.ts) {
                            c.facts.remove(&key);
                        }
                    }
                }
            }
            UplinkBody::Alarm(a) => {
                let (kind, subject) = match a.kind {
                    AlarmKind::LockBoardOffline => (
                        AlertKind::BoardOffline,
                        a.board.map(|b| format!("board {b}")).unwrap_or_default(),
                    ),
                    AlarmKind::OutboxNearlyFull => (AlertKind::OutboxFull, String::new()),
                    AlarmKind::ChargerFault => (AlertKind::ChargerFault, String::new()),
                    AlarmKind::PowerFail => (AlertKind::BatteryLow, "voltage".to_string()),
                    AlarmKind::Tamper => (AlertKind::DoorForced, "tamper".to_string()),
                    // the gateway judges doors from door events; the keypad is the parcel
                    // domain's
                    AlarmKind::ForcedOpen | AlarmKind::DoorLeftOpen | AlarmKind::KeypadLocked => {
                        return
                    }
                };
                let key = cond_key(kind, &subject);
                if a.active {
                    c.alarms.entry(key).or_insert(ts);
                } else {
                    c.alarms.remove(&key);
                }
            }
            UplinkBody::Power(p) => {
                let seen = PowerSeen {
                    ts: u.ts,
                    soc_pct: p.soc_pct.min(100),
                    battery_mv: p.battery_mv,
                    pv_w: p.pv_w,
                    load_w: p.load_w,
                    charging: p.charging as u8,
                };
                if let Some(prev) = c.power {
                    c.energy.add(r.solar_deficit.window_ms, &prev, u.ts);
                }
                if c.power.is_none_or(|prev| prev.ts <= u.ts) {
                    c.power = Some(seen);
                }
            }
            UplinkBody::Scan(_) | UplinkBody::Result(_) | UplinkBody::Access(_) => {}
        }
    }

    /// A note from the dispatcher.
    pub fn dispatch(&mut self, n: DispatchNote, now: Millis) {
        match n {
            DispatchNote::Queue { waiting, .. } => {
                let mut seen = HashSet::new();
                for (id, depth, oldest) in waiting {
                    seen.insert(id.clone());
                    let c = self.cab(&id);
                    if c.queue != Some((depth, oldest)) {
                        c.queue = Some((depth, oldest));
                    }
                    self.queued.insert(id.clone());
                    self.evaluate(&id, now);
                }
                let gone: Vec<CabinetId> = self
                    .queued
                    .iter()
                    .filter(|id| !seen.contains(*id))
                    .cloned()
                    .collect();
                for id in gone {
                    self.queued.remove(&id);
                    self.cab(&id).queue = None;
                    self.evaluate(&id, now);
                }
            }
            DispatchNote::Outcome {
                cabinet,
                command,
                compartment,
                outcome,
                at,
            } => {
                let site = self.cabs.get(&cabinet).and_then(|c| c.site.clone());
                let r = self.rules.for_site(site.as_ref()).clone();
                let c = self.cab(&cabinet);
                match outcome {
                    Outcome::Jammed => {
                        let Some(comp) = compartment else {
                            return;
                        };
                        let q = c.jams.entry(comp.0).or_default();
                        q.push_back(at.min(now));
                        while q.len() > r.lock_jammed.jams as usize {
                            q.pop_front();
                        }
                    }
                    Outcome::NoAnswer => {
                        let key =
                            cond_key(AlertKind::CommandNoOutcome, &format!("command {command}"));
                        cap_facts(&mut c.facts);
                        c.facts.insert(
                            key,
                            Fact {
                                at: at.min(now),
                                detail: format!(
                                    "command {command} ended without an outcome: the cabinet never answered (whether it ran is unknown)"
                                ),
                                compartment: compartment.map(|c| c.0),
                            },
                        );
                    }
                    _ => return,
                }
                self.evaluate(&cabinet, now);
            }
        }
    }

    /// A sensor conflict from the parcel domain.
    pub fn sensor(&mut self, n: SensorNote, now: Millis) {
        let comp = n.compartment.0;
        let c = self.cab(&n.cabinet);
        cap_facts(&mut c.facts);
        c.facts.insert(
            cond_key(AlertKind::ParcelSensor, &format!("compartment {comp}")),
            Fact {
                at: n.at.min(now),
                detail: format!(
                    "compartment {comp}: {} (order {})",
                    n.exception.replace('_', " "),
                    n.order
                ),
                compartment: Some(comp),
            },
        );
        self.evaluate(&n.cabinet, now);
    }

    /// Time passed: evaluates the cabinets whose conditions depend on it.
    pub fn tick(&mut self, now: Millis) {
        let ids: Vec<CabinetId> = self.timed.iter().cloned().collect();
        for id in ids {
            self.prune(&id, now);
            self.evaluate(&id, now);
        }
    }

    /// Drops what fell out of its window or expired.
    fn prune(&mut self, id: &CabinetId, now: Millis) {
        let site = self.cabs.get(id).and_then(|c| c.site.clone());
        let r = self.rules.for_site(site.as_ref()).clone();
        let Some(c) = self.cabs.get_mut(id) else {
            return;
        };
        let mut changed = false;
        let before = c.disconnects.len();
        c.disconnects
            .retain(|t| now.saturating_sub(*t) < r.flapping.window_ms);
        changed |= before != c.disconnects.len();
        for q in c.jams.values_mut() {
            let n = q.len();
            q.retain(|t| now.saturating_sub(*t) < r.lock_jammed.window_ms);
            changed |= n != q.len();
        }
        c.jams.retain(|_, q| !q.is_empty());
        let n = c.facts.len();
        c.facts.retain(|k, f| {
            let keep = if k.starts_with(AlertKind::ParcelSensor.as_str()) {
                r.parcel_sensor.clear_after_ms
            } else {
                r.command_no_outcome.clear_after_ms
            };
            now.saturating_sub(f.at) < keep
        });
        changed |= n != c.facts.len();
        if let Some(p) = &c.replay {
            if p.done_at
                .is_some_and(|d| now.saturating_sub(d) >= r.replay_backlog.hold_ms)
            {
                c.replay = None;
                changed = true;
            }
        }
        if changed {
            self.touched.insert(id.clone());
        }
    }

    /// Acknowledges an active alert; a one-shot alert clears with it (and is answered
    /// cleared). `None` if not active.
    pub fn ack(&mut self, id: &str, by: &str, note: Option<String>, now: Millis) -> Option<Alert> {
        let a = self.active.get_mut(id)?;
        if a.acked_at.is_none() {
            a.acked_by = Some(by.to_string());
            a.acked_at = Some(now);
            a.ack_note = note;
        }
        let a = a.clone();
        self.out.push(Effect::Acked(a.clone()));
        if a.kind.is_one_shot() {
            let key = cond_key(a.kind, &a.subject);
            if let Some(c) = self.cabs.get_mut(&a.cabinet) {
                c.facts.remove(&key);
            }
            self.dirty.insert(a.cabinet.clone());
            let cab = a.cabinet.clone();
            self.evaluate(&cab, now);
        }
        // a one-shot alert cleared with its acknowledgement: the answer says so
        let cleared = self.out.iter().rev().find_map(|e| match e {
            Effect::Cleared(c) if c.id == id => Some(c.clone()),
            _ => None,
        });
        Some(self.active.get(id).cloned().or(cleared).unwrap_or(a))
    }
}

/// Makes room for one more fact: drops the oldest beyond [`MAX_FACTS`].
fn cap_facts(facts: &mut std::collections::BTreeMap<String, Fact>) {
    while facts.len() >= MAX_FACTS {
        let Some(oldest) = facts
            .iter()
            .min_by_key(|(_, f)| f.at)
            .map(|(k, _)| k.clone())
        else {
            return;
        };
        facts.remove(&oldest);
    }
}
