//! `GET /v1/audit/export?site=&cabinet=&from=&to=&format=ndjson|csv&kinds=`: every door
//! opening, access, order transition, override, command outcome and alert of a period, with who
//! and why, for a site, a cabinet or the fleet, as one stream ordered by time ([`merge`]).
//!
//! It streams: a producer on `spawn_blocking` reads the stores page by page ([`sources`]),
//! encodes ([`record`]) into chunks of about 64 KiB and sends them through a bounded channel
//! into the response body; memory stays bounded whatever the period (a fixed budget of buffered
//! log entries shared by the cabinets, a few chunks in flight). A client that goes away drops
//! the body, the channel closes and the producer stops. A storage error mid-stream aborts the
//! response (no terminating chunk), so a cut export is never mistaken for a whole one.
//!
//! Scope: an operator sees everything; a site manager its sites (a `site=` outside them is
//! 403); a carrier only the parcel-trail records of its own orders (no cabinet events, no
//! alerts). Counted in `locker_api_exports_total{result}` and
//! `locker_api_export_records_total{format}`.

mod merge;
mod record;
mod sources;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use locker_schemas::{now_millis, CabinetId, Millis, OrderId, SiteId};
use serde::Deserialize;
use tokio::sync::mpsc;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::openapi::ErrorBody;
use super::{parse_cabinet, ApiError, ApiState};
use crate::metrics::Metrics;
use crate::parcels::{Caller, Scope};
use crate::store::parcels::{ParcelStore, SledParcels};
use crate::store::{self, Store, StoreError};
use merge::{Merge, Source};
use record::{Category, Encoder, ExportRecord, Format};
use sources::{AlertHistory, CabinetLog, ParcelTrail, Window};

/// The export route.
pub(super) fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new().routes(routes!(export))
}

/// Bytes per chunk sent to the client.
const CHUNK: usize = 64 * 1024;
/// Chunks in flight between the producer and the connection.
const IN_FLIGHT: usize = 4;
/// Log entries buffered across all cabinets' pages at most.
const ENTRY_BUDGET: usize = 65_536;
/// Orders whose tracking number is remembered while exporting.
const ORDER_CACHE: usize = 4_096;
const DAY_MS: u64 = 24 * 60 * 60 * 1000;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ExportQuery {
    /// Only this site (a site manager: one of its sites).
    site: Option<String>,
    /// Only this cabinet.
    cabinet: Option<String>,
    /// Start of the period (inclusive): RFC 3339 or ms since the epoch; default 24 h before `to`.
    from: Option<String>,
    /// End of the period (exclusive): RFC 3339 or ms since the epoch; default now.
    to: Option<String>,
    /// `ndjson` (default) or `csv` (also `Accept: text/csv`).
    #[param(pattern = "^(ndjson|csv)$")]
    format: Option<String>,
    /// Comma-separated groups: door, access, order, override, alert, command, admin.
    kinds: Option<String>,
}

fn bad(msg: String) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad_query", msg)
}

/// RFC 3339, or ms since the epoch.
fn parse_time(name: &str, s: &str) -> Result<Millis, ApiError> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse()
            .map_err(|_| bad(format!("{name}={s:?}: too large")));
    }
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|e| {
            bad(format!(
                "{name}={s:?}: not RFC 3339 nor ms since the epoch ({e})"
            ))
        })?;
    u64::try_from(t.unix_timestamp_nanos() / 1_000_000)
        .map_err(|_| bad(format!("{name}={s:?}: before 1970")))
}

/// `20240131T120000Z`, for the file name.
fn compact(at: Millis) -> String {
    record::utc(at)
        .chars()
        .filter(|c| !matches!(c, '-' | ':'))
        .collect::<String>()
        .split('.')
        .next()
        .map(|s| format!("{}Z", s.trim_end_matches('Z')))
        .unwrap_or_default()
}

/// What one export reads, decided before the response starts.
struct Plan {
    window: Window,
    format: Format,
    /// Cabinets whose logs are read (`None`: every cabinet in the audit log, for an operator's
    /// fleet export).
    cabinets: Option<Vec<CabinetId>>,
    site_of: HashMap<CabinetId, SiteId>,
    parcels: bool,
    alerts: bool,
    scope: Scope,
    site: Option<SiteId>,
    cabinet: Option<CabinetId>,
}

/// Streams every door opening, access, order transition, override, command outcome and alert
/// of a period, with who and why, ordered by time, as NDJSON or CSV (one header line, then the
/// columns `at, at_utc, source, kind, site, cabinet, compartment, order, tracking, carrier,
/// actor, cause, reason, detail`).
///
/// Scopes: operator (everything), site manager (its sites), carrier (its own orders' parcel
/// trail only).
#[utoipa::path(get, path = "/v1/audit/export", tag = "audit",
    params(ExportQuery),
    responses((status = 200, description = "The export, streamed (`application/x-ndjson` or `text/csv`; an attachment).", content_type = "application/x-ndjson", body = String),
        (status = 400, description = "`bad_query`: a time, format or kind that does not parse, or `from` after `to`.", body = ErrorBody),
        (status = 403, description = "`forbidden`: a site outside the token's scope.", body = ErrorBody),
        (status = 404, description = "`not_found`: an unknown site or cabinet.", body = ErrorBody),
        (status = 500, description = "`storage`.", body = ErrorBody)))]
async fn export(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    q: Result<Query<ExportQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    match plan(&st, &caller, &headers, q).await {
        Ok((plan, name)) => start(st, plan, name),
        Err(e) => {
            st.metrics.api.exports.with_label_values(&["refused"]).inc();
            e.into_response()
        }
    }
}

async fn plan(
    st: &ApiState,
    caller: &Caller,
    headers: &HeaderMap,
    q: Result<Query<ExportQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<(Plan, String), ApiError> {
    let Query(q) = q.map_err(|e| bad(e.body_text()))?;
    let now = now_millis();
    let to = match &q.to {
        Some(s) => parse_time("to", s)?,
        None => now,
    };
    let from = match &q.from {
        Some(s) => parse_time("from", s)?,
        None => to.saturating_sub(DAY_MS),
    };
    if from > to {
        return Err(bad(format!("from ({from}) is after to ({to})")));
    }
    let wants_csv = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/csv"));
    let format = match q.format.as_deref() {
        Some("ndjson") => Format::Ndjson,
        Some("csv") => Format::Csv,
        None if wants_csv => Format::Csv,
        None => Format::Ndjson,
        Some(other) => return Err(bad(format!("format={other:?}: use ndjson or csv"))),
    };
    let kinds: BTreeSet<Category> = match q.kinds.as_deref() {
        None | Some("") => Category::ALL.into_iter().collect(),
        Some(list) => list
            .split(',')
            .map(|k| {
                Category::parse(k.trim()).ok_or_else(|| {
                    let all: Vec<&str> = Category::ALL.iter().map(|c| c.as_str()).collect();
                    bad(format!("kinds: {k:?} is not one of {}", all.join(", ")))
                })
            })
            .collect::<Result<_, _>>()?,
    };
    // every site (for the `site` column and the scope checks), read as the gateway
    let all_sites = st
        .parcels
        .sites(Caller {
            client: caller.client.clone(),
            scope: Scope::Operator,
        })
        .await?;
    let mut site_of = HashMap::new();
    let mut site_cabinets: BTreeMap<SiteId, Vec<CabinetId>> = BTreeMap::new();
    for s in &all_sites {
        for c in &s.cabinets {
            site_of.insert(c.clone(), s.id.clone());
        }
        site_cabinets.insert(s.id.clone(), s.cabinets.clone());
    }
    let site = match &q.site {
        None => None,
        Some(s) => {
            let id: SiteId = s
                .parse()
                .map_err(|e: locker_schemas::SlugError| bad(e.to_string()))?;
            if !site_cabinets.contains_key(&id) {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    format!("site {id} not found"),
                ));
            }
            if let Scope::SiteManager { sites } = &caller.scope {
                if !sites.contains(&id) {
                    return Err(ApiError::new(
                        StatusCode::FORBIDDEN,
                        "forbidden",
                        format!("site {id} is not one of this token's sites"),
                    ));
                }
            }
            Some(id)
        }
    };
    let cabinet = match &q.cabinet {
        None => None,
        Some(c) => {
            let id = parse_cabinet(c)?;
            let (s, probe) = (st.store.clone(), id.clone());
            let logged = store::blocking(move || s.audit().first_position(&probe)).await?;
            let visible = match &caller.scope {
                Scope::SiteManager { sites } => site_of.get(&id).is_some_and(|s| sites.contains(s)),
                _ => true,
            };
            if (logged.is_none() && !site_of.contains_key(&id)) || !visible {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    format!("cabinet {id} not found"),
                ));
            }
            Some(id)
        }
    };
    let cabinet_kinds = [
        Category::Door,
        Category::Access,
        Category::Alert,
        Category::Command,
    ];
    let reads_logs = cabinet_kinds.iter().any(|k| kinds.contains(k));
    let cabinets = match (&caller.scope, &cabinet, &site) {
        (Scope::Carrier { .. }, _, _) => Some(Vec::new()),
        _ if !reads_logs => Some(Vec::new()),
        (_, Some(c), _) => Some(vec![c.clone()]),
        (_, None, Some(s)) => Some(site_cabinets.get(s).cloned().unwrap_or_default()),
        (Scope::Operator, None, None) => None,
        (Scope::SiteManager { sites }, None, None) => Some(
            sites
                .iter()
                .filter_map(|s| site_cabinets.get(s))
                .flatten()
                .cloned()
                .collect(),
        ),
    };
    // a cabinet= of another site than site= reads nothing
    let cabinets = cabinets.map(|list| {
        list.into_iter()
            .filter(|c| {
                site.as_ref()
                    .is_none_or(|s| site_of.get(c).is_some_and(|x| x == s))
            })
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>()
    });
    let name = format!(
        "audit-{}-{}-{}.{}",
        site.as_ref()
            .map(ToString::to_string)
            .or_else(|| cabinet.as_ref().map(ToString::to_string))
            .unwrap_or_else(|| "fleet".into()),
        compact(from),
        compact(to),
        format.as_str()
    );
    let plan = Plan {
        window: Window { from, to, kinds },
        format,
        cabinets,
        site_of,
        parcels: true,
        alerts: !matches!(caller.scope, Scope::Carrier { .. }),
        scope: caller.scope.clone(),
        site,
        cabinet,
    };
    Ok((plan, name))
}

fn start(st: ApiState, plan: Plan, name: String) -> Response {
    let format = plan.format;
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(IN_FLIGHT);
    let (store, metrics) = (st.store.clone(), st.metrics.clone());
    tokio::task::spawn_blocking(move || {
        let result = match produce(&store, plan, &tx, &metrics) {
            Ok(true) => "ok",
            Ok(false) => "aborted",
            Err(e) => {
                tracing::warn!(error = %e, "audit export failed mid-stream");
                let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
                "failed"
            }
        };
        metrics.api.exports.with_label_values(&[result]).inc();
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let mut resp = Body::from_stream(stream).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(format.content_type()),
    );
    if let Ok(v) = header::HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    h.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    resp
}

/// Why an export stopped before its end.
#[derive(Debug, thiserror::Error)]
enum ExportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Encode(#[from] record::EncodeError),
}

/// Tracking numbers and carriers of orders, looked up once per order while exporting
/// (forgotten every [`ORDER_CACHE`] orders, so memory stays bounded).
struct Orders {
    store: SledParcels,
    known: HashMap<OrderId, Option<(String, String)>>,
}

impl Orders {
    fn fill(&mut self, r: &mut ExportRecord) -> Result<(), StoreError> {
        if r.tracking.is_some() {
            return Ok(()); // the trail record carries it (records written since issue 11)
        }
        let Some(id) = r.order.as_deref().and_then(|o| o.parse::<OrderId>().ok()) else {
            return Ok(());
        };
        if !self.known.contains_key(&id) {
            if self.known.len() >= ORDER_CACHE {
                self.known.clear();
            }
            let o = self.store.stored_order(id)?;
            self.known
                .insert(id, o.map(|o| (o.tracking, o.carrier.to_string())));
        }
        if let Some(Some((tracking, carrier))) = self.known.get(&id) {
            r.tracking = Some(tracking.clone());
            if r.carrier.is_none() {
                r.carrier = Some(carrier.clone());
            }
        }
        Ok(())
    }
}

/// Builds the sources of a plan, in the merge's tie order: parcel trail, alerts, cabinets.
fn sources(store: &Store, plan: &Plan) -> Result<Vec<Box<dyn Source>>, StoreError> {
    let mut out: Vec<Box<dyn Source>> = Vec::new();
    let (site, cabinet) = (plan.site.clone(), plan.cabinet.clone());
    let in_filters = move |s: Option<&SiteId>, c: Option<&CabinetId>| {
        site.as_ref().is_none_or(|want| s == Some(want))
            && cabinet.as_ref().is_none_or(|want| c == Some(want))
    };
    if plan.parcels {
        let scope = plan.scope.clone();
        let f = in_filters.clone();
        out.push(Box::new(ParcelTrail::new(
            store.parcels().clone(),
            plan.window.clone(),
            Box::new(move |a| {
                let scoped = match &scope {
                    Scope::Operator => true,
                    Scope::Carrier { carrier } => a.carrier.as_ref() == Some(carrier),
                    Scope::SiteManager { sites } => {
                        a.site.as_ref().is_some_and(|s| sites.contains(s))
                    }
                };
                scoped && f(a.site.as_ref(), a.cabinet.as_ref())
            }),
        )));
    }
    if plan.alerts {
        let scope = plan.scope.clone();
        let site_of = plan.site_of.clone();
        let f = in_filters;
        out.push(Box::new(AlertHistory::new(
            store.alerts().clone(),
            plan.window.clone(),
            Box::new(move |a| {
                let site = a.site.as_ref().or_else(|| site_of.get(&a.cabinet));
                let scoped = match &scope {
                    Scope::Operator => true,
                    Scope::Carrier { .. } => false,
                    Scope::SiteManager { sites } => site.is_some_and(|s| sites.contains(s)),
                };
                scoped && f(site, Some(&a.cabinet))
            }),
        )));
    }
    let cabinets = match &plan.cabinets {
        Some(list) => list.clone(),
        None => store.audit().cabinets()?,
    };
    let page = (ENTRY_BUDGET / cabinets.len().max(1)).clamp(4, 512);
    for c in cabinets {
        let site = plan.site_of.get(&c).map(ToString::to_string);
        out.push(Box::new(CabinetLog::new(
            store.audit().clone(),
            c,
            site,
            plan.window.clone(),
            page,
        )));
    }
    Ok(out)
}

/// Streams a plan's records into `tx`; `Ok(false)` when the client went away.
fn produce(
    store: &Store,
    plan: Plan,
    tx: &mpsc::Sender<Result<Bytes, std::io::Error>>,
    metrics: &Metrics,
) -> Result<bool, ExportError> {
    let records = metrics
        .api
        .export_records
        .with_label_values(&[plan.format.as_str()]);
    let mut merge = Merge::new(sources(store, &plan)?);
    let mut orders = Orders {
        store: store.parcels().clone(),
        known: HashMap::new(),
    };
    let mut enc = Encoder::new(plan.format);
    let (mut n, mut counted) = (0u64, 0u64);
    while let Some(mut r) = merge.next()? {
        orders.fill(&mut r)?;
        if r.site.is_none() {
            // the cabinet's site now (an alert raised before its cabinet was placed)
            r.site = r
                .cabinet
                .as_deref()
                .and_then(|c| CabinetId::new(c).ok())
                .and_then(|c| plan.site_of.get(&c))
                .map(ToString::to_string);
        }
        enc.push(&r)?;
        n += 1;
        if enc.pending() >= CHUNK {
            if tx.blocking_send(Ok(Bytes::from(enc.take()?))).is_err() {
                return Ok(false);
            }
            records.inc_by(n - counted);
            counted = n;
        } else if n % 4_096 == 0 && tx.is_closed() {
            return Ok(false);
        }
    }
    if n == 0 {
        enc.header_if_empty()?;
    }
    let rest = enc.take()?;
    if !rest.is_empty() && tx.blocking_send(Ok(Bytes::from(rest))).is_err() {
        return Ok(false);
    }
    records.inc_by(n - counted);
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{AuditEntry, NewEntry, QuarantineLimits};
    use locker_schemas::{CompartmentId, Door, Uplink, UplinkBody};

    fn door_log(store: &Store, cab: &CabinetId, n: u64, t0: u64) {
        let entries: Vec<NewEntry> = (1..=n)
            .map(|seq| {
                let u = Uplink {
                    cabinet: cab.clone(),
                    boot: 1,
                    seq,
                    ts: t0 + seq,
                    body: UplinkBody::Door(Door {
                        compartment: CompartmentId(1),
                        open: seq % 2 == 1,
                        cause: locker_schemas::DoorCause::LocalAccess,
                        parcel: None,
                    }),
                };
                NewEntry {
                    cabinet: cab.clone(),
                    position: seq,
                    entry: AuditEntry::Event(
                        locker_schemas::codec::encode_uplink(&u).expect("encode"),
                    ),
                }
            })
            .collect();
        let limits = QuarantineLimits {
            max_per_cabinet: 1,
            max_total: 1,
        };
        store
            .append_events(&entries, &[], limits, &[])
            .expect("append");
    }

    fn plan(from: u64, to: u64, format: Format) -> Plan {
        Plan {
            window: Window {
                from,
                to,
                kinds: Category::ALL.into_iter().collect(),
            },
            format,
            cabinets: None,
            site_of: HashMap::new(),
            parcels: true,
            alerts: true,
            scope: Scope::Operator,
            site: None,
            cabinet: None,
        }
    }

    #[test]
    fn a_client_that_goes_away_stops_the_producer() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(dir.path()).expect("store");
        let cab = CabinetId::new("CAB-1").expect("id");
        door_log(&store, &cab, 20_000, 1_000_000);
        let metrics = Metrics::new().expect("metrics");
        let (tx, mut rx) = mpsc::channel(1);
        let (s, m) = (store.clone(), metrics.clone());
        let producer = std::thread::spawn(move || {
            produce(&s, plan(0, u64::MAX, Format::Ndjson), &tx, &m).expect("produce")
        });
        let first = rx.blocking_recv().expect("a chunk").expect("bytes");
        assert!(first.len() >= CHUNK);
        drop(rx);
        assert!(!producer.join().expect("join"), "stopped as aborted");
        let sent = metrics
            .api
            .export_records
            .with_label_values(&["ndjson"])
            .get();
        assert!(sent < 20_000, "it stopped early: {sent} records sent");
    }

    #[test]
    fn a_whole_period_streams_in_chunks_and_a_later_period_is_found_without_the_earlier_one() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(dir.path()).expect("store");
        let cab = CabinetId::new("CAB-1").expect("id");
        door_log(&store, &cab, 5_000, 1_000_000);
        let metrics = Metrics::new().expect("metrics");
        let run = |from, to, format| {
            let (tx, mut rx) = mpsc::channel(2);
            let (s, m) = (store.clone(), metrics.clone());
            let producer = std::thread::spawn(move || produce(&s, plan(from, to, format), &tx, &m));
            let mut out = Vec::new();
            while let Some(chunk) = rx.blocking_recv() {
                out.extend_from_slice(&chunk.expect("bytes"));
            }
            assert!(producer.join().expect("join").expect("produce"));
            String::from_utf8(out).expect("utf-8")
        };
        let all = run(0, u64::MAX, Format::Ndjson);
        assert_eq!(all.lines().count(), 5_000);
        // [1_004_001, 1_004_011): seq 4001..=4010
        let some = run(1_004_001, 1_004_011, Format::Csv);
        let lines: Vec<&str> = some.lines().collect();
        assert_eq!(lines.len(), 11, "{some}");
        assert!(lines[0].starts_with("at,at_utc,source,kind,"));
        assert!(lines[1].starts_with("1004001,"));
        assert!(lines[10].starts_with("1004010,"));
        // an empty period: the CSV header alone
        assert_eq!(run(5, 6, Format::Csv).lines().count(), 1);
    }
}
