//! The order routes: create one (with an idempotency key) or a batch, list and read within the
//! token's scope, cancel, extend, resend the code, request a return, mark out for delivery,
//! remote unlock through the command queue; and the notification outbox and the parcel audit
//! trail, filtered by scope.

use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use locker_schemas::OrderId;
use serde::Deserialize;
use serde_json::json;

use super::{ApiError, ApiState, PageQuery};
use crate::commands::{ActionSpec, NewCommand};
use crate::parcels::{Caller, NewOrder, OrderAction, OrderFilter, ParcelError, Scope};
use crate::store::parcels::ParcelStore;
use crate::store::{self};

impl From<ParcelError> for ApiError {
    fn from(e: ParcelError) -> Self {
        let status = match &e {
            ParcelError::NotFound(_) => StatusCode::NOT_FOUND,
            ParcelError::Forbidden(_) => StatusCode::FORBIDDEN,
            ParcelError::Invalid(_) => StatusCode::BAD_REQUEST,
            ParcelError::Transition(_) | ParcelError::NoCompartment(_) => StatusCode::CONFLICT,
            ParcelError::Closed => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError::new(status, e.code(), e.to_string())
    }
}

/// The order routes.
pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v1/orders", post(create).get(list))
        .route("/v1/orders/batch", post(batch))
        .route("/v1/orders/{id}", get(get_one))
        .route("/v1/orders/{id}/cancel", post(cancel))
        .route("/v1/orders/{id}/extend", post(extend))
        .route("/v1/orders/{id}/resend-code", post(resend))
        .route("/v1/orders/{id}/return", post(request_return))
        .route("/v1/orders/{id}/out-for-delivery", post(out_for_delivery))
        .route("/v1/orders/{id}/unlock", post(unlock))
        .route("/v1/notifications", get(notifications))
        .route("/v1/parcel-audit", get(audit))
}

pub(super) fn bad_body(e: axum::extract::rejection::JsonRejection) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.body_text())
}

fn parse_order(id: &str) -> Result<OrderId, ApiError> {
    id.parse().map_err(|e: locker_schemas::SlugError| {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", e.to_string())
    })
}

async fn create(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Result<Json<NewOrder>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(mut order) = body.map_err(bad_body)?;
    if let Some(k) = headers.get("idempotency-key").and_then(|v| v.to_str().ok()) {
        order.idempotency_key = Some(k.to_owned());
    }
    let mut r = st.parcels.create(vec![order], caller).await?;
    let (view, new) = r.pop().ok_or_else(|| {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "no result")
    })??;
    let status = if new {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(view)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Batch {
    orders: Vec<NewOrder>,
}

/// `POST /v1/orders/batch`: a courier's whole route at once; one result per order, in order.
async fn batch(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    body: Result<Json<Batch>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(b) = body.map_err(bad_body)?;
    let results = st.parcels.create(b.orders, caller).await?;
    let out: Vec<_> = results
        .into_iter()
        .map(|r| match r {
            Ok((view, new)) => json!({"order": view, "created": new}),
            Err(e) => {
                let e = ApiError::from(e);
                json!({"error": e.code, "message": e.message})
            }
        })
        .collect();
    Ok(Json(json!({ "results": out })).into_response())
}

async fn list(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Query(f): Query<OrderFilter>,
) -> Result<impl IntoResponse, ApiError> {
    let orders = st.parcels.list(f, caller).await?;
    let next = orders.last().map(|o| o.id.to_string());
    Ok(Json(json!({ "orders": orders, "next_after": next })))
}

async fn get_one(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(st.parcels.get(parse_order(&id)?, caller).await?))
}

async fn act(st: ApiState, caller: Caller, id: &str, a: OrderAction) -> Result<Response, ApiError> {
    let v = st.parcels.act(parse_order(id)?, a, caller).await?;
    Ok(Json(v).into_response())
}

async fn cancel(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    act(st, caller, &id, OrderAction::Cancel).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Extend {
    hours: u32,
}

async fn extend(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Result<Json<Extend>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(b) = body.map_err(bad_body)?;
    act(st, caller, &id, OrderAction::Extend { hours: b.hours }).await
}

async fn resend(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    act(st, caller, &id, OrderAction::ResendCode).await
}

async fn request_return(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    act(st, caller, &id, OrderAction::RequestReturn).await
}

async fn out_for_delivery(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    act(st, caller, &id, OrderAction::OutForDelivery).await
}

/// A remote unlock or an override: why someone opens a door from afar (mandatory).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Reason {
    pub reason: String,
    #[serde(default)]
    pub ttl_ms: Option<u32>,
    /// Wait up to this long for the outcome before answering.
    #[serde(default)]
    pub wait_ms: u64,
}

impl Reason {
    pub(super) fn check(&self) -> Result<(), ApiError> {
        let r = self.reason.trim();
        if r.len() < 3 || r.len() > 500 {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "reason_required",
                "a reason of 3 to 500 characters is required (it goes to the audit trail)",
            ));
        }
        Ok(())
    }
}

/// `POST /v1/orders/{id}/unlock {"reason"}`: opens the order's compartment through the command
/// queue (its expiry and single outcome); `opened` moves the order on (deposit, pickup or
/// collection, by its state).
async fn unlock(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Result<Json<Reason>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(b) = body.map_err(bad_body)?;
    b.check()?;
    let order = parse_order(&id)?;
    let target = st
        .parcels
        .prepare_unlock(order, b.reason.clone(), caller.clone())
        .await?;
    let new = NewCommand {
        id: Some(target.command),
        cabinet: target.cabinet.clone(),
        action: ActionSpec::Unlock {
            compartment: target.compartment,
        },
        ttl_ms: b.ttl_ms,
        created_by: caller.client.clone(),
    };
    let rec = match st.commands.create(new).await {
        Ok(rec) => rec,
        Err(e) => {
            st.parcels.unlock_failed(order, target.command).await;
            return Err(e.into());
        }
    };
    let wait = b.wait_ms.min(st.cfg.max_wait_ms);
    let rec = if wait > 0 {
        st.commands
            .wait(rec.id, Duration::from_millis(wait))
            .await?
            .unwrap_or(rec)
    } else {
        rec
    };
    let status = if rec.outcome.is_some() {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((status, Json(json!({"target": target, "command": rec}))).into_response())
}

/// `GET /v1/notifications?after=&limit=`: the notification outbox (codes included: the
/// channel that delivers them reads here), within the token's scope.
async fn notifications(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<PageQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let (after, limit) = (q.after, q.limit());
    let s = st.store.clone();
    let page = store::blocking(move || s.parcels().notices(after, limit)).await?;
    let next = page.last().map(|n| n.id);
    let items: Vec<_> = page
        .into_iter()
        .filter(|n| caller.scope.sees(&n.carrier, &n.site))
        .collect();
    Ok(Json(json!({"notifications": items, "next_after": next})))
}

/// `GET /v1/parcel-audit?after=&limit=`: every order transition, override, partition and
/// service change, within the token's scope.
async fn audit(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<PageQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let (after, limit) = (q.after, q.limit());
    let s = st.store.clone();
    let page = store::blocking(move || s.parcels().audit(after, limit)).await?;
    let next = page.last().map(|r| r.pos);
    let items: Vec<_> = page
        .into_iter()
        .filter(|r| match &caller.scope {
            Scope::Operator => true,
            Scope::Carrier { carrier } => r.carrier.as_ref() == Some(carrier),
            Scope::SiteManager { sites } => r.site.as_ref().is_some_and(|s| sites.contains(s)),
        })
        .collect();
    Ok(Json(json!({"records": items, "next_after": next})))
}
