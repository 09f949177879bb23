//! The console's fleet figures from the parcel state, computed inside the actor in one pass
//! per request (nothing is cloned but the answer): compartments by size and status and orders
//! with an exception, per site and per cabinet, within the caller's scope; and the search of
//! sites, cabinets and orders (id, tracking number, reference, recipient phone).
//!
//! What a scope counts: an operator everything; a site manager its sites; a carrier the sites
//! its carrier serves (`Carrier.sites`, empty = every site), the compartments it may use
//! there (the shared pool and its own partition, as `GET /v1/cabinets/{id}/compartments`
//! shows it) and its own orders' exceptions.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;

use locker_schemas::{CabinetId, CarrierId, OrderId, SiteId};
use serde::Serialize;

use super::actor::State;
use super::alloc::Slot;
use super::model::{OrderState, Site};
use super::views::OrderView;
use super::{Caller, ParcelError, Scope};
use crate::json::SizeName;

/// Results of each kind a search returns at most.
pub const SEARCH_MAX: usize = 20;

/// Compartments of one size by status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct SlotCounts {
    pub total: u32,
    pub free: u32,
    pub reserved: u32,
    pub occupied: u32,
    pub out_of_service: u32,
}

impl SlotCounts {
    fn add(&mut self, o: &SlotCounts) {
        self.total += o.total;
        self.free += o.free;
        self.reserved += o.reserved;
        self.occupied += o.occupied;
        self.out_of_service += o.out_of_service;
    }
}

/// Compartments by size (`S`, `M`, `L`, `XL`), each by status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct BySize {
    #[serde(rename = "S")]
    pub s: SlotCounts,
    #[serde(rename = "M")]
    pub m: SlotCounts,
    #[serde(rename = "L")]
    pub l: SlotCounts,
    #[serde(rename = "XL")]
    pub xl: SlotCounts,
}

impl BySize {
    fn size(&mut self, s: SizeName) -> &mut SlotCounts {
        match s {
            SizeName::S => &mut self.s,
            SizeName::M => &mut self.m,
            SizeName::L => &mut self.l,
            SizeName::Xl => &mut self.xl,
        }
    }

    /// Adds another set of counts.
    pub fn add(&mut self, o: &BySize) {
        self.s.add(&o.s);
        self.m.add(&o.m);
        self.l.add(&o.l);
        self.xl.add(&o.xl);
    }
}

/// One cabinet's figures from the parcel state.
#[derive(Debug, Clone)]
pub struct CabinetFigures {
    pub id: CabinetId,
    pub compartments: BySize,
    pub exceptions: u32,
}

/// One site's figures from the parcel state.
#[derive(Debug, Clone)]
pub struct SiteFigures {
    pub id: SiteId,
    pub name: String,
    pub time_zone: String,
    pub cabinets: Vec<CabinetId>,
    pub compartments: BySize,
    pub exceptions: u32,
}

/// A page of sites (`GET /v1/fleet/sites`).
#[derive(Debug, Clone)]
pub struct SitesPage {
    pub sites: Vec<SiteFigures>,
    pub next_after: Option<SiteId>,
}

/// How long the operator's fleet totals are served from the cache.
const TOTALS_FRESH: std::time::Duration = std::time::Duration::from_secs(1);

/// The whole scope's figures (`GET /v1/fleet/summary`).
#[derive(Debug, Clone)]
pub struct Totals {
    pub sites: u32,
    /// The cabinets at the sites in scope.
    pub cabinets: Vec<CabinetId>,
    pub compartments: BySize,
    pub exceptions: u32,
}

/// One site with its cabinets' figures (`GET /v1/fleet/sites/{site}`).
#[derive(Debug, Clone)]
pub struct SiteDetail {
    pub site: Site,
    pub cabinets: Vec<CabinetFigures>,
}

/// What a search found (`GET /v1/search`), at most [`SEARCH_MAX`] of each.
#[derive(Debug, Clone, Default)]
pub struct Hits {
    pub sites: Vec<(SiteId, String)>,
    pub cabinets: Vec<(CabinetId, Option<SiteId>)>,
    pub orders: Vec<OrderView>,
}

/// Which sites a listing wants.
#[derive(Debug, Clone, Default)]
pub struct SitesQuery {
    /// Case-insensitive substring of the site's id or name.
    pub q: Option<String>,
    pub after: Option<SiteId>,
    pub limit: usize,
}

/// The digits of a phone number, an international `00` prefix taken as `+` (so `+49 170 123`,
/// `0049-170-123` and `+49170123` compare equal).
pub fn phone_digits(s: &str) -> String {
    let d: String = s.chars().filter(char::is_ascii_digit).collect();
    match d.strip_prefix("00") {
        Some(rest) if !s.trim_start().starts_with('+') => rest.to_owned(),
        _ => d,
    }
}

/// What a caller may count: every site and compartment, some sites, or a carrier's.
enum View<'a> {
    All,
    Sites(&'a std::collections::BTreeSet<SiteId>),
    Carrier {
        carrier: &'a CarrierId,
        /// Empty: every site.
        sites: &'a [SiteId],
    },
}

impl View<'_> {
    fn site(&self, s: &SiteId) -> bool {
        match self {
            View::All => true,
            View::Sites(set) => set.contains(s),
            View::Carrier { sites, .. } => sites.is_empty() || sites.contains(s),
        }
    }

    fn slot(&self, s: &Slot) -> bool {
        match self {
            View::Carrier { carrier, .. } => s.partition.as_ref().is_none_or(|p| p == *carrier),
            _ => true,
        }
    }

    fn carrier(&self) -> Option<&CarrierId> {
        match self {
            View::Carrier { carrier, .. } => Some(carrier),
            _ => None,
        }
    }
}

impl State {
    fn view<'a>(&'a self, c: &'a Caller) -> View<'a> {
        match &c.scope {
            Scope::Operator => View::All,
            Scope::SiteManager { sites } => View::Sites(sites),
            Scope::Carrier { carrier } => View::Carrier {
                carrier,
                // an unknown carrier serves nothing (a carrier with no sites serves all)
                sites: self
                    .carriers
                    .get(carrier)
                    .map_or(&[][..], |k| k.sites.as_slice()),
            },
        }
    }

    /// A cabinet's compartments by size and status, as `view` may count them.
    fn cabinet_counts(&self, cab: &CabinetId, view: &View) -> BySize {
        let mut out = BySize::default();
        let Some(k) = self.table.cabinets.get(cab) else {
            return out;
        };
        for s in k.slots.values().filter(|s| view.slot(s)) {
            let n = out.size(s.size);
            n.total += 1;
            if s.out_of_service.is_some() {
                n.out_of_service += 1;
                continue;
            }
            match s.holder.and_then(|h| self.orders.get(&h)).map(|o| o.state) {
                None => n.free += 1,
                Some(OrderState::Reserved) | Some(OrderState::Created) => n.reserved += 1,
                Some(_) => n.occupied += 1,
            }
        }
        out
    }

    /// Orders with an exception (what `GET /v1/orders?exception=true` lists) by site and by
    /// cabinet, as `view` may see them: one pass over the orders in memory.
    fn exceptions(&self, view: &View) -> (HashMap<&SiteId, u32>, HashMap<&CabinetId, u32>) {
        let (mut sites, mut cabs) = (HashMap::new(), HashMap::new());
        for o in self.orders.values().filter(|o| o.exception.is_some()) {
            if view.carrier().is_some_and(|k| *k != o.carrier) || !view.site(&o.site) {
                continue;
            }
            *sites.entry(&o.site).or_default() += 1;
            if let Some(c) = &o.cabinet {
                *cabs.entry(c).or_default() += 1;
            }
        }
        (sites, cabs)
    }

    fn site_figures(&self, s: &Site, view: &View, exc: &HashMap<&SiteId, u32>) -> SiteFigures {
        let mut compartments = BySize::default();
        for k in &s.cabinets {
            compartments.add(&self.cabinet_counts(k, view));
        }
        SiteFigures {
            id: s.id.clone(),
            name: s.name.clone(),
            time_zone: s.time_zone.clone(),
            cabinets: s.cabinets.clone(),
            compartments,
            exceptions: exc.get(&s.id).copied().unwrap_or(0),
        }
    }

    /// A page of the sites in scope, sorted by id.
    pub(super) fn fleet_sites(&self, q: &SitesQuery, c: &Caller) -> SitesPage {
        let view = self.view(c);
        let (exc, _) = self.exceptions(&view);
        let needle =
            q.q.as_deref()
                .map(str::to_lowercase)
                .filter(|n| !n.is_empty());
        let start = q.after.clone().map_or(Bound::Unbounded, Bound::Excluded);
        let limit = q.limit.max(1);
        let mut matching = self
            .sites
            .range((start, Bound::Unbounded))
            .map(|(_, s)| s)
            .filter(|s| view.site(&s.id))
            .filter(|s| {
                needle.as_ref().is_none_or(|n| {
                    s.id.as_str().to_lowercase().contains(n) || s.name.to_lowercase().contains(n)
                })
            });
        let sites: Vec<SiteFigures> = matching
            .by_ref()
            .take(limit)
            .map(|s| self.site_figures(s, &view, &exc))
            .collect();
        let next_after = match matching.next() {
            Some(_) => sites.last().map(|s| s.id.clone()),
            None => None,
        };
        SitesPage { sites, next_after }
    }

    /// [`State::fleet_totals`], with the operator's (a walk over every compartment of the
    /// fleet: tens of ms at 10,000 cabinets) served again for up to a second while nothing
    /// changed (every batch that changes the state drops it), however many pages ask.
    pub(super) fn fleet_totals_cached(&mut self, c: &Caller) -> Totals {
        if c.scope != Scope::Operator {
            return self.fleet_totals(c);
        }
        if let Some((at, t)) = &self.totals_cache {
            if at.elapsed() < TOTALS_FRESH {
                return t.clone();
            }
        }
        let t = self.fleet_totals(c);
        self.totals_cache = Some((std::time::Instant::now(), t.clone()));
        t
    }

    /// The figures of everything in scope.
    pub(super) fn fleet_totals(&self, c: &Caller) -> Totals {
        let view = self.view(c);
        let (exc, _) = self.exceptions(&view);
        let mut t = Totals {
            sites: 0,
            cabinets: Vec::new(),
            compartments: BySize::default(),
            exceptions: exc.values().sum(),
        };
        for s in self.sites.values().filter(|s| view.site(&s.id)) {
            t.sites += 1;
            t.cabinets.extend(s.cabinets.iter().cloned());
        }
        match view {
            // an operator counts every cabinet's compartments, at a site or not
            View::All => {
                for k in self.table.cabinets.keys() {
                    t.compartments.add(&self.cabinet_counts(k, &view));
                }
            }
            _ => {
                for k in &t.cabinets {
                    t.compartments.add(&self.cabinet_counts(k, &view));
                }
            }
        }
        t
    }

    /// One site in scope with its cabinets' figures (not found outside the scope).
    pub(super) fn fleet_site(&self, site: &SiteId, c: &Caller) -> Result<SiteDetail, ParcelError> {
        let view = self.view(c);
        let s = self
            .sites
            .get(site)
            .filter(|s| view.site(&s.id))
            .ok_or_else(|| ParcelError::NotFound(format!("site {site}")))?;
        let (_, exc) = self.exceptions(&view);
        let cabinets = s
            .cabinets
            .iter()
            .map(|k| CabinetFigures {
                id: k.clone(),
                compartments: self.cabinet_counts(k, &view),
                exceptions: exc.get(k).copied().unwrap_or(0),
            })
            .collect();
        Ok(SiteDetail {
            site: s.clone(),
            cabinets,
        })
    }

    /// The site of a cabinet, if the caller may see that site.
    pub(super) fn cabinet_site(&self, cab: &CabinetId, c: &Caller) -> Option<SiteId> {
        let view = self.view(c);
        self.site_of.get(cab).filter(|s| view.site(s)).cloned()
    }

    /// Sites, cabinets and orders matching `q`, within the caller's scope.
    pub(super) fn search(&self, q: &str, c: &Caller) -> Hits {
        let q = q.trim();
        let mut hits = Hits::default();
        if q.is_empty() {
            return hits;
        }
        let view = self.view(c);
        let lower = q.to_lowercase();
        hits.sites = self
            .sites
            .values()
            .filter(|s| view.site(&s.id))
            .filter(|s| {
                s.id.as_str().to_lowercase().contains(&lower)
                    || s.name.to_lowercase().contains(&lower)
            })
            .take(SEARCH_MAX)
            .map(|s| (s.id.clone(), s.name.clone()))
            .collect();
        // cabinets at a site in scope; an operator's also those at no site yet
        let mut cabs: BTreeMap<&CabinetId, Option<&SiteId>> = BTreeMap::new();
        let at_sites = self.site_of.iter().map(|(k, s)| (k, Some(s)));
        let unplaced = self
            .table
            .cabinets
            .keys()
            .filter(|k| matches!(view, View::All) && !self.site_of.contains_key(*k))
            .map(|k| (k, None));
        for (k, s) in at_sites.chain(unplaced) {
            if s.is_none_or(|s| view.site(s)) && k.as_str().to_lowercase().contains(&lower) {
                cabs.insert(k, s);
            }
        }
        hits.cabinets = cabs
            .into_iter()
            .take(SEARCH_MAX)
            .map(|(k, s)| (k.clone(), s.cloned()))
            .collect();
        let sees = |o: &&super::model::Order| c.scope.sees(&o.carrier, &o.site);
        let mut orders: Vec<OrderId> = Vec::new();
        if let Ok(id) = q.parse::<OrderId>() {
            if let Some(o) = self.orders.get(&id).filter(sees) {
                orders.push(o.id);
            }
        }
        let digits = phone_digits(q);
        // a phone number is 6 digits at least: fewer would match half the recipients
        let phone = (digits.len() >= 6).then_some(digits);
        for o in self.orders.values().filter(sees) {
            if orders.len() >= SEARCH_MAX {
                break;
            }
            let hit = o.tracking.eq_ignore_ascii_case(q)
                || o.reference
                    .as_deref()
                    .is_some_and(|r| r.eq_ignore_ascii_case(q))
                || phone.as_ref().is_some_and(|p| {
                    o.recipient
                        .phone
                        .as_deref()
                        .is_some_and(|x| phone_digits(x) == *p)
                });
            if hit && !orders.contains(&o.id) {
                orders.push(o.id);
            }
        }
        hits.orders = orders
            .iter()
            .filter_map(|id| self.orders.get(id))
            .map(OrderView::from)
            .collect();
        hits
    }
}

#[cfg(test)]
mod tests {
    use super::phone_digits;

    #[test]
    fn phone_numbers_written_differently_compare_equal() {
        let want = phone_digits("+491701234567");
        for s in [
            "+49 170 1234567",
            "+49 (170) 123-4567",
            "0049 170 1234567",
            "491701234567",
        ] {
            assert_eq!(phone_digits(s), want, "{s}");
        }
        assert_ne!(phone_digits("0170 1234567"), want);
    }
}
