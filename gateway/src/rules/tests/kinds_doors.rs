//! Door, queue and one-shot kinds through the actor under paused time: door_left_open,
//! door_forced (and the tamper switch), lock_jammed, parcel_sensor (clears on ack, at the
//! compartment's next sensor reading, or after clear_after_ms), queue_waiting, queue_deep,
//! command_no_outcome (clears on ack or after clear_after_ms).

use locker_schemas::{AlarmKind, CommandId, CompartmentId, Door, DoorCause, Outcome, UplinkBody};

use super::super::{AlertKind, DispatchNote, SensorNote};
use super::harness::{cab, Rig, HOUR, MIN, SEC};
use super::kinds_power::alarm;

fn door(comp: u16, open: bool, cause: DoorCause, parcel: Option<bool>) -> UplinkBody {
    UplinkBody::Door(Door {
        compartment: CompartmentId(comp),
        open,
        cause,
        parcel,
    })
}

fn outcome(rig: &Rig, k: u32, comp: u16, outcome: Outcome) -> CommandId {
    let command = CommandId::generate();
    assert!(rig.rules.dispatch_note(DispatchNote::Outcome {
        cabinet: cab(k),
        command,
        compartment: Some(CompartmentId(comp)),
        outcome,
        at: rig.now(),
    }));
    command
}

fn queue(rig: &Rig, waiting: Vec<(u32, usize, u64)>) {
    assert!(rig.rules.dispatch_note(DispatchNote::Queue {
        at: rig.now(),
        waiting: waiting
            .into_iter()
            .map(|(k, n, oldest)| (cab(k), n, oldest))
            .collect(),
    }));
}

#[tokio::test(start_paused = true)]
async fn door_left_open_after_five_minutes_clears_when_it_closes() {
    let mut rig = Rig::new().await;
    rig.send(1, door(3, true, DoorCause::LocalAccess, None))
        .await;
    let t = rig.now();
    rig.step(5 * MIN - SEC).await;
    assert!(rig.active_one(1, AlertKind::DoorLeftOpen).await.is_none());
    rig.step(SEC).await;
    let a = rig
        .active_one(1, AlertKind::DoorLeftOpen)
        .await
        .expect("raised");
    assert_eq!(a.subject, "compartment 3");
    rig.step(2 * MIN).await;
    rig.send(1, door(3, false, DoorCause::LocalAccess, Some(false)))
        .await;
    let shut = rig.now();
    rig.check_life(
        1,
        AlertKind::DoorLeftOpen,
        "compartment 3",
        t,
        t + 5 * MIN,
        shut,
    )
    .await;
    assert!(
        rig.alerts(1, AlertKind::DoorForced).await.is_empty(),
        "a local access"
    );
}

#[tokio::test(start_paused = true)]
async fn door_forced_at_once_clears_when_it_closes_and_the_tamper_switch_too() {
    let mut rig = Rig::new().await;
    rig.send(
        2,
        door(1, true, DoorCause::Command(CommandId::generate()), None),
    )
    .await;
    rig.send(2, door(1, false, DoorCause::LocalAccess, None))
        .await;
    assert!(
        rig.alerts(2, AlertKind::DoorForced).await.is_empty(),
        "a command"
    );
    rig.step(MIN).await;
    rig.send(2, door(2, true, DoorCause::Unknown, None)).await;
    let t = rig.now();
    let a = rig
        .active_one(2, AlertKind::DoorForced)
        .await
        .expect("at once");
    assert_eq!(a.subject, "compartment 2");
    rig.step(MIN).await;
    rig.send(2, door(2, false, DoorCause::Unknown, None)).await;
    let shut = rig.now();
    rig.check_life(2, AlertKind::DoorForced, "compartment 2", t, t, shut)
        .await;
    rig.send(2, alarm(AlarmKind::Tamper, true, None)).await;
    let a = rig
        .active_one(2, AlertKind::DoorForced)
        .await
        .expect("tamper");
    assert_eq!(a.subject, "tamper");
    rig.send(2, alarm(AlarmKind::Tamper, false, None)).await;
    assert!(rig.active_one(2, AlertKind::DoorForced).await.is_none());
}

#[tokio::test(start_paused = true)]
async fn lock_jammed_at_the_third_jam_clears_when_the_window_holds_none() {
    let mut rig = Rig::new().await;
    let mut jams = Vec::new();
    for i in 0..3 {
        if i > 0 {
            rig.step(MIN).await;
        }
        jams.push(rig.now());
        outcome(&rig, 3, 4, Outcome::Jammed);
        rig.settle().await;
        if i < 2 {
            assert!(rig.active_one(3, AlertKind::LockJammed).await.is_none());
        }
    }
    // another compartment's jam is not this lock's
    outcome(&rig, 3, 5, Outcome::Jammed);
    // an outcome that opened the door does not count
    outcome(&rig, 3, 4, Outcome::Opened);
    rig.settle().await;
    let a = rig
        .active_one(3, AlertKind::LockJammed)
        .await
        .expect("raised");
    assert_eq!(a.subject, "compartment 4");
    assert_eq!((a.started, a.raised_at), (jams[0], jams[2]));
    // hysteresis: two jams left in the window keep it
    rig.step(jams[0] + 24 * HOUR - rig.now()).await;
    assert!(rig.active_one(3, AlertKind::LockJammed).await.is_some());
    rig.step(jams[2] + 24 * HOUR - SEC - rig.now()).await;
    assert!(rig.active_one(3, AlertKind::LockJammed).await.is_some());
    rig.step(SEC).await;
    rig.check_life(
        3,
        AlertKind::LockJammed,
        "compartment 4",
        jams[0],
        jams[2],
        jams[2] + 24 * HOUR,
    )
    .await;
}

fn sensor(rig: &Rig, k: u32, comp: u16) {
    assert!(rig.rules.sensor_note(SensorNote {
        cabinet: cab(k),
        compartment: CompartmentId(comp),
        order: "ORD-1".into(),
        exception: "parcel_still_present".into(),
        at: rig.now(),
    }));
}

#[tokio::test(start_paused = true)]
async fn parcel_sensor_clears_on_ack_with_the_ack_in_the_answer() {
    let mut rig = Rig::new().await;
    sensor(&rig, 4, 1);
    rig.settle().await;
    let t = rig.now();
    let a = rig
        .active_one(4, AlertKind::ParcelSensor)
        .await
        .expect("at once");
    assert_eq!(a.subject, "compartment 1");
    rig.step(10 * MIN).await;
    let acked = rig
        .rules
        .ack(a.id.clone(), "ops".into(), Some("parcel taken out".into()))
        .await
        .expect("ack");
    let at = rig.now();
    // the answer says what happened: acknowledged and, being a one-shot fact, cleared
    assert_eq!(acked.acked_by.as_deref(), Some("ops"));
    assert_eq!(acked.cleared_at, Some(at), "{acked:#?}");
    let a = rig
        .check_life(4, AlertKind::ParcelSensor, "compartment 1", t, t, at)
        .await;
    assert_eq!(a.clear_reason.as_deref(), Some("acknowledged"));
    assert_eq!(a.ack_note.as_deref(), Some("parcel taken out"));
    assert_eq!(rig.metrics.rules.acked.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn parcel_sensor_clears_at_the_compartments_next_reading_or_after_a_day() {
    let mut rig = Rig::new().await;
    sensor(&rig, 5, 2);
    rig.settle().await;
    let t = rig.now();
    rig.step(MIN).await;
    // another compartment's reading settles nothing
    rig.send(5, door(3, false, DoorCause::LocalAccess, Some(true)))
        .await;
    // a door event without a reading neither
    rig.send(5, door(2, false, DoorCause::LocalAccess, None))
        .await;
    assert!(rig.active_one(5, AlertKind::ParcelSensor).await.is_some());
    rig.send(5, door(2, false, DoorCause::LocalAccess, Some(false)))
        .await;
    let read = rig.now();
    let a = rig
        .check_life(5, AlertKind::ParcelSensor, "compartment 2", t, t, read)
        .await;
    assert_eq!(a.clear_reason.as_deref(), Some("settled or expired"));

    // a conflict nobody settles ends after clear_after_ms (a day)
    sensor(&rig, 6, 1);
    rig.settle().await;
    let t = rig.now();
    rig.step(24 * HOUR - SEC).await;
    assert!(rig.active_one(6, AlertKind::ParcelSensor).await.is_some());
    rig.step(SEC).await;
    let a = rig.alerts(6, AlertKind::ParcelSensor).await;
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].cleared_at, Some(t + 24 * HOUR));
    assert_eq!(rig.raised_total(AlertKind::ParcelSensor), 2);
}

#[tokio::test(start_paused = true)]
async fn queue_waiting_from_the_oldest_command_and_clear_when_the_queue_empties() {
    let mut rig = Rig::new().await;
    rig.step(10 * MIN).await;
    let oldest = rig.now() - 10 * MIN;
    queue(&rig, vec![(7, 2, oldest)]);
    rig.settle().await;
    rig.step(50 * MIN - SEC).await;
    // the dispatcher reports again: the oldest is the same command
    queue(&rig, vec![(7, 3, oldest)]);
    rig.settle().await;
    assert!(rig.active_one(7, AlertKind::QueueWaiting).await.is_none());
    rig.step(SEC).await;
    let a = rig
        .active_one(7, AlertKind::QueueWaiting)
        .await
        .expect("raised");
    assert_eq!((a.started, a.raised_at), (oldest, oldest + HOUR));
    rig.step(MIN).await;
    queue(&rig, Vec::new());
    rig.settle().await;
    let gone = rig.now();
    rig.check_life(7, AlertKind::QueueWaiting, "", oldest, oldest + HOUR, gone)
        .await;
    assert!(rig.alerts(7, AlertKind::QueueDeep).await.is_empty());
}

#[tokio::test(start_paused = true)]
async fn queue_deep_over_depth_holds_over_half_and_clears_under() {
    let mut rig = Rig::new().await;
    queue(&rig, vec![(8, 20, rig.now())]);
    rig.settle().await;
    assert!(
        rig.active_one(8, AlertKind::QueueDeep).await.is_none(),
        "20 is not over 20"
    );
    rig.step(MIN).await;
    queue(&rig, vec![(8, 21, rig.now() - MIN)]);
    rig.settle().await;
    let t = rig.now();
    assert!(rig.active_one(8, AlertKind::QueueDeep).await.is_some());
    for depth in [15, 11, 30, 11] {
        rig.step(MIN).await;
        queue(&rig, vec![(8, depth, t - MIN)]);
        rig.settle().await;
        assert!(
            rig.active_one(8, AlertKind::QueueDeep).await.is_some(),
            "held at {depth}"
        );
    }
    rig.step(MIN).await;
    queue(&rig, vec![(8, 10, t - MIN)]);
    rig.settle().await;
    let under = rig.now();
    rig.check_life(8, AlertKind::QueueDeep, "", t, t, under)
        .await;
}

#[tokio::test(start_paused = true)]
async fn command_no_outcome_clears_on_ack_or_after_a_day() {
    let mut rig = Rig::new().await;
    let cmd = outcome(&rig, 9, 1, Outcome::NoAnswer);
    rig.settle().await;
    let t = rig.now();
    let a = rig
        .active_one(9, AlertKind::CommandNoOutcome)
        .await
        .expect("at once");
    assert_eq!(a.subject, format!("command {cmd}"));
    rig.step(HOUR).await;
    rig.rules
        .ack(a.id.clone(), "ops".into(), None)
        .await
        .expect("ack");
    let at = rig.now();
    let a = rig
        .check_life(9, AlertKind::CommandNoOutcome, &a.subject, t, t, at)
        .await;
    assert_eq!(a.clear_reason.as_deref(), Some("acknowledged"));

    let cmd = outcome(&rig, 10, 1, Outcome::NoAnswer);
    rig.settle().await;
    let t = rig.now();
    rig.step(24 * HOUR - SEC).await;
    assert!(rig
        .active_one(10, AlertKind::CommandNoOutcome)
        .await
        .is_some());
    rig.step(SEC).await;
    let v = rig.alerts(10, AlertKind::CommandNoOutcome).await;
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].subject, format!("command {cmd}"));
    assert_eq!(v[0].cleared_at, Some(t + 24 * HOUR));
    assert_eq!(v[0].clear_reason.as_deref(), Some("settled or expired"));
}
