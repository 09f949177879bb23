//! What the rules engine remembers of one cabinet ([`CabState`]), stored with every change:
//! presence and disconnect times, the replay after a return, the network, power samples and
//! the energy balance, doors, jams, the cabinet's own alarms, its offline queue, one-shot facts,
//! and the conditions (pending or active) with their start times. Every collection is bounded
//! (by the rule's count, by the cabinet's compartments, or by `max_conditions_per_cabinet`).

use std::collections::{BTreeMap, VecDeque};

use locker_schemas::{ChargeState, Millis, NetworkKind, SiteId};
use serde::{Deserialize, Serialize};

use super::model::AlertKind;

/// One condition of a cabinet: pending (waiting for its `for_ms`), or active (an alert).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cond {
    pub kind: AlertKind,
    pub subject: String,
    /// When the condition began holding (kept across a restart).
    pub pending_since: Option<Millis>,
    /// When it stopped holding while its alert is active (kinds with a clear delay).
    pub clear_since: Option<Millis>,
    /// The active alert's id.
    pub alert: Option<String>,
}

/// The key of a condition in [`CabState::conds`].
pub fn cond_key(kind: AlertKind, subject: &str) -> String {
    format!("{}|{subject}", kind.as_str())
}

/// The last power sample.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PowerSeen {
    pub ts: Millis,
    pub soc_pct: u8,
    pub battery_mv: u32,
    pub pv_w: u32,
    pub load_w: u32,
    pub charging: u8,
}

impl PowerSeen {
    pub fn charging(&self) -> bool {
        self.charging != ChargeState::NotCharging as u8
    }
}

/// Energy in and out per slot of a sliding window (`SLOTS` slots over the rule's window).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EnergyWindow {
    /// Slot index (time / slot length) -> (Wh in, Wh out, ms covered).
    pub slots: BTreeMap<u64, (f64, f64, u64)>,
}

/// Slots in the energy window (24 slots of an hour for the default 24 h).
pub const SLOTS: u64 = 24;

impl EnergyWindow {
    /// Adds the energy between two samples (the earlier sample's power held until the later
    /// one; a gap longer than two slots is not counted: the telemetry was missing).
    pub fn add(&mut self, window_ms: u64, from: &PowerSeen, to_ts: Millis) {
        let slot_ms = (window_ms / SLOTS).max(1);
        if to_ts <= from.ts || to_ts - from.ts > 2 * slot_ms {
            return;
        }
        let mut t = from.ts;
        while t < to_ts {
            let idx = t / slot_ms;
            let end = ((idx + 1) * slot_ms).min(to_ts);
            let dt = end - t;
            let h = dt as f64 / 3_600_000.0;
            let e = self.slots.entry(idx).or_insert((0.0, 0.0, 0));
            e.0 += f64::from(from.pv_w) * h;
            e.1 += f64::from(from.load_w) * h;
            e.2 += dt;
            t = end;
        }
        let oldest = (to_ts / slot_ms).saturating_sub(SLOTS);
        self.slots.retain(|k, _| *k > oldest);
    }

    /// (Wh in, Wh out, ms covered) over the window ending at `now`.
    pub fn balance(&self, window_ms: u64, now: Millis) -> (f64, f64, u64) {
        let slot_ms = (window_ms / SLOTS).max(1);
        let oldest = (now / slot_ms).saturating_sub(SLOTS);
        self.slots
            .range(oldest + 1..)
            .fold((0.0, 0.0, 0), |a, (_, s)| (a.0 + s.0, a.1 + s.1, a.2 + s.2))
    }
}

/// A cabinet's replay after it came back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replay {
    /// When the edge saw the connection.
    pub connected_at: Millis,
    /// Events recorded before the connection that arrived after it.
    pub events: u64,
    /// The oldest of them.
    pub oldest: Option<Millis>,
    /// When the first event recorded after the connection arrived (the replay is over).
    pub done_at: Option<Millis>,
}

/// One door as the rules last saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DoorSeen {
    pub open: bool,
    pub since: Millis,
    pub forced: bool,
}

/// A fact that raises a one-shot alert until it is acknowledged or expires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fact {
    pub at: Millis,
    pub detail: String,
    /// The compartment it concerns (a sensor conflict clears at its next reading).
    pub compartment: Option<u16>,
}

/// What the rules engine remembers of one cabinet.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CabState {
    pub site: Option<SiteId>,
    /// Online at the edge, and since when (online or offline). `None` before the first
    /// presence change.
    pub online: Option<bool>,
    pub since: Millis,
    /// Disconnect times within the flapping window (at most `flapping.disconnects`).
    pub disconnects: VecDeque<Millis>,
    pub replay: Option<Replay>,
    /// The home network (the site's, or the first hello's).
    pub home_network: Option<u8>,
    /// The network now, and since when.
    pub network: Option<(u8, Millis)>,
    pub power: Option<PowerSeen>,
    /// Energy in and out over the solar window.
    pub energy: EnergyWindow,
    pub doors: BTreeMap<u16, DoorSeen>,
    /// Jam times per compartment within the window (at most `lock_jammed.jams` each).
    pub jams: BTreeMap<u16, VecDeque<Millis>>,
    /// Alarms the cabinet holds active: key `kind|subject` -> since.
    pub alarms: BTreeMap<String, Millis>,
    /// The offline queue: (commands waiting, oldest since) at the dispatcher's last report.
    pub queue: Option<(usize, Millis)>,
    /// One-shot facts: key `kind|subject` -> fact.
    pub facts: BTreeMap<String, Fact>,
    /// The clock's skew as last judged (ms, positive = ahead) and when.
    pub skew: Option<(i64, Millis)>,
    /// Conditions by [`cond_key`].
    pub conds: BTreeMap<String, Cond>,
    /// The cabinet's last audit-log position the engine has applied (0 = none yet): a start
    /// applies what ingest stored after it (events committed but not evaluated before a kill).
    #[serde(default)]
    pub applied: u64,
}

impl CabState {
    /// The network kind from its wire code.
    pub fn net(code: u8) -> Option<NetworkKind> {
        match code {
            0 => Some(NetworkKind::Cellular),
            1 => Some(NetworkKind::Wifi),
            2 => Some(NetworkKind::Lan),
            _ => None,
        }
    }

    /// Whether anything of this cabinet changes with time alone (the tick needs to look).
    pub fn timed(&self) -> bool {
        !self.disconnects.is_empty()
            || self.replay.is_some()
            || !self.jams.is_empty()
            || !self.facts.is_empty()
            || self
                .conds
                .values()
                .any(|c| c.alert.is_none() || c.clear_since.is_some())
    }
}
