//! The parcel workflow end to end with real agents and simulated boards: an order created by a
//! carrier's token, allocated best fit, its compartment opened remotely for the deposit through
//! the command queue, the recipient's code delivered to the cabinet in its credential set over
//! `down/creds` and typed at the keypad; offline pickups applied when the link returns, also
//! after the order was cancelled meanwhile; carriers never seeing each other's orders; a
//! pickup whose door opened and shut between two polls of the door sensor (the parcel sensor
//! tells the agent).

use locker_schemas::ScanSource;
use locker_tests::agent::TestCabinet;
use locker_tests::gateway::TestGateway;
use locker_tests::parcels::{self, DHL_TOKEN, MANAGER_TOKEN, UPS_TOKEN};
use locker_tests::pki::TestPki;
use locker_tests::{eventually, eventually_async};
use serde_json::{json, Value};

/// Sets up the parcel world around `cab`, creates a DHL order, deposits it by remote unlock
/// (the parcel goes in, the door closes) and waits until the cabinet holds its pickup code:
/// the order id, its compartment and the recipient's PIN.
async fn ready_order(gw: &TestGateway, cab: &TestCabinet, tracking: &str) -> (String, u16, String) {
    parcels::online(&gw.api, &cab.id).await;
    parcels::setup(&gw.api, &[cab.id.as_str()]).await;
    let dhl = gw.api.with_token(DHL_TOKEN);
    let o = parcels::order(&dhl, tracking, "M").await;
    let id = o["id"].as_str().expect("id").to_owned();
    let c = compartment(&o);
    let (s, r) = dhl
        .post(
            &format!("/v1/orders/{id}/unlock"),
            json!({"reason": "deposit", "wait_ms": 10_000}),
        )
        .await;
    assert_eq!(s, 200, "{r}");
    cab.board.put_parcel(usize::from(c - 1)).expect("parcel in");
    cab.board.close_door(usize::from(c - 1)).expect("close");
    eventually("door closed", || cab.status().open_doors.is_empty()).await;
    parcels::wait_state(&dhl, &id, "ready").await;
    let pin = parcels::notice(&gw.api, &id, "ready").await["pin"]
        .as_str()
        .expect("pin")
        .to_owned();
    parcels::creds_current(&gw.api, cab).await;
    (id, c, pin)
}

fn compartment(o: &Value) -> u16 {
    o["compartment"].as_u64().expect("compartment") as u16
}

/// The states an order went through (its timeline also has entries that change no state,
/// such as a remote unlock being requested).
fn states(o: &Value) -> Vec<String> {
    let h = o["history"].as_array().expect("history");
    h.iter()
        .enumerate()
        .filter(|(i, e)| *i == 0 || e["from"] != e["to"])
        .map(|(_, e)| e["to"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_from_order_to_pickup_with_the_code_at_the_keypad() {
    let mut pki = TestPki::new();
    let gw = TestGateway::start_with(&pki, parcels::tokens).await;
    let cab = TestCabinet::start(&mut pki, "CAB-P1", gw.edge_addr()).await;
    parcels::online(&gw.api, "CAB-P1").await;
    parcels::setup(&gw.api, &["CAB-P1"]).await;
    let dhl = gw.api.with_token(DHL_TOKEN);

    // created and reserved at once, best fit (every compartment of the test board is M)
    let o = parcels::order(&dhl, "JJD0001", "S").await;
    let id = o["id"].as_str().expect("id").to_owned();
    assert_eq!(o["state"], "reserved", "{o}");
    assert_eq!(o["carrier"], "dhl");
    let c = compartment(&o);
    parcels::creds_current(&gw.api, &cab).await;

    // the courier has no badge with them: the carrier's support opens the door remotely
    let (s, r) = dhl
        .post(
            &format!("/v1/orders/{id}/unlock"),
            json!({"reason": "courier at the door", "wait_ms": 10_000}),
        )
        .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["command"]["outcome"], "opened", "{r}");
    assert_eq!(r["target"]["purpose"], "deposit");
    let o = parcels::wait_state(&dhl, &id, "ready").await;
    assert!(o["pickup_deadline"].as_u64().is_some());
    cab.board.put_parcel(usize::from(c - 1)).expect("parcel in");
    cab.board.close_door(usize::from(c - 1)).expect("close");
    eventually("door closed", || cab.status().open_doors.is_empty()).await;

    // the recipient is told a PIN (and a QR token); the cabinet gets the code's hash
    let n = parcels::notice(&gw.api, &id, "ready").await;
    let pin = n["pin"].as_str().expect("pin").to_owned();
    assert_eq!(pin.len(), 6);
    assert!(n["qr"].as_str().is_some_and(|q| q.starts_with("QR-")));
    assert_eq!(n["site_name"], "Test site");
    assert!(
        n["expires_local"]
            .as_str()
            .is_some_and(|t| t.ends_with("CET") || t.ends_with("CEST")),
        "{n}"
    );
    parcels::creds_current(&gw.api, &cab).await;

    // the recipient types the PIN: the door opens, the order is picked up
    let h = cab.handle.as_ref().expect("agent");
    let reply = h.scan(ScanSource::Keypad, &pin).await.expect("scan");
    assert!(
        matches!(reply.access, locker_agent::Access::Pickup(x) if x.0 == c),
        "{reply:?}"
    );
    let o = parcels::wait_state(&dhl, &id, "picked_up").await;
    assert_eq!(
        states(&o),
        ["created", "reserved", "deposited", "ready", "picked_up"],
        "{o}"
    );
    let last = o["history"]
        .as_array()
        .and_then(|h| h.last())
        .cloned()
        .expect("history");
    assert_eq!(last["cause"], "local_access");
    assert_eq!(last["actor"], "recipient");
    assert_eq!(last["compartment"], c);
    assert_eq!(o["exception"], Value::Null, "{o}");
    assert_eq!(
        cab.pulses(c),
        2,
        "one pulse for the deposit, one for the pickup"
    );
    // the recipient takes the parcel and closes the door: the sensor agrees, no exception
    cab.board
        .take_parcel(usize::from(c - 1))
        .expect("parcel out");
    cab.board.close_door(usize::from(c - 1)).expect("close");
    eventually("door closed", || cab.status().open_doors.is_empty()).await;
    // the compartment is free again and the audit trail has every step
    let (_, comps) = gw.api.get("/v1/cabinets/CAB-P1/compartments").await;
    let slot = comps["compartments"]
        .as_array()
        .expect("list")
        .iter()
        .find(|x| x["id"] == c)
        .cloned()
        .expect("slot");
    assert_eq!(slot["status"], "free", "{slot}");
    let (_, audit) = dhl.get("/v1/parcel-audit").await;
    let mine: Vec<_> = audit["records"]
        .as_array()
        .expect("records")
        .iter()
        .filter(|r| r["order"] == id.as_str())
        .collect();
    assert_eq!(
        mine.len(),
        6,
        "five transitions and the remote unlock: {audit}"
    );
    // the same code does not open twice
    let again = h.scan(ScanSource::Keypad, &pin).await.expect("scan");
    assert_eq!(
        again.access,
        locker_agent::Access::Refused(locker_agent::Refusal::WrongCode)
    );
    assert_eq!(cab.pulses(c), 2);
    assert_eq!(
        gw.api
            .metric("locker_parcel_orders{state=\"picked_up\"}")
            .await,
        1.0
    );

    // guessing: after five wrong codes the keypad locks, at the cabinet, and the gateway sees
    // the alarm and counts it
    for guess in ["000001", "000002", "000003", "000004"] {
        let r = h.scan(ScanSource::Keypad, guess).await.expect("scan");
        assert_eq!(
            r.access,
            locker_agent::Access::Refused(locker_agent::Refusal::WrongCode)
        );
    }
    let r = h.scan(ScanSource::Keypad, "000005").await.expect("scan");
    assert_eq!(
        r.access,
        locker_agent::Access::Refused(locker_agent::Refusal::Locked)
    );
    eventually_async("keypad_locked alarm at the gateway", || async {
        let (_, c) = gw.api.get("/v1/cabinets/CAB-P1").await;
        c["alarms"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x["kind"] == "keypad_locked"))
            .then_some(())
    })
    .await;
    assert_eq!(
        gw.api.metric("locker_parcel_keypad_lockouts_total").await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_pickup_after_a_cancel_ends_picked_up_with_an_exception() {
    let mut pki = TestPki::new();
    let gw = TestGateway::start_with(&pki, parcels::tokens).await;
    let mut cab = TestCabinet::start(&mut pki, "CAB-P2", gw.edge_addr()).await;
    let (id, _, pin) = ready_order(&gw, &cab, "JJD0002").await;

    // the gateway goes away; the recipient picks up from the cabinet's cache
    let stopped = gw.stop().await;
    let h = cab.handle.as_ref().expect("agent");
    let reply = h.scan(ScanSource::Keypad, &pin).await.expect("scan");
    assert!(
        matches!(reply.access, locker_agent::Access::Pickup(_)),
        "{reply:?}"
    );
    eventually("door open", || cab.status().open_doors.len() == 1).await;
    cab.stop().await;

    // the gateway is back, the cabinet not yet: the carrier cancels (a parcel is inside,
    // so the order is to be returned)
    let gw = stopped.start().await;
    let dhl = gw.api.with_token(DHL_TOKEN);
    let (s, o) = dhl
        .post(&format!("/v1/orders/{id}/cancel"), json!({}))
        .await;
    assert_eq!(s, 200, "{o}");
    assert_eq!(o["state"], "return_requested");

    // the cabinet reconnects and reports the pickup: the physical world wins
    cab.set_edge(gw.edge_addr());
    cab.boot().await;
    let o = parcels::wait_state(&dhl, &id, "picked_up").await;
    assert_eq!(o["exception"], "picked_up_after_cancel", "{o}");
    // applied exactly once, even though the audit log and ingest both passed it on
    let picked = states(&o).iter().filter(|s| *s == "picked_up").count();
    assert_eq!(picked, 1, "{o}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn carriers_never_see_each_others_orders_and_scopes_hold_on_every_path() {
    let mut pki = TestPki::new();
    let gw = TestGateway::start_with(&pki, parcels::tokens).await;
    let _cab = TestCabinet::start(&mut pki, "CAB-P3", gw.edge_addr()).await;
    parcels::online(&gw.api, "CAB-P3").await;
    parcels::setup(&gw.api, &["CAB-P3"]).await;
    let (dhl, ups, mgr) = (
        gw.api.with_token(DHL_TOKEN),
        gw.api.with_token(UPS_TOKEN),
        gw.api.with_token(MANAGER_TOKEN),
    );
    let o = parcels::order(&dhl, "JJD0003", "M").await;
    let id = o["id"].as_str().expect("id");
    // UPS: not found on every path, even knowing the id
    for (path, body) in [
        ("", json!(null)),
        ("/cancel", json!({})),
        ("/resend-code", json!({})),
        ("/return", json!({})),
        ("/out-for-delivery", json!({})),
        ("/unlock", json!({"reason": "probe"})),
        ("/extend", json!({"hours": 1})),
    ] {
        let (s, b) = if path.is_empty() {
            ups.get(&format!("/v1/orders/{id}")).await
        } else {
            ups.post(&format!("/v1/orders/{id}{path}"), body).await
        };
        assert_eq!(s, 404, "{path}: {b}");
        assert_eq!(b["error"], "not_found");
    }
    let (_, list) = ups.get("/v1/orders").await;
    assert_eq!(list["orders"], json!([]));
    // a carrier cannot create for another carrier, nor reach the operator routes
    let (s, b) = ups
        .post(
            "/v1/orders",
            json!({"site": parcels::SITE, "size": "S", "tracking": "X1", "carrier": "dhl"}),
        )
        .await;
    assert_eq!(s, 403, "{b}");
    for path in [
        "/v1/cabinets",
        "/v1/cabinets/CAB-P3/events",
        "/v1/quarantine",
    ] {
        let (s, b) = ups.get(path).await;
        assert_eq!(s, 403, "{path}: {b}");
    }
    let (s, _) = ups
        .post(
            "/v1/cabinets/CAB-P3/commands",
            json!({"action": {"unlock": {"compartment": 1}}}),
        )
        .await;
    assert_eq!(s, 403);
    let (s, _) = ups
        .post(
            "/v1/cabinets/CAB-P3/compartments/1/open",
            json!({"reason": "let me in"}),
        )
        .await;
    assert_eq!(s, 404, "a carrier cannot override");
    // the compartment list shows UPS no DHL order id
    let (s, comps) = ups.get("/v1/cabinets/CAB-P3/compartments").await;
    assert_eq!(s, 200, "{comps}");
    assert!(comps["compartments"]
        .as_array()
        .expect("list")
        .iter()
        .all(|c| c["order"].is_null()));
    // the site manager sees the site's orders and may override, with a reason only
    let (s, b) = mgr.get(&format!("/v1/orders/{id}")).await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = mgr
        .post(
            "/v1/cabinets/CAB-P3/compartments/2/open",
            json!({"reason": ""}),
        )
        .await;
    assert_eq!((s, b["error"].as_str()), (400, Some("reason_required")));
    let (s, b) = mgr
        .post(
            "/v1/cabinets/CAB-P3/compartments/2/open",
            json!({"reason": "cleaning", "wait_ms": 10_000}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["outcome"], "opened");
    let (_, audit) = gw.api.get("/v1/parcel-audit").await;
    assert!(
        audit["records"]
            .as_array()
            .expect("records")
            .iter()
            .any(|r| r["what"] == "override_open"
                && r["actor"] == "site-manager"
                && r["detail"]
                    .as_str()
                    .is_some_and(|d| d.ends_with("cleaning"))),
        "{audit}"
    );
    // idempotency: the same key returns the same order (200, not a second order)
    let body = json!({"site": parcels::SITE, "size": "S", "tracking": "JJD0004"});
    let (s1, a) = dhl
        .post_with("/v1/orders", &[("idempotency-key", "k-1")], body.clone())
        .await;
    let (s2, b) = dhl
        .post_with("/v1/orders", &[("idempotency-key", "k-1")], body)
        .await;
    assert_eq!((s1, s2), (201, 200));
    assert_eq!(a["id"], b["id"]);
    // errors are JSON with a stable code and a sentence
    let (s, b) = dhl
        .post(&format!("/v1/orders/{id}/extend"), json!({"hours": 5}))
        .await;
    assert_eq!(s, 409, "{b}");
    assert_eq!(b["error"], "invalid_transition");
    assert!(
        b["message"]
            .as_str()
            .is_some_and(|m| m.contains("reserved")),
        "{b}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn couriers_deposit_and_collect_at_the_cabinet_with_badge_and_barcode_online_and_offline() {
    use locker_agent::{Access, Key, Refusal};
    let mut pki = TestPki::new();
    let gw = TestGateway::start_with(&pki, parcels::tokens).await;
    let cab = TestCabinet::start(&mut pki, "CAB-P4", gw.edge_addr()).await;
    parcels::online(&gw.api, "CAB-P4").await;
    parcels::setup(&gw.api, &["CAB-P4"]).await;
    let dhl = gw.api.with_token(DHL_TOKEN);
    let a = parcels::order(&dhl, "JJD-A", "M").await;
    let b = parcels::order(&dhl, "JJD-B", "M").await;
    let (ida, ca) = (a["id"].as_str().expect("id").to_owned(), compartment(&a));
    let (idb, cb) = (b["id"].as_str().expect("id").to_owned(), compartment(&b));
    parcels::creds_current(&gw.api, &cab).await;
    let h = cab.handle.as_ref().expect("agent");

    // a UPS courier cannot put DHL's parcel in
    let r = h
        .scan(ScanSource::Rfid, parcels::UPS_BADGE)
        .await
        .expect("scan");
    assert_eq!(r.access, Access::SignedIn("ups-c1".into()));
    let r = h.scan(ScanSource::Barcode, "JJD-A").await.expect("scan");
    assert_eq!(r.access, Access::Refused(Refusal::WrongCarrier));
    // the DHL courier: badge, then the parcel's barcode opens its reserved compartment
    let r = h
        .scan(ScanSource::Rfid, parcels::DHL_BADGE)
        .await
        .expect("scan");
    assert_eq!(r.access, Access::SignedIn("dhl-c1".into()));
    let r = h.scan(ScanSource::Barcode, "JJD-A").await.expect("scan");
    assert_eq!(
        r.access,
        Access::DepositInto(locker_schemas::CompartmentId(ca))
    );
    eventually("door open", || cab.status().open_doors.len() == 1).await;
    cab.board
        .put_parcel(usize::from(ca - 1))
        .expect("parcel in");
    cab.board.close_door(usize::from(ca - 1)).expect("close");
    let o = parcels::wait_state(&dhl, &ida, "ready").await;
    let deposit = o["history"]
        .as_array()
        .expect("history")
        .iter()
        .find(|h| h["to"] == "deposited")
        .cloned()
        .expect("deposited");
    assert_eq!(
        (deposit["cause"].as_str(), deposit["actor"].as_str()),
        (Some("local_access"), Some("dhl-c1"))
    );
    eventually("door closed", || cab.status().open_doors.is_empty()).await;

    // the gateway goes away; the courier deposits the second parcel from the cache
    let stopped = gw.stop().await;
    let r = h.scan(ScanSource::Barcode, "JJD-B").await.expect("scan");
    assert_eq!(
        r.access,
        Access::DepositInto(locker_schemas::CompartmentId(cb))
    );
    eventually("door open", || cab.status().open_doors.len() == 1).await;
    cab.board
        .put_parcel(usize::from(cb - 1))
        .expect("parcel in");
    cab.board.close_door(usize::from(cb - 1)).expect("close");
    eventually("door closed", || cab.status().open_doors.is_empty()).await;
    let gw = stopped.start().await;
    let dhl = gw.api.with_token(DHL_TOKEN);
    parcels::wait_state(&dhl, &idb, "ready").await;

    // the carrier recalls A: the courier collects it at the cabinet
    let (s, o) = dhl
        .post(&format!("/v1/orders/{ida}/return"), json!({}))
        .await;
    assert_eq!(s, 200, "{o}");
    parcels::creds_current(&gw.api, &cab).await;
    let r = h
        .scan(ScanSource::Rfid, parcels::DHL_BADGE)
        .await
        .expect("scan");
    assert_eq!(r.access, Access::SignedIn("dhl-c1".into()));
    let r = h.key(Key::Collect).await.expect("key");
    assert_eq!(r.access, Access::Collect(locker_schemas::CompartmentId(ca)));
    eventually("door open", || cab.status().open_doors.len() == 1).await;
    cab.board
        .take_parcel(usize::from(ca - 1))
        .expect("parcel out");
    cab.board.close_door(usize::from(ca - 1)).expect("close");
    let o = parcels::wait_state(&dhl, &ida, "returned").await;
    assert_eq!(o["exception"], Value::Null, "{o}");
    assert_eq!((cab.pulses(ca), cab.pulses(cb)), (2, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_orders_are_archived_and_still_readable_by_id_within_scope() {
    let mut pki = TestPki::new();
    let gw = TestGateway::start_with(&pki, |cfg| {
        parcels::tokens(cfg);
        cfg.parcels.keep_finished_h = 0;
        cfg.parcels.tick_ms = 50;
    })
    .await;
    let _cab = TestCabinet::start(&mut pki, "CAB-P5", gw.edge_addr()).await;
    parcels::online(&gw.api, "CAB-P5").await;
    parcels::setup(&gw.api, &["CAB-P5"]).await;
    let (dhl, ups) = (gw.api.with_token(DHL_TOKEN), gw.api.with_token(UPS_TOKEN));
    let o = parcels::order(&dhl, "JJD-ARCH", "S").await;
    let id = o["id"].as_str().expect("id");
    let (s, _) = dhl
        .post(&format!("/v1/orders/{id}/cancel"), json!({}))
        .await;
    assert_eq!(s, 200);
    eventually_async("archived (no longer listed)", || async {
        let (_, l) = dhl.get("/v1/orders").await;
        l["orders"]
            .as_array()
            .is_some_and(|a| a.is_empty())
            .then_some(())
    })
    .await;
    let (s, b) = dhl.get(&format!("/v1/orders/{id}")).await;
    assert_eq!((s, b["state"].as_str()), (200, Some("cancelled")), "{b}");
    let (s, _) = ups.get(&format!("/v1/orders/{id}")).await;
    assert_eq!(s, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parcel_left_inside_after_a_pickup_becomes_an_exception_and_blocks_the_compartment() {
    let mut pki = TestPki::new();
    let gw = TestGateway::start_with(&pki, parcels::tokens).await;
    let cab = TestCabinet::start(&mut pki, "CAB-P6", gw.edge_addr()).await;
    let (id, c, pin) = ready_order(&gw, &cab, "JJD-LEFT").await;
    let dhl = gw.api.with_token(DHL_TOKEN);
    let h = cab.handle.as_ref().expect("agent");
    let r = h.scan(ScanSource::Keypad, &pin).await.expect("scan");
    assert!(matches!(r.access, locker_agent::Access::Pickup(_)), "{r:?}");
    eventually("door open", || cab.status().open_doors.len() == 1).await;
    // the recipient shuts the door again without taking the parcel
    cab.board.close_door(usize::from(c - 1)).expect("close");
    let o = eventually_async("parcel_still_present", || async {
        let (_, b) = dhl.get(&format!("/v1/orders/{id}")).await;
        (b["exception"] == "parcel_still_present").then_some(b)
    })
    .await;
    assert_eq!(o["state"], "picked_up");
    let (_, comps) = gw.api.get("/v1/cabinets/CAB-P6/compartments").await;
    let slot = comps["compartments"]
        .as_array()
        .expect("list")
        .iter()
        .find(|x| x["id"] == c)
        .cloned()
        .expect("slot");
    assert_eq!(
        (slot["status"].as_str(), slot["out_of_service"].as_str()),
        (Some("out_of_service"), Some("unknown_parcel")),
        "{slot}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pickup_whose_door_opens_and_shuts_between_two_polls_still_ends_picked_up() {
    let mut pki = TestPki::new();
    let gw = TestGateway::start_with(&pki, parcels::tokens).await;
    let cab = TestCabinet::start(&mut pki, "CAB-P7", gw.edge_addr()).await;
    let (id, c, pin) = ready_order(&gw, &cab, "JJD-QUICK").await;
    let dhl = gw.api.with_token(DHL_TOKEN);
    // the lock stays energized long: its door would spring open only after the recipient left
    cab.board
        .set_pulse_duration(std::time::Duration::from_secs(10))
        .expect("pulse length");
    let h = cab.handle.as_ref().expect("agent");
    let r = h.scan(ScanSource::Keypad, &pin).await.expect("scan");
    assert!(
        matches!(r.access, locker_agent::Access::Pickup(x) if x.0 == c),
        "{r:?}"
    );
    eventually("the pickup's lock fired", || cab.pulses(c) == 2).await;
    // door open, parcel out, door shut: all between two polls of the door sensor
    cab.board
        .open_and_shut(usize::from(c - 1), Some(false))
        .expect("a quick visit");

    let o = parcels::wait_state(&dhl, &id, "picked_up").await;
    assert_eq!(o["exception"], Value::Null, "{o}");
    let last = o["history"]
        .as_array()
        .and_then(|h| h.last())
        .cloned()
        .expect("history");
    assert_eq!(
        (last["cause"].as_str(), last["actor"].as_str()),
        (Some("local_access"), Some("recipient"))
    );
    assert_eq!(cab.status().counters.accesses_by_sensor, 1);
    // the compartment is free again (the close's reading says empty) and the code is spent
    eventually_async("compartment free", || async {
        let (_, comps) = gw.api.get("/v1/cabinets/CAB-P7/compartments").await;
        comps["compartments"]
            .as_array()
            .and_then(|a| a.iter().find(|x| x["id"] == c).cloned())
            .filter(|s| s["status"] == "free")
    })
    .await;
    let again = h.scan(ScanSource::Keypad, &pin).await.expect("scan");
    assert_eq!(
        again.access,
        locker_agent::Access::Refused(locker_agent::Refusal::WrongCode)
    );
    assert_eq!(cab.pulses(c), 2);
}
