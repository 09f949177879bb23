//! Network kinds through the actor under paused time: offline (and its `sync_credentials`
//! action after a long outage), flapping, replay_backlog, network_failover, clock_skew.

use locker_schemas::{ChargeState, Hello, Network, NetworkKind, Power, UplinkBody};

use super::super::{AlertKind, RuleAction};
use super::harness::{cab, Rig, HOUR, MIN, SEC, T0, TICK};
use crate::commands::ActionSpec;

fn hello(net: NetworkKind) -> UplinkBody {
    UplinkBody::Hello(Hello {
        firmware: "fw".into(),
        hardware: "hw".into(),
        compartments: Vec::new(),
        network: net,
        creds_version: 0,
    })
}

fn power(soc: u8) -> UplinkBody {
    UplinkBody::Power(Power {
        battery_mv: 12_800,
        soc_pct: soc,
        pv_w: 10,
        load_w: 5,
        charging: ChargeState::Float,
        temp_dc: 200,
    })
}

#[tokio::test(start_paused = true)]
async fn offline_raises_at_after_ms_once_and_clears_on_return() {
    let mut rig = Rig::new().await;
    rig.presence(1, true).await;
    rig.step(MIN).await;
    let off = rig.now();
    assert_eq!(off, T0 + MIN);
    rig.presence(1, false).await;
    rig.step(5 * MIN - SEC).await;
    assert!(
        rig.active_one(1, AlertKind::Offline).await.is_none(),
        "not before 5 min"
    );
    rig.step(SEC).await;
    let a = rig
        .active_one(1, AlertKind::Offline)
        .await
        .expect("raised at 5 min");
    assert_eq!((a.started, a.raised_at), (off, off + 5 * MIN));
    // more ticks while still offline: the same alert, never a second
    rig.step(10 * MIN).await;
    rig.step(TICK).await;
    assert_eq!(rig.raised_total(AlertKind::Offline), 1);
    assert_eq!(rig.active_gauge(AlertKind::Offline), 1);
    rig.presence(1, true).await;
    let back = rig.now();
    let a = rig
        .check_life(1, AlertKind::Offline, "", off, off + 5 * MIN, back)
        .await;
    assert_eq!(a.clear_reason.as_deref(), Some("condition ended"));
    assert!(a.actions.is_empty(), "a short outage syncs nothing: {a:#?}");
}

#[tokio::test(start_paused = true)]
async fn an_outage_of_an_hour_sends_sync_credentials_on_return() {
    let rig = Rig::new().await;
    rig.presence(2, true).await;
    rig.presence(2, false).await;
    rig.step(HOUR).await;
    rig.presence(2, true).await;
    let a = rig.only(2, AlertKind::Offline).await;
    assert!(!a.is_active());
    assert_eq!(a.actions.len(), 1, "{a:#?}");
    assert_eq!(a.actions[0].action, RuleAction::SyncCredentials);
    let cmd = rig.command(a.actions[0].command).await;
    assert_eq!(cmd.cabinet, cab(2));
    assert_eq!(cmd.action, ActionSpec::SyncCredentials);
}

#[tokio::test(start_paused = true)]
async fn flapping_raises_at_the_fifth_drop_and_clears_a_window_after_the_last() {
    let mut rig = Rig::new().await;
    let mut drops = Vec::new();
    for i in 0..5 {
        rig.presence(3, true).await;
        rig.step(30 * SEC).await;
        drops.push(rig.now());
        rig.presence(3, false).await;
        if i < 4 {
            assert!(
                rig.active_one(3, AlertKind::Flapping).await.is_none(),
                "not before the fifth drop ({} so far)",
                i + 1
            );
        }
        rig.step(30 * SEC).await;
    }
    let a = rig
        .active_one(3, AlertKind::Flapping)
        .await
        .expect("raised");
    assert_eq!((a.started, a.raised_at), (drops[0], drops[4]));
    rig.presence(3, true).await;
    // hysteresis: it stays while any drop is inside the window, not only while five are
    rig.step(drops[0] + 15 * MIN - rig.now()).await;
    assert!(
        rig.active_one(3, AlertKind::Flapping).await.is_some(),
        "four drops in the window"
    );
    rig.step(drops[4] + 15 * MIN - SEC - rig.now()).await;
    assert!(
        rig.active_one(3, AlertKind::Flapping).await.is_some(),
        "one drop in the window"
    );
    rig.step(SEC).await;
    rig.check_life(
        3,
        AlertKind::Flapping,
        "",
        drops[0],
        drops[4],
        drops[4] + 15 * MIN,
    )
    .await;
    assert!(
        rig.alerts(3, AlertKind::Offline).await.is_empty(),
        "30 s offline is no outage"
    );
}

#[tokio::test(start_paused = true)]
async fn replay_backlog_raises_on_an_old_replayed_event_and_clears_hold_ms_after_the_replay() {
    let mut rig = Rig::new().await;
    rig.presence(4, true).await;
    rig.presence(4, false).await;
    rig.step(2 * HOUR).await;
    rig.presence(4, true).await;
    let conn = rig.now();
    // replayed, but only 30 min old and one event: under both thresholds
    rig.send_at(4, power(50), conn - 30 * MIN).await;
    assert!(rig.active_one(4, AlertKind::ReplayBacklog).await.is_none());
    // recorded 1 h 50 min before the connection: over age_ms (1 h)
    rig.send_at(4, power(50), T0 + 10 * MIN).await;
    let a = rig
        .active_one(4, AlertKind::ReplayBacklog)
        .await
        .expect("raised");
    assert_eq!((a.started, a.raised_at), (conn, conn));
    assert_eq!(rig.metrics.rules.replayed.get(), 2);
    rig.step(MIN).await;
    // the first live event ends the replay; the alert holds hold_ms (10 min) after it
    rig.send(4, power(50)).await;
    let done = rig.now();
    rig.step(10 * MIN - SEC).await;
    assert!(
        rig.active_one(4, AlertKind::ReplayBacklog).await.is_some(),
        "held"
    );
    rig.step(SEC).await;
    rig.check_life(4, AlertKind::ReplayBacklog, "", conn, conn, done + 10 * MIN)
        .await;
}

#[tokio::test(start_paused = true)]
async fn network_failover_raises_after_for_ms_on_cellular_and_clears_back_home() {
    let mut rig = Rig::new().await;
    rig.send(5, hello(NetworkKind::Lan)).await;
    rig.step(MIN).await;
    let t1 = rig.now();
    rig.send(
        5,
        UplinkBody::Network(Network {
            kind: NetworkKind::Cellular,
            signal_dbm: Some(-90),
        }),
    )
    .await;
    rig.step(10 * MIN - SEC).await;
    assert!(rig
        .active_one(5, AlertKind::NetworkFailover)
        .await
        .is_none());
    rig.step(SEC).await;
    let a = rig
        .active_one(5, AlertKind::NetworkFailover)
        .await
        .expect("raised");
    assert_eq!((a.started, a.raised_at), (t1, t1 + 10 * MIN));
    rig.step(5 * MIN).await;
    rig.send(
        5,
        UplinkBody::Network(Network {
            kind: NetworkKind::Lan,
            signal_dbm: None,
        }),
    )
    .await;
    let back = rig.now();
    rig.check_life(5, AlertKind::NetworkFailover, "", t1, t1 + 10 * MIN, back)
        .await;
}

#[tokio::test(start_paused = true)]
async fn clock_skew_from_a_hello_stamped_before_its_connection() {
    let mut rig = Rig::new().await;
    rig.presence(6, true).await;
    let c0 = rig.now();
    rig.step(SEC).await;
    // 1 min behind: within max_skew_ms (2 min)
    rig.send_at(6, hello(NetworkKind::Lan), c0 - MIN).await;
    assert!(rig.active_one(6, AlertKind::ClockSkew).await.is_none());
    rig.presence(6, false).await;
    rig.step(MIN).await;
    rig.presence(6, true).await;
    let c1 = rig.now();
    rig.step(SEC).await;
    rig.send_at(6, hello(NetworkKind::Lan), c1 - 5 * MIN).await;
    let a = rig
        .active_one(6, AlertKind::ClockSkew)
        .await
        .expect("raised");
    assert_eq!((a.started, a.raised_at), (c1 + SEC, c1 + SEC));
    assert_eq!(a.value, Some(-300.0));
    // the next connection's hello is stamped right: the clock was set
    rig.presence(6, false).await;
    rig.step(MIN).await;
    rig.presence(6, true).await;
    rig.step(SEC).await;
    rig.send(6, hello(NetworkKind::Lan)).await;
    let fixed = rig.now();
    rig.check_life(6, AlertKind::ClockSkew, "", c1 + SEC, c1 + SEC, fixed)
        .await;
}

#[tokio::test(start_paused = true)]
async fn clock_skew_from_an_event_stamped_ahead_clears_when_events_are_stamped_right() {
    let mut rig = Rig::new().await;
    rig.presence(7, true).await;
    rig.step(MIN).await;
    let now = rig.now();
    rig.send_at(7, power(50), now + 90 * SEC).await;
    assert!(
        rig.active_one(7, AlertKind::ClockSkew).await.is_none(),
        "90 s is within 2 min"
    );
    rig.send_at(7, power(50), now + 3 * MIN).await;
    let a = rig
        .active_one(7, AlertKind::ClockSkew)
        .await
        .expect("raised");
    assert_eq!((a.started, a.raised_at), (now, now));
    assert_eq!(a.value, Some(180.0));
    // still ahead, inside the hysteresis band (over half of max_skew_ms): it stays
    rig.step(MIN).await;
    let t = rig.now();
    rig.send_at(7, power(50), t + 90 * SEC).await;
    assert!(
        rig.active_one(7, AlertKind::ClockSkew).await.is_some(),
        "held in the band"
    );
    // the clock was set (NTP): the cabinet's next events carry the right time, and it stays
    // online (no new hello); the alert ends with them, not at the next reconnection
    rig.step(MIN).await;
    rig.send(7, power(50)).await;
    let fixed = rig.now();
    rig.check_life(7, AlertKind::ClockSkew, "", now, now, fixed)
        .await;
}
