//! One cabinet cannot grow the fleet state without bound: a raw cabinet sends thousands of
//! door events for compartments it never declared and hundreds of distinct alarms with
//! near-64 KB text; its snapshot stays within the declared layout and the caps (also after a
//! restart, from the stored snapshot), the rejections are counted, and the events are still
//! in the audit log.

use locker_schemas::{
    Alarm, AlarmKind, CompartmentId, CompartmentInfo, Door, DoorCause, Hello, NetworkKind, Size,
    UplinkBody,
};
use locker_tests::api::metric_value;
use locker_tests::cabinet::RawCabinet;
use locker_tests::gateway::TestGateway;
use locker_tests::pki::TestPki;
use locker_tests::{eventually, eventually_async};
use serde_json::{json, Value};

const DECLARED: u16 = 4;
const UNDECLARED_DOORS: u64 = 2_000;
const ALARMS: u64 = 200;
/// Detail text near the payload limit (64 KB), multi-byte characters included.
fn big_text() -> String {
    "é".repeat(30_000)
}

fn check_bounded(c: &Value) {
    let comps = c["compartments"].as_array().expect("compartments");
    assert_eq!(
        comps.len(),
        usize::from(DECLARED),
        "layout only: {}",
        comps.len()
    );
    let alarms = c["alarms"].as_array().expect("alarms");
    assert_eq!(alarms.len(), 64, "alarm cap");
    for a in alarms {
        let d = a["detail"].as_str().expect("detail");
        assert!(d.len() <= 256, "detail cut to 256 bytes, got {}", d.len());
        assert!(d.chars().all(|ch| ch == 'é'), "cut on a character boundary");
    }
    assert!(c["firmware"].as_str().expect("firmware").len() <= 256);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_cabinet_leaves_its_snapshot_bounded_and_the_rejections_counted() {
    let mut pki = TestPki::new();
    let cert = pki.cabinet("CAB-FLOOD");
    let gw = TestGateway::start(&pki).await;
    let cab = RawCabinet::connect(&pki, &cert, "CAB-FLOOD", gw.edge_addr());
    eventually("cabinet connected", || cab.connected()).await;

    let mut seq = 1;
    cab.send(
        &cab.uplink(
            seq,
            UplinkBody::Hello(Hello {
                firmware: "f".repeat(10_000),
                hardware: "raw".into(),
                compartments: (1..=DECLARED)
                    .map(|i| CompartmentInfo {
                        id: CompartmentId(i),
                        size: Size::S,
                    })
                    .collect(),
                network: NetworkKind::Cellular,
                creds_version: 0,
            }),
        ),
    )
    .await;
    for i in 0..UNDECLARED_DOORS {
        seq += 1;
        let door = Door {
            compartment: CompartmentId(100 + i as u16),
            open: true,
            cause: DoorCause::Unknown,
            parcel: None,
        };
        cab.send(&cab.uplink(seq, UplinkBody::Door(door))).await;
    }
    let text = big_text();
    for b in 0..ALARMS {
        seq += 1;
        let alarm = Alarm {
            kind: AlarmKind::LockBoardOffline,
            active: true,
            compartment: None,
            board: Some(b as u8),
            detail: text.clone(),
        };
        cab.send(&cab.uplink(seq, UplinkBody::Alarm(alarm))).await;
    }
    // a declared door still works
    seq += 1;
    let door = Door {
        compartment: CompartmentId(2),
        open: true,
        cause: DoorCause::Unknown,
        parcel: None,
    };
    cab.send(&cab.uplink(seq, UplinkBody::Door(door))).await;
    let last = seq;
    eventually("every event stored and acknowledged", || {
        cab.acked() >= last
    })
    .await;

    let api = gw.api.clone();
    let c = eventually_async("the last event reached the fleet state", || {
        let api = api.clone();
        async move {
            let (_, c) = api.get("/v1/cabinets/CAB-FLOOD").await;
            (c["last_seq"] == json!(last)).then_some(c)
        }
    })
    .await;
    check_bounded(&c);
    assert_eq!(c["compartments"][1]["open"], json!(true));

    let m = gw.api.metrics().await;
    let rejected = |reason: &str| {
        metric_value(
            &m,
            &format!("locker_fleet_rejected_total{{reason=\"{reason}\"}}"),
        )
    };
    assert_eq!(rejected("unknown_compartment"), UNDECLARED_DOORS as f64);
    assert_eq!(rejected("too_many_alarms"), (ALARMS - 64) as f64);
    // 64 kept alarm texts and the firmware were cut
    assert_eq!(rejected("text_truncated"), 65.0);

    // the audit log still has every event as sent
    let (_, page) = gw
        .api
        .get(&format!(
            "/v1/cabinets/CAB-FLOOD/events?after={}&limit=1",
            last - 1
        ))
        .await;
    assert_eq!(page["events"][0]["seq"], json!(last));

    // the stored snapshot is the bounded one
    let gw = gw.restart().await;
    let (_, c) = gw.api.get("/v1/cabinets/CAB-FLOOD").await;
    check_bounded(&c);
}
