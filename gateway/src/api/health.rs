//! Liveness and readiness (no token): `GET /healthz` answers 200 while the process serves
//! HTTP; `GET /readyz` answers 200 when storage is writable, the broker link is alive and
//! ingest lag is under `[ingest] ready_max_lag_ms`, else 503; both with a JSON body naming
//! every check, e.g. `{"ready": false, "failing": ["storage"], "checks": [...]}`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use super::ApiState;

/// The health routes.
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

async fn readyz(State(st): State<ApiState>) -> impl IntoResponse {
    let checks = st.ingest.checks();
    let failing: Vec<&str> = checks.iter().filter(|c| !c.ok).map(|c| c.name).collect();
    let status = if failing.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({"ready": failing.is_empty(), "failing": failing, "checks": checks})),
    )
}
