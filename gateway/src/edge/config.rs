//! The edge's configuration section ([`EdgeConfig`]) and its validation, including the
//! integrator ACLs (which may never reach a cabinet's `down` topics).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use locker_schemas::{CabinetId, DownKind, Filter, Topic};
use serde::{Deserialize, Serialize};

/// Why an edge configuration is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("edge.{field} must be greater than zero")]
    Zero { field: &'static str },
    #[error(
        "integrator ACL entry {filter:?} of {integrator:?} matches cabinet downlink topics \
         (e.g. {example:?}); integrators may never read or reach a cabinet's down topics"
    )]
    AclMatchesDownlinks {
        integrator: String,
        filter: String,
        example: String,
    },
    #[error("edge.tls_ticket_rotation_s must be between 1 and {MAX_TICKET_ROTATION_S}, not {0}")]
    TicketRotation(u32),
    #[error("integrator name {0:?} in edge.integrator_acls is not a valid identity: {1}")]
    BadIntegratorName(String, locker_schemas::IdError),
}

/// The longest a TLS ticket key may be used (6 hours: rustls' own ticket key life, which
/// the edge's rotation sits on top of).
pub const MAX_TICKET_ROTATION_S: u32 = 6 * 60 * 60;

/// The edge listener: TLS termination, identity, ACLs and limits. Every field has a default;
/// durations are in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EdgeConfig {
    /// Address the mTLS MQTT listener binds (cabinets and integrators connect here).
    pub listen: SocketAddr,
    /// Deadline for one client from TCP accept to an accepted CONNECT (TLS handshake plus the
    /// first MQTT packet). A client that has not finished by then is dropped. The same time
    /// is allowed again for its broker session to start (takeover of an older connection of
    /// the same identity, then the link).
    pub handshake_timeout_ms: u64,
    /// Phase deadline: from TCP accept to a complete TLS ClientHello.
    pub hello_timeout_ms: u64,
    /// Phase deadline: from the ClientHello to a completed TLS handshake (longer than the
    /// others: in a reconnect storm a handshake may queue for CPU).
    pub tls_timeout_ms: u64,
    /// Phase deadline: from the completed TLS handshake to a complete MQTT CONNECT.
    pub connect_timeout_ms: u64,
    /// No longer used (kept so older configuration files still load; a warning is logged).
    /// Handshakes never wait for a slot: a client waiting for bytes holds nothing scarce, and
    /// handshakes in progress are bounded by `max_connections` and the phase deadlines.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_concurrent_handshakes: Option<usize>,
    /// Connections still in their handshake (accepted, CONNECT not yet accepted) allowed
    /// from one IP address; more are refused at accept. 0 turns the limit off. Cabinets on
    /// 4G share carrier NAT addresses: keep it off or generous.
    pub max_handshakes_per_address: usize,
    /// Connections (handshaking or established) above this number are refused at accept.
    pub max_connections: usize,
    /// Admission control for reconnect storms: TLS handshakes past their ClientHello (the part
    /// that costs CPU) allowed at once. A new one beyond it is closed at once (counted as
    /// `busy`) and the client retries after its jittered backoff, so handshakes in progress
    /// finish instead of all slowing down past their deadlines together. Clients that offer a
    /// session to resume (they were connected before; an abbreviated handshake is cheap) may
    /// use all of it, others only half. 0 turns it off.
    pub max_handshakes_in_progress: usize,
    /// A handshake counted in `max_handshakes_in_progress` that is still waiting for its client
    /// after this long gives its place back (it is no longer using CPU), so clients that stall
    /// mid-handshake hold a place for at most this long.
    pub admission_hold_ms: u64,
    /// Most distinct subscription filters one integrator connection may hold; a filter
    /// beyond it is refused with a SUBACK failure code (0x80 in 3.1.1, 0x97 "quota exceeded"
    /// in MQTT 5) and the connection stays. (Cabinets may subscribe only to their own downlink
    /// filters, so they never hold more than a handful.)
    pub max_filters_per_client: usize,
    /// MQTT 5: the highest topic alias a client may use towards the edge (announced in
    /// CONNACK; 0 turns inbound aliases off), and the most outbound aliases the edge keeps
    /// per connection (the client's own maximum still applies).
    pub topic_alias_max: u16,
    /// MQTT 5: the receive maximum announced to clients (unacknowledged QoS 1 publishes a
    /// cabinet may have in flight towards the edge).
    pub receive_max: u16,
    /// MQTT 5: the longest session expiry interval granted, in seconds; a client asking for
    /// more (or for "never") gets this, and CONNACK says so.
    pub max_session_expiry_s: u32,
    /// Sustained uplink PUBLISH rate allowed per cabinet connection (messages per second).
    /// Above it the edge stops reading that cabinet's socket until tokens refill (TCP pushes
    /// back; nothing is dropped). 0 turns the limit off.
    pub uplink_rate_per_s: u32,
    /// Burst of uplink publishes a cabinet may send above the sustained rate (the token
    /// bucket's size); covers an outbox replay after an outage.
    pub uplink_burst: u32,
    /// Largest MQTT packet a client may send (remaining length, bytes); larger ones close
    /// the connection.
    pub max_packet_bytes: usize,
    /// PEM file with the fleet CA certificate(s) that client certificates must chain to.
    pub ca_cert: PathBuf,
    /// PEM file with the server certificate chain the edge presents.
    pub server_cert: PathBuf,
    /// PEM file with the server's private key.
    pub server_key: PathBuf,
    /// PEM file with the fleet CA's certificate revocation list; re-read when it changes.
    /// `None` disables revocation checking.
    pub crl: Option<PathBuf>,
    /// How often the CRL file's modification time and size are checked for changes.
    pub crl_check_interval_ms: u64,
    /// Issue stateless TLS session tickets (encrypted with keys that rotate), so a
    /// reconnecting client resumes with an abbreviated handshake. The CRL and the certificate's
    /// validity are checked on resumed handshakes too.
    pub tls_tickets: bool,
    /// File that keeps the ticket keys across restarts (mode 0600; as sensitive as the server
    /// key), so the fleet resumes its sessions after a gateway restart instead of paying full
    /// handshakes in the reconnect storm. Default (`None`): `<data_dir>/tls-ticket-keys`; the
    /// edge on its own (no gateway around it) keeps the keys in memory only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_ticket_key_file: Option<PathBuf>,
    /// How long one ticket key encrypts new tickets, in seconds (1 to 21,600); a ticket is
    /// accepted for up to twice this, then the client makes a full handshake.
    pub tls_ticket_rotation_s: u32,
    /// Server-side TLS sessions kept in memory for clients that resume by session id (TLS 1.2
    /// clients without tickets, and every client when `tls_tickets` is off). 0 turns it off.
    pub tls_session_cache: usize,
    /// Integrator name (the certificate's CN) -> the subscription filters it may use; a
    /// SUBSCRIBE filter must lie within one of them. Entries may not match any cabinet
    /// `down` topic. Integrators never publish.
    pub integrator_acls: BTreeMap<String, Vec<Filter>>,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8883)),
            handshake_timeout_ms: 10_000,
            hello_timeout_ms: 5_000,
            tls_timeout_ms: 8_000,
            connect_timeout_ms: 5_000,
            max_concurrent_handshakes: None,
            max_handshakes_per_address: 0,
            max_connections: 20_000,
            max_handshakes_in_progress: 1_024,
            admission_hold_ms: 1_000,
            max_filters_per_client: 64,
            topic_alias_max: 10,
            receive_max: 100,
            max_session_expiry_s: 86_400,
            uplink_rate_per_s: 100,
            uplink_burst: 2_000,
            max_packet_bytes: 64 * 1024,
            ca_cert: PathBuf::from("pki/ca.pem"),
            server_cert: PathBuf::from("pki/server.pem"),
            server_key: PathBuf::from("pki/server.key"),
            crl: Some(PathBuf::from("pki/crl.pem")),
            crl_check_interval_ms: 2_000,
            tls_tickets: true,
            tls_ticket_key_file: None,
            tls_ticket_rotation_s: MAX_TICKET_ROTATION_S,
            tls_session_cache: 20_000,
            integrator_acls: BTreeMap::new(),
        }
    }
}

impl EdgeConfig {
    /// How long an admitted handshake holds its place.
    pub fn admission_hold(&self) -> Duration {
        Duration::from_millis(self.admission_hold_ms)
    }

    /// The handshake deadline as a duration.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }

    /// The phase deadline for the ClientHello.
    pub fn hello_timeout(&self) -> Duration {
        Duration::from_millis(self.hello_timeout_ms)
    }

    /// The phase deadline for the rest of the TLS handshake.
    pub fn tls_timeout(&self) -> Duration {
        Duration::from_millis(self.tls_timeout_ms)
    }

    /// The phase deadline for the CONNECT.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    /// The CRL poll interval as a duration.
    pub fn crl_check_interval(&self) -> Duration {
        Duration::from_millis(self.crl_check_interval_ms)
    }

    /// Checks limits and the integrator ACLs.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (field, v) in [
            ("handshake_timeout_ms", self.handshake_timeout_ms as usize),
            ("hello_timeout_ms", self.hello_timeout_ms as usize),
            ("tls_timeout_ms", self.tls_timeout_ms as usize),
            ("connect_timeout_ms", self.connect_timeout_ms as usize),
            ("max_filters_per_client", self.max_filters_per_client),
            ("receive_max", usize::from(self.receive_max)),
            ("max_connections", self.max_connections),
            ("max_packet_bytes", self.max_packet_bytes),
            ("crl_check_interval_ms", self.crl_check_interval_ms as usize),
        ] {
            if v == 0 {
                return Err(ConfigError::Zero { field });
            }
        }
        if !(1..=MAX_TICKET_ROTATION_S).contains(&self.tls_ticket_rotation_s) {
            return Err(ConfigError::TicketRotation(self.tls_ticket_rotation_s));
        }
        if self.uplink_rate_per_s > 0 && self.uplink_burst == 0 {
            return Err(ConfigError::Zero {
                field: "uplink_burst",
            });
        }
        for (name, filters) in &self.integrator_acls {
            CabinetId::validate(name)
                .map_err(|e| ConfigError::BadIntegratorName(name.clone(), e))?;
            for f in filters {
                if let Some(example) = downlink_matched_by(f) {
                    return Err(ConfigError::AclMatchesDownlinks {
                        integrator: name.clone(),
                        filter: f.to_string(),
                        example,
                    });
                }
            }
        }
        Ok(())
    }
}

/// A cabinet downlink topic that `filter` matches, if there is any.
///
/// Every downlink topic is `lk/v1/{cabinet}/down/{kind}`. If the filter's cabinet level is a
/// literal it can only match that cabinet; otherwise (a wildcard, or the filter ends before
/// it) any cabinet stands for all. Trying each kind then decides exactly.
pub(crate) fn downlink_matched_by(filter: &Filter) -> Option<String> {
    let cabinet_level = filter.as_str().split('/').nth(2);
    let cabinet = cabinet_level
        .and_then(|l| CabinetId::new(l).ok())
        .or_else(|| CabinetId::new("x").ok())?;
    DownKind::ALL
        .iter()
        .map(|k| Topic::Down(cabinet.clone(), *k).to_string())
        .find(|t| filter.matches(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(s: &str) -> Filter {
        Filter::new(s).expect("valid filter")
    }

    #[test]
    fn acl_entries_reaching_downlinks_are_refused() {
        for bad in [
            "#",
            "lk/#",
            "lk/v1/#",
            "lk/v1/+/#",
            "lk/v1/+/+/#",
            "lk/v1/+/+/+",
            "lk/v1/A/down/cmd",
            "lk/v1/A/+/creds",
            "+/+/+/+/+",
            "lk/v1/A/down/ack/#",
        ] {
            assert!(downlink_matched_by(&f(bad)).is_some(), "{bad}");
        }
        for good in [
            "lk/v1/+/up/#",
            "lk/v1/A/up/door",
            "lk/v1/+/gw/#",
            "lk/v1/a/b/+/#",
            "lk/v1/+/down/nope",
            "lk/v2/#",
            "$SYS/#",
            "lk/v1/+/+/door",
        ] {
            assert!(downlink_matched_by(&f(good)).is_none(), "{good}");
        }
    }

    #[test]
    fn defaults_validate_and_zero_limits_do_not() {
        assert!(EdgeConfig::default().validate().is_ok());
        let cfg = EdgeConfig {
            max_connections: 0,
            ..EdgeConfig::default()
        };
        assert!(matches!(cfg.validate(), Err(ConfigError::Zero { .. })));
        for bad in [0, MAX_TICKET_ROTATION_S + 1] {
            let cfg = EdgeConfig {
                tls_ticket_rotation_s: bad,
                ..EdgeConfig::default()
            };
            assert!(matches!(
                cfg.validate(),
                Err(ConfigError::TicketRotation(_))
            ));
        }
        let mut cfg = EdgeConfig::default();
        cfg.integrator_acls
            .insert("erp".into(), vec![f("lk/v1/+/+/#")]);
        assert!(matches!(
            cfg.validate(),
            Err(ConfigError::AclMatchesDownlinks { .. })
        ));
    }
}
