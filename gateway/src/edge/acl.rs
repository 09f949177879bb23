//! What an identity may do, checked packet by packet on the client's stream: the CONNECT
//! check (MQTT 3.1.1 or 5; the client id and login are ignored, the will topic must be the
//! identity's own), and the PUBLISH / SUBSCRIBE rules. Packets are parsed with rumqttd's own
//! codecs and handed to the router as parsed.
//!
//! The edge speaks QoS 0 and 1: a QoS 2 PUBLISH, PUBREC, PUBREL or PUBCOMP from a client is
//! refused (rumqttd disconnects a link on an unexpected QoS 2 acknowledgement, which the edge
//! must never provoke), and a QoS 2 subscription is granted QoS 1 (see `session`).
//!
//! A cabinet that steps outside its own topics is disconnected (with DISCONNECT 0x87 in MQTT 5).
//! An integrator's SUBSCRIBE is judged filter by filter ([`Acl::judge_filter`]): a refused
//! filter gets a SUBACK failure code and the connection stays.

use std::collections::BTreeMap;

use locker_schemas::{DownKind, Filter, Topic};
use rumqttd::protocol::v4::{FixedHeader, PacketType};
use rumqttd::protocol::{Error as MqttError, LastWill, Packet};

use super::identity::Identity;
use super::metrics::Reason;
use super::proto::{ClientLimits, SubRefusal, Version};

/// A refused packet: the reason label and a short description for the log.
pub(crate) type Refusal = (Reason, String);

/// A refused CONNECT: why, and the version to answer it in (`None`: not MQTT, just close).
pub(crate) type ConnectRefusal = (Refusal, Option<Version>);

/// Server keep alive given to an MQTT 5 client that asked for none (keep alive 0).
pub(crate) const SERVER_KEEP_ALIVE_S: u16 = 60;

/// What the edge keeps from an accepted CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Session {
    pub version: Version,
    /// Seconds; never 0 (refused in 3.1.1 like rumqttd does; set by the server in 5).
    pub keep_alive: u16,
    /// The keep alive the edge set for an MQTT 5 client that asked for 0 (sent in CONNACK).
    pub server_keep_alive: Option<u16>,
    /// 3.1.1 clean session; MQTT 5 clean start.
    pub clean_session: bool,
    /// MQTT 5 session expiry interval, seconds (0 in 3.1.1: see `relay` for how a 3.1.1
    /// persistent session is kept).
    pub session_expiry: u32,
    /// The limits the client declared (MQTT 5).
    pub limits: ClientLimits,
    /// The client id the client sent (it never names the identity: the certificate does; an
    /// integrator's tells its connections apart, see `relay`). Empty: the edge assigns one.
    pub client_id: String,
    /// The edge assigned `client_id` (the client sent none; MQTT 5 is told in CONNACK).
    pub client_id_assigned: bool,
    /// The will (its topic already checked, its retain flag cleared), kept by the edge and
    /// published by it.
    pub will: Option<LastWill>,
    /// The client asked for a retained will; the edge cleared the flag (cabinets never plant
    /// retained state).
    pub will_retain_cleared: bool,
}

/// The rules for one connected identity.
pub(crate) struct Acl {
    identity: Identity,
    /// For an integrator: filters a SUBSCRIBE filter must lie within (one of). For a cabinet:
    /// the exact filters it may subscribe to (its `down/#` and each `down/{kind}` topic).
    subscribe: Vec<Filter>,
}

impl Acl {
    /// The rules for `identity`: a cabinet subscribes to exactly its own downlink filters
    /// (`down/#` or one `down/{kind}` topic; anything else, even within them, is refused: the
    /// broker keeps state per distinct filter) and publishes to its own uplinks; an integrator
    /// subscribes within its configured ACL entries (none if it has none) and never publishes.
    pub fn new(identity: Identity, integrator_acls: &BTreeMap<String, Vec<Filter>>) -> Self {
        let subscribe = match &identity {
            Identity::Cabinet(c) => std::iter::once(Filter::cabinet_downlinks(c))
                .chain(
                    DownKind::ALL
                        .iter()
                        .filter_map(|k| Filter::new(Topic::Down(c.clone(), *k).to_string()).ok()),
                )
                .collect(),
            Identity::Integrator(name) => integrator_acls.get(name).cloned().unwrap_or_default(),
        };
        Self {
            identity,
            subscribe,
        }
    }

    /// The identity these rules are for.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Whether this is an integrator (whose refused filters and v5 publishes are answered
    /// with reason codes instead of a disconnect).
    pub fn is_integrator(&self) -> bool {
        matches!(self.identity, Identity::Integrator(_))
    }

    /// Whether the identity may publish (or leave a will) on `topic`.
    pub fn may_publish(&self, topic: &str) -> bool {
        match &self.identity {
            Identity::Cabinet(own) => {
                matches!(topic.parse::<Topic>(), Ok(Topic::Up(c, _)) if &c == own)
            }
            Identity::Integrator(_) => false,
        }
    }

    /// Whether the identity may subscribe to `filter`.
    pub fn may_subscribe(&self, filter: &str) -> bool {
        self.judge_filter(filter).is_ok()
    }

    /// Judges one SUBSCRIBE filter: a cabinet may use exactly its own downlink filters (no
    /// shared subscriptions); an integrator any valid filter within its ACL, also as a shared
    /// subscription (`$share/{group}/{filter}`, judged by the filter inside).
    pub fn judge_filter(&self, filter: &str) -> Result<(), SubRefusal> {
        if let Identity::Cabinet(_) = self.identity {
            return if self.subscribe.iter().any(|own| own.as_str() == filter) {
                Ok(())
            } else {
                Err(SubRefusal::NotAuthorized)
            };
        }
        let filter = match super::proto::parse_shared(filter) {
            None => filter,
            Some(Ok((_group, inner))) => inner,
            Some(Err(())) => return Err(SubRefusal::Invalid),
        };
        match Filter::new(filter) {
            Ok(f) if self.subscribe.iter().any(|outer| f.is_within(outer)) => Ok(()),
            Ok(_) => Err(SubRefusal::NotAuthorized),
            Err(_) => Err(SubRefusal::Invalid),
        }
    }

    /// Checks one parsed client packet (not the first CONNECT); `fh` is its fixed header.
    /// An integrator's SUBSCRIBE passes here (its filters are judged one by one by the
    /// session); a cabinet's must hold only its own filters.
    pub fn inspect(&self, fh: &FixedHeader, packet: &Packet) -> Result<(), Refusal> {
        match packet {
            Packet::Publish(p, _) => {
                if qos_bits(fh) == 2 {
                    return Err(qos2("PUBLISH"));
                }
                let topic = std::str::from_utf8(&p.topic).unwrap_or_default();
                if topic.is_empty() || !self.may_publish(topic) {
                    let shown = String::from_utf8_lossy(&p.topic);
                    return Err((Reason::AclPublish, format!("publish to {shown:?}")));
                }
            }
            Packet::Subscribe(s, _) => {
                if self.is_integrator() {
                    return Ok(());
                }
                if let Some(f) = s.filters.iter().find(|f| !self.may_subscribe(&f.path)) {
                    return Err((Reason::AclSubscribe, format!("subscribe to {:?}", f.path)));
                }
            }
            Packet::Unsubscribe(..)
            | Packet::PubAck(..)
            | Packet::PingReq(_)
            | Packet::Disconnect(..) => {}
            Packet::PubRec(..) => return Err(qos2("PUBREC")),
            Packet::PubRel(..) => return Err(qos2("PUBREL")),
            Packet::PubComp(..) => return Err(qos2("PUBCOMP")),
            Packet::Connect(..)
            | Packet::ConnAck(..)
            | Packet::SubAck(..)
            | Packet::UnsubAck(..)
            | Packet::PingResp(_) => {
                let kind = fh
                    .packet_type()
                    .map(|k| format!("{k:?}"))
                    .unwrap_or_default();
                return Err((
                    Reason::UnexpectedPacket,
                    format!("a client may not send {kind} here"),
                ));
            }
        }
        Ok(())
    }

    /// Checks the client's first packet: it must be an MQTT 3.1.1 or 5 CONNECT with a keep
    /// alive (3.1.1; MQTT 5 gets one from the server) and a will (if any) on a topic the
    /// identity may publish to. `frame` is exactly the packet's bytes. The client id and login
    /// are ignored: the identity is the certificate.
    pub fn connect(
        &self,
        fh: &FixedHeader,
        frame: bytes::BytesMut,
    ) -> Result<Session, ConnectRefusal> {
        let kind = fh.packet_type().map_err(|e| (malformed(e), None))?;
        if kind != PacketType::Connect {
            return Err((
                (Reason::NotConnectFirst, format!("first packet is {kind:?}")),
                None,
            ));
        }
        let version = check_protocol(&frame)?;
        let mut frame = frame;
        let read = match version {
            Version::V4 => rumqttd::protocol::Protocol::read_mut(
                &mut rumqttd::protocol::v4::V4,
                &mut frame,
                usize::MAX,
            ),
            Version::V5 => rumqttd::protocol::Protocol::read_mut(
                &mut rumqttd::protocol::v5::V5,
                &mut frame,
                usize::MAX,
            ),
        };
        let packet = read.map_err(|e| {
            let r = match e {
                MqttError::InvalidProtocol | MqttError::InvalidProtocolLevel(_) => {
                    (Reason::ProtocolVersion, e.to_string())
                }
                e => malformed(e),
            };
            (r, Some(version))
        })?;
        let Packet::Connect(connect, props, will, _will_props, _login) = packet else {
            return Err((
                (Reason::Malformed, "not an MQTT CONNECT".into()),
                Some(version),
            ));
        };
        let refuse = |r: Reason, why: String| ((r, why), Some(version));
        let mut keep_alive = connect.keep_alive;
        let mut server_keep_alive = None;
        if keep_alive == 0 {
            if version == Version::V4 {
                return Err(refuse(
                    Reason::ZeroKeepAlive,
                    "keep alive 0 is not allowed".into(),
                ));
            }
            keep_alive = SERVER_KEEP_ALIVE_S;
            server_keep_alive = Some(SERVER_KEEP_ALIVE_S);
        }
        if let Some(p) = &props {
            if p.receive_maximum == Some(0) || p.max_packet_size == Some(0) {
                return Err(refuse(
                    Reason::Malformed,
                    "receive maximum or maximum packet size 0".into(),
                ));
            }
        }
        let mut will = will;
        let mut will_retain_cleared = false;
        if let Some(w) = &mut will {
            let topic = std::str::from_utf8(&w.topic).unwrap_or_default();
            if topic.is_empty() || !self.may_publish(topic) {
                let shown = String::from_utf8_lossy(&w.topic);
                return Err(refuse(Reason::AclWill, format!("will topic {shown:?}")));
            }
            if w.qos == rumqttd::protocol::QoS::ExactlyOnce {
                w.qos = rumqttd::protocol::QoS::AtLeastOnce;
            }
            will_retain_cleared = std::mem::take(&mut w.retain);
        }
        Ok(Session {
            version,
            keep_alive,
            server_keep_alive,
            clean_session: connect.clean_session,
            session_expiry: props
                .as_ref()
                .and_then(|p| p.session_expiry_interval)
                .unwrap_or(0),
            limits: ClientLimits::from_properties(props.as_ref()),
            client_id: connect.client_id,
            client_id_assigned: false,
            will,
            will_retain_cleared,
        })
    }
}

/// The QoS bits of a PUBLISH fixed header.
pub(crate) fn qos_bits(fh: &FixedHeader) -> u8 {
    (fh.byte1 >> 1) & 0b11
}

fn qos2(what: &str) -> Refusal {
    (
        Reason::Qos2,
        format!("{what}: QoS 2 is not supported (use QoS 0 or 1)"),
    )
}

/// The protocol version of a CONNECT, read before the full parse: MQTT 3.1.1 (`"MQTT"`, level
/// 4) and 5 (level 5) are spoken. MQTT 3.1 (`"MQIsdp"`, level 3) and `"MQTT"` below 4 are
/// refused with the 3.1.1 CONNACK "unacceptable protocol version" (0x01), a level above 5 with
/// the MQTT 5 CONNACK 0x84; garbage is just closed.
fn check_protocol(frame: &[u8]) -> Result<Version, ConnectRefusal> {
    // Skip the fixed header: one type byte and a 1-4 byte remaining length.
    let len_bytes = frame
        .iter()
        .skip(1)
        .take(4)
        .position(|b| b & 0x80 == 0)
        .ok_or_else(|| (malformed(MqttError::MalformedRemainingLength), None))?;
    let vh = frame.get(2 + len_bytes..).unwrap_or_default();
    let unsupported = |what: String, answer: Version| {
        Err((
            (
                Reason::ProtocolVersion,
                format!("{what} (MQTT 3.1.1 and 5 are supported)"),
            ),
            Some(answer),
        ))
    };
    match vh {
        [0, 4, b'M', b'Q', b'T', b'T', 4, ..] => Ok(Version::V4),
        [0, 4, b'M', b'Q', b'T', b'T', 5, ..] => Ok(Version::V5),
        [0, 4, b'M', b'Q', b'T', b'T', level, ..] if *level < 4 => {
            unsupported(format!("MQTT protocol level {level}"), Version::V4)
        }
        [0, 4, b'M', b'Q', b'T', b'T', level, ..] => {
            unsupported(format!("MQTT protocol level {level}"), Version::V5)
        }
        [0, 6, b'M', b'Q', b'I', b's', b'd', b'p', ..] => {
            unsupported("MQTT 3.1".into(), Version::V4)
        }
        _ => Err(((Reason::Malformed, "not an MQTT CONNECT".into()), None)),
    }
}

fn malformed(e: MqttError) -> Refusal {
    (Reason::Malformed, e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use locker_schemas::CabinetId;
    use rumqttc::mqttbytes::v4::{Connect, LastWill as CLastWill, Packet as CPacket, Publish};
    use rumqttc::mqttbytes::v4::{PubRec, Subscribe};
    use rumqttc::mqttbytes::{Protocol, QoS};
    use rumqttd::protocol::v4::{check, V4};
    use rumqttd::protocol::Protocol as _;

    fn cab(s: &str) -> Identity {
        Identity::Cabinet(CabinetId::new(s).expect("valid id"))
    }

    /// Encodes with rumqttc (an independent encoder), frames with rumqttd.
    fn raw(p: CPacket) -> (FixedHeader, BytesMut) {
        let mut b = BytesMut::new();
        p.write(&mut b, 1 << 20).expect("encodes");
        let fh = check(b.iter(), 1 << 20).expect("frames");
        (fh, b)
    }

    /// Encodes with rumqttc and parses with rumqttd's codec, as the relay does.
    fn parsed(p: CPacket) -> (FixedHeader, Packet) {
        let (fh, mut b) = raw(p);
        let packet = V4.read_mut(&mut b, 1 << 20).expect("parses");
        (fh, packet)
    }

    fn acls() -> BTreeMap<String, Vec<Filter>> {
        let mut m = BTreeMap::new();
        m.insert(
            "erp".to_string(),
            vec![Filter::new("lk/v1/+/up/door").expect("valid")],
        );
        m
    }

    #[test]
    fn cabinets_publish_only_to_own_uplinks() {
        let acl = Acl::new(cab("A"), &acls());
        assert!(acl.may_publish("lk/v1/A/up/door"));
        for t in [
            "lk/v1/B/up/door",
            "lk/v1/A/down/cmd",
            "lk/v1/A/gw/presence",
            "lk/v1/A/up/nope",
            "lk/v1/A/up/door/x",
            "lk/v1/+/up/door",
            "x",
        ] {
            assert!(!acl.may_publish(t), "{t}");
        }
        assert!(acl.may_subscribe("lk/v1/A/down/#"));
        assert!(acl.may_subscribe("lk/v1/A/down/cmd"));
        assert!(acl.may_subscribe("lk/v1/A/down/ack"));
        assert!(acl.may_subscribe("lk/v1/A/down/creds"));
        // Only exactly those: no made-up filters within its downlinks.
        for f in [
            "lk/v1/A/down/+",
            "lk/v1/A/down/nope",
            "lk/v1/A/down/cmd/#",
            "lk/v1/A/down/x1",
            "lk/v1/A/down/cmd/+",
        ] {
            assert!(!acl.may_subscribe(f), "{f}");
        }
        assert!(!acl.may_subscribe("lk/v1/B/down/#"));
        assert!(!acl.may_subscribe("lk/v1/+/down/#"));
        assert!(!acl.may_subscribe("#"));
        assert!(!acl.may_subscribe("lk/v1/A/#"));
        assert!(!acl.may_subscribe("a/#/b"));
    }

    #[test]
    fn integrators_never_publish_and_subscribe_within_acl() {
        let acl = Acl::new(Identity::integrator("erp").expect("valid"), &acls());
        assert!(!acl.may_publish("lk/v1/A/up/door"));
        assert!(acl.may_subscribe("lk/v1/+/up/door"));
        assert!(acl.may_subscribe("lk/v1/A/up/door"));
        assert!(!acl.may_subscribe("lk/v1/+/up/#"));
        let none = Acl::new(Identity::integrator("other").expect("valid"), &acls());
        assert!(!none.may_subscribe("lk/v1/+/up/door"));
    }

    #[test]
    fn connect_keeps_session_settings_and_an_allowed_will() {
        let acl = Acl::new(cab("A"), &acls());
        let mut c = Connect::new("spoofed");
        c.keep_alive = 33;
        c.clean_session = false;
        c.set_login("u", "p");
        c.last_will = Some(CLastWill::new(
            "lk/v1/A/up/network",
            "bye",
            QoS::AtLeastOnce,
            true,
        ));
        let (fh, b) = raw(CPacket::Connect(c));
        let s = acl.connect(&fh, b).expect("allowed");
        assert_eq!(s.keep_alive, 33);
        assert!(!s.clean_session);
        let will = s.will.expect("will kept");
        assert_eq!(&will.topic[..], b"lk/v1/A/up/network");
        assert_eq!(&will.message[..], b"bye");
        assert!(!will.retain, "a cabinet's will is never retained");
        assert!(s.will_retain_cleared);

        let mut c = Connect::new("x");
        c.last_will = Some(CLastWill::new(
            "lk/v1/B/up/network",
            "",
            QoS::AtMostOnce,
            false,
        ));
        let (fh, b) = raw(CPacket::Connect(c));
        assert_eq!(
            acl.connect(&fh, b).map_err(|e| e.0 .0),
            Err(Reason::AclWill)
        );

        let mut c = Connect::new("x");
        c.keep_alive = 0;
        let (fh, b) = raw(CPacket::Connect(c));
        assert_eq!(
            acl.connect(&fh, b).map_err(|e| e.0 .0),
            Err(Reason::ZeroKeepAlive)
        );
    }

    #[test]
    fn first_packet_and_protocol_are_checked() {
        let acl = Acl::new(cab("A"), &acls());
        let (fh, b) = raw(CPacket::PingReq);
        assert_eq!(
            acl.connect(&fh, b).map_err(|e| e.0 .0),
            Err(Reason::NotConnectFirst)
        );
        // MQTT 3.1 and a level above 5: refused, with the answer in the version the client
        // understands.
        let mut c = Connect::new("x");
        c.protocol = Protocol::V5;
        let (fh, mut b) = raw(CPacket::Connect(c));
        b[8] = 6; // protocol level byte: 2 (fixed header) + 2 + "MQTT"
        assert_eq!(
            acl.connect(&fh, b).map_err(|e| (e.0 .0, e.1)),
            Err((Reason::ProtocolVersion, Some(Version::V5)))
        );
        let mut c = Connect::new("x");
        c.protocol = Protocol::V4;
        let (fh, mut b) = raw(CPacket::Connect(c));
        b[8] = 3;
        assert_eq!(
            acl.connect(&fh, b).map_err(|e| (e.0 .0, e.1)),
            Err((Reason::ProtocolVersion, Some(Version::V4)))
        );
        let (fh, p) = parsed(CPacket::Connect(Connect::new("x")));
        assert_eq!(
            acl.inspect(&fh, &p).map_err(|e| e.0),
            Err(Reason::UnexpectedPacket)
        );
    }

    #[test]
    fn packets_are_inspected() {
        let acl = Acl::new(cab("A"), &acls());
        let mut q1 = Publish::new("lk/v1/A/up/door", QoS::AtLeastOnce, "x");
        q1.pkid = 1;
        let (fh, p) = parsed(CPacket::Publish(q1));
        assert!(acl.inspect(&fh, &p).is_ok());
        let (fh, p) = parsed(CPacket::Publish(Publish::new(
            "lk/v1/B/up/door",
            QoS::AtMostOnce,
            "x",
        )));
        assert_eq!(
            acl.inspect(&fh, &p).map_err(|e| e.0),
            Err(Reason::AclPublish)
        );
        let mut s = Subscribe::new("lk/v1/A/down/#", QoS::AtLeastOnce);
        s.pkid = 1;
        s.add("lk/v1/B/down/#".into(), QoS::AtLeastOnce);
        let (fh, p) = parsed(CPacket::Subscribe(s));
        assert_eq!(
            acl.inspect(&fh, &p).map_err(|e| e.0),
            Err(Reason::AclSubscribe)
        );
        let (fh, p) = parsed(CPacket::PingReq);
        assert!(acl.inspect(&fh, &p).is_ok());

        // QoS 2 is refused, whether a publish or an acknowledgement.
        let mut q2 = Publish::new("lk/v1/A/up/door", QoS::ExactlyOnce, "x");
        q2.pkid = 7;
        let (fh, p) = parsed(CPacket::Publish(q2));
        assert_eq!(acl.inspect(&fh, &p).map_err(|e| e.0), Err(Reason::Qos2));
        let (fh, p) = parsed(CPacket::PubRec(PubRec::new(3)));
        assert_eq!(acl.inspect(&fh, &p).map_err(|e| e.0), Err(Reason::Qos2));

        // a PUBLISH whose topic length runs past the packet does not parse
        let mut raw = BytesMut::from(&[0x30, 3, 0, 9, b'a'][..]);
        assert!(V4.read_mut(&mut raw, 100).is_err());
    }
}
