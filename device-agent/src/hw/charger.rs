//! The solar charge-controller driver (EPEver Tracer-style input registers, FC04):
//! 0x3100 PV V*100, 0x3101 PV A*100, 0x3102/3 PV W*100 (low, high), 0x3104 battery V*100,
//! 0x3105 charge A*100, 0x3106/7 charge W*100, 0x310C load V*100, 0x310D load A*100,
//! 0x310E/F load W*100 (low, high), 0x3110 battery temperature degC*100 (i16), 0x311A SOC %,
//! 0x3200 battery status (bits 3..0: 0 normal, 1 over voltage, 2 under voltage, 3 low-voltage
//! disconnect, 4 fault), 0x3201 charging status (bits 3..2: 0 none, 1 float, 2 boost,
//! 3 equalize).
//!
//! A read gives a [`Reading`]: the wire [`Power`] telemetry and the battery status register,
//! from which the agent raises ChargerFault when the controller reports a fault.

use std::time::Duration;

use locker_schemas::{ChargeState, Power};
use tokio::time::Instant;

use super::link::{Link, LinkError, ModbusConnector};
use crate::config::{ChargerConfig, TimingConfig};

/// The real-time block read in one request (0x3100..=0x311A; unlisted registers read 0).
pub const REALTIME_BLOCK: (u16, u16) = (0x3100, 0x1B);
/// The status block (0x3200..=0x3201).
pub const STATUS_BLOCK: (u16, u16) = (0x3200, 2);

/// Battery status (0x3200) bits 3..0 when the controller reports a fault.
pub const BATTERY_STATUS_FAULT: u16 = 4;

/// One good read of the charge controller: the telemetry sent as is, and the battery status
/// register (0x3200) that only the agent looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reading {
    pub power: Power,
    /// Register 0x3200 as read.
    pub battery_status: u16,
}

impl Reading {
    /// Whether the controller reports a fault (battery status bits 3..0 == 4).
    pub fn fault(&self) -> bool {
        self.battery_status & 0x0F == BATTERY_STATUS_FAULT
    }
}

/// Decodes the register blocks into a reading.
pub fn decode(pv: &[u16], load: &[u16], soc: u16, status: &[u16]) -> Reading {
    let at = |v: &[u16], i: usize| u32::from(v.get(i).copied().unwrap_or(0));
    let pv_w = (at(pv, 2) | (at(pv, 3) << 16)) / 100;
    let load_w = (at(load, 2) | (at(load, 3) << 16)) / 100;
    let battery_mv = at(pv, 4) * 10;
    let temp_c100 = load.get(4).copied().unwrap_or(0) as i16;
    let charging = match (status.get(1).copied().unwrap_or(0) >> 2) & 0b11 {
        1 => ChargeState::Float,
        2 => ChargeState::Boost,
        3 => ChargeState::Equalize,
        _ => ChargeState::NotCharging,
    };
    Reading {
        power: Power {
            battery_mv,
            soc_pct: soc.min(100) as u8,
            pv_w,
            load_w,
            charging,
            temp_dc: temp_c100 / 10,
        },
        battery_status: status.first().copied().unwrap_or(0),
    }
}

/// The charge controller as the hardware task drives it.
#[derive(Debug)]
pub struct Charger {
    pub cfg: ChargerConfig,
    link: Link,
    failures: u32,
    offline: bool,
    pub(super) next_poll: Instant,
}

impl Charger {
    /// A charger (read at once).
    pub fn new(cfg: ChargerConfig, timing: &TimingConfig, connector: ModbusConnector) -> Self {
        let link = Link::new(
            cfg.address.clone(),
            cfg.unit,
            Duration::from_millis(timing.modbus_timeout_ms),
            connector,
        );
        Self::with_link(cfg, link)
    }

    /// A charger reached through `link` (e.g. a unit on an RS-485 line).
    pub fn with_link(cfg: ChargerConfig, link: Link) -> Self {
        Self {
            cfg,
            link,
            failures: 0,
            offline: false,
            next_poll: Instant::now(),
        }
    }

    async fn read_once(&mut self) -> Result<Reading, LinkError> {
        let rt = self
            .link
            .read_input(REALTIME_BLOCK.0, REALTIME_BLOCK.1)
            .await?;
        let status = self.link.read_input(STATUS_BLOCK.0, STATUS_BLOCK.1).await?;
        let pv = rt.get(0..8).unwrap_or_default();
        let load = rt.get(0x0C..0x11).unwrap_or_default();
        let soc = rt.get(0x1A).copied().unwrap_or(0);
        Ok(decode(pv, load, soc, &status))
    }

    /// Reads the controller once. `Err(Some(detail))` means it just went offline.
    pub async fn poll(&mut self, timing: &TimingConfig) -> Result<Reading, Option<String>> {
        let r = self.read_once().await;
        let now = Instant::now();
        match r {
            Ok(p) => {
                self.failures = 0;
                self.offline = false;
                self.next_poll = now + Duration::from_secs(self.cfg.poll_s);
                Ok(p)
            }
            Err(e) => {
                self.link.reset();
                self.failures = self.failures.saturating_add(1);
                self.next_poll = now + Duration::from_millis(timing.modbus_reconnect_ms);
                if !self.offline && self.failures >= timing.offline_after_failures {
                    self.offline = true;
                    return Err(Some(format!(
                        "charge controller unit {} at {} not answering: {e}",
                        self.cfg.unit,
                        self.link.address()
                    )));
                }
                Err(None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_tracer_registers() {
        // PV 18.50 V, 2.00 A, 37.00 W; battery 12.80 V; load 12.70 V 1.00 A 70000.00 W (high word)
        let pv = [1850, 200, 3700, 0, 1280, 150, 1920, 0];
        let load = [1270, 100, 0x1180, 0x006B, (-512i16) as u16];
        let r = decode(&pv, &load, 87, &[0, 0b1000]);
        assert!(!r.fault());
        let p = r.power;
        assert_eq!(p.pv_w, 37);
        assert_eq!(p.battery_mv, 12_800);
        assert_eq!(p.load_w, (0x006B_1180u32) / 100);
        assert_eq!(p.soc_pct, 87);
        assert_eq!(p.charging, ChargeState::Boost);
        assert_eq!(p.temp_dc, -51);
    }

    #[test]
    fn fault_is_battery_status_low_nibble_4() {
        let rt = [0u16; 8];
        let fault = |status: u16| decode(&rt, &[], 50, &[status, 0]).fault();
        assert!(fault(4));
        assert!(fault(0x14), "fault with over temperature");
        assert!(!fault(0));
        assert!(!fault(3), "low-voltage disconnect is no fault");
        assert!(!fault(0x10), "over temperature alone is no fault");
        assert!(!decode(&rt, &[], 50, &[]).fault(), "no status read");
    }
}
