//! The parcel domain's timers: lapsed reservations, reminders before the end of a pickup
//! window, ended windows, prepared remote unlocks that never got a command, finished orders
//! leaving memory, and orders waiting for a compartment.

use locker_schemas::{Millis, OrderId};

use super::actor::State;
use super::apply::Why;
use super::machine::Step;
use super::model::{NoticeKind, OrderState};
use super::HOUR_MS;

/// A prepared remote unlock with no result after this long is forgotten (its command either
/// never came to be, or ended without an answer: the dispatcher gives up well before).
const STALE_UNLOCK_MS: Millis = 6 * HOUR_MS;

impl State {
    /// Timers: lapsed reservations, reminders, ended pickup windows, waiting orders.
    pub(crate) fn on_tick(&mut self, now: Millis) {
        let timer = Why::new("timer", "gateway", now);
        let mut lapsed = Vec::new();
        let mut remind = Vec::new();
        let mut expire = Vec::new();
        let before = u64::from(self.cfg.reminder_before_h) * HOUR_MS;
        for o in self.orders.values() {
            match o.state {
                OrderState::Reserved if o.reserved_until.is_some_and(|t| now >= t) => {
                    lapsed.push(o.id)
                }
                OrderState::Ready => match o.pickup_deadline {
                    Some(t) if now >= t => expire.push(o.id),
                    // a reminder only when the window is more than twice the lead time
                    Some(t)
                        if before > 0
                            && !o.reminded
                            && o.window_ms() > 2 * before
                            && now + before >= t =>
                    {
                        remind.push(o.id)
                    }
                    _ => {}
                },
                _ => {}
            }
        }
        for id in lapsed {
            let _ = self.step(
                id,
                Step::Release,
                &timer.clone().detail("reservation lapsed"),
            );
        }
        for id in expire {
            let _ = self.step(id, Step::Expire, &timer);
        }
        for id in remind {
            if let Some(mut o) = self.orders.get(&id).cloned() {
                o.reminded = true;
                self.notice(&o, NoticeKind::Reminder, None, None, now);
                self.batch.orders.push(o.clone());
                self.orders.insert(id, o);
            }
        }
        // a prepared unlock whose command never came to be (a crash between the two)
        let stale: Vec<OrderId> = self
            .orders
            .values()
            .filter(|o| {
                o.pending_unlock
                    .as_ref()
                    .is_some_and(|p| now > p.issued_at + STALE_UNLOCK_MS)
            })
            .map(|o| o.id)
            .collect();
        for id in stale {
            if let Some(mut o) = self.orders.get(&id).cloned() {
                if let Some(p) = o.pending_unlock.take() {
                    self.pending_cmds.remove(&p.command);
                    let from = o.state;
                    let why = timer.clone().detail(format!(
                        "remote unlock {} ended without an outcome",
                        p.command
                    ));
                    self.record(&mut o, from, &why, None);
                    self.put_order(o);
                }
            }
        }
        // finished orders leave memory after a while (the archive keeps them)
        let keep = u64::from(self.cfg.keep_finished_h) * HOUR_MS;
        let done: Vec<OrderId> = self
            .orders
            .values()
            .filter(|o| o.state.is_final() && o.updated_at + keep < now)
            .map(|o| o.id)
            .collect();
        for id in done {
            if let Some(o) = self.orders.remove(&id) {
                if let Some(k) = &o.idempotency_key {
                    self.idem.remove(&(o.created_by.clone(), k.clone()));
                }
                self.metrics
                    .orders
                    .with_label_values(&[o.state.as_str()])
                    .dec();
                self.batch.orders.retain(|x| x.id != id);
                self.batch.archived.push(o);
            }
        }
        if std::mem::take(&mut self.retry_waiting) {
            let waiting: Vec<OrderId> = self.waiting.iter().copied().collect();
            for id in waiting {
                let _ = self.reserve(id, &timer);
            }
        }
        self.retry_due = true;
    }
}
