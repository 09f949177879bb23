//! The dispatcher's side of outcomes: what the committed stream brings (hellos, Results),
//! late and stray Results, giving up on commands no cabinet answers, counting outcomes, and
//! recording them (with or without a flush, see the parent module) before waking the waiters.

use super::*;
use crate::rules::DispatchNote;

/// How often the offline queue is reported to the rules engine, ms.
const QUEUE_NOTE_MS: u64 = 5_000;

impl Dispatcher {
    pub(super) async fn on_committed(&mut self, events: &Committed) {
        let mut hellos = Vec::new();
        let mut results = Vec::new();
        for u in events.iter() {
            match &u.body {
                UplinkBody::Hello(_) => hellos.push(u.cabinet.clone()),
                UplinkBody::Result(r) => match &mut self.held {
                    Some(held) => held.push((u.cabinet.clone(), r.clone())),
                    None => results.push((u.cabinet.clone(), r.clone())),
                },
                _ => {}
            }
        }
        self.on_results(results).await;
        for cab in hellos {
            self.ready.insert(cab.clone());
            self.dispatch(&cab, true).await;
        }
    }

    /// Records the outcomes that stored Results give, all in one write without a flush (each
    /// Result is already durable in the audit log: after a crash [`super::recover`] gives the
    /// command the same outcome), then wakes their waiters. Late and stray Results aside.
    pub(super) async fn on_results(&mut self, results: Vec<(CabinetId, CommandResult)>) {
        let mut done = Vec::new();
        for (cabinet, r) in results {
            if self
                .pending
                .get(&r.command)
                .is_some_and(|p| p.cabinet == cabinet)
            {
                done.extend(self.take_finished(r.command, r.outcome, r.detail));
            } else {
                self.late_or_stray(&cabinet, &r).await;
            }
        }
        self.record_outcomes(done, Sync::Buffered).await;
    }

    /// A Result for no pending command: a repeat answer (counted as stray), or the late
    /// answer to a command that ended `no_answer` (recorded on its record).
    pub(super) async fn late_or_stray(&mut self, cabinet: &CabinetId, r: &CommandResult) {
        self.metrics.stray_results.inc();
        let store = self.store.clone();
        let (id, cab, outcome, detail) = (r.command, cabinet.clone(), r.outcome, r.detail.clone());
        let late = store::blocking(move || {
            let Some(mut rec) = store.commands().get_command(id)? else {
                return Ok(None);
            };
            if rec.state != CommandState::Unconfirmed
                || rec.cabinet != cab
                || rec.late_outcome.is_some()
            {
                return Ok(None);
            }
            rec.late_outcome = Some(outcome);
            rec.late_detail = detail;
            store.commands().put_command(&rec)?;
            Ok(Some(rec))
        })
        .await;
        match late {
            Ok(Some(rec)) => {
                self.metrics.flushes.with_label_values(&["commands"]).inc();
                self.metrics.late_results.inc();
                tracing::warn!(command = %rec.id, cabinet = %rec.cabinet, %outcome, "late result for a command that ended no_answer; recorded as its late_outcome");
            }
            Ok(None) => {
                tracing::debug!(command = %r.command, %cabinet, "result for no pending command")
            }
            Err(e) => {
                tracing::error!(error = %e, command = %r.command, "cannot record a late result")
            }
        }
    }

    /// When a sent command with no answer is given up: `give_up_after` past its expiry, or
    /// past the cancel that stopped its resends.
    pub(super) fn give_up_at(&self, rec: &CommandRecord) -> u64 {
        rec.expires_at
            .min(rec.cancel_requested_at.unwrap_or(u64::MAX))
            .saturating_add(self.cfg.give_up_after_ms)
    }

    pub(super) async fn on_tick(&mut self) {
        let now = now_millis();
        self.note_queue(now);
        // never-sent commands expire wherever their cabinet is; sent ones with no answer
        // long enough end no_answer
        let mut expired = Vec::new();
        let mut unanswered = Vec::new();
        for r in self.pending.values() {
            match r.state {
                CommandState::Queued if now > r.expires_at => expired.push(r.id),
                CommandState::Sent if now > self.give_up_at(r) => unanswered.push(r.id),
                _ => {}
            }
        }
        for id in expired {
            self.finish(
                id,
                Outcome::Expired,
                "expired before it could be delivered".into(),
            )
            .await;
        }
        for id in unanswered {
            let detail = "sent, but the cabinet never answered; whether it ran is unknown (a late answer is recorded as late_outcome)".to_owned();
            self.finish(id, Outcome::NoAnswer, detail).await;
        }
        let ready: Vec<CabinetId> = self
            .by_cabinet
            .keys()
            .filter(|c| self.ready.contains(*c))
            .cloned()
            .collect();
        for cab in ready {
            self.dispatch(&cab, false).await;
        }
    }

    /// Reports the commands waiting for cabinets that are not ready (offline) to the rules
    /// engine, every [`QUEUE_NOTE_MS`].
    fn note_queue(&mut self, now: Millis) {
        let Some(notes) = &self.notes else {
            return;
        };
        if now.saturating_sub(self.queue_noted_at) < QUEUE_NOTE_MS {
            return;
        }
        self.queue_noted_at = now;
        let mut waiting = Vec::new();
        for (cab, ids) in &self.by_cabinet {
            if self.ready.contains(cab) || ids.is_empty() {
                continue;
            }
            let oldest = ids
                .iter()
                .filter_map(|id| self.pending.get(id))
                .map(|r| r.issued_at)
                .min()
                .unwrap_or(now);
            waiting.push((cab.clone(), ids.len(), oldest));
        }
        if !notes.dispatch_note(DispatchNote::Queue { at: now, waiting }) {
            self.metrics.notes_dropped.inc();
        }
    }

    pub(super) fn count_outcome(&self, rec: &CommandRecord) {
        let Some(outcome) = rec.outcome else {
            return;
        };
        if let (Some(notes), Outcome::Jammed | Outcome::NoAnswer) = (&self.notes, outcome) {
            let compartment = match &rec.action {
                crate::commands::ActionSpec::Unlock { compartment } => Some(*compartment),
                _ => None,
            };
            let sent = notes.dispatch_note(DispatchNote::Outcome {
                cabinet: rec.cabinet.clone(),
                command: rec.id,
                compartment,
                outcome,
                at: rec.finished_at.unwrap_or_else(now_millis),
            });
            if !sent {
                self.metrics.notes_dropped.inc();
            }
        }
        self.metrics
            .outcomes
            .with_label_values(&[outcome.as_str()])
            .inc();
        let action = rec.action.to_action();
        self.metrics
            .latency_seconds
            .with_label_values(&[action.name()])
            .observe(
                rec.finished_at
                    .unwrap_or(rec.issued_at)
                    .saturating_sub(rec.issued_at) as f64
                    / 1000.0,
            );
    }

    /// Takes a pending command out of the queue with its one outcome (not yet written).
    pub(super) fn take_finished(
        &mut self,
        id: CommandId,
        outcome: Outcome,
        detail: String,
    ) -> Option<CommandRecord> {
        let mut rec = self.pending.remove(&id)?;
        if let Some(set) = self.by_cabinet.get_mut(&rec.cabinet) {
            set.remove(&id);
            if set.is_empty() {
                self.by_cabinet.remove(&rec.cabinet);
            }
        }
        crate::commands::recover::set_outcome(&mut rec, outcome, detail, now_millis());
        Some(rec)
    }

    /// Writes finished records (one write), counts them and wakes their waiters. Written
    /// before the waiters are woken, so a read right after the answer sees the outcome.
    pub(super) async fn record_outcomes(&mut self, recs: Vec<CommandRecord>, sync: Sync) {
        if recs.is_empty() {
            return;
        }
        if let Err(e) = self.persist(recs.clone(), sync).await {
            tracing::error!(error = %e, commands = recs.len(), "cannot persist command outcomes");
        }
        self.metrics.queue_depth.set(self.pending.len() as i64);
        for rec in recs {
            self.count_outcome(&rec);
            for w in self.waiters.remove(&rec.id).unwrap_or_default() {
                let _ = w.send(rec.clone());
            }
        }
    }

    /// Records an outcome the gateway decides alone (`expired`, `cancelled`, `no_answer`: in
    /// no audit log, so flushed) and wakes its waiters.
    pub(super) async fn finish(
        &mut self,
        id: CommandId,
        outcome: Outcome,
        detail: String,
    ) -> Option<CommandRecord> {
        let rec = self.take_finished(id, outcome, detail)?;
        self.record_outcomes(vec![rec.clone()], Sync::Flush).await;
        Some(rec)
    }
}
