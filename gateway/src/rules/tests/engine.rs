//! The pure [`Engine`] with explicit times, where that is clearer than the actor: per-site
//! rules (a mains site's on_battery, a site's own battery threshold) with cabinets placed by
//! [`Engine::set_sites`], and what a restart makes of a cabinet stored as online.

use std::collections::HashMap;

use locker_schemas::{CabinetId, Millis, SiteId, Uplink, UplinkBody};

use super::super::engine::{Effect, Engine};
use super::super::state::CabState;
use super::super::{Alert, AlertKind};
use super::harness::{cab, rules_cfg, MIN, T0};
use super::kinds_power::power;

pub(super) fn engine(toml_text: &str, now: Millis) -> Engine {
    let cfg = rules_cfg(toml_text);
    Engine::new(
        cfg.compile().expect("compiles"),
        cfg.max_conditions_per_cabinet,
        HashMap::new(),
        Vec::new(),
        now,
    )
}

pub(super) fn up(k: u32, body: UplinkBody, ts: Millis) -> Uplink {
    Uplink {
        cabinet: cab(k),
        boot: 1,
        seq: ts,
        ts,
        body,
    }
}

fn raised(effects: &[Effect]) -> Vec<&Alert> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Raised(a) => Some(a),
            _ => None,
        })
        .collect()
}

fn cleared(effects: &[Effect]) -> Vec<&Alert> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Cleared(a) => Some(a),
            _ => None,
        })
        .collect()
}

fn site(s: &str) -> SiteId {
    SiteId::new(s).expect("site id")
}

#[test]
fn on_battery_only_for_cabinets_placed_in_a_mains_site() {
    let mut e = engine("[sites.mains-1]\nsupply = \"mains\"\n", T0);
    e.uplinks(
        &[up(1, power(90, 0, 20), T0), up(2, power(90, 0, 20), T0)],
        T0,
    );
    let placed: HashMap<CabinetId, SiteId> = [(cab(1), site("mains-1"))].into();
    e.set_sites(&placed, T0);
    e.tick(T0 + 2 * MIN - 1);
    assert!(raised(&e.take_effects()).is_empty(), "not before for_ms");
    e.tick(T0 + 2 * MIN);
    let fx = e.take_effects();
    let r = raised(&fx);
    assert_eq!(r.len(), 1, "{fx:#?}");
    assert_eq!(
        (r[0].cabinet.clone(), r[0].kind),
        (cab(1), AlertKind::OnBattery)
    );
    assert_eq!(r[0].site, Some(site("mains-1")));
    assert_eq!((r[0].started, r[0].raised_at), (T0, T0 + 2 * MIN));
    // out of the site, the fleet's rules (solar) apply: no input at night is normal
    e.set_sites(&HashMap::new(), T0 + 3 * MIN);
    let fx = e.take_effects();
    let c = cleared(&fx);
    assert_eq!(c.len(), 1, "{fx:#?}");
    assert_eq!(c[0].kind, AlertKind::OnBattery);
    e.tick(T0 + 10 * MIN);
    assert!(raised(&e.take_effects()).is_empty());
}

#[test]
fn a_sites_own_battery_threshold_applies_to_its_cabinets_only() {
    let mut e = engine(
        "[sites.north]\nbattery_low = { below_pct = 30, clear_above_pct = 45, for_ms = 0 }\n",
        T0,
    );
    e.uplinks(
        &[up(1, power(90, 0, 5), T0), up(2, power(90, 0, 5), T0)],
        T0,
    );
    e.set_sites(&[(cab(1), site("north"))].into(), T0);
    e.uplinks(
        &[
            up(1, power(25, 0, 5), T0 + MIN),
            up(2, power(25, 0, 5), T0 + MIN),
        ],
        T0 + MIN,
    );
    let fx = e.take_effects();
    let r = raised(&fx);
    assert_eq!(r.len(), 1, "{fx:#?}");
    assert_eq!(
        (r[0].cabinet.clone(), r[0].kind),
        (cab(1), AlertKind::BatteryLow)
    );
    // 40 % is inside the site's band (30..45): held
    e.uplinks(&[up(1, power(40, 0, 5), T0 + 2 * MIN)], T0 + 2 * MIN);
    assert!(cleared(&e.take_effects()).is_empty());
    e.uplinks(&[up(1, power(46, 0, 5), T0 + 3 * MIN)], T0 + 3 * MIN);
    assert_eq!(cleared(&e.take_effects()).len(), 1);
}

#[test]
fn a_cabinet_stored_online_counts_offline_from_the_restart_not_from_before() {
    let stored = CabState {
        online: Some(true),
        since: T0 - 60 * MIN,
        ..Default::default()
    };
    let cfg = rules_cfg("");
    let mut e = Engine::new(
        cfg.compile().expect("compiles"),
        cfg.max_conditions_per_cabinet,
        [(cab(1), stored)].into(),
        Vec::new(),
        T0,
    );
    e.tick(T0);
    assert!(
        raised(&e.take_effects()).is_empty(),
        "an hour online is no outage"
    );
    e.tick(T0 + 5 * MIN);
    let fx = e.take_effects();
    let r = raised(&fx);
    assert_eq!(r.len(), 1, "{fx:#?}");
    assert_eq!((r[0].kind, r[0].started), (AlertKind::Offline, T0));
    // the edge reports it back: cleared, no outage of an hour, no sync
    e.presence(&cab(1), true, T0 + 6 * MIN, T0 + 6 * MIN);
    let fx = e.take_effects();
    let c = cleared(&fx);
    assert_eq!(c.len(), 1);
    assert!(c[0].actions.is_empty());
}
