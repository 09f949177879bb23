//! The end-of-run invariant report, built from the gateway's API and the simulated hardware:
//! - every event each agent produced is stored exactly once: the cabinet's audit log seqs are
//!   `1..=last` with no gap or duplicate, `last` equals the agent's own last seq, and the
//!   agent's outbox is drained;
//! - every command created through the API has exactly one outcome (the command record is final
//!   and the Result events for it in the audit log all carry that outcome: a cabinet answers a
//!   resent command it already finished with its stored Result again);
//! - no door opened twice for one command (at most one door-open event per command) and the
//!   lock pulses counted by the simulated boards equal the commands with outcome `opened` plus
//!   the local accesses (badge and PIN) in the audit log;
//! - orders ([`check_parcels`]): no order lost (every order created in this run is listed by
//!   the API), every order in the state the people saw it reach, no compartment held by two
//!   live orders (and the compartment list names the live order), every board's parcel sensor
//!   in line with the orders (a parcel inside exactly where an order is deposited, ready,
//!   expired or waiting for its carrier; picked-up and returned compartments empty), and no
//!   parcel released to a wrong code (every pickup the cabinets reported is one the people made
//!   with the code their notice gave them, and every pickup they made was reported);
//! - expired parcels ([`check_expiry`]): every expired order's compartment still holds its
//!   parcel (at the end, and when its courier came to collect it), every returned order's
//!   compartment is empty (unless a later order's parcel is in it), the old PIN typed once per
//!   expired order was refused without a lock pulse, and no cabinet released an expired
//!   order's parcel to a pickup code;
//! - alerts ([`super::alerts::check_alerts`]): the outage's `offline` alerts, one per cabinet
//!   cut long enough and cleared after it came back, none elsewhere, no duplicates, and a power
//!   alert after nightfall;
//! - cluster mode ([`super::nodecheck`]): every node's audit log of every cabinet is the same
//!   as the domain node's;
//! - webhooks ([`super::hooks::check_webhooks`]): every order transition of the trail arrived
//!   at the fleet's subscription with a valid signature, exactly once after dedup by
//!   `webhook-id`, in trail order per cabinet, and nothing is left pending at the gateway.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use serde_json::Value;

use super::alerts::AlertSummary;
use super::api::AuditEvent;
use super::hooks::WebhookSummary;
use super::ledger::{ExpiryFacts, Pickup, SimOrder};

/// What was checked and what was found.
#[derive(Debug, Default, Clone)]
pub struct Report {
    pub cabinets: usize,
    pub events_stored: u64,
    pub events_by_kind: BTreeMap<String, u64>,
    pub commands_created: u64,
    pub outcomes: BTreeMap<String, u64>,
    pub pulses_on_boards: u64,
    pub pulses_expected: u64,
    pub local_accesses: u64,
    /// Orders created in this run, and their states at the end.
    pub orders_created: u64,
    pub orders_by_state: BTreeMap<String, u64>,
    /// Pickups the people made (offline ones among them) and pickups the cabinets reported.
    pub pickups_people: u64,
    pub pickups_offline: u64,
    pub pickups_reported: u64,
    /// Compartments whose parcel sensor and holder were compared with the orders.
    pub compartments_checked: u64,
    /// Orders of this run the people saw expire, those collected by their courier, and those
    /// the API shows `returned` after having been `expired`.
    pub expired_seen: u64,
    pub expired_collected: u64,
    pub expired_returned: u64,
    /// Orders of this run the API shows `returned` (recalled or expired, then collected).
    pub returned: u64,
    /// Old PINs typed after expiry, refused by the cabinets, and left out (keypad lock).
    pub late_pins_tried: u64,
    pub late_pins_refused: u64,
    pub late_pins_skipped: u64,
    /// The gateway's alerts: counted by kind and state, checked against the script
    /// (see [`super::alerts`]).
    pub alerts: AlertSummary,
    /// The fleet's webhook subscription: what arrived (see [`super::hooks`]).
    pub webhooks: WebhookSummary,
    /// The recipients' notifications: what reached the fleet's SMS provider (see
    /// [`super::sms`]).
    pub notifications: super::sms::SmsSummary,
    /// Cluster mode: every node's audit logs, per-node counts (see [`super::nodecheck`]).
    pub cluster: super::nodecheck::ClusterSummary,
    /// Each violated invariant, one line each (the first 50).
    pub problems: Vec<String>,
    /// Count of violations (may exceed `problems.len()`).
    pub violations: u64,
}

impl Report {
    /// No invariant was violated.
    pub fn is_clean(&self) -> bool {
        self.violations == 0
    }

    /// Records a violation.
    pub fn problem(&mut self, msg: String) {
        self.violations += 1;
        if self.problems.len() < 50 {
            self.problems.push(msg);
        }
    }
}

/// The facts about one cabinet the checks need.
pub struct CabinetFacts<'a> {
    pub id: &'a str,
    pub events: &'a [AuditEvent],
    /// The agent's own last seq (`next_seq - 1`), outbox depth and last acked seq.
    pub agent_last_seq: u64,
    pub agent_outbox: u64,
    pub agent_acked: u64,
    pub board_pulses: u64,
    /// Events from this seq on were made in this run (the boards' pulse counters are too).
    pub first_seq: u64,
    /// Commands created for this cabinet and the outcome their record shows (None: not final).
    pub commands: &'a [(String, Option<String>)],
}

/// Checks one cabinet and adds to the report.
pub fn check_cabinet(r: &mut Report, f: &CabinetFacts<'_>) {
    r.cabinets += 1;
    r.events_stored += f.events.len() as u64;
    let mut expect = 1u64;
    for e in f.events {
        *r.events_by_kind.entry(e.kind.clone()).or_default() += 1;
        if e.seq != expect {
            r.problem(format!(
                "{}: audit log seq {} where {} was expected (gap or duplicate)",
                f.id, e.seq, expect
            ));
            expect = e.seq;
        }
        expect += 1;
    }
    let last = f.events.last().map_or(0, |e| e.seq);
    if last != f.agent_last_seq {
        r.problem(format!(
            "{}: gateway stored up to seq {last}, the agent produced up to {}",
            f.id, f.agent_last_seq
        ));
    }
    if f.agent_outbox != 0 || f.agent_acked != f.agent_last_seq {
        r.problem(format!(
            "{}: outbox not drained (depth {}, acked {} of {})",
            f.id, f.agent_outbox, f.agent_acked, f.agent_last_seq
        ));
    }
    let mut results: HashMap<&str, Vec<&str>> = HashMap::new();
    let mut opens: HashMap<&str, u64> = HashMap::new();
    let mut opened = 0u64;
    let mut access = 0u64;
    for e in f.events.iter().filter(|e| e.seq >= f.first_seq) {
        match e.kind.as_str() {
            "result" => {
                let cmd = e.data["command"].as_str().unwrap_or("");
                let outcome = e.data["outcome"].as_str().unwrap_or("");
                let outs = results.entry(cmd).or_default();
                // a repeated answer (to a resend) is the same outcome, not a second opening
                if outs.is_empty() && outcome == "opened" {
                    opened += 1;
                }
                outs.push(outcome);
            }
            "access" => access += 1,
            "door" if e.data["open"].as_bool() == Some(true) => {
                if let Some(c) = e.data["cause"]["command"].as_str() {
                    *opens.entry(c).or_default() += 1;
                }
            }
            _ => {}
        }
    }
    for (cmd, n) in &opens {
        if *n > 1 {
            r.problem(format!("{}: command {cmd} opened a door {n} times", f.id));
        }
    }
    for (cmd, outs) in &results {
        if outs.iter().any(|o| o != &outs[0]) {
            r.problem(format!(
                "{}: command {cmd} has disagreeing results: {outs:?}",
                f.id
            ));
        }
    }
    for (id, outcome) in f.commands {
        r.commands_created += 1;
        let key = outcome.clone().unwrap_or_else(|| "none".into());
        *r.outcomes.entry(key).or_default() += 1;
        match (outcome, results.get(id.as_str())) {
            (None, _) => r.problem(format!("{}: command {id} has no outcome", f.id)),
            (Some(o), Some(outs)) if outs.first() != Some(&o.as_str()) => r.problem(format!(
                "{}: command {id}: API says {o}, the cabinet reported {outs:?}",
                f.id
            )),
            (Some(o), None) if o != "expired" && o != "cancelled" && o != "no_answer" => r.problem(
                format!("{}: command {id} has outcome {o} but no result event", f.id),
            ),
            _ => {}
        }
    }
    r.local_accesses += access;
    r.pulses_on_boards += f.board_pulses;
    r.pulses_expected += opened + access;
    if f.board_pulses != opened + access {
        r.problem(format!(
            "{}: the board counted {} lock pulses, expected {} (opened commands {opened} + local accesses {access})",
            f.id, f.board_pulses, opened + access
        ));
    }
}

/// One cabinet's compartments as the gateway lists them (compartment -> holding order) and
/// its board's parcel sensors (lock 0 first).
pub struct CabinetParcels {
    pub id: String,
    pub compartments: HashMap<u16, Option<String>>,
    pub parcels: Vec<bool>,
}

const LIVE: [&str; 5] = [
    "reserved",
    "deposited",
    "ready",
    "expired",
    "return_requested",
];
const INSIDE: [&str; 4] = ["deposited", "ready", "expired", "return_requested"];

/// Checks the orders against the cabinets, the boards and the people (see the module doc).
/// `access[i]` are the pickups cabinet `i` reported in this run: (order reference, compartment).
pub fn check_parcels(
    r: &mut Report,
    orders: &HashMap<&str, &Value>,
    cabinets: &[CabinetParcels],
    people: &HashMap<String, SimOrder>,
    created: &[String],
    pickups: &[Pickup],
    access: &[Vec<(String, u16)>],
) {
    let state = |o: &Value| o["state"].as_str().unwrap_or("?").to_owned();
    r.orders_created = created.len() as u64;
    for id in created {
        match orders.get(id.as_str()) {
            Some(o) => *r.orders_by_state.entry(state(o)).or_default() += 1,
            None => r.problem(format!(
                "order {id} was created but the API does not list it"
            )),
        }
    }
    for (id, p) in people {
        let Some(o) = orders.get(id.as_str()) else {
            continue;
        };
        let s = state(o);
        if !p.stage.api_states().contains(&s.as_str()) {
            r.problem(format!(
                "order {id}: the people saw it {:?}, the API says {s}",
                p.stage
            ));
        }
    }
    // the live order of each (cabinet, compartment)
    let mut live: HashMap<(String, u16), Vec<(&str, String)>> = HashMap::new();
    for (id, o) in orders {
        let s = state(o);
        if !LIVE.contains(&s.as_str()) {
            continue;
        }
        if let (Some(cab), Some(c)) = (o["cabinet"].as_str(), o["compartment"].as_u64()) {
            let c = u16::try_from(c).unwrap_or(0);
            live.entry((cab.to_owned(), c)).or_default().push((id, s));
        }
    }
    for ((cab, c), held) in &live {
        if held.len() > 1 {
            r.problem(format!(
                "{cab} compartment {c} is held by {} live orders: {held:?}",
                held.len()
            ));
        }
    }
    for cab in cabinets {
        for (i, &parcel) in cab.parcels.iter().enumerate() {
            let c = u16::try_from(i + 1).unwrap_or(0);
            r.compartments_checked += 1;
            let held = live.get(&(cab.id.clone(), c));
            let holder = held.and_then(|h| h.first()).map(|(id, _)| *id);
            let inside = held
                .into_iter()
                .flatten()
                .any(|(_, s)| INSIDE.contains(&s.as_str()));
            if parcel != inside {
                r.problem(format!(
                    "{} compartment {c}: the parcel sensor says {}, the orders say {} ({held:?})",
                    cab.id,
                    if parcel {
                        "a parcel is inside"
                    } else {
                        "empty"
                    },
                    if inside {
                        "a parcel is inside"
                    } else {
                        "empty"
                    },
                ));
            }
            let listed = cab.compartments.get(&c).cloned().flatten();
            if listed.as_deref() != holder {
                r.problem(format!(
                    "{} compartment {c}: the compartment list names order {listed:?}, the live order is {holder:?}",
                    cab.id
                ));
            }
        }
    }
    // pickups: the people's against the cabinets'
    r.pickups_people = pickups.len() as u64;
    r.pickups_offline = pickups.iter().filter(|p| p.offline).count() as u64;
    let made: HashSet<(usize, &str, u16)> = pickups
        .iter()
        .map(|p| (p.cabinet, p.order.as_str(), p.compartment))
        .collect();
    let mut reported: HashSet<(usize, &str, u16)> = HashSet::new();
    for (i, list) in access.iter().enumerate() {
        let name = cabinets.get(i).map_or("?", |c| c.id.as_str());
        for (reference, c) in list {
            r.pickups_reported += 1;
            let key = (i, reference.as_str(), *c);
            if !made.contains(&key) {
                r.problem(format!(
                    "{name} compartment {c} released a parcel to order {reference}, whose recipient did not pick up there with their code"
                ));
            }
            if !reported.insert(key) {
                r.problem(format!(
                    "{name}: the pickup of order {reference} was reported twice"
                ));
            }
        }
    }
    for p in pickups {
        if !reported.contains(&(p.cabinet, p.order.as_str(), p.compartment)) {
            let name = cabinets.get(p.cabinet).map_or("?", |c| c.id.as_str());
            r.problem(format!(
                "{name}: the pickup of order {} (compartment {}, offline {}) was never reported",
                p.order, p.compartment, p.offline
            ));
        }
    }
}

/// Checks the expired and returned orders (see the module doc). `access[i]` as for
/// [`check_parcels`].
pub fn check_expiry(
    r: &mut Report,
    orders: &HashMap<&str, &Value>,
    cabinets: &[CabinetParcels],
    people: &HashMap<String, SimOrder>,
    created: &[String],
    facts: &ExpiryFacts,
    access: &[Vec<(String, u16)>],
) {
    fn state(o: &Value) -> &str {
        o["state"].as_str().unwrap_or("?")
    }
    let parcel = |o: &Value| -> Option<(usize, bool)> {
        let cab = o["cabinet"].as_str()?;
        let c = usize::try_from(o["compartment"].as_u64()?).ok()?;
        let i = cabinets.iter().position(|x| x.id == cab)?;
        Some((i, *cabinets[i].parcels.get(c.checked_sub(1)?)?))
    };
    // a compartment a live order with its parcel inside holds now
    let occupied: HashSet<(&str, u64)> = orders
        .values()
        .filter(|o| INSIDE.contains(&state(o)))
        .filter_map(|o| Some((o["cabinet"].as_str()?, o["compartment"].as_u64()?)))
        .collect();
    for id in created {
        let Some(o) = orders.get(id.as_str()) else {
            continue;
        };
        if people.get(id).is_some_and(|p| p.expired) {
            r.expired_seen += 1;
        }
        let was_expired = o["history"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|h| h["to"] == "expired");
        match state(o) {
            "expired" if parcel(o).is_some_and(|(_, inside)| !inside) => {
                r.problem(format!(
                    "expired order {id}: its compartment is empty before its courier collected it"
                ));
            }
            "returned" => {
                r.returned += 1;
                if was_expired {
                    r.expired_returned += 1;
                }
                let key = (
                    o["cabinet"].as_str().unwrap_or(""),
                    o["compartment"].as_u64().unwrap_or(0),
                );
                if parcel(o).is_some_and(|(_, inside)| inside) && !occupied.contains(&key) {
                    r.problem(format!(
                        "returned order {id}: a parcel is still in its compartment {key:?}"
                    ));
                }
            }
            _ => {}
        }
    }
    r.expired_collected = facts.collected;
    for id in &facts.empty_at_collection {
        r.problem(format!(
            "expired order {id}: its compartment was empty when the courier came to collect it"
        ));
    }
    r.late_pins_skipped = facts.tries_skipped;
    for t in &facts.tries {
        r.late_pins_tried += 1;
        let name = cabinets.get(t.cabinet).map_or("?", |c| c.id.as_str());
        if t.refused && !t.pulsed {
            r.late_pins_refused += 1;
        } else {
            r.problem(format!(
                "{name}: the old PIN of expired order {} was answered {} (lock pulsed: {})",
                t.order, t.access, t.pulsed
            ));
        }
    }
    for (i, list) in access.iter().enumerate() {
        let name = cabinets.get(i).map_or("?", |c| c.id.as_str());
        for (reference, c) in list {
            if people.get(reference).is_some_and(|p| p.expired) {
                r.problem(format!(
                    "{name} compartment {c} released the parcel of expired order {reference} to a pickup code"
                ));
            }
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invariant report over {} cabinets:", self.cabinets)?;
        let kinds: Vec<String> = self
            .events_by_kind
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        writeln!(
            f,
            "  events stored exactly once, in order (seqs 1..=last, equal to each agent's last seq, outboxes drained): {} events ({})",
            self.events_stored,
            kinds.join(", ")
        )?;
        let outs: Vec<String> = self
            .outcomes
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        writeln!(
            f,
            "  commands created through the API, each with exactly one outcome: {} ({})",
            self.commands_created,
            outs.join(", ")
        )?;
        writeln!(
            f,
            "  lock pulses on the simulated boards: {} = opened commands + local accesses ({}): {}",
            self.pulses_on_boards,
            self.pulses_expected,
            self.pulses_on_boards == self.pulses_expected
        )?;
        let states: Vec<String> = self
            .orders_by_state
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        writeln!(
            f,
            "  orders created in this run, none lost, each in the state the people saw: {} ({})",
            self.orders_created,
            states.join(", ")
        )?;
        writeln!(
            f,
            "  compartments held by at most one live order, parcel sensors agreeing with the orders: {} compartments",
            self.compartments_checked
        )?;
        writeln!(
            f,
            "  pickups by the recipients' own codes: {} made ({} offline), {} reported by the cabinets",
            self.pickups_people, self.pickups_offline, self.pickups_reported
        )?;
        writeln!(
            f,
            "  expired parcels kept until collected, returned compartments empty, old PINs refused: {} expired, {} collected, {} returned ({} after expiry), old PINs {} tried, {} refused without a pulse, {} left out for the keypad lock",
            self.expired_seen,
            self.expired_collected,
            self.returned,
            self.expired_returned,
            self.late_pins_tried,
            self.late_pins_refused,
            self.late_pins_skipped
        )?;
        writeln!(f, "{}", self.alerts)?;
        writeln!(f, "{}", self.webhooks)?;
        writeln!(f, "{}", self.notifications)?;
        write!(f, "{}", self.cluster)?;
        if self.is_clean() {
            writeln!(f, "  RESULT: clean (0 violations)")
        } else {
            writeln!(f, "  RESULT: {} violations:", self.violations)?;
            for p in &self.problems {
                writeln!(f, "    - {p}")?;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::ledger::{LateTry, Stage};
    use serde_json::json;

    fn sim(id: &str, stage: Stage, expired: bool) -> SimOrder {
        SimOrder {
            id: id.into(),
            carrier: 0,
            tracking: format!("T-{id}"),
            cabinet: 0,
            compartment: 1,
            stage,
            pin: Some("123456".into()),
            qr: None,
            no_show: true,
            ready_at: None,
            leftover: false,
            creds_ok: true,
            short_window: true,
            expired,
            late_pin_tried: true,
        }
    }

    #[test]
    fn expired_parcels_must_stay_and_old_pins_must_be_refused() {
        let expired = json!({"id": "a", "state": "expired", "cabinet": "CAB-1", "compartment": 1,
            "history": [{"from": "ready", "to": "expired"}]});
        let returned = json!({"id": "b", "state": "returned", "cabinet": "CAB-1", "compartment": 2,
            "history": [{"from": "ready", "to": "expired"}, {"from": "expired", "to": "returned"}]});
        let orders: HashMap<&str, &Value> = [("a", &expired), ("b", &returned)].into();
        let people: HashMap<String, SimOrder> = [
            ("a".to_owned(), sim("a", Stage::Expired, true)),
            ("b".to_owned(), sim("b", Stage::Returned, true)),
        ]
        .into();
        let created = vec!["a".to_owned(), "b".to_owned()];
        let board = |parcels: Vec<bool>| {
            vec![CabinetParcels {
                id: "CAB-1".into(),
                compartments: HashMap::new(),
                parcels,
            }]
        };
        let refused = LateTry {
            order: "a".into(),
            cabinet: 0,
            access: "Refused(WrongCode)".into(),
            refused: true,
            pulsed: false,
        };
        let mut facts = ExpiryFacts {
            tries: vec![refused.clone()],
            collected: 1,
            ..ExpiryFacts::default()
        };
        // the expired parcel inside, the returned compartment empty, the old PIN refused
        let mut r = Report::default();
        let cabs = board(vec![true, false]);
        check_expiry(&mut r, &orders, &cabs, &people, &created, &facts, &[vec![]]);
        assert!(r.is_clean(), "{:?}", r.problems);
        assert_eq!((r.expired_seen, r.returned, r.expired_returned), (2, 1, 1));
        assert_eq!((r.late_pins_tried, r.late_pins_refused), (1, 1));
        // an expired compartment emptied, a returned one still full, the old PIN opening the
        // door, a pickup reported for an expired order
        facts.tries = vec![LateTry {
            access: "Pickup(CompartmentId(1))".into(),
            refused: false,
            pulsed: true,
            ..refused
        }];
        facts.empty_at_collection = vec!["a".into()];
        let mut r = Report::default();
        let cabs = board(vec![false, true]);
        let access = vec![vec![("a".to_owned(), 1)]];
        check_expiry(&mut r, &orders, &cabs, &people, &created, &facts, &access);
        assert_eq!(r.violations, 5, "{:?}", r.problems);
    }
}
