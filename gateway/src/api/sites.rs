//! The site routes: sites, carriers and couriers, a site's occupancy, a cabinet's compartments,
//! partitions and service state, and the admin override open (mandatory reason, audited,
//! through the command queue).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use locker_schemas::{now_millis, CarrierId, CompartmentId, CourierId, SiteId};
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::openapi::{CabinetIdDoc, CarrierIdDoc, CourierIdDoc, ErrorBody, SiteIdDoc};
use super::orders::{bad_body, Reason};
use super::{parse_cabinet, ApiError, ApiState};
use crate::commands::{ActionSpec, CommandRecord, NewCommand};
use crate::parcels::views::{CourierView, SiteOccupancy};
use crate::parcels::{
    Caller, Carrier, CompartmentView, Courier, OutOfService, PartitionReport, Site,
};
use crate::store::parcels::AuditRecord;

/// The site routes.
pub(super) fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(sites))
        .routes(routes!(put_site))
        .routes(routes!(occupancy))
        .routes(routes!(carriers))
        .routes(routes!(put_carrier))
        .routes(routes!(couriers))
        .routes(routes!(put_courier, remove_courier))
        .routes(routes!(compartments))
        .routes(routes!(partition))
        .routes(routes!(service))
        .routes(routes!(override_open))
}

/// `GET /v1/sites`.
#[derive(Serialize, utoipa::ToSchema)]
struct SiteList {
    sites: Vec<Site>,
}

/// `GET /v1/carriers`.
#[derive(Serialize, utoipa::ToSchema)]
struct CarrierList {
    carriers: Vec<Carrier>,
}

/// `GET /v1/carriers/{id}/couriers`.
#[derive(Serialize, utoipa::ToSchema)]
struct CourierList {
    couriers: Vec<CourierView>,
}

/// `GET /v1/cabinets/{id}/compartments`.
#[derive(Serialize, utoipa::ToSchema)]
struct CompartmentList {
    compartments: Vec<CompartmentView>,
    /// The version of the credential set the gateway last built for the cabinet.
    creds_version: u64,
}

fn slug<T: std::str::FromStr<Err = locker_schemas::SlugError>>(s: &str) -> Result<T, ApiError> {
    s.parse().map_err(|e: locker_schemas::SlugError| {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_id", e.to_string())
    })
}

fn compartment(s: &str) -> Result<CompartmentId, ApiError> {
    s.parse().map_err(|e: locker_schemas::IdError| {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_compartment", e.to_string())
    })
}

/// `PUT /v1/sites/{id}`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct SiteBody {
    name: String,
    /// IANA time zone, for example `Europe/Berlin`.
    time_zone: String,
    #[serde(default)]
    address: String,
    /// The site's cabinets.
    #[serde(default)]
    #[schema(value_type = Vec<CabinetIdDoc>)]
    cabinets: Vec<locker_schemas::CabinetId>,
    /// Hours a recipient has to collect at this site (overrides the default).
    #[serde(default)]
    pickup_window_h: Option<u32>,
}

/// Creates or replaces a site.
///
/// Scopes: operator.
#[utoipa::path(put, path = "/v1/sites/{id}", tag = "sites",
    params(("id" = SiteIdDoc, Path, description = "The site.")),
    request_body = SiteBody,
    responses((status = 200, description = "The site as stored.", body = Site),
        (status = 400, description = "`bad_request`, `bad_id` or `invalid`.", body = ErrorBody),
        (status = 403, description = "`forbidden`: not an operator token.", body = ErrorBody),
        (status = 503, description = "`unavailable`.", body = ErrorBody)))]
async fn put_site(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Result<Json<SiteBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(b) = body.map_err(bad_body)?;
    let site = Site {
        id: slug::<SiteId>(&id)?,
        name: b.name,
        time_zone: b.time_zone,
        address: b.address,
        cabinets: b.cabinets,
        pickup_window_h: b.pickup_window_h,
    };
    Ok(Json(st.parcels.put_site(site, caller).await?).into_response())
}

/// The sites the token may see.
///
/// Scopes: operator (all), carrier (its sites), site manager (its sites).
#[utoipa::path(get, path = "/v1/sites", tag = "sites",
    responses((status = 200, description = "The sites.", body = SiteList),
        (status = 503, description = "`unavailable`.", body = ErrorBody)))]
async fn sites(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(SiteList {
        sites: st.parcels.sites(caller).await?,
    }))
}

/// A site's occupancy: free, held and out-of-service compartments per cabinet and size.
///
/// Scopes: operator, carrier (its sites), site manager (its sites).
#[utoipa::path(get, path = "/v1/sites/{id}/occupancy", tag = "sites",
    params(("id" = SiteIdDoc, Path, description = "The site.")),
    responses((status = 200, description = "The occupancy.", body = SiteOccupancy),
        (status = 400, description = "`bad_id`.", body = ErrorBody),
        (status = 403, description = "`forbidden`.", body = ErrorBody),
        (status = 404, description = "`not_found`.", body = ErrorBody)))]
async fn occupancy(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(st.parcels.occupancy(slug(&id)?, caller).await?))
}

/// `PUT /v1/carriers/{id}`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CarrierBody {
    name: String,
    /// The sites its couriers may deposit at; empty = every site.
    #[serde(default)]
    #[schema(value_type = Vec<SiteIdDoc>)]
    sites: Vec<SiteId>,
    /// Hours its recipients have to collect (overrides the site's and the default).
    #[serde(default)]
    pickup_window_h: Option<u32>,
}

/// Creates or replaces a carrier.
///
/// Scopes: operator.
#[utoipa::path(put, path = "/v1/carriers/{id}", tag = "sites",
    params(("id" = CarrierIdDoc, Path, description = "The carrier.")),
    request_body = CarrierBody,
    responses((status = 200, description = "The carrier as stored.", body = Carrier),
        (status = 400, description = "`bad_request`, `bad_id` or `invalid`.", body = ErrorBody),
        (status = 403, description = "`forbidden`: not an operator token.", body = ErrorBody),
        (status = 503, description = "`unavailable`.", body = ErrorBody)))]
async fn put_carrier(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Result<Json<CarrierBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(b) = body.map_err(bad_body)?;
    let c = Carrier {
        id: slug::<CarrierId>(&id)?,
        name: b.name,
        sites: b.sites,
        pickup_window_h: b.pickup_window_h,
    };
    Ok(Json(st.parcels.put_carrier(c, caller).await?).into_response())
}

/// The carriers the token may see.
///
/// Scopes: operator (all), carrier (itself), site manager (those of its sites).
#[utoipa::path(get, path = "/v1/carriers", tag = "sites",
    responses((status = 200, description = "The carriers.", body = CarrierList),
        (status = 503, description = "`unavailable`.", body = ErrorBody)))]
async fn carriers(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(CarrierList {
        carriers: st.parcels.carriers(caller).await?,
    }))
}

/// `PUT /v1/carriers/{id}/couriers/{courier}`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CourierBody {
    #[serde(default)]
    name: String,
    /// The courier's RFID badge (never returned; cabinets get it hashed).
    #[serde(default)]
    badge: Option<String>,
    /// The courier's keypad PIN (never returned; cabinets get it hashed).
    #[serde(default)]
    pin: Option<String>,
    #[serde(default = "yes")]
    active: bool,
}

fn yes() -> bool {
    true
}

/// Creates or replaces a courier of a carrier.
///
/// Scopes: operator, carrier (its own couriers).
#[utoipa::path(put, path = "/v1/carriers/{id}/couriers/{courier}", tag = "sites",
    params(("id" = CarrierIdDoc, Path, description = "The carrier."),
        ("courier" = CourierIdDoc, Path, description = "The courier.")),
    request_body = CourierBody,
    responses((status = 200, description = "The courier (without badge or PIN).", body = CourierView),
        (status = 400, description = "`bad_request`, `bad_id` or `invalid`.", body = ErrorBody),
        (status = 403, description = "`forbidden`.", body = ErrorBody),
        (status = 404, description = "`not_found`: unknown carrier.", body = ErrorBody)))]
async fn put_courier(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path((carrier, id)): Path<(String, String)>,
    body: Result<Json<CourierBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(b) = body.map_err(bad_body)?;
    let c = Courier {
        id: slug::<CourierId>(&id)?,
        carrier: slug(&carrier)?,
        name: b.name,
        badge: b.badge,
        pin: b.pin,
        active: b.active,
    };
    Ok(Json(st.parcels.put_courier(c, caller).await?).into_response())
}

/// Removes a courier (its credentials leave every cabinet at the next sync).
///
/// Scopes: operator, carrier (its own couriers).
#[utoipa::path(delete, path = "/v1/carriers/{id}/couriers/{courier}", tag = "sites",
    params(("id" = CarrierIdDoc, Path, description = "The carrier."),
        ("courier" = CourierIdDoc, Path, description = "The courier.")),
    responses((status = 204, description = "Removed."),
        (status = 400, description = "`bad_id`.", body = ErrorBody),
        (status = 403, description = "`forbidden`.", body = ErrorBody),
        (status = 404, description = "`not_found`.", body = ErrorBody)))]
async fn remove_courier(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path((_carrier, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    st.parcels.remove_courier(slug(&id)?, caller).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// A carrier's couriers.
///
/// Scopes: operator, carrier (its own).
#[utoipa::path(get, path = "/v1/carriers/{id}/couriers", tag = "sites",
    params(("id" = CarrierIdDoc, Path, description = "The carrier.")),
    responses((status = 200, description = "The couriers (without badges or PINs).", body = CourierList),
        (status = 400, description = "`bad_id`.", body = ErrorBody),
        (status = 403, description = "`forbidden`.", body = ErrorBody)))]
async fn couriers(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(carrier): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let v = st.parcels.couriers(Some(slug(&carrier)?), caller).await?;
    Ok(Json(CourierList { couriers: v }))
}

/// A cabinet's compartments as the parcel domain sees them: status, partition, order.
///
/// Scopes: operator, carrier (the cabinets of its sites; orders of others hidden), site
/// manager (its sites).
#[utoipa::path(get, path = "/v1/cabinets/{id}/compartments", tag = "compartments",
    params(("id" = CabinetIdDoc, Path, description = "The cabinet.")),
    responses((status = 200, description = "The compartments.", body = CompartmentList),
        (status = 400, description = "`bad_cabinet_id`.", body = ErrorBody),
        (status = 403, description = "`forbidden`.", body = ErrorBody),
        (status = 404, description = "`not_found`.", body = ErrorBody)))]
async fn compartments(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let cab = parse_cabinet(&id)?;
    let (comps, v) = st.parcels.compartments(cab, caller).await?;
    Ok(Json(CompartmentList {
        compartments: comps,
        creds_version: v,
    }))
}

/// `PUT /v1/cabinets/{id}/partitions`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct PartitionBody {
    /// The compartments to (re)assign.
    #[schema(value_type = Vec<u16>)]
    compartments: Vec<CompartmentId>,
    /// The carrier, or null to give them back to the shared pool.
    #[schema(value_type = Option<CarrierIdDoc>)]
    carrier: Option<CarrierId>,
}

/// Reserves compartments of a cabinet for a carrier, or gives them back to the shared pool.
///
/// Compartments holding a parcel or a reservation change when they empty (`pending`).
/// Scopes: operator, site manager (its sites).
#[utoipa::path(put, path = "/v1/cabinets/{id}/partitions", tag = "compartments",
    params(("id" = CabinetIdDoc, Path, description = "The cabinet.")),
    request_body = PartitionBody,
    responses((status = 200, description = "What changed now, what waits, what is unknown.", body = PartitionReport),
        (status = 400, description = "`bad_request`, `bad_cabinet_id` or `invalid`.", body = ErrorBody),
        (status = 403, description = "`forbidden`.", body = ErrorBody),
        (status = 404, description = "`not_found`.", body = ErrorBody)))]
async fn partition(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Result<Json<PartitionBody>, axum::extract::rejection::JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Json(b) = body.map_err(bad_body)?;
    let cab = parse_cabinet(&id)?;
    Ok(Json(
        st.parcels
            .partition(cab, b.compartments, b.carrier, caller)
            .await?,
    ))
}

/// `POST /v1/cabinets/{id}/compartments/{c}/service`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ServiceBody {
    /// False takes the compartment out of service, true puts it back.
    in_service: bool,
    /// Why (goes to the audit trail).
    reason: String,
}

/// Takes a compartment out of service or puts it back.
///
/// Scopes: operator, site manager (its sites).
#[utoipa::path(post, path = "/v1/cabinets/{id}/compartments/{c}/service", tag = "compartments",
    params(("id" = CabinetIdDoc, Path, description = "The cabinet."),
        ("c" = u16, Path, description = "The compartment number.")),
    request_body = ServiceBody,
    responses((status = 200, description = "The compartment now.", body = CompartmentView),
        (status = 400, description = "`bad_request`, `bad_cabinet_id`, `bad_compartment` or `invalid`.", body = ErrorBody),
        (status = 403, description = "`forbidden`.", body = ErrorBody),
        (status = 404, description = "`not_found`.", body = ErrorBody),
        (status = 409, description = "`invalid_transition`.", body = ErrorBody)))]
async fn service(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path((id, c)): Path<(String, String)>,
    body: Result<Json<ServiceBody>, axum::extract::rejection::JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Json(b) = body.map_err(bad_body)?;
    let out = (!b.in_service).then_some(OutOfService::Operator);
    let v = st
        .parcels
        .service(parse_cabinet(&id)?, compartment(&c)?, out, b.reason, caller)
        .await?;
    Ok(Json(v))
}

/// Admin override: opens a compartment (mandatory reason, audited, through the command queue).
///
/// Scopes: operator, site manager (its sites). 200 with the outcome when it came within
/// `wait_ms`, else 202.
#[utoipa::path(post, path = "/v1/cabinets/{id}/compartments/{c}/open", tag = "compartments",
    params(("id" = CabinetIdDoc, Path, description = "The cabinet."),
        ("c" = u16, Path, description = "The compartment number.")),
    request_body = Reason,
    responses((status = 200, description = "The command with its outcome.", body = CommandRecord),
        (status = 202, description = "The command, without an outcome yet.", body = CommandRecord),
        (status = 400, description = "`bad_request`, `reason_required`, `bad_cabinet_id`, `bad_compartment`, `bad_ttl`.", body = ErrorBody),
        (status = 403, description = "`forbidden`.", body = ErrorBody),
        (status = 404, description = "`not_found`.", body = ErrorBody),
        (status = 500, description = "`storage`.", body = ErrorBody),
        (status = 503, description = "`unavailable` or `shutting_down`.", body = ErrorBody)))]
async fn override_open(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path((id, c)): Path<(String, String)>,
    body: Result<Json<Reason>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(b) = body.map_err(bad_body)?;
    b.check()?;
    let cab = parse_cabinet(&id)?;
    let comp = compartment(&c)?;
    st.parcels
        .check_override(cab.clone(), comp, caller.clone())
        .await?;
    // the override is on the audit trail (durably) before the door can open: a crash between
    // the two leaves a record of an override whose command never came, never the reverse
    let id = locker_schemas::CommandId::generate();
    let record = |detail: String| AuditRecord {
        pos: 0,
        at: now_millis(),
        what: "override_open".into(),
        order: None,
        carrier: None,
        site: None,
        cabinet: Some(cab.clone()),
        compartment: Some(comp),
        from: None,
        to: None,
        cause: "api".into(),
        actor: caller.client.clone(),
        exception: None,
        detail,
        tracking: None,
        reference: None,
    };
    st.parcels
        .audit(record(format!("command {id}: {}", b.reason)))
        .await?;
    let created = st
        .commands
        .create(NewCommand {
            id: Some(id),
            cabinet: cab.clone(),
            action: ActionSpec::Unlock { compartment: comp },
            ttl_ms: b.ttl_ms,
            created_by: caller.client.clone(),
        })
        .await;
    let rec = match created {
        Ok(rec) => rec,
        Err(e) => {
            let _ = st
                .parcels
                .audit(record(format!("command {id} not created: {e}")))
                .await;
            return Err(e.into());
        }
    };
    let (status, rec) = super::orders::waited(&st, rec, b.wait_ms).await?;
    Ok((status, Json(rec)).into_response())
}
