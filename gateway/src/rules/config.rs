//! The `[rules]` table of gateway.toml: engine settings, one table per rule kind
//! (`[rules.battery_low]`), and per-site overrides of any of them
//! (`[rules.sites.SITE-1.battery_low]`, `[rules.sites.SITE-1] supply = "mains"`).
//!
//! A rule table names only what it changes: the shipped defaults ([`RuleSet::default`]) are
//! merged under the base tables, and the base under each site's. The result is checked at
//! start; an error names the key (`rules.sites.SITE-1.battery_low.clear_above_pct`) and says
//! how to fix it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use locker_schemas::{NetworkKind, SiteId};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::model::Severity;

/// Why the rules configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RulesConfigError {
    #[error("{key}: {problem}")]
    Parse { key: String, problem: String },
    #[error("{key}: {problem}; {fix}")]
    Invalid {
        key: String,
        problem: String,
        fix: String,
    },
}

/// The `[rules]` table as written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct RulesConfig {
    /// Whether the rules engine runs at all.
    pub enabled: bool,
    /// How often time-based conditions are evaluated, ms.
    pub tick_ms: u64,
    /// Per-cabinet gauges (`locker_cabinet_*{cabinet,site}`): one series per cabinet.
    pub per_cabinet_metrics: bool,
    /// Days a cleared alert is kept in the history.
    pub history_keep_days: u32,
    /// Conditions (pending or active) one cabinet may hold; beyond, new ones are refused and
    /// counted (bounded memory per cabinet).
    pub max_conditions_per_cabinet: usize,
    /// Per-site overrides: a table per site id with any of the rule tables and the site's
    /// `supply` / `home_network` / `battery_wh`.
    pub sites: BTreeMap<String, Value>,
    /// The rule tables (`offline`, `battery_low`, ...) and the fleet-wide `supply`,
    /// `home_network`: only what differs from the defaults.
    #[serde(flatten)]
    pub rules: Map<String, Value>,
}

impl Default for RulesConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            tick_ms: 1_000,
            per_cabinet_metrics: false,
            history_keep_days: 30,
            max_conditions_per_cabinet: 64,
            sites: BTreeMap::new(),
            rules: Map::new(),
        }
    }
}

/// How a cabinet is powered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Supply {
    /// Solar panel and battery: no input at night is normal.
    Solar,
    /// Mains with a backup battery: no input power means a mains loss.
    Mains,
}

/// A network kind in the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetName {
    Lan,
    Wifi,
    Cellular,
}

impl From<NetName> for NetworkKind {
    fn from(n: NetName) -> Self {
        match n {
            NetName::Lan => NetworkKind::Lan,
            NetName::Wifi => NetworkKind::Wifi,
            NetName::Cellular => NetworkKind::Cellular,
        }
    }
}

macro_rules! rule_struct {
    ($(#[$doc:meta])* $name:ident { $($(#[$fdoc:meta])* $field:ident : $ty:ty),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            /// Whether the rule runs.
            pub enabled: bool,
            /// The severity of its alerts.
            pub severity: Severity,
            $($(#[$fdoc])* pub $field: $ty,)*
        }
    };
}

rule_struct!(
    /// A cabinet offline longer than `after_ms`.
    Offline {
        /// Offline this long (from the edge's presence) raises the alert, ms.
        after_ms: u64,
        /// A cabinet back from an outage at least this long is sent `sync_credentials`, ms
        /// (0 = never).
        sync_credentials_after_ms: u64,
    }
);
rule_struct!(
    /// A flapping link.
    Flapping {
        /// Disconnects within `window_ms` that raise the alert.
        disconnects: u32,
        /// The window, ms; the alert clears when fewer disconnects fall in it.
        window_ms: u64,
    }
);
rule_struct!(
    /// The replay after a cabinet came back.
    ReplayBacklog {
        /// More events replayed than this raises the alert.
        events: u64,
        /// Or a replayed event older than this, ms.
        age_ms: u64,
        /// The alert stays this long after the replay ended, ms.
        hold_ms: u64,
    }
);
rule_struct!(
    /// On cellular when the cabinet's home network is LAN or Wi-Fi.
    NetworkFailover {
        /// On the failover link this long raises the alert, ms.
        for_ms: u64,
    }
);
rule_struct!(
    /// A low state of charge, with hysteresis, and the power-save action.
    BatteryLow {
        /// Under this percentage...
        below_pct: u8,
        /// ...for this long raises the alert, ms.
        for_ms: u64,
        /// It clears above this percentage (the hysteresis band is between the two).
        clear_above_pct: u8,
        /// Send `power_save` on when raised and off when cleared.
        power_save: bool,
    }
);
rule_struct!(
    /// Energy in minus energy out over a window, projected to an empty battery.
    SolarDeficit {
        /// The window the balance is taken over, ms (24 h).
        window_ms: u64,
        /// The balance is judged only once telemetry covers this much of the window, ms.
        min_coverage_ms: u64,
        /// The usable battery capacity, Wh.
        battery_wh: f64,
        /// The alert is raised when the battery would be empty within this many hours...
        empty_within_h: f64,
        /// ...and clears when the balance is positive or empty is this many hours away.
        clear_beyond_h: f64,
    }
);
rule_struct!(
    /// A fault of the charge controller (the cabinet's `charger_fault` alarm).
    ChargerFault {
        /// The fault lasting this long raises the alert, ms.
        for_ms: u64,
    }
);
rule_struct!(
    /// A mains-powered cabinet running on its battery.
    OnBattery {
        /// Input power under this, W...
        input_below_w: u32,
        /// ...for this long raises the alert, ms (cabinets with `supply = "mains"` only).
        for_ms: u64,
    }
);
rule_struct!(
    /// A door left open.
    DoorLeftOpen {
        /// Open this long raises the alert, ms.
        after_ms: u64,
    }
);
rule_struct!(
    /// A door forced open (no command, no local access); clears when it closes.
    DoorForced {}
);
rule_struct!(
    /// A lock that keeps jamming.
    LockJammed {
        /// Jams of one lock within `window_ms` that raise the alert.
        jams: u32,
        /// The window, ms; the alert clears when fewer jams fall in it.
        window_ms: u64,
    }
);
rule_struct!(
    /// A parcel sensor that disagrees with the order (one alert per conflict).
    ParcelSensor {
        /// Clears on acknowledgement, at the compartment's next sensor reading, or after this
        /// long, ms.
        clear_after_ms: u64,
    }
);
rule_struct!(
    /// Commands waiting for an offline cabinet.
    QueueWaiting {
        /// The oldest waiting this long raises the alert, ms.
        waiting_ms: u64,
    }
);
rule_struct!(
    /// A deep offline command queue.
    QueueDeep {
        /// More commands waiting than this raises the alert.
        depth: usize,
    }
);
rule_struct!(
    /// A command that ended without an outcome (`no_answer`).
    CommandNoOutcome {
        /// Clears on acknowledgement or after this long, ms.
        clear_after_ms: u64,
    }
);
rule_struct!(
    /// A lock board offline on the bus (the cabinet's alarm).
    BoardOffline {
        /// Offline this long raises the alert, ms.
        for_ms: u64,
    }
);
rule_struct!(
    /// The cabinet's outbox nearly full (the cabinet's alarm).
    OutboxFull {
        /// Nearly full this long raises the alert, ms.
        for_ms: u64,
    }
);
rule_struct!(
    /// A cabinet clock that is off.
    ClockSkew {
        /// Off by more than this raises the alert, ms (event times ahead of the gateway's, or
        /// a hello stamped before the connection it was sent on).
        max_skew_ms: u64,
        /// A hello committed within this long of its connection is used to judge the clock, ms.
        hello_within_ms: u64,
    }
);

/// Every rule, as it applies to one site (or the fleet).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSet {
    /// How the site's cabinets are powered (`solar` or `mains`).
    pub supply: Supply,
    /// The network the site's cabinets should be on (`lan`, `wifi`, `cellular`); without it,
    /// the network of a cabinet's first hello.
    pub home_network: Option<NetName>,
    pub offline: Offline,
    pub flapping: Flapping,
    pub replay_backlog: ReplayBacklog,
    pub network_failover: NetworkFailover,
    pub battery_low: BatteryLow,
    pub solar_deficit: SolarDeficit,
    pub charger_fault: ChargerFault,
    pub on_battery: OnBattery,
    pub door_left_open: DoorLeftOpen,
    pub door_forced: DoorForced,
    pub lock_jammed: LockJammed,
    pub parcel_sensor: ParcelSensor,
    pub queue_waiting: QueueWaiting,
    pub queue_deep: QueueDeep,
    pub command_no_outcome: CommandNoOutcome,
    pub board_offline: BoardOffline,
    pub outbox_full: OutboxFull,
    pub clock_skew: ClockSkew,
}

const MIN: u64 = 60_000;
const HOUR: u64 = 3_600_000;

impl Default for RuleSet {
    fn default() -> Self {
        use Severity::{Critical, Info, Warning};
        Self {
            supply: Supply::Solar,
            home_network: None,
            offline: Offline {
                enabled: true,
                severity: Warning,
                after_ms: 5 * MIN,
                sync_credentials_after_ms: HOUR,
            },
            flapping: Flapping {
                enabled: true,
                severity: Warning,
                disconnects: 5,
                window_ms: 15 * MIN,
            },
            replay_backlog: ReplayBacklog {
                enabled: true,
                severity: Info,
                events: 1_000,
                age_ms: HOUR,
                hold_ms: 10 * MIN,
            },
            network_failover: NetworkFailover {
                enabled: true,
                severity: Info,
                for_ms: 10 * MIN,
            },
            battery_low: BatteryLow {
                enabled: true,
                severity: Warning,
                below_pct: 15,
                for_ms: 5 * MIN,
                clear_above_pct: 30,
                power_save: true,
            },
            solar_deficit: SolarDeficit {
                enabled: true,
                severity: Warning,
                window_ms: 24 * HOUR,
                min_coverage_ms: 6 * HOUR,
                battery_wh: 1_200.0,
                empty_within_h: 48.0,
                clear_beyond_h: 72.0,
            },
            charger_fault: ChargerFault {
                enabled: true,
                severity: Critical,
                for_ms: MIN,
            },
            on_battery: OnBattery {
                enabled: true,
                severity: Warning,
                input_below_w: 1,
                for_ms: 2 * MIN,
            },
            door_left_open: DoorLeftOpen {
                enabled: true,
                severity: Warning,
                after_ms: 5 * MIN,
            },
            door_forced: DoorForced {
                enabled: true,
                severity: Critical,
            },
            lock_jammed: LockJammed {
                enabled: true,
                severity: Warning,
                jams: 3,
                window_ms: 24 * HOUR,
            },
            parcel_sensor: ParcelSensor {
                enabled: true,
                severity: Warning,
                clear_after_ms: 24 * HOUR,
            },
            queue_waiting: QueueWaiting {
                enabled: true,
                severity: Warning,
                waiting_ms: HOUR,
            },
            queue_deep: QueueDeep {
                enabled: true,
                severity: Warning,
                depth: 20,
            },
            command_no_outcome: CommandNoOutcome {
                enabled: true,
                severity: Warning,
                clear_after_ms: 24 * HOUR,
            },
            board_offline: BoardOffline {
                enabled: true,
                severity: Critical,
                for_ms: MIN,
            },
            outbox_full: OutboxFull {
                enabled: true,
                severity: Warning,
                for_ms: 0,
            },
            clock_skew: ClockSkew {
                enabled: true,
                severity: Warning,
                max_skew_ms: 2 * MIN,
                hello_within_ms: 10_000,
            },
        }
    }
}

/// The rules in force: the fleet's and each overriding site's.
#[derive(Debug, Clone)]
pub struct Compiled {
    pub fleet: Arc<RuleSet>,
    pub sites: HashMap<SiteId, Arc<RuleSet>>,
}

impl Compiled {
    /// The rules of a cabinet at `site` (the fleet's where the site has no overrides).
    pub fn for_site(&self, site: Option<&SiteId>) -> &Arc<RuleSet> {
        site.and_then(|s| self.sites.get(s)).unwrap_or(&self.fleet)
    }
}

/// Merges `over` into `base` (tables key by key, anything else replaced).
fn merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (b, o) => *b = o.clone(),
    }
}

fn parse(prefix: &str, v: Value) -> Result<RuleSet, RulesConfigError> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        let key = if path == "." || path.is_empty() {
            prefix.to_string()
        } else {
            format!("{prefix}.{path}")
        };
        RulesConfigError::Parse {
            key,
            problem: e.into_inner().to_string(),
        }
    })
}

impl RulesConfig {
    /// The rules in force, checked.
    pub fn compile(&self) -> Result<Compiled, RulesConfigError> {
        if self.tick_ms == 0 || self.tick_ms > MIN {
            return Err(RulesConfigError::Invalid {
                key: "rules.tick_ms".into(),
                problem: format!("{} is out of range", self.tick_ms),
                fix: "use 100 to 60000 (1000 is a good value)".into(),
            });
        }
        if self.max_conditions_per_cabinet < AlertKindCount::MIN {
            return Err(RulesConfigError::Invalid {
                key: "rules.max_conditions_per_cabinet".into(),
                problem: format!("{} is too few", self.max_conditions_per_cabinet),
                fix: format!("use at least {}", AlertKindCount::MIN),
            });
        }
        let mut base =
            serde_json::to_value(RuleSet::default()).map_err(|e| RulesConfigError::Parse {
                key: "rules".into(),
                problem: e.to_string(),
            })?;
        merge(&mut base, &Value::Object(self.rules.clone()));
        let fleet = parse("rules", base.clone())?;
        check(&fleet, "rules")?;
        let mut sites = HashMap::new();
        for (name, over) in &self.sites {
            let prefix = format!("rules.sites.{name}");
            let id = SiteId::new(name.clone()).map_err(|e| RulesConfigError::Invalid {
                key: prefix.clone(),
                problem: e.to_string(),
                fix: "name the site by its id, as in POST /v1/sites".into(),
            })?;
            if !over.is_object() {
                return Err(RulesConfigError::Invalid {
                    key: prefix,
                    problem: "is not a table".into(),
                    fix: format!("write it as [rules.sites.{name}] with rule tables inside"),
                });
            }
            let mut v = base.clone();
            merge(&mut v, over);
            let set = parse(&prefix, v)?;
            check(&set, &prefix)?;
            sites.insert(id, Arc::new(set));
        }
        Ok(Compiled {
            fleet: Arc::new(fleet),
            sites,
        })
    }
}

/// The fewest conditions a cabinet must be allowed to hold.
struct AlertKindCount;
impl AlertKindCount {
    const MIN: usize = 8;
}

fn invalid(key: String, problem: String, fix: &str) -> RulesConfigError {
    RulesConfigError::Invalid {
        key,
        problem,
        fix: fix.to_string(),
    }
}

/// Values no rule can run with, naming the key.
fn check(r: &RuleSet, p: &str) -> Result<(), RulesConfigError> {
    let b = &r.battery_low;
    if b.below_pct == 0 || b.below_pct >= 100 {
        return Err(invalid(
            format!("{p}.battery_low.below_pct"),
            format!("{} is not a percentage between 1 and 99", b.below_pct),
            "use for example 15",
        ));
    }
    if b.clear_above_pct <= b.below_pct || b.clear_above_pct > 100 {
        return Err(invalid(
            format!("{p}.battery_low.clear_above_pct"),
            format!(
                "{} must be above below_pct ({}) and at most 100 (the hysteresis band)",
                b.clear_above_pct, b.below_pct
            ),
            "raise it (for example below_pct + 15)",
        ));
    }
    let s = &r.solar_deficit;
    if !(s.battery_wh.is_finite() && s.battery_wh > 0.0) {
        return Err(invalid(
            format!("{p}.solar_deficit.battery_wh"),
            format!("{} is not a capacity", s.battery_wh),
            "give the usable battery capacity in Wh, for example 1200",
        ));
    }
    if !(s.empty_within_h.is_finite() && s.empty_within_h > 0.0) {
        return Err(invalid(
            format!("{p}.solar_deficit.empty_within_h"),
            format!("{} is not a number of hours", s.empty_within_h),
            "use for example 48",
        ));
    }
    if !(s.clear_beyond_h.is_finite() && s.clear_beyond_h > s.empty_within_h) {
        return Err(invalid(
            format!("{p}.solar_deficit.clear_beyond_h"),
            format!(
                "{} must be above empty_within_h ({}) (the hysteresis band)",
                s.clear_beyond_h, s.empty_within_h
            ),
            "raise it (for example 1.5 x empty_within_h)",
        ));
    }
    if s.window_ms == 0 || s.min_coverage_ms > s.window_ms {
        return Err(invalid(
            format!("{p}.solar_deficit.min_coverage_ms"),
            format!(
                "{} must be at most window_ms ({}), which must be above 0",
                s.min_coverage_ms, s.window_ms
            ),
            "lower min_coverage_ms or raise window_ms",
        ));
    }
    let nonzero: [(&str, u64); 6] = [
        ("flapping.window_ms", r.flapping.window_ms),
        ("flapping.disconnects", u64::from(r.flapping.disconnects)),
        ("lock_jammed.window_ms", r.lock_jammed.window_ms),
        ("lock_jammed.jams", u64::from(r.lock_jammed.jams)),
        ("replay_backlog.events", r.replay_backlog.events),
        ("clock_skew.max_skew_ms", r.clock_skew.max_skew_ms),
    ];
    for (k, v) in nonzero {
        if v == 0 {
            return Err(invalid(
                format!("{p}.{k}"),
                "must be above 0".into(),
                "set a positive value, or disable the rule with enabled = false",
            ));
        }
    }
    if r.flapping.disconnects > 1_000 || r.lock_jammed.jams > 1_000 {
        return Err(invalid(
            format!("{p}.flapping.disconnects / lock_jammed.jams"),
            "is over 1000 (the engine keeps that many times per cabinet)".into(),
            "use a smaller count and a shorter window",
        ));
    }
    Ok(())
}
