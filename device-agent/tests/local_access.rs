//! Invariant 7: with no network, cached credentials still open doors: a pickup code opens its
//! compartment once, a courier's deposit permission opens an empty compartment, expired or
//! unknown codes open nothing, and the cache survives restarts.
#![allow(clippy::unwrap_used)]

mod support;

use locker_agent::config::SizeName;
use locker_agent::creds::secret_hash;
use locker_agent::Access;
use locker_schemas::{
    AccessAction, CabinetId, CompartmentId, CredKind, Credential, Credentials, DoorCause,
    DownlinkBody, ScanSource, UplinkBody,
};
use support::*;

fn cred(
    kind: CredKind,
    code: &str,
    c: Option<u16>,
    reference: &str,
    expires_at: u64,
) -> Credential {
    Credential {
        kind,
        secret_hash: secret_hash(code, &CabinetId::new("CAB-LOCAL").unwrap()).to_vec(),
        compartment: c.map(CompartmentId),
        reference: reference.into(),
        expires_at,
        carrier: String::new(),
    }
}

#[tokio::test]
async fn offline_pickup_and_deposit_from_the_credential_cache() {
    let (_d, dir) = tempdir();
    let b = board(1).await;
    let st = storage(&dir);
    let mut cfg = config("CAB-LOCAL", &dir, &[&b]);
    let mut sizes = vec![SizeName::M; 16];
    sizes[8] = SizeName::S;
    cfg.lock_boards[0].sizes = sizes;
    let h = start(cfg.clone(), &st).await;
    ready(&h, 1).await;

    let later = locker_schemas::now_millis() + 3_600_000;
    let set = Credentials {
        version: 7,
        entries: vec![
            cred(CredKind::Pickup, "123456", Some(5), "ORD-5", later),
            cred(CredKind::Pickup, "999999", Some(6), "ORD-OLD", 1_000),
            cred(CredKind::Deposit, "COURIER-1", None, "CARRIER-A", later),
        ],
        part: 0,
        parts: 1,
    };
    h.downlink(DownlinkBody::Credentials(set)).await.unwrap();
    assert_eq!(h.status().creds_version, 7);

    // Pickup.
    let r = h.scan(ScanSource::Keypad, "123456").await.unwrap();
    assert_eq!(r.access, Access::Pickup(CompartmentId(5)));
    eventually(5, "door 5 open", || async {
        h.status().open_doors == vec![CompartmentId(5)]
    })
    .await;
    assert_eq!(b.sim.pulse_count(4).unwrap(), 1);
    let ob = h.outbox().await.unwrap();
    let kinds: Vec<_> = ob.iter().map(|u| u.body.kind().as_str()).collect();
    assert_eq!(kinds, vec!["scan", "access", "door"]);
    assert!(matches!(&ob[1].body, UplinkBody::Access(a)
        if a.compartment == CompartmentId(5) && a.action == AccessAction::Pickup && a.reference == "ORD-5"));
    assert_eq!(doors(&ob), vec![door(5, true, DoorCause::LocalAccess)]);
    assert!(h.status().alarms.is_empty());

    // The code is used up; an expired code and a wrong one open nothing.
    b.sim.close_door(4).unwrap();
    eventually(5, "door 5 closed", || async {
        h.status().open_doors.is_empty()
    })
    .await;
    for code in ["123456", "999999", "000000"] {
        let r = h.scan(ScanSource::Keypad, code).await.unwrap();
        assert_eq!(r.access, Access::None, "{code}");
        assert!(r.seq.is_some());
    }
    assert_eq!(b.sim.total_pulses(), 1);
    h.shutdown().await;

    // After a restart the cache is still there (minus the used code).
    let h = start(cfg, &st).await;
    ready(&h, 1).await;
    assert_eq!(h.status().creds_version, 7);
    let r = h.scan(ScanSource::Keypad, "123456").await.unwrap();
    assert_eq!(r.access, Access::None);

    // Deposit: compartment 9 (the only S) has a parcel, 1 too: the smallest empty one is an M,
    // the lowest number of those: 2.
    b.sim.put_parcel(8).unwrap();
    b.sim.put_parcel(0).unwrap();
    let r = h
        .scan(
            ScanSource::Rfid,
            "rfid:COURIER-1".trim_start_matches("rfid:"),
        )
        .await
        .unwrap();
    assert_eq!(r.access, Access::Deposit);
    eventually(5, "door 2 open", || async {
        h.status().open_doors == vec![CompartmentId(2)]
    })
    .await;
    let ob = h.outbox().await.unwrap();
    assert!(ob.iter().any(|u| matches!(&u.body, UplinkBody::Access(a)
        if a.compartment == CompartmentId(2) && a.action == AccessAction::Deposit
            && a.reference == "CARRIER-A" && a.source == ScanSource::Rfid)));
    assert_eq!(b.sim.pulse_count(1).unwrap(), 1);
    h.shutdown().await;
}
