//! Downlink messages, gateway to cabinet: commands, acknowledgements of uplink sequence numbers,
//! and the credential set for offline pickups and deposits.
//!
//! On the wire a downlink is the CBOR array `[v, kind, body]` with kind 0 = command,
//! 1 = ack, 2 = credentials.

use std::fmt;

use serde::de::{self, IgnoredAny, SeqAccess, Visitor};
use serde::ser::SerializeTuple;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_repr::{Deserialize_repr, Serialize_repr};
use serde_tuple::{Deserialize_tuple, Serialize_tuple};

use crate::ids::{CommandId, CompartmentId};
use crate::topics::DownKind;
use crate::Millis;

/// A downlink message.
#[derive(Debug, Clone, PartialEq)]
pub struct Downlink {
    pub body: DownlinkBody,
}

/// The body of a downlink, one variant per [`DownKind`].
#[derive(Debug, Clone, PartialEq)]
pub enum DownlinkBody {
    Command(Command),
    Ack(Ack),
    Credentials(Credentials),
}

impl DownlinkBody {
    /// The topic kind this body is published under.
    pub fn kind(&self) -> DownKind {
        match self {
            DownlinkBody::Command(_) => DownKind::Cmd,
            DownlinkBody::Ack(_) => DownKind::Ack,
            DownlinkBody::Credentials(_) => DownKind::Creds,
        }
    }
}

/// A command for a cabinet.
///
/// A cabinet executes it at most once (it remembers `id` durably) and never after it expired:
/// it is expired when the cabinet's sane clock is past `expires_at`, or when more than `ttl_ms`
/// passed since the cabinet received it (which still works when the cabinet's clock is wrong).
#[derive(Debug, Clone, PartialEq, Serialize_tuple, Deserialize_tuple)]
pub struct Command {
    pub id: CommandId,
    pub issued_at: Millis,
    pub expires_at: Millis,
    /// Relative time to live from receipt, ms.
    pub ttl_ms: u32,
    pub action: Action,
}

/// What a command asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Pulse one compartment's lock. Wire: `[0, compartment]`.
    UnlockCompartment(CompartmentId),
    /// Pulse every lock (an audit or evacuation). Wire: `[1]`.
    UnlockAll,
    /// Set configuration keys. Wire: `[2, [[key, value], ...]]`.
    SetConfig(Vec<(String, String)>),
    /// Enter or leave power save. Wire: `[3, bool]`.
    PowerSave(bool),
    /// Restart the agent. Wire: `[4]`.
    Reboot,
    /// Ask the cabinet to report its credential version so the gateway resends the set.
    /// Wire: `[5]`.
    SyncCredentials,
}

impl Action {
    /// A short name for logs, metrics and the API.
    pub fn name(&self) -> &'static str {
        match self {
            Action::UnlockCompartment(_) => "unlock",
            Action::UnlockAll => "unlock_all",
            Action::SetConfig(_) => "set_config",
            Action::PowerSave(_) => "power_save",
            Action::Reboot => "reboot",
            Action::SyncCredentials => "sync_credentials",
        }
    }
}

impl Serialize for Action {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Action::UnlockCompartment(c) => (0u8, c).serialize(s),
            Action::UnlockAll => (1u8,).serialize(s),
            Action::SetConfig(kv) => (2u8, kv).serialize(s),
            Action::PowerSave(on) => (3u8, on).serialize(s),
            Action::Reboot => (4u8,).serialize(s),
            Action::SyncCredentials => (5u8,).serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Action {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Action;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an action array [code, args...]")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Action, A::Error> {
                let code: u8 = a
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(0, &self))?;
                let missing = || de::Error::invalid_length(1, &"an argument");
                let action = match code {
                    0 => Action::UnlockCompartment(a.next_element()?.ok_or_else(missing)?),
                    1 => Action::UnlockAll,
                    2 => Action::SetConfig(a.next_element()?.ok_or_else(missing)?),
                    3 => Action::PowerSave(a.next_element()?.ok_or_else(missing)?),
                    4 => Action::Reboot,
                    5 => Action::SyncCredentials,
                    other => {
                        return Err(de::Error::invalid_value(
                            de::Unexpected::Unsigned(other.into()),
                            &"an action code 0..=5",
                        ))
                    }
                };
                while a.next_element::<IgnoredAny>()?.is_some() {}
                Ok(action)
            }
        }
        d.deserialize_seq(V)
    }
}

/// "The gateway has durably stored every uplink of this cabinet up to and including `seq`."
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize_tuple, Deserialize_tuple)]
pub struct Ack {
    pub seq: u64,
}

/// What a cached credential allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize_repr, Deserialize_repr)]
#[repr(u8)]
pub enum CredKind {
    /// A recipient's pickup code for one compartment.
    Pickup = 0,
    /// A courier's badge or PIN: signs the courier in for deposits and collections of its
    /// carrier's parcels (`carrier`); names no compartment.
    Deposit = 1,
    /// A parcel's barcode: a signed-in courier of the same carrier deposits it into its
    /// reserved compartment.
    Parcel = 2,
    /// A customer's return code: opens its reserved compartment to drop a parcel off (no
    /// courier needed).
    DropOff = 3,
    /// A parcel waiting for its carrier to take it away (expired or a return drop-off): a
    /// signed-in courier of the carrier collects it. No secret (the hash is empty).
    Collect = 4,
    /// An empty compartment the carrier (or anyone, when `carrier` is empty) may use when a
    /// parcel does not fit its reserved one: the courier asks for the next size up. No secret.
    Spare = 5,
}

/// `SHA-256(code || cabinet id)`: how a code (PIN, QR token, badge, parcel barcode) is held in
/// a credential set, salted with the cabinet so a set leaked from one cabinet opens no other.
pub fn secret_hash(code: &str, cabinet: &crate::CabinetId) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(code.as_bytes());
    h.update(cabinet.as_str().as_bytes());
    h.finalize().into()
}

/// One credential in the cabinet's offline cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize_tuple, Deserialize_tuple)]
pub struct Credential {
    pub kind: CredKind,
    /// SHA-256 of the code (PIN, QR token or badge) salted with the cabinet id, so the cache
    /// never holds a code in clear.
    #[serde(with = "serde_bytes")]
    pub secret_hash: Vec<u8>,
    /// The compartment the credential opens (pickup, parcel, drop-off, collect, spare);
    /// `None` for a courier's sign-in.
    pub compartment: Option<CompartmentId>,
    /// The order (pickup, parcel, drop-off, collect) or courier (deposit) reference reported
    /// back on use; empty for spares.
    pub reference: String,
    pub expires_at: Millis,
    /// The carrier the credential belongs to (couriers open only their carrier's parcels);
    /// empty where no carrier applies (a recipient's code, a shared spare).
    pub carrier: String,
}

/// The full credential set for a cabinet (replaces what it held), or one part of it.
///
/// A set too large for one message is sent in `parts` messages with the same `version`
/// (`part` = 0..parts); the cabinet replaces its set only when it holds every part of a
/// version, so it never runs on half a set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize_tuple, Deserialize_tuple)]
pub struct Credentials {
    pub version: u64,
    pub entries: Vec<Credential>,
    /// This message's part, from 0.
    pub part: u16,
    /// How many parts the set has (at least 1).
    pub parts: u16,
}

fn down_kind_code(k: DownKind) -> u8 {
    match k {
        DownKind::Cmd => 0,
        DownKind::Ack => 1,
        DownKind::Creds => 2,
    }
}

impl Serialize for Downlink {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut t = s.serialize_tuple(3)?;
        t.serialize_element(&crate::SCHEMA_VERSION)?;
        t.serialize_element(&down_kind_code(self.body.kind()))?;
        match &self.body {
            DownlinkBody::Command(b) => t.serialize_element(b)?,
            DownlinkBody::Ack(b) => t.serialize_element(b)?,
            DownlinkBody::Credentials(b) => t.serialize_element(b)?,
        }
        t.end()
    }
}

pub(crate) enum DownlinkOrHead {
    Ok(Downlink),
    BadVersion(u64),
    BadKind(u64),
}

impl<'de> Deserialize<'de> for DownlinkOrHead {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = DownlinkOrHead;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a downlink array [v, kind, body]")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<DownlinkOrHead, A::Error> {
                let len = |i| de::Error::invalid_length(i, &"3 elements");
                let v: u64 = a.next_element()?.ok_or_else(|| len(0))?;
                let kind: u64 = a.next_element()?.ok_or_else(|| len(1))?;
                let out = if v != u64::from(crate::SCHEMA_VERSION) {
                    DownlinkOrHead::BadVersion(v)
                } else {
                    match kind {
                        0 => DownlinkOrHead::Ok(Downlink {
                            body: DownlinkBody::Command(a.next_element()?.ok_or_else(|| len(2))?),
                        }),
                        1 => DownlinkOrHead::Ok(Downlink {
                            body: DownlinkBody::Ack(a.next_element()?.ok_or_else(|| len(2))?),
                        }),
                        2 => DownlinkOrHead::Ok(Downlink {
                            body: DownlinkBody::Credentials(
                                a.next_element()?.ok_or_else(|| len(2))?,
                            ),
                        }),
                        other => DownlinkOrHead::BadKind(other),
                    }
                };
                while a.next_element::<IgnoredAny>()?.is_some() {}
                Ok(out)
            }
        }
        d.deserialize_seq(V)
    }
}
