//! The doors part of the agent: it owns the door states, the compartments and their sizes,
//! lock-board presence, the pending unlocks (locks fired whose door has not opened yet) and late
//! opens, power telemetry and the power-save flag, the request channel to the hardware task,
//! and (in [`access`]) local access from the credential cache.
//!
//! A debounced opening is attributed to the command or local access whose lock was fired for
//! that compartment (until its confirm deadline, then for a grace period); otherwise its cause is
//! Unknown and a ForcedOpen alarm is raised. A close carries the cause of its opening and the
//! parcel sensor the hardware task read right after it (see `hw::board`), and clears the door's
//! ForcedOpen and DoorLeftOpen alarms. A door open longer than `door_left_open_s`
//! raises DoorLeftOpen. A local access whose door was not seen opening before its deadline is
//! judged by the parcel sensor (`access::unseen`): a door opened and shut between two polls
//! loses no pickup or deposit.
//!
//! Power: PowerFail is the battery under `battery_min_mv` and nothing else (it keeps its state
//! while the controller is silent). ChargerFault (no compartment, no board) is the charge
//! controller itself: it stopped answering (`offline_after_failures` failed reads), or it
//! answers with a fault in its battery status (0x3200 bits 3..0 == 4); it clears at the first
//! good read without a fault, its detail saying which.
//!
//! The doors know commands only by id: what happens to a command's doors is handed back to the
//! main loop as [`JobEvent`]s for the executor.

mod access;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use locker_schemas::{
    AlarmKind, CommandId, CompartmentId, CompartmentInfo, Door, DoorCause, UplinkBody,
};
use tokio::sync::mpsc;
use tokio::time::Instant;

pub(super) use access::LocalAccess;

use super::ctx::Ctx;
use super::types::Counters;
use super::uplink::Uplink;
use crate::config::AgentConfig;
use crate::creds::CredCache;
use crate::hw::charger::Reading;
use crate::hw::{IoEvent, IoRequest};
use crate::storage::AlarmKey;

/// What a door is doing, as far as the agent knows.
#[derive(Debug, Clone)]
struct DoorState {
    open: Option<bool>,
    /// Why the current (or last) opening happened.
    cause: DoorCause,
    opened_at: Option<Instant>,
}

/// Who is waiting for a door to open after its lock was (or will be) fired.
#[derive(Debug, Clone)]
pub(super) enum Cause {
    Command(CommandId),
    Local(LocalAccess),
}

impl Cause {
    fn door_cause(&self) -> DoorCause {
        match self {
            Cause::Command(id) => DoorCause::Command(*id),
            Cause::Local(_) => DoorCause::LocalAccess,
        }
    }
}

/// A lock fired (or about to be) whose door has not opened yet.
#[derive(Debug, Clone)]
struct Pending {
    cause: Cause,
    /// Set once the pulse was written (or failed): the door must open before it.
    deadline: Option<Instant>,
    pulse_error: Option<String>,
}

/// What happened to a door a command fired, for the executor.
#[derive(Debug)]
pub(super) enum JobEvent {
    /// The command's pulse was written (or may have been): its next lock may be fired.
    Pulsed(CommandId),
    /// The door opened.
    Opened(CommandId, CompartmentId),
    /// The door did not open in time (`None`), or its lock could not be fired.
    Failed(CommandId, CompartmentId, Option<String>),
}

/// Why a lock was not fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NotFired {
    /// An unlock of the compartment is in progress.
    Busy,
    /// The hardware request queue is full.
    QueueFull,
}

/// What the agent remembers of power telemetry.
#[derive(Debug, Clone, Default)]
struct PowerState {
    last_soc: Option<u8>,
    last_report: Option<Instant>,
    low: bool,
    unreachable: bool,
}

/// The doors, boards, power and local access.
pub(super) struct Doors {
    io_tx: mpsc::Sender<IoRequest>,
    doors: BTreeMap<CompartmentId, DoorState>,
    compartments: Vec<CompartmentInfo>,
    boards_offline: Vec<u8>,
    pending: HashMap<CompartmentId, Pending>,
    late: HashMap<CompartmentId, (DoorCause, Instant)>,
    power: PowerState,
    power_save: bool,
    pulses: u64,
    access: access::LocalState,
}

/// The charge controller's alarm: not answering, or reporting a fault.
fn charger_fault_key() -> AlarmKey {
    alarm(AlarmKind::ChargerFault, None, None)
}

pub(super) fn door_left_open_key(c: CompartmentId) -> AlarmKey {
    alarm(AlarmKind::DoorLeftOpen, Some(c), None)
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

impl Doors {
    /// Every configured compartment, state unknown until its board is read.
    pub fn new(
        ctx: &Ctx,
        io_tx: mpsc::Sender<IoRequest>,
        creds: CredCache,
        lock_until: Option<u64>,
    ) -> Self {
        let cfg: &AgentConfig = ctx.cfg();
        let mut compartments = Vec::new();
        let mut doors = BTreeMap::new();
        for b in &cfg.lock_boards {
            for i in 0..b.locks {
                let id = b.compartment(i);
                compartments.push(CompartmentInfo {
                    id,
                    size: b.size(i),
                });
                doors.insert(
                    id,
                    DoorState {
                        open: None,
                        cause: DoorCause::Unknown,
                        opened_at: None,
                    },
                );
            }
        }
        Self {
            io_tx,
            doors,
            compartments,
            boards_offline: Vec::new(),
            pending: HashMap::new(),
            late: HashMap::new(),
            power: PowerState::default(),
            power_save: false,
            pulses: 0,
            access: access::LocalState::new(ctx, creds, lock_until),
        }
    }

    pub fn compartments(&self) -> &[CompartmentInfo] {
        &self.compartments
    }

    /// Every compartment id, in order.
    pub fn compartment_ids(&self) -> Vec<CompartmentId> {
        self.doors.keys().copied().collect()
    }

    /// Whether the compartment is configured.
    pub fn known(&self, c: CompartmentId) -> bool {
        self.doors.contains_key(&c)
    }

    /// Whether the door is known to be open.
    pub fn is_open(&self, c: CompartmentId) -> bool {
        self.doors.get(&c).is_some_and(|d| d.open == Some(true))
    }

    /// Whether an unlock of the compartment is in progress.
    pub fn is_pending(&self, c: CompartmentId) -> bool {
        self.pending.contains_key(&c)
    }

    /// The unit of the compartment's lock board, if that board is offline.
    pub fn board_offline(&self, ctx: &Ctx, c: CompartmentId) -> Option<u8> {
        ctx.cfg()
            .lock_boards
            .iter()
            .find(|b| c.0 >= b.first_compartment && c.0 - b.first_compartment < b.locks)
            .map(|b| b.unit)
            .filter(|u| self.boards_offline.contains(u))
    }

    pub fn set_power_save(&mut self, on: bool) {
        self.power_save = on;
    }

    /// Fires a compartment's lock (one pulse request to the hardware task) for `cause`.
    pub fn fire(&mut self, c: CompartmentId, cause: Cause) -> Result<(), NotFired> {
        if self.pending.contains_key(&c) {
            return Err(NotFired::Busy);
        }
        if self
            .io_tx
            .try_send(IoRequest::Pulse { compartment: c })
            .is_err()
        {
            return Err(NotFired::QueueFull);
        }
        self.pulses += 1;
        // a local access still waiting for a late opening of this door waits no more
        self.take_unseen(c);
        self.pending.insert(
            c,
            Pending {
                cause,
                deadline: None,
                pulse_error: None,
            },
        );
        Ok(())
    }

    /// The earliest confirm deadline or DoorLeftOpen time, if before `t`.
    pub fn next_wakeup(&self, ctx: &Ctx, up: &Uplink, mut t: Instant) -> Instant {
        for p in self.pending.values() {
            if let Some(d) = p.deadline {
                t = t.min(d);
            }
        }
        let left_open = Duration::from_secs(ctx.cfg().timing.door_left_open_s);
        if let Some(until) = self.access.lock_until() {
            let left = until.saturating_sub(ctx.now_millis());
            t = t.min(Instant::now() + Duration::from_millis(left));
        }
        for (c, d) in &self.doors {
            if let (Some(true), Some(at)) = (d.open, d.opened_at) {
                if !up.alarm_active(&door_left_open_key(*c)) {
                    t = t.min(at + left_open);
                }
            }
        }
        t
    }

    /// Fills the doors' part of the status.
    pub fn fill(&self, c: &mut Counters) {
        c.pulses = self.pulses;
        self.access.fill(c);
    }

    pub fn boards_offline(&self) -> Vec<u8> {
        self.boards_offline.clone()
    }

    pub fn open_doors(&self) -> Vec<CompartmentId> {
        self.doors
            .iter()
            .filter(|(_, d)| d.open == Some(true))
            .map(|(c, _)| *c)
            .collect()
    }

    pub fn known_doors(&self) -> usize {
        self.doors.values().filter(|d| d.open.is_some()).count()
    }

    pub fn power_save(&self) -> bool {
        self.power_save
    }

    /// An event of the hardware task.
    pub async fn on_io(&mut self, ctx: &Ctx, up: &mut Uplink, ev: IoEvent) -> Vec<JobEvent> {
        let mut jobs = Vec::new();
        match ev {
            IoEvent::Snapshot { unit, doors } => {
                let now = Instant::now();
                self.boards_offline.retain(|u| *u != unit);
                let detail = format!("lock board unit {unit} answers");
                let key = alarm(AlarmKind::LockBoardOffline, None, Some(unit));
                up.set_alarm(ctx, key, false, detail).await;
                for (c, open) in doors {
                    if let Some(d) = self.doors.get_mut(&c) {
                        d.open = Some(open);
                        d.opened_at = open.then_some(now);
                    }
                    if !open {
                        clear_door_alarms(ctx, up, c).await;
                    }
                }
            }
            IoEvent::Door {
                compartment,
                open,
                parcel,
            } => {
                if open {
                    self.door_opened(ctx, up, compartment, &mut jobs).await
                } else {
                    self.door_closed(ctx, up, compartment, parcel).await
                }
            }
            IoEvent::BoardOffline { unit, detail } => {
                if !self.boards_offline.contains(&unit) {
                    self.boards_offline.push(unit);
                }
                let key = alarm(AlarmKind::LockBoardOffline, None, Some(unit));
                up.set_alarm(ctx, key, true, detail).await;
            }
            IoEvent::BoardOnline { unit } => {
                self.boards_offline.retain(|u| *u != unit);
                let detail = format!("lock board unit {unit} answers again");
                let key = alarm(AlarmKind::LockBoardOffline, None, Some(unit));
                up.set_alarm(ctx, key, false, detail).await;
            }
            IoEvent::Pulsed {
                compartment,
                result,
                maybe_fired,
            } => self.pulsed(ctx, compartment, result, maybe_fired, &mut jobs),
            IoEvent::Parcels { token, present } => self.on_parcels(ctx, up, token, present),
            IoEvent::Power(p) => self.on_power(ctx, up, p).await,
            IoEvent::ChargerOffline { detail } => {
                self.power.unreachable = true;
                up.set_alarm(ctx, charger_fault_key(), true, detail).await;
            }
        }
        jobs
    }

    fn pulsed(
        &mut self,
        ctx: &Ctx,
        c: CompartmentId,
        result: Result<(), String>,
        maybe_fired: bool,
        jobs: &mut Vec<JobEvent>,
    ) {
        let Some(p) = self.pending.get_mut(&c) else {
            return;
        };
        let confirm = Duration::from_millis(ctx.cfg().timing.unlock_confirm_ms);
        p.deadline = Some(Instant::now() + confirm);
        let cause = p.cause.clone();
        match (&cause, result) {
            (Cause::Command(id), Ok(())) => jobs.push(JobEvent::Pulsed(*id)),
            (Cause::Command(id), Err(e)) => {
                if maybe_fired {
                    // The reply was lost: the lock may have fired. Watch the door until the
                    // deadline; never fire again.
                    p.pulse_error = Some(e);
                    jobs.push(JobEvent::Pulsed(*id));
                } else {
                    self.pending.remove(&c);
                    jobs.push(JobEvent::Pulsed(*id));
                    jobs.push(JobEvent::Failed(*id, c, Some(e)));
                }
            }
            // reported once the door opens
            (Cause::Local(_), Ok(())) => {}
            (Cause::Local(_), Err(e)) => {
                tracing::warn!(cabinet = %ctx.cabinet(), compartment = %c, error = %e, "local access: lock not fired");
                if !maybe_fired {
                    self.pending.remove(&c);
                }
            }
        }
    }

    async fn door_opened(
        &mut self,
        ctx: &Ctx,
        up: &mut Uplink,
        c: CompartmentId,
        jobs: &mut Vec<JobEvent>,
    ) {
        let now = Instant::now();
        let pending = self.pending.remove(&c);
        // a local access whose door was not seen opening in time: this is its late opening
        let unseen = self.take_unseen(c).filter(|_| pending.is_none());
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
        let body = UplinkBody::Door(Door {
            compartment: c,
            open: true,
            cause,
            parcel: None,
        });
        // stored with what follows it (the Result of the command that fired the lock, an
        // alarm, the pickup) in one write and one flush; at the end of this step at the latest
        up.stage(ctx, body, Vec::new());
        if cause == DoorCause::Unknown {
            up.set_alarm(
                ctx,
                alarm(AlarmKind::ForcedOpen, Some(c), None),
                true,
                format!("compartment {c} opened without a command or local access"),
            )
            .await;
        }
        match pending.map(|p| p.cause) {
            Some(Cause::Command(id)) => jobs.push(JobEvent::Opened(id, c)),
            Some(Cause::Local(la)) => self.local_opened(ctx, up, c, la),
            _ => {
                if let Some(la) = unseen {
                    self.local_opened(ctx, up, c, la)
                }
            }
        }
    }

    async fn door_closed(
        &mut self,
        ctx: &Ctx,
        up: &mut Uplink,
        c: CompartmentId,
        parcel: Option<bool>,
    ) {
        let cause = match self.doors.get_mut(&c) {
            Some(d) => {
                d.open = Some(false);
                d.opened_at = None;
                d.cause
            }
            None => DoorCause::Unknown,
        };
        let body = UplinkBody::Door(Door {
            compartment: c,
            open: false,
            cause,
            parcel,
        });
        up.emit(ctx, body, Vec::new()).await;
        clear_door_alarms(ctx, up, c).await;
    }

    /// Fires confirm deadlines that passed.
    pub fn check_deadlines(&mut self, ctx: &Ctx, now: Instant) -> Vec<JobEvent> {
        let due: Vec<CompartmentId> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline.is_some_and(|d| d <= now))
            .map(|(c, _)| *c)
            .collect();
        let grace = Duration::from_millis(ctx.cfg().timing.late_open_grace_ms);
        let mut jobs = Vec::new();
        for c in due {
            let Some(p) = self.pending.remove(&c) else {
                continue;
            };
            self.late.insert(c, (p.cause.door_cause(), now + grace));
            match p.cause {
                Cause::Command(id) => jobs.push(JobEvent::Failed(id, c, p.pulse_error)),
                // judged by the parcel sensor (see `access::unseen`)
                Cause::Local(la) => self.access_unseen(ctx, c, la, now + grace),
            }
        }
        self.late.retain(|_, (_, until)| *until > now);
        self.expire_unseen(now);
        jobs
    }

    /// Raises DoorLeftOpen for doors open too long.
    pub async fn check_left_open(&mut self, ctx: &Ctx, up: &mut Uplink, now: Instant) {
        let limit = Duration::from_secs(ctx.cfg().timing.door_left_open_s);
        let due: Vec<CompartmentId> = self
            .doors
            .iter()
            .filter(|(c, d)| {
                d.open == Some(true)
                    && d.opened_at.is_some_and(|t| now >= t + limit)
                    && !up.alarm_active(&door_left_open_key(**c))
            })
            .map(|(c, _)| *c)
            .collect();
        for c in due {
            up.set_alarm(
                ctx,
                door_left_open_key(c),
                true,
                format!("compartment {c} open for more than {} s", limit.as_secs()),
            )
            .await;
        }
    }

    /// A good charger read: telemetry (at a threshold crossing or when due), PowerFail from the
    /// battery voltage, ChargerFault from the controller's fault flag (cleared by any good read
    /// without one, which also ends a silence).
    async fn on_power(&mut self, ctx: &Ctx, up: &mut Uplink, r: Reading) {
        let Some(cfg) = ctx.cfg().charger.clone() else {
            return;
        };
        let now = Instant::now();
        let fault = r.fault();
        let p = r.power;
        let crossed = crosses(&cfg.soc_thresholds, self.power.last_soc, p.soc_pct);
        let due = self
            .power
            .last_report
            .is_none_or(|t| now >= t + Duration::from_secs(cfg.interval_s));
        self.power.last_soc = Some(p.soc_pct);
        let was_unreachable = std::mem::take(&mut self.power.unreachable);
        self.power.low = p.battery_mv < cfg.battery_min_mv;
        let (low, mv) = (self.power.low, p.battery_mv);
        if crossed || due {
            self.power.last_report = Some(now);
            up.emit(ctx, UplinkBody::Power(p), Vec::new()).await;
        }
        let detail = if low {
            format!("battery at {mv} mV (floor {} mV)", cfg.battery_min_mv)
        } else {
            format!("battery at {mv} mV")
        };
        up.set_alarm(ctx, alarm(AlarmKind::PowerFail, None, None), low, detail)
            .await;
        let detail = if fault {
            format!(
                "charge controller reports a fault (battery status 0x3200 = {:#06x})",
                r.battery_status
            )
        } else if was_unreachable {
            "charge controller answers again, no fault".to_string()
        } else {
            "charge controller reports no fault".to_string()
        };
        up.set_alarm(ctx, charger_fault_key(), fault, detail).await;
    }
}

async fn clear_door_alarms(ctx: &Ctx, up: &mut Uplink, c: CompartmentId) {
    let detail = format!("compartment {c} closed");
    up.set_alarm(
        ctx,
        alarm(AlarmKind::ForcedOpen, Some(c), None),
        false,
        detail.clone(),
    )
    .await;
    up.set_alarm(ctx, door_left_open_key(c), false, detail)
        .await;
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
