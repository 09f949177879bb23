//! The HTTP API for integrators (axum): cabinets, their audit log, commands, and `/metrics`.
//!
//! Every `/v1` route needs `Authorization: Bearer <token>` with a token from the `[api]`
//! table of gateway.toml; errors are JSON `{"error": "...", "message": "..."}`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use locker_schemas::{codec, CabinetId};
use serde::{Deserialize, Serialize};
use serde_json::json;

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
    /// Bearer tokens and the client name each one stands for.
    pub tokens: HashMap<String, String>,
    /// The longest `wait_ms` a request may ask for.
    pub max_wait_ms: u64,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 8080)),
            tokens: HashMap::new(),
            max_wait_ms: 30_000,
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
}

/// An API error: a status and a JSON body.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
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
            Json(json!({"error": self.code, "message": self.message})),
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
    match token.and_then(|t| st.cfg.tokens.get(t)) {
        Some(name) => {
            req.extensions_mut().insert(Client(name.clone()));
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

/// The API router.
pub fn router(st: ApiState) -> Router {
    let v1 = Router::new()
        .route("/v1/cabinets", get(list_cabinets))
        .route("/v1/cabinets/{id}", get(get_cabinet))
        .route("/v1/cabinets/{id}/events", get(cabinet_events))
        .route("/v1/cabinets/{id}/commands", post(commands::create_command))
        .route("/v1/commands/{id}", get(commands::get_command))
        .route("/v1/commands/{id}/cancel", post(commands::cancel_command))
        .layer(middleware::from_fn_with_state(st.clone(), auth));
    Router::new()
        .merge(v1)
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route_layer(middleware::from_fn_with_state(st.clone(), count))
        .with_state(st)
}

fn parse_cabinet(id: &str) -> Result<CabinetId, ApiError> {
    CabinetId::new(id)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_cabinet_id", e.to_string()))
}

async fn metrics(State(st): State<ApiState>) -> impl IntoResponse {
    let mut h = HeaderMap::new();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    (h, st.metrics.render())
}

async fn list_cabinets(State(st): State<ApiState>) -> impl IntoResponse {
    Json(json!({ "cabinets": st.fleet.list().await }))
}

async fn get_cabinet(
    State(st): State<ApiState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let id = parse_cabinet(&id)?;
    match st.fleet.get(id.clone()).await {
        Some(c) => Ok(Json(c)),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("unknown cabinet {id}"),
        )),
    }
}

#[derive(Deserialize)]
struct EventsQuery {
    /// Return events with a sequence number above this (paging cursor).
    #[serde(default)]
    after: u64,
    #[serde(default = "default_limit")]
    limit: usize,
}

fn default_limit() -> usize {
    100
}

async fn cabinet_events(
    State(st): State<ApiState>,
    Path(id): Path<String>,
    Query(q): Query<EventsQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let id = parse_cabinet(&id)?;
    let limit = q.limit.clamp(1, 1000);
    let store = st.store.clone();
    let cab = id.clone();
    let rows = store::blocking(move || store.events_page(&cab, q.after, limit)).await?;
    let mut events = Vec::with_capacity(rows.len());
    for (seq, raw) in &rows {
        match codec::decode_uplink(raw) {
            Ok(u) => events.push(crate::audit::event_json(&u)),
            Err(e) => events.push(json!({"seq": seq, "error": e.to_string()})),
        }
    }
    let next = rows.last().map(|(s, _)| *s);
    Ok(Json(
        json!({ "cabinet": id, "events": events, "next_after": next }),
    ))
}
