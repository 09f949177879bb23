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
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::openapi::{CabinetIdDoc, CommandIdDoc, ErrorBody};
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

/// The command routes (operator).
pub(super) fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(create_command))
        .routes(routes!(get_command))
        .routes(routes!(cancel_command))
}

/// A new command for a cabinet.
#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct CreateCommand {
    action: ActionSpec,
    /// How long the command may wait for its cabinet, ms (default `commands.default_ttl_ms`,
    /// at most `commands.max_ttl_ms`).
    ttl_ms: Option<u32>,
    /// Wait up to this long for the outcome before answering, ms (at most `api.max_wait_ms`).
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

/// Queues a command for a cabinet (unlock, unlock all, set config, power save, reboot, sync
/// credentials); it is delivered when the cabinet is online and ends in exactly one outcome.
///
/// Scopes: operator. 202 while the outcome is pending (poll `GET /v1/commands/{id}`), 200
/// with the outcome when it came within `wait_ms`.
#[utoipa::path(post, path = "/v1/cabinets/{id}/commands", tag = "commands",
    params(("id" = CabinetIdDoc, Path, description = "The cabinet.")),
    request_body = CreateCommand,
    responses((status = 200, description = "The command with its outcome.", body = CommandRecord),
        (status = 202, description = "The command, queued or sent, without an outcome yet.", body = CommandRecord),
        (status = 400, description = "`bad_request`, `bad_cabinet_id`, `unknown_compartment`, `bad_ttl` or `bad_config`.", body = ErrorBody),
        (status = 403, description = "`forbidden`: not an operator token.", body = ErrorBody),
        (status = 404, description = "`not_found`: the gateway does not know the cabinet.", body = ErrorBody),
        (status = 413, description = "`too_large`: the encoded command exceeds what a cabinet accepts.", body = ErrorBody),
        (status = 500, description = "`storage`.", body = ErrorBody),
        (status = 503, description = "`shutting_down`.", body = ErrorBody)))]
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

/// A command's record: its state, sends and one outcome.
///
/// Scopes: operator.
#[utoipa::path(get, path = "/v1/commands/{id}", tag = "commands",
    params(("id" = CommandIdDoc, Path, description = "The command.")),
    responses((status = 200, description = "The command.", body = CommandRecord),
        (status = 400, description = "`bad_command_id`: not a ULID.", body = ErrorBody),
        (status = 403, description = "`forbidden`: not an operator token.", body = ErrorBody),
        (status = 404, description = "`not_found`.", body = ErrorBody),
        (status = 500, description = "`storage`.", body = ErrorBody)))]
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

/// Cancels a command.
///
/// A queued command ends `cancelled` (200); a sent one is no longer resent and keeps waiting
/// for the cabinet's outcome (202 with `cancel_requested_at` set). Scopes: operator.
#[utoipa::path(post, path = "/v1/commands/{id}/cancel", tag = "commands",
    params(("id" = CommandIdDoc, Path, description = "The command.")),
    responses((status = 200, description = "The command, now `cancelled`.", body = CommandRecord),
        (status = 202, description = "The command was already sent: no more resends, its outcome is still the cabinet's (`cancel_requested_at` is set).", body = CommandRecord),
        (status = 400, description = "`bad_command_id`: not a ULID.", body = ErrorBody),
        (status = 403, description = "`forbidden`: not an operator token.", body = ErrorBody),
        (status = 404, description = "`not_found`.", body = ErrorBody),
        (status = 409, description = "`conflict`: the command already has its outcome.", body = ErrorBody)))]
pub(super) async fn cancel_command(
    State(st): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_command(&id)?;
    Ok(record(st.commands.cancel(id).await?))
}
