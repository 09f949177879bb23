//! The alert routes: `GET /v1/alerts` (active and history, filtered by state, site, cabinet,
//! kind and severity, newest first, paged by `before`), `GET /v1/alerts/{id}` and
//! `POST /v1/alerts/{id}/ack`. Operators see every alert, site managers those of their sites,
//! carriers none.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::openapi::ErrorBody;
use super::{parse_cabinet, ApiError, ApiState};
use crate::parcels::{Caller, Scope};
use crate::rules::{Alert, AlertFilter, AlertKind, RulesError, Severity};

/// The alert routes.
pub(super) fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(get_one))
        .routes(routes!(ack))
}

/// Whether an alert is still on.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)] // the schema of what `alert_json` adds
enum AlertState {
    Active,
    Cleared,
}

/// An alert as the API shows it ([`alert_json`]): its fields and `state`.
#[derive(Serialize, utoipa::ToSchema)]
#[allow(dead_code)] // the schema of `alert_json`'s value
struct AlertJson {
    #[serde(flatten)]
    alert: Alert,
    state: AlertState,
}

/// `GET /v1/alerts`.
#[derive(Serialize, utoipa::ToSchema)]
#[allow(dead_code)] // the schema of `list`'s value
struct AlertList {
    /// Newest first.
    alerts: Vec<AlertJson>,
    /// The `before` of the next page (null on the last page).
    next_before: Option<String>,
}

impl From<RulesError> for ApiError {
    fn from(e: RulesError) -> Self {
        match e {
            RulesError::NotFound(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "not_found", e.to_string())
            }
            RulesError::Store(_) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "storage", e.to_string())
            }
            RulesError::Closed => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                e.to_string(),
            ),
        }
    }
}

/// An alert as the API shows it: its fields and `state` (`active` or `cleared`).
pub fn alert_json(a: &Alert) -> Value {
    let mut v = serde_json::to_value(a).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut v {
        m.insert(
            "state".into(),
            json!(if a.is_active() { "active" } else { "cleared" }),
        );
    }
    v
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    /// `active` (default), `cleared` or `all`.
    #[param(pattern = "^(active|cleared|all)$")]
    state: Option<String>,
    /// Only this site's alerts.
    site: Option<String>,
    /// Only this cabinet's alerts.
    cabinet: Option<String>,
    /// Only this kind (an `AlertKind`).
    kind: Option<String>,
    /// Only this severity: `critical`, `warning` or `info`.
    severity: Option<String>,
    /// Only alerts raised before this alert id (the previous page's `next_before`).
    before: Option<String>,
    /// Alerts at most, 1 to 1,000 (default 100).
    limit: Option<usize>,
}

fn bad(code: &'static str, msg: String) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, code, msg)
}

/// What the caller may see; `Err` for carriers.
fn scope_filter(caller: &Caller, f: &mut AlertFilter) -> Result<(), ApiError> {
    match &caller.scope {
        Scope::Operator => Ok(()),
        Scope::SiteManager { sites } => {
            f.sites_in = Some(sites.clone());
            Ok(())
        }
        Scope::Carrier { .. } => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "alerts are for operators and site managers",
        )),
    }
}

fn visible(caller: &Caller, a: &Alert) -> bool {
    match &caller.scope {
        Scope::Operator => true,
        Scope::SiteManager { sites } => a.site.as_ref().is_some_and(|s| sites.contains(s)),
        Scope::Carrier { .. } => false,
    }
}

/// Alerts, newest first: active (default), cleared or all, filtered.
///
/// Scopes: operator (all), site manager (its sites); carriers get 403.
#[utoipa::path(get, path = "/v1/alerts", tag = "alerts",
    params(ListQuery),
    responses((status = 200, description = "A page of alerts.", body = AlertList),
        (status = 400, description = "`bad_query` or `bad_cabinet_id`.", body = ErrorBody),
        (status = 403, description = "`forbidden`: a carrier token.", body = ErrorBody),
        (status = 500, description = "`storage`.", body = ErrorBody),
        (status = 503, description = "`unavailable`.", body = ErrorBody)))]
async fn list(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = q.map_err(|e| bad("bad_query", e.body_text()))?;
    let active = match q.state.as_deref().unwrap_or("active") {
        "active" => Some(true),
        "cleared" => Some(false),
        "all" => None,
        other => {
            return Err(bad(
                "bad_query",
                format!("state {other:?}: use active, cleared or all"),
            ))
        }
    };
    let mut f = AlertFilter {
        active,
        limit: q.limit.unwrap_or(100).clamp(1, 1_000),
        before: q.before,
        ..AlertFilter::default()
    };
    if let Some(s) = q.site {
        f.site = Some(
            s.parse()
                .map_err(|e: locker_schemas::SlugError| bad("bad_query", e.to_string()))?,
        );
    }
    if let Some(c) = q.cabinet {
        f.cabinet = Some(parse_cabinet(&c)?);
    }
    if let Some(k) = q.kind {
        f.kind = Some(AlertKind::parse(&k).ok_or_else(|| {
            let all: Vec<&str> = AlertKind::ALL.iter().map(|k| k.as_str()).collect();
            bad(
                "bad_query",
                format!("kind {k:?}: one of {}", all.join(", ")),
            )
        })?);
    }
    if let Some(s) = q.severity {
        f.severity = Some(Severity::parse(&s).ok_or_else(|| {
            bad(
                "bad_query",
                format!("severity {s:?}: one of critical, warning, info"),
            )
        })?);
    }
    scope_filter(&caller, &mut f)?;
    let limit = f.limit;
    let alerts = st.rules.list(f).await?;
    let next = (alerts.len() == limit)
        .then(|| alerts.last().map(|a| a.id.clone()))
        .flatten();
    Ok(Json(json!({
        "alerts": alerts.iter().map(alert_json).collect::<Vec<_>>(),
        "next_before": next,
    })))
}

/// One alert.
///
/// Scopes: operator, site manager (its sites; others are `not_found`); carriers get 403.
#[utoipa::path(get, path = "/v1/alerts/{id}", tag = "alerts",
    params(("id" = String, Path, description = "The alert (`ALR-<ulid>`).")),
    responses((status = 200, description = "The alert.", body = AlertJson),
        (status = 403, description = "`forbidden`: a carrier token.", body = ErrorBody),
        (status = 404, description = "`not_found`.", body = ErrorBody)))]
async fn get_one(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    scope_filter(&caller, &mut AlertFilter::default())?;
    let a = st.rules.get(id.clone()).await?;
    if !visible(&caller, &a) {
        return Err(RulesError::NotFound(id).into());
    }
    Ok(Json(alert_json(&a)))
}

/// `POST /v1/alerts/{id}/ack` (the body is optional).
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct AckBody {
    /// At most 1,000 characters.
    #[serde(default)]
    note: Option<String>,
}

/// Acknowledges an alert (a one-shot alert clears when acknowledged).
///
/// Scopes: operator, site manager (its sites); carriers get 403.
#[utoipa::path(post, path = "/v1/alerts/{id}/ack", tag = "alerts",
    params(("id" = String, Path, description = "The alert (`ALR-<ulid>`).")),
    request_body(content = Option<AckBody>, description = "Optional: `{\"note\": \"...\"}`."),
    responses((status = 200, description = "The alert, acknowledged.", body = AlertJson),
        (status = 400, description = "`bad_request`: the body does not parse, or the note is too long.", body = ErrorBody),
        (status = 403, description = "`forbidden`: a carrier token.", body = ErrorBody),
        (status = 404, description = "`not_found`.", body = ErrorBody)))]
async fn ack(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    scope_filter(&caller, &mut AlertFilter::default())?;
    // the body is optional: `{"note": "..."}`
    let body: AckBody = if body.iter().all(u8::is_ascii_whitespace) {
        AckBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| bad("bad_request", format!("body: {e}")))?
    };
    if body.note.as_ref().is_some_and(|n| n.len() > 1_000) {
        return Err(bad("bad_request", "note: at most 1000 characters".into()));
    }
    // a site manager acknowledges only what it may see
    let a = st.rules.get(id.clone()).await?;
    if !visible(&caller, &a) {
        return Err(RulesError::NotFound(id).into());
    }
    let a = st.rules.ack(id, caller.client.clone(), body.note).await?;
    Ok(Json(alert_json(&a)))
}
