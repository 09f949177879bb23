//! Liveness and readiness (no token): `GET /healthz` answers 200 while the process serves
//! HTTP; `GET /readyz` answers 200 when storage is writable (the last group commit succeeded
//! and a probe write and flush succeeds now), the broker link is alive and ingest lag is under
//! `[ingest] ready_max_lag_ms` (and, in cluster mode, the node is connected to NATS and the
//! uplink stream takes writes), else 503; both with a JSON body naming
//! every check, e.g. `{"ready": false, "failing": ["storage"], "checks": [...]}`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde::Serialize;
use std::time::Duration;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::ApiState;
use crate::store;

/// The health routes.
pub fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
}

/// `GET /healthz`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Health {
    /// Always `ok`.
    #[schema(example = "ok")]
    status: &'static str,
}

/// One readiness check (`storage`, `broker`, `ingest_lag`, ...).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[allow(dead_code)] // the schema of `crate::ingest::Check`
struct ReadyCheck {
    name: String,
    ok: bool,
    /// Why it fails, or what it measured.
    detail: String,
}

/// `GET /readyz`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Ready {
    ready: bool,
    /// The names of the failing checks.
    failing: Vec<&'static str>,
    #[schema(value_type = Vec<ReadyCheck>)]
    checks: Vec<crate::ingest::Check>,
}

/// Liveness: 200 while the process serves HTTP.
///
/// No token.
#[utoipa::path(get, path = "/healthz", tag = "health", security(()),
    responses((status = 200, description = "The process serves HTTP.", body = Health)))]
async fn healthz() -> impl IntoResponse {
    Json(Health { status: "ok" })
}

/// How long the storage probe may take before storage counts as failing.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Readiness: storage writable, broker link alive, ingest lag under `[ingest] ready_max_lag_ms`.
///
/// No token.
#[utoipa::path(get, path = "/readyz", tag = "health", security(()),
    responses((status = 200, description = "Ready: every check passes.", body = Ready),
        (status = 503, description = "Not ready: `failing` names the checks that fail.", body = Ready)))]
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
    if let Some(m) = &st.cluster {
        checks.push(cluster_check(m));
    }
    let failing: Vec<&str> = checks.iter().filter(|c| !c.ok).map(|c| c.name).collect();
    let status = if failing.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(Ready {
            ready: failing.is_empty(),
            failing,
            checks,
        }),
    )
}

/// Cluster mode: connected to NATS and the uplink stream taking writes (a node that cannot
/// write to the stream acknowledges nothing: a load balancer should send cabinets elsewhere).
fn cluster_check(m: &crate::cluster::ClusterMetrics) -> crate::ingest::Check {
    let connected = m.connected.get() == 1;
    let writing = m.journal_failing.get() == 0;
    let detail = match (connected, writing) {
        (true, true) => "connected to NATS; the uplink stream takes writes".to_owned(),
        (false, _) => "not connected to NATS".to_owned(),
        (true, false) => "the uplink stream refuses writes (no quorum?)".to_owned(),
    };
    crate::ingest::Check {
        name: "cluster",
        ok: connected && writing,
        detail,
    }
}
