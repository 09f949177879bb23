//! The agent's configuration: one serde struct with defaults for every key, loaded from a TOML
//! file with `LOCKER_` environment overrides (`LOCKER_MQTT__HOST=...`), and validated into
//! clear errors before anything starts.
//!
//! `device-agent/agent.example.toml` documents every key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use locker_schemas::{CabinetId, CompartmentId, NetworkKind, Size};
use serde::{Deserialize, Serialize};

/// Why a configuration could not be loaded or is not usable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("could not read configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

fn invalid(msg: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(msg.into())
}

/// Everything the agent needs to know to run one cabinet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// The cabinet id (also the MQTT client id and the sled tree name).
    pub cabinet_id: String,
    /// Hardware model reported in the hello.
    pub hardware: String,
    pub mqtt: MqttConfig,
    pub storage: StorageConfig,
    pub outbox: OutboxConfig,
    pub lock_boards: Vec<LockBoardConfig>,
    pub charger: Option<ChargerConfig>,
    pub timing: TimingConfig,
    pub scanner: ScannerConfig,
    pub network: NetworkConfig,
    pub clock: ClockConfig,
    pub commands: CommandsConfig,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            cabinet_id: String::new(),
            hardware: "locker-v1".into(),
            mqtt: MqttConfig::default(),
            storage: StorageConfig::default(),
            outbox: OutboxConfig::default(),
            lock_boards: Vec::new(),
            charger: None,
            timing: TimingConfig::default(),
            scanner: ScannerConfig::default(),
            network: NetworkConfig::default(),
            clock: ClockConfig::default(),
            commands: CommandsConfig::default(),
        }
    }
}

/// The MQTT session to the gateway.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttConfig {
    /// Run the MQTT session at all (`false`: offline agent, e.g. tests through the handle).
    pub enabled: bool,
    /// Gateway host name or IP address (also the TLS server name).
    pub host: String,
    pub port: u16,
    /// Use TLS with a client certificate (the gateway requires it; `false` only for local tests).
    pub tls: bool,
    /// PEM file with the fleet CA certificate(s).
    pub ca_cert: PathBuf,
    /// PEM file with this cabinet's certificate (chain).
    pub client_cert: PathBuf,
    /// PEM file with this cabinet's private key.
    pub client_key: PathBuf,
    /// MQTT keep-alive in seconds (60 s suits 4G carriers' NAT timeouts).
    pub keep_alive_s: u64,
    /// TCP + TLS + CONNECT deadline in seconds.
    pub connect_timeout_s: u64,
    /// Reconnect backoff base in milliseconds (full jitter: sleep = random(0, min(max, base*2^n))).
    pub backoff_base_ms: u64,
    /// Reconnect backoff cap in milliseconds.
    pub backoff_max_ms: u64,
    /// At most this many uplinks published and not yet acknowledged by the gateway.
    pub window: u16,
    /// Resend from the first unacknowledged event when no ack progress came for this long.
    pub ack_timeout_ms: u64,
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            host: "localhost".into(),
            port: 8883,
            tls: true,
            ca_cert: PathBuf::from("/etc/locker-agent/ca.pem"),
            client_cert: PathBuf::from("/etc/locker-agent/cabinet.pem"),
            client_key: PathBuf::from("/etc/locker-agent/cabinet.key"),
            keep_alive_s: 60,
            connect_timeout_s: 30,
            backoff_base_ms: 500,
            backoff_max_ms: 60_000,
            window: 64,
            ack_timeout_ms: 5_000,
        }
    }
}

/// Where the sled database lives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Directory of the sled database (the binary opens it; library callers pass a `sled::Db`).
    pub path: PathBuf,
    /// Telemetry writes are made durable together at most this many ms after they were stored.
    pub group_flush_ms: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from("/var/lib/locker-agent/db"),
            group_flush_ms: 50,
        }
    }
}

/// Bounds of the outbox of unacknowledged events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutboxConfig {
    /// Soft limit: at this depth telemetry (power, network) is no longer stored.
    pub max_events: u64,
    /// Raise OutboxNearlyFull at this percentage of `max_events`.
    pub nearly_full_percent: u8,
    /// Hard limit: critical events (door, scan, alarm, result, access) are still stored beyond
    /// `max_events` up to this depth; past it they are dropped, counted and logged as errors.
    pub hard_max_events: u64,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            max_events: 100_000,
            nearly_full_percent: 80,
            hard_max_events: 150_000,
        }
    }
}

/// A compartment size as written in the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SizeName {
    S,
    M,
    L,
    Xl,
}

impl From<SizeName> for Size {
    fn from(s: SizeName) -> Size {
        match s {
            SizeName::S => Size::S,
            SizeName::M => Size::M,
            SizeName::L => Size::L,
            SizeName::Xl => Size::Xl,
        }
    }
}

/// One Modbus lock board.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LockBoardConfig {
    /// `host:port` of the Modbus TCP endpoint (or the name the caller's connector understands).
    pub address: String,
    /// Modbus unit id (unique within the cabinet: alarms name the board by it).
    pub unit: u8,
    /// Number of locks on the board.
    pub locks: u16,
    /// Compartment number of lock 0; lock i is compartment `first_compartment + i`.
    pub first_compartment: u16,
    /// Coil address of lock 0 (FC05 write ON fires the lock).
    pub coil_offset: u16,
    /// Discrete input address of door sensor 0 (FC02, 1 = open).
    pub sensor_offset: u16,
    /// Discrete input address of parcel sensor 0 (FC02, 1 = parcel present).
    pub parcel_offset: u16,
    /// Size of every compartment on the board, lock 0 first; missing entries use `default_size`.
    pub sizes: Vec<SizeName>,
    /// Size of compartments not listed in `sizes`.
    pub default_size: SizeName,
}

impl Default for LockBoardConfig {
    fn default() -> Self {
        Self {
            address: "127.0.0.1:502".into(),
            unit: 1,
            locks: 16,
            first_compartment: 1,
            coil_offset: 0,
            sensor_offset: 0,
            parcel_offset: 256,
            sizes: Vec::new(),
            default_size: SizeName::M,
        }
    }
}

impl LockBoardConfig {
    /// The compartment of lock `i`.
    pub fn compartment(&self, i: u16) -> CompartmentId {
        CompartmentId(self.first_compartment.saturating_add(i))
    }

    /// The size of lock `i`'s compartment.
    pub fn size(&self, i: u16) -> Size {
        self.sizes
            .get(usize::from(i))
            .copied()
            .unwrap_or(self.default_size)
            .into()
    }
}

/// The solar charge controller (EPEver Tracer-style register map).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChargerConfig {
    /// `host:port` of the Modbus TCP endpoint.
    pub address: String,
    /// Modbus unit id.
    pub unit: u8,
    /// How often the controller is read, seconds.
    pub poll_s: u64,
    /// How often a Power event is reported, seconds (also at once on a SOC threshold crossing).
    pub interval_s: u64,
    /// State-of-charge thresholds (percent) whose crossing, either way, is reported at once.
    pub soc_thresholds: Vec<u8>,
    /// PowerFail is raised while the battery is below this voltage (millivolts).
    pub battery_min_mv: u32,
}

impl Default for ChargerConfig {
    fn default() -> Self {
        Self {
            address: "127.0.0.1:503".into(),
            unit: 1,
            poll_s: 10,
            interval_s: 300,
            soc_thresholds: vec![20, 10],
            battery_min_mv: 11_500,
        }
    }
}

/// Timings of the hardware loop and the door state machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TimingConfig {
    /// Door sensors are read this often (ms, at most 200).
    pub sensor_poll_ms: u64,
    /// After a lock fired, its board is read this often (ms) until the door opens or the
    /// confirm deadline passes.
    pub fast_poll_ms: u64,
    /// A sensor change counts after this many identical consecutive reads.
    pub debounce_reads: u8,
    /// A fired lock whose door did not open within this many ms is reported jammed.
    pub unlock_confirm_ms: u64,
    /// A door opening this long after its lock fired still counts as caused by it (ms).
    pub late_open_grace_ms: u64,
    /// DoorLeftOpen is raised for a door open longer than this (seconds).
    pub door_left_open_s: u64,
    /// Deadline of one Modbus request (ms).
    pub modbus_timeout_ms: u64,
    /// An offline board or charger is retried this often (ms).
    pub modbus_reconnect_ms: u64,
    /// A board is offline (alarm) after this many failed polls in a row.
    pub offline_after_failures: u32,
}

impl Default for TimingConfig {
    fn default() -> Self {
        Self {
            sensor_poll_ms: 200,
            fast_poll_ms: 10,
            debounce_reads: 2,
            unlock_confirm_ms: 3_000,
            late_open_grace_ms: 60_000,
            door_left_open_s: 300,
            modbus_timeout_ms: 500,
            modbus_reconnect_ms: 2_000,
            offline_after_failures: 3,
        }
    }
}

/// Where scans and keypad entries come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScannerConfig {
    /// `none`, `stdin`, `serial` (read `path` line by line) or `tcp` (listen on `listen`).
    pub kind: ScannerKind,
    /// Device or file path for `serial`.
    pub path: PathBuf,
    /// Listen address for `tcp`.
    pub listen: String,
}

impl Default for ScannerConfig {
    fn default() -> Self {
        Self {
            kind: ScannerKind::None,
            path: PathBuf::from("/dev/ttyACM0"),
            listen: "127.0.0.1:7070".into(),
        }
    }
}

/// The scanner input source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScannerKind {
    None,
    Stdin,
    Serial,
    Tcp,
}

/// How the cabinet is online (reported in the hello and in Network events).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkConfig {
    /// `cellular`, `wifi` or `lan`.
    pub kind: NetworkKindName,
    /// Signal strength in dBm if known; a Network event is sent after each connect when set.
    pub signal_dbm: Option<i16>,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            kind: NetworkKindName::Cellular,
            signal_dbm: None,
        }
    }
}

/// A network kind as written in the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkKindName {
    Cellular,
    Wifi,
    Lan,
}

impl From<NetworkKindName> for NetworkKind {
    fn from(k: NetworkKindName) -> NetworkKind {
        match k {
            NetworkKindName::Cellular => NetworkKind::Cellular,
            NetworkKindName::Wifi => NetworkKind::Wifi,
            NetworkKindName::Lan => NetworkKind::Lan,
        }
    }
}

/// When the wall clock can be trusted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClockConfig {
    /// A wall clock before this RFC 3339 instant is not sane: absolute command expiry and
    /// credential expiry are then not judged by it (relative TTLs still are).
    pub sane_after: String,
}

impl Default for ClockConfig {
    fn default() -> Self {
        Self {
            sane_after: "2024-01-01T00:00:00Z".into(),
        }
    }
}

impl ClockConfig {
    /// The floor in ms since the epoch.
    pub fn floor_millis(&self) -> Result<u64, ConfigError> {
        let t = time::OffsetDateTime::parse(
            &self.sane_after,
            &time::format_description::well_known::Rfc3339,
        )
        .map_err(|e| invalid(format!("clock.sane_after {:?}: {e}", self.sane_after)))?;
        u64::try_from(t.unix_timestamp_nanos() / 1_000_000)
            .map_err(|_| invalid("clock.sane_after must be after 1970"))
    }
}

/// The memory of executed commands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CommandsConfig {
    /// How many executed command ids are remembered (oldest forgotten first).
    pub remember: u64,
}

impl Default for CommandsConfig {
    fn default() -> Self {
        Self { remember: 20_000 }
    }
}

impl AgentConfig {
    /// Loads the configuration from a TOML file with `LOCKER_` environment overrides
    /// (`__` separates levels: `LOCKER_MQTT__PORT=8884`), then validates it.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let cfg: AgentConfig = Figment::from(Serialized::defaults(AgentConfig::default()))
            .merge(Toml::file(path))
            .merge(Env::prefixed("LOCKER_").split("__"))
            .extract()
            .map_err(Box::new)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Parses a TOML string (no environment), then validates it.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let cfg: AgentConfig = Figment::from(Serialized::defaults(AgentConfig::default()))
            .merge(Toml::string(text))
            .extract()
            .map_err(Box::new)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The validated cabinet id.
    pub fn cabinet(&self) -> Result<CabinetId, ConfigError> {
        CabinetId::new(self.cabinet_id.clone())
            .map_err(|e| invalid(format!("cabinet_id {:?}: {e}", self.cabinet_id)))
    }

    /// Checks every rule a running agent relies on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.cabinet()?;
        let m = &self.mqtt;
        if m.host.is_empty() {
            return Err(invalid("mqtt.host is empty"));
        }
        if m.port == 0 {
            return Err(invalid("mqtt.port must not be 0"));
        }
        if m.keep_alive_s == 0 || m.keep_alive_s > 3_600 {
            return Err(invalid("mqtt.keep_alive_s must be 1..=3600"));
        }
        if m.connect_timeout_s == 0 {
            return Err(invalid("mqtt.connect_timeout_s must be > 0"));
        }
        if m.backoff_base_ms == 0 || m.backoff_max_ms < m.backoff_base_ms {
            return Err(invalid(
                "mqtt.backoff_base_ms must be > 0 and <= mqtt.backoff_max_ms",
            ));
        }
        if m.window == 0 || m.window > 1_000 {
            return Err(invalid("mqtt.window must be 1..=1000"));
        }
        if m.ack_timeout_ms < 100 {
            return Err(invalid("mqtt.ack_timeout_ms must be >= 100"));
        }
        let o = &self.outbox;
        if o.max_events < 16 {
            return Err(invalid("outbox.max_events must be >= 16"));
        }
        if o.nearly_full_percent == 0 || o.nearly_full_percent > 100 {
            return Err(invalid("outbox.nearly_full_percent must be 1..=100"));
        }
        if o.hard_max_events < o.max_events {
            return Err(invalid(
                "outbox.hard_max_events must be >= outbox.max_events",
            ));
        }
        let t = &self.timing;
        if t.sensor_poll_ms == 0 || t.sensor_poll_ms > 200 {
            return Err(invalid("timing.sensor_poll_ms must be 1..=200"));
        }
        if t.fast_poll_ms == 0 || t.fast_poll_ms > t.sensor_poll_ms {
            return Err(invalid(
                "timing.fast_poll_ms must be > 0 and <= timing.sensor_poll_ms",
            ));
        }
        if t.debounce_reads == 0 {
            return Err(invalid("timing.debounce_reads must be >= 1"));
        }
        if t.unlock_confirm_ms == 0 || t.modbus_timeout_ms == 0 || t.modbus_reconnect_ms == 0 {
            return Err(invalid(
                "timing.unlock_confirm_ms, modbus_timeout_ms and modbus_reconnect_ms must be > 0",
            ));
        }
        if t.offline_after_failures == 0 {
            return Err(invalid("timing.offline_after_failures must be >= 1"));
        }
        if t.door_left_open_s == 0 {
            return Err(invalid("timing.door_left_open_s must be > 0"));
        }
        self.validate_boards()?;
        if let Some(c) = &self.charger {
            if c.address.is_empty() {
                return Err(invalid("charger.address is empty"));
            }
            if c.poll_s == 0 || c.interval_s == 0 {
                return Err(invalid("charger.poll_s and charger.interval_s must be > 0"));
            }
            if let Some(bad) = c.soc_thresholds.iter().find(|&&p| p == 0 || p > 100) {
                return Err(invalid(format!(
                    "charger.soc_thresholds: {bad} is not a percentage 1..=100"
                )));
            }
        }
        match self.scanner.kind {
            ScannerKind::Tcp => {
                self.scanner.listen.parse::<SocketAddr>().map_err(|e| {
                    invalid(format!("scanner.listen {:?}: {e}", self.scanner.listen))
                })?;
            }
            ScannerKind::Serial if self.scanner.path.as_os_str().is_empty() => {
                return Err(invalid("scanner.path is empty"));
            }
            _ => {}
        }
        self.clock.floor_millis()?;
        if self.commands.remember < 100 {
            return Err(invalid("commands.remember must be >= 100"));
        }
        Ok(())
    }

    fn validate_boards(&self) -> Result<(), ConfigError> {
        let mut ranges: Vec<(u32, u32, usize)> = Vec::new();
        for (i, b) in self.lock_boards.iter().enumerate() {
            let name = format!("lock_boards[{i}]");
            if b.address.is_empty() {
                return Err(invalid(format!("{name}.address is empty")));
            }
            if b.locks == 0 || b.locks > 256 {
                return Err(invalid(format!("{name}.locks must be 1..=256")));
            }
            if b.first_compartment == 0 {
                return Err(invalid(format!(
                    "{name}.first_compartment must be >= 1 (compartments are numbered from 1)"
                )));
            }
            let first = u32::from(b.first_compartment);
            let last = first + u32::from(b.locks) - 1;
            if last > u32::from(u16::MAX) {
                return Err(invalid(format!("{name}: compartments run past 65535")));
            }
            for (off, what) in [
                (b.coil_offset, "coil_offset"),
                (b.sensor_offset, "sensor_offset"),
                (b.parcel_offset, "parcel_offset"),
            ] {
                if u32::from(off) + u32::from(b.locks) > 65_536 {
                    return Err(invalid(format!("{name}.{what} + locks runs past 65535")));
                }
            }
            if b.sizes.len() > usize::from(b.locks) {
                return Err(invalid(format!(
                    "{name}.sizes lists {} sizes for {} locks",
                    b.sizes.len(),
                    b.locks
                )));
            }
            if let Some((_, _, j)) = ranges.iter().find(|(f, l, _)| first <= *l && *f <= last) {
                return Err(invalid(format!(
                    "{name}: compartments {first}..={last} overlap lock_boards[{j}]"
                )));
            }
            if let Some(j) = self.lock_boards[..i].iter().position(|o| o.unit == b.unit) {
                return Err(invalid(format!(
                    "{name}.unit {} is also lock_boards[{j}].unit (unit ids must be unique)",
                    b.unit
                )));
            }
            ranges.push((first, last, i));
        }
        Ok(())
    }

    /// Backoff base.
    pub fn backoff_base(&self) -> Duration {
        Duration::from_millis(self.mqtt.backoff_base_ms)
    }

    /// Backoff cap.
    pub fn backoff_max(&self) -> Duration {
        Duration::from_millis(self.mqtt.backoff_max_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
cabinet_id = "CAB-1"
[[lock_boards]]
address = "127.0.0.1:5020"
unit = 1
locks = 4
sizes = ["s", "m", "l", "xl"]
[[lock_boards]]
address = "127.0.0.1:5021"
unit = 2
locks = 4
first_compartment = 5
[charger]
address = "127.0.0.1:5030"
"#;

    #[test]
    fn parses_with_defaults() {
        let c = AgentConfig::from_toml(GOOD).expect("valid");
        assert_eq!(c.cabinet().expect("id").as_str(), "CAB-1");
        assert_eq!(c.mqtt.keep_alive_s, 60);
        assert_eq!(c.mqtt.window, 64);
        assert_eq!(c.lock_boards[0].size(3), Size::Xl);
        assert_eq!(c.lock_boards[1].size(0), Size::M);
        assert_eq!(c.lock_boards[1].compartment(3), CompartmentId(8));
        assert_eq!(
            c.charger.as_ref().expect("charger").soc_thresholds,
            [20, 10]
        );
        assert_eq!(c.clock.floor_millis().expect("floor"), 1_704_067_200_000);
    }

    #[test]
    fn the_example_config_is_valid() {
        let c = AgentConfig::from_toml(include_str!("../agent.example.toml")).expect("valid");
        assert_eq!(c.lock_boards.len(), 2);
        assert_eq!(c.lock_boards[0].size(15), Size::Xl);
        assert_eq!(c.scanner.kind, ScannerKind::Serial);
    }

    #[test]
    fn rejects_bad_configs_clearly() {
        let cases = [
            ("", "cabinet_id"),
            ("cabinet_id = \"a/b\"", "cabinet_id"),
            ("cabinet_id = \"x\"\n[timing]\nsensor_poll_ms = 500", "sensor_poll_ms"),
            ("cabinet_id = \"x\"\n[mqtt]\nwindow = 0", "window"),
            (
                "cabinet_id = \"x\"\n[[lock_boards]]\nunit = 1\n[[lock_boards]]\nunit = 2\n",
                "overlap",
            ),
            (
                "cabinet_id = \"x\"\n[[lock_boards]]\nunit = 1\n[[lock_boards]]\nunit = 1\nfirst_compartment = 100\n",
                "unique",
            ),
            ("cabinet_id = \"x\"\n[clock]\nsane_after = \"yesterday\"", "sane_after"),
            ("cabinet_id = \"x\"\nbogus = 1", "bogus"),
            (
                "cabinet_id = \"x\"\n[outbox]\nmax_events = 100\nhard_max_events = 50",
                "hard_max_events",
            ),
        ];
        for (text, needle) in cases {
            let err = AgentConfig::from_toml(text).expect_err(text).to_string();
            assert!(err.contains(needle), "{text:?}: {err}");
        }
    }
}
