//! The API's JSON values of every wire enum are the names the README documents: a cabinet
//! sends every variant of every enum, and the values the API serves (cabinet snapshot and
//! audit log) are compared with the README's "JSON values" table.

use std::collections::{BTreeMap, BTreeSet};

use locker_schemas::{
    AccessAction, Alarm, AlarmKind, ChargeState, CommandId, CompartmentId, CompartmentInfo, Door,
    DoorCause, Hello, LocalAccess, Network, NetworkKind, Power, Scan, ScanSource, Size, UplinkBody,
};
use locker_tests::cabinet::RawCabinet;
use locker_tests::eventually;
use locker_tests::gateway::TestGateway;
use locker_tests::pki::TestPki;
use serde_json::Value;

/// The README's table: field -> documented values (object-shaped values left out).
fn readme_values() -> BTreeMap<String, BTreeSet<String>> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let section = readme
        .split_once("JSON values of the cabinet and event fields")
        .expect("the README documents the JSON values")
        .1;
    let ticked = |cell: &str| -> Vec<String> {
        cell.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect()
    };
    let mut out = BTreeMap::new();
    for line in section.lines().skip_while(|l| !l.starts_with('|')) {
        if !line.starts_with('|') {
            break;
        }
        let cells: Vec<&str> = line.split('|').collect();
        let (Some(field), Some(values)) = (cells.get(1), cells.get(2)) else {
            continue;
        };
        let Some(name) = ticked(field).into_iter().next() else {
            continue; // the header rows
        };
        let values: BTreeSet<String> = ticked(values)
            .into_iter()
            .filter(|v| !v.starts_with('{'))
            .collect();
        out.insert(name, values);
    }
    out
}

fn body_events() -> Vec<UplinkBody> {
    let sizes = [Size::S, Size::M, Size::L, Size::Xl];
    let mut out = vec![UplinkBody::Hello(Hello {
        firmware: "fw".into(),
        hardware: "hw".into(),
        compartments: sizes
            .iter()
            .zip(1..)
            .map(|(s, i)| CompartmentInfo {
                id: CompartmentId(i),
                size: *s,
            })
            .collect(),
        network: NetworkKind::Lan,
        creds_version: 0,
    })];
    for kind in [NetworkKind::Cellular, NetworkKind::Wifi, NetworkKind::Lan] {
        out.push(UplinkBody::Network(Network {
            kind,
            signal_dbm: None,
        }));
    }
    for charging in [
        ChargeState::NotCharging,
        ChargeState::Float,
        ChargeState::Boost,
        ChargeState::Equalize,
    ] {
        out.push(UplinkBody::Power(Power {
            battery_mv: 12_800,
            soc_pct: 80,
            pv_w: 10,
            load_w: 5,
            charging,
            temp_dc: 215,
        }));
    }
    for kind in [
        AlarmKind::ForcedOpen,
        AlarmKind::DoorLeftOpen,
        AlarmKind::Tamper,
        AlarmKind::LockBoardOffline,
        AlarmKind::PowerFail,
        AlarmKind::OutboxNearlyFull,
        AlarmKind::KeypadLocked,
        AlarmKind::ChargerFault,
    ] {
        out.push(UplinkBody::Alarm(Alarm {
            kind,
            active: true,
            compartment: Some(CompartmentId(1)),
            board: None,
            detail: String::new(),
        }));
    }
    let sources = [
        ScanSource::Barcode,
        ScanSource::Qr,
        ScanSource::Rfid,
        ScanSource::Keypad,
    ];
    for source in sources {
        out.push(UplinkBody::Scan(Scan {
            source,
            value: "x".into(),
        }));
    }
    for (action, source) in [
        (AccessAction::Pickup, ScanSource::Keypad),
        (AccessAction::Deposit, ScanSource::Qr),
        (AccessAction::Collect, ScanSource::Rfid),
    ] {
        out.push(UplinkBody::Access(LocalAccess {
            compartment: CompartmentId(2),
            action,
            reference: "ref".into(),
            source,
            actor: "courier-1".into(),
        }));
    }
    for cause in [
        DoorCause::Unknown,
        DoorCause::LocalAccess,
        DoorCause::Command(CommandId::generate()),
    ] {
        out.push(UplinkBody::Door(Door {
            compartment: CompartmentId(3),
            open: true,
            cause,
            parcel: None,
        }));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_enum_value_in_the_api_is_a_name_the_readme_documents() {
    let documented = readme_values();
    let mut pki = TestPki::new();
    let cert = pki.cabinet("CAB-JSON");
    let gw = TestGateway::start(&pki).await;
    let cab = RawCabinet::connect(&pki, &cert, "CAB-JSON", gw.edge_addr());
    eventually("cabinet connected", || cab.connected()).await;
    let bodies = body_events();
    let last = bodies.len() as u64;
    for (b, seq) in bodies.into_iter().zip(1..) {
        cab.send(&cab.uplink(seq, b)).await;
    }
    eventually("every event acknowledged", || cab.acked() >= last).await;

    let (_, page) = gw.api.get("/v1/cabinets/CAB-JSON/events?limit=1000").await;
    let events = page["events"].as_array().expect("events").clone();
    assert_eq!(events.len() as u64, last);
    let mut seen: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    let mut add = |field: &'static str, v: &Value| {
        if let Some(s) = v.as_str() {
            seen.entry(field).or_default().insert(s.to_owned());
        }
    };
    for e in &events {
        let d = &e["data"];
        match e["kind"].as_str().expect("kind") {
            "hello" => {
                for c in d["compartments"].as_array().expect("layout") {
                    add("size", &c["size"]);
                }
                add("network", &d["network"]);
            }
            "network" => add("network", &d["network"]),
            "power" => add("charging", &d["charging"]),
            "alarm" => add("alarm", &d["alarm"]),
            "scan" => add("source", &d["source"]),
            "access" => {
                add("source", &d["source"]);
                add("action", &d["action"]);
            }
            "door" => {
                add("cause", &d["cause"]);
                assert!(
                    d["cause"].is_string() || d["cause"]["command"].is_string(),
                    "{d}"
                );
            }
            other => panic!("unexpected kind {other}"),
        }
    }
    // the cabinet snapshot uses the same names
    let (_, c) = gw.api.get("/v1/cabinets/CAB-JSON").await;
    for comp in c["compartments"].as_array().expect("compartments") {
        add("size", &comp["size"]);
    }
    add("network", &c["network"]["kind"]);
    add("charging", &c["power"]["charging"]);
    let alarms = c["alarms"].as_array().expect("alarms");
    assert_eq!(alarms.len(), 8, "{c}");
    for a in alarms {
        add("alarm", &a["kind"]);
    }

    for (field, values) in &seen {
        assert_eq!(
            Some(values),
            documented.get(*field),
            "API values of `{field}` vs the README's JSON values table"
        );
    }
    assert_eq!(
        seen.len(),
        documented.len(),
        "every documented field was checked"
    );
}
