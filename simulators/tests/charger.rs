//! Charge controller over a real tokio-modbus client: register decoding and day/night
//! behaviour on an accelerated clock.
#![allow(clippy::unwrap_used)]

mod common;

use std::{sync::Arc, time::Duration};

use common::{connect, ir, Transport};
use locker_sim::{
    charger::{registers::reg, Chemistry},
    ChargerConfig, ChargerSim, LockBoardConfig, LockBoardSim, ModbusDevice, ModbusServer,
};
use tokio_modbus::{client::Context, prelude::*};

/// Decoded real-time values.
#[derive(Debug)]
struct Reading {
    pv_v: f64,
    pv_a: f64,
    pv_w: f64,
    batt_v: f64,
    charge_a: f64,
    charge_w: f64,
    load_v: f64,
    load_a: f64,
    load_w: f64,
    batt_temp: f64,
    soc: u16,
    batt_status: u16,
    charging_status: u16,
}

fn u32w(l: u16, h: u16) -> f64 {
    f64::from(u32::from(l) | (u32::from(h) << 16)) / 100.0
}

async fn read(ctx: &mut Context) -> Reading {
    let r = ir(ctx, reg::PV_VOLTAGE, 0x1C).await;
    let at = |a: u16| r[usize::from(a - reg::PV_VOLTAGE)];
    let s = ir(ctx, reg::BATTERY_STATUS, 2).await;
    Reading {
        pv_v: f64::from(at(reg::PV_VOLTAGE)) / 100.0,
        pv_a: f64::from(at(reg::PV_CURRENT)) / 100.0,
        pv_w: u32w(at(reg::PV_POWER_L), at(reg::PV_POWER_H)),
        batt_v: f64::from(at(reg::BATTERY_VOLTAGE)) / 100.0,
        charge_a: f64::from(at(reg::CHARGING_CURRENT)) / 100.0,
        charge_w: u32w(at(reg::CHARGING_POWER_L), at(reg::CHARGING_POWER_H)),
        load_v: f64::from(at(reg::LOAD_VOLTAGE)) / 100.0,
        load_a: f64::from(at(reg::LOAD_CURRENT)) / 100.0,
        load_w: u32w(at(reg::LOAD_POWER_L), at(reg::LOAD_POWER_H)),
        batt_temp: f64::from(at(reg::BATTERY_TEMP) as i16) / 100.0,
        soc: at(reg::BATTERY_SOC),
        batt_status: s[0],
        charging_status: s[1],
    }
}

fn charger(cfg: ChargerConfig) -> ChargerSim {
    ChargerSim::new(cfg).expect("charger")
}

#[tokio::test]
async fn registers_decode_to_plausible_values() {
    for chemistry in [Chemistry::Lead, Chemistry::Lifepo4] {
        let c = charger(ChargerConfig {
            chemistry,
            speed: 0.0,
            start_hour: 12.0,
            initial_soc_pct: 60.0,
            load_w: 6.0,
            ..ChargerConfig::default()
        });
        let mut ctx = connect(&c.modbus_server(), Transport::Tcp, 1).await;
        let r = read(&mut ctx).await;
        assert!((15.0..=22.0).contains(&r.pv_v), "{r:?}");
        assert!(r.pv_w > 80.0 && r.pv_w <= 100.0, "noon, clear sky: {r:?}");
        assert!((r.pv_a - r.pv_w / r.pv_v).abs() < 0.05, "{r:?}");
        assert!((12.0..=14.4).contains(&r.batt_v), "{r:?}");
        assert!((r.charge_a * r.batt_v - r.charge_w).abs() < 0.5, "{r:?}");
        assert!(
            (r.load_w - 6.0).abs() < 0.01 && (r.load_v - r.batt_v).abs() < 0.01,
            "{r:?}"
        );
        assert!((r.load_a - 6.0 / r.batt_v).abs() < 0.01, "{r:?}");
        assert!((-10.0..=45.0).contains(&r.batt_temp), "{r:?}");
        assert_eq!(r.soc, 60);
        assert_eq!(r.batt_status, 0, "normal");
        assert_eq!(r.charging_status, 0b1001, "running, boost");
        assert_eq!(
            ir(&mut ctx, reg::DISCHARGING_STATUS, 1).await,
            vec![1],
            "load on"
        );
    }
}

#[tokio::test]
async fn night_and_empty_battery_show_in_status() {
    let c = charger(ChargerConfig {
        speed: 0.0,
        start_hour: 2.0,
        initial_soc_pct: 0.0,
        ambient_c: -10.0,
        ..ChargerConfig::default()
    });
    let mut ctx = connect(&c.modbus_server(), Transport::Duplex, 1).await;
    let r = read(&mut ctx).await;
    assert_eq!((r.pv_v, r.pv_w, r.charge_w), (0.0, 0.0, 0.0), "{r:?}");
    assert_eq!(r.charging_status, 0, "standby, not charging");
    assert_eq!(
        r.batt_status & 0x0F,
        reg::BATT_LOW_VOLTAGE_DISCONNECT,
        "{r:?}"
    );
    assert_eq!(r.batt_status & 0xF0, reg::BATT_LOW_TEMP, "{r:?}");
    assert!(r.batt_temp < 0.0, "signed temperature decodes: {r:?}");
    assert_eq!((r.load_v, r.load_w), (0.0, 0.0), "load cut");
}

#[tokio::test]
async fn fault_flag_shows_in_battery_status_over_modbus() {
    let c = charger(ChargerConfig {
        speed: 0.0,
        ..ChargerConfig::default()
    });
    let mut ctx = connect(&c.modbus_server(), Transport::Tcp, 1).await;
    assert_eq!(read(&mut ctx).await.batt_status, 0, "normal");
    c.set_fault(true);
    let r = read(&mut ctx).await;
    assert_eq!(r.batt_status & 0x0F, reg::BATT_FAULT, "{r:?}");
    assert!(r.batt_v > 12.0, "the battery model runs on: {r:?}");
    c.set_fault(false);
    assert_eq!(read(&mut ctx).await.batt_status, 0, "cleared");
}

#[tokio::test]
async fn soc_rises_by_day_and_falls_by_night() {
    let c = charger(ChargerConfig {
        capacity_wh: 100.0,
        initial_soc_pct: 50.0,
        peak_pv_w: 200.0,
        load_w: 20.0,
        start_hour: 9.0,
        speed: 600.0,
        ..ChargerConfig::default()
    });
    let mut ctx = connect(&c.modbus_server(), Transport::Tcp, 1).await;
    let soc = |r: Vec<u16>| r[0];
    let start = soc(ir(&mut ctx, reg::BATTERY_SOC, 1).await);
    eventually!(
        "SOC rises by day",
        soc(ir(&mut ctx, reg::BATTERY_SOC, 1).await) > start + 2
    );
    c.set_time_of_day(20.0).unwrap();
    let r = read(&mut ctx).await;
    assert_eq!(r.pv_w, 0.0, "night fell");
    let evening = r.soc;
    eventually!(
        "SOC falls by night",
        soc(ir(&mut ctx, reg::BATTERY_SOC, 1).await) + 2 < evening
    );
    // Day comes back: charging again.
    c.set_time_of_day(10.0).unwrap();
    assert_eq!(read(&mut ctx).await.charging_status & 1, 1);
}

#[tokio::test]
async fn illegal_requests_get_exceptions() {
    let c = charger(ChargerConfig::default());
    let mut ctx = connect(&c.modbus_server(), Transport::Tcp, 1).await;
    let e = ctx
        .read_input_registers(0x3300, 1)
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(e, ExceptionCode::IllegalDataAddress);
    let e = ctx
        .read_input_registers(0x311A, 3)
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(e, ExceptionCode::IllegalDataAddress, "runs past the block");
    let e = ctx
        .read_holding_registers(0x9000, 1)
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(e, ExceptionCode::IllegalFunction);
    assert_eq!(
        ir(&mut ctx, 0x3108, 4).await,
        vec![0; 4],
        "holes in a block read 0"
    );
    c.set_unresponsive(true);
    let res = tokio::time::timeout(
        Duration::from_millis(200),
        ctx.read_input_registers(reg::BATTERY_SOC, 1),
    )
    .await;
    assert!(res.is_err());
    c.set_unresponsive(false);
    assert_eq!(ir(&mut ctx, reg::BATTERY_SOC, 1).await, vec![80]);
}

#[tokio::test]
async fn control_api_validates_and_applies() {
    let c = charger(ChargerConfig {
        speed: 0.0,
        ..ChargerConfig::default()
    });
    assert!(c.set_time_of_day(24.0).is_err());
    assert!(c.set_cloudiness(101.0).is_err());
    assert!(c.set_load_w(f64::NAN).is_err());
    assert!(ChargerSim::new(ChargerConfig {
        capacity_wh: 0.0,
        ..ChargerConfig::default()
    })
    .is_err());
    // Starts at 12:00 on day 0; time only moves forward.
    c.set_time_of_day(13.5).unwrap();
    let s = c.snapshot();
    assert!(
        (s.time_of_day_h - 13.5).abs() < 1e-6 && s.sim_day == 0,
        "{s:?}"
    );
    c.set_time_of_day(10.0).unwrap();
    let s = c.snapshot();
    assert!(
        (s.time_of_day_h - 10.0).abs() < 1e-6 && s.sim_day == 1,
        "{s:?}"
    );
    let clear = s.pv_power_w;
    c.set_cloudiness(100.0).unwrap();
    assert!(c.snapshot().pv_power_w < clear * 0.5);
    c.set_load_w(40.0).unwrap();
    assert!((c.snapshot().load_power_w - 40.0).abs() < 1e-9);
}

#[tokio::test]
async fn lock_pulses_draw_from_the_battery_on_a_shared_link() {
    // One link, like an RS-485 bus behind a gateway: board at unit 1, charger at unit 10.
    let c = charger(ChargerConfig {
        unit_id: 10,
        speed: 0.0,
        start_hour: 22.0,
        ..ChargerConfig::default()
    });
    let b = LockBoardSim::new(LockBoardConfig::default()).unwrap();
    b.attach_charger(c.clone());
    let devices: Vec<Arc<dyn ModbusDevice>> = vec![Arc::new(b.clone()), Arc::new(c.clone())];
    let server = ModbusServer::new(devices).unwrap();
    assert!(ModbusServer::new(vec![Arc::new(b.clone()), Arc::new(b.clone())]).is_err());
    let mut ctx = connect(&server, Transport::Duplex, 1).await;
    let before = c.snapshot().battery_wh;
    ctx.write_single_coil(0, true).await.unwrap().unwrap();
    let after = c.snapshot().battery_wh;
    // 24 W for 300 ms = 0.002 Wh, with the clock frozen nothing else moves.
    assert!(
        (before - after - 24.0 * 0.3 / 3600.0).abs() < 1e-9,
        "{before} -> {after}"
    );
    ctx.set_slave(Slave(10));
    assert_eq!(ir(&mut ctx, reg::BATTERY_SOC, 1).await, vec![80]);
}
