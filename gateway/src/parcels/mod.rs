//! The parcel domain: sites, carriers and couriers, orders and their lifecycle, compartment
//! allocation and partitions, recipient codes, each cabinet's credential set, the notification
//! outbox and the parcel audit trail.
//!
//! One actor ([`actor`]) owns all of it and is reached through [`ParcelsHandle`]: the API's
//! calls, ingest's committed events (access reports, command results, alarms, hellos) and
//! the edge's presence changes all arrive as messages, are applied in order, written in one
//! group commit per batch ([`crate::store::parcels`]), and only then answered and published
//! (`lk/v1/{cabinet}/gw/parcel` for integrators, `down/creds` to cabinets).

pub mod actor;
pub mod alloc;
mod apply;
mod cabinets;
pub mod codes;
pub mod fleet;
pub mod machine;
pub mod model;
mod ops;
mod orders;
mod reports;
#[cfg(test)]
mod tests;
mod timers;
pub mod tz;
pub mod views;

use std::collections::BTreeSet;

use locker_schemas::{CabinetId, CarrierId, CompartmentId, CourierId, Millis, OrderId, SiteId};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

pub use actor::Parcels;
pub use alloc::{OutOfService, PartitionReport};
pub use model::{Carrier, Courier, Notice, Order, OrderKind, OrderState, Recipient, Site};
pub use views::{CompartmentView, NewOrder, OrderFilter, OrderView};

use crate::store::parcels::AuditRecord;
use crate::store::StoreError;

/// Parcel settings (the `[parcels]` table of gateway.toml).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ParcelsConfig {
    /// Hours a recipient has to collect, unless the carrier or the site says otherwise.
    pub pickup_window_h: u32,
    /// Hours a compartment is held for a courier after a reservation (or "out for delivery").
    pub reservation_h: u32,
    /// Hours before the end of the pickup window the reminder goes out (0 = none).
    pub reminder_before_h: u32,
    /// Digits of a recipient's PIN (6 to 8).
    pub pin_digits: u8,
    /// How often reservations, pickup windows and reminders are checked, ms.
    pub tick_ms: u64,
    /// Orders in one batch creation at most.
    pub max_batch: usize,
    /// Hours a finished order (picked up, returned, cancelled) stays in memory, listed by
    /// `GET /v1/orders`; then it is archived: still readable by id and in the audit trail.
    pub keep_finished_h: u32,
}

impl Default for ParcelsConfig {
    fn default() -> Self {
        Self {
            pickup_window_h: 72,
            reservation_h: 24,
            reminder_before_h: 24,
            pin_digits: 6,
            tick_ms: 1_000,
            max_batch: 500,
            keep_finished_h: 24,
        }
    }
}

impl ParcelsConfig {
    /// Values the domain cannot run with, naming the key.
    pub fn validate(&self) -> Result<(), String> {
        if !(6..=8).contains(&self.pin_digits) {
            return Err(format!(
                "parcels.pin_digits = {}: must be 6, 7 or 8",
                self.pin_digits
            ));
        }
        for (k, v) in [
            ("parcels.pickup_window_h", u64::from(self.pickup_window_h)),
            ("parcels.reservation_h", u64::from(self.reservation_h)),
            ("parcels.tick_ms", self.tick_ms),
            ("parcels.max_batch", self.max_batch as u64),
        ] {
            if v == 0 {
                return Err(format!("{k} must be greater than zero"));
            }
        }
        Ok(())
    }
}

/// What an API token may see and do in the parcel domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "scope", rename_all = "snake_case")]
pub enum Scope {
    /// Everything.
    Operator,
    /// Its own orders, couriers and partitions.
    Carrier { carrier: CarrierId },
    /// Its sites (orders, occupancy, compartments, overrides there).
    SiteManager { sites: BTreeSet<SiteId> },
}

impl Scope {
    /// Whether this scope covers an order of `carrier` at `site`.
    pub fn sees(&self, carrier: &CarrierId, site: &SiteId) -> bool {
        match self {
            Scope::Operator => true,
            Scope::Carrier { carrier: c } => c == carrier,
            Scope::SiteManager { sites } => sites.contains(site),
        }
    }

    /// Whether this scope covers a whole site.
    pub fn sees_site(&self, site: &SiteId) -> bool {
        match self {
            Scope::Operator => true,
            Scope::Carrier { .. } => false,
            Scope::SiteManager { sites } => sites.contains(site),
        }
    }

    /// The scope's name for the API.
    pub fn name(&self) -> &'static str {
        match self {
            Scope::Operator => "operator",
            Scope::Carrier { .. } => "carrier",
            Scope::SiteManager { .. } => "site_manager",
        }
    }
}

/// Who is calling: the token's client name and its scope.
#[derive(Debug, Clone)]
pub struct Caller {
    pub client: String,
    pub scope: Scope,
}

/// Why a parcel operation failed; each maps to one stable API error code.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ParcelError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Transition(#[from] machine::Refusal),
    #[error("{0}")]
    NoCompartment(String),
    #[error("the parcel service has stopped")]
    Closed,
}

impl ParcelError {
    /// The stable API error code.
    pub fn code(&self) -> &'static str {
        match self {
            ParcelError::NotFound(_) => "not_found",
            ParcelError::Forbidden(_) => "forbidden",
            ParcelError::Invalid(_) => "invalid",
            ParcelError::Transition(_) => "invalid_transition",
            ParcelError::NoCompartment(_) => "no_compartment",
            ParcelError::Closed => "unavailable",
        }
    }
}

impl From<StoreError> for ParcelError {
    fn from(e: StoreError) -> Self {
        ParcelError::Invalid(format!("storage: {e}"))
    }
}

type Reply<T> = oneshot::Sender<Result<T, ParcelError>>;

/// What can be done to an existing order through the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum OrderAction {
    Cancel,
    /// Adds `hours` to the pickup window (an expired order becomes ready again, new code).
    Extend {
        hours: u32,
    },
    /// A new code is issued and sent (the old one stops working).
    ResendCode,
    RequestReturn,
    /// The carrier has the parcel on a van: hold a compartment now.
    OutForDelivery,
}

/// Where a remote unlock of an order goes, why, and the id its command must have.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct UnlockTarget {
    #[schema(value_type = crate::api::openapi::CabinetIdDoc)]
    pub cabinet: CabinetId,
    #[schema(value_type = u16)]
    pub compartment: CompartmentId,
    /// What an `opened` outcome will mean: `deposit`, `pickup` or `collect`.
    pub purpose: &'static str,
    /// The command id the order now waits for (recorded before the command is created, so
    /// a crash in between cannot leave a door opened for an order that does not know).
    #[schema(value_type = crate::api::openapi::CommandIdDoc)]
    pub command: locker_schemas::CommandId,
}

pub(crate) enum Msg {
    PutSite(Site, Caller, Reply<Site>),
    Sites(Caller, Reply<Vec<Site>>),
    PutCarrier(Carrier, Caller, Reply<Carrier>),
    Carriers(Caller, Reply<Vec<Carrier>>),
    PutCourier(Courier, Caller, Reply<views::CourierView>),
    RemoveCourier(CourierId, Caller, Reply<()>),
    Couriers(Option<CarrierId>, Caller, Reply<Vec<views::CourierView>>),
    Create(
        Vec<NewOrder>,
        Caller,
        oneshot::Sender<Vec<Result<(OrderView, bool), ParcelError>>>,
    ),
    Get(OrderId, Caller, Reply<OrderView>),
    List(OrderFilter, Caller, Reply<Vec<OrderView>>),
    Act(OrderId, OrderAction, Caller, Reply<OrderView>),
    PrepareUnlock(OrderId, String, Caller, Reply<UnlockTarget>),
    UnlockFailed(OrderId, locker_schemas::CommandId),
    Partition(
        CabinetId,
        Vec<CompartmentId>,
        Option<CarrierId>,
        Caller,
        Reply<PartitionReport>,
    ),
    Service(
        CabinetId,
        CompartmentId,
        Option<OutOfService>,
        String,
        Caller,
        Reply<CompartmentView>,
    ),
    Compartments(CabinetId, Caller, Reply<(Vec<CompartmentView>, u64)>),
    Occupancy(SiteId, Caller, Reply<views::SiteOccupancy>),
    CheckOverride(CabinetId, CompartmentId, Caller, Reply<()>),
    Audit(AuditRecord, Reply<()>),
    Presence(CabinetId, bool),
    FleetSites(fleet::SitesQuery, Caller, Reply<fleet::SitesPage>),
    FleetTotals(Caller, Reply<fleet::Totals>),
    FleetSite(SiteId, Caller, Reply<fleet::SiteDetail>),
    CabinetSite(CabinetId, Caller, Reply<Option<SiteId>>),
    Search(String, Caller, Reply<fleet::Hits>),
}

/// Cloneable handle to the parcel actor.
#[derive(Clone)]
pub struct ParcelsHandle {
    tx: mpsc::Sender<Msg>,
    sites_rev: tokio::sync::watch::Receiver<u64>,
}

impl ParcelsHandle {
    /// A handle to no parcel actor (a cluster node that does not run the domain): every call
    /// answers that the actor is gone.
    pub fn detached() -> Self {
        let (tx, _) = mpsc::channel(1);
        let (_, sites_rev) = tokio::sync::watch::channel(0);
        Self { tx, sites_rev }
    }

    async fn call<T>(&self, f: impl FnOnce(Reply<T>) -> Msg) -> Result<T, ParcelError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(f(tx)).await.map_err(|_| ParcelError::Closed)?;
        rx.await.map_err(|_| ParcelError::Closed)?
    }

    /// Creates or replaces a site (operator).
    pub async fn put_site(&self, s: Site, c: Caller) -> Result<Site, ParcelError> {
        self.call(|tx| Msg::PutSite(s, c, tx)).await
    }

    /// Changes each time a site is created or changed.
    pub fn sites_changed(&self) -> tokio::sync::watch::Receiver<u64> {
        self.sites_rev.clone()
    }

    /// The sites the caller may see.
    pub async fn sites(&self, c: Caller) -> Result<Vec<Site>, ParcelError> {
        self.call(|tx| Msg::Sites(c, tx)).await
    }

    /// Creates or replaces a carrier (operator).
    pub async fn put_carrier(&self, x: Carrier, c: Caller) -> Result<Carrier, ParcelError> {
        self.call(|tx| Msg::PutCarrier(x, c, tx)).await
    }

    /// The carriers the caller may see.
    pub async fn carriers(&self, c: Caller) -> Result<Vec<Carrier>, ParcelError> {
        self.call(|tx| Msg::Carriers(c, tx)).await
    }

    /// Creates or replaces a courier (operator, or its carrier).
    pub async fn put_courier(
        &self,
        x: Courier,
        c: Caller,
    ) -> Result<views::CourierView, ParcelError> {
        self.call(|tx| Msg::PutCourier(x, c, tx)).await
    }

    /// Removes a courier (its badge stops working at the next credential sync).
    pub async fn remove_courier(&self, id: CourierId, c: Caller) -> Result<(), ParcelError> {
        self.call(|tx| Msg::RemoveCourier(id, c, tx)).await
    }

    /// The couriers the caller may see (of one carrier if given).
    pub async fn couriers(
        &self,
        carrier: Option<CarrierId>,
        c: Caller,
    ) -> Result<Vec<views::CourierView>, ParcelError> {
        self.call(|tx| Msg::Couriers(carrier, c, tx)).await
    }

    /// Creates orders (one result per order, in order: the view and whether it is new, false
    /// for a repeated idempotency key).
    pub async fn create(
        &self,
        orders: Vec<NewOrder>,
        c: Caller,
    ) -> Result<Vec<Result<(OrderView, bool), ParcelError>>, ParcelError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Msg::Create(orders, c, tx))
            .await
            .map_err(|_| ParcelError::Closed)?;
        rx.await.map_err(|_| ParcelError::Closed)
    }

    /// One order (not found when outside the caller's scope).
    pub async fn get(&self, id: OrderId, c: Caller) -> Result<OrderView, ParcelError> {
        self.call(|tx| Msg::Get(id, c, tx)).await
    }

    /// Orders matching a filter, within the caller's scope.
    pub async fn list(&self, f: OrderFilter, c: Caller) -> Result<Vec<OrderView>, ParcelError> {
        self.call(|tx| Msg::List(f, c, tx)).await
    }

    /// Cancel, extend, resend the code, request a return, out for delivery.
    pub async fn act(
        &self,
        id: OrderId,
        a: OrderAction,
        c: Caller,
    ) -> Result<OrderView, ParcelError> {
        self.call(|tx| Msg::Act(id, a, c, tx)).await
    }

    /// Prepares a remote unlock of an order (checks scope and state): the order records the
    /// command id it waits for, durably, before the caller creates that command.
    pub async fn prepare_unlock(
        &self,
        id: OrderId,
        reason: String,
        c: Caller,
    ) -> Result<UnlockTarget, ParcelError> {
        self.call(|tx| Msg::PrepareUnlock(id, reason, c, tx)).await
    }

    /// The prepared command could not be created: the order stops waiting for it.
    pub async fn unlock_failed(&self, id: OrderId, command: locker_schemas::CommandId) {
        let _ = self.tx.send(Msg::UnlockFailed(id, command)).await;
    }

    /// Reserves compartments of a cabinet for a carrier, or returns them to the pool.
    pub async fn partition(
        &self,
        cabinet: CabinetId,
        comps: Vec<CompartmentId>,
        carrier: Option<CarrierId>,
        c: Caller,
    ) -> Result<PartitionReport, ParcelError> {
        self.call(|tx| Msg::Partition(cabinet, comps, carrier, c, tx))
            .await
    }

    /// Takes a compartment out of service or puts it back.
    pub async fn service(
        &self,
        cabinet: CabinetId,
        comp: CompartmentId,
        out: Option<OutOfService>,
        reason: String,
        c: Caller,
    ) -> Result<CompartmentView, ParcelError> {
        self.call(|tx| Msg::Service(cabinet, comp, out, reason, c, tx))
            .await
    }

    /// A cabinet's compartments as the domain sees them, and the version of the credential
    /// set the gateway last built for it.
    pub async fn compartments(
        &self,
        cabinet: CabinetId,
        c: Caller,
    ) -> Result<(Vec<CompartmentView>, u64), ParcelError> {
        self.call(|tx| Msg::Compartments(cabinet, c, tx)).await
    }

    /// A site's occupancy by cabinet and size.
    pub async fn occupancy(
        &self,
        site: SiteId,
        c: Caller,
    ) -> Result<views::SiteOccupancy, ParcelError> {
        self.call(|tx| Msg::Occupancy(site, c, tx)).await
    }

    /// Checks that the caller may force a compartment of a cabinet open.
    pub async fn check_override(
        &self,
        cabinet: CabinetId,
        comp: CompartmentId,
        c: Caller,
    ) -> Result<(), ParcelError> {
        self.call(|tx| Msg::CheckOverride(cabinet, comp, c, tx))
            .await
    }

    /// Appends a record to the parcel audit trail (an override, for example); returns once it
    /// is durable.
    pub async fn audit(&self, r: AuditRecord) -> Result<(), ParcelError> {
        self.call(|tx| Msg::Audit(r, tx)).await
    }

    /// A page of the sites in the caller's scope with their figures (the console's fleet page).
    pub async fn fleet_sites(
        &self,
        q: fleet::SitesQuery,
        c: Caller,
    ) -> Result<fleet::SitesPage, ParcelError> {
        self.call(|tx| Msg::FleetSites(q, c, tx)).await
    }

    /// The figures of everything in the caller's scope.
    pub async fn fleet_totals(&self, c: Caller) -> Result<fleet::Totals, ParcelError> {
        self.call(|tx| Msg::FleetTotals(c, tx)).await
    }

    /// One site with its cabinets' figures (not found outside the caller's scope).
    pub async fn fleet_site(
        &self,
        site: SiteId,
        c: Caller,
    ) -> Result<fleet::SiteDetail, ParcelError> {
        self.call(|tx| Msg::FleetSite(site, c, tx)).await
    }

    /// The site of a cabinet, if it is at one the caller may see.
    pub async fn cabinet_site(
        &self,
        cabinet: CabinetId,
        c: Caller,
    ) -> Result<Option<SiteId>, ParcelError> {
        self.call(|tx| Msg::CabinetSite(cabinet, c, tx)).await
    }

    /// Sites, cabinets and orders matching `q` in the caller's scope.
    pub async fn search(&self, q: String, c: Caller) -> Result<fleet::Hits, ParcelError> {
        self.call(|tx| Msg::Search(q, c, tx)).await
    }

    /// A cabinet connected or went away (from the edge).
    pub async fn presence(&self, cabinet: CabinetId, online: bool) {
        let _ = self.tx.send(Msg::Presence(cabinet, online)).await;
    }
}

/// Milliseconds in an hour.
pub(crate) const HOUR_MS: Millis = 3_600_000;
