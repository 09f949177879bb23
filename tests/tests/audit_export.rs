//! The audit export end to end (`GET /v1/audit/export`): a real gateway and real agents over
//! mutual TLS; a courier's deposit (badge and barcode) and a recipient's pickup at the keypad,
//! a remote unlock with its reason, a forced door raising an alert that is acknowledged with a
//! note and cleared; then the export of the period as NDJSON and CSV (the same rows), every
//! record kind with who and why, in time order, the period's bounds, and the scopes (a site
//! manager sees only its site, a carrier only its own orders, a foreign `site=` is 403, no
//! token 401).

use locker_schemas::ScanSource;
use locker_tests::agent::TestCabinet;
use locker_tests::api::ApiClient;
use locker_tests::gateway::TestGateway;
use locker_tests::parcels::{self, DHL_TOKEN, MANAGER_TOKEN, UPS_TOKEN};
use locker_tests::pki::TestPki;
use locker_tests::{eventually, eventually_async};
use serde_json::{json, Value};

const OTHER_SITE: &str = "other-site";

/// Exports `query` as NDJSON; the records.
async fn export(client: &ApiClient, query: &str) -> Vec<Value> {
    let (s, h, body) = client
        .get_text(&format!("/v1/audit/export?{query}"), &[])
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        h.get("content-type").and_then(|v| v.to_str().ok()),
        Some("application/x-ndjson")
    );
    body.lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object a line"))
        .collect()
}

fn kinds(records: &[Value]) -> Vec<&str> {
    records.iter().filter_map(|r| r["kind"].as_str()).collect()
}

fn find<'a>(records: &'a [Value], f: impl Fn(&Value) -> bool, what: &str) -> &'a Value {
    records
        .iter()
        .find(|r| f(r))
        .unwrap_or_else(|| panic!("no {what} in {records:#?}"))
}

fn compartment(o: &Value) -> u16 {
    o["compartment"].as_u64().expect("compartment") as u16
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_export_streams_every_audit_fact_with_who_and_why_in_ndjson_and_csv_within_scope() {
    let mut pki = TestPki::new();
    let gw = TestGateway::start_with(&pki, |c| {
        parcels::tokens(c);
        c.rules.tick_ms = 100;
    })
    .await;
    let cab = TestCabinet::start(&mut pki, "CAB-X1", gw.edge_addr()).await;
    let other = TestCabinet::start(&mut pki, "CAB-X2", gw.edge_addr()).await;
    parcels::online(&gw.api, "CAB-X1").await;
    parcels::online(&gw.api, "CAB-X2").await;
    let t0 = locker_schemas::now_millis();
    parcels::setup(&gw.api, &["CAB-X1"]).await;
    let (s, b) = gw
        .api
        .put(
            &format!("/v1/sites/{OTHER_SITE}"),
            json!({"name": "Other", "time_zone": "Europe/Berlin", "cabinets": ["CAB-X2"]}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let (dhl, ups, mgr) = (
        gw.api.with_token(DHL_TOKEN),
        gw.api.with_token(UPS_TOKEN),
        gw.api.with_token(MANAGER_TOKEN),
    );

    // a DHL courier deposits at the cabinet: badge, then the parcel's barcode
    let a = parcels::order(&dhl, "JJD-EXP1", "M").await;
    let (ida, ca) = (a["id"].as_str().expect("id").to_owned(), compartment(&a));
    parcels::creds_current(&gw.api, &cab).await;
    let h = cab.handle.as_ref().expect("agent");
    h.scan(ScanSource::Rfid, parcels::DHL_BADGE)
        .await
        .expect("scan");
    h.scan(ScanSource::Barcode, "JJD-EXP1").await.expect("scan");
    eventually("door open", || cab.status().open_doors.len() == 1).await;
    cab.board
        .put_parcel(usize::from(ca - 1))
        .expect("parcel in");
    cab.board.close_door(usize::from(ca - 1)).expect("close");
    parcels::wait_state(&dhl, &ida, "ready").await;
    eventually("door closed", || cab.status().open_doors.is_empty()).await;
    // the recipient picks it up with the PIN
    let pin = parcels::notice(&gw.api, &ida, "ready").await["pin"]
        .as_str()
        .expect("pin")
        .to_owned();
    parcels::creds_current(&gw.api, &cab).await;
    h.scan(ScanSource::Keypad, &pin).await.expect("scan");
    parcels::wait_state(&dhl, &ida, "picked_up").await;
    cab.board
        .take_parcel(usize::from(ca - 1))
        .expect("parcel out");
    cab.board.close_door(usize::from(ca - 1)).expect("close");
    eventually("door closed", || cab.status().open_doors.is_empty()).await;

    // a remote unlock with its reason
    let b = parcels::order(&dhl, "JJD-EXP2", "M").await;
    let (idb, cb) = (b["id"].as_str().expect("id").to_owned(), compartment(&b));
    let (s, r) = dhl
        .post(
            &format!("/v1/orders/{idb}/unlock"),
            json!({"reason": "courier lost the badge", "wait_ms": 10_000}),
        )
        .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["command"]["outcome"], "opened", "{r}");
    cab.board
        .put_parcel(usize::from(cb - 1))
        .expect("parcel in");
    cab.board.close_door(usize::from(cb - 1)).expect("close");
    parcels::wait_state(&dhl, &idb, "ready").await;
    eventually("door closed", || cab.status().open_doors.is_empty()).await;

    // a forced door: an alert, acknowledged with a note, cleared when the door shuts
    cab.board.open_door(15).expect("force compartment 16");
    let alert = eventually_async("the door_forced alert", || async {
        let (_, v) = gw
            .api
            .get("/v1/alerts?state=all&kind=door_forced&cabinet=CAB-X1")
            .await;
        v["alerts"].as_array().and_then(|a| a.first().cloned())
    })
    .await;
    let alert_id = alert["id"].as_str().expect("id").to_owned();
    let (s, b) = gw
        .api
        .post(
            &format!("/v1/alerts/{alert_id}/ack"),
            json!({"note": "cleaner, checked on camera"}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    cab.board.close_door(15).expect("close");
    eventually_async("the door_forced alert cleared", || async {
        let (_, v) = gw.api.get(&format!("/v1/alerts/{alert_id}")).await;
        (v["state"] == "cleared").then_some(())
    })
    .await;

    // UPS at the other site
    let (s, u) = ups
        .post(
            "/v1/orders",
            json!({"site": OTHER_SITE, "size": "M", "tracking": "1Z-EXP3",
                   "recipient": {"phone": "+4915100000001"}}),
        )
        .await;
    assert_eq!(s, 201, "{u}");
    let t1 = locker_schemas::now_millis() + 1;
    let period = format!("from={t0}&to={t1}");

    // --- the operator's fleet export
    let all = export(&gw.api, &period).await;
    let ks = kinds(&all);
    for k in [
        "order_transition",
        "scan",
        "access_granted",
        "door_opened",
        "door_closed",
        "remote_unlock",
        "command_result",
        "alert_raised",
        "alert_acknowledged",
        "alert_cleared",
    ] {
        assert!(ks.contains(&k), "{k} missing: {ks:?}");
    }
    assert!(
        all.windows(2)
            .all(|w| w[0]["at"].as_u64() <= w[1]["at"].as_u64()),
        "in time order"
    );
    assert!(all.iter().all(|r| {
        let at = r["at"].as_u64().expect("at");
        (t0..t1).contains(&at) && r["at_utc"].as_str().is_some_and(|s| s.ends_with('Z'))
    }));
    // who and why
    let deposit = find(
        &all,
        |r| r["kind"] == "access_granted" && r["cause"] == "deposit",
        "courier deposit",
    );
    assert_eq!(deposit["actor"], "dhl-c1");
    assert_eq!(deposit["cabinet"], "CAB-X1");
    assert_eq!(deposit["site"], parcels::SITE);
    assert_eq!(deposit["order"], ida.as_str());
    assert_eq!(deposit["tracking"], "JJD-EXP1");
    let pickup = find(
        &all,
        |r| r["kind"] == "access_granted" && r["cause"] == "pickup",
        "recipient pickup",
    );
    assert_eq!(pickup["actor"], "recipient");
    assert_eq!(pickup["compartment"], ca);
    let picked = find(
        &all,
        |r| {
            r["kind"] == "order_transition"
                && r["detail"]
                    .as_str()
                    .is_some_and(|d| d.starts_with("ready -> picked_up"))
        },
        "picked up",
    );
    assert_eq!(
        (
            &picked["order"],
            &picked["tracking"],
            &picked["carrier"],
            &picked["cause"]
        ),
        (
            &json!(ida),
            &json!("JJD-EXP1"),
            &json!("dhl"),
            &json!("local_access")
        )
    );
    let unlock = find(&all, |r| r["kind"] == "remote_unlock", "remote unlock");
    assert_eq!(unlock["reason"], "courier lost the badge");
    assert_eq!(unlock["actor"], "dhl-api");
    assert_eq!(unlock["order"], idb.as_str());
    assert_eq!(unlock["tracking"], "JJD-EXP2");
    let forced = find(
        &all,
        |r| r["kind"] == "door_opened" && r["cause"] == "unknown",
        "forced door",
    );
    assert_eq!(forced["compartment"], 16);
    let raised = find(&all, |r| r["kind"] == "alert_raised", "alert raised");
    assert_eq!(raised["cause"], "door_forced");
    assert_eq!(raised["actor"], "rules");
    let acked = find(&all, |r| r["kind"] == "alert_acknowledged", "alert ack");
    assert_eq!(acked["actor"], "test-suite");
    assert_eq!(acked["reason"], "cleaner, checked on camera");
    let cleared = find(&all, |r| r["kind"] == "alert_cleared", "alert cleared");
    assert!(cleared["reason"].as_str().is_some_and(|r| !r.is_empty()));
    assert!(raised["at"].as_u64() <= acked["at"].as_u64());
    assert!(acked["at"].as_u64() <= cleared["at"].as_u64());
    assert!(all.iter().any(|r| r["carrier"] == "ups"));

    // --- the same period as CSV: a header, then the same rows
    let (s, h, csv_text) = gw
        .api
        .get_text(&format!("/v1/audit/export?{period}&format=csv"), &[])
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        h.get("content-type").and_then(|v| v.to_str().ok()),
        Some("text/csv; charset=utf-8")
    );
    let disposition = h
        .get("content-disposition")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        disposition.starts_with("attachment; filename=\"audit-fleet-")
            && disposition.ends_with(".csv\""),
        "{disposition}"
    );
    let mut rd = csv::Reader::from_reader(csv_text.as_bytes());
    let header: Vec<String> = rd
        .headers()
        .expect("header")
        .iter()
        .map(str::to_owned)
        .collect();
    let rows: Vec<csv::StringRecord> = rd.records().map(|r| r.expect("row")).collect();
    assert_eq!(rows.len(), all.len());
    for (row, rec) in rows.iter().zip(&all) {
        for (i, col) in header.iter().enumerate() {
            let want = match &rec[col.as_str()] {
                Value::Null => String::new(),
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            assert_eq!(&row[i], want, "column {col} of {rec}");
        }
    }
    // Accept: text/csv asks for CSV too
    let (_, h, _) = gw
        .api
        .get_text(
            &format!("/v1/audit/export?{period}"),
            &[("accept", "text/csv")],
        )
        .await;
    assert_eq!(
        h.get("content-type").and_then(|v| v.to_str().ok()),
        Some("text/csv; charset=utf-8")
    );

    // --- the period's bounds: [from, to)
    let cut = unlock["at"].as_u64().expect("at");
    let before = export(&gw.api, &format!("from={t0}&to={cut}")).await;
    let after = export(&gw.api, &format!("from={cut}&to={t1}")).await;
    assert!(before
        .iter()
        .all(|r| r["at"].as_u64().is_some_and(|a| a < cut)));
    assert!(after
        .iter()
        .all(|r| r["at"].as_u64().is_some_and(|a| a >= cut)));
    assert_eq!(before.len() + after.len(), all.len());
    assert!(after.iter().any(|r| r["kind"] == "remote_unlock"));
    // RFC 3339 bounds work as well as ms; kinds= narrows
    let utc = |ms: u64| {
        time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
            .expect("time")
            .format(&time::format_description::well_known::Rfc3339)
            .expect("format")
    };
    let alerts_only = export(
        &gw.api,
        &format!("from={}&to={}&kinds=alert", utc(t0), utc(t1)),
    )
    .await;
    assert!(!alerts_only.is_empty());
    assert!(alerts_only.iter().all(|r| r["kind"]
        .as_str()
        .is_some_and(|k| k.starts_with("alert") || k.starts_with("alarm"))));

    // --- scopes
    let mine = export(&mgr, &period).await;
    assert!(!mine.is_empty());
    assert!(
        mine.iter().all(|r| r["site"] == parcels::SITE),
        "a site manager sees only its site: {mine:#?}"
    );
    assert!(kinds(&mine).contains(&"door_opened"));
    assert!(kinds(&mine).contains(&"alert_raised"));
    let (s, _, _) = mgr
        .get_text(&format!("/v1/audit/export?{period}&site={OTHER_SITE}"), &[])
        .await;
    assert_eq!(s, 403, "a foreign site");
    let (s, _, _) = gw
        .api
        .get_text("/v1/audit/export?site=no-such-site", &[])
        .await;
    assert_eq!(s, 404);
    let theirs = export(&dhl, &period).await;
    assert!(!theirs.is_empty());
    assert!(
        theirs
            .iter()
            .all(|r| r["source"] == "parcel" && r["carrier"] == "dhl"),
        "a carrier sees only its own orders' trail: {theirs:#?}"
    );
    assert!(kinds(&theirs).contains(&"remote_unlock"));
    let ups_only = export(&ups, &period).await;
    assert!(ups_only.iter().all(|r| r["carrier"] == "ups"));
    assert!(!ups_only.is_empty());
    assert_eq!(gw.api.get_anonymous("/v1/audit/export").await, 401);
    let (s, _, body) = gw
        .api
        .get_text(&format!("/v1/audit/export?from={t1}&to={t0}"), &[])
        .await;
    assert_eq!(s, 400, "{body}");
    let (s, _, _) = gw.api.get_text("/v1/audit/export?format=xml", &[]).await;
    assert_eq!(s, 400);

    // counted
    assert!(
        gw.api
            .metric("locker_api_exports_total{result=\"ok\"}")
            .await
            >= 8.0
    );
    assert!(
        gw.api
            .metric("locker_api_export_records_total{format=\"csv\"}")
            .await
            >= all.len() as f64
    );
    assert!(
        gw.api
            .metric("locker_api_exports_total{result=\"refused\"}")
            .await
            >= 3.0
    );
    drop(other);
}
