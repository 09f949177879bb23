//! What an identity may do, checked packet by packet on the client's stream: the CONNECT
//! check (the client id and login are ignored, the will topic must be the identity's own),
//! and the PUBLISH / SUBSCRIBE rules. Packets are parsed with rumqttd's own MQTT 3.1.1 codec
//! and handed to the router as parsed.
//!
//! The edge speaks QoS 0 and 1: a QoS 2 PUBLISH, PUBREC, PUBREL or PUBCOMP from a client is
//! refused (rumqttd disconnects a link on an unexpected QoS 2 acknowledgement, which the edge
//! must never provoke), and a QoS 2 subscription is granted QoS 1 (see `relay`).

use std::collections::BTreeMap;

use locker_schemas::{DownKind, Filter, Topic};
use rumqttd::protocol::v4::{FixedHeader, PacketType};
use rumqttd::protocol::{Error as MqttError, LastWill, Packet};

use super::identity::Identity;
use super::metrics::Reason;

/// A refused packet: the reason label and a short description for the log.
pub(crate) type Refusal = (Reason, String);

/// What the edge keeps from an accepted CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Session {
    /// Seconds; never 0 (refused like rumqttd does).
    pub keep_alive: u16,
    pub clean_session: bool,
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
        if let Identity::Cabinet(_) = self.identity {
            return self.subscribe.iter().any(|own| own.as_str() == filter);
        }
        match Filter::new(filter) {
            Ok(f) => self.subscribe.iter().any(|outer| f.is_within(outer)),
            Err(_) => false,
        }
    }

    /// Checks one parsed client packet (not the first CONNECT); `fh` is its fixed header.
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

    /// Checks the client's first packet: it must be an MQTT 3.1.1 CONNECT with a keep alive
    /// and a will (if any) on a topic the identity may publish to. `frame` is exactly the
    /// packet's bytes. The client id and login are ignored: the identity is the certificate.
    pub fn connect(&self, fh: &FixedHeader, frame: bytes::BytesMut) -> Result<Session, Refusal> {
        let kind = fh.packet_type().map_err(malformed)?;
        if kind != PacketType::Connect {
            return Err((Reason::NotConnectFirst, format!("first packet is {kind:?}")));
        }
        check_protocol(&frame)?;
        let mut frame = frame;
        let packet = rumqttd::protocol::Protocol::read_mut(
            &mut rumqttd::protocol::v4::V4,
            &mut frame,
            usize::MAX,
        )
        .map_err(|e| match e {
            MqttError::InvalidProtocol | MqttError::InvalidProtocolLevel(_) => {
                (Reason::ProtocolVersion, e.to_string())
            }
            e => malformed(e),
        })?;
        let Packet::Connect(connect, _, will, _, _login) = packet else {
            return Err((Reason::Malformed, "not an MQTT CONNECT".into()));
        };
        if connect.keep_alive == 0 {
            return Err((Reason::ZeroKeepAlive, "keep alive 0 is not allowed".into()));
        }
        let mut will = will;
        let mut will_retain_cleared = false;
        if let Some(w) = &mut will {
            let topic = std::str::from_utf8(&w.topic).unwrap_or_default();
            if topic.is_empty() || !self.may_publish(topic) {
                let shown = String::from_utf8_lossy(&w.topic);
                return Err((Reason::AclWill, format!("will topic {shown:?}")));
            }
            will_retain_cleared = std::mem::take(&mut w.retain);
        }
        Ok(Session {
            keep_alive: connect.keep_alive,
            clean_session: connect.clean_session,
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
        Reason::UnexpectedPacket,
        format!("{what}: QoS 2 is not supported (use QoS 0 or 1)"),
    )
}

/// Refuses anything but MQTT 3.1.1 (`"MQTT"`, level 4) before the full parse, so MQTT 5 and
/// 3.1 (`"MQIsdp"`) clients are told apart from garbage.
fn check_protocol(frame: &[u8]) -> Result<(), Refusal> {
    // Skip the fixed header: one type byte and a 1-4 byte remaining length.
    let len_bytes = frame
        .iter()
        .skip(1)
        .take(4)
        .position(|b| b & 0x80 == 0)
        .ok_or_else(|| malformed(MqttError::MalformedRemainingLength))?;
    let vh = frame.get(2 + len_bytes..).unwrap_or_default();
    match vh {
        [0, 4, b'M', b'Q', b'T', b'T', 4, ..] => Ok(()),
        [0, 4, b'M', b'Q', b'T', b'T', level, ..] => Err((
            Reason::ProtocolVersion,
            format!("MQTT protocol level {level} (only 4, MQTT 3.1.1, is supported)"),
        )),
        [0, 6, b'M', b'Q', b'I', b's', b'd', b'p', ..] => {
            Err((Reason::ProtocolVersion, "MQTT 3.1 is not supported".into()))
        }
        _ => Err((Reason::Malformed, "not an MQTT CONNECT".into())),
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
        assert_eq!(acl.connect(&fh, b).map_err(|e| e.0), Err(Reason::AclWill));

        let mut c = Connect::new("x");
        c.keep_alive = 0;
        let (fh, b) = raw(CPacket::Connect(c));
        assert_eq!(
            acl.connect(&fh, b).map_err(|e| e.0),
            Err(Reason::ZeroKeepAlive)
        );
    }

    #[test]
    fn first_packet_and_protocol_are_checked() {
        let acl = Acl::new(cab("A"), &acls());
        let (fh, b) = raw(CPacket::PingReq);
        assert_eq!(
            acl.connect(&fh, b).map_err(|e| e.0),
            Err(Reason::NotConnectFirst)
        );
        let mut c = Connect::new("x");
        c.protocol = Protocol::V5;
        let (fh, b) = raw(CPacket::Connect(c));
        assert_eq!(
            acl.connect(&fh, b).map_err(|e| e.0),
            Err(Reason::ProtocolVersion)
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
        assert_eq!(
            acl.inspect(&fh, &p).map_err(|e| e.0),
            Err(Reason::UnexpectedPacket)
        );
        let (fh, p) = parsed(CPacket::PubRec(PubRec::new(3)));
        assert_eq!(
            acl.inspect(&fh, &p).map_err(|e| e.0),
            Err(Reason::UnexpectedPacket)
        );

        // a PUBLISH whose topic length runs past the packet does not parse
        let mut raw = BytesMut::from(&[0x30, 3, 0, 9, b'a'][..]);
        assert!(V4.read_mut(&mut raw, 100).is_err());
    }
}
