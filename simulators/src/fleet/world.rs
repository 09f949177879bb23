//! The parcel world a fleet runs in, set up through the gateway's API at start: sites holding
//! the cabinets (50 per site by default), carriers with their own API tokens (scope carrier,
//! written into the gateway configuration the simulator starts, [`World::add_tokens`]) and a
//! few couriers per carrier with badges.
//!
//! Against an external gateway the carrier tokens are not configured there: the carriers then
//! act through the operator token, naming their carrier on each order (see [`World::external`]).

use locker_gateway::api::scope::{ScopeName, ScopedToken, TokenSpec};
use locker_gateway::config::GatewayConfig;
use locker_schemas::{CabinetId, CarrierId};
use serde_json::json;

use super::api::{Api, ApiError};

/// Why the world could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum WorldError {
    #[error("bad id {0}")]
    Id(String),
    #[error("setting up {what}: {source}")]
    Api {
        what: String,
        #[source]
        source: ApiError,
    },
}

/// One carrier of the simulation.
#[derive(Debug, Clone)]
pub struct SimCarrier {
    pub id: CarrierId,
    pub name: String,
    /// Its own API token (None: it acts through the operator's token, naming itself).
    pub token: Option<String>,
    /// Its couriers: (courier id, badge).
    pub couriers: Vec<(String, String)>,
}

/// One site: its id and the indices of its cabinets in the fleet.
#[derive(Debug, Clone)]
pub struct SimSite {
    pub id: String,
    pub cabinets: Vec<usize>,
}

/// Sites, carriers and couriers.
#[derive(Debug, Clone)]
pub struct World {
    pub sites: Vec<SimSite>,
    pub carriers: Vec<SimCarrier>,
    /// For each cabinet index, its site index.
    pub site_of: Vec<usize>,
    /// The token of the first site's manager (scope site manager; None for an external
    /// gateway): the demo's console login for a site manager.
    pub manager_token: Option<String>,
}

const CARRIERS: [(&str, &str); 3] = [("dhl", "DHL"), ("ups", "UPS"), ("gls", "GLS")];
const COURIERS_PER_CARRIER: usize = 3;

impl World {
    /// The world of `cabinets` cabinets, `per_site` to a site, with three carriers whose tokens
    /// derive from `token_seed` (so a reused state directory keeps working).
    pub fn plan(cabinets: usize, per_site: usize, token_seed: &str) -> Self {
        let per_site = per_site.max(1);
        let sites: Vec<SimSite> = (0..cabinets.div_ceil(per_site).max(1))
            .map(|s| SimSite {
                id: format!("site-{:03}", s + 1),
                cabinets: (s * per_site..((s + 1) * per_site).min(cabinets)).collect(),
            })
            .collect();
        let site_of = (0..cabinets).map(|i| i / per_site).collect();
        let carriers = CARRIERS
            .iter()
            .filter_map(|(id, name)| {
                Some(SimCarrier {
                    id: CarrierId::new(*id).ok()?,
                    name: (*name).to_owned(),
                    token: Some(format!("{id}-{token_seed}")),
                    couriers: (1..=COURIERS_PER_CARRIER)
                        .map(|k| {
                            (
                                format!("{id}-courier-{k}"),
                                format!("BADGE-{}-{k:04}", id.to_uppercase()),
                            )
                        })
                        .collect(),
                })
            })
            .collect();
        Self {
            sites,
            carriers,
            site_of,
            manager_token: Some(format!("manager-{token_seed}")),
        }
    }

    /// The same world for a gateway the simulator does not configure: carriers act through
    /// the operator token.
    pub fn external(mut self) -> Self {
        for c in &mut self.carriers {
            c.token = None;
        }
        self.manager_token = None;
        self
    }

    /// Adds each carrier's token (scope carrier) and the first site manager's to a gateway
    /// configuration.
    pub fn add_tokens(&self, cfg: &mut GatewayConfig) {
        if let (Some(t), Some(site)) = (&self.manager_token, self.sites.first()) {
            if let Ok(id) = site.id.parse() {
                cfg.api.tokens.insert(
                    t.clone(),
                    TokenSpec::Scoped(ScopedToken {
                        name: format!("{}-manager", site.id),
                        scope: ScopeName::SiteManager,
                        carrier: None,
                        sites: [id].into(),
                    }),
                );
            }
        }
        for c in &self.carriers {
            if let Some(t) = &c.token {
                cfg.api.tokens.insert(
                    t.clone(),
                    TokenSpec::Scoped(ScopedToken {
                        name: format!("{}-api", c.id),
                        scope: ScopeName::Carrier,
                        carrier: Some(c.id.clone()),
                        sites: Default::default(),
                    }),
                );
            }
        }
    }

    /// A carrier's API client (its own token, or the operator's).
    pub fn client(&self, op: &Api, carrier: usize) -> Api {
        match self.carriers.get(carrier).and_then(|c| c.token.as_deref()) {
            Some(t) => op.with_token(t),
            None => op.clone(),
        }
    }

    /// Creates (or updates: every call is a PUT) the carriers, sites and couriers.
    pub async fn setup(&self, op: &Api, ids: &[CabinetId]) -> Result<(), WorldError> {
        let err = |what: String| move |source| WorldError::Api { what, source };
        for c in &self.carriers {
            op.put(
                &format!("/v1/carriers/{}", c.id),
                &json!({ "name": c.name }),
            )
            .await
            .map_err(err(format!("carrier {}", c.id)))?;
        }
        for s in &self.sites {
            let cabinets: Vec<&str> = s
                .cabinets
                .iter()
                .filter_map(|&i| ids.get(i).map(CabinetId::as_str))
                .collect();
            op.put(
                &format!("/v1/sites/{}", s.id),
                &json!({
                    "name": format!("Simulated {}", s.id),
                    "time_zone": "Europe/Berlin",
                    "address": format!("{} Simulation Street, Berlin", s.cabinets.first().copied().unwrap_or(0) + 1),
                    "cabinets": cabinets,
                }),
            )
            .await
            .map_err(err(format!("site {}", s.id)))?;
        }
        for c in &self.carriers {
            for (courier, badge) in &c.couriers {
                op.put(
                    &format!("/v1/carriers/{}/couriers/{courier}", c.id),
                    &json!({ "name": courier, "badge": badge }),
                )
                .await
                .map_err(err(format!("courier {courier}")))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifty_cabinets_to_a_site_and_three_carriers_with_couriers() {
        let w = World::plan(120, 50, "seed");
        assert_eq!(w.sites.len(), 3);
        assert_eq!(w.sites[2].cabinets, (100..120).collect::<Vec<_>>());
        assert_eq!(w.site_of[49], 0);
        assert_eq!(w.site_of[50], 1);
        assert_eq!(w.carriers.len(), 3);
        assert!(w.carriers.iter().all(|c| c.couriers.len() == 3));
        let mut cfg = GatewayConfig::default();
        w.add_tokens(&mut cfg);
        assert!(cfg.api.tokens.contains_key("dhl-seed"));
        assert!(World::plan(5, 50, "s")
            .external()
            .carriers
            .iter()
            .all(|c| c.token.is_none()));
    }
}
