//! The cabinet routes: the fleet's snapshots and each cabinet's audit log, answered with
//! typed response structs (the JSON names of [`crate::json`]).

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use locker_schemas::{codec, CabinetId};
use serde::Serialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::openapi::{AnyObjectDoc, CabinetIdDoc, ErrorBody};
use super::{parse_cabinet, ApiError, ApiState};
use crate::audit::EventJson;
use crate::model::CabinetSnapshot;
use crate::store;

/// The cabinet routes (operator).
pub(super) fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(list_cabinets))
        .routes(routes!(get_cabinet))
        .routes(routes!(cabinet_events))
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
/// Scopes: operator.
#[utoipa::path(get, path = "/v1/cabinets/{id}", tag = "cabinets",
    params(("id" = CabinetIdDoc, Path, description = "The cabinet.")),
    responses((status = 200, description = "The cabinet.", body = CabinetSnapshot),
        (status = 400, description = "`bad_cabinet_id`: not a cabinet id.", body = ErrorBody),
        (status = 403, description = "`forbidden`: not an operator token.", body = ErrorBody),
        (status = 404, description = "`not_found`: the gateway does not know the cabinet.", body = ErrorBody)))]
pub(super) async fn get_cabinet(
    State(st): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<CabinetSnapshot>, ApiError> {
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

/// A page of a cabinet's audit log (every stored uplink, oldest first).
///
/// Scopes: operator. Page with `after` = the previous page's `next_after`.
#[utoipa::path(get, path = "/v1/cabinets/{id}/events", tag = "cabinets",
    params(("id" = CabinetIdDoc, Path, description = "The cabinet."), super::PageQuery),
    responses((status = 200, description = "A page of events.", body = EventsPage),
        (status = 400, description = "`bad_cabinet_id`: not a cabinet id.", body = ErrorBody),
        (status = 403, description = "`forbidden`: not an operator token.", body = ErrorBody),
        (status = 500, description = "`storage`: the audit log could not be read.", body = ErrorBody)))]
pub(super) async fn cabinet_events(
    State(st): State<ApiState>,
    Path(id): Path<String>,
    Query(q): Query<super::PageQuery>,
) -> Result<Json<EventsPage>, ApiError> {
    let id = parse_cabinet(&id)?;
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
