//! The MQTT protocol version a connection speaks (3.1.1 or 5) and what MQTT 5 makes a session
//! keep: the limits the client declared in its CONNECT (receive maximum, maximum packet size,
//! topic alias maximum), the topic aliases in both directions (bounded), and how an edge
//! refusal is said in each version (CONNACK return and reason codes, SUBACK and PUBACK reason
//! codes, DISCONNECT reason codes). Packets are read and written with rumqttd's own codecs
//! (`protocol::v4::V4`, `protocol::v5::V5`); nothing is re-implemented here.

use std::collections::HashMap;

use bytes::{Bytes, BytesMut};
use rumqttd::protocol::v4::{FixedHeader, PacketType, V4};
use rumqttd::protocol::v5::V5;
use rumqttd::protocol::{
    ConnAck, ConnAckProperties, ConnectProperties, ConnectReturnCode, Disconnect,
    DisconnectProperties, DisconnectReasonCode, Error as MqttError, Packet, Protocol, Publish,
    PublishProperties, SubscribeReasonCode,
};

use super::metrics::Reason;

/// The protocol version of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Version {
    /// MQTT 3.1.1 (protocol level 4).
    V4,
    /// MQTT 5 (protocol level 5).
    V5,
}

impl Version {
    /// The label used in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Version::V4 => "3.1.1",
            Version::V5 => "5",
        }
    }
}

/// The client's limits from an MQTT 5 CONNECT (MQTT 3.1.1 declares none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClientLimits {
    /// Most unacknowledged QoS 1 PUBLISHes the client takes (65,535 when not declared).
    pub receive_max: u16,
    /// Largest packet the client takes, whole (fixed header included); `usize::MAX` when not
    /// declared.
    pub max_packet: usize,
    /// Highest topic alias the client takes from the edge (0: none).
    pub topic_alias_max: u16,
}

impl Default for ClientLimits {
    fn default() -> Self {
        Self {
            receive_max: u16::MAX,
            max_packet: usize::MAX,
            topic_alias_max: 0,
        }
    }
}

impl ClientLimits {
    /// The limits declared in CONNECT properties (absent ones keep their defaults; a receive
    /// maximum or maximum packet size of 0 is a protocol error, refused by the caller).
    pub fn from_properties(p: Option<&ConnectProperties>) -> Self {
        let mut l = Self::default();
        if let Some(p) = p {
            if let Some(r) = p.receive_maximum {
                l.receive_max = r;
            }
            if let Some(m) = p.max_packet_size {
                l.max_packet = usize::try_from(m).unwrap_or(usize::MAX);
            }
            if let Some(a) = p.topic_alias_max {
                l.topic_alias_max = a;
            }
        }
        l
    }
}

/// Why a topic alias in a client's PUBLISH cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AliasError {
    /// Alias 0, or above the maximum the edge announced.
    Invalid(u16),
    /// An empty topic with an alias the client never set.
    Unknown(u16),
}

/// One connection's protocol state.
pub(crate) struct Proto {
    pub version: Version,
    pub client: ClientLimits,
    /// Highest topic alias the client may use towards the edge (announced in CONNACK).
    alias_in_max: u16,
    /// Inbound aliases the client set (at most `alias_in_max` of them).
    alias_in: HashMap<u16, Bytes>,
    /// Outbound aliases the edge set: topic -> alias, and alias - 1 -> topic.
    alias_out: HashMap<Bytes, u16>,
    alias_out_topics: Vec<Bytes>,
    /// The next outbound alias replaced once all are in use (round robin).
    alias_out_next: usize,
    /// Most outbound aliases the edge keeps for one connection (memory bound), whatever the
    /// client allows.
    alias_out_cap: u16,
}

impl Proto {
    /// MQTT 3.1.1: no limits, no aliases.
    #[cfg(test)]
    pub fn v4() -> Self {
        Self::new(Version::V4, ClientLimits::default(), 0, 0)
    }

    /// `alias_in_max`: the topic alias maximum the edge announces; `alias_out_cap`: most
    /// outbound aliases kept (the client's maximum still applies).
    pub fn new(
        version: Version,
        client: ClientLimits,
        alias_in_max: u16,
        alias_out_cap: u16,
    ) -> Self {
        Self {
            version,
            client,
            alias_in_max,
            alias_in: HashMap::new(),
            alias_out: HashMap::new(),
            alias_out_topics: Vec::new(),
            alias_out_next: 0,
            alias_out_cap,
        }
    }

    pub fn is_v5(&self) -> bool {
        self.version == Version::V5
    }

    /// Reads the next packet of a complete frame at the front of `buf` (framed by `fh`).
    /// Packet types only a server sends, and AUTH, are refused before the codec sees them
    /// (rumqttd's readers treat them as unreachable).
    pub fn read(
        &self,
        fh: &FixedHeader,
        buf: &mut BytesMut,
        max: usize,
    ) -> Result<Packet, ReadError> {
        match fh.packet_type() {
            Ok(
                PacketType::ConnAck
                | PacketType::SubAck
                | PacketType::UnsubAck
                | PacketType::PingResp,
            ) => {
                let kind = fh
                    .packet_type()
                    .map(|k| format!("{k:?}"))
                    .unwrap_or_default();
                return Err(ReadError::Unexpected(format!(
                    "a client may not send {kind}"
                )));
            }
            Ok(_) => {}
            Err(e) => return Err(ReadError::Malformed(e.to_string())),
        }
        if self.is_v5()
            && matches!(fh.packet_type(), Ok(PacketType::Disconnect))
            && fh.remaining_len == 1
        {
            // A v5 DISCONNECT may omit its property length (remaining length 1: the reason
            // code alone); rumqttd's reader wants it, so this one is read here.
            let frame = buf.split_to(fh.frame_length());
            let code = frame.last().copied().unwrap_or(0);
            return Ok(Packet::Disconnect(
                Disconnect {
                    reason_code: client_disconnect_reason(code),
                },
                None,
            ));
        }
        let r = match self.version {
            Version::V4 => V4.read_mut(buf, max),
            Version::V5 => V5.read_mut(buf, max),
        };
        r.map_err(|e| ReadError::Malformed(e.to_string()))
    }

    /// Writes `packet` in this connection's version; returns the encoded length.
    pub fn write(&self, packet: Packet, out: &mut BytesMut) -> Result<usize, MqttError> {
        match self.version {
            Version::V4 => V4.write(strip(packet), out),
            Version::V5 => V5.write(packet, out),
        }
    }

    /// Resolves an inbound topic alias of a v5 PUBLISH: sets the alias (a topic and an alias),
    /// or fills the empty topic from it; the alias property is removed either way.
    pub fn resolve_alias(
        &mut self,
        publish: &mut Publish,
        props: &mut Option<PublishProperties>,
    ) -> Result<(), AliasError> {
        let Some(alias) = props.as_mut().and_then(|p| p.topic_alias.take()) else {
            return Ok(());
        };
        if alias == 0 || alias > self.alias_in_max {
            return Err(AliasError::Invalid(alias));
        }
        if publish.topic.is_empty() {
            match self.alias_in.get(&alias) {
                Some(t) => publish.topic = t.clone(),
                None => return Err(AliasError::Unknown(alias)),
            }
        } else {
            self.alias_in.insert(alias, publish.topic.clone());
        }
        Ok(())
    }

    /// Gives an outbound v5 PUBLISH a topic alias when the client takes them: a topic seen
    /// before goes out as its alias with an empty topic; a new one sets an alias (the oldest
    /// set is replaced once all are in use).
    pub fn alias_outbound(&mut self, publish: &mut Publish, props: &mut Option<PublishProperties>) {
        let max = self.client.topic_alias_max.min(self.alias_out_cap);
        if !self.is_v5() || max == 0 || publish.topic.is_empty() {
            return;
        }
        if let Some(&alias) = self.alias_out.get(&publish.topic) {
            props.get_or_insert_with(Default::default).topic_alias = Some(alias);
            publish.topic = Bytes::new();
            return;
        }
        let alias = if self.alias_out_topics.len() < usize::from(max) {
            self.alias_out_topics.push(publish.topic.clone());
            self.alias_out_topics.len()
        } else {
            let at = self.alias_out_next % self.alias_out_topics.len();
            self.alias_out_next = at + 1;
            let old = std::mem::replace(&mut self.alias_out_topics[at], publish.topic.clone());
            self.alias_out.remove(&old);
            at + 1
        };
        let alias = u16::try_from(alias).unwrap_or(max);
        self.alias_out.insert(publish.topic.clone(), alias);
        props.get_or_insert_with(Default::default).topic_alias = Some(alias);
    }

    /// The SUBACK code of a filter refused for `why`.
    pub fn suback_refusal(&self, why: SubRefusal) -> SubscribeReasonCode {
        match (self.version, why) {
            (Version::V4, _) => SubscribeReasonCode::Failure,
            (Version::V5, SubRefusal::NotAuthorized) => SubscribeReasonCode::NotAuthorized,
            (Version::V5, SubRefusal::Quota) => SubscribeReasonCode::QuotaExceeded,
            (Version::V5, SubRefusal::Invalid) => SubscribeReasonCode::TopicFilterInvalid,
        }
    }

    /// The DISCONNECT the edge sends before it closes a v5 session for `reason` (none in
    /// 3.1.1, where a server just closes).
    pub fn disconnect(&self, reason: DisconnectReasonCode, detail: &str) -> Option<BytesMut> {
        if !self.is_v5() {
            return None;
        }
        let props = DisconnectProperties {
            session_expiry_interval: None,
            reason_string: Some(short(detail)),
            user_properties: Vec::new(),
            server_reference: None,
        };
        let mut out = BytesMut::new();
        let packet = Packet::Disconnect(
            Disconnect {
                reason_code: reason,
            },
            Some(props),
        );
        V5.write(packet, &mut out).ok()?;
        Some(out)
    }
}

/// What a client's DISCONNECT reason code asks of the will: 0x00 discards it, anything else
/// has it published (MQTT 5, 3.1.2.5).
fn client_disconnect_reason(code: u8) -> DisconnectReasonCode {
    if code == 0 {
        DisconnectReasonCode::NormalDisconnection
    } else {
        DisconnectReasonCode::DisconnectWithWillMessage
    }
}

/// Whether a client's DISCONNECT leaves its will to be published (any reason but 0x00).
pub(crate) fn publishes_will(code: DisconnectReasonCode) -> bool {
    code != DisconnectReasonCode::NormalDisconnection
}

/// `$share/{group}/{filter}` split into its group name and filter; `None` if `path` is not a
/// shared subscription. `Some(Err)` for a malformed one (empty group, a wildcard in the name,
/// no filter).
pub(crate) fn parse_shared(path: &str) -> Option<Result<(&str, &str), ()>> {
    let rest = path.strip_prefix("$share/")?;
    let Some((group, filter)) = rest.split_once('/') else {
        return Some(Err(()));
    };
    if group.is_empty() || group.contains(['+', '#']) || filter.is_empty() {
        return Some(Err(()));
    }
    Some(Ok((group, filter)))
}

/// Why a subscription filter is refused (with a SUBACK code, the connection stays).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SubRefusal {
    /// Outside the integrator's ACL.
    NotAuthorized,
    /// Beyond `max_filters_per_client`.
    Quota,
    /// Not a valid topic filter.
    Invalid,
}

/// Why a client's frame could not be read.
#[derive(Debug)]
pub(crate) enum ReadError {
    Malformed(String),
    Unexpected(String),
}

/// A packet without its MQTT 5 properties (for a 3.1.1 client).
fn strip(packet: Packet) -> Packet {
    match packet {
        Packet::Publish(p, _) => Packet::Publish(p, None),
        Packet::PubAck(p, _) => Packet::PubAck(p, None),
        Packet::SubAck(p, _) => Packet::SubAck(p, None),
        Packet::UnsubAck(p, _) => Packet::UnsubAck(p, None),
        Packet::ConnAck(p, _) => Packet::ConnAck(p, None),
        other => other,
    }
}

/// The DISCONNECT reason code of an edge refusal that ends a session.
pub(crate) fn disconnect_code(reason: Reason) -> DisconnectReasonCode {
    match reason {
        Reason::AclPublish | Reason::AclSubscribe | Reason::AclWill => {
            DisconnectReasonCode::NotAuthorized
        }
        Reason::Revoked | Reason::CertExpired => DisconnectReasonCode::NotAuthorized,
        Reason::Malformed => DisconnectReasonCode::MalformedPacket,
        Reason::Oversized => DisconnectReasonCode::PacketTooLarge,
        Reason::KeepAliveTimeout => DisconnectReasonCode::KeepAliveTimeout,
        Reason::TooManyFilters => DisconnectReasonCode::QuotaExceeded,
        Reason::Qos2 => DisconnectReasonCode::QoSNotSupported,
        Reason::TopicAlias => DisconnectReasonCode::TopicAliasInvalid,
        Reason::UpstreamUnavailable => DisconnectReasonCode::ServerBusy,
        Reason::Busy => DisconnectReasonCode::ServerBusy,
        _ => DisconnectReasonCode::ProtocolError,
    }
}

/// The CONNACK that refuses a CONNECT for `reason` in `version`: MQTT 3.1.1 has return codes
/// 1-5 only (protocol version, identifier, unavailable, credentials, authorisation).
pub(crate) fn connack_refusal(version: Version, reason: Reason, detail: &str) -> BytesMut {
    let mut out = BytesMut::new();
    match version {
        Version::V4 => {
            let code = match reason {
                Reason::ProtocolVersion => 1,
                Reason::UpstreamUnavailable | Reason::Busy => 3,
                Reason::AclWill | Reason::Revoked | Reason::CertExpired => 5,
                // No 3.1.1 code says "malformed": the spec's answer is the close alone.
                _ => return out,
            };
            out.extend_from_slice(&[0x20, 0x02, 0x00, code]);
        }
        Version::V5 => {
            let code = match reason {
                Reason::ProtocolVersion => ConnectReturnCode::UnsupportedProtocolVersion,
                Reason::AclWill | Reason::Revoked | Reason::CertExpired => {
                    ConnectReturnCode::NotAuthorized
                }
                Reason::Malformed => ConnectReturnCode::MalformedPacket,
                Reason::UpstreamUnavailable => ConnectReturnCode::ServerUnavailable,
                Reason::Busy => ConnectReturnCode::ServerBusy,
                Reason::Qos2 => ConnectReturnCode::QoSNotSupported,
                _ => ConnectReturnCode::ProtocolError,
            };
            let props = ConnAckProperties {
                reason_string: Some(short(detail)),
                ..empty_connack_properties()
            };
            let ack = ConnAck {
                session_present: false,
                code,
            };
            if V5
                .write(Packet::ConnAck(ack, Some(props)), &mut out)
                .is_err()
            {
                out.clear();
            }
        }
    }
    out
}

/// The user property that carries a message's expiry deadline (Unix ms) from the cabinet's
/// session to the integrators' (the router forwards properties but keeps no receive time);
/// never shown to clients, and one a cabinet sends itself is dropped.
pub(crate) const EXPIRY_KEY: &str = "lk-expires-at-ms";

/// The deadline stamp for a message expiry interval of `secs` from now.
pub(crate) fn expiry_stamp(secs: u32) -> (String, String) {
    let at = locker_schemas::now_millis().saturating_add(u64::from(secs) * 1000);
    (EXPIRY_KEY.to_owned(), at.to_string())
}

/// Turns a deadline stamp back into the time left: `false` if the message expired (it must
/// not be delivered); otherwise the stamp is removed and the interval set to what is left
/// (whole seconds, rounded up).
pub(crate) fn apply_expiry(props: &mut Option<PublishProperties>) -> bool {
    let Some(p) = props.as_mut() else {
        return true;
    };
    let Some(at) = p.user_properties.iter().position(|(k, _)| k == EXPIRY_KEY) else {
        return true;
    };
    let (_, deadline) = p.user_properties.remove(at);
    let Ok(deadline) = deadline.parse::<u64>() else {
        return true;
    };
    let now = locker_schemas::now_millis();
    if now >= deadline {
        return false;
    }
    let left = (deadline - now).div_ceil(1000);
    p.message_expiry_interval = Some(u32::try_from(left).unwrap_or(u32::MAX));
    true
}

/// CONNACK properties with nothing set.
pub(crate) fn empty_connack_properties() -> ConnAckProperties {
    ConnAckProperties {
        session_expiry_interval: None,
        receive_max: None,
        max_qos: None,
        retain_available: None,
        max_packet_size: None,
        assigned_client_identifier: None,
        topic_alias_max: None,
        reason_string: None,
        user_properties: Vec::new(),
        wildcard_subscription_available: None,
        subscription_identifiers_available: None,
        shared_subscription_available: None,
        server_keep_alive: None,
        response_information: None,
        server_reference: None,
        authentication_method: None,
        authentication_data: None,
    }
}

/// A reason string short enough for a packet (and free of client-controlled length).
fn short(detail: &str) -> String {
    const MAX: usize = 120;
    if detail.len() <= MAX {
        return detail.to_owned();
    }
    let cut = (0..=MAX)
        .rev()
        .find(|i| detail.is_char_boundary(*i))
        .unwrap_or(0);
    format!("{}…", &detail[..cut])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish(topic: &'static [u8]) -> Publish {
        Publish::new(Bytes::from_static(topic), Bytes::from_static(b"x"), false)
    }

    #[test]
    fn inbound_aliases_are_bounded_and_resolved() {
        let mut p = Proto::new(Version::V5, ClientLimits::default(), 2, 0);
        let mut set = publish(b"a/b");
        let mut props = Some(PublishProperties {
            topic_alias: Some(2),
            ..Default::default()
        });
        p.resolve_alias(&mut set, &mut props).expect("sets alias 2");
        assert_eq!(
            props.as_ref().and_then(|p| p.topic_alias),
            None,
            "alias removed"
        );
        let mut use_it = publish(b"");
        let mut props = Some(PublishProperties {
            topic_alias: Some(2),
            ..Default::default()
        });
        p.resolve_alias(&mut use_it, &mut props).expect("resolves");
        assert_eq!(&use_it.topic[..], b"a/b");
        for bad in [0u16, 3] {
            let mut props = Some(PublishProperties {
                topic_alias: Some(bad),
                ..Default::default()
            });
            assert_eq!(
                p.resolve_alias(&mut publish(b"x"), &mut props),
                Err(AliasError::Invalid(bad))
            );
        }
        let mut props = Some(PublishProperties {
            topic_alias: Some(1),
            ..Default::default()
        });
        assert_eq!(
            p.resolve_alias(&mut publish(b""), &mut props),
            Err(AliasError::Unknown(1))
        );
    }

    #[test]
    fn outbound_aliases_never_exceed_the_clients_maximum() {
        let client = ClientLimits {
            topic_alias_max: 2,
            ..Default::default()
        };
        let mut p = Proto::new(Version::V5, client, 0, 64);
        let mut seen = HashMap::new();
        for topic in [&b"t/1"[..], b"t/2", b"t/1", b"t/3", b"t/3", b"t/2", b"t/1"] {
            let mut pb = Publish::new(Bytes::copy_from_slice(topic), Bytes::new(), false);
            let mut props = None;
            p.alias_outbound(&mut pb, &mut props);
            let alias = props.and_then(|p| p.topic_alias).expect("aliased");
            assert!((1..=2).contains(&alias), "alias {alias}");
            // What a client does: set on a topic, resolve on an empty one.
            if pb.topic.is_empty() {
                assert_eq!(seen.get(&alias).map(|t: &Bytes| &t[..]), Some(topic));
            } else {
                seen.insert(alias, pb.topic.clone());
            }
        }
        // No aliases for a client that declared none, or in 3.1.1.
        let mut none = Proto::new(Version::V5, ClientLimits::default(), 0, 64);
        let mut pb = publish(b"t/1");
        let mut props = None;
        none.alias_outbound(&mut pb, &mut props);
        assert!(props.is_none());
    }

    #[test]
    fn a_v5_disconnect_without_property_length_is_read() {
        use rumqttd::protocol::v4::check;
        let p = Proto::new(Version::V5, ClientLimits::default(), 0, 0);
        for (bytes, will) in [
            (&[0xE0u8, 0x01, 0x00][..], false),
            (&[0xE0, 0x01, 0x04][..], true),
        ] {
            let mut buf = BytesMut::from(bytes);
            let fh = check(buf.iter(), 100).expect("frames");
            let Ok(Packet::Disconnect(d, _)) = p.read(&fh, &mut buf, 100) else {
                panic!("not read: {bytes:?}");
            };
            assert_eq!(publishes_will(d.reason_code), will);
            assert!(buf.is_empty());
        }
        // A CONNACK from a client is refused before the codec (whose reader would panic).
        let mut buf = BytesMut::from(&[0x20u8, 0x02, 0x00, 0x00][..]);
        let fh = check(buf.iter(), 100).expect("frames");
        assert!(matches!(
            p.read(&fh, &mut buf, 100),
            Err(ReadError::Unexpected(_))
        ));
    }

    #[test]
    fn expiry_stamps_become_the_time_left_or_a_drop() {
        let mut props = Some(PublishProperties {
            user_properties: vec![("k".into(), "v".into()), expiry_stamp(30)],
            ..Default::default()
        });
        assert!(apply_expiry(&mut props));
        let p = props.expect("kept");
        assert_eq!(p.user_properties, vec![("k".to_string(), "v".to_string())]);
        assert!(matches!(p.message_expiry_interval, Some(29..=30)));
        let mut gone = Some(PublishProperties {
            user_properties: vec![(EXPIRY_KEY.into(), "1".into())],
            ..Default::default()
        });
        assert!(!apply_expiry(&mut gone));
        assert!(apply_expiry(&mut None));
    }

    #[test]
    fn refusals_are_said_in_the_clients_version() {
        assert_eq!(
            &connack_refusal(Version::V4, Reason::ProtocolVersion, "")[..],
            &[0x20, 0x02, 0x00, 0x01]
        );
        assert_eq!(
            &connack_refusal(Version::V4, Reason::AclWill, "")[..],
            &[0x20, 0x02, 0x00, 0x05]
        );
        let v5 = connack_refusal(Version::V5, Reason::ProtocolVersion, "only 3.1.1 and 5");
        assert_eq!(v5[0], 0x20);
        assert_eq!(v5[3], 0x84);
        let p = Proto::v4();
        assert!(p
            .disconnect(DisconnectReasonCode::NotAuthorized, "x")
            .is_none());
        assert_eq!(
            p.suback_refusal(SubRefusal::NotAuthorized),
            SubscribeReasonCode::Failure
        );
        let p5 = Proto::new(Version::V5, ClientLimits::default(), 0, 0);
        let d = p5
            .disconnect(DisconnectReasonCode::NotAuthorized, "publish to x")
            .expect("v5 disconnect");
        assert_eq!((d[0], d[2]), (0xE0, 0x87));
    }

    #[test]
    fn shared_filters_are_parsed() {
        assert_eq!(parse_shared("lk/v1/+/up/#"), None);
        assert_eq!(
            parse_shared("$share/g1/lk/v1/+/up/#"),
            Some(Ok(("g1", "lk/v1/+/up/#")))
        );
        for bad in [
            "$share/",
            "$share/g1",
            "$share//x",
            "$share/g+/x",
            "$share/g1/",
        ] {
            assert_eq!(parse_shared(bad), Some(Err(())), "{bad}");
        }
    }
}
