//! Restarts: a command that was executing when the agent stopped is reported once and never
//! re-executed (a clean stop lets a fired unlock finish first, so its outcome is the door's);
//! acks delete from the outbox; the sequence and boot counter survive restarts.
#![allow(clippy::unwrap_used)]

mod support;

use locker_agent::ExecOutcome;
use locker_schemas::{Ack, DownlinkBody, Outcome, UplinkBody};
use support::*;

#[tokio::test]
async fn started_but_unfinished_command_is_not_re_executed_after_restart() {
    let (_d, dir) = tempdir();
    let b = board(1).await;
    let st = storage(&dir);
    let mut cfg = config("CAB-RST", &dir, &[&b]);
    // long enough that the stop below comes while the command still waits for its door
    cfg.timing.unlock_confirm_ms = 3_000;
    b.sim.set_jammed(2, true).unwrap();
    let h = start(cfg.clone(), &st).await;
    ready(&h, 1).await;
    let cmd = unlock(3);
    // Run the command; once the lock has fired, stop the agent mid-execution: the stop waits
    // for the fired unlock to end (the door never opens: jammed) instead of guessing.
    let h = exec_until_pulse(h, cmd.clone(), &b).await;
    h.shutdown().await;
    assert_eq!(b.sim.pulse_count(2).unwrap(), 1);

    let h = start(cfg, &st).await;
    ready(&h, 1).await;
    let ob = h.outbox().await.unwrap();
    let results: Vec<_> = ob
        .iter()
        .filter_map(|u| match &u.body {
            UplinkBody::Result(r) => Some(r.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(results.len(), 1, "{results:?}");
    assert_eq!(results[0].command, cmd.id);
    assert_eq!(results[0].outcome, Outcome::Jammed, "{results:?}");
    // decided before the stop, so it carries the first boot; the next start is boot 2
    assert_eq!(
        ob.iter()
            .find(|u| matches!(u.body, UplinkBody::Result(_)))
            .unwrap()
            .boot,
        1
    );
    assert_eq!(h.status().boot, 2);
    assert_eq!(
        h.execute(cmd.clone()).await.unwrap(),
        ExecOutcome::Duplicate
    );
    // `Duplicate` is decided from the durable claim before any pulse could be sent
    assert_eq!(b.sim.pulse_count(2).unwrap(), 1, "never fired again");
    h.shutdown().await;

    // A third start reports nothing new: the only second Result is the answer to the
    // duplicate delivery above, the stored outcome repeated (never a new execution).
    let h = start(config("CAB-RST", &dir, &[&b]), &st).await;
    let ob = h.outbox().await.unwrap();
    let again: Vec<_> = ob
        .iter()
        .filter_map(|u| match &u.body {
            UplinkBody::Result(r) => Some(r.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(again.len(), 2, "{again:?}");
    assert_eq!(
        again[0], again[1],
        "the duplicate was answered with the stored outcome"
    );
    h.shutdown().await;
}

/// Starts `cmd` and returns the handle once the lock fired (the command still waits for the door).
async fn exec_until_pulse(
    h: locker_agent::AgentHandle,
    cmd: locker_schemas::Command,
    b: &SimBoard,
) -> locker_agent::AgentHandle {
    let h = std::sync::Arc::new(h);
    let h2 = h.clone();
    let task = tokio::spawn(async move {
        let _ = h2.execute(cmd).await;
    });
    eventually(5, "lock fired", || async { b.sim.total_pulses() == 1 }).await;
    task.abort();
    let _ = task.await;
    std::sync::Arc::try_unwrap(h).ok().expect("sole owner")
}

#[tokio::test]
async fn acks_delete_and_sequence_survives_restarts() {
    let (_d, dir) = tempdir();
    let b = board(1).await;
    let st = storage(&dir);
    let cfg = config("CAB-SEQ", &dir, &[&b]);
    let h = start(cfg.clone(), &st).await;
    ready(&h, 1).await;
    for i in 0..5 {
        let r = h
            .scan(locker_schemas::ScanSource::Barcode, format!("code-{i}"))
            .await
            .unwrap();
        assert_eq!(r.seq, Some(i + 1));
    }
    h.downlink(DownlinkBody::Ack(Ack { seq: 3 })).await.unwrap();
    let ob = h.outbox().await.unwrap();
    assert_eq!(ob.iter().map(|u| u.seq).collect::<Vec<_>>(), vec![4, 5]);
    assert_eq!(h.status().last_acked_seq, 3);
    assert_eq!(h.status().outbox_depth, 2);
    h.shutdown().await;

    let h = start(cfg.clone(), &st).await;
    assert_eq!(h.status().boot, 2);
    assert_eq!(h.status().next_seq, 6);
    let r = h
        .scan(locker_schemas::ScanSource::Barcode, "again")
        .await
        .unwrap();
    assert_eq!(r.seq, Some(6));
    h.downlink(DownlinkBody::Ack(Ack { seq: 6 })).await.unwrap();
    assert!(h.outbox().await.unwrap().is_empty());
    h.shutdown().await;

    // Everything acknowledged: the sequence still continues.
    let h = start(cfg, &st).await;
    assert_eq!(h.status().next_seq, 7);
    assert_eq!(h.status().outbox_depth, 0);
    h.shutdown().await;
}

#[tokio::test]
async fn outbox_nearly_full_alarm_raises_and_clears() {
    let (_d, dir) = tempdir();
    let b = board(1).await;
    let st = storage(&dir);
    let mut cfg = config("CAB-FULL", &dir, &[&b]);
    cfg.outbox.max_events = 16;
    cfg.outbox.nearly_full_percent = 50;
    cfg.outbox.hard_max_events = 20;
    let h = start(cfg, &st).await;
    for i in 0..8 {
        h.scan(locker_schemas::ScanSource::Barcode, format!("{i}"))
            .await
            .unwrap();
    }
    let has_alarm = |h: &locker_agent::AgentHandle| {
        h.status()
            .alarms
            .iter()
            .any(|a| a.kind == locker_schemas::AlarmKind::OutboxNearlyFull)
    };
    eventually(5, "nearly-full alarm", || async { has_alarm(&h) }).await;
    // Past the hard limit critical events are dropped and counted.
    for i in 0..20 {
        h.scan(locker_schemas::ScanSource::Barcode, format!("x{i}"))
            .await
            .unwrap();
    }
    eventually(5, "hard limit reached, drops counted", || async {
        let s = h.status();
        s.outbox_depth == 20 && s.counters.dropped_critical > 0
    })
    .await;
    let s = h.status();
    let last = s.next_seq - 1;
    h.downlink(DownlinkBody::Ack(Ack { seq: last }))
        .await
        .unwrap();
    eventually(5, "alarm cleared after the ack", || async {
        !has_alarm(&h)
    })
    .await;
    let ob = h.outbox().await.unwrap();
    assert!(matches!(&ob[0].body, UplinkBody::Alarm(a) if !a.active));
    h.shutdown().await;
}
