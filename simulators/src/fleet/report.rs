//! The end-of-run invariant report, built from the gateway's API and the simulated hardware:
//! - every event each agent produced is stored exactly once: the cabinet's audit log seqs are
//!   `1..=last` with no gap or duplicate, `last` equals the agent's own last seq, and the
//!   agent's outbox is drained;
//! - every command created through the API has exactly one outcome (the command record is final
//!   and the Result events for it in the audit log all carry that outcome: a cabinet answers a
//!   resent command it already finished with its stored Result again);
//! - no door opened twice for one command (at most one door-open event per command) and the
//!   lock pulses counted by the simulated boards equal the commands with outcome `opened` plus
//!   the local accesses (badge and PIN) in the audit log.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use super::api::AuditEvent;

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
