//! The parcel domain's records as they are stored and served: sites, carriers, couriers,
//! orders with their states, exceptions and history, and notification requests. Plain data;
//! the rules that change them are in [`super::machine`] and [`super::alloc`].

use locker_schemas::{CabinetId, CarrierId, CommandId, CompartmentId, CourierId, Millis};
use locker_schemas::{OrderId, SiteId};
use serde::{Deserialize, Serialize};

use crate::json::SizeName;

/// A location holding cabinets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Site {
    #[schema(value_type = crate::api::openapi::SiteIdDoc)]
    pub id: SiteId,
    pub name: String,
    /// IANA time zone, for example `Europe/Berlin`: expiry times in notices are shown in it.
    pub time_zone: String,
    pub address: String,
    #[schema(value_type = Vec<crate::api::openapi::CabinetIdDoc>)]
    pub cabinets: Vec<CabinetId>,
    /// Hours a recipient has to collect, for this site (overrides the default; a carrier's own
    /// window wins over both).
    #[serde(default)]
    pub pickup_window_h: Option<u32>,
}

/// A parcel company, courier firm or shop delivering into the lockers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Carrier {
    #[schema(value_type = crate::api::openapi::CarrierIdDoc)]
    pub id: CarrierId,
    pub name: String,
    /// The sites its couriers may deposit at; empty = every site.
    #[serde(default)]
    #[schema(value_type = Vec<crate::api::openapi::SiteIdDoc>)]
    pub sites: Vec<SiteId>,
    /// Hours its recipients have to collect (overrides the site's and the default).
    #[serde(default)]
    pub pickup_window_h: Option<u32>,
}

/// A courier of a carrier. The badge and PIN are kept because each cabinet's credential set
/// holds them hashed with that cabinet's id; the API never returns them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Courier {
    pub id: CourierId,
    pub carrier: CarrierId,
    pub name: String,
    #[serde(default)]
    pub badge: Option<String>,
    #[serde(default)]
    pub pin: Option<String>,
    #[serde(default = "yes")]
    pub active: bool,
}

fn yes() -> bool {
    true
}

/// Whether an order brings a parcel to a recipient or takes one back from a customer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OrderKind {
    /// Carrier -> locker -> recipient.
    Delivery,
    /// Customer drops a parcel off with a code -> the carrier collects it.
    Return,
}

/// Where an order stands.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum OrderState {
    /// Known, no compartment held (none free yet, or waiting for "out for delivery").
    Created,
    /// A compartment is held for the deposit (or the customer's drop-off).
    Reserved,
    /// The parcel is in the compartment.
    Deposited,
    /// The recipient has been sent a code (a notification request is in the outbox).
    Ready,
    /// The recipient took the parcel.
    PickedUp,
    /// Not collected within the pickup window: waiting for its carrier.
    Expired,
    /// The carrier is asked to take the parcel back (expired, cancelled with a parcel inside,
    /// or recalled).
    ReturnRequested,
    /// The carrier took the parcel away (an expired or returned parcel, or a customer's
    /// drop-off).
    Returned,
    /// Cancelled before a parcel was in the locker.
    Cancelled,
}

impl OrderState {
    /// Every state, for listings and metrics.
    pub const ALL: [OrderState; 9] = [
        OrderState::Created,
        OrderState::Reserved,
        OrderState::Deposited,
        OrderState::Ready,
        OrderState::PickedUp,
        OrderState::Expired,
        OrderState::ReturnRequested,
        OrderState::Returned,
        OrderState::Cancelled,
    ];

    /// The snake_case name of the API and the `gw/parcel` stream.
    pub fn as_str(self) -> &'static str {
        match self {
            OrderState::Created => "created",
            OrderState::Reserved => "reserved",
            OrderState::Deposited => "deposited",
            OrderState::Ready => "ready",
            OrderState::PickedUp => "picked_up",
            OrderState::Expired => "expired",
            OrderState::ReturnRequested => "return_requested",
            OrderState::Returned => "returned",
            OrderState::Cancelled => "cancelled",
        }
    }

    /// No further transition (the compartment, if any, is free again).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            OrderState::PickedUp | OrderState::Returned | OrderState::Cancelled
        )
    }

    /// Whether a parcel of this order is physically in its compartment.
    pub fn parcel_inside(self) -> bool {
        matches!(
            self,
            OrderState::Deposited
                | OrderState::Ready
                | OrderState::Expired
                | OrderState::ReturnRequested
        )
    }
}

/// Something that went wrong with an order; it stays on the order (and in its history) until
/// an operator resolves it or a later transition clears it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Exception {
    /// No compartment of the size (or larger) is free for the carrier at the site.
    NoCompartment,
    /// The compartment's lock fired but its door did not open; the order was moved.
    DoorJammed,
    /// The compartment's door was forced open.
    DoorForced,
    /// The parcel did not fit; the courier used a larger compartment.
    TooSmall,
    /// The cabinet reported the parcel still inside after the pickup.
    ParcelStillPresent,
    /// The compartment was opened for a pickup but no parcel was inside.
    PickupWithoutParcel,
    /// Cancelled or recalled at the API, but picked up at the cabinet meanwhile (offline).
    PickedUpAfterCancel,
    /// Cancelled at the API, but deposited at the cabinet meanwhile (offline): to be returned.
    DepositedAfterCancel,
    /// A deposit landed in a compartment another order held: that order was moved.
    CompartmentTaken,
    /// The cabinet stopped reporting the order's compartment in its layout.
    CompartmentRemoved,
}

impl Exception {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Exception::NoCompartment => "no_compartment",
            Exception::DoorJammed => "door_jammed",
            Exception::DoorForced => "door_forced",
            Exception::TooSmall => "too_small",
            Exception::ParcelStillPresent => "parcel_still_present",
            Exception::PickupWithoutParcel => "pickup_without_parcel",
            Exception::PickedUpAfterCancel => "picked_up_after_cancel",
            Exception::DepositedAfterCancel => "deposited_after_cancel",
            Exception::CompartmentTaken => "compartment_taken",
            Exception::CompartmentRemoved => "compartment_removed",
        }
    }
}

/// How the recipient is told.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    #[default]
    Sms,
    Email,
    Push,
    Whatsapp,
}

/// The person who collects (or, for a return, drops off) the parcel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default, utoipa::ToSchema)]
pub struct Recipient {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub phone: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
    /// Push token or app user id.
    #[serde(default)]
    pub push: Option<String>,
    #[serde(default)]
    pub channel: Channel,
    /// BCP 47 language tag of the notices, `en` by default.
    #[serde(default = "english")]
    pub language: String,
}

fn english() -> String {
    "en".into()
}

/// One step of an order's life: the timeline of the API and the console.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HistoryEntry {
    pub at: Millis,
    pub from: OrderState,
    pub to: OrderState,
    /// `api`, `local_access`, `command`, `timer`, `alarm`, `layout`.
    pub cause: String,
    /// The API client, the courier, `recipient`, `customer` or `gateway`.
    pub actor: String,
    #[serde(default)]
    #[schema(value_type = Option<crate::api::openapi::CabinetIdDoc>)]
    pub cabinet: Option<CabinetId>,
    #[serde(default)]
    #[schema(value_type = Option<u16>)]
    pub compartment: Option<CompartmentId>,
    #[serde(default)]
    pub exception: Option<Exception>,
    #[serde(default)]
    pub detail: String,
}

/// A command the parcel domain asked the dispatcher for, waiting for its outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PendingUnlock {
    #[schema(value_type = crate::api::openapi::CommandIdDoc)]
    pub command: CommandId,
    #[schema(value_type = u16)]
    pub compartment: CompartmentId,
    pub actor: String,
    pub reason: String,
    /// What `opened` means: `deposit`, `pickup` or `collect`.
    pub purpose: String,
    /// When it was prepared (a command that never came to be is forgotten after a while).
    #[serde(default)]
    pub issued_at: Millis,
}

/// A parcel order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Order {
    pub id: OrderId,
    pub kind: OrderKind,
    pub carrier: CarrierId,
    pub site: SiteId,
    /// The cabinet holding the order's compartment (or the one asked for, until then).
    pub cabinet: Option<CabinetId>,
    /// The cabinet the order was asked to go to, if any (allocation stays within it).
    #[serde(default)]
    pub requested_cabinet: Option<CabinetId>,
    pub compartment: Option<CompartmentId>,
    pub size: SizeName,
    /// The carrier's tracking number: the parcel barcode a courier scans.
    pub tracking: String,
    /// The integrator's own reference, if any.
    #[serde(default)]
    pub reference: Option<String>,
    pub recipient: Recipient,
    pub state: OrderState,
    #[serde(default)]
    pub exception: Option<Exception>,
    pub created_at: Millis,
    pub created_by: String,
    pub updated_at: Millis,
    /// Until when a held compartment waits for the courier (or the customer's drop-off).
    #[serde(default)]
    pub reserved_until: Option<Millis>,
    /// When the parcel must be collected by (set when it becomes ready).
    #[serde(default)]
    pub pickup_deadline: Option<Millis>,
    /// Hours the recipient gets to collect, from the carrier, site or default.
    pub pickup_window_h: u32,
    /// Minutes the recipient gets, when the order asked for a window shorter than hours
    /// allow (a shop's click and collect); wins over `pickup_window_h`.
    #[serde(default)]
    pub pickup_window_min: Option<u32>,
    /// Whether the reminder before expiry went out.
    #[serde(default)]
    pub reminded: bool,
    /// SHA-256 of the live PIN and QR token, salted with the cabinet (never the codes).
    #[serde(default, with = "opt_hex")]
    pub pin_hash: Option<[u8; 32]>,
    #[serde(default, with = "opt_hex")]
    pub qr_hash: Option<[u8; 32]>,
    #[serde(default)]
    pub idempotency_key: Option<String>,
    #[serde(default)]
    pub pending_unlock: Option<PendingUnlock>,
    pub history: Vec<HistoryEntry>,
}

impl Order {
    /// The pickup window, ms.
    pub fn window_ms(&self) -> Millis {
        match self.pickup_window_min {
            Some(m) => u64::from(m) * 60_000,
            None => u64::from(self.pickup_window_h) * 3_600_000,
        }
    }

    /// The audit-worthy summary of the last transition.
    pub fn last(&self) -> Option<&HistoryEntry> {
        self.history.last()
    }
}

/// Why a notice goes to a recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NoticeKind {
    /// The parcel is ready: here is your code.
    Ready,
    /// A resend (with a new code).
    Resend,
    /// The pickup window ends soon.
    Reminder,
    /// The window ended; the parcel goes back to the carrier.
    Expired,
    /// A customer's drop-off code for a return.
    ReturnCode,
}

/// A notification request in the durable outbox (delivered by the integrations' channels).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Notice {
    /// Position in the outbox, from 1.
    pub id: u64,
    #[schema(value_type = crate::api::openapi::OrderIdDoc)]
    pub order: OrderId,
    pub kind: NoticeKind,
    #[schema(value_type = crate::api::openapi::CarrierIdDoc)]
    pub carrier: CarrierId,
    #[schema(value_type = crate::api::openapi::SiteIdDoc)]
    pub site: SiteId,
    #[schema(value_type = Option<crate::api::openapi::CabinetIdDoc>)]
    pub cabinet: Option<CabinetId>,
    #[schema(value_type = Option<u16>)]
    pub compartment: Option<CompartmentId>,
    pub recipient: Recipient,
    /// The PIN to type at the keypad (ready, resend, return code).
    #[serde(default)]
    pub pin: Option<String>,
    /// The QR token to show at the scanner (ready, resend).
    #[serde(default)]
    pub qr: Option<String>,
    /// The site's name and address, for the text.
    pub site_name: String,
    pub address: String,
    /// When the code stops working (ms since the epoch) and the same in the site's time zone.
    #[serde(default)]
    pub expires_at: Option<Millis>,
    #[serde(default)]
    pub expires_local: Option<String>,
    pub created_at: Millis,
}

/// Hex (de)serialisation of an optional 32-byte hash.
mod opt_hex {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<[u8; 32]>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_some(&hex::encode(b)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<[u8; 32]>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        match s {
            None => Ok(None),
            Some(h) => {
                let v = hex::decode(&h).map_err(serde::de::Error::custom)?;
                let b: [u8; 32] = v
                    .try_into()
                    .map_err(|_| serde::de::Error::custom("a hash is 32 bytes"))?;
                Ok(Some(b))
            }
        }
    }
}
