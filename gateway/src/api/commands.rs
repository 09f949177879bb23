//! The command routes: create (`POST /v1/cabinets/{id}/commands`), read
//! (`GET /v1/commands/{id}`) and cancel (`POST /v1/commands/{id}/cancel`), and how command
//! errors map to HTTP (`too_large` 413, `bad_config` / `bad_ttl` 400, ...).

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use locker_schemas::CommandId;
use serde::Deserialize;

use super::{parse_cabinet, ApiError, ApiState, Client};
use crate::commands::{ActionSpec, CommandError, CommandRecord, NewCommand};

impl From<CommandError> for ApiError {
    fn from(e: CommandError) -> Self {
        let (status, code) = match &e {
            CommandError::Ttl { .. } => (StatusCode::BAD_REQUEST, "bad_ttl"),
            CommandError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            CommandError::BadConfig(_) => (StatusCode::BAD_REQUEST, "bad_config"),
            CommandError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            CommandError::Finished(_) => (StatusCode::CONFLICT, "conflict"),
            CommandError::Store(_) | CommandError::GroupCommit(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "storage")
            }
            CommandError::Closed => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
        };
        ApiError::new(status, code, e.to_string())
    }
}

#[derive(Deserialize)]
pub(super) struct CreateCommand {
    action: ActionSpec,
    ttl_ms: Option<u32>,
    /// Wait up to this long for the outcome before answering.
    #[serde(default)]
    wait_ms: u64,
}

/// 200 with a final record, 202 while it waits for its outcome.
fn record(rec: CommandRecord) -> Response {
    let status = if rec.outcome.is_some() {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    (status, Json(rec)).into_response()
}

pub(super) async fn create_command(
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
    let new = NewCommand {
        id: None,
        cabinet,
        action: body.action,
        ttl_ms: body.ttl_ms,
        created_by: client.0,
    };
    let wait = body.wait_ms.min(st.cfg.max_wait_ms);
    if wait == 0 {
        let rec = st.commands.create(new).await?;
        return Ok((StatusCode::ACCEPTED, Json(rec)).into_response());
    }
    // the waiter goes with the command: no second round trip to the dispatcher
    let rec = st
        .commands
        .create_and_wait(new, Duration::from_millis(wait))
        .await?;
    Ok(record(rec))
}

fn parse_command(id: &str) -> Result<CommandId, ApiError> {
    id.parse().map_err(|e: locker_schemas::IdError| {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_command_id", e.to_string())
    })
}

pub(super) async fn get_command(
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

/// A queued command ends `cancelled` (200); a sent one is no longer resent and keeps waiting
/// for the cabinet's outcome (202 with `cancel_requested_at` set).
pub(super) async fn cancel_command(
    State(st): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_command(&id)?;
    Ok(record(st.commands.cancel(id).await?))
}
