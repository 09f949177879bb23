//! The agent's configuration: one serde struct with defaults for every key, loaded from a TOML
//! file with `LOCKER_` environment overrides (`LOCKER_MQTT__HOST=...`), and validated into
//! clear errors before anything starts.
//!
//! `device-agent/agent.example.toml` documents every key; the rules are in [`validate`].

mod runtime;
mod validate;

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
    /// RS-485 serial lines (Modbus RTU) that boards and the charger name by `serial`.
    pub serial_ports: Vec<SerialPortConfig>,
    pub timing: TimingConfig,
    pub scanner: ScannerConfig,
    pub network: NetworkConfig,
    pub clock: ClockConfig,
    pub commands: CommandsConfig,
    pub access: AccessConfig,
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
            serial_ports: Vec::new(),
            timing: TimingConfig::default(),
            scanner: ScannerConfig::default(),
            network: NetworkConfig::default(),
            clock: ClockConfig::default(),
            commands: CommandsConfig::default(),
            access: AccessConfig::default(),
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
    /// `host:port` of the Modbus TCP endpoint (or the name the caller's connector understands);
    /// ignored when `serial` is set.
    pub address: String,
    /// The `name` of the `[[serial_ports]]` line the board hangs on (Modbus RTU); `None`:
    /// Modbus TCP at `address`.
    pub serial: Option<String>,
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
    /// Whether the board has parcel sensors: a door that closes reports what its sensor reads
    /// (one FC02 read of the board right after the close). Without them door events carry no
    /// parcel reading.
    pub parcel_sensors: bool,
    /// Size of every compartment on the board, lock 0 first; missing entries use `default_size`.
    pub sizes: Vec<SizeName>,
    /// Size of compartments not listed in `sizes`.
    pub default_size: SizeName,
}

impl Default for LockBoardConfig {
    fn default() -> Self {
        Self {
            address: "127.0.0.1:502".into(),
            serial: None,
            unit: 1,
            locks: 16,
            first_compartment: 1,
            coil_offset: 0,
            sensor_offset: 0,
            parcel_offset: 256,
            parcel_sensors: true,
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
    /// `host:port` of the Modbus TCP endpoint; ignored when `serial` is set.
    pub address: String,
    /// The `name` of the `[[serial_ports]]` line the controller hangs on (Modbus RTU).
    pub serial: Option<String>,
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
            serial: None,
            unit: 1,
            poll_s: 10,
            interval_s: 300,
            soc_thresholds: vec![20, 10],
            battery_min_mv: 11_500,
        }
    }
}

/// Parity of a serial line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ParityName {
    None,
    Even,
    Odd,
}

/// One RS-485 line (a USB or UART adapter) carrying Modbus RTU to one or more units. One task
/// owns it and serialises the requests of every unit on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SerialPortConfig {
    /// The name boards and the charger use in their `serial` key.
    pub name: String,
    /// The device node, e.g. `/dev/ttyUSB0` (better a stable `/dev/serial/by-id/...` link).
    pub path: String,
    /// Baud rate (bits per second).
    pub baud: u32,
    /// `none`, `even` or `odd`.
    pub parity: ParityName,
    /// 1 or 2.
    pub stop_bits: u8,
    /// Always 8 for Modbus RTU.
    pub data_bits: u8,
    /// Deadline of one request on this line, ms (a unit that misses it counts a failed poll).
    pub request_timeout_ms: u64,
    /// Silence kept between frames, ms; `None`: 3.5 character times at `baud` (1.75 ms above
    /// 19,200 baud).
    pub inter_frame_delay_ms: Option<f64>,
    /// A port that failed (adapter unplugged) is reopened after 250 ms, doubling up to this, ms.
    pub reopen_max_ms: u64,
}

impl Default for SerialPortConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            path: String::new(),
            baud: 9_600,
            parity: ParityName::None,
            stop_bits: 1,
            data_bits: 8,
            request_timeout_ms: 200,
            inter_frame_delay_ms: None,
            reopen_max_ms: 5_000,
        }
    }
}

impl SerialPortConfig {
    /// The silence kept between frames.
    pub fn inter_frame_delay(&self) -> Duration {
        match self.inter_frame_delay_ms {
            Some(ms) => Duration::from_secs_f64(ms.max(0.0) / 1_000.0),
            None => crate::hw::rtu::inter_frame_delay(self.baud),
        }
    }

    /// The request deadline.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
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
    /// Deadline of one Modbus TCP request (ms); units on a serial line use the line's
    /// `request_timeout_ms`.
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

/// Local access at the cabinet: courier sessions and the keypad lock after wrong codes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AccessConfig {
    /// How long a courier stays signed in after the badge (or the last courier action), in s.
    pub courier_session_s: u64,
    /// Wrong codes (within `wrong_code_window_s`) that lock the keypad.
    pub max_wrong_codes: u32,
    /// The window wrong codes are counted in, in s.
    pub wrong_code_window_s: u64,
    /// How long the keypad stays locked, in s (the end survives a restart).
    pub lockout_s: u64,
}

impl Default for AccessConfig {
    fn default() -> Self {
        Self {
            courier_session_s: 120,
            max_wrong_codes: 5,
            wrong_code_window_s: 300,
            lockout_s: 300,
        }
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

    /// Backoff base.
    pub fn backoff_base(&self) -> Duration {
        Duration::from_millis(self.mqtt.backoff_base_ms)
    }

    /// Backoff cap.
    pub fn backoff_max(&self) -> Duration {
        Duration::from_millis(self.mqtt.backoff_max_ms)
    }
}
