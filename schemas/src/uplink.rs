//! Uplink messages, cabinet to gateway: the envelope every event travels in and its bodies.
//!
//! On the wire (see `schemas/locker.cddl`) an uplink is the CBOR array
//! `[v, cabinet, boot, seq, ts, kind, body]`, and every body is an array of its fields in
//! declaration order. Arrays instead of maps keep a door event near 50 bytes on 4G links;
//! new optional fields are only ever appended, so old decoders keep working.

use std::fmt;

use serde::de::{self, IgnoredAny, SeqAccess, Visitor};
use serde::ser::SerializeTuple;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_repr::{Deserialize_repr, Serialize_repr};
use serde_tuple::{Deserialize_tuple, Serialize_tuple};

use crate::ids::{CabinetId, CommandId, CompartmentId};
use crate::topics::UpKind;
use crate::Millis;

/// One uplink message: who sent it, its place in the cabinet's sequence, and what happened.
#[derive(Debug, Clone, PartialEq)]
pub struct Uplink {
    /// The cabinet that produced the event (must match the topic's cabinet).
    pub cabinet: CabinetId,
    /// Boot counter of the agent that produced the event (increments on every start).
    pub boot: u32,
    /// Per-cabinet sequence number: one sequence across all kinds, starting at 1, persisted
    /// across restarts. The gateway acknowledges "everything up to seq".
    pub seq: u64,
    /// The cabinet's clock when the event happened, ms since the epoch.
    pub ts: Millis,
    /// What happened.
    pub body: UplinkBody,
}

/// The body of an uplink, one variant per [`UpKind`].
#[derive(Debug, Clone, PartialEq)]
pub enum UplinkBody {
    Hello(Hello),
    Door(Door),
    Scan(Scan),
    Alarm(Alarm),
    Power(Power),
    Network(Network),
    Result(CommandResult),
    Access(LocalAccess),
}

impl UplinkBody {
    /// The topic kind this body is published under.
    pub fn kind(&self) -> UpKind {
        match self {
            UplinkBody::Hello(_) => UpKind::Hello,
            UplinkBody::Door(_) => UpKind::Door,
            UplinkBody::Scan(_) => UpKind::Scan,
            UplinkBody::Alarm(_) => UpKind::Alarm,
            UplinkBody::Power(_) => UpKind::Power,
            UplinkBody::Network(_) => UpKind::Network,
            UplinkBody::Result(_) => UpKind::Result,
            UplinkBody::Access(_) => UpKind::Access,
        }
    }

    /// Whether the agent may shed this event when its outbox is nearly full (only telemetry).
    pub fn is_sheddable(&self) -> bool {
        matches!(self, UplinkBody::Power(_) | UplinkBody::Network(_))
    }
}

/// The wire code of an uplink kind (the `kind` element of the envelope).
pub fn up_kind_code(k: UpKind) -> u8 {
    match k {
        UpKind::Hello => 0,
        UpKind::Door => 1,
        UpKind::Scan => 2,
        UpKind::Alarm => 3,
        UpKind::Power => 4,
        UpKind::Network => 5,
        UpKind::Result => 6,
        UpKind::Access => 7,
    }
}

/// Compartment sizes, smallest first (best-fit assignment walks them in order).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize_repr, Deserialize_repr,
)]
#[repr(u8)]
pub enum Size {
    S = 0,
    M = 1,
    L = 2,
    Xl = 3,
}

/// One compartment as the cabinet reports it in its hello.
#[derive(Debug, Clone, PartialEq, Eq, Serialize_tuple, Deserialize_tuple)]
pub struct CompartmentInfo {
    pub id: CompartmentId,
    pub size: Size,
}

/// How the cabinet is online.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize_repr, Deserialize_repr)]
#[repr(u8)]
pub enum NetworkKind {
    Cellular = 0,
    Wifi = 1,
    Lan = 2,
}

/// Sent first after every (re)connect: what the cabinet is.
#[derive(Debug, Clone, PartialEq, Serialize_tuple, Deserialize_tuple)]
pub struct Hello {
    pub firmware: String,
    pub hardware: String,
    pub compartments: Vec<CompartmentInfo>,
    pub network: NetworkKind,
    /// Version of the credential set the cabinet holds (0 = none).
    pub creds_version: u64,
}

/// Why a door changed state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DoorCause {
    /// Nothing the cabinet knows of: a door opening with this cause raises a forced-open alarm.
    Unknown,
    /// A local pickup or deposit from cached credentials.
    LocalAccess,
    /// A command from the gateway.
    Command(CommandId),
}

impl Serialize for DoorCause {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            DoorCause::Unknown => s.serialize_u8(0),
            DoorCause::LocalAccess => s.serialize_u8(1),
            DoorCause::Command(id) => id.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for DoorCause {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = DoorCause;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("0 (unknown), 1 (local access) or a 16-byte command id")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<DoorCause, E> {
                match v {
                    0 => Ok(DoorCause::Unknown),
                    1 => Ok(DoorCause::LocalAccess),
                    _ => Err(E::invalid_value(de::Unexpected::Unsigned(v), &self)),
                }
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<DoorCause, E> {
                let b: [u8; 16] = v
                    .try_into()
                    .map_err(|_| E::invalid_length(v.len(), &"16 bytes"))?;
                Ok(DoorCause::Command(CommandId::from_bytes(b)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<DoorCause, E> {
                v.parse().map(DoorCause::Command).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// A door sensor changed state (debounced).
///
/// `parcel` was appended to revision 1: a sender always writes it (`null` when it has nothing
/// to say), and the decoder takes a three-element door from an older sender as `parcel: None`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize_tuple)]
pub struct Door {
    pub compartment: CompartmentId,
    pub open: bool,
    pub cause: DoorCause,
    /// The compartment's parcel sensor, read when the door closed (`true` = a parcel is
    /// inside); `None` when the door opened, when the board has no parcel sensors, or when the
    /// read failed.
    pub parcel: Option<bool>,
}

impl<'de> Deserialize<'de> for Door {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Door;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a door array [compartment, open, cause, parcel]")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Door, A::Error> {
                let missing = |i| de::Error::invalid_length(i, &"at least 3 elements");
                let compartment = a.next_element()?.ok_or_else(|| missing(0))?;
                let open = a.next_element()?.ok_or_else(|| missing(1))?;
                let cause = a.next_element()?.ok_or_else(|| missing(2))?;
                // absent in a door from an older sender
                let parcel = a.next_element::<Option<bool>>()?.flatten();
                // fields appended by newer revisions are ignored
                while a.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Door {
                    compartment,
                    open,
                    cause,
                    parcel,
                })
            }
        }
        d.deserialize_seq(V)
    }
}

/// Where a scan came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize_repr, Deserialize_repr)]
#[repr(u8)]
pub enum ScanSource {
    Barcode = 0,
    Qr = 1,
    Rfid = 2,
    Keypad = 3,
}

/// A barcode, QR code, RFID badge or keypad entry read at the cabinet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize_tuple, Deserialize_tuple)]
pub struct Scan {
    pub source: ScanSource,
    pub value: String,
}

/// Alarm kinds raised (and cleared) by the cabinet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize_repr, Deserialize_repr)]
#[repr(u8)]
pub enum AlarmKind {
    ForcedOpen = 0,
    DoorLeftOpen = 1,
    Tamper = 2,
    LockBoardOffline = 3,
    PowerFail = 4,
    OutboxNearlyFull = 5,
    /// Too many wrong codes at the keypad: it is locked for a while.
    KeypadLocked = 6,
    /// The charge controller reports a fault, or stopped answering on the bus.
    ChargerFault = 7,
}

/// An alarm raised (`active = true`) or cleared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize_tuple, Deserialize_tuple)]
pub struct Alarm {
    pub kind: AlarmKind,
    pub active: bool,
    /// The compartment concerned, if any.
    pub compartment: Option<CompartmentId>,
    /// The lock board (Modbus unit id) concerned, if any.
    pub board: Option<u8>,
    pub detail: String,
}

/// What the charge controller is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize_repr, Deserialize_repr)]
#[repr(u8)]
pub enum ChargeState {
    NotCharging = 0,
    Float = 1,
    Boost = 2,
    Equalize = 3,
}

/// Power telemetry from the charge controller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize_tuple, Deserialize_tuple)]
pub struct Power {
    pub battery_mv: u32,
    /// State of charge, percent (0 to 100).
    pub soc_pct: u8,
    /// Solar input power, watts.
    pub pv_w: u32,
    /// Load power, watts.
    pub load_w: u32,
    pub charging: ChargeState,
    /// Battery temperature in tenths of a degree Celsius.
    pub temp_dc: i16,
}

/// The cabinet's link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize_tuple, Deserialize_tuple)]
pub struct Network {
    pub kind: NetworkKind,
    /// Signal strength in dBm where the link has one.
    pub signal_dbm: Option<i16>,
}

/// The one outcome of a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize_repr, Deserialize_repr)]
#[repr(u8)]
pub enum Outcome {
    /// The lock fired and the door sensor confirmed the door opened.
    Opened = 0,
    /// The door was already open; the lock was not fired.
    AlreadyOpen = 1,
    /// The lock fired but the door did not open within the deadline.
    Jammed = 2,
    /// The command had expired when the cabinet judged it; nothing was done.
    Expired = 3,
    /// The cabinet refused the command (unknown compartment, bad arguments, board offline).
    Rejected = 4,
    /// Cancelled at the gateway before it was executed.
    Cancelled = 5,
    /// A non-door action (config, power save, reboot, sync) was carried out.
    Done = 6,
    /// The cabinet does not support this action (yet); nothing was done.
    Unsupported = 7,
    /// Gateway-made, never sent by a cabinet: the command was sent but the cabinet never
    /// answered before the gateway gave up. Says nothing about whether a door opened.
    NoAnswer = 8,
}

impl Outcome {
    /// Every outcome, in wire order.
    pub const ALL: &'static [Outcome] = &[
        Outcome::Opened,
        Outcome::AlreadyOpen,
        Outcome::Jammed,
        Outcome::Expired,
        Outcome::Rejected,
        Outcome::Cancelled,
        Outcome::Done,
        Outcome::Unsupported,
        Outcome::NoAnswer,
    ];

    /// The snake_case name used in the API and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Opened => "opened",
            Outcome::AlreadyOpen => "already_open",
            Outcome::Jammed => "jammed",
            Outcome::Expired => "expired",
            Outcome::Rejected => "rejected",
            Outcome::Cancelled => "cancelled",
            Outcome::Done => "done",
            Outcome::Unsupported => "unsupported",
            Outcome::NoAnswer => "no_answer",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The result of executing (or refusing) a command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize_tuple, Deserialize_tuple)]
pub struct CommandResult {
    pub command: CommandId,
    pub outcome: Outcome,
    pub detail: String,
}

/// Whether a local access put a parcel in or took one out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize_repr, Deserialize_repr)]
#[repr(u8)]
pub enum AccessAction {
    /// A recipient took a parcel out.
    Pickup = 0,
    /// A courier (or a customer returning a parcel) put a parcel in.
    Deposit = 1,
    /// A courier took an expired or returned parcel away.
    Collect = 2,
}

/// An offline pickup or deposit done from the cabinet's credential cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize_tuple, Deserialize_tuple)]
pub struct LocalAccess {
    pub compartment: CompartmentId,
    pub action: AccessAction,
    /// The order reference of the credential that was used.
    pub reference: String,
    pub source: ScanSource,
    /// Who did it: the courier reference of the signed-in courier, empty for a recipient or
    /// a customer.
    pub actor: String,
}

impl Serialize for Uplink {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut t = s.serialize_tuple(7)?;
        t.serialize_element(&crate::SCHEMA_VERSION)?;
        t.serialize_element(&self.cabinet)?;
        t.serialize_element(&self.boot)?;
        t.serialize_element(&self.seq)?;
        t.serialize_element(&self.ts)?;
        t.serialize_element(&up_kind_code(self.body.kind()))?;
        match &self.body {
            UplinkBody::Hello(b) => t.serialize_element(b)?,
            UplinkBody::Door(b) => t.serialize_element(b)?,
            UplinkBody::Scan(b) => t.serialize_element(b)?,
            UplinkBody::Alarm(b) => t.serialize_element(b)?,
            UplinkBody::Power(b) => t.serialize_element(b)?,
            UplinkBody::Network(b) => t.serialize_element(b)?,
            UplinkBody::Result(b) => t.serialize_element(b)?,
            UplinkBody::Access(b) => t.serialize_element(b)?,
        }
        t.end()
    }
}

/// What decoding the envelope's head found; version and kind problems are reported as typed
/// errors by the codec rather than as serde strings.
pub(crate) enum UplinkOrHead {
    Ok(Uplink),
    BadVersion(u64),
    BadKind(u64),
}

impl<'de> Deserialize<'de> for UplinkOrHead {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = UplinkOrHead;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an uplink array [v, cabinet, boot, seq, ts, kind, body]")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<UplinkOrHead, A::Error> {
                fn next<'de, T: Deserialize<'de>, A: SeqAccess<'de>>(
                    a: &mut A,
                    i: usize,
                ) -> Result<T, A::Error> {
                    a.next_element()?
                        .ok_or_else(|| de::Error::invalid_length(i, &"7 elements"))
                }
                fn drain<'de, A: SeqAccess<'de>>(a: &mut A) -> Result<(), A::Error> {
                    while a.next_element::<IgnoredAny>()?.is_some() {}
                    Ok(())
                }
                let v: u64 = next(&mut a, 0)?;
                if v != u64::from(crate::SCHEMA_VERSION) {
                    drain(&mut a)?;
                    return Ok(UplinkOrHead::BadVersion(v));
                }
                let cabinet = next(&mut a, 1)?;
                let boot = next(&mut a, 2)?;
                let seq = next(&mut a, 3)?;
                let ts = next(&mut a, 4)?;
                let kind: u64 = next(&mut a, 5)?;
                let body = match kind {
                    0 => UplinkBody::Hello(next(&mut a, 6)?),
                    1 => UplinkBody::Door(next(&mut a, 6)?),
                    2 => UplinkBody::Scan(next(&mut a, 6)?),
                    3 => UplinkBody::Alarm(next(&mut a, 6)?),
                    4 => UplinkBody::Power(next(&mut a, 6)?),
                    5 => UplinkBody::Network(next(&mut a, 6)?),
                    6 => UplinkBody::Result(next(&mut a, 6)?),
                    7 => UplinkBody::Access(next(&mut a, 6)?),
                    other => {
                        drain(&mut a)?;
                        return Ok(UplinkOrHead::BadKind(other));
                    }
                };
                // Fields appended by newer minor revisions are ignored.
                drain(&mut a)?;
                Ok(UplinkOrHead::Ok(Uplink {
                    cabinet,
                    boot,
                    seq,
                    ts,
                    body,
                }))
            }
        }
        d.deserialize_seq(V)
    }
}
