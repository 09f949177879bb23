//! The quarantine API (bearer token): uplinks ingest kept but could not accept as they are,
//! with the reason, the raw bytes (hex), the topic, the time and, when the envelope head was
//! readable, the boot, seq and audit position the event occupies.
//!
//! - `GET /v1/quarantine?after=ID&limit=N`: fleet-wide, oldest first;
//! - `GET /v1/cabinets/{id}/quarantine?after=ID&limit=N`: one cabinet.
//!
//! Page with `next_after` (null when the page is empty).

use axum::extract::{Path, Query, State};
use axum::response::IntoResponse;
use axum::Json;
use locker_schemas::{CabinetId, Millis};
use serde::Serialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::openapi::{CabinetIdDoc, ErrorBody};
use super::{parse_cabinet, ApiError, ApiState};
use crate::store::{self, QuarantineRecord};

/// The quarantine routes.
pub fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(fleet))
        .routes(routes!(cabinet))
}

fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(HEX[usize::from(b >> 4)]));
        s.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    s
}

/// One quarantined uplink as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct QuarantineEntry {
    /// The record's id (the paging cursor).
    id: u64,
    /// The cabinet of the topic it arrived on; null for a topic that is no cabinet uplink.
    #[schema(value_type = Option<CabinetIdDoc>)]
    cabinet: Option<CabinetId>,
    /// Its place in the cabinet's audit log, if its envelope head was readable.
    position: Option<u64>,
    boot: Option<u32>,
    seq: Option<u64>,
    /// The schema version the envelope claims, if readable.
    version: Option<u64>,
    /// A stable short reason (`version`, `malformed`, `foreign`, `kind_mismatch`, ...).
    reason: String,
    /// The decoder's message.
    detail: String,
    topic: String,
    /// Gateway clock at receipt, ms since the epoch.
    received_at: Millis,
    /// The payload's size, bytes.
    size: usize,
    /// The payload, lowercase hex.
    raw_hex: String,
}

impl From<&QuarantineRecord> for QuarantineEntry {
    fn from(r: &QuarantineRecord) -> Self {
        Self {
            id: r.id,
            cabinet: r.cabinet.clone(),
            position: r.position,
            boot: r.boot,
            seq: r.seq,
            version: r.version,
            reason: r.reason.clone(),
            detail: r.detail.clone(),
            topic: r.topic.clone(),
            received_at: r.received_at,
            size: r.raw.len(),
            raw_hex: hex(&r.raw),
        }
    }
}

/// A page of quarantined uplinks, oldest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct QuarantinePage {
    records: Vec<QuarantineEntry>,
    /// The cursor of the next page (null when this page is empty).
    next_after: Option<u64>,
}

fn page(recs: &[QuarantineRecord]) -> QuarantinePage {
    QuarantinePage {
        records: recs.iter().map(QuarantineEntry::from).collect(),
        next_after: recs.last().map(|r| r.id),
    }
}

/// Quarantined uplinks of the whole fleet, oldest first.
///
/// Scopes: operator.
#[utoipa::path(get, path = "/v1/quarantine", tag = "quarantine",
    params(super::PageQuery),
    responses((status = 200, description = "A page of quarantined uplinks.", body = QuarantinePage),
        (status = 403, description = "`forbidden`: not an operator token.", body = ErrorBody),
        (status = 500, description = "`storage`.", body = ErrorBody)))]
async fn fleet(
    State(st): State<ApiState>,
    Query(q): Query<super::PageQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let limit = q.limit();
    let s = st.store.clone();
    let recs = store::blocking(move || s.quarantine().page(q.after, limit)).await?;
    Ok(Json(page(&recs)))
}

/// One cabinet's quarantined uplinks, oldest first.
///
/// Scopes: operator.
#[utoipa::path(get, path = "/v1/cabinets/{id}/quarantine", tag = "quarantine",
    params(("id" = CabinetIdDoc, Path, description = "The cabinet."), super::PageQuery),
    responses((status = 200, description = "A page of quarantined uplinks.", body = QuarantinePage),
        (status = 400, description = "`bad_cabinet_id`: not a cabinet id.", body = ErrorBody),
        (status = 403, description = "`forbidden`: not an operator token.", body = ErrorBody),
        (status = 500, description = "`storage`.", body = ErrorBody)))]
async fn cabinet(
    State(st): State<ApiState>,
    Path(id): Path<String>,
    Query(q): Query<super::PageQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let id = parse_cabinet(&id)?;
    let limit = q.limit();
    let s = st.store.clone();
    let recs = store::blocking(move || s.quarantine().cabinet_page(&id, q.after, limit)).await?;
    Ok(Json(page(&recs)))
}

#[cfg(test)]
mod tests {
    #[test]
    fn hex_is_lowercase_pairs() {
        assert_eq!(super::hex(&[0x00, 0xff, 0x13]), "00ff13");
    }
}
