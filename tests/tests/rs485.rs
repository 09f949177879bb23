//! Cabinet hardware on RS-485 (issue 16): the real agent, started from its `agent.toml`, drives
//! three lock boards and a charge controller as Modbus RTU units on ONE serial line (a socat
//! pseudo-terminal pair; the simulators serve the other end), with faults: a board that stops
//! answering, corrupted CRCs, the adapter unplugged and plugged back. And a third-party RTU
//! client (pymodbus in serial mode) reads the simulators.
#![allow(clippy::unwrap_used)]

use locker_agent::ExecOutcome;
use locker_schemas::{
    Action, AlarmKind, Command, CommandId, CompartmentId, DoorCause, Outcome, Uplink, UplinkBody,
};
use locker_tests::eventually_async;
use locker_tests::serial::{PtyPair, RtuCabinet};
use locker_tests::{eventually, wait::DEADLINE};

fn unlock(c: u16) -> Command {
    let now = locker_schemas::now_millis();
    Command {
        id: CommandId::generate(),
        issued_at: now,
        expires_at: now + 60_000,
        ttl_ms: 60_000,
        action: Action::UnlockCompartment(CompartmentId(c)),
    }
}

async fn outbox(cab: &RtuCabinet) -> Vec<Uplink> {
    cab.agent.outbox().await.unwrap()
}

/// Door events in the outbox, as (compartment, open).
async fn doors(cab: &RtuCabinet) -> Vec<(u16, bool)> {
    outbox(cab)
        .await
        .iter()
        .filter_map(|u| match &u.body {
            UplinkBody::Door(d) => Some((d.compartment.0, d.open)),
            _ => None,
        })
        .collect()
}

/// Waits until the door of compartment `c` is seen open (status) and its event is stored.
async fn door_opened(cab: &RtuCabinet, c: u16) {
    eventually_async(&format!("door {c} open event"), || async {
        doors(cab).await.contains(&(c, true)).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_line_serves_three_boards_and_a_charger() {
    let cab = RtuCabinet::start("CAB-RTU-1").await;
    // Compartment 21 is lock 4 of the second board (unit 2).
    let cmd = unlock(21);
    let r = match cab.agent.execute(cmd.clone()).await.unwrap() {
        ExecOutcome::Result(r) => r,
        ExecOutcome::Duplicate => panic!("duplicate"),
    };
    assert_eq!(r.outcome, Outcome::Opened, "{r:?}");
    assert_eq!(cab.boards[1].pulse_count(4).unwrap(), 1);
    assert_eq!(
        cab.boards[0].total_pulses() + cab.boards[2].total_pulses(),
        0
    );
    let ob = outbox(&cab).await;
    assert!(
        ob.iter().any(|u| matches!(&u.body, UplinkBody::Door(d)
            if d.compartment == CompartmentId(21) && d.open && d.cause == DoorCause::Command(cmd.id))),
        "{ob:?}"
    );
    // A person opens a door on the third board; the charger's telemetry comes in too.
    cab.boards[2].open_door(0).unwrap();
    door_opened(&cab, 33).await;
    eventually_async("a power report from the charger on the line", || async {
        outbox(&cab)
            .await
            .iter()
            .any(|u| matches!(&u.body, UplinkBody::Power(p) if p.soc_pct == 64))
            .then_some(())
    })
    .await;
    let s = cab.stats.snapshot();
    assert_eq!(
        (s.crc_errors, s.framing_errors, s.port_failures),
        (0, 0, 0),
        "{s:?}"
    );
    assert!(cab.offline().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_board_goes_offline_and_the_others_keep_serving() {
    let cab = RtuCabinet::start("CAB-RTU-2").await;
    cab.boards[1].set_unresponsive(true);
    eventually("board 2 reported offline", || cab.offline() == vec![2]).await;
    eventually_async("the LockBoardOffline alarm", || async {
        outbox(&cab)
            .await
            .iter()
            .any(|u| matches!(&u.body, UplinkBody::Alarm(a) if a.kind == AlarmKind::LockBoardOffline && a.active))
            .then_some(())
    })
    .await;
    // The others keep serving while unit 2 keeps timing out on the same line.
    let timeouts = cab.stats.snapshot().timeouts;
    cab.boards[2].open_door(5).unwrap();
    door_opened(&cab, 38).await;
    let r = match cab.agent.execute(unlock(3)).await.unwrap() {
        ExecOutcome::Result(r) => r,
        ExecOutcome::Duplicate => panic!("duplicate"),
    };
    assert_eq!(r.outcome, Outcome::Opened, "{r:?}");
    door_opened(&cab, 3).await;
    eventually("unit 2 still polled (and timing out)", || {
        cab.stats.snapshot().timeouts > timeouts
    })
    .await;
    // It answers again: back online.
    cab.boards[1].set_unresponsive(false);
    eventually("board 2 back online", || cab.offline().is_empty()).await;
    cab.boards[1].open_door(0).unwrap();
    door_opened(&cab, 17).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_crcs_are_counted_and_the_line_recovers() {
    let cab = RtuCabinet::start("CAB-RTU-3").await;
    cab.boards[0].corrupt_next_replies(2);
    eventually("two CRC errors counted", || {
        cab.stats.snapshot().crc_errors == 2
    })
    .await;
    assert_eq!(cab.boards[0].link_stats().corrupted, 2);
    // Every unit answers again, the corrupted one included.
    cab.boards[0].open_door(7).unwrap();
    cab.boards[1].open_door(7).unwrap();
    door_opened(&cab, 8).await;
    door_opened(&cab, 24).await;
    assert!(
        cab.offline().is_empty(),
        "two bad replies are not three failed polls"
    );
    assert_eq!(cab.stats.snapshot().framing_errors, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_adapter_unplugged_and_plugged_back_reconnects() {
    let mut cab = RtuCabinet::start("CAB-RTU-4").await;
    cab.line.unplug();
    eventually("every board offline while the line is gone", || {
        cab.offline() == vec![1, 2, 3]
    })
    .await;
    assert!(cab.stats.snapshot().port_failures >= 1);
    cab.line.plug();
    eventually("every board back online", || cab.offline().is_empty()).await;
    assert!(cab.stats.snapshot().reopens >= 1);
    cab.boards[1].open_door(2).unwrap();
    door_opened(&cab, 19).await;
    let r = match cab.agent.execute(unlock(40)).await.unwrap() {
        ExecOutcome::Result(r) => r,
        ExecOutcome::Duplicate => panic!("duplicate"),
    };
    assert_eq!(r.outcome, Outcome::Opened, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pymodbus_in_serial_mode_reads_the_simulators() {
    locker_tests::init_tracing();
    let line = PtyPair::start();
    let board = locker_sim::LockBoardSim::new(locker_sim::LockBoardConfig {
        unit_id: 2,
        ..Default::default()
    })
    .unwrap();
    board.open_door(4).unwrap();
    let charger = locker_sim::ChargerSim::new(locker_sim::ChargerConfig {
        unit_id: 10,
        initial_soc_pct: 64.0,
        ..Default::default()
    })
    .unwrap();
    let server = locker_sim::ModbusServer::new(vec![
        std::sync::Arc::new(board.clone()),
        std::sync::Arc::new(charger.clone()),
    ])
    .unwrap();
    let task = server.serve_rtu(line.b(), locker_sim::modbus::rtu::RtuOptions::default());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/rs485_pymodbus.py");
    let port = line.a();
    let out = tokio::time::timeout(
        DEADLINE,
        tokio::process::Command::new("/usr/bin/python3")
            .arg(script)
            .arg(&port)
            .args(["9600", "2", "10"])
            .output(),
    )
    .await
    .expect("pymodbus finished")
    .expect("python3 runs (scripts/install-test-deps.sh installs pymodbus)");
    task.abort();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pymodbus failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).expect("JSON from the script");
    let mut doors = vec![false; 16];
    doors[4] = true;
    assert_eq!(v["doors"], serde_json::json!(doors));
    assert_eq!(v["locks"], 16);
    assert_eq!(v["soc"], 64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_replies_of_a_slow_board_are_skipped_and_the_others_keep_serving() {
    let cab = RtuCabinet::start("CAB-RTU-5").await;
    // Unit 1 answers 80 ms late: after the line's 50 ms request timeout, while the agent
    // already waits for the next unit's reply.
    cab.boards[0].set_delay(std::time::Duration::from_millis(80));
    eventually("board 1 reported offline", || cab.offline() == vec![1]).await;
    eventually("late replies seen and skipped", || {
        cab.stats.snapshot().framing_errors > 0
    })
    .await;
    cab.boards[1].open_door(9).unwrap();
    cab.boards[2].open_door(9).unwrap();
    door_opened(&cab, 26).await;
    door_opened(&cab, 42).await;
    assert_eq!(
        cab.offline(),
        vec![1],
        "no other board is blamed for unit 1's replies"
    );
    cab.boards[0].set_delay(std::time::Duration::ZERO);
    eventually("board 1 back online", || cab.offline().is_empty()).await;
}
