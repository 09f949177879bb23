//! The rebuild of command state at start: the audit log (ingest's events tree) is the truth.
//! Every sent command still without an outcome is looked up in its cabinet's log after the
//! position recorded at its creation; a Result found there gives it its outcome now. This
//! closes the window in which ingest stored (and acknowledged) a Result but the gateway
//! stopped before the dispatcher recorded it.

use std::collections::{HashMap, HashSet};

use locker_schemas::{codec, now_millis, CabinetId, CommandId, Millis, Outcome, UplinkBody};

use super::record::{CommandRecord, CommandState};
use crate::store::{Store, StoreError};

/// What the command log holds at start, after the rebuild.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Commands still waiting for an outcome, oldest first per cabinet.
    pub pending: Vec<CommandRecord>,
    /// Commands finished now from a Result found in the audit log.
    pub finished: Vec<CommandRecord>,
}

impl Recovered {
    /// How many commands are still pending.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether no command is pending.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

/// Gives a record its one final outcome.
pub(super) fn set_outcome(rec: &mut CommandRecord, outcome: Outcome, detail: String, now: Millis) {
    rec.state = if outcome == Outcome::NoAnswer {
        CommandState::Unconfirmed
    } else {
        CommandState::Done
    };
    rec.outcome = Some(outcome);
    rec.detail = detail;
    rec.finished_at = Some(now);
    rec.next_send_at = None;
}

const PAGE: usize = 512;

/// Loads the pending commands and finishes those whose Result is already in the audit log
/// (blocking: call it through [`crate::store::blocking`]).
pub fn recover(store: &Store) -> Result<Recovered, StoreError> {
    let all = store.commands().pending_commands()?;
    // per cabinet: the earliest audit position to scan from, and the sent commands
    let mut scan: HashMap<CabinetId, (u64, HashSet<CommandId>)> = HashMap::new();
    for rec in all.iter().filter(|r| r.state == CommandState::Sent) {
        let e = scan
            .entry(rec.cabinet.clone())
            .or_insert((rec.audit_from, HashSet::new()));
        e.0 = e.0.min(rec.audit_from);
        e.1.insert(rec.id);
    }
    let mut found: HashMap<CommandId, (Outcome, String)> = HashMap::new();
    for (cabinet, (from, mut ids)) in scan {
        let mut after = from;
        while !ids.is_empty() {
            let page = store.events_page(&cabinet, after, PAGE)?;
            let Some((last, _)) = page.last() else {
                break;
            };
            after = *last;
            for (pos, raw) in &page {
                match codec::decode_uplink(raw) {
                    Ok(u) => {
                        if let UplinkBody::Result(r) = u.body {
                            if u.cabinet == cabinet && ids.remove(&r.command) {
                                found.insert(r.command, (r.outcome, r.detail));
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(%cabinet, position = pos, error = %e, "unreadable audit record skipped")
                    }
                }
            }
        }
    }
    let now = now_millis();
    let mut out = Recovered::default();
    for mut rec in all {
        match found.remove(&rec.id) {
            Some((outcome, detail)) => {
                tracing::info!(command = %rec.id, cabinet = %rec.cabinet, %outcome, "outcome recovered from the audit log");
                set_outcome(&mut rec, outcome, detail, now);
                out.finished.push(rec);
            }
            None => out.pending.push(rec),
        }
    }
    if !out.finished.is_empty() {
        store
            .commands()
            .put_commands(&out.finished, crate::store::commands::Sync::Flush)?;
    }
    Ok(out)
}
