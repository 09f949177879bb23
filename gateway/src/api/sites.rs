//! The site routes: sites, carriers and couriers, a site's occupancy, a cabinet's compartments,
//! partitions and service state, and the admin override open (mandatory reason, audited,
//! through the command queue).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Extension, Json, Router};
use locker_schemas::{now_millis, CarrierId, CompartmentId, CourierId, SiteId};
use serde::Deserialize;
use serde_json::json;

use super::orders::{bad_body, Reason};
use super::{parse_cabinet, ApiError, ApiState};
use crate::commands::{ActionSpec, NewCommand};
use crate::parcels::{Caller, Carrier, Courier, OutOfService, Site};
use crate::store::parcels::AuditRecord;

/// The site routes.
pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v1/sites", get(sites))
        .route("/v1/sites/{id}", put(put_site))
        .route("/v1/sites/{id}/occupancy", get(occupancy))
        .route("/v1/carriers", get(carriers))
        .route("/v1/carriers/{id}", put(put_carrier))
        .route("/v1/carriers/{id}/couriers", get(couriers))
        .route(
            "/v1/carriers/{id}/couriers/{courier}",
            put(put_courier).delete(remove_courier),
        )
        .route("/v1/cabinets/{id}/compartments", get(compartments))
        .route("/v1/cabinets/{id}/partitions", put(partition))
        .route("/v1/cabinets/{id}/compartments/{c}/service", post(service))
        .route(
            "/v1/cabinets/{id}/compartments/{c}/open",
            post(override_open),
        )
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SiteBody {
    name: String,
    time_zone: String,
    #[serde(default)]
    address: String,
    #[serde(default)]
    cabinets: Vec<locker_schemas::CabinetId>,
    #[serde(default)]
    pickup_window_h: Option<u32>,
}

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

async fn sites(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(json!({"sites": st.parcels.sites(caller).await?})))
}

async fn occupancy(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(st.parcels.occupancy(slug(&id)?, caller).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CarrierBody {
    name: String,
    #[serde(default)]
    sites: Vec<SiteId>,
    #[serde(default)]
    pickup_window_h: Option<u32>,
}

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

async fn carriers(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(
        json!({"carriers": st.parcels.carriers(caller).await?}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CourierBody {
    #[serde(default)]
    name: String,
    #[serde(default)]
    badge: Option<String>,
    #[serde(default)]
    pin: Option<String>,
    #[serde(default = "yes")]
    active: bool,
}

fn yes() -> bool {
    true
}

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

async fn remove_courier(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path((_carrier, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    st.parcels.remove_courier(slug(&id)?, caller).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn couriers(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(carrier): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let v = st.parcels.couriers(Some(slug(&carrier)?), caller).await?;
    Ok(Json(json!({"couriers": v})))
}

async fn compartments(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let cab = parse_cabinet(&id)?;
    let (comps, v) = st.parcels.compartments(cab, caller).await?;
    Ok(Json(json!({"compartments": comps, "creds_version": v})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PartitionBody {
    compartments: Vec<CompartmentId>,
    /// The carrier, or null to give them back to the shared pool.
    carrier: Option<CarrierId>,
}

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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceBody {
    in_service: bool,
    reason: String,
}

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

/// `POST /v1/cabinets/{id}/compartments/{c}/open {"reason"}`: an admin override (operator, or
/// the site's manager). Audited with its reason, sent through the command queue.
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
