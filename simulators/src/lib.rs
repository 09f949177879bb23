//! Locker Hub hardware simulators: Modbus TCP lock boards and a solar charge controller that
//! behave like the real boards, with control APIs for tests and scripts.
//!
//! * [`lockboard`]: [`LockBoardSim`], N solenoid locks with door and parcel sensors and faults
//!   on demand (jammed lock, stuck sensor, unresponsive or slow board). Register map in the
//!   module docs.
//! * [`charger`]: [`ChargerSim`], an EPEver Tracer-style charge controller driven by a battery,
//!   PV and load model on an adjustable simulated clock. Register map in
//!   [`charger::registers`].
//! * [`modbus`]: serving any of them over real Modbus TCP (tokio-modbus) or over one
//!   already-connected transport such as `tokio::io::duplex` (for in-process fleets).
//! * [`control`]: the HTTP control surface (axum) used by the `locker-sim` binary.
//! * [`browser`]: headless Chromium over WebDriver, for the console's tests and benchmark.
//! * [`nats`]: a `nats-server` JetStream cluster on loopback, for cluster mode.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod bench;
pub mod browser;
pub mod charger;
pub mod control;
pub mod fleet;
pub mod lockboard;
pub mod modbus;
pub mod nats;

pub use charger::{ChargerConfig, ChargerSim, ChargerSnapshot};
pub use lockboard::{LockBoardConfig, LockBoardSim, LockBoardState};
pub use modbus::{Bind, ModbusDevice, ModbusServer};
