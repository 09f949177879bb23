//! The integration routes: webhook subscriptions (create, list, read with delivery health,
//! change, delete, rotate the secret), their dead letters (list, replay) and a ping; the
//! health of every outbound target (operators); and a carrier's "out for delivery" by its own
//! tracking number. Every route is scoped like the caller's token.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::orders::bad_body;
use super::{ApiError, ApiState, PageQuery};
use crate::outbound::{NewSubscription, OutboundError, SubscriptionPatch};
use crate::parcels::{Caller, OrderAction, OrderFilter, Scope};

impl From<OutboundError> for ApiError {
    fn from(e: OutboundError) -> Self {
        let status = match &e {
            OutboundError::NotFound(_) => StatusCode::NOT_FOUND,
            OutboundError::Forbidden(_) => StatusCode::FORBIDDEN,
            OutboundError::Invalid(_) => StatusCode::BAD_REQUEST,
            OutboundError::Storage(_) => StatusCode::INTERNAL_SERVER_ERROR,
            OutboundError::Closed => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError::new(status, e.code(), e.to_string())
    }
}

/// The integration routes.
pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v1/webhooks", post(create).get(list))
        .route(
            "/v1/webhooks/{id}",
            get(get_one).patch(update).delete(delete),
        )
        .route("/v1/webhooks/{id}/rotate-secret", post(rotate))
        .route("/v1/webhooks/{id}/dead-letters", get(dead_letters))
        .route("/v1/webhooks/{id}/dead-letters/replay", post(replay))
        .route("/v1/webhooks/{id}/ping", post(ping))
        .route("/v1/outbound/targets", get(targets))
        .route(
            "/v1/outbound/targets/{target}/dead-letters",
            get(dead_letters),
        )
        .route(
            "/v1/outbound/targets/{target}/dead-letters/replay",
            post(replay),
        )
        .route(
            "/v1/tracking/{tracking}/out-for-delivery",
            post(out_for_delivery),
        )
}

async fn create(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    body: Result<Json<NewSubscription>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(n) = body.map_err(bad_body)?;
    let v = st.outbound.create(n, caller).await?;
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

async fn list(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    let v = st.outbound.list(caller).await?;
    Ok(Json(json!({ "webhooks": v })).into_response())
}

async fn get_one(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(st.outbound.get(id, caller).await?).into_response())
}

async fn update(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Result<Json<SubscriptionPatch>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(p) = body.map_err(bad_body)?;
    Ok(Json(st.outbound.update(id, p, caller).await?).into_response())
}

async fn delete(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    st.outbound.delete(id, caller).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// How long the previous secret keeps signing after a rotation (default a day).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Rotate {
    #[serde(default)]
    keep_old_s: Option<u64>,
}

async fn rotate(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Option<Json<Rotate>>,
) -> Result<Response, ApiError> {
    let keep = body.and_then(|Json(b)| b.keep_old_s).unwrap_or(86_400);
    Ok(Json(st.outbound.rotate(id, keep, caller).await?).into_response())
}

async fn dead_letters(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(q): Query<PageQuery>,
) -> Result<Response, ApiError> {
    let v = st
        .outbound
        .dead_letters(id, q.after, q.limit(), caller)
        .await?;
    let next = v.last().map(|d| d.entry.seq);
    Ok(Json(json!({ "dead_letters": v, "next_after": next })).into_response())
}

/// Which dead letters to queue again (all when absent).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Replay {
    #[serde(default)]
    seqs: Option<Vec<u64>>,
}

async fn replay(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Option<Json<Replay>>,
) -> Result<Response, ApiError> {
    let seqs = body.and_then(|Json(b)| b.seqs);
    let n = st.outbound.replay(id, seqs, caller).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "replayed": n }))).into_response())
}

async fn ping(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let event = st.outbound.ping(id, caller).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "event_id": event }))).into_response())
}

/// `GET /v1/outbound/targets`: every target's delivery health (operators).
async fn targets(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    if !matches!(caller.scope, Scope::Operator) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this route needs an operator token",
        ));
    }
    let v: Vec<_> = st
        .outbound
        .targets()
        .await?
        .into_iter()
        .map(|(target, health)| json!({ "target": target, "health": health }))
        .collect();
    Ok(Json(json!({ "targets": v })).into_response())
}

/// `POST /v1/tracking/{tracking}/out-for-delivery`: a carrier marks its parcel out for
/// delivery by its own tracking number (which pre-assigns a compartment). The order is looked
/// up within the caller's scope; a tracking number on several live orders is a conflict.
async fn out_for_delivery(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(tracking): Path<String>,
) -> Result<Response, ApiError> {
    let filter = OrderFilter {
        tracking: Some(tracking.clone()),
        ..Default::default()
    };
    let found = st.parcels.list(filter, caller.clone()).await?;
    let live: Vec<_> = found.iter().filter(|o| !o.state.is_final()).collect();
    let order = match live.as_slice() {
        [one] => one.id,
        [] => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no live order with tracking number {tracking}"),
            ))
        }
        _ => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "ambiguous_tracking",
                format!(
                    "{} live orders have tracking number {tracking}: use /v1/orders/{{id}}/out-for-delivery",
                    live.len()
                ),
            ))
        }
    };
    let v = st
        .parcels
        .act(order, OrderAction::OutForDelivery, caller)
        .await?;
    Ok(Json(v).into_response())
}
