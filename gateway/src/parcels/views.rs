//! The typed requests and responses of the parcel API: what an integrator sends to create an
//! order, what it gets back for an order, a courier, a compartment or a site's occupancy.
//! Secrets (codes, badges) never appear in a view.

use locker_schemas::{CabinetId, CarrierId, CompartmentId, CourierId, Millis, OrderId, SiteId};
use serde::{Deserialize, Serialize};

use super::alloc::{Occupancy, OutOfService};
use super::model::{
    Courier, Exception, HistoryEntry, Order, OrderKind, OrderState, PendingUnlock, Recipient,
};
use crate::json::SizeName;

/// A new order as the API receives it.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewOrder {
    #[serde(default = "delivery")]
    pub kind: OrderKind,
    #[schema(value_type = crate::api::openapi::SiteIdDoc)]
    pub site: SiteId,
    /// A cabinet of the site, if the order must go there.
    #[serde(default)]
    #[schema(value_type = Option<crate::api::openapi::CabinetIdDoc>)]
    pub cabinet: Option<CabinetId>,
    pub size: SizeName,
    /// The carrier's tracking number (the parcel barcode the courier scans). For a return,
    /// the label the customer sticks on.
    pub tracking: String,
    /// The carrier; implied for a carrier's token, required for an operator's.
    #[serde(default)]
    #[schema(value_type = Option<crate::api::openapi::CarrierIdDoc>)]
    pub carrier: Option<CarrierId>,
    #[serde(default)]
    pub reference: Option<String>,
    #[serde(default)]
    pub recipient: Recipient,
    /// Hold a compartment now (default), or wait for "out for delivery".
    #[serde(default = "yes")]
    pub reserve: bool,
    /// Hours the recipient gets (overrides carrier, site and default).
    #[serde(default)]
    pub pickup_window_h: Option<u32>,
    /// Minutes the recipient gets (a short click-and-collect window; wins over hours).
    #[serde(default)]
    pub pickup_window_min: Option<u32>,
    /// Repeating a request with the same key returns the order created the first time.
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

fn delivery() -> OrderKind {
    OrderKind::Delivery
}

fn yes() -> bool {
    true
}

/// An order as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct OrderView {
    #[schema(value_type = crate::api::openapi::OrderIdDoc)]
    pub id: OrderId,
    pub kind: OrderKind,
    pub state: OrderState,
    pub exception: Option<Exception>,
    #[schema(value_type = crate::api::openapi::CarrierIdDoc)]
    pub carrier: CarrierId,
    #[schema(value_type = crate::api::openapi::SiteIdDoc)]
    pub site: SiteId,
    #[schema(value_type = Option<crate::api::openapi::CabinetIdDoc>)]
    pub cabinet: Option<CabinetId>,
    #[schema(value_type = Option<u16>)]
    pub compartment: Option<CompartmentId>,
    pub size: SizeName,
    pub tracking: String,
    pub reference: Option<String>,
    pub recipient: Recipient,
    pub created_at: Millis,
    pub created_by: String,
    pub updated_at: Millis,
    pub reserved_until: Option<Millis>,
    pub pickup_deadline: Option<Millis>,
    pub pickup_window_h: u32,
    pub pickup_window_min: Option<u32>,
    pub pending_unlock: Option<PendingUnlock>,
    pub history: Vec<HistoryEntry>,
}

impl From<&Order> for OrderView {
    fn from(o: &Order) -> Self {
        Self {
            id: o.id,
            kind: o.kind,
            state: o.state,
            exception: o.exception,
            carrier: o.carrier.clone(),
            site: o.site.clone(),
            cabinet: o.cabinet.clone(),
            compartment: o.compartment,
            size: o.size,
            tracking: o.tracking.clone(),
            reference: o.reference.clone(),
            recipient: o.recipient.clone(),
            created_at: o.created_at,
            created_by: o.created_by.clone(),
            updated_at: o.updated_at,
            reserved_until: o.reserved_until,
            pickup_deadline: o.pickup_deadline,
            pickup_window_h: o.pickup_window_h,
            pickup_window_min: o.pickup_window_min,
            pending_unlock: o.pending_unlock.clone(),
            history: o.history.clone(),
        }
    }
}

/// Which orders to list (`GET /v1/orders?site=&status=&carrier=&cabinet=&tracking=`).
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct OrderFilter {
    #[serde(default)]
    #[param(value_type = Option<crate::api::openapi::SiteIdDoc>)]
    pub site: Option<SiteId>,
    #[serde(default)]
    pub status: Option<OrderState>,
    #[serde(default)]
    #[param(value_type = Option<crate::api::openapi::CarrierIdDoc>)]
    pub carrier: Option<CarrierId>,
    #[serde(default)]
    #[param(value_type = Option<crate::api::openapi::CabinetIdDoc>)]
    pub cabinet: Option<CabinetId>,
    #[serde(default)]
    pub tracking: Option<String>,
    /// Orders with an exception only.
    #[serde(default)]
    pub exception: Option<bool>,
    /// Orders after this id (cursor), oldest first.
    #[serde(default)]
    #[param(value_type = Option<crate::api::openapi::OrderIdDoc>)]
    pub after: Option<OrderId>,
    #[serde(default)]
    pub limit: Option<usize>,
}

/// A courier as the API shows it (never the badge or PIN themselves).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CourierView {
    #[schema(value_type = crate::api::openapi::CourierIdDoc)]
    pub id: CourierId,
    #[schema(value_type = crate::api::openapi::CarrierIdDoc)]
    pub carrier: CarrierId,
    pub name: String,
    pub has_badge: bool,
    pub has_pin: bool,
    pub active: bool,
}

impl From<&Courier> for CourierView {
    fn from(c: &Courier) -> Self {
        Self {
            id: c.id.clone(),
            carrier: c.carrier.clone(),
            name: c.name.clone(),
            has_badge: c.badge.is_some(),
            has_pin: c.pin.is_some(),
            active: c.active,
        }
    }
}

/// One compartment of a cabinet as the parcel domain sees it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CompartmentView {
    #[schema(value_type = u16)]
    pub id: CompartmentId,
    pub size: SizeName,
    /// `free`, `reserved`, `occupied` or `out_of_service`.
    pub status: &'static str,
    pub out_of_service: Option<OutOfService>,
    /// The carrier it is reserved for; null = shared pool.
    #[schema(value_type = Option<crate::api::openapi::CarrierIdDoc>)]
    pub partition: Option<CarrierId>,
    /// A partition change waiting for the compartment to empty.
    #[schema(value_type = Option<Option<crate::api::openapi::CarrierIdDoc>>)]
    pub pending_partition: Option<Option<CarrierId>>,
    /// The order holding it, when the caller may see that order.
    #[schema(value_type = Option<crate::api::openapi::OrderIdDoc>)]
    pub order: Option<OrderId>,
}

/// A site's occupancy: per cabinet, by size and in total.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SiteOccupancy {
    #[schema(value_type = crate::api::openapi::SiteIdDoc)]
    pub site: SiteId,
    pub cabinets: Vec<CabinetOccupancy>,
}

/// One cabinet's occupancy.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CabinetOccupancy {
    #[schema(value_type = crate::api::openapi::CabinetIdDoc)]
    pub cabinet: CabinetId,
    pub online: bool,
    pub by_size: Vec<Occupancy>,
}
