//! EPEver Tracer-style input register map of the charge controller (FC04 only).
//!
//! All values are unsigned 16-bit unless noted; "x100" means the register holds the value
//! times 100 (e.g. 1325 = 13.25 V). 32-bit values are split low word first, as EPEver does.
//!
//! | Address | Meaning | Unit |
//! |---|---|---|
//! | 0x3100 | PV array voltage | V x100 |
//! | 0x3101 | PV array current | A x100 |
//! | 0x3102 / 0x3103 | PV array power (low, high) | W x100 |
//! | 0x3104 | Battery voltage | V x100 |
//! | 0x3105 | Battery charging current (controller output) | A x100 |
//! | 0x3106 / 0x3107 | Battery charging power (low, high) | W x100 |
//! | 0x310C | Load voltage (0 while the load is disconnected) | V x100 |
//! | 0x310D | Load current | A x100 |
//! | 0x310E / 0x310F | Load power (low, high) | W x100 |
//! | 0x3110 | Battery temperature | degC x100, signed i16 |
//! | 0x3111 | Controller case temperature | degC x100, signed i16 |
//! | 0x3112 | Heat sink temperature (= case) | degC x100, signed i16 |
//! | 0x311A | Battery state of charge | % (0..=100) |
//! | 0x311B | Remote battery temperature (= battery) | degC x100, signed i16 |
//! | 0x3200 | Battery status: bits 3..0 0 normal, 1 over voltage, 2 under voltage, 3 low-voltage disconnect (load cut), 4 fault (while [`super::ChargerSim::set_fault`] is on; it wins over the voltage codes); bits 7..4 0 normal, 1 over temperature (> 45 degC), 2 low temperature (< 0 degC) | flags |
//! | 0x3201 | Charging equipment status: bit 0 running (charging), bits 3..2 00 not charging, 01 float, 10 boost, 11 equalization | flags |
//! | 0x3202 | Discharging equipment status: bit 0 load output on | flags |
//!
//! Valid blocks are `0x3100..=0x311B` and `0x3200..=0x3202`; registers inside a block that
//! the table does not list (0x3108..=0x310B, 0x3113..=0x3119) read 0, so a client may read a
//! whole block in one request as with the real device. Anything outside answers
//! `IllegalDataAddress`; every function code other than FC04 answers `IllegalFunction`.

use tokio_modbus::{ExceptionCode, Request, Response};

use super::ChargerSnapshot;
use crate::modbus::{check_quantity, offset_in, MAX_READ_REGISTERS};

/// Register addresses (see the module docs for units).
pub mod reg {
    pub const PV_VOLTAGE: u16 = 0x3100;
    pub const PV_CURRENT: u16 = 0x3101;
    pub const PV_POWER_L: u16 = 0x3102;
    pub const PV_POWER_H: u16 = 0x3103;
    pub const BATTERY_VOLTAGE: u16 = 0x3104;
    pub const CHARGING_CURRENT: u16 = 0x3105;
    pub const CHARGING_POWER_L: u16 = 0x3106;
    pub const CHARGING_POWER_H: u16 = 0x3107;
    pub const LOAD_VOLTAGE: u16 = 0x310C;
    pub const LOAD_CURRENT: u16 = 0x310D;
    pub const LOAD_POWER_L: u16 = 0x310E;
    pub const LOAD_POWER_H: u16 = 0x310F;
    pub const BATTERY_TEMP: u16 = 0x3110;
    pub const CASE_TEMP: u16 = 0x3111;
    pub const HEATSINK_TEMP: u16 = 0x3112;
    pub const BATTERY_SOC: u16 = 0x311A;
    pub const REMOTE_BATTERY_TEMP: u16 = 0x311B;
    pub const BATTERY_STATUS: u16 = 0x3200;
    pub const CHARGING_STATUS: u16 = 0x3201;
    pub const DISCHARGING_STATUS: u16 = 0x3202;

    /// Battery status (0x3200) bits 3..0: the controller reports a fault.
    pub const BATT_FAULT: u16 = 4;
    /// Battery status (0x3200) bits 3..0: low-voltage disconnect, load cut.
    pub const BATT_LOW_VOLTAGE_DISCONNECT: u16 = 3;
    /// Battery status (0x3200) bits 3..0: under voltage.
    pub const BATT_UNDER_VOLTAGE: u16 = 2;
    /// Battery status (0x3200) bits 3..0: over voltage.
    pub const BATT_OVER_VOLTAGE: u16 = 1;
    /// Battery status (0x3200) bits 7..4 value 1 (over temperature), shifted.
    pub const BATT_OVER_TEMP: u16 = 1 << 4;
    /// Battery status (0x3200) bits 7..4 value 2 (low temperature), shifted.
    pub const BATT_LOW_TEMP: u16 = 2 << 4;
    /// Charging status (0x3201) bit 0: running.
    pub const CHARGING_RUNNING: u16 = 1;
}

const REALTIME_BLOCK: (u16, usize) = (0x3100, 0x1C);
const STATUS_BLOCK: (u16, usize) = (0x3200, 3);

/// Value x100, rounded, clamped to u16.
fn x100(value: f64) -> u16 {
    (value * 100.0).round().clamp(0.0, f64::from(u16::MAX)) as u16
}

/// Value x100 as (low word, high word) of a u32.
fn x100_u32(value: f64) -> (u16, u16) {
    let v = (value * 100.0).round().clamp(0.0, f64::from(u32::MAX)) as u32;
    ((v & 0xFFFF) as u16, (v >> 16) as u16)
}

/// Temperature x100 as a signed i16 carried in a u16.
fn temp(celsius: f64) -> u16 {
    let v = (celsius * 100.0)
        .round()
        .clamp(f64::from(i16::MIN), f64::from(i16::MAX)) as i16;
    v as u16
}

/// The real-time block 0x3100..=0x311B.
pub fn realtime_block(s: &ChargerSnapshot) -> [u16; REALTIME_BLOCK.1] {
    let mut r = [0u16; REALTIME_BLOCK.1];
    let mut set = |addr: u16, v: u16| r[usize::from(addr - REALTIME_BLOCK.0)] = v;
    set(reg::PV_VOLTAGE, x100(s.pv_voltage_v));
    set(reg::PV_CURRENT, x100(s.pv_current_a));
    let (l, h) = x100_u32(s.pv_power_w);
    set(reg::PV_POWER_L, l);
    set(reg::PV_POWER_H, h);
    set(reg::BATTERY_VOLTAGE, x100(s.battery_voltage_v));
    set(reg::CHARGING_CURRENT, x100(s.charging_current_a));
    let (l, h) = x100_u32(s.charging_power_w);
    set(reg::CHARGING_POWER_L, l);
    set(reg::CHARGING_POWER_H, h);
    set(reg::LOAD_VOLTAGE, x100(s.load_voltage_v));
    set(reg::LOAD_CURRENT, x100(s.load_current_a));
    let (l, h) = x100_u32(s.load_power_w);
    set(reg::LOAD_POWER_L, l);
    set(reg::LOAD_POWER_H, h);
    set(reg::BATTERY_TEMP, temp(s.battery_temp_c));
    set(reg::CASE_TEMP, temp(s.case_temp_c));
    set(reg::HEATSINK_TEMP, temp(s.case_temp_c));
    set(reg::BATTERY_SOC, s.soc_pct.round().clamp(0.0, 100.0) as u16);
    set(reg::REMOTE_BATTERY_TEMP, temp(s.battery_temp_c));
    r
}

/// The status block 0x3200..=0x3202.
pub fn status_block(s: &ChargerSnapshot) -> [u16; STATUS_BLOCK.1] {
    [s.battery_status, s.charging_status, s.discharging_status]
}

/// Execute one request against a snapshot taken for it.
pub(super) fn handle(
    snapshot: impl FnOnce() -> ChargerSnapshot,
    request: &Request<'_>,
) -> Result<Response, ExceptionCode> {
    let Request::ReadInputRegisters(addr, qty) = request else {
        return Err(ExceptionCode::IllegalFunction);
    };
    let qty = usize::from(*qty);
    check_quantity(qty, MAX_READ_REGISTERS)?;
    if let Some(first) = offset_in(*addr, qty, REALTIME_BLOCK.0, REALTIME_BLOCK.1) {
        let block = realtime_block(&snapshot());
        Ok(Response::ReadInputRegisters(
            block[first..first + qty].to_vec(),
        ))
    } else if let Some(first) = offset_in(*addr, qty, STATUS_BLOCK.0, STATUS_BLOCK.1) {
        let block = status_block(&snapshot());
        Ok(Response::ReadInputRegisters(
            block[first..first + qty].to_vec(),
        ))
    } else {
        Err(ExceptionCode::IllegalDataAddress)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaling() {
        assert_eq!(x100(13.254), 1325);
        assert_eq!(x100(-1.0), 0);
        assert_eq!(x100_u32(1000.0), (0x86A0, 0x0001));
        assert_eq!(temp(-5.5) as i16, -550);
        assert_eq!(temp(25.0), 2500);
    }
}
