//! The order routes: create one (with an idempotency key) or a batch, list and read within the
//! token's scope, cancel, extend, resend the code, request a return, mark out for delivery,
//! remote unlock through the command queue; and the notification outbox and the parcel audit
//! trail, filtered by scope.

use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use locker_schemas::OrderId;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::openapi::{ErrorBody, OrderIdDoc};
use super::{ApiError, ApiState, PageQuery};
use crate::commands::{ActionSpec, CommandRecord, NewCommand};
use crate::parcels::{
    Caller, NewOrder, Notice, OrderAction, OrderFilter, OrderView, ParcelError, Scope, UnlockTarget,
};
use crate::store::parcels::{AuditRecord, ParcelStore};
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
pub(super) fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(batch))
        .routes(routes!(get_one))
        .routes(routes!(cancel))
        .routes(routes!(extend))
        .routes(routes!(resend))
        .routes(routes!(request_return))
        .routes(routes!(out_for_delivery))
        .routes(routes!(unlock))
        .routes(routes!(notifications))
        .routes(routes!(order_notifications))
        .routes(routes!(audit))
}

/// `GET /v1/orders`.
#[derive(Serialize, utoipa::ToSchema)]
struct OrderList {
    orders: Vec<OrderView>,
    /// The cursor of the next page (the last order's id; null when the page is empty).
    #[schema(value_type = Option<OrderIdDoc>)]
    next_after: Option<String>,
}

/// One order's result in a batch: the order (and whether it is new), or its error.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(untagged)]
enum BatchItem {
    Done {
        order: Box<OrderView>,
        /// False when an idempotency key matched an order created before.
        created: bool,
    },
    Failed(ErrorBody),
}

/// `POST /v1/orders/batch`.
#[derive(Serialize, utoipa::ToSchema)]
struct BatchResults {
    /// One result per order, in the request's order.
    results: Vec<BatchItem>,
}

/// `POST /v1/orders/{id}/unlock`.
#[derive(Serialize, utoipa::ToSchema)]
struct UnlockResponse {
    target: UnlockTarget,
    command: CommandRecord,
}

/// `GET /v1/notifications`.
#[derive(Serialize, utoipa::ToSchema)]
struct NoticePage {
    notifications: Vec<Notice>,
    /// The cursor of the next page (the page's last outbox id before the scope filter).
    next_after: Option<u64>,
}

/// `GET /v1/parcel-audit`.
#[derive(Serialize, utoipa::ToSchema)]
struct AuditPage {
    records: Vec<AuditRecord>,
    /// The cursor of the next page (the page's last position before the scope filter).
    next_after: Option<u64>,
}

pub(super) fn bad_body(e: axum::extract::rejection::JsonRejection) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.body_text())
}

fn parse_order(id: &str) -> Result<OrderId, ApiError> {
    id.parse().map_err(|e: locker_schemas::SlugError| {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", e.to_string())
    })
}

/// Creates an order (a delivery, or a customer's return) and, by default, holds a compartment.
///
/// Scopes: operator (names the `carrier`), carrier (its own), site manager (its sites). An
/// `Idempotency-Key` header (or `idempotency_key`) makes a repeat return the first order (200).
#[utoipa::path(post, path = "/v1/orders", tag = "orders",
    params(("Idempotency-Key" = Option<String>, Header, description = "Repeating a request with the same key returns the order created the first time.")),
    request_body = NewOrder,
    responses((status = 201, description = "The new order.", body = OrderView),
        (status = 200, description = "The order an earlier request with the same idempotency key created.", body = OrderView),
        (status = 400, description = "`bad_request` or `invalid`.", body = ErrorBody),
        (status = 403, description = "`forbidden`: outside the token's scope.", body = ErrorBody),
        (status = 404, description = "`not_found`: unknown site, carrier or cabinet.", body = ErrorBody),
        (status = 409, description = "`no_compartment`.", body = ErrorBody),
        (status = 503, description = "`unavailable`: shutting down.", body = ErrorBody)))]
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

/// `POST /v1/orders/batch`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Batch {
    orders: Vec<NewOrder>,
}

/// Creates a courier's whole route at once; one result per order, in order.
///
/// Scopes: operator, carrier, site manager (as for one order). One failing order does not
/// stop the others: its result is an error body.
#[utoipa::path(post, path = "/v1/orders/batch", tag = "orders",
    request_body = Batch,
    responses((status = 200, description = "One result per order.", body = BatchResults),
        (status = 400, description = "`bad_request`.", body = ErrorBody),
        (status = 503, description = "`unavailable`: shutting down.", body = ErrorBody)))]
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
            Ok((view, new)) => BatchItem::Done {
                order: Box::new(view),
                created: new,
            },
            Err(e) => {
                let e = ApiError::from(e);
                BatchItem::Failed(ErrorBody {
                    error: e.code.to_owned(),
                    message: e.message,
                })
            }
        })
        .collect();
    Ok(Json(BatchResults { results: out }).into_response())
}

/// Lists orders within the token's scope, oldest first, filtered.
///
/// Scopes: operator (all), carrier (its orders), site manager (its sites). Page with
/// `after` = the previous page's `next_after`.
#[utoipa::path(get, path = "/v1/orders", tag = "orders",
    params(OrderFilter),
    responses((status = 200, description = "A page of orders.", body = OrderList),
        (status = 400, description = "`bad_request` or `invalid`: a filter does not parse.", body = ErrorBody),
        (status = 503, description = "`unavailable`: shutting down.", body = ErrorBody)))]
async fn list(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Query(f): Query<OrderFilter>,
) -> Result<impl IntoResponse, ApiError> {
    let orders = st.parcels.list(f, caller).await?;
    let next = orders.last().map(|o| o.id.to_string());
    Ok(Json(OrderList {
        orders,
        next_after: next,
    }))
}

/// One order with its history (archived finished orders included).
///
/// Scopes: operator, carrier (its orders), site manager (its sites); an order outside the
/// scope is `not_found`.
#[utoipa::path(get, path = "/v1/orders/{id}", tag = "orders",
    params(("id" = OrderIdDoc, Path, description = "The order.")),
    responses((status = 200, description = "The order.", body = OrderView),
        (status = 404, description = "`not_found`.", body = ErrorBody),
        (status = 500, description = "`storage`.", body = ErrorBody)))]
async fn get_one(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_order(&id)?;
    Ok(Json(order_view(&st, &caller, id).await?).into_response())
}

/// An order the caller may see, live or archived (finished, out of memory).
async fn order_view(
    st: &ApiState,
    caller: &Caller,
    id: OrderId,
) -> Result<crate::parcels::OrderView, ApiError> {
    match st.parcels.get(id, caller.clone()).await {
        Ok(v) => Ok(v),
        Err(ParcelError::NotFound(what)) => {
            let s = st.store.clone();
            let old = store::blocking(move || s.parcels().archived(id)).await?;
            match old.filter(|o| caller.scope.sees(&o.carrier, &o.site)) {
                Some(o) => Ok(crate::parcels::OrderView::from(&o)),
                None => Err(ParcelError::NotFound(what).into()),
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// `GET /v1/orders/{id}/notifications`.
#[derive(Serialize, utoipa::ToSchema)]
struct OrderNotices {
    notifications: Vec<Notice>,
}

/// The notification requests of one order, oldest first (codes included, as in
/// `/v1/notifications`; read through a per-order index, never a scan of the outbox).
///
/// Scopes: operator, carrier (its orders), site manager (its sites); an order outside the
/// scope is `not_found`.
#[utoipa::path(get, path = "/v1/orders/{id}/notifications", tag = "notifications",
    params(("id" = OrderIdDoc, Path, description = "The order.")),
    responses((status = 200, description = "The order's notices.", body = OrderNotices),
        (status = 404, description = "`not_found`.", body = ErrorBody),
        (status = 500, description = "`storage`.", body = ErrorBody)))]
async fn order_notifications(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let id = parse_order(&id)?;
    order_view(&st, &caller, id).await?;
    let s = st.store.clone();
    let notices = store::blocking(move || s.parcels().notices_of(&id)).await?;
    Ok(Json(OrderNotices {
        notifications: notices,
    }))
}

async fn act(st: ApiState, caller: Caller, id: &str, a: OrderAction) -> Result<Response, ApiError> {
    let v = st.parcels.act(parse_order(id)?, a, caller).await?;
    Ok(Json(v).into_response())
}

/// Cancels an order (a parcel already inside goes back to the carrier: `return_requested`).
///
/// Scopes: operator, carrier (its orders), site manager (its sites).
#[utoipa::path(post, path = "/v1/orders/{id}/cancel", tag = "orders",
    params(("id" = OrderIdDoc, Path, description = "The order.")),
    responses((status = 200, description = "The order after the action.", body = OrderView),
        (status = 400, description = "`bad_request` or `invalid`.", body = ErrorBody),
        (status = 403, description = "`forbidden`: outside the token's scope.", body = ErrorBody),
        (status = 404, description = "`not_found`.", body = ErrorBody),
        (status = 409, description = "`invalid_transition`: not possible in the order's state; or `no_compartment`.", body = ErrorBody),
        (status = 503, description = "`unavailable`: shutting down.", body = ErrorBody)))]
async fn cancel(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    act(st, caller, &id, OrderAction::Cancel).await
}

/// `POST /v1/orders/{id}/extend`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Extend {
    /// Hours added to the pickup deadline.
    hours: u32,
}

/// Extends the pickup window of a ready parcel.
///
/// Scopes: operator, carrier (its orders), site manager (its sites).
#[utoipa::path(post, path = "/v1/orders/{id}/extend", tag = "orders",
    params(("id" = OrderIdDoc, Path, description = "The order.")),
    request_body = Extend,
    responses((status = 200, description = "The order after the action.", body = OrderView),
        (status = 400, description = "`bad_request` or `invalid`.", body = ErrorBody),
        (status = 403, description = "`forbidden`: outside the token's scope.", body = ErrorBody),
        (status = 404, description = "`not_found`.", body = ErrorBody),
        (status = 409, description = "`invalid_transition`: not possible in the order's state; or `no_compartment`.", body = ErrorBody),
        (status = 503, description = "`unavailable`: shutting down.", body = ErrorBody)))]
async fn extend(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Result<Json<Extend>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(b) = body.map_err(bad_body)?;
    act(st, caller, &id, OrderAction::Extend { hours: b.hours }).await
}

/// Issues a new code and sends it to the recipient again (the old code stops working).
///
/// Scopes: operator, carrier (its orders), site manager (its sites).
#[utoipa::path(post, path = "/v1/orders/{id}/resend-code", tag = "orders",
    params(("id" = OrderIdDoc, Path, description = "The order.")),
    responses((status = 200, description = "The order after the action.", body = OrderView),
        (status = 400, description = "`bad_request` or `invalid`.", body = ErrorBody),
        (status = 403, description = "`forbidden`: outside the token's scope.", body = ErrorBody),
        (status = 404, description = "`not_found`.", body = ErrorBody),
        (status = 409, description = "`invalid_transition`: not possible in the order's state; or `no_compartment`.", body = ErrorBody),
        (status = 503, description = "`unavailable`: shutting down.", body = ErrorBody)))]
async fn resend(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    act(st, caller, &id, OrderAction::ResendCode).await
}

/// Asks the carrier to take the parcel back.
///
/// Scopes: operator, carrier (its orders), site manager (its sites).
#[utoipa::path(post, path = "/v1/orders/{id}/return", tag = "orders",
    params(("id" = OrderIdDoc, Path, description = "The order.")),
    responses((status = 200, description = "The order after the action.", body = OrderView),
        (status = 400, description = "`bad_request` or `invalid`.", body = ErrorBody),
        (status = 403, description = "`forbidden`: outside the token's scope.", body = ErrorBody),
        (status = 404, description = "`not_found`.", body = ErrorBody),
        (status = 409, description = "`invalid_transition`: not possible in the order's state; or `no_compartment`.", body = ErrorBody),
        (status = 503, description = "`unavailable`: shutting down.", body = ErrorBody)))]
async fn request_return(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    act(st, caller, &id, OrderAction::RequestReturn).await
}

/// The parcel is on a van: holds a compartment now (an order created with `reserve: false`).
///
/// Scopes: operator, carrier (its orders), site manager (its sites).
#[utoipa::path(post, path = "/v1/orders/{id}/out-for-delivery", tag = "orders",
    params(("id" = OrderIdDoc, Path, description = "The order.")),
    responses((status = 200, description = "The order after the action.", body = OrderView),
        (status = 400, description = "`bad_request` or `invalid`.", body = ErrorBody),
        (status = 403, description = "`forbidden`: outside the token's scope.", body = ErrorBody),
        (status = 404, description = "`not_found`.", body = ErrorBody),
        (status = 409, description = "`invalid_transition`: not possible in the order's state; or `no_compartment`.", body = ErrorBody),
        (status = 503, description = "`unavailable`: shutting down.", body = ErrorBody)))]
async fn out_for_delivery(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    act(st, caller, &id, OrderAction::OutForDelivery).await
}

/// A remote unlock or an override: why someone opens a door from afar (mandatory).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct Reason {
    /// Why, 3 to 500 characters (it goes to the audit trail).
    pub reason: String,
    /// How long the command may wait for its cabinet, ms.
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

/// Remote unlock: opens the order's compartment through the command queue.
///
/// The command has its expiry and single outcome; `opened` moves the order on (deposit,
/// pickup or collection, by its state). Scopes: operator, carrier (its orders), site manager
/// (its sites). 200 with the outcome when it came within `wait_ms`, else 202.
#[utoipa::path(post, path = "/v1/orders/{id}/unlock", tag = "orders",
    params(("id" = OrderIdDoc, Path, description = "The order.")),
    request_body = Reason,
    responses((status = 200, description = "The target and the command with its outcome.", body = UnlockResponse),
        (status = 202, description = "The target and the command, without an outcome yet.", body = UnlockResponse),
        (status = 400, description = "`bad_request`, `reason_required`, `bad_ttl`.", body = ErrorBody),
        (status = 403, description = "`forbidden`: outside the token's scope.", body = ErrorBody),
        (status = 404, description = "`not_found`.", body = ErrorBody),
        (status = 409, description = "`invalid_transition`: nothing to open in the order's state.", body = ErrorBody),
        (status = 503, description = "`unavailable` or `shutting_down`.", body = ErrorBody)))]
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
    let (status, rec) = waited(&st, rec, b.wait_ms).await?;
    Ok((
        status,
        Json(UnlockResponse {
            target,
            command: rec,
        }),
    )
        .into_response())
}

/// Waits up to `wait_ms` (at most `api.max_wait_ms`) for a command's outcome: 200 with a
/// final record, 202 while it still waits.
pub(super) async fn waited(
    st: &ApiState,
    rec: crate::commands::CommandRecord,
    wait_ms: u64,
) -> Result<(StatusCode, crate::commands::CommandRecord), ApiError> {
    let wait = wait_ms.min(st.cfg.max_wait_ms);
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
    Ok((status, rec))
}

/// The notification outbox, oldest first, within the token's scope.
///
/// Codes are included: the channel that delivers them reads here. Scopes: operator (all),
/// carrier (its orders), site manager (its sites).
#[utoipa::path(get, path = "/v1/notifications", tag = "notifications",
    params(PageQuery),
    responses((status = 200, description = "A page of notification requests.", body = NoticePage),
        (status = 500, description = "`storage`.", body = ErrorBody)))]
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
    Ok(Json(NoticePage {
        notifications: items,
        next_after: next,
    }))
}

/// The parcel audit trail: every order transition, override, partition and service change.
///
/// Scopes: operator (all), carrier (its orders), site manager (its sites).
#[utoipa::path(get, path = "/v1/parcel-audit", tag = "audit",
    params(PageQuery),
    responses((status = 200, description = "A page of audit records.", body = AuditPage),
        (status = 500, description = "`storage`.", body = ErrorBody)))]
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
    Ok(Json(AuditPage {
        records: items,
        next_after: next,
    }))
}
