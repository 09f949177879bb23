//! A local access whose door is opened and shut between two polls of the door sensor (the
//! agent never sees it open), against the real lock-board simulator over Modbus TCP, offline:
//! the parcel sensor decides. A pickup that took the parcel out and a courier's deposit that
//! put one in are reported once (door opening, access, close with the reading) and spend their
//! credential; a pickup whose parcel is still there reports nothing and its code works again.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use locker_agent::creds::secret_hash;
use locker_agent::{Access, AgentHandle, Refusal, Storage};
use locker_schemas::{
    AccessAction, CabinetId, CompartmentId, CredKind, Credential, Credentials, DoorCause,
    DownlinkBody, LocalAccess, ScanSource, Uplink, UplinkBody,
};
use support::*;

const CAB: &str = "CAB-UNSEEN";

fn cred(kind: CredKind, code: &str, c: Option<u16>, reference: &str, carrier: &str) -> Credential {
    Credential {
        kind,
        secret_hash: secret_hash(code, &CabinetId::new(CAB).unwrap()).to_vec(),
        compartment: c.map(CompartmentId),
        reference: reference.into(),
        expires_at: locker_schemas::now_millis() + 3_600_000,
        carrier: carrier.into(),
    }
}

struct Cabinet {
    _d: tempfile::TempDir,
    _st: Storage,
    b: SimBoard,
    h: AgentHandle,
}

/// A cabinet holding `creds`, whose locks stay energized long (the door would spring open
/// only seconds after the lock fired), so a test acts on the door before the agent could see
/// it open by itself.
async fn cabinet(creds: Vec<Credential>) -> Cabinet {
    let (d, dir) = tempdir();
    let b = board(1).await;
    b.sim.set_pulse_duration(Duration::from_secs(10)).unwrap();
    let st = storage(&dir);
    let h = start(config(CAB, &dir, &[&b]), &st).await;
    ready(&h, 1).await;
    h.downlink(DownlinkBody::Credentials(Credentials {
        version: 1,
        entries: creds,
        part: 0,
        parts: 1,
    }))
    .await
    .unwrap();
    Cabinet {
        _d: d,
        _st: st,
        b,
        h,
    }
}

impl Cabinet {
    async fn scan(&self, source: ScanSource, v: &str) -> Access {
        self.h.scan(source, v).await.unwrap().access
    }

    /// Waits until lock `c` fired `n` times.
    async fn fired(&self, c: u16, n: u64) {
        eventually(5, &format!("lock {c} fired {n} times"), || async {
            self.b.sim.pulse_count(usize::from(c - 1)).unwrap() == n
        })
        .await;
    }

    async fn outbox(&self) -> Vec<Uplink> {
        self.h.outbox().await.unwrap()
    }

    async fn wait_access(&self) {
        eventually(10, "an access event", || async {
            !accesses(&self.outbox().await).is_empty()
        })
        .await;
    }
}

fn kinds(ob: &[Uplink]) -> Vec<&'static str> {
    ob.iter().map(|u| u.body.kind().as_str()).collect()
}

fn accesses(ob: &[Uplink]) -> Vec<LocalAccess> {
    ob.iter()
        .filter_map(|u| match &u.body {
            UplinkBody::Access(a) => Some(a.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_pickup_whose_door_opens_and_shuts_between_two_polls_is_reported_once() {
    let k = cabinet(vec![cred(CredKind::Pickup, "123456", Some(5), "ORD-5", "")]).await;
    k.b.sim.put_parcel(4).unwrap();
    assert_eq!(
        k.scan(ScanSource::Keypad, "123456").await,
        Access::Pickup(CompartmentId(5))
    );
    k.fired(5, 1).await;
    // the recipient is quick: door open, parcel out, door shut, all between two polls
    k.b.sim.open_and_shut(4, Some(false)).unwrap();
    k.wait_access().await;

    let ob = k.outbox().await;
    assert_eq!(kinds(&ob), ["scan", "door", "access", "door"], "{ob:#?}");
    assert_contiguous(&ob);
    assert_eq!(
        doors(&ob),
        vec![
            door(5, true, DoorCause::LocalAccess),
            closed(5, DoorCause::LocalAccess, Some(false)),
        ]
    );
    assert_eq!(
        accesses(&ob),
        vec![LocalAccess {
            compartment: CompartmentId(5),
            action: AccessAction::Pickup,
            reference: "ORD-5".into(),
            source: ScanSource::Keypad,
            actor: String::new(),
        }]
    );
    let s = k.h.status();
    assert!(s.alarms.is_empty(), "no forced opening: {:?}", s.alarms);
    assert_eq!(s.counters.accesses_by_sensor, 1);
    assert_eq!(s.counters.local_accesses, 1);
    assert_eq!(s.counters.unconfirmed_accesses, 0);
    assert!(s.open_doors.is_empty());

    // the code is spent: it opens nothing again
    assert_eq!(
        k.scan(ScanSource::Keypad, "123456").await,
        Access::Refused(Refusal::WrongCode)
    );
    assert_eq!(k.b.sim.total_pulses(), 1);
    assert_eq!(accesses(&k.outbox().await).len(), 1, "reported once");
    k.h.shutdown().await;
}

#[tokio::test]
async fn a_courier_deposit_whose_door_opens_and_shuts_between_two_polls_is_reported_once() {
    let k = cabinet(vec![
        cred(CredKind::Deposit, "BADGE-C1", None, "COURIER-1", "DHL"),
        cred(CredKind::Parcel, "PKG-6", Some(6), "ORD-6", "DHL"),
    ])
    .await;
    assert_eq!(
        k.scan(ScanSource::Rfid, "BADGE-C1").await,
        Access::SignedIn("COURIER-1".into())
    );
    assert_eq!(
        k.scan(ScanSource::Barcode, "PKG-6").await,
        Access::DepositInto(CompartmentId(6))
    );
    k.fired(6, 1).await;
    k.b.sim.open_and_shut(5, Some(true)).unwrap();
    k.wait_access().await;

    let ob = k.outbox().await;
    assert_eq!(
        doors(&ob),
        vec![
            door(6, true, DoorCause::LocalAccess),
            closed(6, DoorCause::LocalAccess, Some(true)),
        ]
    );
    assert_eq!(
        accesses(&ob),
        vec![LocalAccess {
            compartment: CompartmentId(6),
            action: AccessAction::Deposit,
            reference: "ORD-6".into(),
            source: ScanSource::Barcode,
            actor: "COURIER-1".into(),
        }]
    );
    assert_eq!(k.h.status().counters.accesses_by_sensor, 1);
    // the parcel credential is spent: the barcode is now an unknown parcel
    assert_eq!(
        k.scan(ScanSource::Barcode, "PKG-6").await,
        Access::ParcelNoted
    );
    assert_eq!(k.b.sim.total_pulses(), 1);
    k.h.shutdown().await;
}

#[tokio::test]
async fn a_pickup_whose_parcel_sensor_did_not_change_reports_nothing_and_the_code_works_again() {
    let k = cabinet(vec![cred(CredKind::Pickup, "123456", Some(5), "ORD-5", "")]).await;
    k.b.sim.put_parcel(4).unwrap();
    assert_eq!(
        k.scan(ScanSource::Keypad, "123456").await,
        Access::Pickup(CompartmentId(5))
    );
    k.fired(5, 1).await;
    // opened and shut between two polls, the parcel left inside
    k.b.sim.open_and_shut(4, None).unwrap();
    eventually(10, "the access judged unconfirmed", || async {
        k.h.status().counters.unconfirmed_accesses == 1
    })
    .await;
    let ob = k.outbox().await;
    assert_eq!(kinds(&ob), ["scan"], "nothing reported: {ob:#?}");
    assert_eq!(k.h.status().counters.local_accesses, 0);

    // the recipient tries again; this time the door opens as usual
    k.b.sim
        .set_pulse_duration(Duration::from_millis(50))
        .unwrap();
    assert_eq!(
        k.scan(ScanSource::Keypad, "123456").await,
        Access::Pickup(CompartmentId(5))
    );
    eventually(5, "door 5 open", || async {
        k.h.status().open_doors == vec![CompartmentId(5)]
    })
    .await;
    k.wait_access().await;
    let ob = k.outbox().await;
    assert_eq!(kinds(&ob), ["scan", "scan", "door", "access"], "{ob:#?}");
    assert_eq!(k.b.sim.total_pulses(), 2);
    assert_eq!(k.h.status().counters.accesses_by_sensor, 0);
    k.h.shutdown().await;
}
