//! The console's fleet API with a real gateway and real agents: the summary, the sites page and
//! a site's page move with a deposit and with a cabinet going offline; sites are paged and
//! filtered server-side; the search finds orders by tracking number, phone (written
//! differently), reference and id, never another carrier's; site managers read only their
//! sites (another is 404) and their cabinets, events and commands; carriers never the
//! cabinet routes.

use locker_tests::agent::TestCabinet;
use locker_tests::gateway::TestGateway;
use locker_tests::parcels::{self, DHL_TOKEN, MANAGER_TOKEN, SITE, UPS_TOKEN};
use locker_tests::pki::TestPki;
use locker_tests::{api::ApiClient, eventually_async};
use serde_json::{json, Value};

/// The summary as `client` sees it.
async fn summary(client: &ApiClient) -> Value {
    let (s, b) = client.get("/v1/fleet/summary").await;
    assert_eq!(s, 200, "{b}");
    b
}

/// The row of the test site on the sites page as `client` sees it.
async fn site_row(client: &ApiClient) -> Value {
    let (s, b) = client.get("/v1/fleet/sites").await;
    assert_eq!(s, 200, "{b}");
    b["sites"]
        .as_array()
        .and_then(|a| a.iter().find(|r| r["id"] == SITE).cloned())
        .unwrap_or_else(|| panic!("no {SITE} row: {b}"))
}

fn m(v: &Value, status: &str) -> u64 {
    v["compartments"]["M"][status].as_u64().unwrap_or(u64::MAX)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_move_with_a_deposit_and_a_cabinet_going_offline() {
    let mut pki = TestPki::new();
    let gw = TestGateway::start_with(&pki, parcels::tokens).await;
    let cab = TestCabinet::start(&mut pki, "CAB-F1", gw.edge_addr()).await;
    let mut other = TestCabinet::start(&mut pki, "CAB-F2", gw.edge_addr()).await;
    parcels::online(&gw.api, "CAB-F1").await;
    parcels::online(&gw.api, "CAB-F2").await;
    parcels::setup(&gw.api, &["CAB-F1", "CAB-F2"]).await;
    let (op, dhl, mgr) = (
        gw.api.clone(),
        gw.api.with_token(DHL_TOKEN),
        gw.api.with_token(MANAGER_TOKEN),
    );

    let s = summary(&op).await;
    assert_eq!(
        (s["sites"].as_u64(), s["cabinets"].as_u64()),
        (Some(1), Some(2)),
        "{s}"
    );
    assert_eq!((&s["online"], &s["offline"]), (&json!(2), &json!(0)), "{s}");
    assert_eq!((m(&s, "total"), m(&s, "free")), (32, 32), "{s}");
    assert_eq!(s["compartments"]["S"]["total"], 0, "{s}");
    assert!(
        s["outbox_pending"].is_u64(),
        "an operator sees the backlog: {s}"
    );
    for k in ["critical", "warning", "info"] {
        assert!(s["alerts"][k].is_u64(), "{s}");
    }

    // a reservation, then the deposit: reserved, then occupied, everywhere
    let o = parcels::order(&dhl, "JJD-FLEET-1", "M").await;
    let c = o["compartment"].as_u64().expect("compartment");
    let s = summary(&op).await;
    assert_eq!((m(&s, "reserved"), m(&s, "free")), (1, 31), "{s}");
    parcels::remote_deposit(&dhl, &cab, &o).await;
    let s = summary(&op).await;
    assert_eq!(
        (m(&s, "reserved"), m(&s, "occupied"), m(&s, "free")),
        (0, 1, 31),
        "{s}"
    );
    let row = site_row(&op).await;
    assert_eq!(
        (m(&row, "occupied"), row["cabinets"].as_u64()),
        (1, Some(2)),
        "{row}"
    );
    let (st, d) = op.get(&format!("/v1/fleet/sites/{SITE}")).await;
    assert_eq!(st, 200, "{d}");
    assert_eq!(d["site"]["id"], SITE, "{d}");
    let f1 = &d["cabinets"][0];
    assert_eq!(
        (f1["id"].as_str(), m(f1, "occupied")),
        (Some("CAB-F1"), 1),
        "{d}"
    );
    assert!(f1["last_seen"].is_string(), "{d}");
    assert_eq!(m(&d["cabinets"][1], "occupied"), 0, "{d}");

    // the site manager and the carrier see the same occupancy of their site; the carrier no
    // alerts and no backlog
    assert_eq!(m(&summary(&mgr).await, "occupied"), 1);
    let ds = summary(&dhl).await;
    assert_eq!(
        (m(&ds, "occupied"), ds["sites"].as_u64()),
        (1, Some(1)),
        "{ds}"
    );
    assert!(ds["outbox_pending"].is_null(), "{ds}");
    assert!(summary(&mgr).await["outbox_pending"].is_null());

    // the cabinet's commands: the remote open with its outcome, newest first
    let (st, b) = mgr.get("/v1/cabinets/CAB-F1/commands").await;
    assert_eq!(st, 200, "{b}");
    let first = &b["commands"][0];
    assert_eq!(first["outcome"], "opened", "{b}");
    assert_eq!(
        first["action"],
        json!({"type": "unlock", "compartment": c}),
        "{b}"
    );
    let (st, r) = op
        .post(
            "/v1/cabinets/CAB-F1/commands",
            json!({"action": {"type": "unlock", "compartment": 16}, "wait_ms": 10_000}),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    let (_, b) = op.get("/v1/cabinets/CAB-F1/commands?limit=1").await;
    let list = b["commands"].as_array().expect("commands");
    assert_eq!(list.len(), 1, "{b}");
    assert_eq!(
        (&list[0]["id"], &list[0]["outcome"]),
        (&r["id"], &json!("opened")),
        "{b}"
    );
    assert_eq!(
        op.get("/v1/cabinets/CAB-F2/commands").await.1["commands"],
        json!([])
    );

    // a cabinet goes offline: the figures follow
    other.stop().await;
    let s = eventually_async("the summary counts CAB-F2 offline", || async {
        let s = summary(&op).await;
        (s["offline"] == 1).then_some(s)
    })
    .await;
    assert_eq!(s["online"], 1, "{s}");
    let row = site_row(&mgr).await;
    assert_eq!(
        (row["online"].as_u64(), row["offline"].as_u64()),
        (Some(1), Some(1)),
        "{row}"
    );
    let (_, d) = mgr.get(&format!("/v1/fleet/sites/{SITE}")).await;
    assert_eq!(
        (
            d["cabinets"][0]["online"].as_bool(),
            d["cabinets"][1]["online"].as_bool()
        ),
        (Some(true), Some(false)),
        "{d}"
    );
    assert!(d["cabinets"][1]["last_seen"].is_string(), "{d}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn site_managers_and_carriers_see_only_their_cabinets() {
    let mut pki = TestPki::new();
    let gw = TestGateway::start_with(&pki, parcels::tokens).await;
    let _cab = TestCabinet::start(&mut pki, "CAB-M1", gw.edge_addr()).await;
    let _far = TestCabinet::start(&mut pki, "CAB-M2", gw.edge_addr()).await;
    parcels::online(&gw.api, "CAB-M1").await;
    parcels::online(&gw.api, "CAB-M2").await;
    parcels::setup(&gw.api, &["CAB-M1"]).await;
    let (st, b) = gw
        .api
        .put(
            "/v1/sites/elsewhere",
            json!({"name": "Elsewhere", "time_zone": "Europe/Berlin", "cabinets": ["CAB-M2"]}),
        )
        .await;
    assert_eq!(st, 200, "{b}");
    let (mgr, dhl) = (
        gw.api.with_token(MANAGER_TOKEN),
        gw.api.with_token(DHL_TOKEN),
    );

    // its own cabinet: state, events and commands
    for path in ["", "/events", "/commands"] {
        let (st, b) = mgr.get(&format!("/v1/cabinets/CAB-M1{path}")).await;
        assert_eq!(st, 200, "{path}: {b}");
        // another site's cabinet does not exist for it; a carrier may not ask
        let (st, b) = mgr.get(&format!("/v1/cabinets/CAB-M2{path}")).await;
        assert_eq!(
            (st, b["error"].as_str()),
            (404, Some("not_found")),
            "{path}: {b}"
        );
        let (st, b) = dhl.get(&format!("/v1/cabinets/CAB-M1{path}")).await;
        assert_eq!(
            (st, b["error"].as_str()),
            (403, Some("forbidden")),
            "{path}: {b}"
        );
    }
    let (_, b) = mgr.get("/v1/cabinets/CAB-M1").await;
    assert_eq!(b["id"], "CAB-M1", "{b}");
    // raw commands, the whole fleet list and quarantine stay operator-only
    let (st, _) = mgr
        .post(
            "/v1/cabinets/CAB-M1/commands",
            json!({"action": {"type": "unlock", "compartment": 1}}),
        )
        .await;
    assert_eq!(st, 403);
    assert_eq!(mgr.get("/v1/cabinets").await.0, 403);

    // the fleet pages: its site only, another site is 404
    let (st, b) = mgr.get("/v1/fleet/sites").await;
    assert_eq!(st, 200, "{b}");
    let ids: Vec<&str> = b["sites"]
        .as_array()
        .expect("sites")
        .iter()
        .filter_map(|s| s["id"].as_str())
        .collect();
    assert_eq!(ids, [SITE], "{b}");
    let (st, b) = mgr.get("/v1/fleet/sites/elsewhere").await;
    assert_eq!((st, b["error"].as_str()), (404, Some("not_found")), "{b}");
    let s = summary(&mgr).await;
    assert_eq!(
        (s["sites"].as_u64(), s["cabinets"].as_u64()),
        (Some(1), Some(1)),
        "{s}"
    );
    let s = summary(&gw.api).await;
    assert_eq!(
        (s["sites"].as_u64(), s["cabinets"].as_u64()),
        (Some(2), Some(2)),
        "{s}"
    );
    let (_, b) = mgr.get("/v1/search?q=CAB-M").await;
    assert_eq!(
        b["cabinets"],
        json!([{"id": "CAB-M1", "site": SITE}]),
        "{b}"
    );

    // a carrier serving one site sees that site only
    let (st, b) = gw
        .api
        .put("/v1/carriers/dhl", json!({"name": "DHL", "sites": [SITE]}))
        .await;
    assert_eq!(st, 200, "{b}");
    let (_, b) = dhl.get("/v1/fleet/sites").await;
    assert_eq!(b["sites"].as_array().map(Vec::len), Some(1), "{b}");
    assert_eq!(
        b["sites"][0]["alerts"],
        json!({"critical": 0, "warning": 0, "info": 0})
    );
    assert_eq!(dhl.get("/v1/fleet/sites/elsewhere").await.0, 404);
    let (_, b) = gw.api.with_token(UPS_TOKEN).get("/v1/fleet/sites").await;
    assert_eq!(
        b["sites"].as_array().map(Vec::len),
        Some(2),
        "a carrier with no sites serves all: {b}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sites_are_paged_and_filtered_on_the_server() {
    let pki = TestPki::new();
    let gw = TestGateway::start_with(&pki, parcels::tokens).await;
    let names = [
        ("berlin-hbf", "Berlin Hauptbahnhof"),
        ("berlin-ost", "Berlin Ostbahnhof"),
        ("hamburg-hbf", "Hamburg Hbf"),
        ("koeln-dom", "Köln Dom"),
        ("muenchen-ost", "München Ost"),
    ];
    for (id, name) in names {
        let (st, b) = gw
            .api
            .put(
                &format!("/v1/sites/{id}"),
                json!({"name": name, "time_zone": "Europe/Berlin"}),
            )
            .await;
        assert_eq!(st, 200, "{b}");
    }
    let ids = |b: &Value| -> Vec<String> {
        b["sites"]
            .as_array()
            .expect("sites")
            .iter()
            .filter_map(|s| s["id"].as_str().map(str::to_owned))
            .collect()
    };
    let mut seen = Vec::new();
    let mut after = String::new();
    for _ in 0..3 {
        let (st, b) = gw
            .api
            .get(&format!("/v1/fleet/sites?limit=2&after={after}"))
            .await;
        assert_eq!(st, 200, "{b}");
        seen.extend(ids(&b));
        match b["next_after"].as_str() {
            Some(a) => after = a.to_owned(),
            None => break,
        }
    }
    let all: Vec<String> = names.iter().map(|(id, _)| (*id).to_owned()).collect();
    assert_eq!(seen, all);
    let (_, b) = gw.api.get("/v1/fleet/sites?limit=5").await;
    assert_eq!((ids(&b).len(), &b["next_after"]), (5, &Value::Null), "{b}");
    let (_, b) = gw.api.get("/v1/fleet/sites?q=OST").await;
    assert_eq!(ids(&b), ["berlin-ost", "muenchen-ost"], "{b}");
    let (_, b) = gw.api.get("/v1/fleet/sites?q=hauptbahnhof").await;
    assert_eq!(ids(&b), ["berlin-hbf"], "by name: {b}");
    let (_, b) = gw.api.get("/v1/fleet/sites?q=berlin&limit=1").await;
    assert_eq!(
        (ids(&b), b["next_after"].as_str()),
        (vec!["berlin-hbf".to_owned()], Some("berlin-hbf")),
        "{b}"
    );
    let (_, b) = gw
        .api
        .get("/v1/fleet/sites?q=berlin&limit=1&after=berlin-hbf")
        .await;
    assert_eq!(
        (ids(&b), &b["next_after"]),
        (vec!["berlin-ost".to_owned()], &Value::Null),
        "{b}"
    );
    let (st, b) = gw.api.get("/v1/fleet/sites?after=Not%20A%20Site").await;
    assert_eq!((st, b["error"].as_str()), (400, Some("bad_id")), "{b}");
    let (_, b) = gw.api.get("/v1/search?q=hamburg").await;
    assert_eq!(
        b["sites"],
        json!([{"id": "hamburg-hbf", "name": "Hamburg Hbf"}]),
        "{b}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_finds_orders_by_tracking_phone_and_reference_never_another_carriers() {
    let mut pki = TestPki::new();
    let gw = TestGateway::start_with(&pki, parcels::tokens).await;
    let _cab = TestCabinet::start(&mut pki, "CAB-S1", gw.edge_addr()).await;
    parcels::online(&gw.api, "CAB-S1").await;
    parcels::setup(&gw.api, &["CAB-S1"]).await;
    let (dhl, ups, mgr) = (
        gw.api.with_token(DHL_TOKEN),
        gw.api.with_token(UPS_TOKEN),
        gw.api.with_token(MANAGER_TOKEN),
    );
    let create = |client: ApiClient, tracking: &'static str, reference: &'static str| async move {
        let (st, b) = client
            .post(
                "/v1/orders",
                json!({"site": SITE, "size": "S", "tracking": tracking, "reference": reference,
                       "recipient": {"phone": "+491701234567"}}),
            )
            .await;
        assert_eq!(st, 201, "{b}");
        b["id"].as_str().expect("id").to_owned()
    };
    let mine = create(dhl.clone(), "JJD000111", "SHOP-4711").await;
    let theirs = create(ups.clone(), "1Z999AA1", "SHOP-0815").await;
    let found = |b: &Value| -> Vec<String> {
        b["orders"]
            .as_array()
            .expect("orders")
            .iter()
            .filter_map(|o| o["id"].as_str().map(str::to_owned))
            .collect()
    };
    for q in [
        "jjd000111",
        "%2B49%20170%201234567",
        "0049-170-1234567",
        "SHOP-4711",
        mine.as_str(),
    ] {
        let (st, b) = dhl.get(&format!("/v1/search?q={q}")).await;
        assert_eq!(st, 200, "{b}");
        assert_eq!(found(&b), vec![mine.clone()], "dhl searching {q}: {b}");
        assert_eq!(b["orders"][0]["tracking"], "JJD000111", "{b}");
    }
    // never another carrier's order, whatever is typed
    for q in ["1Z999AA1", "SHOP-0815", theirs.as_str()] {
        let (_, b) = dhl.get(&format!("/v1/search?q={q}")).await;
        assert_eq!(found(&b), Vec::<String>::new(), "dhl searching {q}: {b}");
    }
    let (_, b) = ups.get("/v1/search?q=%2B491701234567").await;
    assert_eq!(found(&b), vec![theirs.clone()], "{b}");
    // the site manager sees both of its site; an operator too
    let (_, b) = mgr.get("/v1/search?q=491701234567").await;
    assert_eq!(found(&b).len(), 2, "{b}");
    let (_, b) = gw.api.get("/v1/search?q=cab-s").await;
    assert_eq!(
        b["cabinets"],
        json!([{"id": "CAB-S1", "site": SITE}]),
        "{b}"
    );
    // nothing for nothing
    let (st, b) = gw.api.get("/v1/search?q=").await;
    assert_eq!(st, 200);
    assert_eq!(b, json!({"sites": [], "cabinets": [], "orders": []}));
    // a short number matches no phone
    let (_, b) = gw.api.get("/v1/search?q=4567").await;
    assert_eq!(found(&b), Vec::<String>::new(), "{b}");
}
