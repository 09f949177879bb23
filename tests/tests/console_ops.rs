//! The console's operations pages in a real browser (issue 12): headless Chromium driven over
//! WebDriver ([`locker_tests::browser::Browser`]) against a real gateway with its embedded
//! broker and a real agent on a simulated lock board.
//!
//! Covered: an order's timeline after a real deposit (remote unlock) and a real pickup (the PIN
//! at the keypad), with the cause and actor of every step and the door events; the audit page
//! and its export downloaded with the session cookie; actions from the order page (an invalid
//! extend shows the API's message, extend, cancel, the remote unlock with its mandatory reason);
//! an offline alert appearing live on the alerts page and acknowledged there with a note; a
//! carrier's orders list and typed URLs; a webhook subscribed from the page (its secret shown
//! once) whose dead letters are replayed from the page. With `LOCKER_SCREENSHOTS=<dir>` the tests
//! save the orders, order, audit, alerts and webhooks pages there as PNG.

use locker_schemas::ScanSource;
use locker_tests::agent::TestCabinet;
use locker_tests::api::TEST_TOKEN;
use locker_tests::browser::Browser;
use locker_tests::console::ConsoleWorld;
use locker_tests::hooks::{Mode, Receiver};
use locker_tests::parcels::{self, DHL_TOKEN, MANAGER_TOKEN, SITE, UPS_TOKEN};
use locker_tests::{eventually, eventually_async};
use serde_json::{json, Value};

const CAB: &str = "cab-ops-1";

/// A gateway with the parcel world, optionally one real cabinet online, and a browser.
struct World {
    c: ConsoleWorld,
    cab: Option<TestCabinet>,
}

impl std::ops::Deref for World {
    type Target = ConsoleWorld;
    fn deref(&self) -> &ConsoleWorld {
        &self.c
    }
}

impl World {
    async fn start(
        with_cabinet: bool,
        tweak: impl FnOnce(&mut locker_gateway::config::GatewayConfig),
    ) -> Self {
        let mut c = ConsoleWorld::start(tweak).await;
        let cab = if with_cabinet {
            let cab = TestCabinet::start(&mut c.pki, CAB, c.gw.edge_addr()).await;
            parcels::setup(&c.gw.api, &[CAB]).await;
            parcels::online(&c.gw.api, CAB).await;
            Some(cab)
        } else {
            parcels::setup(&c.gw.api, &[]).await;
            None
        };
        Self { c, cab }
    }

    fn cab(&self) -> &TestCabinet {
        self.cab.as_ref().expect("a world with a cabinet")
    }

    async fn close(mut self) {
        if let Some(mut cab) = self.cab.take() {
            cab.stop().await;
        }
        self.c.close().await;
    }
}

/// An RFC 3339 UTC time `ms` since the epoch (for the audit page's query).
fn rfc3339(ms: u64) -> String {
    let t =
        time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).expect("time");
    t.format(&time::format_description::well_known::Rfc3339)
        .expect("format")
}

fn now_ms() -> u64 {
    locker_schemas::now_millis()
}

/// A DHL order deposited by remote unlock (the parcel in, the door closed): ready, with the
/// cabinet holding its pickup code. Returns the order and the recipient's PIN.
async fn ready_order(w: &World, tracking: &str) -> (Value, String) {
    let dhl = w.client(DHL_TOKEN);
    let o = parcels::order(&dhl, tracking, "M").await;
    parcels::creds_current(&w.gw.api, w.cab()).await;
    parcels::remote_deposit(&dhl, w.cab(), &o).await;
    let id = o["id"].as_str().expect("id");
    let pin = parcels::notice(&w.gw.api, id, "ready").await["pin"]
        .as_str()
        .expect("pin")
        .to_owned();
    parcels::creds_current(&w.gw.api, w.cab()).await;
    let (_, o) = dhl.get(&format!("/v1/orders/{id}")).await;
    (o, pin)
}

/// The text a page script fetches from `url` with the session cookie.
async fn fetch_in_page(b: &Browser, url: &str) -> String {
    let v = b
        .eval(
            "return fetch(arguments[0], {credentials: 'same-origin'})
                 .then(r => r.text().then(t => ({status: r.status, text: t})));",
            vec![json!(url)],
        )
        .await;
    assert_eq!(v["status"], 200, "{url}: {v}");
    v["text"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orders_timeline_shows_its_deposit_and_pickup_and_the_audit_export_holds_them() {
    let w = World::start(true, |_| {}).await;
    let b = &w.c.browser;
    let dhl = w.client(DHL_TOKEN);
    let t0 = now_ms();

    // a real deposit (remote unlock) and a real pickup (the PIN at the keypad)
    let (o, pin) = ready_order(&w, "JJD-OPS-1").await;
    let id = o["id"].as_str().expect("id").to_owned();
    let c = o["compartment"].as_u64().expect("compartment") as u16;
    let h = w.cab().handle.as_ref().expect("agent");
    eventually("door closed", || w.cab().status().open_doors.is_empty()).await;
    let reply = h.scan(ScanSource::Keypad, &pin).await.expect("scan");
    assert!(
        matches!(reply.access, locker_agent::Access::Pickup(x) if x.0 == c),
        "{reply:?}"
    );
    let done = parcels::wait_state(&dhl, &id, "picked_up").await;
    w.cab()
        .board
        .take_parcel(usize::from(c - 1))
        .expect("parcel out");
    w.cab().board.close_door(usize::from(c - 1)).expect("close");
    eventually("door closed", || w.cab().status().open_doors.is_empty()).await;

    // the orders list, filtered in the hash: the row links to the order
    b.login(&w.base(), TEST_TOKEN).await;
    w.page("#/orders?carrier=dhl&status=picked_up").await;
    let row = format!("[data-test=order-row][data-order='{id}']");
    b.wait_attr(&row, "data-state", "picked_up").await;
    b.screenshot_if_asked("orders").await;
    b.click(&format!("{row} a")).await;
    b.wait_attr("[data-test=order-details]", "data-state", "picked_up")
        .await;
    assert_eq!(b.current_hash().await, format!("#/orders/{id}"));

    // every step of the history is on the timeline with its cause and actor
    let history = done["history"].as_array().expect("history");
    for e in history {
        let css = format!(
            "[data-test=timeline-entry][data-kind=transition][data-to='{}'][data-cause='{}'][data-actor='{}']",
            e["to"].as_str().expect("to"),
            e["cause"].as_str().expect("cause"),
            e["actor"].as_str().expect("actor"),
        );
        b.wait_for(&css).await;
    }
    let steps = b
        .eval(
            "return [...document.querySelectorAll('[data-test=timeline-entry][data-kind=transition]')]
                 .filter(e => e.dataset.from !== e.dataset.to).map(e => e.dataset.to);",
            vec![],
        )
        .await;
    assert_eq!(
        steps,
        json!(["reserved", "deposited", "ready", "picked_up"]),
        "created -> deposited -> picked up, in order"
    );
    b.wait_for(
        "[data-test=timeline-entry][data-to=picked_up][data-cause=local_access][data-actor=recipient]",
    )
    .await;
    // the door opened twice (the deposit and the pickup): the cabinet's own events
    b.poll(
        "two door openings on the timeline",
        "return document.querySelectorAll('[data-test=timeline-entry][data-kind=door_opened]').length >= 2;",
        vec![],
    )
    .await;
    // the recipient was notified (the code itself is never shown)
    b.wait_for("[data-test=notice][data-kind=ready]").await;
    let page_text = b.text("[data-test=page-order]").await;
    assert!(!page_text.contains(&pin), "the PIN is not on the page");
    b.screenshot_if_asked("order").await;

    // the audit page: the period's records of the order, and its export with the cookie
    let period = format!(
        "from={}&to={}",
        rfc3339(t0 - 60_000),
        rfc3339(now_ms() + 60_000)
    );
    w.page(&format!("#/audit?{period}&order={id}")).await;
    b.wait_for(&format!(
        "[data-test=audit-row][data-order='{id}'][data-kind=order_transition]"
    ))
    .await;
    b.wait_for(&format!(
        "[data-test=audit-row][data-order='{id}'][data-kind=remote_unlock]"
    ))
    .await;
    b.screenshot_if_asked("audit").await;
    let csv_url = b
        .attr("[data-test=audit-export-csv]", "href")
        .await
        .expect("csv link");
    assert!(csv_url.contains("format=csv"), "{csv_url}");
    let csv = fetch_in_page(b, &csv_url).await;
    assert!(csv.starts_with("at,at_utc,source,kind"), "{csv}");
    let lines = csv.lines().filter(|l| l.contains(&id)).count();
    assert!(
        lines >= 5,
        "five transitions and the remote unlock of {id}: {csv}"
    );
    let nd_url = b
        .attr("[data-test=audit-export-ndjson]", "href")
        .await
        .expect("ndjson link");
    let nd = fetch_in_page(b, &nd_url).await;
    let records: Vec<Value> = nd
        .lines()
        .map(|l| serde_json::from_str(l).expect("an NDJSON line"))
        .collect();
    let mine: Vec<&Value> = records
        .iter()
        .filter(|r| r["order"] == id.as_str())
        .collect();
    assert!(
        mine.iter()
            .any(|r| r["kind"] == "order_transition" && r["actor"] == "recipient"),
        "{nd}"
    );
    assert!(
        records
            .iter()
            .any(|r| r["kind"] == "door_opened" && r["compartment"] == c),
        "the door events are in the operator's export: {nd}"
    );
    w.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_from_the_order_page_change_the_order_or_show_the_apis_message() {
    let w = World::start(true, |_| {}).await;
    let b = &w.c.browser;
    let dhl = w.client(DHL_TOKEN);
    let (o, _) = ready_order(&w, "JJD-OPS-2").await;
    let id = o["id"].as_str().expect("id").to_owned();
    let c = o["compartment"].as_u64().expect("compartment") as u16;
    let deadline = o["pickup_deadline"].as_u64().expect("deadline");

    b.login(&w.base(), MANAGER_TOKEN).await;
    w.page(&format!("#/orders/{id}")).await;
    b.wait_attr("[data-test=order-details]", "data-state", "ready")
        .await;

    // an extend the API refuses: its message is shown, nothing changes
    b.fill("[data-test=order-extend-hours]", "0").await;
    b.click("[data-test=order-action-extend]").await;
    b.wait_attr("[data-test=order-action-result]", "data-result", "error")
        .await;
    b.wait_for_text("[data-test=order-action-result]", "1 to 720")
        .await;
    assert_eq!(parcels::state(&dhl, &id).await, "ready");

    // extend by 48 h: the deadline moves, the page says so
    b.fill("[data-test=order-extend-hours]", "48").await;
    b.click("[data-test=order-action-extend]").await;
    b.wait_attr(
        "[data-test=order-action-result][data-action=extend]",
        "data-result",
        "ok",
    )
    .await;
    let (_, after) = dhl.get(&format!("/v1/orders/{id}")).await;
    assert_eq!(
        after["pickup_deadline"].as_u64(),
        Some(deadline + 48 * 3_600_000),
        "{after}"
    );
    b.wait_for("[data-test=timeline-entry][data-to=ready][data-from=ready][data-cause=api][data-actor=site-manager]")
        .await;

    // cancel (confirmed): a parcel inside goes back to the carrier
    b.click("[data-test=order-action-cancel]").await;
    b.click("[data-test=order-confirm]").await;
    b.wait_attr(
        "[data-test=order-details]",
        "data-state",
        "return_requested",
    )
    .await;
    assert_eq!(parcels::state(&dhl, &id).await, "return_requested");

    // the remote unlock needs its reason; the opened door lets the carrier collect it
    let pulses = w.cab().pulses(c);
    b.click("[data-test=order-action-unlock]").await;
    b.wait_for("[data-test=reason-modal]").await;
    b.fill(
        "[data-test=reason-input]",
        "carrier collects the parcel at the desk",
    )
    .await;
    b.click("[data-test=reason-ok]").await;
    b.wait_attr(
        "[data-test=order-action-result][data-action=unlock]",
        "data-result",
        "ok",
    )
    .await;
    eventually("the lock pulsed", || w.cab().pulses(c) == pulses + 1).await;
    parcels::wait_state(&dhl, &id, "returned").await;
    b.wait_attr("[data-test=order-details]", "data-state", "returned")
        .await;
    b.wait_for_text(
        "[data-test=timeline-entry][data-kind=remote_unlock]",
        "carrier collects the parcel at the desk",
    )
    .await;
    w.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_alert_appears_live_and_is_acknowledged_with_a_note() {
    let mut w = World::start(true, |c| {
        c.rules.tick_ms = 100;
        c.rules
            .rules
            .insert("offline".into(), json!({"after_ms": 800}));
    })
    .await;
    let b = &w.c.browser;
    // the site's manager watches (the rules engine knows the cabinet's site as soon as the
    // site is created, so the alert carries it)
    b.login(&w.base(), MANAGER_TOKEN).await;
    w.page("#/alerts").await;
    b.wait_for("[data-test=alerts-empty]").await;
    b.wait_attr("[data-test=live]", "data-state", "live").await;

    // the cabinet goes away: the alert appears without a reload
    w.cab.as_mut().expect("cabinet").stop().await;
    let id = eventually_async("the offline alert", || async {
        let (_, list) = w.gw.api.get("/v1/alerts?kind=offline").await;
        list["alerts"][0]["id"].as_str().map(str::to_owned)
    })
    .await;
    let row = format!("[data-test=alert-row][data-kind=offline][data-cabinet='{CAB}']");
    b.wait_attr(&row, "data-acked", "false").await;
    b.wait_attr(&row, "data-alert", &id).await;
    b.wait_attr(&row, "data-severity", "warning").await;
    b.screenshot_if_asked("alerts").await;

    // acknowledged with a note, by the site manager
    let mine = format!("[data-test=alert-row][data-alert='{id}']");
    b.fill(&format!("{mine} [data-test=alert-note]"), "called the site")
        .await;
    b.click(&format!("{mine} [data-test=alert-ack]")).await;
    b.wait_attr(&mine, "data-acked", "true").await;
    b.wait_for_text(
        &format!("{mine} [data-test=alert-acked]"),
        "called the site",
    )
    .await;
    let (s, a) = w.gw.api.get(&format!("/v1/alerts/{id}")).await;
    assert_eq!(s, 200, "{a}");
    assert_eq!(a["acked_by"], "site-manager", "{a}");
    assert_eq!(a["ack_note"], "called the site", "{a}");
    assert_eq!(a["state"], "active", "an ack does not end an outage");

    // the cabinet link jumps to the cabinet page
    b.click(&format!("{mine} [data-test=alert-cabinet]")).await;
    b.wait_for("[data-test=page-cabinet]").await;
    assert_eq!(b.current_hash().await, format!("#/cabinets/{CAB}"));

    // a carrier's login is told alerts are not for it
    let b2 = Browser::start().await;
    b2.login(&w.base(), DHL_TOKEN).await;
    b2.goto(&format!("{}/console/#/alerts", w.base())).await;
    b2.wait_for("[data-test=alerts-error]").await;
    assert!(!b2.exists("[data-test=alert-row]").await);
    b2.close().await;
    w.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_carrier_sees_only_its_orders_and_replays_its_dead_letters_from_the_page() {
    let rx = Receiver::start().await;
    rx.set(Mode::Status(503));
    let w = World::start(false, |cfg| {
        cfg.webhooks.allow_http = true;
        cfg.webhooks.poll_ms = 20;
        cfg.webhooks.retry_base_ms = 50;
        cfg.webhooks.retry_max_ms = 200;
        cfg.webhooks.max_age_s = 1;
    })
    .await;
    let b = &w.c.browser;
    let (dhl, ups) = (w.client(DHL_TOKEN), w.client(UPS_TOKEN));
    let mut dhl_ids = Vec::new();
    for i in 0..3 {
        let o = parcels::order(&dhl, &format!("JJD-C{i}"), "S").await;
        dhl_ids.push(o["id"].as_str().expect("id").to_owned());
    }
    let theirs = parcels::order(&ups, "1Z-OTHER", "S").await;
    let theirs = theirs["id"].as_str().expect("id").to_owned();

    // the DHL dispatcher's list holds its three orders and nothing else, whatever the filter
    b.login(&w.base(), DHL_TOKEN).await;
    b.wait_attr("[data-test=whoami]", "data-scope", "carrier")
        .await;
    for hash in [
        "#/orders",
        "#/orders?carrier=ups",
        &format!("#/orders?site={SITE}"),
    ] {
        w.page(hash).await;
        b.wait_for("[data-test=page-orders]").await;
        b.poll(
            &format!("{hash}: the list or its message"),
            "return !!document.querySelector('[data-test=orders-table], [data-test=orders-error], [data-test=orders-empty]');",
            vec![],
        )
        .await;
        let carriers = b
            .eval(
                "return [...document.querySelectorAll('[data-test=order-row]')].map(e => e.dataset.carrier);",
                vec![],
            )
            .await;
        let carriers = carriers.as_array().cloned().unwrap_or_default();
        assert!(carriers.iter().all(|c| c == "dhl"), "{hash}: {carriers:?}");
        assert!(
            !b.exists(&format!("[data-order='{theirs}']")).await,
            "{hash}"
        );
    }
    w.page("#/orders").await;
    for id in &dhl_ids {
        b.wait_for(&format!("[data-test=order-row][data-order='{id}']"))
            .await;
    }
    // the other carrier's order, typed into the address bar: not found or not yours
    w.page(&format!("#/orders/{theirs}")).await;
    b.wait_for("[data-test=order-not-found]").await;
    assert!(!b.exists("[data-test=order-details]").await);

    // a subscription made on the page: its secret is shown once
    w.page("#/webhooks").await;
    b.wait_for("[data-test=webhooks-empty]").await;
    b.fill("[data-test=webhook-url]", &rx.url("/h")).await;
    b.fill("[data-test=webhook-events]", "order.*").await;
    b.click("[data-test=webhook-create-submit]").await;
    let secret = b.text("[data-test=webhook-secret]").await;
    assert!(secret.starts_with("whsec_"), "{secret}");
    let (_, subs) = dhl.get("/v1/webhooks").await;
    let sub = subs["webhooks"][0].clone();
    assert_eq!(sub["url"], rx.url("/h"), "{subs}");
    let sub_id = sub["id"].as_str().expect("id").to_owned();

    // the receiver is down: cancelled orders' events become dead letters
    for id in &dhl_ids {
        let (s, r) = dhl
            .post(&format!("/v1/orders/{id}/cancel"), json!({}))
            .await;
        assert_eq!(s, 200, "{r}");
    }
    eventually_async("dead letters", || async {
        let (_, v) = dhl.get(&format!("/v1/webhooks/{sub_id}")).await;
        (v["health"]["dead_lettered"].as_u64().unwrap_or(0) >= 3 && v["health"]["pending"] == 0)
            .then_some(())
    })
    .await;
    b.click("[data-test=webhooks-refresh]").await;
    b.wait_attr(
        &format!("[data-test=webhook-row][data-webhook='{sub_id}']"),
        "data-condition",
        "failing",
    )
    .await;
    b.click("[data-test=webhook-dead-letters]").await;
    b.wait_for("[data-test=dead-letter]").await;
    b.screenshot_if_asked("webhooks").await;

    // the receiver is back: replayed from the page, every cancellation arrives
    rx.set(Mode::Up);
    b.click("[data-test=dead-letters-replay-all]").await;
    b.wait_for_text("[data-test=webhook-result]", "queued again")
        .await;
    eventually("the replayed events arrived", || {
        let got: Vec<Value> = rx.hooks().iter().map(|h| h.json()).collect();
        dhl_ids.iter().all(|id| {
            got.iter()
                .any(|e| e["type"] == "order.cancelled" && e["data"]["order"] == id.as_str())
        })
    })
    .await;
    let (_, d) = dhl
        .get(&format!("/v1/webhooks/{sub_id}/dead-letters"))
        .await;
    assert_eq!(d["dead_letters"], json!([]), "{d}");
    b.click("[data-test=webhooks-refresh]").await;
    b.wait_for("[data-test=dead-letters-empty]").await;
    w.close().await;
}
