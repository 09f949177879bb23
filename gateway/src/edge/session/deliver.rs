//! The router-to-client half of an integrator's session: router packets and shared group
//! deliveries turned into what the client gets, under its receive maximum and maximum packet
//! size, with outbound topic aliases and message expiry; group deliveries go out under packet
//! ids of the edge's.

use std::collections::VecDeque;

use bytes::BytesMut;
use rumqttd::protocol::v4::check;
use rumqttd::protocol::{Packet, Publish, PublishProperties, SubscribeReasonCode, UnsubAckReason};

use super::super::proto::apply_expiry;
use super::super::shared::Delivery;
use super::super::wire::router_pkid;
use super::{encoding, End, Held, State, GROUP_PKIDS};
use crate::broker::Link;

impl State<'_> {
    /// Turns one router packet into what the client gets.
    pub(super) fn take_router_packet(
        &mut self,
        packet: Packet,
        link: &Link,
        out: &mut BytesMut,
    ) -> Result<(), End> {
        match packet {
            Packet::Publish(p, props) => match router_pkid(&p) {
                Some(pkid) => {
                    if self.must_hold() {
                        self.held.push_back(Held::Router(p, props, pkid));
                        Ok(())
                    } else {
                        self.send_publish(p, props, Some(pkid), link, out)
                    }
                }
                None => self.send_publish(p, props, None, link, out),
            },
            Packet::SubAck(mut ack, props) => {
                let router = std::mem::take(&mut ack.return_codes);
                ack.return_codes =
                    self.subacks
                        .merge(ack.pkid, router, SubscribeReasonCode::Failure);
                self.put(Packet::SubAck(ack, props), out)
            }
            Packet::UnsubAck(mut ack, props) => {
                let router = std::mem::take(&mut ack.reasons);
                ack.reasons = self
                    .unsubacks
                    .merge(ack.pkid, router, UnsubAckReason::Success);
                self.put(Packet::UnsubAck(ack, props), out)
            }
            p @ (Packet::PubAck(..) | Packet::PingResp(_)) => self.put(p, out),
            // Nothing else goes to a client (QoS 2 is not spoken; the edge itself says
            // DISCONNECT when it closes).
            other => {
                tracing::debug!(packet = ?other, "edge: router packet not sent to the client");
                Ok(())
            }
        }
    }

    /// Whether a QoS 1 publish must wait (the client's receive maximum is full, or others
    /// wait already: order is kept).
    pub(super) fn must_hold(&self) -> bool {
        self.in_flight >= usize::from(self.proto.client.receive_max) || !self.held.is_empty()
    }

    /// Sends held publishes while the client's receive maximum has room.
    pub(super) fn release_held(&mut self, link: &Link, out: &mut BytesMut) -> Result<(), End> {
        while self.in_flight < usize::from(self.proto.client.receive_max) {
            match self.held.pop_front() {
                None => break,
                Some(Held::Router(p, props, pkid)) => {
                    self.send_publish(p, props, Some(pkid), link, out)?
                }
                Some(Held::Group(d)) => self.send_group(d, out)?,
            }
        }
        if self.held.is_empty() && self.held.capacity() > 0 {
            self.held = VecDeque::new();
        }
        Ok(())
    }

    /// Encodes a router publish for the client: not at all if it is larger than the client's
    /// maximum packet size (counted; a QoS 1 one is acknowledged to the router in its turn),
    /// with an outbound topic alias where the client takes them.
    pub(super) fn send_publish(
        &mut self,
        mut p: Publish,
        mut props: Option<PublishProperties>,
        pkid: Option<u16>,
        link: &Link,
        out: &mut BytesMut,
    ) -> Result<(), End> {
        if !self.fits(&p, &mut props)? {
            if let Some(id) = pkid {
                self.unacked.push_back((id, true));
                self.acks_pushed += self.ack_router(link);
            }
            return Ok(());
        }
        self.proto.alias_outbound(&mut p, &mut props);
        self.proto
            .write(Packet::Publish(p, props), out)
            .map_err(encoding)?;
        if let Some(id) = pkid {
            self.unacked.push_back((id, false));
            self.in_flight += 1;
        }
        Ok(())
    }

    /// Whether a publish may go to the client: not if its message expiry passed or it is larger
    /// than the client's maximum packet size (counted in `locker_edge_dropped_total`). Takes
    /// the expiry stamp out of `props` (or all properties, for a 3.1.1 client).
    fn fits(&self, p: &Publish, props: &mut Option<PublishProperties>) -> Result<bool, End> {
        let expired = !apply_expiry(props);
        if !self.proto.is_v5() {
            *props = None;
        }
        let why = if expired {
            "expired"
        } else if self.proto.client.max_packet < usize::MAX && {
            let mut probe = BytesMut::new();
            self.proto
                .write(Packet::Publish(p.clone(), props.clone()), &mut probe)
                .map_err(encoding)?;
            probe.len() > self.proto.client.max_packet
        } {
            "client_max_packet"
        } else {
            return Ok(true);
        };
        self.shared.metrics.dropped.with_label_values(&[why]).inc();
        Ok(false)
    }

    /// A delivery from a shared subscription group.
    pub(super) fn take_group_delivery(
        &mut self,
        d: Delivery,
        out: &mut BytesMut,
    ) -> Result<(), End> {
        if d.qos1 && self.must_hold() {
            self.held.push_back(Held::Group(d));
            return Ok(());
        }
        self.send_group(d, out)
    }

    /// Encodes a group delivery for the client: at QoS 1 under a packet id of the edge's
    /// (acknowledged to the group when the client acknowledges), at QoS 0 acknowledged at
    /// once; an expired or too large one is acknowledged and not sent (counted).
    pub(super) fn send_group(&mut self, d: Delivery, out: &mut BytesMut) -> Result<(), End> {
        let Delivery {
            group,
            seq,
            mut publish,
            mut props,
            qos1,
            dup,
        } = d;
        if !qos1 {
            publish = Publish::new(publish.topic, publish.payload, false);
        }
        if !self.fits(&publish, &mut props)? {
            group.ack(seq);
            return Ok(());
        }
        self.proto.alias_outbound(&mut publish, &mut props);
        let start = out.len();
        self.proto
            .write(Packet::Publish(publish, props), out)
            .map_err(encoding)?;
        if !qos1 {
            group.ack(seq);
            return Ok(());
        }
        let pkid = self.group_pkid();
        set_pkid(&mut out[start..], pkid, dup);
        self.group_out.insert(pkid, (group, seq));
        self.in_flight += 1;
        Ok(())
    }

    /// The next packet id for a group delivery not awaiting an acknowledgement.
    pub(super) fn group_pkid(&mut self) -> u16 {
        loop {
            let id = self.next_pkid;
            self.next_pkid = if id == *GROUP_PKIDS.end() {
                *GROUP_PKIDS.start()
            } else {
                id + 1
            };
            if !self.group_out.contains_key(&id) {
                return id;
            }
        }
    }
}

/// Rewrites the packet id (and sets the DUP flag) of an encoded QoS 1 PUBLISH frame: rumqttd
/// keeps a publish's packet id private, and a group delivery goes out under the edge's id.
fn set_pkid(frame: &mut [u8], pkid: u16, dup: bool) {
    let Ok(fh) = check(frame.iter(), usize::MAX) else {
        return;
    };
    let at = fh.fixed_header_len;
    let Some(&[hi, lo]) = frame.get(at..at + 2) else {
        return;
    };
    let id_at = at + 2 + usize::from(u16::from_be_bytes([hi, lo]));
    if let Some(id) = frame.get_mut(id_at..id_at + 2) {
        id.copy_from_slice(&pkid.to_be_bytes());
    }
    if dup {
        frame[0] |= 0x08;
    }
}
