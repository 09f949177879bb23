//! The Locker Hub gateway: the mTLS edge in front of the embedded rumqttd broker, ingest of
//! cabinet events into sled, fleet state, the offline command queue, the HTTP API and metrics.

pub mod edge;
