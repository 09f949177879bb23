//! The Locker Hub gateway: the mTLS edge in front of the embedded rumqttd broker, ingest of
//! cabinet events into sled, fleet state, the offline command queue, the HTTP API and metrics.
//!
//! [`app::Gateway::start`] wires every component; `locker-gateway` is a thin binary around it.

pub mod api;
pub mod app;
pub mod audit;
pub mod broker;
pub mod cluster;
pub mod commands;
pub mod config;
pub mod console;
pub mod edge;
pub mod fleet;
pub mod ingest;
pub mod json;
pub mod live;
pub mod metrics;
pub mod model;
pub mod outbound;
pub mod parcels;
pub mod rules;
pub mod store;
