//! The cabinet routes: the fleet's snapshots, each cabinet's audit log and its recent
//! commands, answered with typed response structs (the JSON names of [`crate::json`]).
//!
//! The list of every cabinet is for operators ([`routes`], behind the operator guard); one
//! cabinet, its events and its commands are also for the site manager of the cabinet's site
//! ([`site_routes`], checked here: a cabinet at another site is 404, a carrier gets 403).

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use locker_schemas::{codec, CabinetId};
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::openapi::{AnyObjectDoc, CabinetIdDoc, ErrorBody};
use super::{parse_cabinet, ApiError, ApiState};
use crate::audit::EventJson;
use crate::commands::CommandRecord;
use crate::model::CabinetSnapshot;
use crate::parcels::{Caller, Scope};
use crate::store;

/// The cabinet routes for operators only.
pub(super) fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new().routes(routes!(list_cabinets))
}

/// The cabinet routes for operators and the site manager of the cabinet's site.
pub(super) fn site_routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(get_cabinet))
        .routes(routes!(cabinet_events))
        .routes(routes!(cabinet_commands))
}

/// Lets an operator through, and a site manager for a cabinet at one of its sites (another
/// cabinet is `404 not_found`, so ids cannot be probed); a carrier gets `403 forbidden`.
async fn in_scope(st: &ApiState, caller: &Caller, id: &CabinetId) -> Result<(), ApiError> {
    match &caller.scope {
        Scope::Operator => Ok(()),
        Scope::SiteManager { .. } => {
            match st.parcels.cabinet_site(id.clone(), caller.clone()).await? {
                Some(_) => Ok(()),
                None => Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    format!("unknown cabinet {id}"),
                )),
            }
        }
        Scope::Carrier { .. } => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this route needs an operator or site manager token (this token's scope is carrier)",
        )),
    }
}

/// `GET /v1/cabinets`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CabinetList {
    pub cabinets: Vec<CabinetSnapshot>,
}

/// `GET /v1/cabinets/{id}/events`: a page of the audit log.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EventsPage {
    #[schema(value_type = CabinetIdDoc)]
    pub cabinet: CabinetId,
    #[schema(value_type = Vec<AnyObjectDoc>)]
    pub events: Vec<serde_json::Value>,
    /// The cursor for the next page (the last audit position in this one).
    pub next_after: Option<u64>,
}

/// A stored event with its audit position (the paging cursor; positions keep increasing
/// across a cabinet's storage lives, while `seq` restarts when its storage is wiped).
#[derive(Debug, Serialize)]
struct Positioned<'a> {
    position: u64,
    #[serde(flatten)]
    event: EventJson<'a>,
}

/// A stored event that no longer decodes (shown, not hidden).
#[derive(Debug, Serialize)]
struct Undecodable {
    position: u64,
    error: String,
}

/// Every cabinet the gateway knows, with its state.
///
/// Scopes: operator.
#[utoipa::path(get, path = "/v1/cabinets", tag = "cabinets",
    responses((status = 200, description = "The fleet.", body = CabinetList),
        (status = 403, description = "`forbidden`: not an operator token.", body = ErrorBody)))]
pub(super) async fn list_cabinets(State(st): State<ApiState>) -> Json<CabinetList> {
    Json(CabinetList {
        cabinets: st.fleet.list().await,
    })
}

/// One cabinet's state: presence, layout and doors, power, network, active alarms.
///
/// Scopes: operator, site manager (the cabinets of its sites).
#[utoipa::path(get, path = "/v1/cabinets/{id}", tag = "cabinets",
    params(("id" = CabinetIdDoc, Path, description = "The cabinet.")),
    responses((status = 200, description = "The cabinet.", body = CabinetSnapshot),
        (status = 400, description = "`bad_cabinet_id`: not a cabinet id.", body = ErrorBody),
        (status = 403, description = "`forbidden`: a carrier token.", body = ErrorBody),
        (status = 404, description = "`not_found`: the gateway does not know the cabinet (or it is not at the site manager's sites).", body = ErrorBody)))]
pub(super) async fn get_cabinet(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<CabinetSnapshot>, ApiError> {
    let id = parse_cabinet(&id)?;
    in_scope(&st, &caller, &id).await?;
    match st.fleet.get(id.clone()).await {
        Some(c) => Ok(Json(c)),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("unknown cabinet {id}"),
        )),
    }
}

/// A page of a cabinet's audit log (every stored uplink, oldest first).
///
/// Scopes: operator, site manager (the cabinets of its sites). Page with `after` = the
/// previous page's `next_after`.
#[utoipa::path(get, path = "/v1/cabinets/{id}/events", tag = "cabinets",
    params(("id" = CabinetIdDoc, Path, description = "The cabinet."), super::PageQuery),
    responses((status = 200, description = "A page of events.", body = EventsPage),
        (status = 400, description = "`bad_cabinet_id`: not a cabinet id.", body = ErrorBody),
        (status = 403, description = "`forbidden`: a carrier token.", body = ErrorBody),
        (status = 404, description = "`not_found`: the cabinet is not at the site manager's sites.", body = ErrorBody),
        (status = 500, description = "`storage`: the audit log could not be read.", body = ErrorBody)))]
pub(super) async fn cabinet_events(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(q): Query<super::PageQuery>,
) -> Result<Json<EventsPage>, ApiError> {
    let id = parse_cabinet(&id)?;
    in_scope(&st, &caller, &id).await?;
    let limit = q.limit();
    let store = st.store.clone();
    let cab = id.clone();
    let rows = store::blocking(move || store.events_page(&cab, q.after, limit)).await?;
    let mut events = Vec::with_capacity(rows.len());
    for (position, raw) in &rows {
        let v = match codec::decode_uplink(raw) {
            Ok(u) => serde_json::to_value(Positioned {
                position: *position,
                event: EventJson::new(&u),
            }),
            Err(e) => serde_json::to_value(Undecodable {
                position: *position,
                error: e.to_string(),
            }),
        };
        events.push(v.unwrap_or(serde_json::Value::Null));
    }
    Ok(Json(EventsPage {
        cabinet: id,
        events,
        next_after: rows.last().map(|(s, _)| *s),
    }))
}

/// `GET /v1/cabinets/{id}/commands`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CommandList {
    /// Newest first.
    pub commands: Vec<CommandRecord>,
}

/// `?limit=` of `GET /v1/cabinets/{id}/commands`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct RecentQuery {
    /// Commands at most, 1 to 500 (default 50).
    #[serde(default)]
    #[param(minimum = 1, maximum = 500)]
    limit: Option<usize>,
}

/// A cabinet's most recent commands with their state and outcome, newest first (remote
/// opens, override opens, rule actions, raw commands).
///
/// Scopes: operator, site manager (the cabinets of its sites).
#[utoipa::path(get, path = "/v1/cabinets/{id}/commands", tag = "cabinets",
    params(("id" = CabinetIdDoc, Path, description = "The cabinet."), RecentQuery),
    responses((status = 200, description = "The commands, newest first.", body = CommandList),
        (status = 400, description = "`bad_cabinet_id`: not a cabinet id.", body = ErrorBody),
        (status = 403, description = "`forbidden`: a carrier token.", body = ErrorBody),
        (status = 404, description = "`not_found`: the cabinet is not at the site manager's sites.", body = ErrorBody),
        (status = 500, description = "`storage`.", body = ErrorBody),
        (status = 503, description = "`shutting_down`.", body = ErrorBody)))]
pub(super) async fn cabinet_commands(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(q): Query<RecentQuery>,
) -> Result<Json<CommandList>, ApiError> {
    let id = parse_cabinet(&id)?;
    in_scope(&st, &caller, &id).await?;
    let limit = q.limit.unwrap_or(50).clamp(1, store::commands::RECENT_MAX);
    Ok(Json(CommandList {
        commands: st.commands.recent(id, limit).await?,
    }))
}
