//! Liveness and readiness (no token): `GET /healthz` answers 200 while the process serves
//! HTTP; `GET /readyz` answers 200 when storage is writable (the last group commit succeeded
//! and a probe write and flush succeeds now), the broker link is alive and ingest lag is under
//! `[ingest] ready_max_lag_ms`, else 503; both with a JSON body naming
//! every check, e.g. `{"ready": false, "failing": ["storage"], "checks": [...]}`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use std::time::Duration;

use super::ApiState;
use crate::store;

/// The health routes.
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

/// How long the storage probe may take before storage counts as failing.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

async fn readyz(State(st): State<ApiState>) -> impl IntoResponse {
    let mut checks = st.ingest.checks();
    // storage is also probed directly, so a failure shows while ingest is idle
    let s = st.store.clone();
    let probe =
        tokio::time::timeout(PROBE_TIMEOUT, store::blocking(move || s.probe_writable())).await;
    let failed = match probe {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some(format!("a write and flush took over {PROBE_TIMEOUT:?}")),
    };
    if let (Some(detail), Some(c)) = (failed, checks.iter_mut().find(|c| c.name == "storage")) {
        if c.ok {
            c.ok = false;
            c.detail = detail;
        }
    }
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
