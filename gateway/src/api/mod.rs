//! The HTTP API for integrators (axum): cabinets, their audit log, commands, and `/metrics`.
//!
//! Every `/v1` route needs `Authorization: Bearer <token>` with a token from the
//! `[api.tokens]` table of gateway.toml, or the session cookie of a console login made with
//! such a token (then unsafe methods need the session's CSRF token, see
//! [`crate::console::session`]); a token has a scope (operator, carrier or site
//! manager, [`scope`]): the parcel routes ([`orders`], [`sites`]) enforce it on every path,
//! the cabinet, command and quarantine routes are for operators. Errors are JSON
//! `{"error": "<stable code>", "message": "..."}` ([`openapi::ErrorBody`]).
//!
//! # Adding a route (the OpenAPI pattern)
//!
//! The router and the OpenAPI 3.1 document (`GET /openapi.json`, browsable at `/docs`, see
//! [`openapi`]) are built from the same declarations, so they cannot drift:
//!
//! 1. annotate the handler with `#[utoipa::path(...)]`: method, `path` (axum's `{param}`
//!    syntax), `tag` (one of [`openapi`]'s tags, or add one there), `params`, `request_body`,
//!    and every `responses` status with its body (errors: `body = openapi::ErrorBody`); its
//!    doc comment is the summary and description and names the scopes the route serves
//!    ("Scopes: operator, carrier."). 401 and 408 are added to every `/v1` route for you;
//! 2. derive `utoipa::ToSchema` next to `Serialize`/`Deserialize` on its request and response
//!    types (an id from `locker-schemas` is described by `#[schema(value_type = CabinetIdDoc)]`
//!    and the like, from [`openapi`]); query structs derive `utoipa::IntoParams`;
//! 3. register it in the area's `routes()` with `.routes(routes!(handler))` (handlers of one
//!    path go in one `routes!`), never with a bare `.route(...)`: `tests/tests/openapi.rs`
//!    fails on any `.route("` of this folder whose path is not in the document;
//! 4. a new area file returns an `OpenApiRouter<ApiState>` and is merged in [`router`]'s
//!    `all_routes` with one line (inside `v1` for token routes).

pub mod alerts;
pub mod cabinets;
mod export;
mod fleet;
pub mod forward;
mod health;
mod live;
pub mod openapi;
mod orders;
mod quarantine;
pub mod scope;
pub mod serve;
mod sites;
mod webhooks;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use locker_schemas::CabinetId;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::commands::CommandsHandle;
use crate::fleet::FleetHandle;
use crate::metrics::Metrics;
use crate::store::{self, Store};

mod commands;

/// API settings (the `[api]` table of gateway.toml).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ApiConfig {
    /// Address of the HTTP API and `/metrics`.
    pub listen: std::net::SocketAddr,
    /// Bearer tokens: each maps to a client name (an operator token) or to
    /// `{ name, scope = "carrier", carrier }` / `{ name, scope = "site_manager", sites }`.
    pub tokens: HashMap<String, scope::TokenSpec>,
    /// The longest `wait_ms` a request may ask for.
    pub max_wait_ms: u64,
    /// A client must send a whole request head within this long, ms (this also closes idle
    /// keep-alive connections).
    pub header_read_timeout_ms: u64,
    /// Open API connections at most; one more is accepted and closed at once.
    pub max_connections: usize,
    /// The longest a request may take from its head to its answer, body and `wait_ms`
    /// included, ms (above `max_wait_ms`).
    pub request_timeout_ms: u64,
    /// Serve the API over TLS with these PEM files (`[api.tls]`); plain HTTP without.
    pub tls: Option<serve::ApiTlsConfig>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 8080)),
            tokens: HashMap::new(),
            max_wait_ms: 30_000,
            header_read_timeout_ms: 10_000,
            max_connections: 1024,
            request_timeout_ms: 60_000,
            tls: None,
        }
    }
}

/// What every handler shares.
#[derive(Clone)]
pub struct ApiState {
    pub cfg: Arc<ApiConfig>,
    pub fleet: FleetHandle,
    pub commands: CommandsHandle,
    pub store: Store,
    pub metrics: Metrics,
    pub ingest: crate::ingest::IngestHandle,
    pub parcels: crate::parcels::ParcelsHandle,
    pub rules: crate::rules::RulesHandle,
    pub outbound: crate::outbound::OutboundHandle,
    /// The live feed of `GET /v1/live`.
    pub live: crate::live::LiveHandle,
    /// Console sessions (`None` when `console.enabled` is false).
    pub sessions: Option<crate::console::Sessions>,
    /// Cluster mode on a node that does not run the domain: every request but the node's own
    /// health, readiness and metrics goes to the node that does ([`forward`]).
    pub forward: Option<forward::Forwarder>,
    /// Cluster mode: this node's name (every response says which node served it).
    pub node: Option<String>,
    /// Cluster mode: the cluster's metrics, for `/readyz`.
    pub cluster: Option<crate::cluster::ClusterMetrics>,
}

/// An API error: a status and a JSON body.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(openapi::ErrorBody {
                error: self.code.to_owned(),
                message: self.message,
            }),
        )
            .into_response()
    }
}

impl From<store::StoreError> for ApiError {
    fn from(e: store::StoreError) -> Self {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "storage", e.to_string())
    }
}

/// The authenticated client's name.
#[derive(Clone)]
struct Client(String);

async fn auth(State(st): State<ApiState>, mut req: Request, next: Next) -> Response {
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let caller = match token {
        Some(t) => st.cfg.tokens.get(t).map(|spec| spec.caller()),
        // no bearer token: a console session's cookie, if any
        None => match &st.sessions {
            Some(s) => match s.authenticate(req.method(), req.headers()).await {
                Some(Ok(caller)) => Some(caller),
                Some(Err(e)) => return e.into_response(),
                None => None,
            },
            None => None,
        },
    };
    match caller {
        Some(caller) => {
            req.extensions_mut().insert(Client(caller.client.clone()));
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or unknown bearer token (Authorization: Bearer <token from gateway.toml [api.tokens]>)",
        )
        .into_response(),
    }
}

/// Bounds a whole request, body included (a client dripping its body would otherwise hold
/// its connection, one of `api.max_connections`, for ever): `408 request_timeout` after
/// `api.request_timeout_ms`; the unread rest of the body makes hyper close the connection.
async fn deadline(State(st): State<ApiState>, req: Request, next: Next) -> Response {
    let limit = Duration::from_millis(st.cfg.request_timeout_ms);
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!(
                "the request took longer than {} ms",
                st.cfg.request_timeout_ms
            ),
        )
        .into_response(),
    }
}

async fn count(State(st): State<ApiState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let resp = next.run(req).await;
    let class = format!("{}xx", resp.status().as_u16() / 100);
    st.metrics
        .store
        .api_requests
        .with_label_values(&[&route, &class])
        .inc();
    resp
}

/// The API router, with `/openapi.json` and `/docs` built from the same routes.
pub fn router(st: ApiState) -> Router {
    let auth_layer = middleware::from_fn_with_state(st.clone(), auth);
    let (app, doc) = all_routes(|v1| v1.layer(auth_layer)).split_for_parts();
    Router::new()
        .merge(app)
        .merge(openapi::pages(openapi::finish(doc)))
        .merge(crate::console::routes(&st))
        .route_layer(middleware::from_fn_with_state(st.clone(), domain_here))
        .route_layer(middleware::from_fn_with_state(st.clone(), deadline))
        .route_layer(middleware::from_fn_with_state(st.clone(), count))
        .with_state(st)
}

/// Cluster mode, on a node that does not run the domain: the request is served by the node
/// that does ([`forward`]), but for this node's own health, readiness and metrics.
async fn domain_here(State(st): State<ApiState>, req: Request, next: Next) -> Response {
    if let Some(f) = &st.forward {
        if !forward::Forwarder::is_local(&req) {
            return f.forward(req).await;
        }
    }
    let mut resp = next.run(req).await;
    if let Some(node) = &st.node {
        if let Ok(v) = axum::http::HeaderValue::from_str(node) {
            resp.headers_mut().insert(forward::SERVED_BY, v);
        }
    }
    resp
}

/// The OpenAPI document of [`router`] (what `GET /openapi.json` serves).
pub fn openapi() -> utoipa::openapi::OpenApi {
    openapi::finish(all_routes(|v1| v1).into_openapi())
}

/// Every route with its documentation; `v1` wraps the token routes (the auth layer).
fn all_routes(
    v1: impl FnOnce(OpenApiRouter<ApiState>) -> OpenApiRouter<ApiState>,
) -> OpenApiRouter<ApiState> {
    let operator = OpenApiRouter::new()
        .merge(cabinets::routes())
        .merge(commands::routes())
        .merge(quarantine::routes())
        .route_layer(middleware::from_fn(scope::operator_only));
    let tokens = OpenApiRouter::new()
        .merge(operator)
        .merge(orders::routes())
        .merge(sites::routes())
        .merge(alerts::routes())
        .merge(webhooks::routes())
        .merge(export::routes())
        .merge(live::routes())
        .merge(cabinets::site_routes())
        .merge(fleet::routes());
    OpenApiRouter::new()
        .merge(v1(tokens))
        .routes(routes!(metrics))
        .merge(health::routes())
}

/// `?after=N&limit=M` of every paged listing: entries after the cursor `after` (an audit
/// position, a quarantine id), at most `limit` of them (1 to 1,000, default 100).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct PageQuery {
    /// Entries after this cursor (the `next_after` of the previous page); 0 = from the start.
    #[serde(default)]
    pub after: u64,
    /// Entries at most, 1 to 1,000 (default 100).
    #[serde(default = "PageQuery::default_limit")]
    #[param(minimum = 1, maximum = 1000)]
    limit: usize,
}

impl PageQuery {
    fn default_limit() -> usize {
        100
    }

    /// The requested page size, clamped to 1..=1000.
    pub fn limit(&self) -> usize {
        self.limit.clamp(1, 1000)
    }
}

pub(crate) fn parse_cabinet(id: &str) -> Result<CabinetId, ApiError> {
    CabinetId::new(id)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_cabinet_id", e.to_string()))
}

/// Prometheus metrics (text exposition format).
///
/// No token: scrape it from the monitoring network only (bind `api.listen` accordingly).
#[utoipa::path(get, path = "/metrics", tag = "health", security(()),
    responses((status = 200, description = "The gateway's metrics.",
        content_type = "text/plain; version=0.0.4", body = String)))]
async fn metrics(State(st): State<ApiState>) -> impl IntoResponse {
    let mut h = HeaderMap::new();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    (h, st.metrics.render())
}
