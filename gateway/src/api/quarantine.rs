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
use axum::routing::get;
use axum::{Json, Router};

use serde_json::{json, Value};

use super::{parse_cabinet, ApiError, ApiState};
use crate::store::{self, QuarantineRecord};

/// The quarantine routes.
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v1/quarantine", get(fleet))
        .route("/v1/cabinets/{id}/quarantine", get(cabinet))
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

fn record_json(r: &QuarantineRecord) -> Value {
    json!({
        "id": r.id, "cabinet": r.cabinet, "position": r.position, "boot": r.boot, "seq": r.seq,
        "version": r.version, "reason": r.reason, "detail": r.detail, "topic": r.topic,
        "received_at": r.received_at, "size": r.raw.len(), "raw_hex": hex(&r.raw),
    })
}

fn page(recs: &[QuarantineRecord]) -> Value {
    json!({
        "records": recs.iter().map(record_json).collect::<Vec<_>>(),
        "next_after": recs.last().map(|r| r.id),
    })
}

async fn fleet(
    State(st): State<ApiState>,
    Query(q): Query<super::PageQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let limit = q.limit();
    let s = st.store.clone();
    let recs = store::blocking(move || s.quarantine().page(q.after, limit)).await?;
    Ok(Json(page(&recs)))
}

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
