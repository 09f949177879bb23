//! The console's server side, without a browser: logins trade an API token for an `HttpOnly`,
//! `SameSite=Strict` cookie that carries the token's scope; every unsafe call with the cookie
//! needs the session's CSRF token and a same-origin browser; logout and a token removed from
//! the configuration end sessions, a restart does not; the live feed (`/v1/live`) is scoped;
//! the console's files come with their security headers.

use locker_tests::agent::TestCabinet;
use locker_tests::api::TEST_TOKEN;
use locker_tests::console::{try_login, Live, Session};
use locker_tests::gateway::TestGateway;
use locker_tests::parcels::{self, DHL_TOKEN, MANAGER_TOKEN, UPS_TOKEN};
use locker_tests::pki::TestPki;
use reqwest::Method;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_carries_its_tokens_scope_and_every_change_needs_its_csrf_token() {
    let pki = TestPki::new();
    let gw = TestGateway::start_with(&pki, parcels::tokens).await;
    let api = gw.gw.api_addr;
    parcels::setup(&gw.api, &[]).await;

    // refused logins: an unknown token, another origin, a malformed body
    let bad = try_login(api, "not-a-token-at-all-000", None).await;
    assert_eq!(
        (bad.status, bad.body["error"].as_str()),
        (401, Some("unauthorized"))
    );
    assert!(bad.set_cookie.is_none());
    let foreign = try_login(api, DHL_TOKEN, Some("https://evil.example")).await;
    assert_eq!(
        (foreign.status, foreign.body["error"].as_str()),
        (403, Some("csrf"))
    );
    assert!(foreign.set_cookie.is_none());

    // a carrier's login: the cookie's attributes and who it is
    let dhl = Session::login(api, DHL_TOKEN).await;
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(dhl.set_cookie.contains(attr), "{}", dhl.set_cookie);
    }
    assert!(
        !dhl.set_cookie.contains("Secure"),
        "plain HTTP: {}",
        dhl.set_cookie
    );
    assert_eq!(dhl.me["scope"], "carrier");
    assert_eq!(dhl.me["carrier"], "dhl");
    assert_eq!(dhl.me["name"], "dhl-api");
    let (s, me) = dhl.get("/console/session").await;
    assert_eq!((s, &me["csrf"]), (200, &json!(dhl.csrf)));

    // reads with the cookie, in the token's scope
    let (s, b) = dhl.get("/v1/orders").await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = dhl.get("/v1/cabinets").await;
    assert_eq!(
        (s, b["error"].as_str()),
        (403, Some("forbidden")),
        "still a carrier"
    );

    // changes: no CSRF token, a wrong one, or a cross-site browser are refused
    let courier = "/v1/carriers/dhl/couriers/dhl-c9";
    let body = || Some(json!({"name": "C9", "badge": "BADGE-DHL-0009"}));
    let (s, b) = dhl.send(Method::PUT, courier, body(), None, &[]).await;
    assert_eq!((s, b["error"].as_str()), (403, Some("csrf")), "{b}");
    let (s, _) = dhl
        .send(Method::PUT, courier, body(), Some("guess"), &[])
        .await;
    assert_eq!(s, 403);
    let csrf = dhl.csrf.clone();
    let (s, _) = dhl
        .send(
            Method::PUT,
            courier,
            body(),
            Some(&csrf),
            &[("sec-fetch-site", "cross-site")],
        )
        .await;
    assert_eq!(s, 403);
    let (s, _) = dhl
        .send(
            Method::PUT,
            courier,
            body(),
            Some(&csrf),
            &[("origin", "https://evil.example")],
        )
        .await;
    assert_eq!(s, 403);
    let (s, b) = gw.api.get("/v1/carriers/dhl/couriers").await;
    assert_eq!(s, 200);
    assert!(
        !b.to_string().contains("dhl-c9"),
        "nothing refused took effect: {b}"
    );
    // ... and with it, the change is made
    let (s, b) = dhl.call(Method::PUT, courier, body()).await;
    assert_eq!(s, 200, "{b}");

    // a bearer token still works without any of this
    let (s, _) = gw.api.with_token(UPS_TOKEN).get("/v1/orders").await;
    assert_eq!(s, 200);

    // logout needs the CSRF token too, then the cookie is dead
    let (s, _) = dhl
        .send(Method::DELETE, "/console/session", None, None, &[])
        .await;
    assert_eq!(s, 403);
    let (s, _) = dhl.call(Method::DELETE, "/console/session", None).await;
    assert_eq!(s, 204);
    let (s, b) = dhl.get("/v1/orders").await;
    assert_eq!((s, b["error"].as_str()), (401, Some("unauthorized")));
    let (s, _) = dhl.get("/console/session").await;
    assert_eq!(s, 401);

    let m = gw.api.metrics().await;
    let v = |sample: &str| locker_tests::api::metric_value(&m, sample);
    assert_eq!(v("locker_console_logins_total{outcome=\"ok\"}"), 1.0);
    assert_eq!(
        v("locker_console_logins_total{outcome=\"unknown_token\"}"),
        1.0
    );
    assert_eq!(
        v("locker_console_logins_total{outcome=\"cross_origin\"}"),
        1.0
    );
    assert_eq!(v("locker_console_refused_total{reason=\"csrf\"}"), 5.0);
    assert!(v("locker_console_refused_total{reason=\"unknown\"}") >= 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_survive_a_restart_and_end_with_their_token() {
    let pki = TestPki::new();
    let gw = TestGateway::start_with(&pki, parcels::tokens).await;
    let api = gw.gw.api_addr;
    let mgr = Session::login(api, MANAGER_TOKEN).await;
    let op = Session::login(api, TEST_TOKEN).await;
    assert_eq!(mgr.me["scope"], "site_manager");
    assert_eq!(mgr.me["sites"], json!([parcels::SITE]));

    let gw = gw.restart().await;
    let (s, b) = mgr.get("/v1/sites").await;
    assert_eq!(s, 200, "the session is on disk: {b}");
    let (s, _) = op.get("/v1/cabinets").await;
    assert_eq!(s, 200);

    // the site manager's token is taken out of the configuration
    let mut stopped = gw.stop().await;
    stopped.config.api.tokens.remove(MANAGER_TOKEN);
    let gw = stopped.start().await;
    let (s, b) = mgr.get("/v1/sites").await;
    assert_eq!((s, b["error"].as_str()), (401, Some("unauthorized")), "{b}");
    let (s, _) = op.get("/v1/cabinets").await;
    assert_eq!(s, 200, "other sessions go on");
    let m = gw.api.metrics().await;
    assert_eq!(
        locker_tests::api::metric_value(
            &m,
            "locker_console_refused_total{reason=\"token_revoked\"}"
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_feed_tells_each_scope_only_its_own_changes() {
    let mut pki = TestPki::new();
    let gw = TestGateway::start_with(&pki, parcels::tokens).await;
    let api = gw.gw.api_addr;
    let cab = TestCabinet::start(&mut pki, "cab-live-1", gw.edge_addr()).await;
    parcels::online(&gw.api, &cab.id).await;
    parcels::setup(&gw.api, &[cab.id.as_str()]).await;

    // nobody watches yet: the feed has no broker link
    let linked = |m: &str| locker_tests::api::metric_value(m, "locker_live_linked");
    assert_eq!(linked(&gw.api.metrics().await), 0.0);
    let mut op = Live::bearer(api, TEST_TOKEN, "").await;
    assert_eq!(op.status, 200);
    // the first subscriber brings the link up, and is told to refetch what came before
    op.until("the resync of a new link", |e, _| e == "resync")
        .await;
    assert_eq!(linked(&gw.api.metrics().await), 1.0);
    assert!(
        op.content_type.starts_with("text/event-stream"),
        "{}",
        op.content_type
    );
    let mut ups = Live::bearer(api, UPS_TOKEN, "").await;
    let dhl_session = Session::login(api, DHL_TOKEN).await;
    let mut dhl = dhl_session.live(&format!("?cabinet={}", cab.id)).await;
    let mgr_session = Session::login(api, MANAGER_TOKEN).await;
    let mut mgr = mgr_session.live(&format!("?site={}", parcels::SITE)).await;
    let (s, b) = gw.api.get("/v1/live?cabinet=NOT%20AN%20ID").await;
    assert_eq!((s, b["error"].as_str()), (400, Some("bad_request")));

    // a DHL order: DHL, the operator and the site's manager hear of it; UPS never does
    let order = parcels::order(&gw.api.with_token(DHL_TOKEN), "LIVE-1", "M").await;
    let id = order["id"].as_str().expect("id").to_owned();
    let is_order = |e: &str, d: &serde_json::Value| e == "change" && d["order"] == id.as_str();
    let seen = op.until("the order, for the operator", is_order).await;
    assert_eq!(seen["site"], parcels::SITE);
    let seen = dhl.until("DHL's order", is_order).await;
    assert_eq!(seen["stream"], "parcel");
    assert_eq!(seen["cabinet"], cab.id.as_str());
    assert!(
        seen.get("carrier").is_none(),
        "the carrier field is not sent: {seen}"
    );
    let seen = mgr.until("the order at the manager's site", is_order).await;
    assert_eq!(seen["site"], parcels::SITE);

    // the door opens for the deposit: the operator and the manager see the door, DHL does not
    parcels::remote_deposit(&gw.api.with_token(DHL_TOKEN), &cab, &order).await;
    let door = |e: &str, d: &serde_json::Value| e == "change" && d["stream"] == "door";
    let d = mgr.until("the door event", door).await;
    assert_eq!(d["state"], "open");
    op.until("the door event, for the operator", door).await;
    dhl.until("the order ready", |e, d| {
        is_order(e, d) && d["state"] == "ready"
    })
    .await;

    // a second cabinet connects: UPS sees its presence, and nothing before it (the feed is
    // in order, so a DHL event it could see would have come first)
    let cab2 = TestCabinet::start(&mut pki, "cab-live-2", gw.edge_addr()).await;
    let before = {
        let mut before = Vec::new();
        let d = ups
            .until("the second cabinet's presence", |e, d| {
                if d["cabinet"] != cab2.id.as_str() {
                    before.push((e.to_owned(), d.clone()));
                    return false;
                }
                d["stream"] == "presence"
            })
            .await;
        assert_eq!(d["state"], "online");
        before
    };
    for (_, d) in &before {
        assert_ne!(
            d["stream"], "parcel",
            "UPS saw another carrier's order: {d}"
        );
        assert_ne!(d["stream"], "door", "UPS saw a door: {d}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_files_come_with_their_security_headers() {
    let pki = TestPki::new();
    let gw = TestGateway::start(&pki).await;
    let base = format!("http://{}", gw.gw.api_addr);
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let r = http
        .get(format!("{base}/console"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status().as_u16(), 308);
    assert_eq!(r.headers()["location"], "/console/");

    let r = http
        .get(format!("{base}/console/"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status().as_u16(), 200);
    let h = r.headers().clone();
    assert!(h["content-type"]
        .to_str()
        .expect("ct")
        .starts_with("text/html"));
    let csp = h["content-security-policy"].to_str().expect("csp");
    assert!(
        csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert_eq!(h["x-frame-options"], "DENY");
    assert_eq!(h["x-content-type-options"], "nosniff");
    let etag = h["etag"].to_str().expect("etag").to_owned();
    let r = http
        .get(format!("{base}/console/"))
        .header("if-none-match", &etag)
        .send()
        .await
        .expect("get");
    assert_eq!(r.status().as_u16(), 304, "unchanged: not sent again");

    for path in [
        "/console/assets/nothing-here.js",
        "/console/assets/../Cargo.toml",
    ] {
        let r = http.get(format!("{base}{path}")).send().await.expect("get");
        assert_eq!(r.status().as_u16(), 404, "{path}");
    }
    // every script the shell loads is served as JavaScript
    for file in locker_gateway::console::assets::list() {
        if let Some(rest) = file.strip_prefix("assets/") {
            let r = http
                .get(format!("{base}/console/assets/{rest}"))
                .send()
                .await
                .expect("get");
            assert_eq!(r.status().as_u16(), 200, "{file}");
            if file.ends_with(".js") {
                assert!(r.headers()["content-type"]
                    .to_str()
                    .expect("ct")
                    .starts_with("text/javascript"));
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orders_notices_are_read_by_order_within_its_scope() {
    let mut pki = TestPki::new();
    let gw = TestGateway::start_with(&pki, parcels::tokens).await;
    let cab = TestCabinet::start(&mut pki, "cab-notices-1", gw.edge_addr()).await;
    parcels::online(&gw.api, &cab.id).await;
    parcels::setup(&gw.api, &[cab.id.as_str()]).await;
    let dhl = gw.api.with_token(DHL_TOKEN);
    let first = parcels::order(&dhl, "NOTICE-1", "M").await;
    let second = parcels::order(&dhl, "NOTICE-2", "M").await;
    parcels::remote_deposit(&dhl, &cab, &first).await;
    let id = first["id"].as_str().expect("id");
    let ready = parcels::notice(&gw.api, id, "ready").await;

    let path = format!("/v1/orders/{id}/notifications");
    let (s, b) = dhl.get(&path).await;
    assert_eq!(s, 200, "{b}");
    let list = b["notifications"].as_array().expect("list");
    assert_eq!(list.len(), 1, "{b}");
    assert_eq!(list[0]["id"], ready["id"]);
    assert_eq!(list[0]["order"], id);
    let other = format!(
        "/v1/orders/{}/notifications",
        second["id"].as_str().expect("id")
    );
    let (s, b) = dhl.get(&other).await;
    assert_eq!(
        (s, b["notifications"].as_array().map(Vec::len)),
        (200, Some(0)),
        "{b}"
    );
    let (s, b) = gw.api.with_token(UPS_TOKEN).get(&path).await;
    assert_eq!(
        (s, b["error"].as_str()),
        (404, Some("not_found")),
        "another carrier's order"
    );
    let (s, _) = gw.api.with_token(MANAGER_TOKEN).get(&path).await;
    assert_eq!(s, 200, "the site's manager");
}
