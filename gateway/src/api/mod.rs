//! The HTTP API for integrators (axum): cabinets, their audit log, commands, and `/metrics`.
//!
//! Every `/v1` route needs `Authorization: Bearer <token>` with a token from the `[api]`
//! table of gateway.toml; errors are JSON `{"error": "...", "message": "..."}`.

mod health;
mod quarantine;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use locker_schemas::{codec, CabinetId, CommandId};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::commands::{CommandError, CommandsHandle, NewCommand};
use crate::fleet::FleetHandle;
use crate::metrics::Metrics;
use crate::model::ActionSpec;
use crate::store::{self, Store};

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
    pub ingest: crate::ingest::IngestHandle,
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

impl From<CommandError> for ApiError {
    fn from(e: CommandError) -> Self {
        let (status, code) = match &e {
            CommandError::Ttl { .. } => (StatusCode::BAD_REQUEST, "bad_ttl"),
            CommandError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            CommandError::AlreadySent(_) | CommandError::Finished(_) => {
                (StatusCode::CONFLICT, "conflict")
            }
            CommandError::Store(_) => (StatusCode::INTERNAL_SERVER_ERROR, "storage"),
            CommandError::Closed => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
        };
        ApiError::new(status, code, e.to_string())
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
        .route("/v1/cabinets/{id}/commands", post(create_command))
        .route("/v1/commands/{id}", get(get_command))
        .route("/v1/commands/{id}/cancel", post(cancel_command))
        .merge(quarantine::routes())
        .layer(middleware::from_fn_with_state(st.clone(), auth));
    Router::new()
        .merge(v1)
        .route("/metrics", get(metrics))
        .merge(health::routes())
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
    /// Return events with an audit position above this (paging cursor).
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
            Ok(u) => {
                let mut e = crate::audit::event_json(&u);
                e["position"] = json!(seq);
                events.push(e);
            }
            Err(e) => events.push(json!({"seq": seq, "error": e.to_string()})),
        }
    }
    let next = rows.last().map(|(s, _)| *s);
    Ok(Json(
        json!({ "cabinet": id, "events": events, "next_after": next }),
    ))
}

#[derive(Deserialize)]
struct CreateCommand {
    action: ActionSpec,
    ttl_ms: Option<u32>,
    /// Wait up to this long for the outcome before answering.
    #[serde(default)]
    wait_ms: u64,
}

async fn create_command(
    State(st): State<ApiState>,
    Extension(client): Extension<Client>,
    Path(id): Path<String>,
    body: Result<Json<CreateCommand>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) =
        body.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.body_text()))?;
    let cabinet = parse_cabinet(&id)?;
    let Some(snapshot) = st.fleet.get(cabinet.clone()).await else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("unknown cabinet {cabinet}"),
        ));
    };
    if let ActionSpec::Unlock { compartment } = &body.action {
        if !snapshot.compartments.is_empty()
            && !snapshot.compartments.iter().any(|c| c.id == *compartment)
        {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "unknown_compartment",
                format!("cabinet {cabinet} has no compartment {compartment}"),
            ));
        }
    }
    let rec = st
        .commands
        .create(NewCommand {
            cabinet,
            action: body.action,
            ttl_ms: body.ttl_ms,
            created_by: client.0,
        })
        .await?;
    let wait = body.wait_ms.min(st.cfg.max_wait_ms);
    if wait == 0 {
        return Ok((StatusCode::ACCEPTED, Json(rec)).into_response());
    }
    let rec = st
        .commands
        .wait(rec.id, Duration::from_millis(wait))
        .await?
        .unwrap_or(rec);
    let status = if rec.outcome.is_some() {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((status, Json(rec)).into_response())
}

fn parse_command(id: &str) -> Result<CommandId, ApiError> {
    id.parse().map_err(|e: locker_schemas::IdError| {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_command_id", e.to_string())
    })
}

async fn get_command(
    State(st): State<ApiState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let id = parse_command(&id)?;
    match st.commands.get(id).await? {
        Some(r) => Ok(Json(r)),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("unknown command {id}"),
        )),
    }
}

async fn cancel_command(
    State(st): State<ApiState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let id = parse_command(&id)?;
    Ok(Json(st.commands.cancel(id).await?))
}
