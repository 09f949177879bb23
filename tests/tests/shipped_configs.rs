//! Every configuration file shipped in the repository loads and validates with the struct of
//! the binary it is for, so a typo or a stale key in a shipped file fails the build's tests.

use std::path::{Path, PathBuf};

use locker_agent::AgentConfig;
use locker_gateway::config::GatewayConfig;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf()
}

/// Every `.toml` in the repository except Cargo manifests, lock files, rustfmt and build
/// output.
fn shipped_tomls() -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![repo_root()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir") {
            let p = entry.expect("entry").path();
            let name = p
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_owned();
            if p.is_dir() {
                if !matches!(name.as_str(), "target" | ".git" | "state" | "fuzz") {
                    stack.push(p);
                }
            } else if name.ends_with(".toml")
                && !matches!(name.as_str(), "Cargo.toml" | "rustfmt.toml" | "config.toml")
            {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn every_shipped_config_file_loads() {
    let files = shipped_tomls();
    let mut gateways = 0;
    let mut agents = 0;
    for f in &files {
        let name = f.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if name.starts_with("gateway") {
            let cfg =
                GatewayConfig::load(Some(f)).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            assert!(
                !cfg.api.tokens.is_empty() || cfg.api.listen.ip().is_loopback(),
                "{}",
                f.display()
            );
            gateways += 1;
        } else if name.starts_with("agent") {
            let cfg = AgentConfig::load(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            assert!(cfg.cabinet().is_ok(), "{}: cabinet id", f.display());
            agents += 1;
        } else if f
            .parent()
            .and_then(|d| d.file_name())
            .and_then(|n| n.to_str())
            == Some("messages")
        {
            // notification message files: loaded as a templates_dir, every text compiles
            let cfg = locker_gateway::outbound::notify::NotifyConfig {
                enabled: true,
                templates_dir: f.parent().map(std::path::Path::to_path_buf),
                ..Default::default()
            };
            locker_gateway::outbound::notify::Notifier::new(&cfg)
                .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        } else {
            panic!(
                "{} is a shipped config file this test does not know how to load",
                f.display()
            );
        }
    }
    assert!(
        gateways >= 1,
        "the default gateway.toml is shipped: {files:?}"
    );
    assert!(agents >= 1, "the default agent.toml is shipped: {files:?}");
}

#[test]
fn defaults_are_valid_and_round_trip_through_toml() {
    let g = GatewayConfig::default();
    let text = toml::to_string(&g).expect("to TOML");
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, text).expect("write");
    GatewayConfig::load(Some(&path)).expect("the defaults load back");
    assert!(
        GatewayConfig::load(Some(&dir.path().join("missing.toml"))).is_err(),
        "a missing file is an error, not silently the defaults"
    );
    std::fs::write(&path, "[edge]\nlisten = \"not an address\"\n").expect("write");
    let err = GatewayConfig::load(Some(&path)).expect_err("a bad value is refused");
    assert!(
        err.to_string().contains("listen"),
        "the error names the key: {err}"
    );
}

/// The shipped gateway.toml documents the rules engine's defaults: every rule table there
/// compiles to exactly the built-in rule set (a default changed in one place only fails).
#[test]
fn shipped_rules_are_the_built_in_defaults() {
    let f = repo_root().join("broker-config/gateway.toml");
    let cfg = GatewayConfig::load(Some(&f)).expect("gateway.toml loads");
    let compiled = cfg.rules.compile().expect("rules compile");
    assert_eq!(
        *compiled.fleet,
        locker_gateway::rules::config::RuleSet::default()
    );
    for kind in [
        "offline",
        "flapping",
        "replay_backlog",
        "network_failover",
        "battery_low",
        "solar_deficit",
        "charger_fault",
        "on_battery",
        "door_left_open",
        "door_forced",
        "lock_jammed",
        "parcel_sensor",
        "queue_waiting",
        "queue_deep",
        "command_no_outcome",
        "board_offline",
        "outbox_full",
        "clock_skew",
    ] {
        assert!(
            cfg.rules.rules.contains_key(kind),
            "gateway.toml documents [rules.{kind}]"
        );
    }
}
