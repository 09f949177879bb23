//! The door state machine, lock-board presence, power telemetry, and local access from the
//! credential cache (scans and keypad entries), as the main loop sees them.
//!
//! A debounced opening is attributed to the command or local access whose lock was fired for
//! that compartment (until its confirm deadline, then for a grace period); otherwise its cause is
//! Unknown and a ForcedOpen alarm is raised. A close carries the cause of its opening and clears
//! the door's ForcedOpen and DoorLeftOpen alarms. A door open longer than `door_left_open_s`
//! raises DoorLeftOpen.

use std::time::Duration;

use locker_schemas::{
    AccessAction, AlarmKind, CompartmentId, CredKind, Door, DoorCause, LocalAccess as Access,
    Power, Scan, ScanSource, UplinkBody,
};
use tokio::time::Instant;

use super::core::{door_left_open_key, Cause, Core, Pending};
use super::{Access as ScanAccess, ScanReply};
use crate::creds::secret_hash;
use crate::hw::{IoEvent, IoRequest};
use crate::storage::{AlarmKey, Durability, Write};

/// A local pickup or deposit in progress.
#[derive(Debug, Clone)]
pub(crate) struct LocalAccess {
    pub action: AccessAction,
    pub reference: String,
    pub source: ScanSource,
    pub hash: Vec<u8>,
}

/// What the agent remembers of power telemetry.
#[derive(Debug, Clone, Default)]
pub(crate) struct PowerState {
    pub last_soc: Option<u8>,
    pub last_report: Option<Instant>,
    pub low: bool,
    pub unreachable: bool,
}

fn alarm(kind: AlarmKind, c: Option<CompartmentId>, board: Option<u8>) -> AlarmKey {
    AlarmKey {
        kind,
        compartment: c,
        board,
    }
}

/// Whether `prev -> now` crosses any threshold, either way.
pub fn crosses(thresholds: &[u8], prev: Option<u8>, now: u8) -> bool {
    prev.is_some_and(|p| thresholds.iter().any(|&t| (p >= t) != (now >= t)))
}

impl Core {
    pub(super) async fn on_io(&mut self, ev: IoEvent) {
        match ev {
            IoEvent::Snapshot { unit, doors } => {
                let now = Instant::now();
                self.boards_offline.retain(|u| *u != unit);
                self.set_alarm(
                    alarm(AlarmKind::LockBoardOffline, None, Some(unit)),
                    false,
                    format!("lock board unit {unit} answers"),
                )
                .await;
                for (c, open) in doors {
                    if let Some(d) = self.doors.get_mut(&c) {
                        d.open = Some(open);
                        d.opened_at = open.then_some(now);
                    }
                    if !open {
                        self.clear_door_alarms(c).await;
                    }
                }
            }
            IoEvent::Door { compartment, open } => {
                if open {
                    self.door_opened(compartment).await
                } else {
                    self.door_closed(compartment).await
                }
            }
            IoEvent::BoardOffline { unit, detail } => {
                if !self.boards_offline.contains(&unit) {
                    self.boards_offline.push(unit);
                }
                self.set_alarm(
                    alarm(AlarmKind::LockBoardOffline, None, Some(unit)),
                    true,
                    detail,
                )
                .await;
            }
            IoEvent::BoardOnline { unit } => {
                self.boards_offline.retain(|u| *u != unit);
                self.set_alarm(
                    alarm(AlarmKind::LockBoardOffline, None, Some(unit)),
                    false,
                    format!("lock board unit {unit} answers again"),
                )
                .await;
            }
            IoEvent::Pulsed {
                compartment,
                result,
                maybe_fired,
            } => self.pulsed(compartment, result, maybe_fired).await,
            IoEvent::Parcels { token, present } => self.deposit_with(token, present).await,
            IoEvent::Power(p) => self.on_power(p).await,
            IoEvent::ChargerOffline { detail } => {
                self.power.unreachable = true;
                self.set_alarm(alarm(AlarmKind::PowerFail, None, None), true, detail)
                    .await;
            }
        }
    }

    async fn pulsed(&mut self, c: CompartmentId, result: Result<(), String>, maybe_fired: bool) {
        let Some(p) = self.pending.get_mut(&c) else {
            return;
        };
        let confirm = Duration::from_millis(self.cfg.timing.unlock_confirm_ms);
        p.deadline = Some(Instant::now() + confirm);
        let cause = p.cause.clone();
        match (&cause, result) {
            (Cause::Command(id), Ok(())) => self.next_pulse(*id),
            (Cause::Command(id), Err(e)) => {
                if maybe_fired {
                    // The reply was lost: the lock may have fired. Watch the door until the
                    // deadline; never fire again.
                    if let Some(p) = self.pending.get_mut(&c) {
                        p.pulse_error = Some(e);
                    }
                    self.next_pulse(*id);
                } else {
                    self.pending.remove(&c);
                    self.next_pulse(*id);
                    self.job_door_failed(*id, c, Some(e)).await;
                }
            }
            (Cause::Local(la), Ok(())) => {
                self.counters.local_accesses += 1;
                let body = UplinkBody::Access(Access {
                    compartment: c,
                    action: la.action,
                    reference: la.reference.clone(),
                    source: la.source,
                });
                self.emit(body, Vec::new()).await;
            }
            (Cause::Local(_), Err(e)) => {
                tracing::warn!(cabinet = %self.cabinet, compartment = %c, error = %e, "local access: lock not fired");
                if !maybe_fired {
                    self.pending.remove(&c);
                }
            }
        }
    }

    async fn door_opened(&mut self, c: CompartmentId) {
        let now = Instant::now();
        let pending = self.pending.remove(&c);
        let cause = match &pending {
            Some(p) => p.cause.door_cause(),
            None => match self.late.remove(&c) {
                Some((cause, until)) if until > now => cause,
                _ => DoorCause::Unknown,
            },
        };
        if let Some(d) = self.doors.get_mut(&c) {
            d.open = Some(true);
            d.cause = cause;
            d.opened_at = Some(now);
        }
        self.emit(
            UplinkBody::Door(Door {
                compartment: c,
                open: true,
                cause,
            }),
            Vec::new(),
        )
        .await;
        if cause == DoorCause::Unknown {
            self.set_alarm(
                alarm(AlarmKind::ForcedOpen, Some(c), None),
                true,
                format!("compartment {c} opened without a command or local access"),
            )
            .await;
        }
        match pending.map(|p| p.cause) {
            Some(Cause::Command(id)) => self.job_door_opened(id, c).await,
            Some(Cause::Local(la))
                if la.action == AccessAction::Pickup && self.creds.remove(&la.hash) =>
            {
                self.persist_creds().await;
            }
            _ => {}
        }
    }

    async fn door_closed(&mut self, c: CompartmentId) {
        let cause = match self.doors.get_mut(&c) {
            Some(d) => {
                d.open = Some(false);
                d.opened_at = None;
                d.cause
            }
            None => DoorCause::Unknown,
        };
        self.emit(
            UplinkBody::Door(Door {
                compartment: c,
                open: false,
                cause,
            }),
            Vec::new(),
        )
        .await;
        self.clear_door_alarms(c).await;
    }

    async fn clear_door_alarms(&mut self, c: CompartmentId) {
        self.set_alarm(
            alarm(AlarmKind::ForcedOpen, Some(c), None),
            false,
            format!("compartment {c} closed"),
        )
        .await;
        self.set_alarm(
            door_left_open_key(c),
            false,
            format!("compartment {c} closed"),
        )
        .await;
    }

    /// Fires confirm deadlines that passed.
    pub(super) async fn check_deadlines(&mut self, now: Instant) {
        let due: Vec<CompartmentId> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline.is_some_and(|d| d <= now))
            .map(|(c, _)| *c)
            .collect();
        let grace = Duration::from_millis(self.cfg.timing.late_open_grace_ms);
        for c in due {
            let Some(p) = self.pending.remove(&c) else {
                continue;
            };
            self.late.insert(c, (p.cause.door_cause(), now + grace));
            match p.cause {
                Cause::Command(id) => self.job_door_failed(id, c, p.pulse_error).await,
                Cause::Local(_) => {
                    tracing::warn!(cabinet = %self.cabinet, compartment = %c, "local access: door did not open")
                }
            }
        }
        self.late.retain(|_, (_, until)| *until > now);
    }

    /// Raises DoorLeftOpen for doors open too long.
    pub(super) async fn check_left_open(&mut self, now: Instant) {
        let limit = Duration::from_secs(self.cfg.timing.door_left_open_s);
        let due: Vec<CompartmentId> = self
            .doors
            .iter()
            .filter(|(c, d)| {
                d.open == Some(true)
                    && d.opened_at.is_some_and(|t| now >= t + limit)
                    && !self.alarms.contains_key(&door_left_open_key(**c))
            })
            .map(|(c, _)| *c)
            .collect();
        for c in due {
            self.set_alarm(
                door_left_open_key(c),
                true,
                format!("compartment {c} open for more than {} s", limit.as_secs()),
            )
            .await;
        }
    }

    async fn on_power(&mut self, p: Power) {
        let Some(cfg) = self.cfg.charger.clone() else {
            return;
        };
        let now = Instant::now();
        let crossed = crosses(&cfg.soc_thresholds, self.power.last_soc, p.soc_pct);
        let due = self
            .power
            .last_report
            .is_none_or(|t| now >= t + Duration::from_secs(cfg.interval_s));
        self.power.last_soc = Some(p.soc_pct);
        self.power.unreachable = false;
        self.power.low = p.battery_mv < cfg.battery_min_mv;
        let (low, mv) = (self.power.low, p.battery_mv);
        if crossed || due {
            self.power.last_report = Some(now);
            self.emit(UplinkBody::Power(p), Vec::new()).await;
        }
        let detail = if low {
            format!("battery at {mv} mV (floor {} mV)", cfg.battery_min_mv)
        } else {
            format!("battery at {mv} mV")
        };
        self.set_alarm(alarm(AlarmKind::PowerFail, None, None), low, detail)
            .await;
    }

    /// A scan or keypad entry: a Scan event, then local access if a cached credential matches.
    pub(super) async fn on_scan(
        &mut self,
        source: ScanSource,
        value: String,
    ) -> Result<ScanReply, String> {
        self.counters.scans += 1;
        let hash = secret_hash(&value, &self.cabinet);
        let seq = self
            .emit(UplinkBody::Scan(Scan { source, value }), Vec::new())
            .await;
        let now = self.clock_sane().then(|| self.now_millis());
        let Some(cred) = self.creds.find(&hash, now).cloned() else {
            return Ok(ScanReply {
                seq,
                access: ScanAccess::None,
            });
        };
        let la = LocalAccess {
            action: match cred.kind {
                CredKind::Pickup => AccessAction::Pickup,
                CredKind::Deposit => AccessAction::Deposit,
            },
            reference: cred.reference.clone(),
            source,
            hash: hash.to_vec(),
        };
        let access = match (cred.kind, cred.compartment) {
            (CredKind::Pickup, Some(c)) => {
                if self.fire_local(c, la) {
                    ScanAccess::Pickup(c)
                } else {
                    ScanAccess::None
                }
            }
            (CredKind::Pickup, None) => ScanAccess::None,
            (CredKind::Deposit, _) => {
                self.next_token += 1;
                let token = self.next_token;
                match self.io_tx.try_send(IoRequest::ReadParcels { token }) {
                    Ok(()) => {
                        self.deposits.insert(token, la);
                        ScanAccess::Deposit
                    }
                    Err(_) => ScanAccess::None,
                }
            }
        };
        Ok(ScanReply { seq, access })
    }

    /// Fires a compartment's lock for a local access; false if it cannot be fired now.
    fn fire_local(&mut self, c: CompartmentId, la: LocalAccess) -> bool {
        let closed = self.doors.get(&c).is_some_and(|d| d.open != Some(true));
        if !closed || self.pending.contains_key(&c) {
            tracing::info!(cabinet = %self.cabinet, compartment = %c, "local access: compartment open or busy");
            return false;
        }
        if self
            .io_tx
            .try_send(IoRequest::Pulse { compartment: c })
            .is_err()
        {
            return false;
        }
        self.counters.pulses += 1;
        self.pending.insert(
            c,
            Pending {
                cause: Cause::Local(la),
                deadline: None,
                pulse_error: None,
            },
        );
        true
    }

    async fn deposit_with(&mut self, token: u64, present: Vec<(CompartmentId, bool)>) {
        let Some(la) = self.deposits.remove(&token) else {
            return;
        };
        let size_of =
            |c: CompartmentId| self.compartments.iter().find(|i| i.id == c).map(|i| i.size);
        let choice = present
            .iter()
            .filter(|(c, parcel)| {
                !parcel
                    && self.doors.get(c).is_some_and(|d| d.open == Some(false))
                    && !self.pending.contains_key(c)
            })
            .map(|(c, _)| (size_of(*c), *c))
            .min()
            .map(|(_, c)| c);
        match choice {
            Some(c) => {
                if !self.fire_local(c, la) {
                    tracing::warn!(cabinet = %self.cabinet, "deposit: lock could not be fired");
                }
            }
            None => tracing::warn!(cabinet = %self.cabinet, "deposit: no empty compartment"),
        }
    }

    async fn persist_creds(&mut self) {
        let Some(set) = self.creds.set().cloned() else {
            return;
        };
        let w: Write = match crate::storage::creds_write(&set) {
            Ok(w) => w,
            Err(e) => return tracing::error!(error = %e, "credentials not stored"),
        };
        if let Err(e) = self
            .outbox
            .with_tree(Durability::Group, move |t| crate::storage::write(t, &[w]))
            .await
        {
            self.counters.storage_errors += 1;
            tracing::error!(error = %e, "credentials not stored");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::crosses;

    #[test]
    fn soc_threshold_crossings_either_way() {
        let t = [20, 10];
        assert!(!crosses(&t, None, 5));
        assert!(!crosses(&t, Some(21), 20));
        assert!(crosses(&t, Some(20), 19));
        assert!(crosses(&t, Some(9), 10));
        assert!(crosses(&t, Some(25), 5));
        assert!(!crosses(&t, Some(15), 12));
    }
}
