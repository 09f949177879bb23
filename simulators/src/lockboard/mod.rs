//! Simulated Modbus lock board: N solenoid locks (16, 24 or 48) with door and parcel sensors.
//!
//! [`LockBoardSim`] is a cheap cloneable handle (one `Arc`) holding the board's model behind a
//! short-lived `std::sync::Mutex`. The lock is never held across an `.await` or any I/O, only
//! for the few microseconds a register read or a control call takes; this deliberately replaces
//! the project's "one actor per piece of state" pattern, because a fleet simulation runs
//! thousands of boards and a task plus channel per board would buy nothing here.
//!
//! # Register map (unit id configurable, default 1)
//!
//! | Table | Address | Meaning |
//! |---|---|---|
//! | Coils (FC01 read, FC05/FC15 write) | `0..N` | Write ON: fire lock i's solenoid. The coil reads ON for the pulse, then OFF by itself. Writing OFF is accepted and does nothing. Each ON write counts one pulse. |
//! | Discrete inputs (FC02) | `0..N` | Door sensor i, 1 = open |
//! | Discrete inputs (FC02) | `0x0100 + i` | Parcel present in compartment i |
//! | Input registers (FC04) | `0` | Firmware version, `0x0102` = v1.2 |
//! | Input registers (FC04) | `1` | Lock count N |
//! | Input registers (FC04) | `0x0100 + i` | Pulse counter of lock i (u16, wraps) |
//! | Holding register (FC03/FC06/FC16) | `0` | Pulse duration in ms, 1..=10000 (default 300); other values: `IllegalDataValue` |
//!
//! Addresses outside these blocks (also a read that straddles a gap) answer
//! `IllegalDataAddress`; a quantity of 0 or above the spec maximum answers `IllegalDataValue`;
//! any other function code answers `IllegalFunction`. Requests for another unit id answer
//! `GatewayTargetDevice` (see [`crate::modbus`]).
//!
//! Behaviour: an unjammed door springs open 50 ms (configurable) after its pulse ends and stays
//! open until a person closes it ([`LockBoardSim::close_door`]) or, if configured, closes by
//! itself after `auto_close`. See [`model`] for the exact timeline.

mod model;
mod registers;

pub use model::DoorState;

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use serde::Serialize;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    task::JoinHandle,
    time::Instant,
};

use crate::{
    charger::ChargerSim,
    modbus::{Bind, Link, LinkStats, ModbusDevice, ModbusError, ModbusServer},
};
use model::BoardModel;

/// Register addresses of the lock board (see the module docs for the full map).
pub mod reg {
    /// Input register: firmware version.
    pub const FIRMWARE_VERSION: u16 = 0x0000;
    /// Input register: number of locks.
    pub const LOCK_COUNT: u16 = 0x0001;
    /// Input registers: pulse counter of lock i at `PULSE_COUNTER_BASE + i`.
    pub const PULSE_COUNTER_BASE: u16 = 0x0100;
    /// Discrete inputs: parcel sensor of compartment i at `PARCEL_SENSOR_BASE + i`.
    pub const PARCEL_SENSOR_BASE: u16 = 0x0100;
    /// Discrete inputs: door sensor of lock i at `DOOR_SENSOR_BASE + i`.
    pub const DOOR_SENSOR_BASE: u16 = 0x0000;
    /// Coils: solenoid of lock i at `COIL_BASE + i`.
    pub const COIL_BASE: u16 = 0x0000;
    /// Holding register: pulse duration in milliseconds.
    pub const PULSE_MS: u16 = 0x0000;
    /// Value of [`FIRMWARE_VERSION`] (v1.2).
    pub const FIRMWARE: u16 = 0x0102;
    /// Accepted pulse durations in ms.
    pub const PULSE_MS_RANGE: std::ops::RangeInclusive<u16> = 1..=10_000;
}

/// Errors of the lock board control API.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LockBoardError {
    /// Boards come with 16, 24 or 48 locks.
    #[error("a lock board has 16, 24 or 48 locks, not {0}")]
    InvalidLockCount(u16),
    /// Lock index out of range.
    #[error("no lock {index} on a board with {count} locks")]
    NoSuchLock {
        /// Requested index.
        index: usize,
        /// Locks on this board.
        count: u16,
    },
    /// Pulse duration out of range.
    #[error("pulse duration {0} ms is outside 1..=10000 ms")]
    InvalidPulse(u128),
}

/// Configuration of one simulated lock board.
#[derive(Debug, Clone, PartialEq)]
pub struct LockBoardConfig {
    /// Modbus unit id.
    pub unit_id: u8,
    /// Number of locks: 16, 24 or 48.
    pub locks: u16,
    /// Initial solenoid pulse length (holding register 0).
    pub pulse: Duration,
    /// Delay between the end of a pulse and the door springing open.
    pub spring: Duration,
    /// Close open doors automatically after this long (`None`: only a person closes them).
    pub auto_close: Option<Duration>,
    /// Power one energized solenoid draws, in watts (added to an attached charger's load).
    pub solenoid_w: f64,
}

impl Default for LockBoardConfig {
    fn default() -> Self {
        Self {
            unit_id: 1,
            locks: 16,
            pulse: Duration::from_millis(300),
            spring: Duration::from_millis(50),
            auto_close: None,
            solenoid_w: 24.0,
        }
    }
}

/// Whole-board state as served by `GET /state`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LockBoardState {
    /// Modbus unit id.
    pub unit_id: u8,
    /// Number of locks.
    pub locks: u16,
    /// Current pulse length in ms.
    pub pulse_ms: u64,
    /// Auto-close delay in ms, if enabled.
    pub auto_close_ms: Option<u64>,
    /// Sum of all pulse counters.
    pub total_pulses: u64,
    /// Link faults and counters.
    pub link: LinkStats,
    /// Every door.
    pub doors: Vec<DoorState>,
}

struct Inner {
    unit_id: u8,
    count: u16,
    solenoid_w: f64,
    link: Link,
    model: Mutex<BoardModel>,
    charger: Mutex<Option<ChargerSim>>,
}

/// Handle to one simulated lock board. Clone is cheap; all clones share the board.
#[derive(Clone)]
pub struct LockBoardSim {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for LockBoardSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockBoardSim")
            .field("unit_id", &self.inner.unit_id)
            .field("locks", &self.inner.count)
            .finish()
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl LockBoardSim {
    /// Build a board; fails on a lock count other than 16, 24, 48 or a bad pulse length.
    pub fn new(config: LockBoardConfig) -> Result<Self, LockBoardError> {
        if ![16, 24, 48].contains(&config.locks) {
            return Err(LockBoardError::InvalidLockCount(config.locks));
        }
        check_pulse(config.pulse)?;
        let model = BoardModel::new(
            usize::from(config.locks),
            config.pulse,
            config.spring,
            config.auto_close,
        );
        Ok(Self {
            inner: Arc::new(Inner {
                unit_id: config.unit_id,
                count: config.locks,
                solenoid_w: config.solenoid_w.max(0.0),
                link: Link::default(),
                model: Mutex::new(model),
                charger: Mutex::new(None),
            }),
        })
    }

    /// Lock the model and apply every event due now.
    fn settled(&self, now: Instant) -> MutexGuard<'_, BoardModel> {
        let mut model = self
            .inner
            .model
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        model.settle(now);
        model
    }

    fn check(&self, index: usize) -> Result<(), LockBoardError> {
        if index < usize::from(self.inner.count) {
            Ok(())
        } else {
            Err(LockBoardError::NoSuchLock {
                index,
                count: self.inner.count,
            })
        }
    }

    fn with_lock<R>(
        &self,
        index: usize,
        f: impl FnOnce(&mut BoardModel, Instant) -> R,
    ) -> Result<R, LockBoardError> {
        self.check(index)?;
        let now = Instant::now();
        let mut model = self.settled(now);
        Ok(f(&mut model, now))
    }

    /// Modbus unit id.
    pub fn unit_id(&self) -> u8 {
        self.inner.unit_id
    }

    /// Number of locks.
    pub fn lock_count(&self) -> u16 {
        self.inner.count
    }

    /// Feed solenoid pulses into this charge controller's load (a cabinet's shared battery).
    pub fn attach_charger(&self, charger: ChargerSim) {
        *self
            .inner
            .charger
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(charger);
    }

    /// Fire lock `index` as a Modbus coil write would.
    pub fn pulse(&self, index: usize) -> Result<(), LockBoardError> {
        self.check(index)?;
        self.fire(&[index]);
        Ok(())
    }

    /// Fire the given (checked) locks and report the load to an attached charger.
    fn fire(&self, indices: &[usize]) {
        if indices.is_empty() {
            return;
        }
        let now = Instant::now();
        let pulse = {
            let mut model = self.settled(now);
            for &i in indices {
                model.pulse(i, now);
            }
            model.pulse
        };
        let charger = self
            .inner
            .charger
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(charger) = charger {
            // Simultaneous solenoids draw additive current.
            let n = indices.len() as f64;
            charger.add_load_spike(self.inner.solenoid_w * n, pulse);
        }
    }

    /// A person opens door `index`: pulls an unlocked door, or forces a locked one.
    pub fn open_door(&self, index: usize) -> Result<(), LockBoardError> {
        self.with_lock(index, |m, now| m.open_door(index, now))
    }

    /// A person closes door `index`.
    pub fn close_door(&self, index: usize) -> Result<(), LockBoardError> {
        self.with_lock(index, |m, _| m.close_door(index))
    }

    /// A person opens door `index` and shuts it again at once, so quickly that no sensor read
    /// sees it open (the whole visit is one step for the Modbus server), leaving a parcel in
    /// (`Some(true)`), taking it out (`Some(false)`) or changing nothing (`None`).
    pub fn open_and_shut(&self, index: usize, parcel: Option<bool>) -> Result<(), LockBoardError> {
        self.with_lock(index, |m, now| {
            m.open_door(index, now);
            if let Some(p) = parcel {
                m.locks[index].parcel = p;
            }
            m.close_door(index);
        })
    }

    /// Put a parcel into compartment `index` (parcel sensor reads 1).
    pub fn put_parcel(&self, index: usize) -> Result<(), LockBoardError> {
        self.with_lock(index, |m, _| m.locks[index].parcel = true)
    }

    /// Take the parcel out of compartment `index`.
    pub fn take_parcel(&self, index: usize) -> Result<(), LockBoardError> {
        self.with_lock(index, |m, _| m.locks[index].parcel = false)
    }

    /// Jam or free lock `index`. A jammed lock counts pulses but its door stays closed.
    pub fn set_jammed(&self, index: usize, jammed: bool) -> Result<(), LockBoardError> {
        self.with_lock(index, |m, _| m.locks[index].jammed = jammed)
    }

    /// Make door sensor `index` read a fixed value (`Some(true)`: open) or follow the door
    /// again (`None`).
    pub fn set_stuck_sensor(
        &self,
        index: usize,
        value: Option<bool>,
    ) -> Result<(), LockBoardError> {
        self.with_lock(index, |m, _| m.locks[index].stuck = value)
    }

    /// Stop (`true`) or resume answering Modbus requests. Connections stay open.
    pub fn set_unresponsive(&self, on: bool) {
        self.inner.link.set_unresponsive(on);
    }

    /// Delay every Modbus answer by `delay`.
    pub fn set_delay(&self, delay: Duration) {
        self.inner.link.set_delay(delay);
    }

    /// Enable or disable automatic door closing.
    pub fn set_auto_close(&self, after: Option<Duration>) {
        self.settled(Instant::now()).auto_close = after;
    }

    /// Set the pulse length, as writing holding register 0 does.
    pub fn set_pulse_duration(&self, pulse: Duration) -> Result<(), LockBoardError> {
        check_pulse(pulse)?;
        self.settled(Instant::now()).pulse = pulse;
        Ok(())
    }

    /// Pulses fired on lock `index` since start (the register wraps at u16, this does not).
    pub fn pulse_count(&self, index: usize) -> Result<u64, LockBoardError> {
        self.with_lock(index, |m, _| m.locks[index].pulses)
    }

    /// Pulses fired on all locks since start.
    pub fn total_pulses(&self) -> u64 {
        self.settled(Instant::now())
            .locks
            .iter()
            .map(|l| l.pulses)
            .sum()
    }

    /// Whether door `index` is physically open (ignores a stuck sensor).
    pub fn door_open(&self, index: usize) -> Result<bool, LockBoardError> {
        self.with_lock(index, |m, _| m.locks[index].door_open)
    }

    /// What door sensor `index` reports over Modbus.
    pub fn sensor_open(&self, index: usize) -> Result<bool, LockBoardError> {
        self.with_lock(index, |m, _| m.sensor_open(index))
    }

    /// Whether a parcel lies in compartment `index`.
    pub fn parcel_present(&self, index: usize) -> Result<bool, LockBoardError> {
        self.with_lock(index, |m, _| m.locks[index].parcel)
    }

    /// Full state of one door.
    pub fn door(&self, index: usize) -> Result<DoorState, LockBoardError> {
        self.with_lock(index, |m, _| m.door_state(index))
    }

    /// Link faults and request counters.
    pub fn link_stats(&self) -> LinkStats {
        self.inner.link.stats()
    }

    /// Whole-board state.
    pub fn state(&self) -> LockBoardState {
        let model = self.settled(Instant::now());
        LockBoardState {
            unit_id: self.inner.unit_id,
            locks: self.inner.count,
            pulse_ms: millis(model.pulse),
            auto_close_ms: model.auto_close.map(millis),
            total_pulses: model.locks.iter().map(|l| l.pulses).sum(),
            link: self.inner.link.stats(),
            doors: (0..model.locks.len())
                .map(|i| model.door_state(i))
                .collect(),
        }
    }

    /// A Modbus server for this board alone.
    pub fn modbus_server(&self) -> ModbusServer {
        ModbusServer::single(self.clone())
    }

    /// Serve this board over Modbus TCP; see [`ModbusServer::serve_tcp`].
    pub async fn serve_tcp(
        &self,
        bind: impl Into<Bind>,
    ) -> Result<(SocketAddr, JoinHandle<()>), ModbusError> {
        self.modbus_server().serve_tcp(bind).await
    }

    /// Serve this board on one connected transport; see [`ModbusServer::serve_stream`].
    pub fn serve_stream<T>(&self, transport: T) -> JoinHandle<()>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        self.modbus_server().serve_stream(transport)
    }
}

fn check_pulse(pulse: Duration) -> Result<(), LockBoardError> {
    let ms = pulse.as_millis();
    let range = reg::PULSE_MS_RANGE;
    if ms < u128::from(*range.start()) || ms > u128::from(*range.end()) {
        Err(LockBoardError::InvalidPulse(ms))
    } else {
        Ok(())
    }
}

impl ModbusDevice for LockBoardSim {
    fn unit_id(&self) -> u8 {
        self.inner.unit_id
    }

    fn link(&self) -> &Link {
        &self.inner.link
    }

    fn handle(
        &self,
        request: &tokio_modbus::Request<'_>,
    ) -> Result<tokio_modbus::Response, tokio_modbus::ExceptionCode> {
        registers::handle(self, request)
    }
}
