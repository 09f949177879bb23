//! The lock-board driver: compartment <-> lock mapping, door-sensor debouncing, online/offline
//! tracking, lock pulses and parcel-sensor reads.
//!
//! A poll that sees doors close reads the board's parcel sensors once, before it reports
//! anything, and the closes carry what the sensors read: the hardware task reads nothing else
//! meanwhile, so no later event of the compartment (a new opening) can overtake the close, and
//! a read that fails (or times out after `modbus_timeout_ms`) only leaves the reading out.
//!
//! Register map (see the simulators): coil `coil_offset + i` written ON (FC05) fires lock i and
//! resets itself; discrete input `sensor_offset + i` (FC02) is 1 while door i is open;
//! discrete input `parcel_offset + i` is 1 while a parcel is in compartment i.

use std::time::Duration;

use locker_schemas::CompartmentId;
use tokio::time::Instant;

use super::link::{Link, LinkError, ModbusConnector};
use super::IoEvent;
use crate::config::{LockBoardConfig, TimingConfig};

/// Debounces one binary sensor: a change counts after `needed` identical reads in a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Debouncer {
    stable: bool,
    differing: u8,
}

impl Debouncer {
    /// A debouncer whose stable state is `initial`.
    pub fn new(initial: bool) -> Self {
        Self {
            stable: initial,
            differing: 0,
        }
    }

    /// The debounced state.
    pub fn state(&self) -> bool {
        self.stable
    }

    /// Feeds one read; returns the new state if it changed.
    pub fn feed(&mut self, read: bool, needed: u8) -> Option<bool> {
        if read == self.stable {
            self.differing = 0;
            return None;
        }
        self.differing = self.differing.saturating_add(1);
        if self.differing >= needed.max(1) {
            self.stable = read;
            self.differing = 0;
            Some(read)
        } else {
            None
        }
    }
}

/// One lock board as the hardware task drives it.
#[derive(Debug)]
pub struct Board {
    pub cfg: LockBoardConfig,
    link: Link,
    doors: Vec<Debouncer>,
    failures: u32,
    offline: bool,
    pub(super) next_poll: Instant,
    /// Locks fired recently, watched at the fast rate until they open or the deadline passes.
    watch: Vec<(u16, Instant)>,
    /// The last parcel read after a close failed (logged once until a read succeeds again).
    parcel_read_failing: bool,
}

impl Board {
    /// A board (not yet read).
    pub fn new(cfg: LockBoardConfig, timing: &TimingConfig, connector: ModbusConnector) -> Self {
        let link = Link::new(
            cfg.address.clone(),
            cfg.unit,
            Duration::from_millis(timing.modbus_timeout_ms),
            connector,
        );
        Self::with_link(cfg, link)
    }

    /// A board reached through `link` (e.g. a unit on an RS-485 line).
    pub fn with_link(cfg: LockBoardConfig, link: Link) -> Self {
        Self {
            cfg,
            link,
            doors: Vec::new(),
            failures: 0,
            offline: false,
            next_poll: Instant::now(),
            watch: Vec::new(),
            parcel_read_failing: false,
        }
    }

    /// The lock index of a compartment on this board.
    pub fn lock_of(&self, c: CompartmentId) -> Option<u16> {
        let i = c.0.checked_sub(self.cfg.first_compartment)?;
        (i < self.cfg.locks).then_some(i)
    }

    /// Whether the board is considered offline.
    pub fn offline(&self) -> bool {
        self.offline
    }

    /// Reads the door sensors once and returns what changed.
    pub async fn poll(&mut self, timing: &TimingConfig, out: &mut Vec<IoEvent>) {
        let now = Instant::now();
        match self
            .link
            .read_discrete(self.cfg.sensor_offset, self.cfg.locks)
            .await
        {
            Ok(reads) => {
                self.failures = 0;
                if self.offline {
                    self.offline = false;
                    out.push(IoEvent::BoardOnline {
                        unit: self.cfg.unit,
                    });
                }
                if self.doors.is_empty() {
                    self.doors = reads.iter().map(|&r| Debouncer::new(r)).collect();
                    let doors = reads
                        .iter()
                        .enumerate()
                        .map(|(i, &open)| (self.cfg.compartment(i as u16), open))
                        .collect();
                    out.push(IoEvent::Snapshot {
                        unit: self.cfg.unit,
                        doors,
                    });
                } else {
                    let mut changes = Vec::new();
                    for (i, (&r, d)) in reads.iter().zip(self.doors.iter_mut()).enumerate() {
                        if let Some(open) = d.feed(r, timing.debounce_reads) {
                            let i = i as u16;
                            if open {
                                self.watch.retain(|(l, _)| *l != i);
                            }
                            changes.push((i, open));
                        }
                    }
                    let parcels = if changes.iter().any(|(_, open)| !open) {
                        self.parcels_after_close().await
                    } else {
                        None
                    };
                    for (i, open) in changes {
                        let parcel = match &parcels {
                            Some(p) if !open => p.get(usize::from(i)).copied(),
                            _ => None,
                        };
                        out.push(IoEvent::Door {
                            compartment: self.cfg.compartment(i),
                            open,
                            parcel,
                        });
                    }
                }
            }
            Err(e) => {
                self.failures = self.failures.saturating_add(1);
                self.link.reset();
                if !self.offline && self.failures >= timing.offline_after_failures {
                    self.offline = true;
                    out.push(IoEvent::BoardOffline {
                        unit: self.cfg.unit,
                        detail: format!(
                            "lock board unit {} at {}: {e} ({} failed polls)",
                            self.cfg.unit,
                            self.link.address(),
                            self.failures
                        ),
                    });
                }
            }
        }
        self.watch.retain(|(_, until)| *until > now);
        let ms = if self.offline {
            timing.modbus_reconnect_ms
        } else if self.watch.is_empty() {
            timing.sensor_poll_ms
        } else {
            timing.fast_poll_ms
        };
        self.next_poll = now + Duration::from_millis(ms);
    }

    /// Fires the lock of compartment `c` once (never retried: a lost reply may hide a fired lock)
    /// and watches its door at the fast rate until `confirm` passes.
    pub async fn pulse(
        &mut self,
        c: CompartmentId,
        timing: &TimingConfig,
    ) -> Result<(), LinkError> {
        let i = self
            .lock_of(c)
            .ok_or_else(|| LinkError::Protocol(format!("compartment {c} is not on this board")))?;
        let r = self.link.write_coil(self.cfg.coil_offset + i, true).await;
        if r.is_ok() {
            let now = Instant::now();
            self.watch.retain(|(l, _)| *l != i);
            self.watch
                .push((i, now + Duration::from_millis(timing.unlock_confirm_ms)));
            self.next_poll = self
                .next_poll
                .min(now + Duration::from_millis(timing.fast_poll_ms));
        } else {
            self.link.reset();
        }
        r
    }

    /// The parcel sensors (by lock index) for doors that just closed: `None` on a board
    /// without parcel sensors or when the read fails (logged once per run of failures).
    async fn parcels_after_close(&mut self) -> Option<Vec<bool>> {
        if !self.cfg.parcel_sensors {
            return None;
        }
        match self
            .link
            .read_discrete(self.cfg.parcel_offset, self.cfg.locks)
            .await
        {
            Ok(p) => {
                if std::mem::take(&mut self.parcel_read_failing) {
                    tracing::info!(unit = self.cfg.unit, "parcel sensors readable again");
                }
                Some(p)
            }
            Err(e) => {
                if !std::mem::replace(&mut self.parcel_read_failing, true) {
                    tracing::warn!(unit = self.cfg.unit, error = %e, "parcel sensors unreadable after a door closed: closes are reported without a parcel reading");
                }
                None
            }
        }
    }

    /// Reads the parcel sensors: `(compartment, parcel present)`.
    pub async fn parcels(&mut self) -> Result<Vec<(CompartmentId, bool)>, LinkError> {
        let r = self
            .link
            .read_discrete(self.cfg.parcel_offset, self.cfg.locks)
            .await?;
        Ok(r.into_iter()
            .enumerate()
            .map(|(i, p)| (self.cfg.compartment(i as u16), p))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn needs_consecutive_reads() {
        let mut d = Debouncer::new(false);
        assert_eq!(d.feed(true, 2), None);
        assert_eq!(d.feed(false, 2), None);
        assert_eq!(d.feed(true, 2), None);
        assert_eq!(d.feed(true, 2), Some(true));
        assert_eq!(d.feed(true, 2), None);
        assert!(d.state());
    }

    proptest! {
        #[test]
        fn debounced_changes_alternate_and_follow_runs(reads in proptest::collection::vec(any::<bool>(), 0..200), needed in 1u8..5) {
            let mut d = Debouncer::new(false);
            let mut last = false;
            let mut run = (false, 0u32);
            for r in reads {
                run = if r == run.0 { (r, run.1 + 1) } else { (r, 1) };
                if let Some(s) = d.feed(r, needed) {
                    prop_assert_ne!(s, last, "a change is a change");
                    prop_assert_eq!(s, r);
                    prop_assert!(run.1 >= u32::from(needed), "only after {} identical reads", needed);
                    last = s;
                }
                if run.1 >= u32::from(needed) { prop_assert_eq!(d.state(), run.0); }
            }
        }
    }
}
