//! `kill -9` of the real gateway process in the middle of parcel transitions: remote deposit
//! unlocks in flight, then pickups at the keypad in flight. After each restart every order
//! ends where the doors say it is, each transition happened exactly once, and no compartment
//! holds two orders.

use locker_schemas::ScanSource;
use locker_tests::agent::TestCabinet;
use locker_tests::gateway::{test_config, GatewayProcess};
use locker_tests::parcels::{self, DHL_TOKEN};
use locker_tests::pki::TestPki;
use locker_tests::{eventually, eventually_async};
use serde_json::{json, Value};

fn count(o: &Value, state: &str) -> usize {
    o["history"]
        .as_array()
        .expect("history")
        .iter()
        .filter(|h| h["to"] == state && h["from"] != state)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_deposits_and_pickups_loses_and_repeats_nothing() {
    let mut pki = TestPki::new();
    let data = tempfile::tempdir().expect("temp dir");
    let mut cfg = test_config(&pki, data.path());
    let ports = [locker_tests::net::reserve(), locker_tests::net::reserve()];
    cfg.edge.listen = ports[0].addr();
    cfg.api.listen = ports[1].addr();
    parcels::tokens(&mut cfg);
    let mut gw = GatewayProcess::start(&cfg);
    let cab = TestCabinet::start(&mut pki, "CAB-PK9", gw.edge_addr).await;
    parcels::online(&gw.api, "CAB-PK9").await;
    parcels::setup(&gw.api, &["CAB-PK9"]).await;
    let dhl = gw.api.with_token(DHL_TOKEN);
    let mut orders = Vec::new();
    for i in 0..6 {
        let o = parcels::order(&dhl, &format!("JJD-K9-{i}"), "M").await;
        orders.push((
            o["id"].as_str().expect("id").to_owned(),
            o["compartment"].as_u64().expect("compartment") as u16,
        ));
    }

    // six remote deposits sent, the gateway killed right after the last one
    for (id, _) in &orders {
        let (s, r) = dhl
            .post(
                &format!("/v1/orders/{id}/unlock"),
                json!({"reason": "courier at the door"}),
            )
            .await;
        assert!(s == 202 || s == 200, "{r}");
    }
    gw.kill9();
    gw.restart();
    let dhl = gw.api.with_token(DHL_TOKEN);
    for (id, c) in &orders {
        parcels::wait_state(&dhl, id, "ready").await;
        cab.board.put_parcel(usize::from(c - 1)).expect("parcel in");
        cab.board.close_door(usize::from(c - 1)).expect("close");
    }
    eventually("doors closed", || cab.status().open_doors.is_empty()).await;

    // the recipients' codes reach the cabinet; three of them pick up, then the gateway dies
    let mut pins = Vec::new();
    for (id, _) in &orders {
        let n = parcels::notice(&gw.api, id, "ready").await;
        pins.push(n["pin"].as_str().expect("pin").to_owned());
    }
    eventually_async("the cabinet holds the current set", || async {
        let (_, b) = gw.api.get("/v1/cabinets/CAB-PK9/compartments").await;
        let v = b["creds_version"].as_u64().unwrap_or(0);
        (v > 0 && cab.status().creds_version == v).then_some(())
    })
    .await;
    let h = cab.handle.as_ref().expect("agent");
    for pin in &pins[..3] {
        let r = h.scan(ScanSource::Keypad, pin).await.expect("scan");
        assert!(matches!(r.access, locker_agent::Access::Pickup(_)), "{r:?}");
    }
    gw.kill9();
    // the other three pick up while the gateway is down
    for pin in &pins[3..] {
        let r = h.scan(ScanSource::Keypad, pin).await.expect("scan");
        assert!(matches!(r.access, locker_agent::Access::Pickup(_)), "{r:?}");
    }
    gw.restart();
    let dhl = gw.api.with_token(DHL_TOKEN);
    for (id, c) in &orders {
        let o = parcels::wait_state(&dhl, id, "picked_up").await;
        assert_eq!(count(&o, "deposited"), 1, "{o}");
        assert_eq!(count(&o, "ready"), 1, "{o}");
        assert_eq!(count(&o, "picked_up"), 1, "{o}");
        assert_eq!(o["exception"], Value::Null, "{o}");
        assert_eq!(
            cab.pulses(*c),
            2,
            "compartment {c}: one deposit, one pickup"
        );
    }
    let (_, comps) = gw.api.get("/v1/cabinets/CAB-PK9/compartments").await;
    let busy: Vec<_> = comps["compartments"]
        .as_array()
        .expect("list")
        .iter()
        .filter(|c| c["status"] != "free")
        .collect();
    assert!(busy.is_empty(), "{busy:?}");
    let status = gw.terminate();
    assert!(status.success(), "{status:?}");
}
