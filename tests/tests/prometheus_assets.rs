//! The Prometheus assets shipped in `broker-config/prometheus/`: the Grafana dashboard is a
//! dashboard Grafana 10/11 imports, every metric the dashboard and the alert rules read is one
//! the real gateway exports, the alert rules are complete (severity, summary, description,
//! runbook, a firing unit test each), and, where `promtool` is installed, promtool accepts the
//! rules, passes their unit tests and parses every dashboard query.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use locker_tests::gateway::TestGateway;
use locker_tests::pki::TestPki;
use serde_json::Value;
use yaml_rust2::{Yaml, YamlLoader};

/// The folder of the assets.
fn assets() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../broker-config/prometheus")
}

fn read(name: &str) -> String {
    let path = assets().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn dashboard() -> Value {
    serde_json::from_str(&read("grafana-fleet.json")).expect("grafana-fleet.json is JSON")
}

fn yaml(name: &str) -> Yaml {
    YamlLoader::load_from_str(&read(name))
        .unwrap_or_else(|e| panic!("{name} is YAML: {e}"))
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("{name} holds a document"))
}

/// One alerting rule of alerts.yml.
struct Rule {
    alert: String,
    expr: String,
    for_: Option<String>,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
}

fn string_map(y: &Yaml) -> BTreeMap<String, String> {
    y.as_hash()
        .map(|h| {
            h.iter()
                .filter_map(|(k, v)| Some((k.as_str()?.to_owned(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

/// The rules of alerts.yml, with the name of their group.
fn alert_rules() -> Vec<(String, Rule)> {
    let doc = yaml("alerts.yml");
    let groups = doc["groups"].as_vec().expect("alerts.yml: groups");
    let mut out = Vec::new();
    for g in groups {
        let group = g["name"].as_str().expect("group name").to_owned();
        for r in g["rules"].as_vec().expect("group rules") {
            out.push((
                group.clone(),
                Rule {
                    alert: r["alert"].as_str().expect("an alerting rule").to_owned(),
                    expr: r["expr"].as_str().expect("expr").to_owned(),
                    for_: r["for"].as_str().map(str::to_owned),
                    labels: string_map(&r["labels"]),
                    annotations: string_map(&r["annotations"]),
                },
            ));
        }
    }
    out
}

/// The panels that are not rows, with their targets' exprs.
fn dashboard_exprs(d: &Value) -> Vec<(String, String)> {
    panels(d)
        .into_iter()
        .filter(|p| p["type"] != "row")
        .flat_map(|p| {
            let title = p["title"].as_str().unwrap_or("?").to_owned();
            p["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(move |t| Some((title.clone(), t["expr"].as_str()?.to_owned())))
        })
        .collect()
}

/// Every panel, those inside collapsed rows included.
fn panels(d: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        out.push(p);
        out.extend(p["panels"].as_array().into_iter().flatten());
    }
    out
}

/// The metric names a PromQL expression reads: every identifier outside string literals that
/// starts with `locker_` (label names and functions never do), and `up` used as a selector.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let b = expr.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'"' || c == b'\'' || c == b'`' {
            i += 1;
            while i < b.len() && b[i] != c {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
        } else if c.is_ascii_alphabetic() || c == b'_' || c == b':' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b':') {
                i += 1;
            }
            let word = &expr[start..i];
            let next = expr[i..].trim_start().chars().next();
            if word.starts_with("locker_") || (word == "up" && next == Some('{')) {
                names.insert(word.to_owned());
            }
        } else {
            i += 1;
        }
    }
    names
}

/// The series selectors an expression reads through `increase(`: metric name and the label
/// values it requires (`name{a="x"}[15m]` gives `name`, `[(a, x)]`).
fn increase_selectors(expr: &str) -> Vec<(String, Vec<(String, String)>)> {
    let mut out = Vec::new();
    for part in expr.split("increase(").skip(1) {
        let Some(selector) = part.split('[').next() else {
            continue;
        };
        let (name, labels) = match selector.split_once('{') {
            Some((n, l)) => (n.trim(), l.trim_end().trim_end_matches('}')),
            None => (selector.trim(), ""),
        };
        let labels = labels
            .split(',')
            .filter_map(|m| {
                let (k, v) = m.split_once('=')?;
                // Equality matchers only (`=~` and `!=` select no one series).
                let v = v.strip_prefix('"')?.strip_suffix('"')?;
                (!k.ends_with('!')).then(|| (k.trim().to_owned(), v.to_owned()))
            })
            .collect();
        out.push((name.to_owned(), labels));
    }
    out
}

/// Whether a Prometheus text exposition has a sample of `name` carrying every one of `labels`.
fn has_series(text: &str, name: &str, labels: &[(String, String)]) -> bool {
    text.lines().filter(|l| !l.starts_with('#')).any(|l| {
        let Some(rest) = l.strip_prefix(name) else {
            return false;
        };
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            return false;
        }
        labels
            .iter()
            .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
    })
}

/// Metrics Prometheus makes itself for every target (not the gateway's to export).
const PROMETHEUS_SERIES: &[&str] = &["up"];

/// Whether `registry` holds a metric family named `name`, with or without series. The prometheus
/// crate leaves a labelled family out of its text exposition until a series exists, and its
/// `Registry` has no listing of descriptors; what it does enforce is that a fully-qualified name
/// is registered once: registering a probe collector under `name` (no labels, no series, so it
/// never shows in a scrape) fails exactly when a family of that name is registered. A probe
/// that registers is unregistered at once.
fn registered(registry: &prometheus::Registry, name: &str) -> bool {
    use prometheus::core::{Collector, Desc};
    use prometheus::proto::MetricFamily;
    struct Probe(Vec<Desc>);
    impl Collector for Probe {
        fn desc(&self) -> Vec<&Desc> {
            self.0.iter().collect()
        }
        fn collect(&self) -> Vec<MetricFamily> {
            Vec::new()
        }
    }
    let probe = || {
        let desc = Desc::new(name.into(), "probe".into(), vec![], HashMap::new())
            .expect("a valid metric name");
        Box::new(Probe(vec![desc]))
    };
    match registry.register(probe()) {
        Err(_) => true,
        Ok(()) => {
            registry.unregister(probe()).expect("unregister the probe");
            false
        }
    }
}

/// The `# TYPE` lines of a Prometheus text exposition: family name -> type.
fn exposed_families(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.strip_prefix("# TYPE ")?.split_whitespace();
            Some((w.next()?.to_owned(), w.next()?.to_owned()))
        })
        .collect()
}

#[test]
fn grafana_dashboard_is_one_grafana_imports() {
    let d = dashboard();
    assert_eq!(d["schemaVersion"], 39, "schemaVersion");
    assert_eq!(d["title"], "Locker Hub fleet");
    let uid = d["uid"].as_str().expect("uid");
    assert!(
        !uid.is_empty() && uid.len() <= 40,
        "uid of 1 to 40 characters"
    );
    assert!(d["id"].is_null(), "no database id in a shared dashboard");

    // The import input and the datasource variable every panel uses.
    let inputs = d["__inputs"].as_array().expect("__inputs");
    assert!(
        inputs.iter().any(|i| i["name"] == "DS_PROMETHEUS"
            && i["type"] == "datasource"
            && i["pluginId"] == "prometheus"),
        "__inputs declares DS_PROMETHEUS, a prometheus datasource"
    );
    let vars = d["templating"]["list"].as_array().expect("templating.list");
    let ds_var = vars
        .iter()
        .find(|v| v["type"] == "datasource" && v["query"] == "prometheus")
        .expect("a prometheus datasource variable");
    assert_eq!(
        ds_var["current"]["value"], "${DS_PROMETHEUS}",
        "the datasource variable defaults to the imported DS_PROMETHEUS"
    );
    let ds_ref = format!("${{{}}}", ds_var["name"].as_str().expect("variable name"));
    let site = vars
        .iter()
        .find(|v| v["name"] == "site")
        .expect("a site variable");
    assert_eq!(site["includeAll"], true, "site is optional (All)");
    assert!(
        site["definition"]
            .as_str()
            .is_some_and(|q| q.contains("label_values(") && q.contains("site)")),
        "site lists the site label values"
    );
    let declared: BTreeSet<&str> = vars.iter().filter_map(|v| v["name"].as_str()).collect();

    // Panels: unique ids, known types, a place on the 24-column grid without overlaps, the
    // datasource variable, and queries with distinct refIds.
    const TYPES: &[&str] = &[
        "row",
        "timeseries",
        "stat",
        "table",
        "bargauge",
        "gauge",
        "piechart",
        "text",
        "barchart",
        "state-timeline",
    ];
    let mut ids = BTreeSet::new();
    let mut boxes: Vec<(i64, i64, i64, i64, String)> = Vec::new();
    let mut rows = Vec::new();
    for p in panels(&d) {
        let title = p["title"].as_str().expect("panel title").to_owned();
        let id = p["id"].as_i64().unwrap_or_else(|| panic!("{title}: id"));
        assert!(ids.insert(id), "{title}: panel id {id} is not unique");
        let kind = p["type"]
            .as_str()
            .unwrap_or_else(|| panic!("{title}: type"));
        assert!(TYPES.contains(&kind), "{title}: unknown panel type {kind}");
        let g = &p["gridPos"];
        let [h, w, x, y] = ["h", "w", "x", "y"].map(|k| {
            g[k].as_i64()
                .unwrap_or_else(|| panic!("{title}: gridPos.{k}"))
        });
        assert!(
            h >= 1 && (1..=24).contains(&w) && x >= 0 && x + w <= 24 && y >= 0,
            "{title}: gridPos {g}"
        );
        for (bx, by, bw, bh, other) in &boxes {
            let overlap = x < bx + bw && *bx < x + w && y < by + bh && *by < y + h;
            assert!(!overlap, "{title} overlaps {other}");
        }
        boxes.push((x, y, w, h, title.clone()));
        if kind == "row" {
            rows.push(title);
            continue;
        }
        assert_eq!(
            p["datasource"]["type"], "prometheus",
            "{title}: datasource type"
        );
        assert_eq!(
            p["datasource"]["uid"],
            ds_ref.as_str(),
            "{title}: datasource"
        );
        let targets = p["targets"]
            .as_array()
            .unwrap_or_else(|| panic!("{title}: targets"));
        assert!(!targets.is_empty(), "{title}: no query");
        let mut refs = BTreeSet::new();
        for t in targets {
            let r = t["refId"]
                .as_str()
                .unwrap_or_else(|| panic!("{title}: refId"));
            assert!(refs.insert(r), "{title}: refId {r} twice");
            let expr = t["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("{title}: expr"));
            assert!(
                !metric_names(expr).is_empty(),
                "{title}: {expr} reads no metric"
            );
            if !t["datasource"].is_null() {
                assert_eq!(
                    t["datasource"], p["datasource"],
                    "{title}: target datasource"
                );
            }
            // Every variable a query uses is declared (or one of Grafana's own).
            for var in expr.split('$').skip(1) {
                let name: String = var
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                assert!(
                    name.starts_with("__") || declared.contains(name.as_str()),
                    "{title}: ${name} is not a dashboard variable"
                );
            }
        }
    }
    for want in ["Fleet", "Alerts", "Power", "Queues", "Ingest", "Parcels"] {
        assert!(
            rows.iter().any(|r| r == want),
            "row {want} missing: {rows:?}"
        );
    }
}

#[test]
fn alert_rules_are_complete_and_each_has_a_firing_unit_test() {
    let rules = alert_rules();
    let want = [
        "LockerGatewayDown",
        "LockerIngestStorageFailing",
        "LockerFleetOfflineShareHigh",
        "LockerCriticalAlertsActive",
        "LockerManyDoorsForced",
        "LockerAlertsSurge",
        "LockerCommandQueueStale",
        "LockerCommandsWithoutOutcome",
        "LockerIngestLagHigh",
        "LockerReplayBacklogHigh",
        "LockerLowBatteryCabinets",
        "LockerParcelStorageErrors",
    ];
    let names: BTreeSet<&str> = rules.iter().map(|(_, r)| r.alert.as_str()).collect();
    for w in want {
        assert!(names.contains(w), "alert {w} missing");
    }
    let severities: BTreeSet<(&str, &str)> = rules
        .iter()
        .map(|(_, r)| (r.alert.as_str(), r.labels["severity"].as_str()))
        .collect();
    assert!(severities.contains(&("LockerFleetOfflineShareHigh", "warning")));
    assert!(severities.contains(&("LockerFleetOfflineShareHigh", "critical")));
    for (group, r) in &rules {
        let a = &r.alert;
        assert_eq!(group, "locker-hub", "{a}: group");
        assert!(r.for_.is_some(), "{a}: no `for:`");
        assert!(
            matches!(
                r.labels.get("severity").map(String::as_str),
                Some("critical" | "warning")
            ),
            "{a}: severity"
        );
        assert!(!r.expr.trim().is_empty(), "{a}: expr");
        for k in ["summary", "description"] {
            assert!(
                r.annotations.get(k).is_some_and(|s| !s.is_empty()),
                "{a}: {k}"
            );
        }
        assert!(
            r.annotations["description"].contains("{{ $value")
                || r.annotations["description"].contains("{{ $labels."),
            "{a}: the description shows the value or labels"
        );
        assert!(
            r.annotations
                .get("runbook_url")
                .is_some_and(|u| u.ends_with("README.md#troubleshooting")),
            "{a}: runbook_url to the README's troubleshooting section"
        );
    }
    assert!(
        read("../../README.md").contains("\n### Troubleshooting\n"),
        "the runbook anchor #troubleshooting exists in README.md"
    );

    // Every alert fires in at least one unit test (exp_alerts not empty).
    let tests = yaml("alerts.test.yml");
    assert!(
        tests["rule_files"]
            .as_vec()
            .is_some_and(|f| f.iter().any(|f| f.as_str() == Some("alerts.yml"))),
        "alerts.test.yml tests alerts.yml"
    );
    let mut fired: BTreeSet<(String, String)> = BTreeSet::new();
    for t in tests["tests"].as_vec().expect("tests") {
        for case in t["alert_rule_test"].as_vec().into_iter().flatten() {
            let name = case["alertname"].as_str().expect("alertname").to_owned();
            for exp in case["exp_alerts"].as_vec().into_iter().flatten() {
                let sev = exp["exp_labels"]["severity"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned();
                assert!(
                    !exp["exp_annotations"]["description"].is_badvalue(),
                    "{name}: a firing case checks the annotations"
                );
                fired.insert((name.clone(), sev));
            }
        }
    }
    for (_, r) in &rules {
        let key = (r.alert.clone(), r.labels["severity"].clone());
        assert!(fired.contains(&key), "no unit test where {key:?} fires");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_assets_read_is_exported_by_the_gateway() {
    // Where each metric is used: alert names and dashboard panel titles.
    let mut used: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (_, r) in alert_rules() {
        for m in metric_names(&r.expr) {
            used.entry(m)
                .or_default()
                .insert(format!("alert {}", r.alert));
        }
    }
    let d = dashboard();
    for (title, expr) in dashboard_exprs(&d) {
        for m in metric_names(&expr) {
            used.entry(m)
                .or_default()
                .insert(format!("panel {title:?}"));
        }
    }
    assert!(
        used.len() > 20,
        "the assets read the fleet's metrics: {used:?}"
    );

    let pki = TestPki::new();
    // The dashboard's per-cabinet panels read the families behind `[rules] per_cabinet_metrics`.
    let gw = TestGateway::start_with(&pki, |cfg| cfg.rules.per_cabinet_metrics = true).await;
    // What a scrape shows (over the wire), and for labelled families with no series yet (left
    // out of the exposition by the prometheus crate), the gateway's registry itself.
    let exposed = exposed_families(&gw.api.metrics().await);
    let registry = &gw.gw.metrics.registry;
    let mut missing = Vec::new();
    let mut without_series = Vec::new();
    for (name, wherever) in &used {
        if PROMETHEUS_SERIES.contains(&name.as_str()) {
            continue;
        }
        // A histogram's series: name_bucket, name_sum, name_count.
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                let base = name.strip_suffix(s)?;
                let histogram = exposed.get(base).is_some_and(|t| t == "histogram")
                    || (!exposed.contains_key(name) && registered(registry, base));
                histogram.then_some(base)
            })
            .unwrap_or(name);
        if exposed.contains_key(family) {
            continue;
        }
        if registered(registry, family) {
            without_series.push(family.to_owned());
            continue;
        }
        missing.push(format!(
            "{name} (used by {})",
            wherever.iter().cloned().collect::<Vec<_>>().join(", ")
        ));
    }
    println!("registered, no series before traffic: {without_series:?}");
    assert!(
        missing.is_empty(),
        "the gateway does not export {} metric(s) the alert rules or the dashboard read:\n  {}",
        missing.len(),
        missing.join("\n  ")
    );
    gw.stop().await;
}

/// A counter series that appears for the first time at 1 shows no `increase()` (Prometheus has
/// no earlier sample to compare with), so an alert on `increase(...) > 0` would miss the first
/// event after every gateway start. Every series an alert rule reads through `increase()` must
/// therefore exist, at 0, as soon as the gateway starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_the_alerts_watch_exist_at_zero_from_the_start() {
    let pki = TestPki::new();
    let gw = TestGateway::start(&pki).await;
    let text = gw.api.metrics().await;
    let mut absent = Vec::new();
    for (_, r) in alert_rules() {
        for (name, labels) in increase_selectors(&r.expr) {
            if !has_series(&text, &name, &labels) {
                absent.push(format!("{name}{labels:?} (alert {})", r.alert));
            }
        }
    }
    assert!(
        absent.is_empty(),
        "series the alerts' increase() reads are missing before their first event:\n  {}",
        absent.join("\n  ")
    );
    gw.stop().await;
}

/// Whether `promtool` runs here (CI installs it through broker-config/prometheus/check.sh).
fn promtool() -> bool {
    Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn run_promtool(args: &[&str], dir: &Path) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run promtool");
    assert!(
        out.status.success(),
        "promtool {} failed:\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn promtool_accepts_the_rules_their_tests_and_the_dashboard_queries() {
    if !promtool() {
        println!(
            "SKIPPED: promtool is not on PATH (broker-config/prometheus/check.sh installs it; \
             .ci/run runs that first)"
        );
        return;
    }
    let dir = assets();
    run_promtool(&["check", "rules", "alerts.yml"], &dir);
    run_promtool(&["test", "rules", "alerts.test.yml"], &dir);

    // The dashboard's queries, with Grafana's variables given values, as recording rules:
    // `promtool check rules` parses each one.
    let d = dashboard();
    let mut rules = String::from("groups:\n  - name: grafana-fleet\n    rules:\n");
    for (n, (_, expr)) in dashboard_exprs(&d).iter().enumerate() {
        let expr = expr
            .replace("$__rate_interval", "5m")
            .replace("$instance", ".*")
            .replace("$site", ".*");
        let quoted = serde_json::to_string(&expr).expect("quote");
        rules.push_str(&format!(
            "      - record: grafana_fleet:query{n}\n        expr: {quoted}\n"
        ));
    }
    let tmp = tempfile::tempdir().expect("temp dir");
    std::fs::write(tmp.path().join("dashboard-queries.yml"), rules).expect("write rules");
    run_promtool(&["check", "rules", "dashboard-queries.yml"], tmp.path());
}
