//! What an identity may do, checked packet by packet on the client-to-broker stream: the
//! CONNECT check and rewrite (client id := identity, login := the internal credential), and the
//! PUBLISH / SUBSCRIBE / will topic rules. Packets are parsed with rumqttc's MQTT 3.1.1 parser
//! only to be checked; the relay forwards the client's own bytes.

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};
use locker_schemas::{Filter, Topic};
use rumqttc::mqttbytes::v4::{
    Connect, Login, PubAck, PubComp, PubRec, PubRel, Publish, Subscribe, Unsubscribe,
};
use rumqttc::mqttbytes::{Error as MqttError, FixedHeader, PacketType, Protocol};

use super::identity::Identity;
use super::metrics::Reason;

/// A refused packet: the reason label and a short description for the log.
pub(crate) type Refusal = (Reason, String);

/// The rules for one connected identity.
pub(crate) struct Acl {
    identity: Identity,
    /// Filters a SUBSCRIBE filter must lie within (one of).
    subscribe: Vec<Filter>,
}

impl Acl {
    /// The rules for `identity`: a cabinet subscribes within its own downlinks and publishes
    /// to its own uplinks; an integrator subscribes within its configured ACL entries (none if
    /// it has none) and never publishes.
    pub fn new(identity: Identity, integrator_acls: &BTreeMap<String, Vec<Filter>>) -> Self {
        let subscribe = match &identity {
            Identity::Cabinet(c) => vec![Filter::cabinet_downlinks(c)],
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
        match Filter::new(filter) {
            Ok(f) => self.subscribe.iter().any(|outer| f.is_within(outer)),
            Err(_) => false,
        }
    }

    /// Checks one complete client packet (not the first CONNECT). `frame` is exactly the
    /// packet's bytes, `fh` its fixed header.
    pub fn inspect(&self, fh: FixedHeader, frame: Bytes) -> Result<(), Refusal> {
        let kind = fh.packet_type().map_err(malformed)?;
        match kind {
            PacketType::Publish => {
                let p = Publish::read(fh, frame).map_err(malformed)?;
                if !self.may_publish(&p.topic) {
                    return Err((Reason::AclPublish, format!("publish to {:?}", p.topic)));
                }
            }
            PacketType::Subscribe => {
                let s = Subscribe::read(fh, frame).map_err(malformed)?;
                if let Some(f) = s.filters.iter().find(|f| !self.may_subscribe(&f.path)) {
                    return Err((Reason::AclSubscribe, format!("subscribe to {:?}", f.path)));
                }
            }
            PacketType::Unsubscribe => {
                Unsubscribe::read(fh, frame).map_err(malformed)?;
            }
            PacketType::PubAck => {
                PubAck::read(fh, frame).map_err(malformed)?;
            }
            PacketType::PubRec => {
                PubRec::read(fh, frame).map_err(malformed)?;
            }
            PacketType::PubRel => {
                PubRel::read(fh, frame).map_err(malformed)?;
            }
            PacketType::PubComp => {
                PubComp::read(fh, frame).map_err(malformed)?;
            }
            PacketType::PingReq | PacketType::Disconnect => {}
            PacketType::Connect
            | PacketType::ConnAck
            | PacketType::SubAck
            | PacketType::UnsubAck
            | PacketType::PingResp => {
                return Err((
                    Reason::UnexpectedPacket,
                    format!("a client may not send {kind:?} here"),
                ));
            }
        }
        Ok(())
    }

    /// Checks the client's first packet and returns the CONNECT to send upstream: the client
    /// id is the identity, the login is the internal credential (the client's own is
    /// discarded), clean session, keep alive and the (checked) will are kept.
    pub fn connect(
        &self,
        fh: FixedHeader,
        frame: Bytes,
        username: &str,
        password: &str,
    ) -> Result<BytesMut, Refusal> {
        let kind = fh.packet_type().map_err(malformed)?;
        if kind != PacketType::Connect {
            return Err((Reason::NotConnectFirst, format!("first packet is {kind:?}")));
        }
        check_protocol(&frame)?;
        let connect = Connect::read(fh, frame).map_err(|e| match e {
            MqttError::InvalidProtocol | MqttError::InvalidProtocolLevel(_) => {
                (Reason::ProtocolVersion, e.to_string())
            }
            e => malformed(e),
        })?;
        if connect.protocol != Protocol::V4 {
            return Err((Reason::ProtocolVersion, "MQTT 5 is not supported".into()));
        }
        if let Some(will) = &connect.last_will {
            if !self.may_publish(&will.topic) {
                return Err((Reason::AclWill, format!("will topic {:?}", will.topic)));
            }
        }
        let rewritten = Connect {
            protocol: Protocol::V4,
            keep_alive: connect.keep_alive,
            client_id: self.identity.client_id(),
            clean_session: connect.clean_session,
            last_will: connect.last_will,
            login: Some(Login::new(username, password)),
        };
        let mut out = BytesMut::with_capacity(rewritten.size());
        rewritten.write(&mut out).map_err(malformed)?;
        Ok(out)
    }
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
    use locker_schemas::CabinetId;
    use rumqttc::mqttbytes::v4::{LastWill, Packet};
    use rumqttc::mqttbytes::{check, QoS};

    fn cab(s: &str) -> Identity {
        Identity::Cabinet(CabinetId::new(s).expect("valid id"))
    }

    fn frame(p: Packet) -> (FixedHeader, Bytes) {
        let mut b = BytesMut::new();
        p.write(&mut b, 1 << 20).expect("encodes");
        let fh = check(b.iter(), 1 << 20).expect("frames");
        (fh, b.freeze())
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
    fn connect_is_rewritten_with_identity_and_internal_login() {
        let acl = Acl::new(cab("A"), &acls());
        let mut c = Connect::new("spoofed");
        c.keep_alive = 33;
        c.clean_session = false;
        c.set_login("u", "p");
        c.last_will = Some(LastWill::new(
            "lk/v1/A/up/network",
            "bye",
            QoS::AtLeastOnce,
            false,
        ));
        let (fh, b) = frame(Packet::Connect(c));
        let mut out = acl.connect(fh, b, "edge", "secret").expect("allowed");
        let Packet::Connect(r) = Packet::read(&mut out, 1 << 20).expect("parses") else {
            panic!("not a connect");
        };
        assert_eq!(r.client_id, "A");
        assert_eq!(r.keep_alive, 33);
        assert!(!r.clean_session);
        assert_eq!(r.login, Some(Login::new("edge", "secret")));
        assert_eq!(
            r.last_will.map(|w| w.topic).as_deref(),
            Some("lk/v1/A/up/network")
        );

        let mut c = Connect::new("x");
        c.last_will = Some(LastWill::new(
            "lk/v1/B/up/network",
            "",
            QoS::AtMostOnce,
            false,
        ));
        let (fh, b) = frame(Packet::Connect(c));
        assert_eq!(
            acl.connect(fh, b, "e", "s").map(|_| ()).map_err(|e| e.0),
            Err(Reason::AclWill)
        );
    }

    #[test]
    fn first_packet_and_protocol_are_checked() {
        let acl = Acl::new(cab("A"), &acls());
        let (fh, b) = frame(Packet::PingReq);
        assert_eq!(
            acl.connect(fh, b, "e", "s").map(|_| ()).map_err(|e| e.0),
            Err(Reason::NotConnectFirst)
        );
        let mut c = Connect::new("x");
        c.protocol = Protocol::V5;
        let (fh, b) = frame(Packet::Connect(c));
        assert_eq!(
            acl.connect(fh, b, "e", "s").map(|_| ()).map_err(|e| e.0),
            Err(Reason::ProtocolVersion)
        );
        let (fh, b) = frame(Packet::Connect(Connect::new("x")));
        assert_eq!(
            acl.inspect(fh, b).map_err(|e| e.0),
            Err(Reason::UnexpectedPacket)
        );
    }

    #[test]
    fn packets_are_inspected() {
        let acl = Acl::new(cab("A"), &acls());
        let (fh, b) = frame(Packet::Publish(Publish::new(
            "lk/v1/A/up/door",
            QoS::AtMostOnce,
            "x",
        )));
        assert!(acl.inspect(fh, b).is_ok());
        let (fh, b) = frame(Packet::Publish(Publish::new(
            "lk/v1/B/up/door",
            QoS::AtMostOnce,
            "x",
        )));
        assert_eq!(acl.inspect(fh, b).map_err(|e| e.0), Err(Reason::AclPublish));
        let mut s = Subscribe::new("lk/v1/A/down/#", QoS::AtLeastOnce);
        s.pkid = 1;
        s.add("lk/v1/B/down/#".into(), QoS::AtLeastOnce);
        let (fh, b) = frame(Packet::Subscribe(s));
        assert_eq!(
            acl.inspect(fh, b).map_err(|e| e.0),
            Err(Reason::AclSubscribe)
        );
        let (fh, b) = frame(Packet::PingReq);
        assert!(acl.inspect(fh, b).is_ok());
        // a PUBLISH whose topic length runs past the packet
        let raw = Bytes::from_static(&[0x30, 3, 0, 9, b'a']);
        let fh = check(raw.iter(), 100).expect("frames");
        assert_eq!(
            acl.inspect(fh, raw).map_err(|e| e.0),
            Err(Reason::Malformed)
        );
    }
}
