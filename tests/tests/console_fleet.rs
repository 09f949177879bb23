//! The operations console in a real browser (issue 12): headless Chromium driven over
//! WebDriver ([`locker_tests::browser::Browser`]) against a real gateway with a real agent on a
//! simulated lock board, logged in with scoped tokens (operator, site manager, two carriers).
//!
//! Covered: login (and a wrong token), the fleet and site pages, a deposit appearing live on the
//! cabinet picture, the admin override with its mandatory reason and the door it opened, carrier
//! scoping also by typed URLs, logout (and the back button), the phone layout. With
//! `LOCKER_SCREENSHOTS=<dir>` the tests save the fleet, site and cabinet pages there as PNG.

use locker_schemas::CompartmentId;
use locker_tests::agent::TestCabinet;
use locker_tests::api::TEST_TOKEN;
use locker_tests::browser::Browser;
use locker_tests::console::ConsoleWorld;
use locker_tests::parcels::{self, DHL_TOKEN, MANAGER_TOKEN, SITE, UPS_TOKEN};
use locker_tests::{eventually, eventually_async};
use serde_json::{json, Value};

const CAB: &str = "cab-console-1";
/// A cabinet of another site, outside the reach of the UPS carrier and the site manager.
const OTHER_CAB: &str = "cab-console-9";
const OTHER_SITE: &str = "other-site";

/// A gateway with the parcel world (one site, one real cabinet online, carriers restricted so
/// `ups` reaches only [`SITE`]) and a browser.
struct World {
    c: ConsoleWorld,
    cab: TestCabinet,
}

impl std::ops::Deref for World {
    type Target = ConsoleWorld;
    fn deref(&self) -> &ConsoleWorld {
        &self.c
    }
}

impl World {
    async fn start() -> Self {
        let mut c = ConsoleWorld::start(|_| {}).await;
        let gw = &c.gw;
        let cab = TestCabinet::start(&mut c.pki, CAB, gw.edge_addr()).await;
        parcels::setup(&gw.api, &[CAB]).await;
        parcels::online(&gw.api, CAB).await;
        let (s, b) = gw
            .api
            .put(
                &format!("/v1/sites/{OTHER_SITE}"),
                json!({"name": "Other site", "time_zone": "Europe/Berlin", "cabinets": [OTHER_CAB]}),
            )
            .await;
        assert_eq!(s, 200, "{b}");
        let (s, b) = gw
            .api
            .put("/v1/carriers/ups", json!({"name": "UPS", "sites": [SITE]}))
            .await;
        assert_eq!(s, 200, "{b}");
        Self { c, cab }
    }

    async fn close(self) {
        self.c.close().await;
    }
}

/// Whether the page scrolls sideways (the body wider than the window).
async fn scrolls_sideways(b: &Browser) -> Value {
    b.eval(
        "return document.documentElement.scrollWidth > window.innerWidth + 1
             || document.body.scrollWidth > window.innerWidth + 1;",
        vec![],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_fleet_and_site_pages() {
    let w = World::start().await;
    let b = &w.c.browser;

    // a wrong token: an error, no navigation
    b.goto(&format!("{}/console/", w.base())).await;
    b.wait_for("[data-test=login-form]").await;
    b.fill("[data-test=login-token]", "not-a-token-0123456789")
        .await;
    b.click("[data-test=login-submit]").await;
    b.wait_for("[data-test=login-error]").await;
    assert!(!b.exists("[data-test=nav]").await);

    // the operator: nav with who is logged in, the fleet page with the site and its cabinet
    b.login(&w.base(), TEST_TOKEN).await;
    assert_eq!(b.current_hash().await, "#/fleet");
    b.wait_for_text("[data-test=whoami]", "test-suite").await;
    b.wait_attr("[data-test=whoami]", "data-scope", "operator")
        .await;
    b.wait_for(&format!("[data-test=site-row][data-site={SITE}]"))
        .await;
    b.wait_for_text(&format!("[data-site={SITE}] [data-test=site-online]"), "1")
        .await;
    b.wait_for_text("[data-test=fleet-online-value]", "1").await;
    b.wait_attr("[data-test=live]", "data-state", "live").await;
    b.screenshot_if_asked("fleet").await;

    // the filter is server-side: only the matching site stays
    b.fill("[data-test=fleet-filter]", "other").await;
    b.wait_gone(&format!("[data-test=site-row][data-site={SITE}]"))
        .await;
    b.wait_for(&format!("[data-test=site-row][data-site={OTHER_SITE}]"))
        .await;
    b.fill("[data-test=fleet-filter]", "").await;

    // the site page lists the cabinet online and links to it
    b.click(&format!("[data-site={SITE}] [data-test=site-link]"))
        .await;
    b.wait_attr(
        &format!("[data-test=cabinet-row][data-cabinet={CAB}]"),
        "data-online",
        "true",
    )
    .await;
    assert_eq!(b.current_hash().await, format!("#/sites/{SITE}"));
    b.screenshot_if_asked("site").await;
    b.click(&format!("[data-cabinet={CAB}] [data-test=cabinet-link]"))
        .await;
    b.wait_for("[data-test=compartment-1]").await;
    assert_eq!(b.current_hash().await, format!("#/cabinets/{CAB}"));

    // the search box finds the cabinet
    b.fill("[data-test=search-input]", "console-1").await;
    b.wait_attr("[data-test=search-result]", "data-kind", "cabinet")
        .await;
    w.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposit_appears_live_on_the_cabinet_picture() {
    let w = World::start().await;
    let b = &w.c.browser;
    let dhl = w.client(DHL_TOKEN);
    b.login(&w.base(), TEST_TOKEN).await;
    b.goto(&format!("{}/console/#/cabinets/{CAB}", w.base()))
        .await;
    b.wait_for("[data-test=compartment-16]").await;
    b.wait_attr("[data-test=live]", "data-state", "live").await;
    // a marker on the page: it is still there after the update, so the page never reloaded
    b.eval("window.__lkMarker = 'still-here';", vec![]).await;

    let order = parcels::order(&dhl, "TRK-CONSOLE-1", "S").await;
    let c = order["compartment"].as_u64().expect("compartment");
    let tile = format!("[data-test=compartment-{c}]");
    b.wait_attr(&tile, "data-state", "reserved").await;
    parcels::remote_deposit(&dhl, &w.cab, &order).await;
    b.wait_attr(&tile, "data-state", "occupied").await;
    b.wait_attr(&tile, "data-door", "closed").await;
    let id = order["id"].as_str().expect("order id");
    b.wait_for(&format!("[data-test=order-link-{c}]")).await;
    assert_eq!(
        b.attr(&format!("[data-test=order-link-{c}]"), "href").await,
        Some(format!("#/orders/{id}"))
    );
    assert_eq!(
        b.eval("return window.__lkMarker || null;", vec![]).await,
        json!("still-here"),
        "the page reloaded"
    );
    b.screenshot_if_asked("cabinet").await;
    w.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opening_a_compartment_needs_a_reason_and_shows_the_outcome() {
    let w = World::start().await;
    let b = &w.c.browser;
    // a history longer than one page of recent events: the page finds the newest ones
    for _ in 0..20 {
        w.cab.board.open_door(15).expect("open door 16");
        eventually("door 16 open", || {
            w.cab.status().open_doors.contains(&CompartmentId(16))
        })
        .await;
        w.cab.board.close_door(15).expect("close door 16");
        eventually("door 16 closed", || {
            !w.cab.status().open_doors.contains(&CompartmentId(16))
        })
        .await;
    }
    eventually_async("40 door events stored", || async {
        let (_, b) =
            w.gw.api
                .get(&format!("/v1/cabinets/{CAB}/events?limit=1000"))
                .await;
        let doors = b["events"]
            .as_array()
            .map(|a| a.iter().filter(|e| e["kind"] == "door").count())
            .unwrap_or(0);
        (doors >= 40).then_some(())
    })
    .await;

    b.login(&w.base(), MANAGER_TOKEN).await;
    b.wait_attr("[data-test=whoami]", "data-scope", "site_manager")
        .await;
    b.goto(&format!("{}/console/#/cabinets/{CAB}", w.base()))
        .await;
    b.wait_for("[data-test=open-3]").await;
    let pulses = w.cab.pulses(3);

    // cancelling sends nothing
    b.click("[data-test=open-3]").await;
    b.wait_for("[data-test=reason-modal]").await;
    b.click("[data-test=reason-cancel]").await;
    b.wait_gone("[data-test=reason-modal]").await;

    // the reason is mandatory: the button stays disabled for less than 3 characters
    b.click("[data-test=open-3]").await;
    b.wait_for("[data-test=reason-modal]").await;
    b.fill("[data-test=reason-input]", "x").await;
    assert_eq!(
        b.eval(
            "return document.querySelector('[data-test=reason-ok]').disabled;",
            vec![]
        )
        .await,
        json!(true)
    );
    b.fill(
        "[data-test=reason-input]",
        "parcel stuck, customer on the phone",
    )
    .await;
    b.click("[data-test=reason-ok]").await;
    b.wait_gone("[data-test=reason-modal]").await;

    // the agent opened it: the tile shows the open door and the outcome
    b.wait_attr("[data-test=compartment-3]", "data-door", "open")
        .await;
    b.wait_attr("[data-test=outcome-3]", "data-outcome", "opened")
        .await;
    b.wait_attr("[data-test=command-row]", "data-outcome", "opened")
        .await;
    assert_eq!(w.cab.pulses(3), pulses + 1, "the lock fired once");
    // the door closes at the cabinet: the picture and the newest event follow
    w.cab.board.close_door(2).expect("close door 3");
    b.wait_attr("[data-test=compartment-3]", "data-door", "closed")
        .await;
    b.wait_for_text("[data-test=event-row]:first-child", "#3 closed")
        .await;
    w.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_carrier_sees_only_its_own_also_by_typed_urls() {
    let w = World::start().await;
    let b = &w.c.browser;
    let dhl = w.client(DHL_TOKEN);
    let ups = w.client(UPS_TOKEN);
    let mine = parcels::order(&ups, "TRK-UPS-1", "S").await;
    let theirs = parcels::order(&dhl, "TRK-DHL-1", "S").await;
    let theirs_id = theirs["id"].as_str().expect("id");
    let theirs_c = theirs["compartment"].as_u64().expect("compartment");
    let mine_c = mine["compartment"].as_u64().expect("compartment");

    b.login(&w.base(), UPS_TOKEN).await;
    b.wait_attr("[data-test=whoami]", "data-scope", "carrier")
        .await;

    // the cabinet picture: its own order is linked, the other carrier's is not
    b.goto(&format!("{}/console/#/cabinets/{CAB}", w.base()))
        .await;
    b.wait_for(&format!("[data-test=order-link-{mine_c}]"))
        .await;
    b.wait_for(&format!("[data-test=compartment-{theirs_c}]"))
        .await;
    assert!(
        !b.exists(&format!("[data-test=order-link-{theirs_c}]"))
            .await,
        "another carrier's order is linked"
    );
    assert!(
        !b.exists("[data-test=open-1]").await,
        "a carrier is offered the admin override"
    );

    // typing URLs: another carrier's order, a cabinet and a site out of reach
    b.goto(&format!("{}/console/#/orders/{theirs_id}", w.base()))
        .await;
    // (the order page shows its own not-found; the shell's is for pages that throw)
    b.wait_for("[data-test=not-found], [data-test=order-not-found]")
        .await;
    b.goto(&format!("{}/console/#/cabinets/{OTHER_CAB}", w.base()))
        .await;
    b.wait_for("[data-test=not-found]").await;

    // the search finds its own tracking number, not the other carrier's
    b.goto(&format!("{}/console/#/fleet", w.base())).await;
    b.fill("[data-test=search-input]", "TRK-DHL-1").await;
    b.wait_for("[data-test=search-empty]").await;
    b.fill("[data-test=search-input]", "TRK-UPS-1").await;
    b.wait_attr("[data-test=search-result]", "data-kind", "order")
        .await;

    // the site manager: a site of another manager is out of reach too
    let b2 = Browser::start().await;
    b2.login(&w.base(), MANAGER_TOKEN).await;
    b2.goto(&format!("{}/console/#/sites/{OTHER_SITE}", w.base()))
        .await;
    b2.wait_for("[data-test=not-found]").await;
    b2.goto(&format!("{}/console/#/cabinets/{OTHER_CAB}", w.base()))
        .await;
    b2.wait_for("[data-test=not-found]").await;
    b2.close().await;
    w.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_ends_the_session_and_back_shows_no_data() {
    let w = World::start().await;
    let b = &w.c.browser;
    b.login(&w.base(), TEST_TOKEN).await;
    b.wait_for(&format!("[data-test=site-row][data-site={SITE}]"))
        .await;
    b.goto(&format!("{}/console/#/cabinets/{CAB}", w.base()))
        .await;
    b.wait_for("[data-test=compartment-1]").await;

    b.click("[data-test=logout]").await;
    b.wait_for("[data-test=login-form]").await;
    assert!(!b.exists("[data-test=nav]").await);
    // the session is gone on the server, not only in the page
    let status = b
        .eval(
            "return fetch('/console/session', {credentials: 'same-origin'}).then(r => r.status);",
            vec![],
        )
        .await;
    assert_eq!(status, json!(401));
    let status = b
        .eval(
            "return fetch('/v1/fleet/summary', {credentials: 'same-origin'}).then(r => r.status);",
            vec![],
        )
        .await;
    assert_eq!(status, json!(401));

    // back (and forward) never bring the data back
    b.client.back().await.expect("back");
    b.wait_for("[data-test=login-form]").await;
    assert!(!b.exists("[data-test=compartment-1]").await);
    assert!(!b.exists("[data-test=site-row]").await);
    b.goto(&format!("{}/console/#/fleet", w.base())).await;
    b.wait_for("[data-test=login-form]").await;
    assert!(!b.exists("[data-test=site-row]").await);
    w.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_is_usable_on_a_phone() {
    let w = World::start().await;
    let b = &w.c.browser;
    b.set_window(390, 844).await;
    b.login(&w.base(), MANAGER_TOKEN).await;
    b.wait_for(&format!("[data-test=site-row][data-site={SITE}]"))
        .await;
    assert_eq!(scrolls_sideways(b).await, json!(false), "fleet page");

    // the nav is collapsed behind its button, and reachable
    b.wait_gone("[data-test=nav-alerts]").await;
    b.click("[data-test=nav-toggle]").await;
    b.wait_for("[data-test=nav-alerts]").await;
    b.click("[data-test=nav-fleet]").await;
    b.wait_gone("[data-test=nav-alerts]").await;

    b.goto(&format!("{}/console/#/sites/{SITE}", w.base()))
        .await;
    b.wait_for(&format!("[data-test=cabinet-row][data-cabinet={CAB}]"))
        .await;
    assert_eq!(scrolls_sideways(b).await, json!(false), "site page");
    b.goto(&format!("{}/console/#/cabinets/{CAB}", w.base()))
        .await;
    b.wait_for("[data-test=compartment-16]").await;
    assert_eq!(scrolls_sideways(b).await, json!(false), "cabinet page");
    b.screenshot_if_asked("cabinet-phone").await;
    w.close().await;
}

/// Every message key is in both languages, and every literal key a page asks for exists
/// (`t("fleet.title")`, `t('order.cancel')`; keys built at run time are not checked here).
#[test]
fn every_message_is_in_both_languages() {
    fn keys(v: &Value, prefix: &str, out: &mut std::collections::BTreeSet<String>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    keys(v, &format!("{prefix}{k}."), out);
                }
            }
            _ => {
                out.insert(prefix.trim_end_matches('.').to_owned());
            }
        }
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../gateway/console/assets");
    let load = |lang: &str| {
        let text =
            std::fs::read_to_string(dir.join(format!("i18n/{lang}.json"))).expect("messages");
        let v: Value = serde_json::from_str(&text).expect("messages are JSON");
        let mut out = Default::default();
        keys(&v, "", &mut out);
        out
    };
    let en = load("en");
    let de = load("de");
    let only_en: Vec<_> = en.difference(&de).collect();
    let only_de: Vec<_> = de.difference(&en).collect();
    assert!(only_en.is_empty(), "missing in de.json: {only_en:?}");
    assert!(only_de.is_empty(), "missing in en.json: {only_de:?}");

    let mut missing = Vec::new();
    let mut files = vec![dir.join("js/app.js")];
    for sub in ["js/lib", "js/pages"] {
        for e in std::fs::read_dir(dir.join(sub))
            .expect("js folder")
            .flatten()
        {
            files.push(e.path());
        }
    }
    for f in files {
        let src = std::fs::read_to_string(&f).expect("js file");
        for quote in ['"', '\''] {
            let open = format!("t({quote}");
            for (i, _) in src.match_indices(&open) {
                // a call of `t`, not of `ctx.t`'s neighbours like `set(` or `alert(`
                let before = src[..i].chars().next_back().unwrap_or(' ');
                if before.is_alphanumeric() || before == '_' {
                    continue;
                }
                let rest = &src[i + open.len()..];
                let Some(end) = rest.find(quote) else {
                    continue;
                };
                let key = &rest[..end];
                if key.contains('.') && !key.contains(' ') && !en.contains(key) {
                    missing.push(format!("{}: {key}", f.display()));
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "keys the pages use but en.json lacks: {missing:#?}"
    );
}
