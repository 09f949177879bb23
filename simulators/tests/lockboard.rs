//! Lock board over real Modbus clients (tokio-modbus), over TCP, over a duplex stream and over
//! the fleet's in-memory link.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{coil, connect, di, ir, Transport};
use locker_sim::{lockboard::reg, LockBoardConfig, LockBoardSim};
use tokio_modbus::{client::Context, prelude::*};

fn board(locks: u16) -> LockBoardSim {
    LockBoardSim::new(LockBoardConfig {
        locks,
        ..LockBoardConfig::default()
    })
    .expect("board")
}

async fn setup(locks: u16, t: Transport) -> (LockBoardSim, Context) {
    let b = board(locks);
    let ctx = connect(&b.modbus_server(), t, 1).await;
    (b, ctx)
}

/// Generate one test per transport for a scenario `async fn(Transport)`.
macro_rules! both_transports {
    ($($name:ident),* $(,)?) => {
        mod tcp {
            $(#[tokio::test] async fn $name() { super::$name(super::Transport::Tcp).await })*
        }
        mod duplex {
            $(#[tokio::test] async fn $name() { super::$name(super::Transport::Duplex).await })*
        }
        mod memory {
            $(#[tokio::test] async fn $name() { super::$name(super::Transport::Memory).await })*
        }
    };
}

both_transports!(
    pulse_fires_once_and_self_resets,
    write_multiple_coils_and_off_writes,
    jammed_lock_counts_but_stays_closed,
    stuck_sensor_overrides_door,
    unresponsive_board_times_out_then_recovers,
    slow_board_executes_but_answers_late,
    illegal_requests_get_exceptions_and_serving_continues,
    identity_registers_and_parcels,
);

async fn pulse_fires_once_and_self_resets(t: Transport) {
    let (b, mut ctx) = setup(16, t).await;
    // A long pulse so the ON phase is observable right after the write.
    ctx.write_single_register(reg::PULSE_MS, 2000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        ctx.read_holding_registers(reg::PULSE_MS, 1)
            .await
            .unwrap()
            .unwrap(),
        vec![2000]
    );
    assert!(!di(&mut ctx, 5).await, "door starts closed");
    ctx.write_single_coil(5, true).await.unwrap().unwrap();
    assert!(coil(&mut ctx, 5).await, "coil is ON during the pulse");
    assert_eq!(ir(&mut ctx, reg::PULSE_COUNTER_BASE + 5, 1).await, vec![1]);
    eventually!("coil self-reset", !coil(&mut ctx, 5).await);
    eventually!("door springs open", di(&mut ctx, 5).await);
    assert_eq!(b.pulse_count(5).unwrap(), 1, "exactly one pulse");
    assert_eq!(b.total_pulses(), 1);
    assert!(b.door_open(5).unwrap());
    // The door stays open until the person closes it.
    b.close_door(5).unwrap();
    assert!(!di(&mut ctx, 5).await);
    assert_eq!(
        ir(&mut ctx, reg::PULSE_COUNTER_BASE, 16)
            .await
            .iter()
            .sum::<u16>(),
        1
    );
}

async fn write_multiple_coils_and_off_writes(t: Transport) {
    let (b, mut ctx) = setup(24, t).await;
    ctx.write_single_coil(1, false).await.unwrap().unwrap();
    ctx.write_multiple_coils(20, &[true, false, true, false])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(b.pulse_count(1).unwrap(), 0, "OFF writes do nothing");
    assert_eq!(b.pulse_count(20).unwrap(), 1);
    assert_eq!(b.pulse_count(21).unwrap(), 0);
    assert_eq!(b.pulse_count(22).unwrap(), 1);
    eventually!("both doors open", {
        let doors = ctx.read_discrete_inputs(20, 4).await.unwrap().unwrap();
        doors == vec![true, false, true, false]
    });
    // Every ON write counts, even on an open door.
    ctx.write_single_coil(20, true).await.unwrap().unwrap();
    assert_eq!(ir(&mut ctx, reg::PULSE_COUNTER_BASE + 20, 1).await, vec![2]);
}

async fn jammed_lock_counts_but_stays_closed(t: Transport) {
    let (b, mut ctx) = setup(16, t).await;
    b.set_jammed(2, true).unwrap();
    // Pulse the jammed lock 2 and a healthy reference lock 3 in one write.
    ctx.write_multiple_coils(2, &[true, true])
        .await
        .unwrap()
        .unwrap();
    eventually!("reference door opens", di(&mut ctx, 3).await);
    eventually!(
        "both coils reset",
        ctx.read_coils(2, 2).await.unwrap().unwrap() == vec![false, false]
    );
    assert!(!di(&mut ctx, 2).await, "jammed door stays closed");
    assert_eq!(
        ir(&mut ctx, reg::PULSE_COUNTER_BASE + 2, 2).await,
        vec![1, 1]
    );
    // Freed, it works again.
    b.set_jammed(2, false).unwrap();
    ctx.write_single_coil(2, true).await.unwrap().unwrap();
    eventually!("freed door opens", di(&mut ctx, 2).await);
}

async fn stuck_sensor_overrides_door(t: Transport) {
    let (b, mut ctx) = setup(16, t).await;
    b.set_stuck_sensor(7, Some(true)).unwrap();
    assert!(di(&mut ctx, 7).await, "stuck open while the door is closed");
    assert!(!b.door_open(7).unwrap());
    b.set_stuck_sensor(7, Some(false)).unwrap();
    b.open_door(7).unwrap();
    assert!(
        !di(&mut ctx, 7).await,
        "stuck closed while the door is open"
    );
    b.set_stuck_sensor(7, None).unwrap();
    assert!(di(&mut ctx, 7).await, "follows the door again");
}

async fn unresponsive_board_times_out_then_recovers(t: Transport) {
    let (b, mut ctx) = setup(16, t).await;
    assert!(!coil(&mut ctx, 0).await);
    b.set_unresponsive(true);
    let res =
        tokio::time::timeout(Duration::from_millis(300), ctx.write_single_coil(0, true)).await;
    assert!(res.is_err(), "no answer while unresponsive: {res:?}");
    let res = tokio::time::timeout(Duration::from_millis(300), ctx.read_coils(0, 1)).await;
    assert!(res.is_err(), "still no answer: {res:?}");
    assert_eq!(
        b.pulse_count(0).unwrap(),
        0,
        "a dead board executes nothing"
    );
    assert!(b.link_stats().dropped >= 2);
    b.set_unresponsive(false);
    // Same connection, it stayed open.
    ctx.write_single_coil(0, true).await.unwrap().unwrap();
    assert_eq!(b.pulse_count(0).unwrap(), 1);
}

async fn slow_board_executes_but_answers_late(t: Transport) {
    let b = board(16);
    let server = b.modbus_server();
    let mut ctx = connect(&server, t, 1).await;
    b.set_delay(Duration::from_secs(2));
    let res = tokio::time::timeout(Duration::from_millis(50), ctx.write_single_coil(4, true)).await;
    assert!(res.is_err(), "the answer is late");
    eventually!(
        "the command was executed anyway",
        b.pulse_count(4).unwrap() == 1
    );
    // A patient client gets its answer (on a fresh connection: the old one has a stale reply
    // in flight).
    b.set_delay(Duration::from_millis(100));
    let mut ctx = connect(&server, t, 1).await;
    assert_eq!(ir(&mut ctx, reg::LOCK_COUNT, 1).await, vec![16]);
}

async fn illegal_requests_get_exceptions_and_serving_continues(t: Transport) {
    let (_b, mut ctx) = setup(16, t).await;
    let ex = |r: Result<Result<_, ExceptionCode>, tokio_modbus::Error>| {
        r.expect("transport ok").expect_err("exception")
    };
    assert_eq!(
        ex(ctx.read_coils(16, 1).await.map(|r| r.map(|_| ()))),
        ExceptionCode::IllegalDataAddress
    );
    assert_eq!(
        ex(ctx.read_coils(10, 7).await.map(|r| r.map(|_| ()))),
        ExceptionCode::IllegalDataAddress
    );
    assert_eq!(
        ex(ctx.write_single_coil(16, true).await),
        ExceptionCode::IllegalDataAddress
    );
    assert_eq!(
        ex(ctx
            .read_discrete_inputs(0, 0x101)
            .await
            .map(|r| r.map(|_| ()))),
        ExceptionCode::IllegalDataAddress,
        "a read across the gap between doors and parcels"
    );
    assert_eq!(
        ex(ctx.read_input_registers(2, 1).await.map(|r| r.map(|_| ()))),
        ExceptionCode::IllegalDataAddress
    );
    assert_eq!(
        ex(ctx
            .read_input_registers(0x110, 1)
            .await
            .map(|r| r.map(|_| ()))),
        ExceptionCode::IllegalDataAddress
    );
    assert_eq!(
        ex(ctx
            .read_holding_registers(1, 1)
            .await
            .map(|r| r.map(|_| ()))),
        ExceptionCode::IllegalDataAddress
    );
    assert_eq!(
        ex(ctx.write_single_register(0, 0).await),
        ExceptionCode::IllegalDataValue
    );
    assert_eq!(
        ex(ctx.read_coils(0, 0).await.map(|r| r.map(|_| ()))),
        ExceptionCode::IllegalDataValue
    );
    assert_eq!(
        ex(ctx.masked_write_register(0, 0xFFFF, 0).await),
        ExceptionCode::IllegalFunction
    );
    assert_eq!(
        ex(ctx
            .call(Request::Custom(0x41, vec![1, 2].into()))
            .await
            .map(|r| r.map(|_| ()))),
        ExceptionCode::IllegalFunction
    );
    // Another unit id on the same link.
    ctx.set_slave(Slave(9));
    assert_eq!(
        ex(ctx.read_coils(0, 1).await.map(|r| r.map(|_| ()))),
        ExceptionCode::GatewayTargetDevice
    );
    ctx.set_slave(Slave(1));
    // Still serving.
    assert_eq!(
        ir(&mut ctx, reg::FIRMWARE_VERSION, 2).await,
        vec![0x0102, 16]
    );
}

async fn identity_registers_and_parcels(t: Transport) {
    let (b, mut ctx) = setup(48, t).await;
    assert_eq!(
        ir(&mut ctx, reg::FIRMWARE_VERSION, 2).await,
        vec![reg::FIRMWARE, 48]
    );
    b.put_parcel(47).unwrap();
    assert!(di(&mut ctx, reg::PARCEL_SENSOR_BASE + 47).await);
    assert_eq!(
        ctx.read_discrete_inputs(reg::PARCEL_SENSOR_BASE, 48)
            .await
            .unwrap()
            .unwrap()
            .iter()
            .filter(|p| **p)
            .count(),
        1
    );
    b.take_parcel(47).unwrap();
    assert!(!di(&mut ctx, reg::PARCEL_SENSOR_BASE + 47).await);
    assert_eq!(ir(&mut ctx, reg::PULSE_COUNTER_BASE, 48).await, vec![0; 48]);
}

#[test]
fn bad_configuration_and_indices_are_errors() {
    assert!(LockBoardSim::new(LockBoardConfig {
        locks: 17,
        ..LockBoardConfig::default()
    })
    .is_err());
    let b = board(16);
    assert!(b.open_door(16).is_err());
    assert!(b.pulse_count(99).is_err());
    assert!(b.set_pulse_duration(Duration::ZERO).is_err());
}

#[tokio::test]
async fn auto_close_for_the_fleet() {
    let b = LockBoardSim::new(LockBoardConfig {
        auto_close: Some(Duration::from_millis(200)),
        ..LockBoardConfig::default()
    })
    .unwrap();
    let mut ctx = connect(&b.modbus_server(), Transport::Duplex, 1).await;
    ctx.write_single_coil(0, true).await.unwrap().unwrap();
    eventually!("door opens", di(&mut ctx, 0).await);
    eventually!("door closes by itself", !di(&mut ctx, 0).await);
}
