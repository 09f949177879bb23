//! Power and hardware kinds through the actor under paused time: battery_low with its
//! hysteresis and its `power_save` / `power_normal` actions, solar_deficit, charger_fault,
//! on_battery (a fleet on mains), board_offline, outbox_full.

use locker_schemas::{Alarm, AlarmKind, ChargeState, Power, UplinkBody};

use super::super::{AlertKind, RuleAction};
use super::harness::{rules_cfg, Rig, HOUR, MIN, SEC};
use crate::commands::ActionSpec;

pub(super) fn power(soc: u8, pv_w: u32, load_w: u32) -> UplinkBody {
    UplinkBody::Power(Power {
        battery_mv: 12_000 + u32::from(soc) * 10,
        soc_pct: soc,
        pv_w,
        load_w,
        charging: if pv_w > 0 {
            ChargeState::Boost
        } else {
            ChargeState::NotCharging
        },
        temp_dc: 200,
    })
}

pub(super) fn alarm(kind: AlarmKind, active: bool, board: Option<u8>) -> UplinkBody {
    UplinkBody::Alarm(Alarm {
        kind,
        active,
        compartment: None,
        board,
        detail: String::new(),
    })
}

#[tokio::test(start_paused = true)]
async fn battery_low_waits_for_ms_holds_in_the_band_and_acts_both_ways() {
    let mut rig = Rig::new().await;
    rig.send(1, power(20, 0, 5)).await;
    rig.step(MIN).await;
    let low = rig.now();
    rig.send(1, power(14, 0, 5)).await;
    rig.step(2 * MIN).await;
    rig.send(1, power(13, 0, 5)).await;
    rig.step(3 * MIN - SEC).await;
    assert!(
        rig.active_one(1, AlertKind::BatteryLow).await.is_none(),
        "not before 5 min"
    );
    rig.step(SEC).await;
    let a = rig
        .active_one(1, AlertKind::BatteryLow)
        .await
        .expect("raised");
    assert_eq!((a.started, a.raised_at), (low, low + 5 * MIN));
    assert_eq!(a.actions.len(), 1, "{a:#?}");
    assert_eq!(a.actions[0].action, RuleAction::PowerSave);
    let save = rig.command(a.actions[0].command).await;
    assert_eq!(save.action, ActionSpec::PowerSave { on: true });
    // inside the band (15..=30): it stays, and acts no more
    for soc in [16, 25, 30, 14, 30] {
        rig.step(MIN).await;
        rig.send(1, power(soc, 50, 5)).await;
        let a = rig
            .active_one(1, AlertKind::BatteryLow)
            .await
            .expect("held");
        assert_eq!(a.actions.len(), 1);
    }
    rig.step(MIN).await;
    rig.send(1, power(31, 50, 5)).await;
    let up = rig.now();
    let a = rig
        .check_life(1, AlertKind::BatteryLow, "", low, low + 5 * MIN, up)
        .await;
    let acts: Vec<RuleAction> = a.actions.iter().map(|x| x.action).collect();
    assert_eq!(acts, [RuleAction::PowerSave, RuleAction::PowerNormal]);
    let normal = rig.command(a.actions[1].command).await;
    assert_eq!(normal.action, ActionSpec::PowerSave { on: false });
    assert_eq!(normal.cabinet, save.cabinet);
}

#[tokio::test(start_paused = true)]
async fn a_low_reading_that_recovers_into_the_band_before_for_ms_raises_nothing() {
    let mut rig = Rig::new().await;
    rig.send(2, power(10, 0, 5)).await;
    rig.step(4 * MIN).await;
    rig.send(2, power(20, 0, 5)).await;
    rig.step(MIN).await;
    rig.send(2, power(10, 0, 5)).await;
    let again = rig.now();
    rig.step(5 * MIN - SEC).await;
    assert!(
        rig.alerts(2, AlertKind::BatteryLow).await.is_empty(),
        "the pending time restarted"
    );
    rig.step(SEC).await;
    let a = rig
        .active_one(2, AlertKind::BatteryLow)
        .await
        .expect("raised");
    assert_eq!(a.started, again);
}

#[tokio::test(start_paused = true)]
async fn solar_deficit_is_judged_from_min_coverage_and_clears_beyond_clear_beyond_h() {
    let mut rig = Rig::new().await;
    let t0 = rig.now();
    // 20 W out, nothing in, 50 % of 1200 Wh: empty in 30 h (< 48 h), once 6 h are covered
    for i in 0..12 {
        rig.send(3, power(50, 0, 20)).await;
        assert!(
            rig.active_one(3, AlertKind::SolarDeficit).await.is_none(),
            "only {} min covered",
            i * 30
        );
        rig.step(30 * MIN).await;
    }
    rig.send(3, power(50, 100, 20)).await;
    let judged = rig.now();
    assert_eq!(judged, t0 + 6 * HOUR);
    let a = rig
        .active_one(3, AlertKind::SolarDeficit)
        .await
        .expect("raised at 6 h");
    assert_eq!((a.started, a.raised_at), (judged, judged));
    assert_eq!(a.value, Some(30.0));
    // sun: -80 Wh over 6.5 h, empty in 48.75 h: inside the band (48..72 h), it stays
    rig.step(30 * MIN).await;
    rig.send(3, power(50, 100, 20)).await;
    let a = rig
        .active_one(3, AlertKind::SolarDeficit)
        .await
        .expect("held");
    assert_eq!(a.value, Some(30.0), "the value is the raise's while held");
    // -40 Wh over 7 h: empty in 105 h, beyond 72 h
    rig.step(30 * MIN).await;
    rig.send(3, power(50, 100, 20)).await;
    let clear = rig.now();
    rig.check_life(3, AlertKind::SolarDeficit, "", judged, judged, clear)
        .await;
}

#[tokio::test(start_paused = true)]
async fn charger_fault_raises_after_a_minute_and_clears_with_the_alarm() {
    let mut rig = Rig::new().await;
    rig.send(4, alarm(AlarmKind::ChargerFault, true, None))
        .await;
    let t = rig.now();
    rig.step(MIN - SEC).await;
    assert!(rig.active_one(4, AlertKind::ChargerFault).await.is_none());
    // the cabinet repeats its alarm: the start does not move
    rig.send(4, alarm(AlarmKind::ChargerFault, true, None))
        .await;
    rig.step(SEC).await;
    assert!(rig.active_one(4, AlertKind::ChargerFault).await.is_some());
    rig.step(10 * MIN).await;
    rig.send(4, alarm(AlarmKind::ChargerFault, false, None))
        .await;
    let end = rig.now();
    rig.check_life(4, AlertKind::ChargerFault, "", t, t + MIN, end)
        .await;
}

#[tokio::test(start_paused = true)]
async fn on_battery_for_a_mains_fleet() {
    let mut rig = Rig::with(rules_cfg("supply = \"mains\"")).await;
    rig.send(5, power(90, 40, 20)).await;
    rig.step(MIN).await;
    rig.send(5, power(90, 0, 20)).await;
    let lost = rig.now();
    rig.step(MIN).await;
    rig.send(5, power(89, 0, 20)).await;
    rig.step(MIN - SEC).await;
    assert!(
        rig.active_one(5, AlertKind::OnBattery).await.is_none(),
        "not before 2 min"
    );
    rig.step(SEC).await;
    let a = rig
        .active_one(5, AlertKind::OnBattery)
        .await
        .expect("raised");
    assert_eq!((a.started, a.raised_at), (lost, lost + 2 * MIN));
    rig.step(MIN).await;
    rig.send(5, power(88, 40, 20)).await;
    let back = rig.now();
    rig.check_life(5, AlertKind::OnBattery, "", lost, lost + 2 * MIN, back)
        .await;
    assert!(rig.alerts(5, AlertKind::SolarDeficit).await.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_solar_fleet_at_night_is_not_on_battery() {
    let mut rig = Rig::new().await;
    rig.send(6, power(90, 0, 20)).await;
    rig.step(HOUR).await;
    rig.send(6, power(88, 0, 20)).await;
    assert!(rig.alerts(6, AlertKind::OnBattery).await.is_empty());
}

#[tokio::test(start_paused = true)]
async fn board_offline_names_the_board_and_waits_a_minute() {
    let mut rig = Rig::new().await;
    rig.send(7, alarm(AlarmKind::LockBoardOffline, true, Some(2)))
        .await;
    let t = rig.now();
    rig.step(MIN - SEC).await;
    assert!(rig.active_one(7, AlertKind::BoardOffline).await.is_none());
    rig.step(SEC).await;
    let a = rig
        .active_one(7, AlertKind::BoardOffline)
        .await
        .expect("raised");
    assert_eq!(a.subject, "board 2");
    // another board's alarm is another alert; this one's end clears only board 2
    rig.send(7, alarm(AlarmKind::LockBoardOffline, false, Some(2)))
        .await;
    let end = rig.now();
    rig.check_life(7, AlertKind::BoardOffline, "board 2", t, t + MIN, end)
        .await;
}

#[tokio::test(start_paused = true)]
async fn outbox_full_is_raised_at_once_and_clears_with_the_alarm() {
    let mut rig = Rig::new().await;
    rig.step(MIN).await;
    rig.send(8, alarm(AlarmKind::OutboxNearlyFull, true, None))
        .await;
    let t = rig.now();
    assert!(rig.active_one(8, AlertKind::OutboxFull).await.is_some());
    rig.send(8, alarm(AlarmKind::OutboxNearlyFull, true, None))
        .await;
    rig.step(30 * MIN).await;
    rig.send(8, alarm(AlarmKind::OutboxNearlyFull, false, None))
        .await;
    let end = rig.now();
    rig.check_life(8, AlertKind::OutboxFull, "", t, t, end)
        .await;
}
