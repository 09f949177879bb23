//! Webhooks end to end: real gateway, real cabinet agent, real HTTP receivers started by the
//! test. An integrator subscribes and receives every order transition in order, signed so
//! that Python's `hmac` verifies it; a carrier's subscription sees only its own parcels; a
//! carrier's tracking endpoint gets its own shape; a dead receiver's deliveries go to the dead
//! letters and come back on replay; a hung receiver does not hold back the others; a secret
//! rotation signs with both secrets; and a `kill -9` of the gateway loses nothing and keeps
//! the order per cabinet.

use std::collections::{BTreeMap, HashSet};

use locker_gateway::config::GatewayConfig;
use locker_gateway::outbound::config::CarrierTracking;
use locker_tests::agent::TestCabinet;
use locker_tests::api::ApiClient;
use locker_tests::gateway::{test_config, GatewayProcess, TestGateway};
use locker_tests::hooks::{python_rejects, Hook, Mode, Receiver};
use locker_tests::parcels::{self, DHL_TOKEN, MANAGER_TOKEN, UPS_TOKEN};
use locker_tests::pki::TestPki;
use locker_tests::{eventually, eventually_async};
use serde_json::{json, Value};

/// Quick retries for tests; receivers on plain http.
fn hooks_config(cfg: &mut GatewayConfig) {
    parcels::tokens(cfg);
    cfg.webhooks.allow_http = true;
    cfg.webhooks.poll_ms = 20;
    cfg.webhooks.retry_base_ms = 50;
    cfg.webhooks.retry_max_ms = 200;
}

async fn subscribe(client: &ApiClient, url: &str, events: Value) -> (String, String) {
    let (s, b) = client
        .post("/v1/webhooks", json!({"url": url, "events": events}))
        .await;
    assert_eq!(s, 201, "{b}");
    assert!(b["secret"].as_str().expect("secret").starts_with("whsec_"));
    (
        b["id"].as_str().expect("id").to_owned(),
        b["secret"].as_str().expect("secret").to_owned(),
    )
}

/// The `order.*` event types received for one order, in arrival order, first occurrences.
fn order_types(hooks: &[Hook], order: &str) -> Vec<String> {
    let mut seen = HashSet::new();
    hooks
        .iter()
        .filter(|h| seen.insert(h.id.clone()))
        .map(Hook::json)
        .filter(|b| b["data"]["order"] == order && b["type"] != "order.exception")
        .map(|b| b["type"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integrators_receive_signed_events_in_order_within_their_scope() {
    let rx = Receiver::start().await;
    let mut pki = TestPki::new();
    let tracking_url = rx.url("/dhl-tracking");
    let gw = TestGateway::start_with(&pki, |cfg| {
        hooks_config(cfg);
        cfg.webhooks.carriers.insert(
            "dhl".into(),
            toml::from_str::<CarrierTracking>(&format!(
                r#"
                url = "{tracking_url}"
                statuses = {{ ready = "DELIVERED_TO_LOCKER", picked_up = "PICKED_UP" }}
                headers = {{ "x-api-key" = "dhl-key" }}
                "#
            ))
            .expect("carrier tracking"),
        );
    })
    .await;
    let cab = TestCabinet::start(&mut pki, "CAB-WH1", gw.edge_addr()).await;
    parcels::online(&gw.api, "CAB-WH1").await;
    parcels::setup(&gw.api, &["CAB-WH1"]).await;
    let (dhl, ups) = (gw.api.with_token(DHL_TOKEN), gw.api.with_token(UPS_TOKEN));
    let manager = gw.api.with_token(MANAGER_TOKEN);

    let (all_id, all_secret) = subscribe(&gw.api, &rx.url("/all"), json!(["*"])).await;
    let (dhl_id, dhl_secret) = subscribe(&dhl, &rx.url("/dhl"), json!(["order.*"])).await;
    // scopes: a site manager cannot filter on a site that is not its own, a carrier on
    // another carrier; unknown types are refused by name
    let (s, b) = manager
        .post(
            "/v1/webhooks",
            json!({"url": rx.url("/m"), "events": ["*"], "sites": ["elsewhere"]}),
        )
        .await;
    assert_eq!(s, 403, "{b}");
    let (s, b) = dhl
        .post(
            "/v1/webhooks",
            json!({"url": rx.url("/x"), "events": ["*"], "carriers": ["ups"]}),
        )
        .await;
    assert_eq!(s, 403, "{b}");
    let (s, b) = dhl
        .post(
            "/v1/webhooks",
            json!({"url": rx.url("/x"), "events": ["order.shipped"]}),
        )
        .await;
    assert_eq!(s, 400, "{b}");
    assert!(
        b["message"]
            .as_str()
            .unwrap_or_default()
            .contains("order.shipped"),
        "{b}"
    );
    let (s, b) = dhl
        .post(
            "/v1/webhooks",
            json!({"url": "ftp://x.example/", "events": ["*"]}),
        )
        .await;
    assert_eq!(s, 400, "{b}");
    // a carrier lists only its own subscriptions; another's is not found
    let (_, b) = dhl.get("/v1/webhooks").await;
    let ids: Vec<_> = b["webhooks"]
        .as_array()
        .expect("list")
        .iter()
        .map(|w| w["id"].clone())
        .collect();
    assert_eq!(ids, vec![json!(dhl_id)]);
    let (s, _) = ups.get(&format!("/v1/webhooks/{dhl_id}")).await;
    assert_eq!(s, 404);

    // a DHL parcel deposited, a UPS order cancelled
    let o1 = parcels::order(&dhl, "JJD-WH-1", "S").await;
    let o1_id = o1["id"].as_str().expect("id").to_owned();
    parcels::remote_deposit(&dhl, &cab, &o1).await;
    let o2 = parcels::order(&ups, "1Z-WH-2", "S").await;
    let o2_id = o2["id"].as_str().expect("id").to_owned();
    let (s, b) = ups
        .post(&format!("/v1/orders/{o2_id}/cancel"), json!({}))
        .await;
    assert_eq!(s, 200, "{b}");

    eventually("every event at /all", || {
        let t = order_types(&rx.hooks_to("/all"), &o2_id);
        t.last().map(String::as_str) == Some("order.cancelled")
    })
    .await;
    eventually("the ready event at /dhl", || {
        order_types(&rx.hooks_to("/dhl"), &o1_id).contains(&"order.ready".to_owned())
    })
    .await;
    let all = rx.hooks_to("/all");
    // in order: every transition of the deposit, then the cancellation
    let t1 = order_types(&all, &o1_id);
    let pos = |t: &str| {
        t1.iter()
            .position(|x| x == t)
            .unwrap_or_else(|| panic!("{t} in {t1:?}"))
    };
    assert!(pos("order.reserved") < pos("order.deposited"), "{t1:?}");
    assert!(pos("order.deposited") < pos("order.ready"), "{t1:?}");
    assert_eq!(
        order_types(&all, &o2_id).last().map(String::as_str),
        Some("order.cancelled")
    );
    // the body names what happened, with who and why; the header id is the body's id
    let ready = all
        .iter()
        .map(Hook::json)
        .find(|b| b["type"] == "order.ready" && b["data"]["order"] == o1_id.as_str())
        .expect("order.ready");
    assert_eq!(ready["data"]["tracking"], "JJD-WH-1");
    assert_eq!(ready["carrier"], "dhl");
    assert_eq!(ready["site"], parcels::SITE);
    assert_eq!(ready["cabinet"], "CAB-WH1");
    assert!(all.iter().all(|h| h.json()["id"] == h.id.as_str()));
    // DHL's subscription got none of UPS's parcels
    let dhl_hooks = rx.hooks_to("/dhl");
    assert!(
        dhl_hooks.iter().all(|h| h.json()["carrier"] == "dhl"),
        "only DHL's parcels"
    );
    assert!(order_types(&dhl_hooks, &o2_id).is_empty());
    // the signatures verify with Python's hmac, and not with the other secret
    assert_eq!(python_rejects(&all_secret, &all), Vec::<String>::new());
    assert_eq!(
        python_rejects(&dhl_secret, &dhl_hooks),
        Vec::<String>::new()
    );
    assert_eq!(python_rejects(&dhl_secret, &all[..1]).len(), 1);

    // DHL's tracking system got "delivered to locker" in its own shape, with its key
    let tracking = {
        let url = "/dhl-tracking";
        eventually("the tracking update", || !rx.hooks_to(url).is_empty()).await;
        rx.hooks_to(url)
    };
    assert_eq!(tracking.len(), 1, "one mapped state so far");
    let t = tracking[0].json();
    assert_eq!(t["tracking_number"], "JJD-WH-1");
    assert_eq!(t["status"], "DELIVERED_TO_LOCKER");
    assert!(t["occurred_at"].as_str().expect("time").ends_with('Z'));
    assert_eq!(tracking[0].headers["x-api-key"], "dhl-key");

    // the cabinet going away is an event too (operators' subscription)
    drop(cab);
    eventually("cabinet.offline", || {
        rx.hooks_to("/all")
            .iter()
            .any(|h| h.json()["type"] == "cabinet.offline" && h.json()["cabinet"] == "CAB-WH1")
    })
    .await;

    // health and metrics per endpoint
    let (_, v) = gw.api.get(&format!("/v1/webhooks/{all_id}")).await;
    assert!(v["health"]["delivered"].as_u64().unwrap_or(0) >= 4, "{v}");
    assert!(v.get("secret").is_none(), "the secret is shown once");
    let m = gw
        .api
        .metric(&format!(
            "locker_outbound_delivered_total{{target=\"{all_id}\"}}"
        ))
        .await;
    assert!(m >= 4.0, "{m}");
    let (_, targets) = gw.api.get("/v1/outbound/targets").await;
    assert!(targets["targets"]
        .as_array()
        .expect("targets")
        .iter()
        .any(|t| t["target"] == "carrier:dhl"));
    let (s, _) = dhl.get("/v1/outbound/targets").await;
    assert_eq!(s, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_receivers_are_dead_lettered_replayed_and_never_hold_back_others() {
    let (down, hung, up) = (
        Receiver::start().await,
        Receiver::start().await,
        Receiver::start().await,
    );
    down.set(Mode::Status(503));
    hung.set(Mode::Hang);
    let pki = TestPki::new();
    let gw = TestGateway::start_with(&pki, |cfg| {
        hooks_config(cfg);
        cfg.webhooks.max_age_s = 1;
        cfg.webhooks.concurrency_per_endpoint = 2;
        cfg.webhooks.timeout_ms = 60_000;
    })
    .await;
    parcels::setup(&gw.api, &[]).await;
    let (down_id, _) = subscribe(&gw.api, &down.url("/h"), json!(["order.*"])).await;
    let (hung_id, _) = subscribe(&gw.api, &hung.url("/h"), json!(["order.*"])).await;
    let (up_id, up_secret) = subscribe(&gw.api, &up.url("/h"), json!(["order.*"])).await;
    let dhl = gw.api.with_token(DHL_TOKEN);

    // orders at a site without cabinets: created, then cancelled (two events each)
    let mut ids = Vec::new();
    for i in 0..5 {
        let (s, b) = dhl
            .post(
                "/v1/orders",
                json!({"site": parcels::SITE, "size": "S", "tracking": format!("T-{i}"),
                       "recipient": {"phone": "+4915100000000"}}),
            )
            .await;
        assert_eq!(s, 201, "{b}");
        let id = b["id"].as_str().expect("id").to_owned();
        let (s, b) = dhl
            .post(&format!("/v1/orders/{id}/cancel"), json!({}))
            .await;
        assert_eq!(s, 200, "{b}");
        ids.push(id);
    }
    let expected = |hooks: &[Hook]| {
        ids.iter()
            .all(|o| order_types(hooks, o).last().map(String::as_str) == Some("order.cancelled"))
    };
    // the live receiver has everything while the hung one still holds its first requests
    eventually("the live receiver has every event", || {
        expected(&up.hooks())
    })
    .await;
    let (_, h) = gw.api.get(&format!("/v1/webhooks/{hung_id}")).await;
    assert!(
        hung.hooks().is_empty(),
        "the hung receiver answered nothing"
    );
    assert_eq!(
        h["health"]["in_flight"], 1,
        "one key (no cabinet) is sent in order: {h}"
    );
    assert!(h["health"]["pending"].as_u64().unwrap_or(0) >= 10, "{h}");

    // the dead one gives up after max_age_s: dead letters, listable
    let n = eventually_async("dead letters", || async {
        let (_, v) = gw.api.get(&format!("/v1/webhooks/{down_id}")).await;
        let dead = v["health"]["dead_lettered"].as_u64().unwrap_or(0);
        (dead >= 10 && v["health"]["pending"] == 0).then_some(dead)
    })
    .await;
    let (s, d) = gw
        .api
        .get(&format!("/v1/webhooks/{down_id}/dead-letters?limit=1000"))
        .await;
    assert_eq!(s, 200, "{d}");
    let letters = d["dead_letters"].as_array().expect("letters");
    assert_eq!(letters.len() as u64, n);
    assert!(
        letters[0]["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("503"),
        "{}",
        letters[0]
    );
    assert!(letters[0]["entry"]["attempts"].as_u64().unwrap_or(0) >= 1);
    assert!(
        gw.api
            .metric(&format!(
                "locker_outbound_dead_lettered_total{{target=\"{down_id}\"}}"
            ))
            .await
            >= 10.0
    );
    assert!(
        gw.api
            .metric(&format!(
                "locker_outbound_failed_total{{target=\"{down_id}\"}}"
            ))
            .await
            >= 10.0
    );

    // back up: a replay delivers them all, in order
    down.set(Mode::Up);
    let (s, r) = gw
        .api
        .post(
            &format!("/v1/webhooks/{down_id}/dead-letters/replay"),
            json!({}),
        )
        .await;
    assert_eq!(s, 202, "{r}");
    assert_eq!(r["replayed"].as_u64(), Some(n));
    eventually("replayed events delivered", || expected(&down.hooks())).await;
    let (_, d) = gw
        .api
        .get(&format!("/v1/webhooks/{down_id}/dead-letters"))
        .await;
    assert!(d["dead_letters"].as_array().expect("letters").is_empty());

    // a rotation signs with the new and the previous secret for a while
    let (s, r) = gw
        .api
        .post(
            &format!("/v1/webhooks/{up_id}/rotate-secret"),
            json!({"keep_old_s": 3600}),
        )
        .await;
    assert_eq!(s, 200, "{r}");
    let new_secret = r["secret"].as_str().expect("secret").to_owned();
    assert!(r["previous_secret_expires"].as_u64().is_some(), "{r}");
    let (s, p) = gw
        .api
        .post(&format!("/v1/webhooks/{up_id}/ping"), json!({}))
        .await;
    assert_eq!(s, 202, "{p}");
    let ping_id = p["event_id"].as_str().expect("event id").to_owned();
    eventually("the ping", || up.hooks().iter().any(|h| h.id == ping_id)).await;
    let ping: Vec<Hook> = up.hooks().into_iter().filter(|h| h.id == ping_id).collect();
    assert_eq!(
        ping[0].signature.split(' ').count(),
        2,
        "{}",
        ping[0].signature
    );
    assert!(python_rejects(&new_secret, &ping).is_empty());
    assert!(python_rejects(&up_secret, &ping).is_empty());

    // releasing the hung receiver lets its queue drain; deleting a subscription forgets it
    hung.set(Mode::Up);
    eventually("the hung receiver catches up", || expected(&hung.hooks())).await;
    let (s, _) = gw.api.delete(&format!("/v1/webhooks/{hung_id}")).await;
    assert_eq!(s, 204);
    let (s, _) = gw.api.get(&format!("/v1/webhooks/{hung_id}")).await;
    assert_eq!(s, 404);
}

/// The parcel trail's order transitions as event ids, in trail order.
async fn trail_ids(api: &ApiClient) -> Vec<(String, String)> {
    let (_, b) = api.get("/v1/parcel-audit?limit=1000").await;
    b["records"]
        .as_array()
        .expect("records")
        .iter()
        .filter(|r| r["what"] == "order" && r["from"] != r["to"])
        .map(|r| {
            (
                format!("evt_parcel_{}", r["pos"]),
                r["cabinet"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_webhook_and_keeps_the_order_per_cabinet() {
    let rx = Receiver::start().await;
    rx.set(Mode::Status(503));
    let mut pki = TestPki::new();
    let data = tempfile::tempdir().expect("temp dir");
    let mut cfg = test_config(&pki, data.path());
    let ports = [locker_tests::net::reserve(), locker_tests::net::reserve()];
    cfg.edge.listen = ports[0].addr();
    cfg.api.listen = ports[1].addr();
    hooks_config(&mut cfg);
    let mut gw = GatewayProcess::start(&cfg);
    let cabs = [
        TestCabinet::start(&mut pki, "CAB-WK1", gw.edge_addr).await,
        TestCabinet::start(&mut pki, "CAB-WK2", gw.edge_addr).await,
    ];
    for c in ["CAB-WK1", "CAB-WK2"] {
        parcels::online(&gw.api, c).await;
    }
    parcels::setup(&gw.api, &["CAB-WK1", "CAB-WK2"]).await;
    let (_, secret) = subscribe(&gw.api, &rx.url("/h"), json!(["order.*"])).await;
    let dhl = gw.api.with_token(DHL_TOKEN);

    // a first round while the receiver is down: queued, not delivered
    let mut orders = Vec::new();
    for i in 0..6 {
        orders.push(parcels::order(&dhl, &format!("JJD-K-{i}"), "S").await);
    }
    for o in &orders[..3] {
        let id = o["id"].as_str().expect("id");
        let (s, b) = dhl
            .post(&format!("/v1/orders/{id}/cancel"), json!({}))
            .await;
        assert_eq!(s, 200, "{b}");
    }
    let first = trail_ids(&gw.api).await;
    assert!(first.len() >= 9, "{first:?}");
    eventually_async("queued", || async {
        let (_, b) = gw.api.get("/v1/webhooks").await;
        (b["webhooks"][0]["health"]["pending"].as_u64().unwrap_or(0) >= first.len() as u64)
            .then_some(())
    })
    .await;
    gw.kill9();
    gw.restart();
    let dhl = gw.api.with_token(DHL_TOKEN);

    // the receiver comes back: deliveries resume; a second round is killed mid-delivery
    rx.set(Mode::Up);
    for o in &orders[3..] {
        let id = o["id"].as_str().expect("id");
        let (s, b) = dhl
            .post(&format!("/v1/orders/{id}/cancel"), json!({}))
            .await;
        assert_eq!(s, 200, "{b}");
    }
    gw.kill9();
    gw.restart();
    let all = trail_ids(&gw.api).await;
    let want: HashSet<&String> = all.iter().map(|(id, _)| id).collect();
    eventually("every event delivered", || {
        let got: HashSet<String> = rx.hooks().into_iter().map(|h| h.id).collect();
        want.iter().all(|id| got.contains(*id))
    })
    .await;

    // after dedup by webhook-id, each cabinet's events arrived in trail order
    let hooks = rx.hooks();
    let mut seen = HashSet::new();
    let mut per_cabinet: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for h in &hooks {
        if !seen.insert(h.id.clone()) {
            continue;
        }
        let b = h.json();
        if let Some(pos) =
            h.id.strip_prefix("evt_parcel_")
                .and_then(|p| p.parse::<u64>().ok())
        {
            per_cabinet
                .entry(b["cabinet"].as_str().unwrap_or_default().to_owned())
                .or_default()
                .push(pos);
        }
    }
    for (cab, seqs) in &per_cabinet {
        let mut sorted = seqs.clone();
        sorted.sort_unstable();
        assert_eq!(seqs, &sorted, "cabinet {cab}: arrival order");
    }
    assert_eq!(seen.len(), want.len(), "nothing unexpected");
    assert!(python_rejects(&secret, &hooks).is_empty());
    drop(cabs);
}
