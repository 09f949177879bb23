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

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::Duration;

use locker_schemas::{
    Action, Command, CommandId, CommandResult, CompartmentId, Outcome, UplinkBody,
};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::ctx::Ctx;
use super::doors::{Cause, Doors, JobEvent, NotFired};
use super::types::{Counters, ExecOutcome, ExitReason};
use super::uplink::Uplink;
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

/// The command executor: the jobs in progress, the callers waiting for a result, and the
/// durable memory of executed commands (claimed and finished through the outbox's tree).
pub(super) struct Executor {
    jobs: HashMap<CommandId, Job>,
    waiters: HashMap<CommandId, oneshot::Sender<ExecOutcome>>,
    /// Answers due to waiters; the main loop sends them after publishing the status.
    replies: Vec<(oneshot::Sender<ExecOutcome>, ExecOutcome)>,
    /// How many executed command ids the durable memory holds (about).
    remembered: u64,
    commands: u64,
    duplicate_commands: u64,
    expired_commands: u64,
}

impl Executor {
    pub fn new(remembered: u64) -> Self {
        Self {
            jobs: HashMap::new(),
            waiters: HashMap::new(),
            replies: Vec::new(),
            remembered,
            commands: 0,
            duplicate_commands: 0,
            expired_commands: 0,
        }
    }

    /// Whether unlocks are in progress.
    pub fn has_jobs(&self) -> bool {
        !self.jobs.is_empty()
    }

    /// The answers due to waiters (to send once the status shows their effect).
    pub fn take_replies(&mut self) -> Vec<(oneshot::Sender<ExecOutcome>, ExecOutcome)> {
        std::mem::take(&mut self.replies)
    }

    /// Stops waiting: every caller still waiting learns that the agent stopped.
    pub fn drop_waiters(&mut self) {
        self.waiters.clear();
    }

    /// Fills the executor's part of the status counters.
    pub fn fill(&self, c: &mut Counters) {
        c.commands = self.commands;
        c.duplicate_commands = self.duplicate_commands;
        c.expired_commands = self.expired_commands;
    }

    /// Handles a command from MQTT or from the handle; `Some` if the agent must stop.
    pub async fn on_command(
        &mut self,
        ctx: &mut Ctx,
        doors: &mut Doors,
        up: &mut Uplink,
        cmd: Command,
        received: Instant,
        waiter: Option<oneshot::Sender<ExecOutcome>>,
    ) -> Option<ExitReason> {
        self.commands += 1;
        let id = cmd.id;
        let claim = up
            .store()
            .with_tree(Durability::Flush, move |t| storage::claim_command(t, id))
            .await;
        match claim {
            Err(e) => {
                up.storage_error();
                tracing::error!(cabinet = %ctx.cabinet(), command = %id, error = %e, "cannot record the command; not executing it");
                return None;
            }
            Ok(CommandRecord::Started) => {
                self.duplicate_commands += 1;
                tracing::info!(cabinet = %ctx.cabinet(), command = %id, "duplicate of a running command ignored");
                if let Some(w) = waiter {
                    self.replies.push((w, ExecOutcome::Duplicate));
                }
                return None;
            }
            Ok(CommandRecord::Finished(_)) => {
                self.duplicate_commands += 1;
                self.answer_again(ctx, up, id).await;
                if let Some(w) = waiter {
                    self.replies.push((w, ExecOutcome::Duplicate));
                }
                return None;
            }
            Ok(CommandRecord::New) => {}
        }
        self.remembered += 1;
        let keep = ctx.cfg().commands.remember;
        if self.remembered > keep + keep / 10 {
            let n = self.remembered - keep;
            self.remembered = keep;
            let _ = up
                .store()
                .with_tree(Durability::None, move |t| {
                    storage::forget_oldest_commands(t, n)
                })
                .await;
        }
        if let Some(w) = waiter {
            self.waiters.insert(id, w);
        }
        let elapsed = Instant::now().saturating_duration_since(received);
        if let Some(why) = judge_expiry(&cmd, ctx.now_millis(), ctx.clock_sane(), elapsed) {
            self.expired_commands += 1;
            tracing::info!(cabinet = %ctx.cabinet(), command = %id, %why, "command expired");
            self.finish(ctx, up, id, Outcome::Expired, why).await;
            return None;
        }
        tracing::info!(cabinet = %ctx.cabinet(), command = %id, action = cmd.action.name(), "executing command");
        match cmd.action {
            Action::UnlockCompartment(c) => {
                self.start_unlock(ctx, doors, up, id, vec![c], false).await
            }
            Action::UnlockAll => {
                let all = doors.compartment_ids();
                self.start_unlock(ctx, doors, up, id, all, true).await
            }
            Action::SetConfig(kv) => self.set_config(ctx, up, id, &kv).await,
            Action::PowerSave(on) => {
                doors.set_power_save(on);
                self.finish(ctx, up, id, Outcome::Done, format!("power save {on}"))
                    .await
            }
            Action::SyncCredentials => {
                // a hello tells the gateway which set the cabinet holds: it resends a newer
                // one (the cached set stays in use meanwhile)
                let v = doors.creds_version();
                let cfg = ctx.cfg().clone();
                let hello = UplinkBody::Hello(locker_schemas::Hello {
                    firmware: env!("CARGO_PKG_VERSION").into(),
                    hardware: cfg.hardware.clone(),
                    compartments: doors.compartments().to_vec(),
                    network: cfg.network.kind.into(),
                    creds_version: v,
                });
                up.emit(ctx, hello, Vec::new()).await;
                let detail = format!(
                    "holding credential set version {v}; reported it so the gateway sends a newer one"
                );
                self.finish(ctx, up, id, Outcome::Done, detail).await
            }
            Action::Reboot => {
                self.finish(ctx, up, id, Outcome::Done, "restarting".into())
                    .await;
                return Some(ExitReason::Reboot);
            }
        }
        None
    }

    /// Answers a redelivered finished command with its stored Result (a new event, same
    /// outcome and detail); nothing is executed.
    async fn answer_again(&mut self, ctx: &Ctx, up: &mut Uplink, id: CommandId) {
        let stored = up
            .store()
            .with_tree(Durability::None, move |t| storage::finished_result(t, id))
            .await;
        match stored {
            Ok(Some((outcome, detail))) => {
                tracing::info!(cabinet = %ctx.cabinet(), command = %id, %outcome, "redelivered finished command: answering its stored outcome again");
                let result = CommandResult {
                    command: id,
                    outcome,
                    detail,
                };
                up.emit(ctx, UplinkBody::Result(result), Vec::new()).await;
            }
            Ok(None) => {}
            Err(e) => {
                up.storage_error();
                tracing::error!(cabinet = %ctx.cabinet(), command = %id, error = %e, "cannot read a finished command's outcome");
            }
        }
    }

    /// Applies a `set_config` (validated like the file), persists it with the Result, reports
    /// what changed.
    async fn set_config(
        &mut self,
        ctx: &mut Ctx,
        up: &mut Uplink,
        id: CommandId,
        kv: &[(String, String)],
    ) {
        let (next, changes) = match ctx.cfg().with_runtime_settings(kv) {
            Ok(x) => x,
            Err(e) => {
                return self
                    .finish(ctx, up, id, Outcome::Rejected, e.to_string())
                    .await
            }
        };
        let stored = up
            .store()
            .with_tree(Durability::None, storage::config_overrides)
            .await;
        let mut overrides: std::collections::BTreeMap<String, String> = match stored {
            Ok(v) => v.into_iter().collect(),
            Err(e) => {
                up.storage_error();
                let detail = format!("cannot read the stored configuration: {e}");
                return self.finish(ctx, up, id, Outcome::Rejected, detail).await;
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
        tracing::info!(cabinet = %ctx.cabinet(), command = %id, %detail, "runtime configuration changed");
        ctx.set_cfg(std::sync::Arc::new(next));
        self.finish_with(
            ctx,
            up,
            id,
            Outcome::Done,
            detail,
            vec![storage::config_overrides_write(&overrides)],
        )
        .await
    }

    async fn start_unlock(
        &mut self,
        ctx: &Ctx,
        doors: &mut Doors,
        up: &mut Uplink,
        id: CommandId,
        comps: Vec<CompartmentId>,
        all: bool,
    ) {
        let mut job = Job {
            all,
            ..Job::default()
        };
        for c in comps {
            if !doors.known(c) {
                job.skipped.push((c, format!("unknown compartment {c}")));
                continue;
            }
            if doors.is_open(c) {
                job.already_open.push(c);
            } else if let Some(u) = doors.board_offline(ctx, c) {
                job.skipped
                    .push((c, format!("lock board unit {u} is offline")));
            } else if doors.is_pending(c) {
                job.skipped
                    .push((c, format!("an unlock of compartment {c} is in progress")));
            } else {
                job.remaining.push_back(c);
            }
        }
        self.jobs.insert(id, job);
        self.next_pulse(doors, id);
        self.maybe_finish_job(ctx, up, id).await;
    }

    /// What happened to a door a job fired.
    pub async fn on_job_event(
        &mut self,
        ctx: &Ctx,
        doors: &mut Doors,
        up: &mut Uplink,
        ev: JobEvent,
    ) {
        match ev {
            JobEvent::Pulsed(id) => self.next_pulse(doors, id),
            JobEvent::Opened(id, c) => {
                if let Some(job) = self.jobs.get_mut(&id) {
                    job.waiting.remove(&c);
                    job.opened.push(c);
                }
                self.maybe_finish_job(ctx, up, id).await;
            }
            JobEvent::Failed(id, c, error) => {
                if let Some(job) = self.jobs.get_mut(&id) {
                    job.waiting.remove(&c);
                    match error {
                        Some(e) => job.errors.push((c, e)),
                        None => job.jammed.push(c),
                    }
                }
                self.maybe_finish_job(ctx, up, id).await;
            }
        }
    }

    /// Fires the next lock of a job (one pulse at a time; confirmations overlap).
    fn next_pulse(&mut self, doors: &mut Doors, id: CommandId) {
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        while let Some(c) = job.remaining.pop_front() {
            match doors.fire(c, Cause::Command(id)) {
                Ok(()) => {
                    job.waiting.insert(c);
                    return;
                }
                Err(NotFired::Busy) => job
                    .skipped
                    .push((c, format!("an unlock of compartment {c} is in progress"))),
                Err(NotFired::QueueFull) => {
                    job.errors.push((c, "hardware request queue full".into()))
                }
            }
        }
    }

    async fn maybe_finish_job(&mut self, ctx: &Ctx, up: &mut Uplink, id: CommandId) {
        let done = self
            .jobs
            .get(&id)
            .is_some_and(|j| j.remaining.is_empty() && j.waiting.is_empty());
        if !done {
            return;
        }
        if let Some(job) = self.jobs.remove(&id) {
            let (outcome, detail) = job.outcome(ctx.cfg().timing.unlock_confirm_ms);
            self.finish(ctx, up, id, outcome, detail).await;
        }
    }

    /// Writes a command's one outcome and its Result event atomically, and answers a waiter.
    pub async fn finish(
        &mut self,
        ctx: &Ctx,
        up: &mut Uplink,
        id: CommandId,
        outcome: Outcome,
        detail: String,
    ) {
        self.finish_with(ctx, up, id, outcome, detail, Vec::new())
            .await
    }

    /// [`Executor::finish`] with more writes in the same atomic batch.
    async fn finish_with(
        &mut self,
        ctx: &Ctx,
        up: &mut Uplink,
        id: CommandId,
        outcome: Outcome,
        detail: String,
        mut extra: Vec<Write>,
    ) {
        tracing::info!(cabinet = %ctx.cabinet(), command = %id, %outcome, %detail, "command finished");
        extra.push(Write::finish_command(id, outcome, &detail));
        let result = CommandResult {
            command: id,
            outcome,
            detail,
        };
        up.emit(ctx, UplinkBody::Result(result.clone()), extra)
            .await;
        if let Some(w) = self.waiters.remove(&id) {
            self.replies.push((w, ExecOutcome::Result(result)));
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
