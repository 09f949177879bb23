//! The agent against the real lock-board and charger simulators over Modbus TCP: door events,
//! unlocks, jams, duplicates, expiry, board outages, door-left-open and power telemetry (the
//! charger's alarms are in `charger_fault.rs`).
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use locker_agent::{ExecOutcome, OffsetClock};
use locker_schemas::{Action, AlarmKind, CompartmentId, DoorCause, Outcome, UplinkBody};
use support::*;

fn result_of(o: ExecOutcome) -> locker_schemas::CommandResult {
    match o {
        ExecOutcome::Result(r) => r,
        ExecOutcome::Duplicate => panic!("unexpected duplicate"),
    }
}

#[tokio::test]
async fn door_open_and_close_reach_the_outbox_in_order_with_forced_open_alarm() {
    let (_d, dir) = tempdir();
    let b = board(1).await;
    let st = storage(&dir);
    let h = start(config("CAB-DOORS", &dir, &[&b]), &st).await;
    ready(&h, 1).await;

    b.sim.open_door(2).unwrap();
    eventually(5, "door 3 open seen", || async {
        h.status().open_doors == vec![CompartmentId(3)]
    })
    .await;
    b.sim.close_door(2).unwrap();
    b.sim.open_door(5).unwrap();
    eventually(5, "door 3 closed, door 6 open", || async {
        h.status().open_doors == vec![CompartmentId(6)]
    })
    .await;

    let ob = h.outbox().await.unwrap();
    assert_contiguous(&ob);
    assert_eq!(ob[0].seq, 1);
    assert_eq!(
        doors(&ob),
        vec![
            door(3, true, DoorCause::Unknown),
            closed(3, DoorCause::Unknown, Some(false)),
            door(6, true, DoorCause::Unknown),
        ]
    );
    // Forced open raised for 3, cleared when it closed, raised for 6.
    let alarms: Vec<_> = ob
        .iter()
        .filter_map(|u| match &u.body {
            UplinkBody::Alarm(a) => Some((a.kind, a.active, a.compartment)),
            _ => None,
        })
        .collect();
    assert_eq!(
        alarms,
        vec![
            (AlarmKind::ForcedOpen, true, Some(CompartmentId(3))),
            (AlarmKind::ForcedOpen, false, Some(CompartmentId(3))),
            (AlarmKind::ForcedOpen, true, Some(CompartmentId(6))),
        ]
    );
    assert_eq!(h.status().alarms.len(), 1);
    h.shutdown().await;
}

#[tokio::test]
async fn unlock_pulses_the_right_coil_once_and_reports_opened() {
    let (_d, dir) = tempdir();
    let b1 = board(1).await;
    let b2 = board(2).await;
    let st = storage(&dir);
    let h = start(config("CAB-UNLOCK", &dir, &[&b1, &b2]), &st).await;
    ready(&h, 2).await;

    // Compartment 20 is lock 3 of the second board.
    let cmd = unlock(20);
    let r = result_of(h.execute(cmd.clone()).await.unwrap());
    assert_eq!(r.outcome, Outcome::Opened, "{r:?}");
    assert_eq!(b2.sim.pulse_count(3).unwrap(), 1);
    assert_eq!(b2.sim.total_pulses(), 1);
    assert_eq!(b1.sim.total_pulses(), 0);

    let ob = h.outbox().await.unwrap();
    assert_contiguous(&ob);
    assert_eq!(doors(&ob), vec![door(20, true, DoorCause::Command(cmd.id))]);
    let last = ob.last().unwrap();
    assert!(
        matches!(&last.body, UplinkBody::Result(r) if r.command == cmd.id && r.outcome == Outcome::Opened)
    );
    assert!(h.status().alarms.is_empty(), "no forced-open alarm");

    // Already open: no pulse.
    let r = result_of(h.execute(unlock(20)).await.unwrap());
    assert_eq!(r.outcome, Outcome::AlreadyOpen);
    assert_eq!(b2.sim.total_pulses(), 1);
    // Unknown compartment: rejected.
    let r = result_of(h.execute(unlock(999)).await.unwrap());
    assert_eq!(r.outcome, Outcome::Rejected);
    assert!(r.detail.contains("unknown compartment"), "{}", r.detail);
    h.shutdown().await;
}

#[tokio::test]
async fn jammed_lock_reports_jammed_and_a_late_open_is_not_forced() {
    let (_d, dir) = tempdir();
    let b = board(1).await;
    let st = storage(&dir);
    let h = start(config("CAB-JAM", &dir, &[&b]), &st).await;
    ready(&h, 1).await;
    b.sim.set_jammed(0, true).unwrap();
    let cmd = unlock(1);
    let r = result_of(h.execute(cmd.clone()).await.unwrap());
    assert_eq!(r.outcome, Outcome::Jammed, "{r:?}");
    assert_eq!(b.sim.pulse_count(0).unwrap(), 1);
    // Someone pulls the door open shortly after: attributed to the command, no alarm.
    b.sim.open_door(0).unwrap();
    eventually(5, "door 1 open", || async {
        h.status().open_doors == vec![CompartmentId(1)]
    })
    .await;
    let ob = h.outbox().await.unwrap();
    assert_eq!(doors(&ob), vec![door(1, true, DoorCause::Command(cmd.id))]);
    assert!(h.status().alarms.is_empty());
    let results = ob
        .iter()
        .filter(|u| matches!(u.body, UplinkBody::Result(_)))
        .count();
    assert_eq!(results, 1, "exactly one result");
    h.shutdown().await;
}

#[tokio::test]
async fn duplicate_and_redelivered_commands_fire_once() {
    let (_d, dir) = tempdir();
    let b = board(1).await;
    let st = storage(&dir);
    let h = start(config("CAB-DUP", &dir, &[&b]), &st).await;
    ready(&h, 1).await;
    let cmd = unlock(4);
    let (a, c) = tokio::join!(h.execute(cmd.clone()), h.execute(cmd.clone()));
    let mut outs = [a.unwrap(), c.unwrap()];
    outs.sort_by_key(|o| matches!(o, ExecOutcome::Duplicate));
    assert!(matches!(&outs[0], ExecOutcome::Result(r) if r.outcome == Outcome::Opened));
    assert_eq!(outs[1], ExecOutcome::Duplicate);
    // Redelivered later, also through the downlink path.
    h.downlink(locker_schemas::DownlinkBody::Command(cmd.clone()))
        .await
        .unwrap();
    assert_eq!(
        h.execute(cmd.clone()).await.unwrap(),
        ExecOutcome::Duplicate
    );
    // Closing and redelivering again still does nothing.
    b.sim.close_door(3).unwrap();
    eventually(5, "door closed", || async {
        h.status().open_doors.is_empty()
    })
    .await;
    assert_eq!(
        h.execute(cmd.clone()).await.unwrap(),
        ExecOutcome::Duplicate
    );
    assert_eq!(b.sim.pulse_count(3).unwrap(), 1);
    assert_eq!(h.status().counters.duplicate_commands, 4);
    h.shutdown().await;

    // And after a restart.
    let h = start(config("CAB-DUP", &dir, &[&b]), &st).await;
    ready(&h, 1).await;
    assert_eq!(h.execute(cmd).await.unwrap(), ExecOutcome::Duplicate);
    assert_eq!(b.sim.pulse_count(3).unwrap(), 1);
    h.shutdown().await;
}

#[tokio::test]
async fn expired_commands_never_fire() {
    let (_d, dir) = tempdir();
    let b = board(1).await;
    let st = storage(&dir);
    let h = start(config("CAB-EXP", &dir, &[&b]), &st).await;
    ready(&h, 1).await;

    // Absolute expiry, sane clock.
    let mut abs = unlock(1);
    abs.expires_at = locker_schemas::now_millis() - 1_000;
    let r = result_of(h.execute(abs.clone()).await.unwrap());
    assert_eq!(r.outcome, Outcome::Expired);
    // Relative TTL used up (expires_at far ahead).
    let mut rel = unlock(2);
    rel.expires_at = u64::MAX;
    rel.ttl_ms = 0;
    let r = result_of(h.execute(rel.clone()).await.unwrap());
    assert_eq!(r.outcome, Outcome::Expired);
    assert!(r.detail.contains("time to live"), "{}", r.detail);
    assert_eq!(b.sim.total_pulses(), 0);
    // Redelivery of an expired command: nothing more.
    assert_eq!(h.execute(abs).await.unwrap(), ExecOutcome::Duplicate);
    assert_eq!(h.status().counters.expired_commands, 2);
    h.shutdown().await;

    // An insane clock (1990) does not judge absolute expiry; the relative TTL still works.
    let off = -(locker_schemas::now_millis() as i64) + 631_152_000_000;
    let h = start_with_clock(
        config("CAB-EXP", &dir, &[&b]),
        &st,
        Arc::new(OffsetClock(off)),
    )
    .await;
    ready(&h, 1).await;
    let mut past = unlock(3);
    past.expires_at = 1;
    let r = result_of(h.execute(past).await.unwrap());
    assert_eq!(
        r.outcome,
        Outcome::Opened,
        "bad clock: absolute expiry not trusted"
    );
    let mut rel = unlock(4);
    rel.ttl_ms = 0;
    let r = result_of(h.execute(rel).await.unwrap());
    assert_eq!(r.outcome, Outcome::Expired);
    assert_eq!(b.sim.total_pulses(), 1);
    h.shutdown().await;
}

#[tokio::test]
async fn unlock_all_pulses_each_closed_door_once() {
    let (_d, dir) = tempdir();
    let b = board(1).await;
    let st = storage(&dir);
    let mut cfg = config("CAB-ALL", &dir, &[&b]);
    cfg.lock_boards[0].locks = 16;
    let h = start(cfg, &st).await;
    ready(&h, 1).await;
    b.sim.open_door(0).unwrap();
    b.sim.set_jammed(5, true).unwrap();
    eventually(5, "door 1 open", || async {
        h.status().open_doors.len() == 1
    })
    .await;
    let r = result_of(h.execute(command(Action::UnlockAll)).await.unwrap());
    assert_eq!(r.outcome, Outcome::Jammed, "{r:?}");
    assert!(r.detail.contains("did not open [6]"), "{}", r.detail);
    assert_eq!(b.sim.total_pulses(), 15, "every closed door once");
    assert_eq!(b.sim.pulse_count(0).unwrap(), 0);
    h.shutdown().await;
}

#[tokio::test]
async fn unresponsive_board_raises_and_clears_its_alarm() {
    let (_d, dir) = tempdir();
    let b1 = board(1).await;
    let b2 = board(2).await;
    let st = storage(&dir);
    let h = start(config("CAB-OFF", &dir, &[&b1, &b2]), &st).await;
    ready(&h, 2).await;
    b2.sim.set_unresponsive(true);
    eventually(10, "board 2 offline", || async {
        h.status().boards_offline == vec![2]
    })
    .await;
    // Commands for its compartments are rejected; the other board still works.
    let r = result_of(h.execute(unlock(17)).await.unwrap());
    assert_eq!(r.outcome, Outcome::Rejected);
    let r = result_of(h.execute(unlock(1)).await.unwrap());
    assert_eq!(r.outcome, Outcome::Opened);
    b2.sim.set_unresponsive(false);
    eventually(10, "board 2 back", || async {
        h.status().boards_offline.is_empty() && h.status().alarms.is_empty()
    })
    .await;
    let ob = h.outbox().await.unwrap();
    let alarms: Vec<_> = ob
        .iter()
        .filter_map(|u| match &u.body {
            UplinkBody::Alarm(a) if a.kind == AlarmKind::LockBoardOffline => {
                Some((a.active, a.board))
            }
            _ => None,
        })
        .collect();
    assert_eq!(alarms, vec![(true, Some(2)), (false, Some(2))]);
    assert_eq!(b2.sim.total_pulses(), 0);
    h.shutdown().await;
}

#[tokio::test]
async fn door_left_open_alarm_raises_and_clears() {
    let (_d, dir) = tempdir();
    let b = board(1).await;
    let st = storage(&dir);
    let mut cfg = config("CAB-LEFT", &dir, &[&b]);
    cfg.timing.door_left_open_s = 1;
    let h = start(cfg, &st).await;
    ready(&h, 1).await;
    let r = result_of(h.execute(unlock(7)).await.unwrap());
    assert_eq!(r.outcome, Outcome::Opened);
    eventually(10, "left-open alarm", || async {
        h.status()
            .alarms
            .iter()
            .any(|a| a.kind == AlarmKind::DoorLeftOpen && a.compartment == Some(CompartmentId(7)))
    })
    .await;
    b.sim.close_door(6).unwrap();
    eventually(10, "alarm cleared", || async {
        h.status().alarms.is_empty()
    })
    .await;
    h.shutdown().await;
}

#[tokio::test]
async fn power_telemetry_reports_at_soc_thresholds() {
    let (_d, dir) = tempdir();
    let b = board(1).await;
    let (ch, addr) = charger().await;
    let st = storage(&dir);
    let h = start(with_charger(config("CAB-PWR", &dir, &[&b]), addr), &st).await;
    let powers = |ob: &[locker_schemas::Uplink]| {
        ob.iter()
            .filter_map(|u| match &u.body {
                UplinkBody::Power(p) => Some(p.clone()),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    eventually(10, "first power report", || async {
        !powers(&h.outbox().await.unwrap()).is_empty()
    })
    .await;
    let first = powers(&h.outbox().await.unwrap())[0].clone();
    assert!(first.battery_mv > 10_000, "{first:?}");
    assert!((75..=85).contains(&first.soc_pct), "{first:?}");
    // Crossing 50 % reports at once even though the interval is an hour.
    ch.set_soc(40.0).unwrap();
    eventually(10, "threshold report", || async {
        powers(&h.outbox().await.unwrap())
            .iter()
            .any(|p| p.soc_pct < 50)
    })
    .await;
    // The charger's own alarms (silence, fault) and PowerFail are in tests/charger_fault.rs.
    let _ = Duration::ZERO;
    h.shutdown().await;
}

#[tokio::test]
async fn in_process_duplex_transport_runs_the_same_driver() {
    let (_d, dir) = tempdir();
    let sim = locker_sim::LockBoardSim::new(locker_sim::LockBoardConfig {
        unit_id: 3,
        pulse: Duration::from_millis(20),
        ..Default::default()
    })
    .unwrap();
    let served = sim.clone();
    let connector = locker_agent::ModbusConnector::custom(move |addr: String| {
        let served = served.clone();
        async move {
            assert_eq!(addr, "board-3");
            let (agent_end, board_end) = tokio::io::duplex(4096);
            served.serve_stream(board_end);
            Ok::<_, std::io::Error>(agent_end)
        }
    });
    let mut cfg = config("CAB-DUPLEX", &dir, &[]);
    cfg.lock_boards = vec![locker_agent::config::LockBoardConfig {
        address: "board-3".into(),
        unit: 3,
        ..Default::default()
    }];
    let st = storage(&dir);
    let mut deps = locker_agent::AgentDeps::new(st.clone());
    deps.modbus = connector;
    let h = locker_agent::Agent::start(cfg, deps).await.unwrap();
    ready(&h, 1).await;
    let r = result_of(h.execute(unlock(2)).await.unwrap());
    assert_eq!(r.outcome, Outcome::Opened, "{r:?}");
    assert_eq!(sim.pulse_count(1).unwrap(), 1);
    h.shutdown().await;
}

#[tokio::test]
async fn reboot_command_stops_the_agent_for_its_supervisor() {
    let (_d, dir) = tempdir();
    let b = board(1).await;
    let st = storage(&dir);
    let mut h = start(config("CAB-BOOT", &dir, &[&b]), &st).await;
    let r = result_of(h.execute(command(Action::Reboot)).await.unwrap());
    assert_eq!(r.outcome, Outcome::Done);
    assert_eq!(h.wait().await, locker_agent::ExitReason::Reboot);
    assert!(!h.status().running);
    // The result is in the outbox for the next start.
    let h = start(config("CAB-BOOT", &dir, &[&b]), &st).await;
    let ob = h.outbox().await.unwrap();
    assert!(ob
        .iter()
        .any(|u| matches!(&u.body, UplinkBody::Result(x) if x.outcome == Outcome::Done)));
    h.shutdown().await;
}
