//! The edge's Prometheus metrics (all named `locker_edge_*`) and the closed set of reasons a
//! connection is refused or closed for ([`Reason`]).

use prometheus::{
    Counter, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
};

/// Why the edge refused a client or closed its connection. Each is a `reason` label value of
/// `locker_edge_rejections_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// The client presented no certificate.
    NoCert,
    /// The certificate does not chain to the fleet CA, is expired, or is otherwise invalid.
    BadCert,
    /// The certificate's serial is on the CRL (at handshake, or later while connected).
    Revoked,
    /// The certificate is valid but its subject is not a usable identity (role or name).
    BadIdentity,
    /// TLS plus CONNECT did not finish within the handshake deadline.
    HandshakeTimeout,
    /// The TLS handshake failed for another reason (not TLS, bad protocol, reset).
    TlsError,
    /// Refused at accept because `max_connections` were open.
    TooManyConnections,
    /// The client closed (or broke) the connection after TLS, before sending CONNECT.
    ClosedEarly,
    /// The first MQTT packet was not CONNECT.
    NotConnectFirst,
    /// CONNECT asked for an MQTT version other than 3.1.1.
    ProtocolVersion,
    /// PUBLISH to a topic the identity may not publish to.
    AclPublish,
    /// SUBSCRIBE to a filter outside the identity's ACL.
    AclSubscribe,
    /// A will topic the identity may not publish to.
    AclWill,
    /// Bytes that do not parse as an MQTT 3.1.1 packet.
    Malformed,
    /// A packet larger than `max_packet_bytes`.
    Oversized,
    /// A packet a client must never send (a second CONNECT, CONNACK, SUBACK, ...).
    UnexpectedPacket,
    /// The embedded broker refused the link (connection limit reached) or has stopped.
    UpstreamUnavailable,
    /// CONNECT asked for keep alive 0 (refused, as rumqttd does: a silent client would hold
    /// its connection forever).
    ZeroKeepAlive,
    /// Nothing came from the client for 1.5 times its keep alive, or it did not take what the
    /// edge had to send within that time.
    KeepAliveTimeout,
    /// Refused at accept: `max_handshakes_per_address` handshakes from this address running.
    TooManyFromAddress,
    /// A SUBSCRIBE beyond `max_filters_per_client` distinct filters.
    TooManyFilters,
    /// The client certificate's validity ended (at a resumed handshake, or while connected).
    CertExpired,
    /// A QoS 2 PUBLISH or acknowledgement (the edge speaks QoS 0 and 1).
    Qos2,
    /// An MQTT 5 topic alias that is 0, above the announced maximum, or never set.
    TopicAlias,
    /// A SUBSCRIBE filter that is not a valid topic filter (refused with a SUBACK code).
    InvalidFilter,
    /// Refused right after its ClientHello because `max_handshakes_in_progress` were running
    /// (a client offering no session to resume is refused at half of it): the client backs off
    /// and retries instead of every handshake slowing down together.
    Busy,
    /// Not a refusal (and not in [`Reason::ALL`]): a cabinet's retain flag was cleared and
    /// the message passed on; counted in `locker_edge_retain_cleared_total`, logged once.
    RetainCleared,
}

impl Reason {
    /// Every reason, for pre-registering label values.
    pub const ALL: &'static [Reason] = &[
        Reason::NoCert,
        Reason::BadCert,
        Reason::Revoked,
        Reason::BadIdentity,
        Reason::HandshakeTimeout,
        Reason::TlsError,
        Reason::TooManyConnections,
        Reason::ClosedEarly,
        Reason::NotConnectFirst,
        Reason::ProtocolVersion,
        Reason::AclPublish,
        Reason::AclSubscribe,
        Reason::AclWill,
        Reason::Malformed,
        Reason::Oversized,
        Reason::UnexpectedPacket,
        Reason::UpstreamUnavailable,
        Reason::ZeroKeepAlive,
        Reason::KeepAliveTimeout,
        Reason::TooManyFromAddress,
        Reason::TooManyFilters,
        Reason::CertExpired,
        Reason::Qos2,
        Reason::TopicAlias,
        Reason::InvalidFilter,
        Reason::Busy,
    ];

    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NoCert => "no_cert",
            Reason::BadCert => "bad_cert",
            Reason::Revoked => "revoked",
            Reason::BadIdentity => "bad_identity",
            Reason::HandshakeTimeout => "handshake_timeout",
            Reason::TlsError => "tls_error",
            Reason::TooManyConnections => "too_many_connections",
            Reason::ClosedEarly => "closed_before_connect",
            Reason::NotConnectFirst => "not_connect_first",
            Reason::ProtocolVersion => "protocol_version",
            Reason::AclPublish => "acl_publish",
            Reason::AclSubscribe => "acl_subscribe",
            Reason::AclWill => "acl_will",
            Reason::Malformed => "malformed",
            Reason::Oversized => "oversized",
            Reason::UnexpectedPacket => "unexpected_packet",
            Reason::UpstreamUnavailable => "upstream_unavailable",
            Reason::ZeroKeepAlive => "zero_keep_alive",
            Reason::KeepAliveTimeout => "keep_alive_timeout",
            Reason::TooManyFromAddress => "too_many_from_address",
            Reason::TooManyFilters => "too_many_filters",
            Reason::CertExpired => "cert_expired",
            Reason::Qos2 => "qos2_unsupported",
            Reason::TopicAlias => "topic_alias",
            Reason::InvalidFilter => "invalid_filter",
            Reason::Busy => "busy",
            Reason::RetainCleared => "retain_cleared",
        }
    }

    /// Whether this is an ACL violation by an authenticated client (also counted in
    /// `locker_edge_acl_violations_total`).
    pub fn is_acl(self) -> bool {
        matches!(
            self,
            Reason::AclPublish | Reason::AclSubscribe | Reason::AclWill
        )
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The edge's metric handles (cheap to clone: each is an `Arc` inside).
#[derive(Clone)]
pub(crate) struct EdgeMetrics {
    pub open: IntGaugeVec,
    pub accepted: IntCounter,
    pub sessions: IntCounterVec,
    pub rejections: IntCounterVec,
    pub acl_violations: IntCounterVec,
    pub handshake_seconds: Histogram,
    pub handshakes_in_flight: IntGauge,
    pub handshakes: IntCounterVec,
    pub bytes_in: IntCounter,
    pub bytes_out: IntCounter,
    pub crl_reloads: IntCounterVec,
    pub revoked_serials: IntGauge,
    pub crl_number: IntGauge,
    pub retain_cleared: IntCounterVec,
    pub throttled_seconds: Counter,
    pub throttled: IntCounter,
    pub protocols: IntCounterVec,
    pub dropped: IntCounterVec,
    pub shared: SharedMetrics,
}

impl EdgeMetrics {
    /// Creates the metrics and registers them into `registry`.
    pub fn register(registry: &prometheus::Registry) -> prometheus::Result<Self> {
        let m = Self {
            open: IntGaugeVec::new(
                Opts::new(
                    "locker_edge_connections_open",
                    "Relayed MQTT connections currently open, by role",
                ),
                &["role"],
            )?,
            accepted: IntCounter::new(
                "locker_edge_accepted_total",
                "TCP connections accepted on the edge listener",
            )?,
            sessions: IntCounterVec::new(
                Opts::new(
                    "locker_edge_sessions_total",
                    "Connections that passed TLS, identity and CONNECT checks and were relayed, by role",
                ),
                &["role"],
            )?,
            rejections: IntCounterVec::new(
                Opts::new(
                    "locker_edge_rejections_total",
                    "Refusals by the edge, by reason: connections refused or closed, and packets refused with a reason code while the connection stays (SUBACK failures, MQTT 5 PUBACK 0x87)",
                ),
                &["reason"],
            )?,
            acl_violations: IntCounterVec::new(
                Opts::new(
                    "locker_edge_acl_violations_total",
                    "Connections closed for an ACL violation (publish, subscribe, will), by reason",
                ),
                &["reason"],
            )?,
            handshake_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "locker_edge_handshake_duration_seconds",
                    "Time from TCP accept to a completed TLS handshake",
                )
                .buckets(vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ]),
            )?,
            handshakes_in_flight: IntGauge::new(
                "locker_edge_handshakes_in_flight",
                "TLS handshakes currently running",
            )?,
            handshakes: IntCounterVec::new(
                Opts::new(
                    "locker_edge_tls_handshakes_total",
                    "Completed TLS handshakes, by kind (full, resumed)",
                ),
                &["kind"],
            )?,
            bytes_in: IntCounter::new(
                "locker_edge_bytes_in_total",
                "MQTT bytes received from clients (and handed to the broker as packets)",
            )?,
            bytes_out: IntCounter::new(
                "locker_edge_bytes_out_total",
                "MQTT bytes sent from the broker to clients",
            )?,
            crl_reloads: IntCounterVec::new(
                Opts::new(
                    "locker_edge_crl_reloads_total",
                    "Revocation list reloads, by result (ok, error, stale: a CRL Number not above the installed one)",
                ),
                &["result"],
            )?,
            revoked_serials: IntGauge::new(
                "locker_edge_revoked_serials",
                "Certificate serials on the loaded revocation list",
            )?,
            crl_number: IntGauge::new(
                "locker_edge_crl_number",
                "CRL Number of the installed revocation list (a reload must carry a higher one)",
            )?,
            retain_cleared: IntCounterVec::new(
                Opts::new(
                    "locker_edge_retain_cleared_total",
                    "Cabinet publishes and wills whose retain flag the edge cleared (delivered, never stored), by what (publish, will)",
                ),
                &["what"],
            )?,
            throttled_seconds: Counter::new(
                "locker_edge_uplink_throttled_seconds_total",
                "Time cabinet sockets were not read because their uplink rate limit was reached",
            )?,
            throttled: IntCounter::new(
                "locker_edge_uplink_throttled_total",
                "Times a cabinet's uplink was paused by its rate limit",
            )?,
            protocols: IntCounterVec::new(
                Opts::new(
                    "locker_edge_sessions_by_protocol_total",
                    "Sessions relayed, by MQTT protocol version (3.1.1 or 5) and role",
                ),
                &["protocol", "role"],
            )?,
            dropped: IntCounterVec::new(
                Opts::new(
                    "locker_edge_dropped_total",
                    "Messages the edge did not send to a client, by reason (client_max_packet: larger than the client's MQTT 5 maximum packet size; expired: its MQTT 5 message expiry passed)",
                ),
                &["reason"],
            )?,
            shared: SharedMetrics::register(registry)?,
        };
        registry.register(Box::new(m.open.clone()))?;
        registry.register(Box::new(m.accepted.clone()))?;
        registry.register(Box::new(m.sessions.clone()))?;
        registry.register(Box::new(m.rejections.clone()))?;
        registry.register(Box::new(m.acl_violations.clone()))?;
        registry.register(Box::new(m.handshake_seconds.clone()))?;
        registry.register(Box::new(m.handshakes_in_flight.clone()))?;
        registry.register(Box::new(m.handshakes.clone()))?;
        registry.register(Box::new(m.bytes_in.clone()))?;
        registry.register(Box::new(m.bytes_out.clone()))?;
        registry.register(Box::new(m.crl_reloads.clone()))?;
        registry.register(Box::new(m.revoked_serials.clone()))?;
        registry.register(Box::new(m.crl_number.clone()))?;
        registry.register(Box::new(m.retain_cleared.clone()))?;
        registry.register(Box::new(m.throttled_seconds.clone()))?;
        registry.register(Box::new(m.throttled.clone()))?;
        registry.register(Box::new(m.protocols.clone()))?;
        registry.register(Box::new(m.dropped.clone()))?;
        for d in ["client_max_packet", "expired"] {
            m.dropped.with_label_values(&[d]);
        }
        for r in Reason::ALL {
            m.rejections.with_label_values(&[r.as_str()]);
            if r.is_acl() {
                m.acl_violations.with_label_values(&[r.as_str()]);
            }
        }
        for role in ["cabinet", "integrator"] {
            m.open.with_label_values(&[role]);
            m.sessions.with_label_values(&[role]);
        }
        for kind in ["full", "resumed"] {
            m.handshakes.with_label_values(&[kind]);
        }
        for what in ["publish", "will"] {
            m.retain_cleared.with_label_values(&[what]);
        }
        for res in ["ok", "error", "stale"] {
            m.crl_reloads.with_label_values(&[res]);
        }
        Ok(m)
    }

    /// Counts one refused or closed connection.
    pub fn reject(&self, reason: Reason) {
        self.rejections.with_label_values(&[reason.as_str()]).inc();
        if reason.is_acl() {
            self.acl_violations
                .with_label_values(&[reason.as_str()])
                .inc();
        }
    }
}

/// The shared-subscription metrics.
#[derive(Clone)]
pub(crate) struct SharedMetrics {
    pub groups: IntGauge,
    pub members: IntGauge,
    pub delivered: IntCounter,
    pub redelivered: IntCounter,
}

impl SharedMetrics {
    pub fn register(registry: &prometheus::Registry) -> prometheus::Result<Self> {
        let m = Self {
            groups: IntGauge::new(
                "locker_edge_shared_groups",
                "Shared subscription groups (integrator, group, filter) with a router link",
            )?,
            members: IntGauge::new(
                "locker_edge_shared_members",
                "Members of shared subscription groups",
            )?,
            delivered: IntCounter::new(
                "locker_edge_shared_delivered_total",
                "Messages handed to a member of a shared subscription group",
            )?,
            redelivered: IntCounter::new(
                "locker_edge_shared_redelivered_total",
                "Messages given to another member because the member that had them left unacknowledged",
            )?,
        };
        registry.register(Box::new(m.groups.clone()))?;
        registry.register(Box::new(m.members.clone()))?;
        registry.register(Box::new(m.delivered.clone()))?;
        registry.register(Box::new(m.redelivered.clone()))?;
        Ok(m)
    }
}
