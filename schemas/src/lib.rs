//! The Locker Hub wire contract, shared by the gateway, the device agent, the simulators and
//! integrators: typed identifiers ([`ids`]), typed MQTT topics and subscription filters
//! ([`topics`]), the uplink and downlink messages ([`uplink`], [`downlink`], [`stream`]) and
//! the compact CBOR codec ([`codec`]).
//!
//! Nothing outside this crate formats a topic string or picks a CBOR layout by hand.
//! `schemas/locker.cddl` describes every message; `schemas/vectors/` holds one example of each.

pub mod codec;
pub mod downlink;
pub mod ids;
pub mod limits;
pub mod parcel_ids;
pub mod stream;
pub mod topics;
pub mod uplink;
pub mod vectors;

pub use codec::{DecodeError, EncodeError, MAX_PAYLOAD_BYTES, SCHEMA_VERSION};
pub use downlink::{
    secret_hash, Ack, Action, Command, CredKind, Credential, Credentials, Downlink, DownlinkBody,
};
pub use ids::{CabinetId, CommandId, CompartmentId, IdError};
pub use parcel_ids::{CarrierId, CourierId, OrderId, SiteId, SlugError};
pub use stream::{AlertEvent, ParcelEvent, Presence, StreamMessage};
pub use topics::{DownKind, Filter, StreamKind, Topic, TopicError, UpKind};
pub use uplink::*;

/// Milliseconds since the Unix epoch, as carried on the wire.
pub type Millis = u64;

/// The current wall-clock time in milliseconds since the Unix epoch (0 if the clock is before
/// 1970, which a sane clock never is).
pub fn now_millis() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
