//! The physical model of one lock board, as plain data advanced lazily in time.
//!
//! No tasks or timers: every event (pulse end, door springing open, auto-close) is stored as
//! an `Instant` and applied by [`BoardModel::settle`] whenever the board is looked at. That
//! keeps thousands of simulated boards free (no task per board) and lets unit tests drive the
//! model with synthetic instants.
//!
//! Instants are `tokio::time::Instant`, so a runtime with paused time (tokio `test-util`)
//! drives the boards deterministically; otherwise they are plain monotonic clock readings.
//!
//! Timeline of one unjammed pulse fired at `t`: coil reads ON during `[t, t + pulse)`; the
//! door springs open at `t + pulse + spring`; with auto-close configured it closes again
//! `auto_close` after opening. A jammed lock counts the pulse and shows the coil ON, but the
//! door stays closed.

use std::time::Duration;

use tokio::time::Instant;

use serde::Serialize;

/// State of one lock / compartment.
#[derive(Debug, Clone, Default)]
pub(crate) struct LockModel {
    /// The door is physically open.
    pub door_open: bool,
    /// When the door last opened (drives auto-close).
    pub opened_at: Option<Instant>,
    /// Coil (solenoid) energized until this instant.
    pub pulse_until: Option<Instant>,
    /// Door springs open at this instant (pending after an unjammed pulse).
    pub spring_at: Option<Instant>,
    /// A parcel lies in the compartment.
    pub parcel: bool,
    /// The latch is jammed: pulses fire but the door does not open.
    pub jammed: bool,
    /// The door sensor is stuck at this value (`true` = reads open).
    pub stuck: Option<bool>,
    /// Pulses fired on this lock since start.
    pub pulses: u64,
}

/// Board-wide timing parameters and the locks.
#[derive(Debug, Clone)]
pub(crate) struct BoardModel {
    /// Solenoid pulse length (holding register 0).
    pub pulse: Duration,
    /// Delay between the end of a pulse and the door springing open.
    pub spring: Duration,
    /// Close an open door automatically after this long (fleet simulator).
    pub auto_close: Option<Duration>,
    pub locks: Vec<LockModel>,
}

/// Observable state of one lock, as served by `GET /state`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DoorState {
    /// Lock index (coil / sensor address).
    pub index: usize,
    /// The door is physically open.
    pub open: bool,
    /// What the door sensor reports (differs from `open` when stuck).
    pub sensor_open: bool,
    /// The solenoid is energized right now.
    pub coil_on: bool,
    /// A parcel lies in the compartment.
    pub parcel: bool,
    /// The lock is jammed.
    pub jammed: bool,
    /// The sensor is stuck: `Some(true)` at open, `Some(false)` at closed.
    pub stuck: Option<bool>,
    /// Pulses fired on this lock.
    pub pulses: u64,
}

impl BoardModel {
    pub fn new(
        locks: usize,
        pulse: Duration,
        spring: Duration,
        auto_close: Option<Duration>,
    ) -> Self {
        Self {
            pulse,
            spring,
            auto_close,
            locks: vec![LockModel::default(); locks],
        }
    }

    /// Apply every event due at `now`.
    pub fn settle(&mut self, now: Instant) {
        let auto_close = self.auto_close;
        for lock in &mut self.locks {
            if let Some(at) = lock.spring_at {
                if at <= now {
                    lock.spring_at = None;
                    if !lock.door_open {
                        lock.door_open = true;
                        lock.opened_at = Some(at);
                    }
                }
            }
            if lock.pulse_until.is_some_and(|until| until <= now) {
                lock.pulse_until = None;
            }
            if let (true, Some(after), Some(opened)) = (lock.door_open, auto_close, lock.opened_at)
            {
                if opened + after <= now {
                    lock.door_open = false;
                    lock.opened_at = None;
                }
            }
        }
    }

    /// Fire lock `i`'s solenoid at `now` (caller checked the index).
    pub fn pulse(&mut self, i: usize, now: Instant) {
        let (pulse, spring) = (self.pulse, self.spring);
        let lock = &mut self.locks[i];
        lock.pulses += 1;
        lock.pulse_until = Some(now + pulse);
        if !lock.jammed && !lock.door_open {
            lock.spring_at = Some(now + pulse + spring);
        }
    }

    /// A person opens door `i` (pulls an unlocked door or forces a locked one).
    pub fn open_door(&mut self, i: usize, now: Instant) {
        let lock = &mut self.locks[i];
        lock.spring_at = None;
        if !lock.door_open {
            lock.door_open = true;
            lock.opened_at = Some(now);
        }
    }

    /// A person closes door `i`; a pending spring-open is cancelled.
    pub fn close_door(&mut self, i: usize) {
        let lock = &mut self.locks[i];
        lock.door_open = false;
        lock.opened_at = None;
        lock.spring_at = None;
    }

    /// What door sensor `i` reads (settled state).
    pub fn sensor_open(&self, i: usize) -> bool {
        let lock = &self.locks[i];
        lock.stuck.unwrap_or(lock.door_open)
    }

    /// Whether coil `i` is energized (settled state).
    pub fn coil_on(&self, i: usize) -> bool {
        self.locks[i].pulse_until.is_some()
    }

    pub fn door_state(&self, i: usize) -> DoorState {
        let lock = &self.locks[i];
        DoorState {
            index: i,
            open: lock.door_open,
            sensor_open: self.sensor_open(i),
            coil_on: self.coil_on(i),
            parcel: lock.parcel,
            jammed: lock.jammed,
            stuck: lock.stuck,
            pulses: lock.pulses,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn board() -> BoardModel {
        BoardModel::new(16, 300 * MS, 50 * MS, None)
    }

    #[test]
    fn pulse_timeline() {
        let t = Instant::now();
        let mut b = board();
        b.pulse(3, t);
        b.settle(t + 299 * MS);
        assert!(b.coil_on(3));
        assert!(!b.sensor_open(3));
        b.settle(t + 300 * MS);
        assert!(!b.coil_on(3));
        assert!(!b.sensor_open(3));
        b.settle(t + 350 * MS);
        assert!(b.sensor_open(3));
        assert_eq!(b.locks[3].pulses, 1);
        // Stays open until someone closes it.
        b.settle(t + 3600 * 1000 * MS);
        assert!(b.sensor_open(3));
        b.close_door(3);
        assert!(!b.sensor_open(3));
    }

    #[test]
    fn jammed_counts_but_stays_closed() {
        let t = Instant::now();
        let mut b = board();
        b.locks[0].jammed = true;
        b.pulse(0, t);
        b.settle(t + 10 * MS);
        assert!(b.coil_on(0));
        b.settle(t + 1000 * MS);
        assert!(!b.sensor_open(0));
        assert_eq!(b.locks[0].pulses, 1);
    }

    #[test]
    fn auto_close_after_spring() {
        let t = Instant::now();
        let mut b = BoardModel::new(16, 300 * MS, 50 * MS, Some(1000 * MS));
        b.pulse(1, t);
        b.settle(t + 400 * MS);
        assert!(b.locks[1].door_open);
        b.settle(t + 1349 * MS);
        assert!(b.locks[1].door_open);
        b.settle(t + 1350 * MS);
        assert!(!b.locks[1].door_open);
    }

    #[test]
    fn lazy_settle_applies_spring_then_auto_close() {
        let t = Instant::now();
        let mut b = BoardModel::new(16, 300 * MS, 50 * MS, Some(1000 * MS));
        b.pulse(2, t);
        b.settle(t + 5000 * MS);
        assert!(!b.locks[2].door_open);
        assert!(!b.coil_on(2));
    }

    #[test]
    fn stuck_sensor_overrides_door() {
        let t = Instant::now();
        let mut b = board();
        b.locks[4].stuck = Some(false);
        b.open_door(4, t);
        assert!(!b.sensor_open(4));
        b.locks[4].stuck = Some(true);
        b.close_door(4);
        assert!(b.sensor_open(4));
    }

    #[test]
    fn closing_cancels_pending_spring() {
        let t = Instant::now();
        let mut b = board();
        b.pulse(5, t);
        b.close_door(5);
        b.settle(t + 1000 * MS);
        assert!(!b.locks[5].door_open);
    }
}
