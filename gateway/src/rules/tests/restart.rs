//! Restarts of the rules actor on the same sled store, with a clock that goes on from the
//! same wall time: a pending duration is neither lost nor restarted (the alert comes at the
//! original deadline), and an active alert survives without being raised (or acted on) again.

use locker_schemas::{CommandId, CompartmentId, Door, DoorCause, UplinkBody};

use super::super::{AlertKind, RuleAction};
use super::harness::{cab, Rig, MIN, SEC};
use super::kinds_power::power;

#[tokio::test(start_paused = true)]
async fn offline_pending_across_a_restart_is_raised_at_the_original_deadline() {
    let mut rig = Rig::new().await;
    rig.presence(1, true).await;
    rig.step(MIN).await;
    let off = rig.now();
    rig.presence(1, false).await;
    rig.step(3 * MIN).await;
    rig.restart().await;
    assert_eq!(rig.now(), off + 3 * MIN);
    assert!(rig.active_one(1, AlertKind::Offline).await.is_none());
    rig.step(2 * MIN - SEC).await;
    assert!(
        rig.active_one(1, AlertKind::Offline).await.is_none(),
        "not restarted early"
    );
    rig.step(SEC).await;
    let a = rig
        .active_one(1, AlertKind::Offline)
        .await
        .expect("raised at the original deadline, not lost and not 5 min after the restart");
    assert_eq!((a.started, a.raised_at), (off, off + 5 * MIN));
}

#[tokio::test(start_paused = true)]
async fn battery_low_pending_across_a_restart_keeps_its_start() {
    let mut rig = Rig::new().await;
    rig.send(2, power(12, 0, 5)).await;
    let low = rig.now();
    rig.step(3 * MIN).await;
    rig.send(2, power(11, 0, 5)).await;
    rig.restart().await;
    rig.step(2 * MIN - SEC).await;
    assert!(rig.active_one(2, AlertKind::BatteryLow).await.is_none());
    rig.step(SEC).await;
    let a = rig
        .active_one(2, AlertKind::BatteryLow)
        .await
        .expect("raised");
    assert_eq!((a.started, a.raised_at), (low, low + 5 * MIN));
}

#[tokio::test(start_paused = true)]
async fn an_active_alert_survives_restarts_without_being_raised_or_acted_on_again() {
    let mut rig = Rig::new().await;
    rig.send(3, power(10, 0, 5)).await;
    let low = rig.now();
    rig.step(5 * MIN).await;
    let a = rig
        .active_one(3, AlertKind::BatteryLow)
        .await
        .expect("raised");
    assert_eq!(a.actions.len(), 1);
    for _ in 0..2 {
        rig.restart().await;
        rig.step(MIN).await;
        rig.send(3, power(9, 0, 5)).await;
        rig.step(MIN).await;
        let again = rig
            .active_one(3, AlertKind::BatteryLow)
            .await
            .expect("still active");
        assert_eq!(again.id, a.id);
        assert_eq!(again.raised_at, a.raised_at);
        assert_eq!(again.actions, a.actions, "power_save is not sent again");
        assert_eq!(rig.raised_total(AlertKind::BatteryLow), 1);
        assert_eq!(rig.active_gauge(AlertKind::BatteryLow), 1);
    }
    let raised = rig.published(1, &a.id).await;
    assert_eq!(raised.len(), 1, "published once: {raised:#?}");
    rig.send(3, power(40, 50, 5)).await;
    let up = rig.now();
    let a = rig
        .check_life(3, AlertKind::BatteryLow, "", low, low + 5 * MIN, up)
        .await;
    let acts: Vec<RuleAction> = a.actions.iter().map(|x| x.action).collect();
    assert_eq!(acts, [RuleAction::PowerSave, RuleAction::PowerNormal]);
}

#[tokio::test(start_paused = true)]
async fn an_alert_whose_condition_ended_during_the_restart_clears_once() {
    let mut rig = Rig::new().await;
    let open = |open| {
        UplinkBody::Door(Door {
            compartment: CompartmentId(1),
            open,
            cause: DoorCause::LocalAccess,
            parcel: None,
        })
    };
    rig.send(4, open(true)).await;
    let t = rig.now();
    rig.step(5 * MIN).await;
    assert!(rig.active_one(4, AlertKind::DoorLeftOpen).await.is_some());
    rig.step(MIN).await;
    rig.restart().await;
    rig.step(MIN).await;
    // the close was recorded while the gateway was down and arrives after the restart
    rig.send_at(4, open(false), t + 6 * MIN + 30 * SEC).await;
    let shut = rig.now();
    rig.check_life(
        4,
        AlertKind::DoorLeftOpen,
        "compartment 1",
        t,
        t + 5 * MIN,
        shut,
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_cabinet_online_at_the_restart_that_never_returns_is_raised_offline() {
    let mut rig = Rig::new().await;
    rig.presence(5, true).await;
    // a live event: nothing to replay, nothing of this cabinet waits for time
    rig.send(5, power(80, 10, 5)).await;
    rig.step(10 * MIN).await;
    // the gateway restarts; the cabinet dies meanwhile and never connects again
    rig.restart().await;
    let restarted = rig.now();
    rig.step(5 * MIN - SEC).await;
    assert!(rig.active_one(5, AlertKind::Offline).await.is_none());
    rig.step(SEC).await;
    let a = rig
        .active_one(5, AlertKind::Offline)
        .await
        .expect("offline from the restart");
    assert_eq!((a.started, a.raised_at), (restarted, restarted + 5 * MIN));
}

/// A gateway killed after an action was stored with its alert but before its command was
/// created creates it at the next start; one killed after the command was created but before
/// the action was marked done does not create it again.
#[tokio::test(start_paused = true)]
async fn an_action_interrupted_by_a_crash_is_created_once_at_the_next_start() {
    use crate::commands::{ActionSpec, NewCommand};
    use crate::rules::PendingAction;
    use crate::store::alerts::AlertStore;

    let mut rig = Rig::new().await;
    let lost = PendingAction {
        alert: "ALR-01JC0000000000000000000001".into(),
        cabinet: cab(7),
        action: RuleAction::PowerSave,
        command: CommandId::generate(),
        at: rig.now(),
    };
    let made = PendingAction {
        alert: "ALR-01JC0000000000000000000002".into(),
        cabinet: cab(8),
        action: RuleAction::SyncCredentials,
        command: CommandId::generate(),
        at: rig.now(),
    };
    // the second one's command was created before the crash
    rig.commands
        .create(NewCommand {
            id: Some(made.command),
            cabinet: made.cabinet.clone(),
            action: ActionSpec::SyncCredentials,
            ttl_ms: None,
            created_by: format!("rules:{}", made.alert),
        })
        .await
        .expect("created before the crash");
    rig.store
        .alerts()
        .commit(&[], &[], &[lost.clone(), made.clone()])
        .expect("stored pending");
    let created = |rig: &Rig| {
        rig.metrics
            .commands
            .created
            .with_label_values(&["power_save"])
            .get()
            + rig
                .metrics
                .commands
                .created
                .with_label_values(&["sync_credentials"])
                .get()
    };
    assert_eq!(created(&rig), 1);

    rig.restart().await;
    let rec = rig.command(lost.command).await;
    assert_eq!(rec.cabinet, cab(7));
    assert_eq!(rec.action, ActionSpec::PowerSave { on: true });
    // (the record can be read from the store before the dispatcher has counted it)
    for _ in 0..10_000 {
        if created(&rig) >= 2 {
            break;
        }
        tokio::task::yield_now().await;
    }
    rig.step(SEC).await;
    assert_eq!(
        created(&rig),
        2,
        "the lost one created, the made one not again"
    );
    // both are marked done (off the actor, on a blocking thread): a further restart creates
    // nothing
    let mut left = rig.store.alerts().load().expect("load").actions;
    for _ in 0..100 {
        if left.is_empty() {
            break;
        }
        rig.step(SEC).await;
        left = rig.store.alerts().load().expect("load").actions;
    }
    assert!(left.is_empty(), "{left:?}");
    rig.restart().await;
    rig.step(SEC).await;
    assert_eq!(created(&rig), 2);
}

/// Events ingest stored but the engine never evaluated (the gateway was killed between the
/// two) are applied from the audit log at the next start: a lock board that went offline then
/// is not missed, and what was applied before is not applied again.
#[tokio::test(start_paused = true)]
async fn events_stored_but_not_evaluated_before_a_kill_are_applied_at_the_next_start() {
    use std::sync::Arc;

    use locker_schemas::codec::encode_uplink;
    use locker_schemas::{Alarm, AlarmKind, Uplink};

    use crate::ingest::Commit;
    use crate::store::{AuditEntry, NewEntry, QuarantineLimits};

    let mut rig = Rig::new().await;
    rig.audit = true;
    let up = |seq: u64, body: UplinkBody, ts| Uplink {
        cabinet: cab(4),
        boot: 1,
        seq,
        ts,
        body,
    };
    let store_at = |rig: &Rig, pos: u64, u: &Uplink| {
        rig.store
            .append_events(
                &[NewEntry {
                    cabinet: u.cabinet.clone(),
                    position: pos,
                    entry: AuditEntry::Event(encode_uplink(u).expect("encode")),
                }],
                &[],
                QuarantineLimits {
                    max_per_cabinet: 10,
                    max_total: 10,
                },
                &[],
            )
            .expect("append");
    };
    // position 1 is stored and evaluated: the engine knows the cabinet from there
    let first = up(1, power(80, 40, 5), rig.now());
    store_at(&rig, 1, &first);
    rig.commits
        .send(Arc::new(Commit {
            events: vec![first],
            positions: vec![1],
        }))
        .await
        .expect("commit");
    rig.settle().await;
    // position 2 is stored, and the gateway is killed before the engine hears of it
    let board = up(
        2,
        UplinkBody::Alarm(Alarm {
            kind: AlarmKind::LockBoardOffline,
            active: true,
            compartment: None,
            board: Some(2),
            detail: "no answer".into(),
        }),
        rig.now(),
    );
    store_at(&rig, 2, &board);
    rig.restart().await;
    rig.step(MIN + SEC).await;
    let a = rig
        .active_one(4, AlertKind::BoardOffline)
        .await
        .expect("the stored alarm was applied at start");
    assert_eq!(a.subject, "board 2");
    // applied once: a further restart neither re-raises nor duplicates it
    rig.restart().await;
    rig.step(MIN).await;
    assert_eq!(rig.alerts(4, AlertKind::BoardOffline).await.len(), 1);
    assert_eq!(rig.raised_total(AlertKind::BoardOffline), 1);
}
