//! Physics of the simulated solar charger: a simulated clock, a PV panel, a 12 V battery and
//! a load, integrated lazily whenever the charger is looked at.
//!
//! * Clock: simulated seconds since day 0, 00:00; runs at `speed` simulated seconds per real
//!   second. Setting the time of day jumps forward to the next occurrence of that hour without
//!   integrating energy over the jump (time never runs backwards).
//! * PV: irradiance `sin(pi * (t - 06:00) / 12 h)` between 06:00 and 18:00, zero at night,
//!   times peak watts, times cloud attenuation `1 - c * (0.6 + 0.4 * flicker(t))` where `c` is
//!   the cloudiness in 0..=1 and `flicker` a deterministic slow wobble in 0..=1.
//! * Controller: MPPT at 95 % efficiency. Its output feeds the load first, the rest charges
//!   the battery up to its acceptance (0.2 C, tapering linearly to 0 between 80 % and 100 %
//!   SOC, an absorption-like tail). Stages: not charging (no usable PV), boost (bulk and
//!   absorption), float (SOC >= 99.5 %). Equalization is never used.
//! * Battery: energy in Wh integrates controller output minus load in steps of at most 60
//!   simulated seconds; a gap of more than two simulated days integrates only the last two.
//!   Voltage = open-circuit voltage of the chemistry at this SOC + net current * 0.05 ohm,
//!   capped at the boost (14.4 V lead / 14.2 V LiFePO4) or float (13.8 V / 13.5 V) voltage.
//! * Load: constant watts plus spikes (lock solenoid pulses). A spike's energy is taken from
//!   the battery at once (watts * real duration: a solenoid draws real energy whatever the
//!   clock speed); it shows in the load registers for its real duration. Low-voltage
//!   disconnect: the load is cut below 1 % SOC and reconnected at 20 %.
//! * Temperatures: ambient mean +- 8 degC, warmest at 15:00; the battery warms by 0.05 degC
//!   per net watt (capped at 5), the controller case by 0.03 degC per PV watt.

use std::{f64::consts::PI, time::Duration};

use tokio::time::Instant;

use serde::{Deserialize, Serialize};

/// Seconds in a simulated day.
pub const DAY_S: f64 = 86_400.0;
const STEP_S: f64 = 60.0;
const MAX_CATCH_UP_S: f64 = 2.0 * DAY_S;
const MPPT_EFFICIENCY: f64 = 0.95;
const C_RATE: f64 = 0.2;
const INTERNAL_OHM: f64 = 0.05;
const MIN_PV_W: f64 = 0.5;
const LVD_SOC: f64 = 0.01;
const LVR_SOC: f64 = 0.20;
const FLOAT_SOC: f64 = 0.995;

/// Battery chemistry (12 V nominal).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Chemistry {
    /// Flooded/AGM lead-acid, 6 cells.
    Lead,
    /// LiFePO4, 4 cells.
    Lifepo4,
}

impl Chemistry {
    /// Open-circuit voltage at a state of charge in 0..=1 (piecewise linear).
    pub fn ocv(self, soc: f64) -> f64 {
        let table: &[(f64, f64)] = match self {
            Self::Lead => &[
                (0.0, 11.6),
                (0.2, 11.9),
                (0.5, 12.2),
                (0.8, 12.5),
                (1.0, 12.8),
            ],
            Self::Lifepo4 => &[
                (0.0, 10.0),
                (0.05, 12.0),
                (0.1, 12.8),
                (0.2, 12.9),
                (0.4, 13.0),
                (0.6, 13.1),
                (0.8, 13.2),
                (0.95, 13.3),
                (1.0, 13.6),
            ],
        };
        let soc = soc.clamp(0.0, 1.0);
        for pair in table.windows(2) {
            let ((s0, v0), (s1, v1)) = (pair[0], pair[1]);
            if soc <= s1 {
                return v0 + (v1 - v0) * (soc - s0) / (s1 - s0);
            }
        }
        table.last().map_or(12.0, |&(_, v)| v)
    }

    /// Boost (absorption) voltage limit.
    pub fn boost_v(self) -> f64 {
        match self {
            Self::Lead => 14.4,
            Self::Lifepo4 => 14.2,
        }
    }

    /// Float voltage limit.
    pub fn float_v(self) -> f64 {
        match self {
            Self::Lead => 13.8,
            Self::Lifepo4 => 13.5,
        }
    }
}

/// Charging stage as in EPEver register 0x3201 bits 3..2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChargeStage {
    /// No usable PV power (00).
    NotCharging,
    /// Float (01).
    Float,
    /// Boost / bulk / absorption (10).
    Boost,
    /// Equalization (11); never produced by this model.
    Equalization,
}

impl ChargeStage {
    /// The two-bit code of register 0x3201 bits 3..2.
    pub fn code(self) -> u16 {
        match self {
            Self::NotCharging => 0,
            Self::Float => 1,
            Self::Boost => 2,
            Self::Equalization => 3,
        }
    }
}

/// Simulated clock: `sim = anchor_sim + (real - anchor_real) * speed`.
#[derive(Debug, Clone)]
pub(crate) struct SimClock {
    anchor_real: Instant,
    anchor_sim: f64,
    speed: f64,
}

impl SimClock {
    pub fn new(now: Instant, start_hour: f64, speed: f64) -> Self {
        Self {
            anchor_real: now,
            anchor_sim: start_hour * 3600.0,
            speed,
        }
    }

    /// Simulated seconds since day 0, 00:00 at real instant `now`.
    pub fn sim_at(&self, now: Instant) -> f64 {
        self.anchor_sim
            + now
                .saturating_duration_since(self.anchor_real)
                .as_secs_f64()
                * self.speed
    }

    pub fn speed(&self) -> f64 {
        self.speed
    }
}

/// Static parameters of the model.
#[derive(Debug, Clone)]
pub(crate) struct Params {
    pub capacity_wh: f64,
    pub chemistry: Chemistry,
    pub peak_pv_w: f64,
    pub ambient_c: f64,
}

/// Instantaneous power flows at one moment.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Flows {
    pub irradiance: f64,
    pub pv_v: f64,
    pub pv_w: f64,
    pub out_w: f64,
    pub load_w: f64,
    pub net_w: f64,
    pub batt_v: f64,
    pub stage: ChargeStage,
    pub batt_temp_c: f64,
    pub case_temp_c: f64,
}

#[derive(Debug, Clone)]
struct Spike {
    until: Instant,
    watts: f64,
}

/// Mutable state of the charger model.
#[derive(Debug, Clone)]
pub(crate) struct Model {
    pub params: Params,
    pub clock: SimClock,
    pub energy_wh: f64,
    pub cloud: f64,
    pub base_load_w: f64,
    pub load_on: bool,
    /// The controller reports a fault (battery status 0x3200 bits 3..0 = 4); the physics run on.
    pub fault: bool,
    last_sim: f64,
    spikes: Vec<Spike>,
}

/// Sun elevation proxy in 0..=1 at a time of day in seconds.
pub fn irradiance(tod_s: f64) -> f64 {
    let (rise, set) = (6.0 * 3600.0, 18.0 * 3600.0);
    if tod_s <= rise || tod_s >= set {
        0.0
    } else {
        (PI * (tod_s - rise) / (set - rise)).sin()
    }
}

fn flicker(t: f64) -> f64 {
    (0.5 + 0.25 * (t / 97.0).sin() + 0.25 * (t / 631.0 + 1.3).sin()).clamp(0.0, 1.0)
}

impl Model {
    pub fn new(params: Params, clock: SimClock, soc: f64, base_load_w: f64, cloud: f64) -> Self {
        let energy_wh = params.capacity_wh * soc.clamp(0.0, 1.0);
        let last_sim = clock.anchor_sim;
        Self {
            params,
            clock,
            energy_wh,
            cloud: cloud.clamp(0.0, 1.0),
            base_load_w: base_load_w.max(0.0),
            load_on: soc > LVD_SOC,
            fault: false,
            last_sim,
            spikes: Vec::new(),
        }
    }

    pub fn soc(&self) -> f64 {
        (self.energy_wh / self.params.capacity_wh).clamp(0.0, 1.0)
    }

    /// Power flows at simulated time `t` with `extra_load_w` on top of the base load.
    pub fn flows(&self, t: f64, extra_load_w: f64) -> Flows {
        let p = &self.params;
        let soc = self.soc();
        let tod = t.rem_euclid(DAY_S);
        let irr = irradiance(tod);
        let atten = 1.0 - self.cloud * (0.6 + 0.4 * flicker(t));
        let avail_out = p.peak_pv_w * irr * atten * MPPT_EFFICIENCY;
        let load_w = if self.load_on {
            self.base_load_w + extra_load_w
        } else {
            0.0
        };
        let accept_w = if soc >= 0.8 {
            p.capacity_wh * C_RATE * ((1.0 - soc) / 0.2).max(0.0)
        } else {
            p.capacity_wh * C_RATE
        };
        let charging = avail_out >= MIN_PV_W;
        let out_w = if charging {
            avail_out.min(accept_w + load_w)
        } else {
            0.0
        };
        let stage = match (charging, soc >= FLOAT_SOC) {
            (false, _) => ChargeStage::NotCharging,
            (true, true) => ChargeStage::Float,
            (true, false) => ChargeStage::Boost,
        };
        let net_w = out_w - load_w;
        let ocv = p.chemistry.ocv(soc);
        let mut batt_v = ocv + net_w / ocv * INTERNAL_OHM;
        batt_v = match stage {
            ChargeStage::Float => batt_v.min(p.chemistry.float_v()),
            _ => batt_v.min(p.chemistry.boost_v()),
        };
        let batt_v = batt_v.max(9.0);
        let eff_irr = irr * atten;
        let pv_v = if eff_irr <= 0.0 {
            0.0
        } else if charging {
            // MPPT working point of a 36-cell panel.
            16.0 + 2.0 * eff_irr
        } else {
            // Open circuit: the controller is not drawing.
            (18.0 + 3.6 * eff_irr.sqrt()).min(21.6)
        };
        let ambient = p.ambient_c + 8.0 * (2.0 * PI * (tod / 3600.0 - 9.0) / 24.0).sin();
        Flows {
            irradiance: irr,
            pv_v,
            pv_w: out_w / MPPT_EFFICIENCY,
            out_w,
            load_w,
            net_w,
            batt_v,
            stage,
            batt_temp_c: ambient + (net_w.abs() * 0.05).min(5.0),
            case_temp_c: ambient + out_w / MPPT_EFFICIENCY * 0.03,
        }
    }

    /// Integrate up to real instant `now`.
    pub fn advance(&mut self, now: Instant) {
        let target = self.clock.sim_at(now);
        let mut t = self.last_sim.max(target - MAX_CATCH_UP_S);
        while t < target {
            let dt = (target - t).min(STEP_S);
            let f = self.flows(t + dt / 2.0, 0.0);
            self.energy_wh =
                (self.energy_wh + f.net_w * dt / 3600.0).clamp(0.0, self.params.capacity_wh);
            self.update_lvd();
            t += dt;
        }
        self.last_sim = self.last_sim.max(target);
        self.spikes.retain(|s| s.until > now);
    }

    fn update_lvd(&mut self) {
        let soc = self.soc();
        if self.load_on && soc < LVD_SOC {
            self.load_on = false;
        } else if !self.load_on && soc >= LVR_SOC {
            self.load_on = true;
        }
    }

    /// Extra load currently drawn by spikes.
    pub fn spike_w(&self, now: Instant) -> f64 {
        self.spikes
            .iter()
            .filter(|s| s.until > now)
            .map(|s| s.watts)
            .sum()
    }

    /// Draw `watts` for `duration` of real time (a lock solenoid pulse).
    pub fn add_spike(&mut self, now: Instant, watts: f64, duration: Duration) {
        self.advance(now);
        if !self.load_on || watts <= 0.0 {
            return;
        }
        self.energy_wh = (self.energy_wh - watts * duration.as_secs_f64() / 3600.0).max(0.0);
        self.update_lvd();
        // Bounded: expired spikes are pruned on every advance.
        self.spikes.push(Spike {
            until: now + duration,
            watts,
        });
    }

    /// Jump to the next occurrence of `hour` (0..24) without integrating the jump.
    pub fn set_time_of_day(&mut self, now: Instant, hour: f64) {
        self.advance(now);
        let t = self.clock.sim_at(now);
        let day_start = (t / DAY_S).floor() * DAY_S;
        let mut target = day_start + hour * 3600.0;
        if target < t {
            target += DAY_S;
        }
        self.clock.anchor_real = now;
        self.clock.anchor_sim = target;
        self.last_sim = target;
    }

    /// Change the clock speed from `now` on.
    pub fn set_speed(&mut self, now: Instant, speed: f64) {
        self.advance(now);
        self.clock.anchor_sim = self.clock.sim_at(now);
        self.clock.anchor_real = now;
        self.clock.speed = speed;
    }

    /// Set the state of charge (0..=1) directly.
    pub fn set_soc(&mut self, now: Instant, soc: f64) {
        self.advance(now);
        self.energy_wh = self.params.capacity_wh * soc.clamp(0.0, 1.0);
        self.update_lvd();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(hour: f64, speed: f64, soc: f64, load: f64, now: Instant) -> Model {
        let params = Params {
            capacity_wh: 100.0,
            chemistry: Chemistry::Lead,
            peak_pv_w: 100.0,
            ambient_c: 15.0,
        };
        Model::new(params, SimClock::new(now, hour, speed), soc, load, 0.0)
    }

    #[test]
    fn irradiance_curve() {
        assert_eq!(irradiance(5.0 * 3600.0), 0.0);
        assert!((irradiance(12.0 * 3600.0) - 1.0).abs() < 1e-9);
        assert_eq!(irradiance(19.0 * 3600.0), 0.0);
    }

    #[test]
    fn charges_by_day_discharges_by_night() {
        let t0 = Instant::now();
        let mut day = model(9.0, 60.0, 0.5, 5.0, t0);
        day.advance(t0 + Duration::from_secs(60)); // one simulated hour
        assert!(day.soc() > 0.5, "soc {}", day.soc());
        let mut night = model(21.0, 60.0, 0.5, 5.0, t0);
        night.advance(t0 + Duration::from_secs(60));
        assert!(night.soc() < 0.5, "soc {}", night.soc());
        assert!((night.soc() - (0.5 - 0.05)).abs() < 1e-6);
    }

    #[test]
    fn set_time_jumps_forward_without_energy() {
        let t0 = Instant::now();
        let mut m = model(20.0, 1.0, 0.5, 5.0, t0);
        m.set_time_of_day(t0, 10.0);
        assert!((m.soc() - 0.5).abs() < 1e-9);
        assert!((m.clock.sim_at(t0) - (DAY_S + 10.0 * 3600.0)).abs() < 1e-6);
    }

    #[test]
    fn low_voltage_disconnect_and_reconnect() {
        let t0 = Instant::now();
        let mut m = model(20.0, 3600.0, 0.02, 20.0, t0);
        m.advance(t0 + Duration::from_secs(1));
        assert!(!m.load_on);
        assert_eq!(m.flows(m.clock.sim_at(t0), 0.0).load_w, 0.0);
        m.set_soc(t0, 0.5);
        assert!(m.load_on);
    }

    #[test]
    fn voltage_follows_soc() {
        for chem in [Chemistry::Lead, Chemistry::Lifepo4] {
            let mut prev = 0.0;
            for k in 0..=20 {
                let v = chem.ocv(f64::from(k) / 20.0);
                assert!(v > prev, "{chem:?} not increasing");
                prev = v;
            }
        }
    }

    #[test]
    fn full_battery_floats() {
        let t0 = Instant::now();
        let m = model(12.0, 1.0, 1.0, 5.0, t0);
        let f = m.flows(12.0 * 3600.0, 0.0);
        assert_eq!(f.stage, ChargeStage::Float);
        assert!(
            (f.out_w - 5.0).abs() < 1e-9,
            "controller only feeds the load"
        );
        assert!(f.batt_v <= Chemistry::Lead.float_v());
    }
}
