//! The integration routes: webhook subscriptions (create, list, read with delivery health,
//! change, delete, rotate the secret), their dead letters (list, replay) and a ping; the
//! health of every outbound target (operators); and a carrier's "out for delivery" by its own
//! tracking number. Every route is scoped like the caller's token.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::openapi::ErrorBody;
use super::orders::bad_body;
use super::{ApiError, ApiState, PageQuery};
use crate::outbound::model::DeadLetter;
use crate::outbound::{
    Health, NewSubscription, OutboundError, SubscriptionPatch, SubscriptionView,
};
use crate::parcels::views::OrderView;
use crate::parcels::{Caller, OrderAction, OrderFilter, Scope};

/// `GET /v1/webhooks`.
#[derive(Serialize, utoipa::ToSchema)]
struct WebhookList {
    webhooks: Vec<SubscriptionView>,
}

/// A page of dead letters.
#[derive(Serialize, utoipa::ToSchema)]
struct DeadLetterPage {
    /// Oldest first.
    dead_letters: Vec<DeadLetter>,
    /// The `after` of the next page (null when this page is empty).
    next_after: Option<u64>,
}

/// How many dead letters were queued again.
#[derive(Serialize, utoipa::ToSchema)]
struct Replayed {
    replayed: usize,
}

/// The event a ping queued.
#[derive(Serialize, utoipa::ToSchema)]
struct Pinged {
    event_id: String,
}

/// One target's delivery health.
#[derive(Serialize, utoipa::ToSchema)]
struct TargetHealth {
    /// `WH-...`, `carrier:<id>` or `notify:<provider>`.
    target: String,
    health: Health,
}

/// `GET /v1/outbound/targets`.
#[derive(Serialize, utoipa::ToSchema)]
struct TargetList {
    targets: Vec<TargetHealth>,
}

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
pub(super) fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(get_one, update, delete))
        .routes(routes!(rotate))
        .routes(routes!(dead_letters))
        .routes(routes!(replay))
        .routes(routes!(ping))
        .routes(routes!(targets))
        .routes(routes!(target_dead_letters))
        .routes(routes!(target_replay))
        .routes(routes!(out_for_delivery_by_tracking))
}

const ID: &str = "The subscription (`WH-...`).";

/// Subscribes to events: a URL, the event types, optional site and carrier filters.
///
/// Answers with the subscription and its `secret` (shown once). Scopes: operator, carrier (its
/// own parcels' events), site manager (its sites' events).
#[utoipa::path(post, path = "/v1/webhooks", tag = "webhooks",
    request_body = NewSubscription,
    responses((status = 201, description = "Subscribed; `secret` is shown this once.", body = SubscriptionView),
        (status = 400, description = "`bad_request`: a URL, event type or secret that does not fit.", body = ErrorBody),
        (status = 403, description = "`forbidden`: a site or carrier filter outside the token's scope.", body = ErrorBody),
        (status = 503, description = "`unavailable`.", body = ErrorBody)))]
async fn create(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    body: Result<Json<NewSubscription>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(n) = body.map_err(bad_body)?;
    let v = st.outbound.create(n, caller).await?;
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

/// The caller's subscriptions (an operator's: all) with their delivery health.
///
/// Scopes: operator, carrier, site manager.
#[utoipa::path(get, path = "/v1/webhooks", tag = "webhooks",
    responses((status = 200, description = "Subscriptions.", body = WebhookList)))]
async fn list(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    let v = st.outbound.list(caller).await?;
    Ok(Json(json!({ "webhooks": v })).into_response())
}

/// One subscription with its delivery health.
///
/// Scopes: its owner, operator.
#[utoipa::path(get, path = "/v1/webhooks/{id}", tag = "webhooks",
    params(("id" = String, Path, description = ID)),
    responses((status = 200, description = "The subscription.", body = SubscriptionView),
        (status = 404, description = "`not_found` (also another owner's).", body = ErrorBody)))]
async fn get_one(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(st.outbound.get(id, caller).await?).into_response())
}

/// Changes a subscription (absent fields stay); `enabled: true` resumes a disabled one.
///
/// Scopes: its owner, operator.
#[utoipa::path(patch, path = "/v1/webhooks/{id}", tag = "webhooks",
    params(("id" = String, Path, description = ID)),
    request_body = SubscriptionPatch,
    responses((status = 200, description = "The subscription.", body = SubscriptionView),
        (status = 400, description = "`bad_request`.", body = ErrorBody),
        (status = 403, description = "`forbidden`: a filter outside the token's scope.", body = ErrorBody),
        (status = 404, description = "`not_found`.", body = ErrorBody)))]
async fn update(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Result<Json<SubscriptionPatch>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(p) = body.map_err(bad_body)?;
    Ok(Json(st.outbound.update(id, p, caller).await?).into_response())
}

/// Unsubscribes; what waits for the subscription is dropped.
///
/// Scopes: its owner, operator.
#[utoipa::path(delete, path = "/v1/webhooks/{id}", tag = "webhooks",
    params(("id" = String, Path, description = ID)),
    responses((status = 204, description = "Deleted."),
        (status = 404, description = "`not_found`.", body = ErrorBody)))]
async fn delete(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    st.outbound.delete(id, caller).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// How long the previous secret keeps signing after a rotation (default a day).
#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Rotate {
    #[serde(default)]
    keep_old_s: Option<u64>,
}

/// A new signing secret; the previous one keeps signing for `keep_old_s` (default a day,
/// at most 7 days).
///
/// Scopes: its owner, operator.
#[utoipa::path(post, path = "/v1/webhooks/{id}/rotate-secret", tag = "webhooks",
    params(("id" = String, Path, description = ID)),
    request_body(content = Option<Rotate>, description = "Optional."),
    responses((status = 200, description = "The subscription with its new `secret` (shown once).", body = SubscriptionView),
        (status = 404, description = "`not_found`.", body = ErrorBody)))]
async fn rotate(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Option<Json<Rotate>>,
) -> Result<Response, ApiError> {
    let keep = body.and_then(|Json(b)| b.keep_old_s).unwrap_or(86_400);
    Ok(Json(st.outbound.rotate(id, keep, caller).await?).into_response())
}

/// The subscription's dead letters: deliveries given up, with the last error.
///
/// Scopes: its owner, operator.
#[utoipa::path(get, path = "/v1/webhooks/{id}/dead-letters", tag = "webhooks",
    params(("id" = String, Path, description = ID), PageQuery),
    responses((status = 200, description = "A page of dead letters.", body = DeadLetterPage),
        (status = 404, description = "`not_found`.", body = ErrorBody)))]
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
#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Replay {
    #[serde(default)]
    seqs: Option<Vec<u64>>,
}

/// Queues the subscription's dead letters again (all, or the `seqs` named).
///
/// Scopes: its owner, operator.
#[utoipa::path(post, path = "/v1/webhooks/{id}/dead-letters/replay", tag = "webhooks",
    params(("id" = String, Path, description = ID)),
    request_body(content = Option<Replay>, description = "Optional."),
    responses((status = 202, description = "Queued again.", body = Replayed),
        (status = 404, description = "`not_found`.", body = ErrorBody)))]
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

/// Queues a `webhook.ping` event to the subscription.
///
/// Scopes: its owner, operator.
#[utoipa::path(post, path = "/v1/webhooks/{id}/ping", tag = "webhooks",
    params(("id" = String, Path, description = ID)),
    responses((status = 202, description = "Queued.", body = Pinged),
        (status = 404, description = "`not_found`.", body = ErrorBody)))]
async fn ping(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let event = st.outbound.ping(id, caller).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "event_id": event }))).into_response())
}

/// Every outbound target's delivery health: subscriptions, carriers' tracking endpoints,
/// notification providers.
///
/// Scopes: operator.
#[utoipa::path(get, path = "/v1/outbound/targets", tag = "webhooks",
    responses((status = 200, description = "Targets.", body = TargetList),
        (status = 403, description = "`forbidden`.", body = ErrorBody)))]
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
///
/// Scopes: carrier, operator, site manager.
#[utoipa::path(post, path = "/v1/tracking/{tracking}/out-for-delivery", tag = "orders",
    params(("tracking" = String, Path, description = "The carrier's tracking number.")),
    responses((status = 200, description = "The order after the action.", body = OrderView),
        (status = 404, description = "`not_found`: no live order with this tracking number in the token's scope.", body = ErrorBody),
        (status = 409, description = "`ambiguous_tracking`, `invalid_transition` or `no_compartment`.", body = ErrorBody),
        (status = 503, description = "`unavailable`.", body = ErrorBody)))]
async fn out_for_delivery_by_tracking(
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

/// A target's dead letters (`carrier:<id>`, `notify:<provider>`, or a subscription id).
///
/// Scopes: operator (a subscription's owner for its own).
#[utoipa::path(get, path = "/v1/outbound/targets/{target}/dead-letters", tag = "webhooks",
    params(("target" = String, Path, description = "`carrier:<id>`, `notify:<provider>` or `WH-...`."), PageQuery),
    responses((status = 200, description = "A page of dead letters.", body = DeadLetterPage),
        (status = 404, description = "`not_found`: no such target (or not the caller's).", body = ErrorBody)))]
async fn target_dead_letters(
    st: State<ApiState>,
    caller: Extension<Caller>,
    target: Path<String>,
    q: Query<PageQuery>,
) -> Result<Response, ApiError> {
    dead_letters(st, caller, target, q).await
}

/// Queues a target's dead letters again (all, or the `seqs` named).
///
/// Scopes: operator (a subscription's owner for its own).
#[utoipa::path(post, path = "/v1/outbound/targets/{target}/dead-letters/replay", tag = "webhooks",
    params(("target" = String, Path, description = "`carrier:<id>`, `notify:<provider>` or `WH-...`.")),
    request_body(content = Option<Replay>, description = "Optional."),
    responses((status = 202, description = "Queued again.", body = Replayed),
        (status = 404, description = "`not_found`.", body = ErrorBody)))]
async fn target_replay(
    st: State<ApiState>,
    caller: Extension<Caller>,
    target: Path<String>,
    body: Option<Json<Replay>>,
) -> Result<Response, ApiError> {
    replay(st, caller, target, body).await
}
