//! Door closes carry the parcel sensor, against the real lock-board simulator over Modbus TCP:
//! a pickup that takes the parcel out, a close with the parcel left inside, a board whose
//! parcel read fails and a board without parcel sensors (the close still comes, without a
//! reading), and a door opened again right after it closed (the close, with its reading, comes
//! before the new opening).
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use locker_agent::creds::secret_hash;
use locker_agent::{Access, AgentHandle, ExecOutcome};
use locker_schemas::{
    CabinetId, CompartmentId, CredKind, Credential, Credentials, DoorCause, DownlinkBody, Outcome,
    ScanSource,
};
use support::*;

async fn wait_open(h: &AgentHandle, open: &[u16]) {
    let want: Vec<CompartmentId> = open.iter().map(|c| CompartmentId(*c)).collect();
    eventually(5, &format!("open doors {open:?}"), || {
        let ok = h.status().open_doors == want;
        async move { ok }
    })
    .await;
}

async fn wait_doors(h: &AgentHandle, n: usize) {
    eventually(5, &format!("{n} door events in the outbox"), || async {
        doors(&h.outbox().await.unwrap()).len() >= n
    })
    .await;
}

#[tokio::test]
async fn a_pickup_that_takes_the_parcel_out_closes_with_parcel_false() {
    const CAB: &str = "CAB-PARCEL-PICKUP";
    let (_d, dir) = tempdir();
    let b = board(1).await;
    let st = storage(&dir);
    let h = start(config(CAB, &dir, &[&b]), &st).await;
    ready(&h, 1).await;
    b.sim.put_parcel(4).unwrap();
    let pickup = Credential {
        kind: CredKind::Pickup,
        secret_hash: secret_hash("123456", &CabinetId::new(CAB).unwrap()).to_vec(),
        compartment: Some(CompartmentId(5)),
        reference: "ORD-5".into(),
        expires_at: locker_schemas::now_millis() + 3_600_000,
        carrier: String::new(),
    };
    h.downlink(DownlinkBody::Credentials(Credentials {
        version: 1,
        entries: vec![pickup],
        part: 0,
        parts: 1,
    }))
    .await
    .unwrap();
    let r = h.scan(ScanSource::Keypad, "123456").await.unwrap().access;
    assert_eq!(r, Access::Pickup(CompartmentId(5)));
    wait_open(&h, &[5]).await;

    b.sim.take_parcel(4).unwrap();
    b.sim.close_door(4).unwrap();
    wait_doors(&h, 2).await;
    assert_eq!(
        doors(&h.outbox().await.unwrap()),
        vec![
            door(5, true, DoorCause::LocalAccess),
            closed(5, DoorCause::LocalAccess, Some(false)),
        ]
    );
    h.shutdown().await;
}

#[tokio::test]
async fn a_close_with_the_parcel_left_inside_reports_parcel_true() {
    let (_d, dir) = tempdir();
    let b1 = board(1).await;
    let b2 = board(2).await;
    let st = storage(&dir);
    let h = start(config("CAB-PARCEL-LEFT", &dir, &[&b1, &b2]), &st).await;
    ready(&h, 2).await;
    // compartment 20 is lock 3 of the second board; a parcel on the first board's lock 3 must
    // not be taken for it
    b2.sim.put_parcel(3).unwrap();
    b1.sim.take_parcel(3).unwrap();
    let cmd = unlock(20);
    let ExecOutcome::Result(r) = h.execute(cmd.clone()).await.unwrap() else {
        panic!("a new command")
    };
    assert_eq!(r.outcome, Outcome::Opened, "{r:?}");
    b2.sim.close_door(3).unwrap();
    wait_doors(&h, 2).await;
    assert_eq!(
        doors(&h.outbox().await.unwrap()),
        vec![
            door(20, true, DoorCause::Command(cmd.id)),
            closed(20, DoorCause::Command(cmd.id), Some(true)),
        ]
    );
    h.shutdown().await;
}

#[tokio::test]
async fn a_failed_parcel_read_or_a_board_without_sensors_still_reports_the_close_without_a_reading()
{
    let (_d, dir) = tempdir();
    let b1 = board(1).await;
    let b2 = board(2).await;
    let st = storage(&dir);
    let mut cfg = config("CAB-PARCEL-FAIL", &dir, &[&b1, &b2]);
    // board 1 answers the parcel read with an exception (nothing at that address)
    cfg.lock_boards[0].parcel_offset = 4_000;
    // board 2 has no parcel sensors
    cfg.lock_boards[1].parcel_sensors = false;
    let h = start(cfg, &st).await;
    ready(&h, 2).await;
    b1.sim.put_parcel(0).unwrap();
    b2.sim.put_parcel(0).unwrap();
    let exceptions = b1.sim.link_stats().exceptions;
    let answered = b2.sim.link_stats().answered;

    b1.sim.open_door(0).unwrap();
    b2.sim.open_door(0).unwrap();
    wait_open(&h, &[1, 17]).await;
    b1.sim.close_door(0).unwrap();
    b2.sim.close_door(0).unwrap();
    wait_doors(&h, 4).await;
    let mut got = doors(&h.outbox().await.unwrap());
    got.sort_by_key(|d| (d.compartment, !d.open));
    assert_eq!(
        got,
        vec![
            door(1, true, DoorCause::Unknown),
            closed(1, DoorCause::Unknown, None),
            door(17, true, DoorCause::Unknown),
            closed(17, DoorCause::Unknown, None),
        ]
    );
    assert_eq!(
        b1.sim.link_stats().exceptions,
        exceptions + 1,
        "board 1's parcel sensors were asked once, and refused"
    );
    let b2_stats = b2.sim.link_stats();
    assert_eq!(b2_stats.exceptions, 0);
    assert!(b2_stats.answered > answered);

    // the board stays online and its doors keep being reported
    b1.sim.open_door(1).unwrap();
    wait_open(&h, &[2]).await;
    assert!(h.status().boards_offline.is_empty());
    assert!(doors(&h.outbox().await.unwrap()).contains(&door(2, true, DoorCause::Unknown)));
    h.shutdown().await;
}

#[tokio::test]
async fn a_door_opened_again_while_its_parcel_read_is_pending_reports_the_close_first() {
    let (_d, dir) = tempdir();
    let b = board(1).await;
    let st = storage(&dir);
    let h = start(config("CAB-PARCEL-ORDER", &dir, &[&b]), &st).await;
    ready(&h, 1).await;
    b.sim.put_parcel(6).unwrap();
    b.sim.open_door(6).unwrap();
    wait_open(&h, &[7]).await;
    // every answer takes 60 ms (the Modbus timeout is 200 ms), so the parcel read after the
    // close is still on the wire when the door is pulled open again
    b.sim.set_delay(Duration::from_millis(60));
    let before = b.sim.link_stats().answered;
    b.sim.close_door(6).unwrap();
    // answer before+1 may have been read before the close; the next two saw it closed, which
    // is what the debouncer (2 reads) needs: the parcel read follows at once
    eventually(5, "two polls answered after the close", || {
        let n = b.sim.link_stats().answered;
        async move { n >= before + 3 }
    })
    .await;
    b.sim.open_door(6).unwrap();
    wait_doors(&h, 3).await;
    b.sim.set_delay(Duration::ZERO);
    b.sim.take_parcel(6).unwrap();
    b.sim.close_door(6).unwrap();
    wait_doors(&h, 4).await;
    assert_eq!(
        doors(&h.outbox().await.unwrap()),
        vec![
            door(7, true, DoorCause::Unknown),
            closed(7, DoorCause::Unknown, Some(true)),
            door(7, true, DoorCause::Unknown),
            closed(7, DoorCause::Unknown, Some(false)),
        ]
    );
    h.shutdown().await;
}
