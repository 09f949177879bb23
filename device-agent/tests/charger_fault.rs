//! The charge controller's alarms against the real charger simulator over Modbus TCP:
//! ChargerFault when the controller stops answering or reports a fault (battery status 0x3200
//! bits 3..0 == 4), cleared at the first good read without one, raised and cleared once across a
//! restart; PowerFail only for a battery under `battery_min_mv`.
#![allow(clippy::unwrap_used)]

mod support;

use locker_agent::AgentHandle;
use locker_schemas::{Alarm, AlarmKind, Uplink, UplinkBody};
use support::*;

/// Every alarm event in the outbox, in order.
fn alarms(ob: &[Uplink]) -> Vec<Alarm> {
    ob.iter()
        .filter_map(|u| match &u.body {
            UplinkBody::Alarm(a) => Some(a.clone()),
            _ => None,
        })
        .collect()
}

fn active(h: &AgentHandle, kind: AlarmKind) -> Option<Alarm> {
    h.status().alarms.into_iter().find(|a| a.kind == kind)
}

async fn first_power_report(h: &AgentHandle) {
    eventually(10, "first power report", || async {
        h.outbox()
            .await
            .unwrap()
            .iter()
            .any(|u| matches!(u.body, UplinkBody::Power(_)))
    })
    .await;
}

/// (kind, active) of every alarm event.
fn kinds(a: &[Alarm]) -> Vec<(AlarmKind, bool)> {
    a.iter().map(|a| (a.kind, a.active)).collect()
}

#[tokio::test]
async fn charger_that_stops_answering_raises_charger_fault_not_power_fail() {
    let (_d, dir) = tempdir();
    let (ch, addr) = charger().await;
    let st = storage(&dir);
    let h = start(with_charger(config("CAB-CHG-SILENT", &dir, &[]), addr), &st).await;
    first_power_report(&h).await;

    ch.set_unresponsive(true);
    eventually(15, "charger fault raised", || async {
        active(&h, AlarmKind::ChargerFault).is_some()
    })
    .await;
    let a = active(&h, AlarmKind::ChargerFault).unwrap();
    assert_eq!((a.compartment, a.board), (None, None), "{a:?}");
    assert!(a.detail.contains("not answering"), "{a:?}");
    assert!(active(&h, AlarmKind::PowerFail).is_none());

    ch.set_unresponsive(false);
    eventually(15, "charger fault cleared", || async {
        active(&h, AlarmKind::ChargerFault).is_none()
    })
    .await;
    let a = alarms(&h.outbox().await.unwrap());
    assert_eq!(
        kinds(&a),
        vec![
            (AlarmKind::ChargerFault, true),
            (AlarmKind::ChargerFault, false)
        ],
        "{a:#?}"
    );
    assert!(a[1].detail.contains("answers again"), "{a:#?}");
    h.shutdown().await;
}

#[tokio::test]
async fn charger_reporting_a_fault_raises_charger_fault_once_across_a_restart() {
    let (_d, dir) = tempdir();
    let (ch, addr) = charger().await;
    let st = storage(&dir);
    let cfg = with_charger(config("CAB-CHG-FAULT", &dir, &[]), addr);
    let h = start(cfg.clone(), &st).await;
    first_power_report(&h).await;

    ch.set_fault(true);
    eventually(15, "charger fault raised", || async {
        active(&h, AlarmKind::ChargerFault).is_some()
    })
    .await;
    let a = active(&h, AlarmKind::ChargerFault).unwrap();
    assert!(a.detail.contains("reports a fault"), "{a:?}");
    assert!(
        active(&h, AlarmKind::PowerFail).is_none(),
        "the battery is fine"
    );
    h.shutdown().await;

    // Still faulty after a restart: the stored alarm stands, it is not raised again.
    let h = start(cfg, &st).await;
    assert!(active(&h, AlarmKind::ChargerFault).is_some(), "restored");
    let boot2_power = |ob: &[Uplink]| {
        ob.iter()
            .any(|u| u.boot == 2 && matches!(u.body, UplinkBody::Power(_)))
    };
    eventually(10, "a read after the restart", || async {
        boot2_power(&h.outbox().await.unwrap())
    })
    .await;

    ch.set_fault(false);
    eventually(15, "charger fault cleared", || async {
        active(&h, AlarmKind::ChargerFault).is_none()
    })
    .await;
    let a = alarms(&h.outbox().await.unwrap());
    assert_eq!(
        kinds(&a),
        vec![
            (AlarmKind::ChargerFault, true),
            (AlarmKind::ChargerFault, false)
        ],
        "raised once, cleared once: {a:#?}"
    );
    assert!(a[1].detail.contains("no fault"), "{a:#?}");
    h.shutdown().await;
}

#[tokio::test]
async fn battery_under_the_floor_raises_power_fail_only() {
    let (_d, dir) = tempdir();
    let (ch, addr) = charger().await;
    // An empty LiFePO4 battery: about 10 V, under the 11.5 V floor; the controller cuts the load
    // (battery status 3, low-voltage disconnect), which is no fault of the controller.
    ch.set_soc(0.0).unwrap();
    let st = storage(&dir);
    let h = start(with_charger(config("CAB-CHG-LOW", &dir, &[]), addr), &st).await;
    eventually(15, "power fail raised", || async {
        active(&h, AlarmKind::PowerFail).is_some()
    })
    .await;
    let a = active(&h, AlarmKind::PowerFail).unwrap();
    assert!(a.detail.contains("floor"), "{a:?}");
    assert!(active(&h, AlarmKind::ChargerFault).is_none());

    ch.set_soc(80.0).unwrap();
    eventually(15, "power fail cleared", || async {
        active(&h, AlarmKind::PowerFail).is_none()
    })
    .await;
    let a = alarms(&h.outbox().await.unwrap());
    assert_eq!(
        kinds(&a),
        vec![(AlarmKind::PowerFail, true), (AlarmKind::PowerFail, false)],
        "{a:#?}"
    );
    h.shutdown().await;
}
