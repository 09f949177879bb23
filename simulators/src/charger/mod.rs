//! Simulated solar charge controller (EPEver Tracer-style Modbus input registers) with a
//! battery, PV panel and load model on an adjustable simulated clock.
//!
//! [`ChargerSim`] is a cheap cloneable handle around the [`model`] behind a short-lived
//! `std::sync::Mutex` (never held across `.await`; same reasoning as the lock board). The model
//! is integrated lazily on every look, so a stopped observer costs nothing. The register map
//! with units is in [`registers`].

pub mod model;
pub mod registers;

pub use model::{ChargeStage, Chemistry};

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use serde::Serialize;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    task::JoinHandle,
    time::Instant,
};

use crate::modbus::{Bind, Link, LinkStats, ModbusDevice, ModbusError, ModbusServer};
use model::{Model, Params, SimClock, DAY_S};

/// Errors of the charger control API (out-of-range settings).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ChargerError {
    /// A setting outside its allowed range.
    #[error("{name} = {value} is outside {range}")]
    OutOfRange {
        /// Setting name.
        name: &'static str,
        /// Rejected value.
        value: f64,
        /// Allowed range, human readable.
        range: &'static str,
    },
}

fn check(
    name: &'static str,
    value: f64,
    ok: bool,
    range: &'static str,
) -> Result<f64, ChargerError> {
    if ok && value.is_finite() {
        Ok(value)
    } else {
        Err(ChargerError::OutOfRange { name, value, range })
    }
}

fn hour(v: f64) -> Result<f64, ChargerError> {
    check("hour", v, (0.0..24.0).contains(&v), "0..24")
}
fn speed(v: f64) -> Result<f64, ChargerError> {
    check("speed", v, (0.0..=1_000_000.0).contains(&v), "0..=1000000")
}
fn percent(name: &'static str, v: f64) -> Result<f64, ChargerError> {
    check(name, v, (0.0..=100.0).contains(&v), "0..=100")
}
fn watts(name: &'static str, v: f64) -> Result<f64, ChargerError> {
    check(name, v, (0.0..=100_000.0).contains(&v), "0..=100000 W")
}

/// Configuration of one simulated charge controller.
#[derive(Debug, Clone, PartialEq)]
pub struct ChargerConfig {
    /// Modbus unit id.
    pub unit_id: u8,
    /// Usable battery capacity in Wh (e.g. 100 Ah x 12 V = 1200 Wh).
    pub capacity_wh: f64,
    /// Battery chemistry.
    pub chemistry: Chemistry,
    /// State of charge at start, percent.
    pub initial_soc_pct: f64,
    /// PV power at noon under a clear sky, W.
    pub peak_pv_w: f64,
    /// Constant load (modem, controller, display), W.
    pub load_w: f64,
    /// Simulated seconds per real second.
    pub speed: f64,
    /// Simulated time of day at start, hours (0..24).
    pub start_hour: f64,
    /// Cloudiness, percent (0 clear .. 100 overcast).
    pub cloudiness_pct: f64,
    /// Mean ambient temperature, degC (daily swing +- 8).
    pub ambient_c: f64,
}

impl Default for ChargerConfig {
    fn default() -> Self {
        Self {
            unit_id: 1,
            capacity_wh: 1200.0,
            chemistry: Chemistry::Lifepo4,
            initial_soc_pct: 80.0,
            peak_pv_w: 100.0,
            load_w: 5.0,
            speed: 1.0,
            start_hour: 12.0,
            cloudiness_pct: 0.0,
            ambient_c: 15.0,
        }
    }
}

/// Everything the charger shows at one instant (served by `GET /state`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChargerSnapshot {
    /// Simulated day number since start (day 0 is the first).
    pub sim_day: u64,
    /// Simulated time of day in hours.
    pub time_of_day_h: f64,
    /// Clock speed, simulated seconds per real second.
    pub speed: f64,
    /// Cloudiness percent.
    pub cloudiness_pct: f64,
    /// Clear-sky irradiance 0..=1.
    pub irradiance: f64,
    /// PV array voltage, V.
    pub pv_voltage_v: f64,
    /// PV array current, A.
    pub pv_current_a: f64,
    /// PV array power, W.
    pub pv_power_w: f64,
    /// Battery voltage, V.
    pub battery_voltage_v: f64,
    /// Controller output current (into battery and load), A.
    pub charging_current_a: f64,
    /// Controller output power, W.
    pub charging_power_w: f64,
    /// Net battery power (positive: charging), W.
    pub battery_net_power_w: f64,
    /// Load voltage, V (0 when disconnected).
    pub load_voltage_v: f64,
    /// Load current, A.
    pub load_current_a: f64,
    /// Load power including spikes, W.
    pub load_power_w: f64,
    /// Whether the load output is on (off after a low-voltage disconnect).
    pub load_connected: bool,
    /// Battery temperature, degC.
    pub battery_temp_c: f64,
    /// Controller case temperature, degC.
    pub case_temp_c: f64,
    /// State of charge, percent (unrounded).
    pub soc_pct: f64,
    /// Stored energy, Wh.
    pub battery_wh: f64,
    /// Capacity, Wh.
    pub capacity_wh: f64,
    /// Battery chemistry.
    pub chemistry: Chemistry,
    /// Charging stage.
    pub stage: ChargeStage,
    /// Whether the controller reports a fault (set through [`ChargerSim::set_fault`]).
    pub fault: bool,
    /// Register 0x3200.
    pub battery_status: u16,
    /// Register 0x3201.
    pub charging_status: u16,
    /// Register 0x3202.
    pub discharging_status: u16,
    /// Link faults and counters.
    pub link: LinkStats,
}

struct Inner {
    unit_id: u8,
    link: Link,
    model: Mutex<Model>,
}

/// Handle to one simulated charge controller. Clone is cheap; all clones share it.
#[derive(Clone)]
pub struct ChargerSim {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ChargerSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChargerSim")
            .field("unit_id", &self.inner.unit_id)
            .finish()
    }
}

impl ChargerSim {
    /// Build a charger; fails on out-of-range settings.
    pub fn new(config: ChargerConfig) -> Result<Self, ChargerError> {
        let capacity = check(
            "capacity_wh",
            config.capacity_wh,
            config.capacity_wh > 0.0 && config.capacity_wh <= 1_000_000.0,
            "0 < capacity <= 1000000 Wh",
        )?;
        let params = Params {
            capacity_wh: capacity,
            chemistry: config.chemistry,
            peak_pv_w: watts("peak_pv_w", config.peak_pv_w)?,
            ambient_c: check(
                "ambient_c",
                config.ambient_c,
                config.ambient_c.abs() <= 60.0,
                "-60..=60",
            )?,
        };
        let clock = SimClock::new(
            Instant::now(),
            hour(config.start_hour)?,
            speed(config.speed)?,
        );
        let model = Model::new(
            params,
            clock,
            percent("initial_soc_pct", config.initial_soc_pct)? / 100.0,
            watts("load_w", config.load_w)?,
            percent("cloudiness_pct", config.cloudiness_pct)? / 100.0,
        );
        Ok(Self {
            inner: Arc::new(Inner {
                unit_id: config.unit_id,
                link: Link::default(),
                model: Mutex::new(model),
            }),
        })
    }

    fn model(&self) -> MutexGuard<'_, Model> {
        self.inner
            .model
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Modbus unit id.
    pub fn unit_id(&self) -> u8 {
        self.inner.unit_id
    }

    /// Jump to the next occurrence of `hour` (0..24) of simulated time.
    pub fn set_time_of_day(&self, h: f64) -> Result<(), ChargerError> {
        let h = hour(h)?;
        self.model().set_time_of_day(Instant::now(), h);
        Ok(())
    }

    /// Simulated seconds per real second from now on (0 freezes the clock).
    pub fn set_speed(&self, x: f64) -> Result<(), ChargerError> {
        let x = speed(x)?;
        self.model().set_speed(Instant::now(), x);
        Ok(())
    }

    /// Cloudiness in percent (0 clear .. 100 overcast).
    pub fn set_cloudiness(&self, pct: f64) -> Result<(), ChargerError> {
        let pct = percent("cloudiness_pct", pct)?;
        let mut m = self.model();
        m.advance(Instant::now());
        m.cloud = pct / 100.0;
        Ok(())
    }

    /// Constant load in watts.
    pub fn set_load_w(&self, w: f64) -> Result<(), ChargerError> {
        let w = watts("load_w", w)?;
        let mut m = self.model();
        m.advance(Instant::now());
        m.base_load_w = w;
        Ok(())
    }

    /// Set the state of charge in percent.
    pub fn set_soc(&self, pct: f64) -> Result<(), ChargerError> {
        let pct = percent("soc_pct", pct)?;
        self.model().set_soc(Instant::now(), pct / 100.0);
        Ok(())
    }

    /// Draw `watts` for `duration` of real time on top of the load (a solenoid pulse).
    pub fn add_load_spike(&self, watts: f64, duration: Duration) {
        if watts.is_finite() {
            self.model().add_spike(Instant::now(), watts, duration);
        }
    }

    /// Report a fault (`true`: battery status 0x3200 bits 3..0 read 4) or stop reporting it.
    /// The controller keeps answering and the battery model keeps running.
    pub fn set_fault(&self, on: bool) {
        let mut m = self.model();
        m.advance(Instant::now());
        m.fault = on;
    }

    /// Stop (`true`) or resume answering Modbus requests. Connections stay open.
    pub fn set_unresponsive(&self, on: bool) {
        self.inner.link.set_unresponsive(on);
    }

    /// Send the next `n` Modbus RTU answers with a corrupted CRC (TCP answers are unaffected).
    pub fn corrupt_next_replies(&self, n: u64) {
        self.inner.link.corrupt_next(n);
    }

    /// Delay every Modbus answer by `delay`.
    pub fn set_delay(&self, delay: Duration) {
        self.inner.link.set_delay(delay);
    }

    /// Everything the charger shows now.
    pub fn snapshot(&self) -> ChargerSnapshot {
        let now = Instant::now();
        let mut m = self.model();
        m.advance(now);
        let t = m.clock.sim_at(now);
        let f = m.flows(t, m.spike_w(now));
        let soc = m.soc();
        let load_v = if m.load_on { f.batt_v } else { 0.0 };
        let mut battery_status = if m.fault {
            registers::reg::BATT_FAULT
        } else if !m.load_on {
            registers::reg::BATT_LOW_VOLTAGE_DISCONNECT
        } else if soc < 0.1 {
            registers::reg::BATT_UNDER_VOLTAGE
        } else if f.batt_v > 15.5 {
            registers::reg::BATT_OVER_VOLTAGE
        } else {
            0
        };
        if f.batt_temp_c > 45.0 {
            battery_status |= registers::reg::BATT_OVER_TEMP;
        } else if f.batt_temp_c < 0.0 {
            battery_status |= registers::reg::BATT_LOW_TEMP;
        }
        let running = f.stage != ChargeStage::NotCharging;
        ChargerSnapshot {
            sim_day: (t / DAY_S).floor() as u64,
            time_of_day_h: t.rem_euclid(DAY_S) / 3600.0,
            speed: m.clock.speed(),
            cloudiness_pct: m.cloud * 100.0,
            irradiance: f.irradiance,
            pv_voltage_v: f.pv_v,
            pv_current_a: if f.pv_v > 0.5 { f.pv_w / f.pv_v } else { 0.0 },
            pv_power_w: f.pv_w,
            battery_voltage_v: f.batt_v,
            charging_current_a: f.out_w / f.batt_v,
            charging_power_w: f.out_w,
            battery_net_power_w: f.net_w,
            load_voltage_v: load_v,
            load_current_a: if m.load_on { f.load_w / f.batt_v } else { 0.0 },
            load_power_w: f.load_w,
            load_connected: m.load_on,
            battery_temp_c: f.batt_temp_c,
            case_temp_c: f.case_temp_c,
            soc_pct: soc * 100.0,
            battery_wh: m.energy_wh,
            capacity_wh: m.params.capacity_wh,
            chemistry: m.params.chemistry,
            stage: f.stage,
            fault: m.fault,
            battery_status,
            charging_status: (f.stage.code() << 2) | u16::from(running),
            discharging_status: u16::from(m.load_on),
            link: self.inner.link.stats(),
        }
    }

    /// A Modbus server for this charger alone.
    pub fn modbus_server(&self) -> ModbusServer {
        ModbusServer::single(self.clone())
    }

    /// Serve this charger over Modbus TCP; see [`ModbusServer::serve_tcp`].
    pub async fn serve_tcp(
        &self,
        bind: impl Into<Bind>,
    ) -> Result<(SocketAddr, JoinHandle<()>), ModbusError> {
        self.modbus_server().serve_tcp(bind).await
    }

    /// Serve this charger on one connected transport; see [`ModbusServer::serve_stream`].
    pub fn serve_stream<T>(&self, transport: T) -> JoinHandle<()>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        self.modbus_server().serve_stream(transport)
    }
}

impl ModbusDevice for ChargerSim {
    fn unit_id(&self) -> u8 {
        self.inner.unit_id
    }

    fn link(&self) -> &Link {
        &self.inner.link
    }

    fn handle(
        &self,
        request: &tokio_modbus::Request<'_>,
    ) -> Result<tokio_modbus::Response, tokio_modbus::ExceptionCode> {
        registers::handle(|| self.snapshot(), request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_flag_reads_as_battery_status_4_and_clears() {
        let c = ChargerSim::new(ChargerConfig {
            speed: 0.0,
            start_hour: 3.0,
            ambient_c: -10.0,
            ..ChargerConfig::default()
        })
        .expect("charger");
        let s = c.snapshot();
        assert_eq!(s.battery_status & 0x0F, 0, "normal");
        assert!(!s.fault);
        c.set_fault(true);
        let s = c.snapshot();
        assert!(s.fault);
        assert_eq!(s.battery_status & 0x0F, registers::reg::BATT_FAULT);
        assert_eq!(
            s.battery_status & 0xF0,
            registers::reg::BATT_LOW_TEMP,
            "temperature bits still shown"
        );
        assert_eq!(registers::status_block(&s)[0], s.battery_status);
        c.set_fault(false);
        assert_eq!(c.snapshot().battery_status & 0x0F, 0);
    }
}
