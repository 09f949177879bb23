//! The Locker Hub device agent as a library: one [`Agent`] per cabinet, many per process.
//!
//! - [`config`]: the configuration ([`AgentConfig`]);
//! - [`agent`]: [`Agent::start`], [`AgentDeps`], [`AgentHandle`] and the main loop;
//! - [`hw`]: Modbus lock boards and charge controller (one hardware task per agent);
//! - [`outbox`] and [`storage`]: the durable outbox and state in a sled tree per cabinet;
//! - [`session`]: the MQTT session (TLS, backoff, go-back-N window);
//! - [`creds`] and [`scanner`]: offline credentials and scan input sources;
//! - [`clock`]: the injectable wall clock.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod agent;
pub mod clock;
pub mod config;
pub mod creds;
pub mod hw;
pub mod outbox;
pub mod scanner;
pub mod session;
pub mod storage;

pub use agent::{
    Access, Agent, AgentDeps, AgentError, AgentHandle, AgentStatus, Counters, ExecOutcome,
    ExitReason, Key, Refusal, ScanReply, ScanSender,
};
pub use clock::{Clock, ManualClock, OffsetClock, SystemClock};
pub use config::AgentConfig;
pub use hw::{ModbusConnector, ModbusStream};
pub use storage::Storage;
