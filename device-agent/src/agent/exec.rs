//! The command executor (invariants 1 and 2).
//!
//! Every command id is claimed in the durable executed-commands memory (flushed) before anything
//! else: an id already there is a duplicate and does nothing. A new one is judged for expiry
//! (absolute `expires_at` by a sane wall clock, relative `ttl_ms` by the monotonic clock since
//! receipt); an expired command is reported Expired and never pulses. Locks are fired at most
//! once per command and the one Result is written atomically with the outcome record (outcome
//! and detail). A command found started-but-unfinished at start-up is reported Rejected
//! ("interrupted by restart") and never re-executed.
//!
//! Idempotent answers: a redelivered command that already finished is answered with its stored
//! Result again (same outcome, same detail) as a new event, and never executed again; this is
//! what lets a gateway that lost an outcome (killed between storing the Result and recording
//! it) learn it from a resend. A redelivery of a command still running is ignored (its Result
//! follows).
//!
//! `set_config` changes the runtime keys of [`locker_schemas::limits::RuntimeKey`], validated
//! like the configuration file, persisted with the Result in one atomic write (applied over the
//! file at every start), and reported in the detail (`key: old -> new`). `sync_credentials`
//! answers `unsupported` until the gateway syncs credentials.

use std::collections::{BTreeSet, VecDeque};
use std::time::Duration;

use locker_schemas::{
    Action, Command, CommandId, CommandResult, CompartmentId, Outcome, UplinkBody,
};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::core::{Cause, Core, Pending};
use super::ExecOutcome;
use crate::hw::IoRequest;
use crate::storage::{self, CommandRecord, Durability, Write};

/// Judges a command's expiry; `Some(reason)` if expired.
pub fn judge_expiry(
    cmd: &Command,
    now_wall: u64,
    clock_sane: bool,
    since_receipt: Duration,
) -> Option<String> {
    if clock_sane && now_wall > cmd.expires_at {
        return Some(format!(
            "expired at {} ms, cabinet clock {} ms",
            cmd.expires_at, now_wall
        ));
    }
    if since_receipt.as_millis() >= u128::from(cmd.ttl_ms) {
        return Some(format!(
            "time to live of {} ms passed since receipt",
            cmd.ttl_ms
        ));
    }
    None
}

/// The configuration with the runtime settings stored by earlier `set_config` commands applied
/// (settings that no longer validate are logged and skipped: the file's value stays).
pub(super) fn with_stored_settings(
    cfg: std::sync::Arc<crate::config::AgentConfig>,
    stored: &[(String, String)],
) -> std::sync::Arc<crate::config::AgentConfig> {
    let mut cfg = cfg;
    for kv in stored {
        match cfg.with_runtime_settings(std::slice::from_ref(kv)) {
            Ok((next, _)) => cfg = std::sync::Arc::new(next),
            Err(e) => tracing::error!(key = %kv.0, error = %e, "stored runtime setting ignored"),
        }
    }
    cfg
}

/// An unlock in progress (one compartment, or all for UnlockAll).
#[derive(Debug, Default)]
pub(super) struct Job {
    pub all: bool,
    /// Still to be fired, in order (one pulse at a time).
    pub remaining: VecDeque<CompartmentId>,
    /// Fired (or being fired), door not yet open.
    pub waiting: BTreeSet<CompartmentId>,
    pub opened: Vec<CompartmentId>,
    pub jammed: Vec<CompartmentId>,
    pub errors: Vec<(CompartmentId, String)>,
    pub skipped: Vec<(CompartmentId, String)>,
    pub already_open: Vec<CompartmentId>,
}

fn list(v: &[CompartmentId]) -> String {
    v.iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

fn list_why(v: &[(CompartmentId, String)]) -> String {
    v.iter()
        .map(|(c, w)| format!("{c}: {w}"))
        .collect::<Vec<_>>()
        .join("; ")
}

impl Job {
    fn outcome(&self, confirm_ms: u64) -> (Outcome, String) {
        if !self.all {
            return if !self.opened.is_empty() {
                (Outcome::Opened, String::new())
            } else if let Some((_, e)) = self.errors.first() {
                (Outcome::Rejected, e.clone())
            } else if let Some((_, e)) = self.skipped.first() {
                (Outcome::Rejected, e.clone())
            } else if !self.already_open.is_empty() {
                (Outcome::AlreadyOpen, String::new())
            } else {
                (
                    Outcome::Jammed,
                    format!("the door did not open within {confirm_ms} ms"),
                )
            };
        }
        let attempted = self.opened.len() + self.jammed.len() + self.errors.len();
        if attempted == 0 && self.skipped.is_empty() {
            return (Outcome::AlreadyOpen, "every door was already open".into());
        }
        if attempted == 0 {
            return (
                Outcome::Rejected,
                format!("no lock could be fired: {}", list_why(&self.skipped)),
            );
        }
        if self.jammed.is_empty() && self.errors.is_empty() && self.skipped.is_empty() {
            return (
                Outcome::Opened,
                format!(
                    "opened {}; already open {}",
                    self.opened.len(),
                    self.already_open.len()
                ),
            );
        }
        let mut d = format!("opened [{}]", list(&self.opened));
        if !self.jammed.is_empty() {
            d.push_str(&format!("; did not open [{}]", list(&self.jammed)));
        }
        if !self.errors.is_empty() {
            d.push_str(&format!("; errors: {}", list_why(&self.errors)));
        }
        if !self.skipped.is_empty() {
            d.push_str(&format!("; skipped: {}", list_why(&self.skipped)));
        }
        (Outcome::Jammed, d)
    }
}

impl Core {
    /// Handles a command from MQTT or from the handle.
    pub(super) async fn on_command(
        &mut self,
        cmd: Command,
        received: Instant,
        waiter: Option<oneshot::Sender<ExecOutcome>>,
    ) {
        self.counters.commands += 1;
        let id = cmd.id;
        let claim = self
            .outbox
            .with_tree(Durability::Flush, move |t| storage::claim_command(t, id))
            .await;
        match claim {
            Err(e) => {
                self.counters.storage_errors += 1;
                tracing::error!(cabinet = %self.cabinet, command = %id, error = %e, "cannot record the command; not executing it");
                return;
            }
            Ok(CommandRecord::Started) => {
                self.counters.duplicate_commands += 1;
                tracing::info!(cabinet = %self.cabinet, command = %id, "duplicate of a running command ignored");
                if let Some(w) = waiter {
                    self.publish_status();
                    let _ = w.send(ExecOutcome::Duplicate);
                }
                return;
            }
            Ok(CommandRecord::Finished(_)) => {
                self.counters.duplicate_commands += 1;
                self.answer_again(id).await;
                if let Some(w) = waiter {
                    self.publish_status();
                    let _ = w.send(ExecOutcome::Duplicate);
                }
                return;
            }
            Ok(CommandRecord::New) => {}
        }
        self.remembered += 1;
        let keep = self.cfg.commands.remember;
        if self.remembered > keep + keep / 10 {
            let n = self.remembered - keep;
            self.remembered = keep;
            let _ = self
                .outbox
                .with_tree(Durability::None, move |t| {
                    storage::forget_oldest_commands(t, n)
                })
                .await;
        }
        if let Some(w) = waiter {
            self.waiters.insert(id, w);
        }
        let elapsed = Instant::now().saturating_duration_since(received);
        if let Some(why) = judge_expiry(&cmd, self.now_millis(), self.clock_sane(), elapsed) {
            self.counters.expired_commands += 1;
            tracing::info!(cabinet = %self.cabinet, command = %id, %why, "command expired");
            self.finish(id, Outcome::Expired, why).await;
            return;
        }
        tracing::info!(cabinet = %self.cabinet, command = %id, action = cmd.action.name(), "executing command");
        match cmd.action {
            Action::UnlockCompartment(c) => self.start_unlock(id, vec![c], false).await,
            Action::UnlockAll => {
                let all = self.doors.keys().copied().collect();
                self.start_unlock(id, all, true).await
            }
            Action::SetConfig(kv) => self.set_config(id, &kv).await,
            Action::PowerSave(on) => {
                self.power_save = on;
                self.finish(id, Outcome::Done, format!("power save {on}"))
                    .await
            }
            Action::SyncCredentials => {
                let v = self.creds.version();
                let detail = format!(
                    "credential sync from the gateway is not available yet; keeping the cached set (version {v})"
                );
                self.finish(id, Outcome::Unsupported, detail).await
            }
            Action::Reboot => {
                self.finish(id, Outcome::Done, "restarting".into()).await;
                self.exit = Some(super::ExitReason::Reboot);
            }
        }
    }

    /// Answers a redelivered finished command with its stored Result (a new event, same
    /// outcome and detail); nothing is executed.
    async fn answer_again(&mut self, id: CommandId) {
        let stored = self
            .outbox
            .with_tree(Durability::None, move |t| storage::finished_result(t, id))
            .await;
        match stored {
            Ok(Some((outcome, detail))) => {
                tracing::info!(cabinet = %self.cabinet, command = %id, %outcome, "redelivered finished command: answering its stored outcome again");
                let result = CommandResult {
                    command: id,
                    outcome,
                    detail,
                };
                self.emit(UplinkBody::Result(result), Vec::new()).await;
            }
            Ok(None) => {}
            Err(e) => {
                self.counters.storage_errors += 1;
                tracing::error!(cabinet = %self.cabinet, command = %id, error = %e, "cannot read a finished command's outcome");
            }
        }
    }

    /// Applies a `set_config` (validated like the file), persists it with the Result, reports
    /// what changed.
    async fn set_config(&mut self, id: CommandId, kv: &[(String, String)]) {
        let (next, changes) = match self.cfg.with_runtime_settings(kv) {
            Ok(x) => x,
            Err(e) => return self.finish(id, Outcome::Rejected, e.to_string()).await,
        };
        let stored = self
            .outbox
            .with_tree(Durability::None, storage::config_overrides)
            .await;
        let mut overrides: std::collections::BTreeMap<String, String> = match stored {
            Ok(v) => v.into_iter().collect(),
            Err(e) => {
                self.counters.storage_errors += 1;
                let detail = format!("cannot read the stored configuration: {e}");
                return self.finish(id, Outcome::Rejected, detail).await;
            }
        };
        for (k, _, new) in &changes {
            overrides.insert(k.name().to_owned(), new.to_string());
        }
        let overrides: Vec<(String, String)> = overrides.into_iter().collect();
        let detail = changes
            .iter()
            .map(|(k, old, new)| format!("{k}: {old} -> {new}"))
            .collect::<Vec<_>>()
            .join("; ");
        tracing::info!(cabinet = %self.cabinet, command = %id, %detail, "runtime configuration changed");
        self.cfg = std::sync::Arc::new(next);
        self.finish_with(
            id,
            Outcome::Done,
            detail,
            vec![storage::config_overrides_write(&overrides)],
        )
        .await
    }

    /// On a clean stop, lets unlocks already fired finish (door confirmed or jammed, bounded
    /// by `unlock_confirm_ms`), so a restart never leaves a fired lock without its true
    /// outcome. (After `kill -9` such a command is reported `rejected`, "interrupted by
    /// restart".)
    pub(super) async fn drain_jobs(&mut self) {
        let deadline = Instant::now()
            + Duration::from_millis(self.cfg.timing.unlock_confirm_ms.saturating_add(500));
        while !self.jobs.is_empty() && Instant::now() < deadline {
            let wake = self.next_wakeup().min(deadline);
            tokio::select! {
                ev = self.io_rx.recv() => match ev {
                    Some(ev) => self.on_io(ev).await,
                    None => break,
                },
                _ = tokio::time::sleep_until(wake) => self.on_tick().await,
            }
            self.after_change().await;
        }
    }

    fn board_offline(&self, c: CompartmentId) -> Option<u8> {
        self.cfg
            .lock_boards
            .iter()
            .find(|b| c.0 >= b.first_compartment && c.0 - b.first_compartment < b.locks)
            .map(|b| b.unit)
            .filter(|u| self.boards_offline.contains(u))
    }

    async fn start_unlock(&mut self, id: CommandId, comps: Vec<CompartmentId>, all: bool) {
        let mut job = Job {
            all,
            ..Job::default()
        };
        for c in comps {
            let Some(door) = self.doors.get(&c) else {
                job.skipped.push((c, format!("unknown compartment {c}")));
                continue;
            };
            if door.open == Some(true) {
                job.already_open.push(c);
            } else if let Some(u) = self.board_offline(c) {
                job.skipped
                    .push((c, format!("lock board unit {u} is offline")));
            } else if self.pending.contains_key(&c) {
                job.skipped
                    .push((c, format!("an unlock of compartment {c} is in progress")));
            } else {
                job.remaining.push_back(c);
            }
        }
        self.jobs.insert(id, job);
        self.next_pulse(id);
        self.maybe_finish_job(id).await;
    }

    /// Fires the next lock of a job (one pulse at a time; confirmations overlap).
    pub(super) fn next_pulse(&mut self, id: CommandId) {
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        while let Some(c) = job.remaining.pop_front() {
            if self.pending.contains_key(&c) {
                job.skipped
                    .push((c, format!("an unlock of compartment {c} is in progress")));
                continue;
            }
            match self.io_tx.try_send(IoRequest::Pulse { compartment: c }) {
                Ok(()) => {
                    self.counters.pulses += 1;
                    self.pending.insert(
                        c,
                        Pending {
                            cause: Cause::Command(id),
                            deadline: None,
                            pulse_error: None,
                        },
                    );
                    job.waiting.insert(c);
                    return;
                }
                Err(_) => job.errors.push((c, "hardware request queue full".into())),
            }
        }
    }

    /// A door a job waited for opened.
    pub(super) async fn job_door_opened(&mut self, id: CommandId, c: CompartmentId) {
        if let Some(job) = self.jobs.get_mut(&id) {
            job.waiting.remove(&c);
            job.opened.push(c);
        }
        self.maybe_finish_job(id).await;
    }

    /// A door a job waited for did not open in time (or its pulse failed).
    pub(super) async fn job_door_failed(
        &mut self,
        id: CommandId,
        c: CompartmentId,
        error: Option<String>,
    ) {
        if let Some(job) = self.jobs.get_mut(&id) {
            job.waiting.remove(&c);
            match error {
                Some(e) => job.errors.push((c, e)),
                None => job.jammed.push(c),
            }
        }
        self.maybe_finish_job(id).await;
    }

    pub(super) async fn maybe_finish_job(&mut self, id: CommandId) {
        let done = self
            .jobs
            .get(&id)
            .is_some_and(|j| j.remaining.is_empty() && j.waiting.is_empty());
        if !done {
            return;
        }
        if let Some(job) = self.jobs.remove(&id) {
            let (outcome, detail) = job.outcome(self.cfg.timing.unlock_confirm_ms);
            self.finish(id, outcome, detail).await;
        }
    }

    /// Writes a command's one outcome and its Result event atomically, and answers a waiter.
    pub(super) async fn finish(&mut self, id: CommandId, outcome: Outcome, detail: String) {
        self.finish_with(id, outcome, detail, Vec::new()).await
    }

    /// [`Core::finish`] with more writes in the same atomic batch.
    async fn finish_with(
        &mut self,
        id: CommandId,
        outcome: Outcome,
        detail: String,
        mut extra: Vec<Write>,
    ) {
        tracing::info!(cabinet = %self.cabinet, command = %id, %outcome, %detail, "command finished");
        extra.push(Write::finish_command(id, outcome, &detail));
        let result = CommandResult {
            command: id,
            outcome,
            detail,
        };
        self.emit(UplinkBody::Result(result.clone()), extra).await;
        if let Some(w) = self.waiters.remove(&id) {
            self.publish_status();
            let _ = w.send(ExecOutcome::Result(result));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(expires_at: u64, ttl_ms: u32) -> Command {
        Command {
            id: CommandId::generate(),
            issued_at: 0,
            expires_at,
            ttl_ms,
            action: Action::UnlockAll,
        }
    }

    #[test]
    fn expiry_by_sane_clock_or_relative_ttl() {
        let ms = Duration::from_millis;
        assert!(judge_expiry(&cmd(1_000, 60_000), 2_000, true, ms(0)).is_some());
        assert!(judge_expiry(&cmd(1_000, 60_000), 2_000, false, ms(0)).is_none());
        assert!(judge_expiry(&cmd(5_000, 60_000), 2_000, true, ms(59_999)).is_none());
        assert!(judge_expiry(&cmd(5_000, 60_000), 2_000, false, ms(60_000)).is_some());
        assert!(judge_expiry(&cmd(u64::MAX, 0), 2_000, true, ms(0)).is_some());
    }

    #[test]
    fn unlock_all_outcomes() {
        let c = CompartmentId;
        let j = Job {
            all: true,
            opened: vec![c(1), c(2)],
            already_open: vec![c(3)],
            ..Job::default()
        };
        assert_eq!(j.outcome(3000).0, Outcome::Opened);
        let j = Job {
            all: true,
            opened: vec![c(1)],
            jammed: vec![c(2)],
            ..Job::default()
        };
        let (o, d) = j.outcome(3000);
        assert_eq!(o, Outcome::Jammed);
        assert!(d.contains("did not open [2]"), "{d}");
        let j = Job {
            all: true,
            already_open: vec![c(1)],
            ..Job::default()
        };
        assert_eq!(j.outcome(3000).0, Outcome::AlreadyOpen);
        let j = Job {
            all: false,
            skipped: vec![(c(9), "unknown compartment 9".into())],
            ..Job::default()
        };
        assert_eq!(j.outcome(3000).0, Outcome::Rejected);
    }
}
