//! The Locker Hub device agent as a library: one [`Agent`] per cabinet, many per process.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod clock;
pub mod config;
pub mod outbox;
pub mod session;
pub mod storage;
