//! The fleet routes the console's overview stands on: `GET /v1/fleet/summary`,
//! `GET /v1/fleet/sites` (paged, filtered), `GET /v1/fleet/sites/{site}` and `GET /v1/search`.
//!
//! Cheap at fleet size: a request asks each actor that owns a part once (the parcel domain
//! for sites, compartments and exceptions; the fleet registry for presence; the rules engine
//! for active alerts; the outbound actor for the backlog), and each computes its aggregate
//! from its own state, cloning no snapshot, order or alert it does not return.
//!
//! Scopes: an operator sees everything; a site manager its sites (another site is 404); a
//! carrier the sites its carrier serves (`Carrier.sites`, empty = every site), counted as a
//! carrier may see them: the compartments it may use there (the shared pool and its own
//! partition), its own orders' exceptions, no alerts (zeros) and no outbox figure (null).

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use locker_schemas::{CabinetId, SiteId};
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::openapi::{CabinetIdDoc, ErrorBody, SiteIdDoc};
use super::{ApiError, ApiState};
use crate::fleet::CabinetPresence;
use crate::parcels::fleet::{BySize, SitesQuery};
use crate::parcels::{Caller, OrderView, Scope, Site};
use crate::rules::{AlertCounts, SeverityCounts};

/// Sites per page by default, and at most.
const PAGE_DEFAULT: usize = 50;
const PAGE_MAX: usize = 500;

/// The fleet routes (every scope).
pub(super) fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(summary))
        .routes(routes!(sites))
        .routes(routes!(site))
        .routes(routes!(search))
}

/// `GET /v1/fleet/summary`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FleetSummary {
    /// Sites in scope.
    pub sites: u32,
    /// Cabinets at those sites (an operator's: every cabinet the gateway knows, too).
    pub cabinets: u32,
    pub online: u32,
    pub offline: u32,
    /// Compartments by size and status.
    pub compartments: BySize,
    /// Active alerts by severity (zeros for a carrier).
    pub alerts: SeverityCounts,
    /// Orders with an exception (what `GET /v1/orders?exception=true` lists).
    pub exceptions: u32,
    /// Webhook and notification deliveries waiting or in flight, every target; operators
    /// only (null for other scopes).
    pub outbox_pending: Option<u64>,
}

/// A site's row on the fleet page.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FleetSite {
    #[schema(value_type = SiteIdDoc)]
    pub id: SiteId,
    pub name: String,
    pub time_zone: String,
    pub cabinets: u32,
    pub online: u32,
    pub offline: u32,
    pub compartments: BySize,
    pub alerts: SeverityCounts,
    pub exceptions: u32,
}

/// `GET /v1/fleet/sites`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FleetSites {
    pub sites: Vec<FleetSite>,
    /// The cursor of the next page (`after`); null on the last page.
    #[schema(value_type = Option<SiteIdDoc>)]
    pub next_after: Option<SiteId>,
}

/// A cabinet's row on a site's page.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FleetCabinet {
    #[schema(value_type = CabinetIdDoc)]
    pub id: CabinetId,
    pub online: bool,
    /// When the gateway last heard from it (RFC 3339); null if never.
    pub last_seen: Option<String>,
    pub compartments: BySize,
    pub alerts: SeverityCounts,
    pub exceptions: u32,
    /// State of charge of its battery from the last power report.
    pub battery_pct: Option<u8>,
}

/// `GET /v1/fleet/sites/{site}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FleetSiteDetail {
    pub site: Site,
    pub cabinets: Vec<FleetCabinet>,
}

/// `?q=&after=&limit=` of `GET /v1/fleet/sites`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SitesParams {
    /// Sites whose id or name contains this (case-insensitive).
    #[serde(default)]
    q: Option<String>,
    /// Sites after this id (the `next_after` of the previous page).
    #[serde(default)]
    #[param(value_type = Option<SiteIdDoc>)]
    after: Option<String>,
    /// Sites at most, 1 to 500 (default 50).
    #[serde(default)]
    #[param(minimum = 1, maximum = 500)]
    limit: Option<usize>,
}

/// `?q=` of `GET /v1/search`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SearchParams {
    /// A site id or name, a cabinet id, an order id, a tracking number, a reference or a
    /// recipient's phone number (digits compared: `+49 170 1234567` finds `+491701234567`).
    #[serde(default)]
    q: String,
}

/// A site found by a search.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SiteHit {
    #[schema(value_type = SiteIdDoc)]
    pub id: SiteId,
    pub name: String,
}

/// A cabinet found by a search.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CabinetHit {
    #[schema(value_type = CabinetIdDoc)]
    pub id: CabinetId,
    /// Its site; null for a cabinet at no site yet (operators only).
    #[schema(value_type = Option<SiteIdDoc>)]
    pub site: Option<SiteId>,
}

/// `GET /v1/search`: at most 20 of each.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SearchResults {
    pub sites: Vec<SiteHit>,
    pub cabinets: Vec<CabinetHit>,
    pub orders: Vec<OrderView>,
}

/// Active alerts the caller may see, by cabinet (none for a carrier).
async fn alerts(st: &ApiState, c: &Caller) -> AlertCounts {
    match c.scope {
        Scope::Carrier { .. } => AlertCounts::default(),
        _ => st.rules.counts().await,
    }
}

fn sum_alerts<'a>(
    counts: &AlertCounts,
    cabs: impl IntoIterator<Item = &'a CabinetId>,
) -> SeverityCounts {
    let mut n = SeverityCounts::default();
    for k in cabs {
        if let Some(c) = counts.get(k) {
            n.add(c);
        }
    }
    n
}

fn online(p: &[CabinetPresence]) -> u32 {
    p.iter().filter(|p| p.online).count() as u32
}

/// The whole scope at a glance: sites, cabinets online and offline, compartments by size and
/// status, active alerts, exceptions and the outbound backlog.
///
/// Scopes: operator (everything), site manager (its sites), carrier (the sites it serves; its
/// compartments and exceptions, no alerts, `outbox_pending` null).
#[utoipa::path(get, path = "/v1/fleet/summary", tag = "fleet",
    responses((status = 200, description = "The figures.", body = FleetSummary),
        (status = 503, description = "`unavailable`.", body = ErrorBody)))]
async fn summary(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<FleetSummary>, ApiError> {
    let t = st.parcels.fleet_totals(caller.clone()).await?;
    let operator = caller.scope == Scope::Operator;
    let counts = alerts(&st, &caller).await;
    let alerts = if operator {
        sum_alerts(&counts, counts.keys())
    } else {
        sum_alerts(&counts, &t.cabinets)
    };
    let outbox_pending = if operator {
        let targets = st.outbound.targets().await.map_err(|e| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                e.to_string(),
            )
        })?;
        Some(
            targets
                .iter()
                .map(|(_, h)| (h.pending + h.in_flight) as u64)
                .sum(),
        )
    } else {
        None
    };
    let listed = t.cabinets.len();
    let p = st.fleet.presence_of(t.cabinets, operator).await;
    let cabinets = (listed + p.others) as u32;
    let on = online(&p.cabinets) + p.others_online as u32;
    Ok(Json(FleetSummary {
        sites: t.sites,
        cabinets,
        online: on,
        offline: cabinets.saturating_sub(on),
        compartments: t.compartments,
        alerts,
        exceptions: t.exceptions,
        outbox_pending,
    }))
}

/// A page of the sites in scope with their figures, sorted by id.
///
/// Scopes: operator, site manager (its sites), carrier (the sites it serves, counted as it may
/// see them; no alerts). Page with `after` = the previous page's `next_after`.
#[utoipa::path(get, path = "/v1/fleet/sites", tag = "fleet",
    params(SitesParams),
    responses((status = 200, description = "A page of sites.", body = FleetSites),
        (status = 400, description = "`bad_id`: `after` is not a site id.", body = ErrorBody),
        (status = 503, description = "`unavailable`.", body = ErrorBody)))]
async fn sites(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<SitesParams>,
) -> Result<Json<FleetSites>, ApiError> {
    let after = match q.after.as_deref().filter(|a| !a.is_empty()) {
        Some(a) => Some(
            a.parse::<SiteId>()
                .map_err(|e: locker_schemas::SlugError| {
                    ApiError::new(StatusCode::BAD_REQUEST, "bad_id", e.to_string())
                })?,
        ),
        None => None,
    };
    let query = SitesQuery {
        q: q.q,
        after,
        limit: q.limit.unwrap_or(PAGE_DEFAULT).clamp(1, PAGE_MAX),
    };
    let page = st.parcels.fleet_sites(query, caller.clone()).await?;
    let counts = alerts(&st, &caller).await;
    let ids: Vec<CabinetId> = page
        .sites
        .iter()
        .flat_map(|s| s.cabinets.iter().cloned())
        .collect();
    let presence = st.fleet.presence_of(ids, false).await.cabinets;
    let mut at = 0;
    let mut rows = Vec::with_capacity(page.sites.len());
    for s in page.sites {
        let n = s.cabinets.len();
        let p = presence.get(at..at + n).unwrap_or_default();
        at += n;
        let on = online(p);
        rows.push(FleetSite {
            alerts: sum_alerts(&counts, &s.cabinets),
            id: s.id,
            name: s.name,
            time_zone: s.time_zone,
            cabinets: n as u32,
            online: on,
            offline: n as u32 - on.min(n as u32),
            compartments: s.compartments,
            exceptions: s.exceptions,
        });
    }
    Ok(Json(FleetSites {
        sites: rows,
        next_after: page.next_after,
    }))
}

/// One site with each of its cabinets: presence, last seen, compartments, alerts, exceptions
/// and battery.
///
/// Scopes: operator, site manager (its sites; another site is 404), carrier (a site it
/// serves, counted as it may see it; no alerts).
#[utoipa::path(get, path = "/v1/fleet/sites/{site}", tag = "fleet",
    params(("site" = SiteIdDoc, Path, description = "The site.")),
    responses((status = 200, description = "The site and its cabinets.", body = FleetSiteDetail),
        (status = 400, description = "`bad_id`.", body = ErrorBody),
        (status = 404, description = "`not_found`: no such site in the token's scope.", body = ErrorBody),
        (status = 503, description = "`unavailable`.", body = ErrorBody)))]
async fn site(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<FleetSiteDetail>, ApiError> {
    let id: SiteId = id.parse().map_err(|e: locker_schemas::SlugError| {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_id", e.to_string())
    })?;
    let d = st.parcels.fleet_site(id, caller.clone()).await?;
    let counts = alerts(&st, &caller).await;
    let ids: Vec<CabinetId> = d.cabinets.iter().map(|c| c.id.clone()).collect();
    let presence = st.fleet.presence_of(ids, false).await.cabinets;
    let cabinets = d
        .cabinets
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let p = presence.get(i).copied().unwrap_or_default();
            FleetCabinet {
                alerts: sum_alerts(&counts, [&c.id]),
                id: c.id,
                online: p.online,
                last_seen: (p.last_seen > 0).then(|| crate::json::utc(p.last_seen)),
                compartments: c.compartments,
                exceptions: c.exceptions,
                battery_pct: p.battery_pct,
            }
        })
        .collect();
    Ok(Json(FleetSiteDetail {
        site: d.site,
        cabinets,
    }))
}

/// Finds sites (id or name contains `q`), cabinets (id contains `q`) and orders (id, tracking
/// number or reference equal to `q`, case-insensitive; or the recipient's phone, digits
/// compared), at most 20 of each.
///
/// Scopes: operator, site manager (its sites), carrier (the sites it serves, its own orders).
#[utoipa::path(get, path = "/v1/search", tag = "fleet",
    params(SearchParams),
    responses((status = 200, description = "What was found.", body = SearchResults),
        (status = 503, description = "`unavailable`.", body = ErrorBody)))]
async fn search(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<SearchParams>,
) -> Result<Json<SearchResults>, ApiError> {
    let h = st.parcels.search(q.q, caller).await?;
    Ok(Json(SearchResults {
        sites: h
            .sites
            .into_iter()
            .map(|(id, name)| SiteHit { id, name })
            .collect(),
        cabinets: h
            .cabinets
            .into_iter()
            .map(|(id, site)| CabinetHit { id, site })
            .collect(),
        orders: h.orders,
    }))
}
