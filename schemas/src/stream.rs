//! Messages the gateway publishes for integrators on `lk/v1/{cabinet}/gw/{kind}`: presence now,
//! alerts and parcel events as the rules engine and parcel domain produce them.
//!
//! Each is a CBOR array `[v, kind, body]` like the downlink, with kind 0 = presence,
//! 1 = alert, 2 = parcel.

use serde::ser::SerializeTuple;
use serde::{Deserialize, Serialize, Serializer};
use serde_tuple::{Deserialize_tuple, Serialize_tuple};

use crate::Millis;

/// A cabinet came online or went offline (the edge's view: its TLS connection).
#[derive(Debug, Clone, PartialEq, Eq, Serialize_tuple, Deserialize_tuple)]
pub struct Presence {
    pub online: bool,
    pub ts: Millis,
}

/// An alert raised or cleared by the gateway's rules engine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize_tuple, Deserialize_tuple)]
pub struct AlertEvent {
    /// The rule's name, for example `door_left_open` or `offline`.
    pub rule: String,
    pub active: bool,
    pub ts: Millis,
    pub detail: String,
}

/// A parcel order changed state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize_tuple, Deserialize_tuple)]
pub struct ParcelEvent {
    pub order: String,
    /// The new state, for example `deposited` or `picked_up`.
    pub state: String,
    pub ts: Millis,
}

/// A message on a gateway-made stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamMessage {
    Presence(Presence),
    Alert(AlertEvent),
    Parcel(ParcelEvent),
}

impl Serialize for StreamMessage {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut t = s.serialize_tuple(3)?;
        t.serialize_element(&crate::SCHEMA_VERSION)?;
        match self {
            StreamMessage::Presence(b) => {
                t.serialize_element(&0u8)?;
                t.serialize_element(b)?;
            }
            StreamMessage::Alert(b) => {
                t.serialize_element(&1u8)?;
                t.serialize_element(b)?;
            }
            StreamMessage::Parcel(b) => {
                t.serialize_element(&2u8)?;
                t.serialize_element(b)?;
            }
        }
        t.end()
    }
}

impl<'de> Deserialize<'de> for StreamMessage {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let (v, kind, body): (u8, u8, ciborium::Value) = Deserialize::deserialize(d)?;
        if v != crate::SCHEMA_VERSION {
            return Err(D::Error::custom(format!("unsupported schema version {v}")));
        }
        let body = match kind {
            0 => StreamMessage::Presence(body.deserialized().map_err(D::Error::custom)?),
            1 => StreamMessage::Alert(body.deserialized().map_err(D::Error::custom)?),
            2 => StreamMessage::Parcel(body.deserialized().map_err(D::Error::custom)?),
            k => return Err(D::Error::custom(format!("unknown stream kind {k}"))),
        };
        Ok(body)
    }
}
