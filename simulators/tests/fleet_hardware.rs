//! The fleet's in-process hardware link, as each simulated cabinet's agent uses it: the agent's
//! real Modbus client (`locker_agent::hw::Link`, tokio-modbus, MBAP framing) asks its simulated
//! lock board and charge controller, and the answer is there in the same poll: no simulator
//! task per connection and no task wakeup per request (what made the simulator cost a core at
//! 10,000 agents polling at 5 Hz).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use locker_agent::hw::Link;
use locker_sim::fleet::cabinet::hardware_connector;
use locker_sim::{ChargerConfig, ChargerSim, LockBoardConfig, LockBoardSim};

/// Polls `fut` exactly once; the answer must be ready.
fn first_poll<F: Future>(fut: F) -> F::Output {
    let mut cx = Context::from_waker(Waker::noop());
    match pin!(fut).poll(&mut cx) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("the simulated device did not answer within the first poll"),
    }
}

#[tokio::test]
async fn requests_are_answered_in_the_first_poll_without_a_task() {
    let board = LockBoardSim::new(LockBoardConfig::default()).expect("board");
    let charger = ChargerSim::new(ChargerConfig {
        unit_id: 2,
        ..ChargerConfig::default()
    })
    .expect("charger");
    let connector = hardware_connector(&board, &charger);
    let tasks = || {
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    };
    let before = tasks();
    let timeout = Duration::from_secs(1);
    let mut door_link = Link::new("board".into(), 1, timeout, connector.clone());
    let mut power_link = Link::new("charger".into(), 2, timeout, connector);
    board.open_door(3).expect("door");
    for _ in 0..3 {
        let doors = first_poll(door_link.read_discrete(0, 16)).expect("door sensors");
        assert_eq!(doors.len(), 16);
        assert!(doors[3] && !doors[2], "{doors:?}");
        let block = first_poll(power_link.read_input(0x3100, 0x1B)).expect("charger block");
        assert!(block[4] > 1_000, "battery voltage x100: {}", block[4]);
        first_poll(door_link.write_coil(5, true)).expect("pulse");
    }
    assert_eq!(board.pulse_count(5).expect("lock 5"), 3);
    assert_eq!(tasks(), before, "serving the links spawned tasks");
}
