//! [`RulesConfig::compile`]'s errors name the key an operator has to fix.

use super::super::config::RulesConfigError;
use super::harness::rules_cfg;

fn error(toml_text: &str) -> (String, String) {
    match rules_cfg(toml_text).compile() {
        Ok(_) => panic!("compiled: {toml_text}"),
        Err(e) => {
            let key = match &e {
                RulesConfigError::Parse { key, .. } | RulesConfigError::Invalid { key, .. } => {
                    key.clone()
                }
            };
            (key, e.to_string())
        }
    }
}

#[test]
fn the_defaults_and_a_site_override_compile() {
    let c = rules_cfg("[battery_low]\nbelow_pct = 20\n[sites.north]\nsupply = \"mains\"\n")
        .compile()
        .expect("compiles");
    assert_eq!(c.fleet.battery_low.below_pct, 20);
    let north = c.sites.values().next().expect("the site");
    assert_eq!(
        north.battery_low.below_pct, 20,
        "the site inherits the fleet's table"
    );
    assert_eq!(north.battery_low.clear_above_pct, 30);
}

#[test]
fn a_sites_clear_threshold_under_its_raise_threshold_names_the_sites_key() {
    let (key, msg) = error("[sites.SITE-1.battery_low]\nbelow_pct = 20\nclear_above_pct = 10\n");
    assert_eq!(
        key, "rules.sites.SITE-1.battery_low.clear_above_pct",
        "{msg}"
    );
    assert!(msg.contains("hysteresis"), "{msg}");
    // the fleet's own tables are checked the same way
    let (key, _) = error("[battery_low]\nbelow_pct = 40\n");
    assert_eq!(key, "rules.battery_low.clear_above_pct");
}

#[test]
fn an_unknown_key_in_a_rule_table_is_named() {
    let (key, msg) = error("[battery_low]\nbelow = 10\n");
    assert!(key.starts_with("rules.battery_low"), "{key}: {msg}");
    assert!(msg.contains("below"), "{msg}");
    let (key, msg) = error("[sites.north.door_left_open]\nafter_minutes = 3\n");
    assert!(
        key.starts_with("rules.sites.north.door_left_open"),
        "{key}: {msg}"
    );
    assert!(msg.contains("after_minutes"), "{msg}");
    let (key, msg) = error("[door_left_opn]\nafter_ms = 1\n");
    assert!(key.starts_with("rules"), "{key}: {msg}");
    assert!(msg.contains("door_left_opn"), "{msg}");
}

#[test]
fn a_value_of_the_wrong_type_is_named() {
    let (key, msg) = error("[offline]\nafter_ms = \"5 min\"\n");
    assert_eq!(key, "rules.offline.after_ms", "{msg}");
    let (key, msg) = error("[sites.north]\nsupply = \"wind\"\n");
    assert_eq!(key, "rules.sites.north.supply", "{msg}");
}

#[test]
fn a_bad_site_id_is_named() {
    let (key, msg) = error("[sites.\"bad site!\"]\nsupply = \"mains\"\n");
    assert_eq!(key, "rules.sites.bad site!", "{msg}");
    assert!(msg.contains("POST /v1/sites"), "{msg}");
    let (key, _) = error("[sites]\nnorth = 3\n");
    assert_eq!(key, "rules.sites.north");
}

#[test]
fn engine_settings_out_of_range_are_named() {
    let mut cfg = rules_cfg("");
    cfg.tick_ms = 0;
    let Err(e) = cfg.compile() else {
        panic!("tick_ms = 0 compiled");
    };
    assert!(e.to_string().starts_with("rules.tick_ms"), "{e}");
    let (key, _) = error("max_conditions_per_cabinet = 2\n");
    assert_eq!(key, "rules.max_conditions_per_cabinet");
    let (key, _) = error("[flapping]\ndisconnects = 0\n");
    assert_eq!(key, "rules.flapping.disconnects");
}
