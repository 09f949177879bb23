//! The gateway's configuration: one serde struct with defaults, read from a TOML file
//! (`broker-config/gateway.toml` is the documented default) with `LOCKER_` environment
//! overrides, e.g. `LOCKER_API__LISTEN=0.0.0.0:8080` or `LOCKER_DATA_DIR=/var/lib/locker`.

use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::api::ApiConfig;
use crate::broker::BrokerConfig;
use crate::commands::CommandsConfig;
use crate::edge::EdgeConfig;
use crate::ingest::IngestConfig;

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    #[error("configuration: {0}")]
    Invalid(String),
}

/// Everything `locker-gateway` can be configured with.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct GatewayConfig {
    /// Where the sled database lives.
    pub data_dir: PathBuf,
    /// The mTLS listener for cabinets and integrators.
    pub edge: EdgeConfig,
    /// The embedded rumqttd broker.
    pub broker: BrokerConfig,
    /// Ingest of uplinks.
    pub ingest: IngestConfig,
    /// The command queue and dispatcher.
    pub commands: CommandsConfig,
    /// The HTTP API and /metrics.
    pub api: ApiConfig,
    /// The parcel domain (pickup windows, reservations, codes).
    pub parcels: crate::parcels::ParcelsConfig,
    /// The rules engine: rule kinds, thresholds, per-site overrides.
    pub rules: crate::rules::RulesConfig,
    /// Webhooks to integrators and carriers' tracking updates: delivery, retries, carriers.
    pub webhooks: crate::outbound::WebhooksConfig,
    /// Recipient notifications: providers, routing per site and carrier, message files.
    pub notifications: crate::outbound::notify::NotifyConfig,
    /// The operations console at `/console/`: sessions and the live feed.
    pub console: crate::console::ConsoleConfig,
    /// Cluster mode: several nodes on a NATS JetStream cluster (off by default).
    pub cluster: crate::cluster::ClusterConfig,
    /// How long a shutdown may take, ms: the edge closes, ingest commits, the actors save,
    /// the API drains; whatever is still running then is aborted (and logged by name).
    pub shutdown_grace_ms: u64,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("data"),
            edge: EdgeConfig::default(),
            broker: BrokerConfig::default(),
            ingest: IngestConfig::default(),
            commands: CommandsConfig::default(),
            api: ApiConfig::default(),
            parcels: crate::parcels::ParcelsConfig::default(),
            rules: crate::rules::RulesConfig::default(),
            webhooks: crate::outbound::WebhooksConfig::default(),
            notifications: crate::outbound::notify::NotifyConfig::default(),
            console: crate::console::ConsoleConfig::default(),
            cluster: crate::cluster::ClusterConfig::default(),
            shutdown_grace_ms: 10_000,
        }
    }
}

impl GatewayConfig {
    /// Loads defaults, then `file` (if given), then `LOCKER_*` environment variables
    /// (`__` separates nested keys). Relative paths in the file are resolved against the
    /// file's directory.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(GatewayConfig::default()));
        if let Some(f) = file {
            if !f.exists() {
                return Err(ConfigError::Invalid(format!(
                    "{} does not exist",
                    f.display()
                )));
            }
            fig = fig.merge(Toml::file(f));
        }
        let mut cfg: GatewayConfig = fig
            .merge(Env::prefixed("LOCKER_").split("__"))
            .extract()
            .map_err(|e| ConfigError::Load(Box::new(e)))?;
        if let Some(base) = file.and_then(Path::parent) {
            cfg.resolve_paths(base);
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Makes relative paths relative to `base`.
    pub fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() && !p.as_os_str().is_empty() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.data_dir);
        fix(&mut self.edge.ca_cert);
        fix(&mut self.edge.server_cert);
        fix(&mut self.edge.server_key);
        if let Some(c) = self.edge.crl.as_mut() {
            fix(c);
        }
        if let Some(k) = self.edge.tls_ticket_key_file.as_mut() {
            fix(k);
        }
        if let Some(t) = self.api.tls.as_mut() {
            fix(&mut t.cert);
            fix(&mut t.key);
        }
        self.notifications.resolve_paths(base);
    }

    /// Checks what serde cannot: values the gateway cannot run with (zero-sized batches,
    /// windows and limits, a default TTL above the maximum, short tokens).
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.edge
            .validate()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        self.cluster
            .validate()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        if self.api.max_connections == 0 || self.api.header_read_timeout_ms == 0 {
            return Err(ConfigError::Invalid(
                "api.max_connections and api.header_read_timeout_ms must be above 0".into(),
            ));
        }
        if self.api.request_timeout_ms <= self.api.max_wait_ms {
            return Err(ConfigError::Invalid(
                "api.request_timeout_ms must be above api.max_wait_ms".into(),
            ));
        }
        let (b, c) = (&self.broker, &self.commands);
        for (key, v) in [
            ("ingest.max_batch", self.ingest.max_batch as u64),
            ("broker.max_connections", b.max_connections as u64),
            ("broker.max_payload_size", b.max_payload_size as u64),
            ("broker.max_inflight_count", b.max_inflight_count as u64),
            (
                "broker.max_outgoing_packet_count",
                b.max_outgoing_packet_count,
            ),
            ("broker.max_segment_size", b.max_segment_size as u64),
            ("broker.max_segment_count", b.max_segment_count as u64),
            ("commands.default_ttl_ms", u64::from(c.default_ttl_ms)),
            ("commands.max_ttl_ms", u64::from(c.max_ttl_ms)),
            ("commands.resend_after_ms", c.resend_after_ms),
            ("commands.resend_max_ms", c.resend_max_ms),
            ("commands.tick_ms", c.tick_ms),
            ("shutdown_grace_ms", self.shutdown_grace_ms),
        ] {
            if v == 0 {
                return Err(ConfigError::Invalid(format!(
                    "{key} must be greater than zero"
                )));
            }
        }
        if c.resend_max_ms < c.resend_after_ms {
            return Err(ConfigError::Invalid(format!(
                "commands.resend_max_ms ({}) is below commands.resend_after_ms ({})",
                c.resend_max_ms, c.resend_after_ms
            )));
        }
        if c.default_ttl_ms > c.max_ttl_ms {
            return Err(ConfigError::Invalid(format!(
                "commands.default_ttl_ms ({}) is above commands.max_ttl_ms ({})",
                c.default_ttl_ms, c.max_ttl_ms
            )));
        }
        if self.api.tokens.keys().any(|t| t.len() < 16) {
            return Err(ConfigError::Invalid(
                "api.tokens: every token needs at least 16 characters".into(),
            ));
        }
        for spec in self.api.tokens.values() {
            spec.validate().map_err(ConfigError::Invalid)?;
        }
        self.parcels.validate().map_err(ConfigError::Invalid)?;
        self.console.validate().map_err(ConfigError::Invalid)?;
        self.rules
            .compile()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        Ok(())
    }

    /// Checks that every file the gateway reads at start can be opened (the fleet CA, the
    /// server certificate and key, the CRL); `locker-gateway --check` runs it. Blocking.
    pub fn check_files(&self) -> Result<(), ConfigError> {
        let e = &self.edge;
        let tls = self.api.tls.as_ref();
        let files = [
            ("edge.ca_cert", Some(&e.ca_cert)),
            ("edge.server_cert", Some(&e.server_cert)),
            ("edge.server_key", Some(&e.server_key)),
            ("edge.crl", e.crl.as_ref()),
            ("api.tls.cert", tls.map(|t| &t.cert)),
            ("api.tls.key", tls.map(|t| &t.key)),
        ];
        for (key, path) in files {
            let Some(path) = path else { continue };
            if let Err(err) = std::fs::File::open(path) {
                return Err(ConfigError::Invalid(format!(
                    "{key}: cannot read {}: {err}",
                    path.display()
                )));
            }
        }
        Ok(())
    }
}
