//! The rules engine's tests: every kind through the real actor under paused tokio time
//! ([`harness`], [`kinds_net`], [`kinds_power`], [`kinds_doors`]), restarts in the middle of
//! a duration and with an active alert ([`restart`]), the pure engine with explicit times
//! ([`engine`]), hysteresis and uniqueness as properties ([`props`]) and the configuration's
//! errors ([`config`]).

mod config;
mod engine;
mod harness;
mod kinds_doors;
mod kinds_net;
mod kinds_power;
mod props;
mod restart;
