//! Messages the gateway publishes for integrators on `lk/v1/{cabinet}/gw/{kind}`: presence now,
//! alerts and parcel events as the rules engine and parcel domain produce them.
//!
//! Each is a CBOR array `[v, kind, body]` like the downlink, with kind 0 = presence,
//! 1 = alert, 2 = parcel.

use std::fmt;

use serde::de::{self, IgnoredAny, SeqAccess, Visitor};
use serde::ser::SerializeTuple;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_tuple::{Deserialize_tuple, Serialize_tuple};

use crate::topics::StreamKind;
use crate::Millis;

/// A cabinet came online or went offline (the edge's view: its TLS connection).
#[derive(Debug, Clone, PartialEq, Eq, Serialize_tuple, Deserialize_tuple)]
pub struct Presence {
    pub online: bool,
    pub ts: Millis,
}

/// An alert raised or cleared by the gateway's rules engine.
///
/// `id`, `severity`, `subject` and `started` were appended to revision 1: the gateway always
/// writes them, and the decoder takes a four-element alert from an older gateway with them
/// empty (`started` = `ts`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize_tuple)]
pub struct AlertEvent {
    /// The rule's name, for example `door_left_open` or `offline`.
    pub rule: String,
    pub active: bool,
    /// When the alert was raised (`active`) or cleared.
    pub ts: Millis,
    pub detail: String,
    /// The alert's id (the same on its raise and its clear; `GET /v1/alerts/{id}`).
    pub id: String,
    /// `critical`, `warning` or `info`.
    pub severity: String,
    /// What in the cabinet the alert is about, for example `compartment 3` or `board 2`;
    /// empty for the cabinet as a whole.
    pub subject: String,
    /// When the condition began (before `ts` when the rule waits for it to last).
    pub started: Millis,
}

impl<'de> Deserialize<'de> for AlertEvent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = AlertEvent;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "an alert array [rule, active, ts, detail, id, severity, subject, started]",
                )
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<AlertEvent, A::Error> {
                let missing = |i| de::Error::invalid_length(i, &"at least 4 elements");
                let rule = a.next_element()?.ok_or_else(|| missing(0))?;
                let active = a.next_element()?.ok_or_else(|| missing(1))?;
                let ts = a.next_element()?.ok_or_else(|| missing(2))?;
                let detail = a.next_element()?.ok_or_else(|| missing(3))?;
                // absent in an alert from an older gateway
                let id = a.next_element::<String>()?.unwrap_or_default();
                let severity = a.next_element::<String>()?.unwrap_or_default();
                let subject = a.next_element::<String>()?.unwrap_or_default();
                let started = a.next_element::<Millis>()?.unwrap_or(ts);
                // fields appended by newer revisions are ignored
                while a.next_element::<IgnoredAny>()?.is_some() {}
                Ok(AlertEvent {
                    rule,
                    active,
                    ts,
                    detail,
                    id,
                    severity,
                    subject,
                    started,
                })
            }
        }
        d.deserialize_seq(V)
    }
}

/// A parcel order changed state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize_tuple, Deserialize_tuple)]
pub struct ParcelEvent {
    pub order: String,
    /// The new state, for example `deposited` or `picked_up`.
    pub state: String,
    pub ts: Millis,
    /// The compartment the order holds, if any.
    pub compartment: Option<crate::ids::CompartmentId>,
    /// What caused the change, for example `api`, `local_access`, `timer` or `command`.
    pub cause: String,
    /// Who caused it: a token's client, a courier, `recipient` or `gateway`.
    pub actor: String,
    /// The exception the order is in, if any (for example `door_jammed`).
    pub exception: Option<String>,
    /// The carrier of the order.
    pub carrier: String,
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

impl StreamMessage {
    /// The topic kind this message is published under.
    pub fn kind(&self) -> StreamKind {
        match self {
            StreamMessage::Presence(_) => StreamKind::Presence,
            StreamMessage::Alert(_) => StreamKind::Alert,
            StreamMessage::Parcel(_) => StreamKind::Parcel,
        }
    }
}

impl<'de> Deserialize<'de> for StreamMessage {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match StreamOrHead::deserialize(d)? {
            StreamOrHead::Ok(m) => Ok(m),
            StreamOrHead::BadVersion(v) => {
                Err(de::Error::custom(format!("unsupported schema version {v}")))
            }
            StreamOrHead::BadKind(k) => Err(de::Error::custom(format!("unknown stream kind {k}"))),
        }
    }
}

/// What decoding the head of a stream message found; version and kind problems become typed
/// errors in the codec (like uplinks and downlinks).
pub(crate) enum StreamOrHead {
    Ok(StreamMessage),
    BadVersion(u64),
    BadKind(u64),
}

impl<'de> Deserialize<'de> for StreamOrHead {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = StreamOrHead;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a stream message array [v, kind, body]")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<StreamOrHead, A::Error> {
                let len = |i| de::Error::invalid_length(i, &"3 elements");
                let v: u64 = a.next_element()?.ok_or_else(|| len(0))?;
                let kind: u64 = a.next_element()?.ok_or_else(|| len(1))?;
                let out = if v != u64::from(crate::SCHEMA_VERSION) {
                    StreamOrHead::BadVersion(v)
                } else {
                    match kind {
                        0 => StreamOrHead::Ok(StreamMessage::Presence(
                            a.next_element()?.ok_or_else(|| len(2))?,
                        )),
                        1 => StreamOrHead::Ok(StreamMessage::Alert(
                            a.next_element()?.ok_or_else(|| len(2))?,
                        )),
                        2 => StreamOrHead::Ok(StreamMessage::Parcel(
                            a.next_element()?.ok_or_else(|| len(2))?,
                        )),
                        other => StreamOrHead::BadKind(other),
                    }
                };
                // Fields appended by newer revisions are ignored.
                while a.next_element::<IgnoredAny>()?.is_some() {}
                Ok(out)
            }
        }
        d.deserialize_seq(V)
    }
}
