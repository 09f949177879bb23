//! One cabinet's MQTT session, served by the edge itself: no router connection of its own
//! (see [`crate::broker::Direct`] for why). The edge speaks the broker's side of MQTT 3.1.1 and
//! 5 (the agent speaks 3.1.1; a third-party cabinet may speak 5) for the few things a cabinet
//! does:
//!
//! - CONNACK (accepted; no session is kept between connections: a cabinet's state that matters
//!   is end to end, its outbox and the gateway's command queue, and the agent subscribes on
//!   every connect);
//! - PUBLISH (QoS 0 or 1, checked by the [`Acl`], retain cleared, rate limited by the token
//!   bucket): handed in order to the router through the cabinet's shared uplink link, then
//!   acknowledged (PUBACK) in order; the router holds it in memory exactly as it did when each
//!   cabinet had its own link, and the application acknowledgement stays the real one;
//! - SUBSCRIBE / UNSUBSCRIBE of its own downlink topics (the ACL allows nothing else): recorded
//!   here and answered with SUBACK (QoS 2 granted as 1) / UNSUBACK; PINGREQ: PINGRESP;
//! - downlinks: the gateway's publishes to `lk/v1/{cabinet}/down/{kind}` arrive on the
//!   session's queue and are sent at the subscription's QoS; QoS 1 ones get a packet id and at
//!   most [`MAX_INFLIGHT`] wait for the cabinet's PUBACK (in any order; a PUBACK for no
//!   outstanding id ends the session).
//!
//! In MQTT 5: CONNACK carries what the edge offers (see `proto::connack_properties`); inbound
//! topic aliases are resolved (bounded by `topic_alias_max`); a PUBLISH's user properties,
//! content type and payload format pass on to subscribers, and its message expiry interval is
//! stamped as a deadline that integrators' sessions honour; SUBACK and PUBACK carry reason
//! codes.
//!
//! Keep alive, certificate expiry, cancellation and write backpressure work as in the
//! integrators' [`session`](super::session): nothing is read while a write waits.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::BytesMut;
use locker_schemas::{CabinetId, Topic};
use rumqttc::mqttbytes::v4 as wire;
use rumqttc::mqttbytes::QoS as WireQoS;
use rumqttc::v5::mqttbytes::v5 as wire5;
use rumqttd::protocol::{
    matches, ConnAck, ConnAckProperties, ConnectReturnCode, Packet, PingResp, PubAck, PubAckReason,
    Publish, PublishProperties, QoS, SubAck, SubscribeReasonCode, UnsubAck, UnsubAckReason,
};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

use super::acl::{Acl, Session as ConnectInfo};
use super::bucket::Bucket;
use super::metrics::Reason;
use super::proto::{expiry_stamp, Proto, EXPIRY_KEY};
use super::relay::Shared;
use super::session::{End, Outcome};
use super::wire::{next_packet, read_client, write_client, Clock, WRITE_CHUNK};
use crate::broker::{Direct, Downlink, Uplink};

/// Most QoS 1 downlinks sent to a cabinet and not yet acknowledged (rumqttd's own limit).
pub const MAX_INFLIGHT: usize = 100;

/// A reply owed to the cabinet, in the order its packets came.
enum Reply {
    PubAck(u16),
    SubAck(u16, Vec<SubscribeReasonCode>),
    UnsubAck(u16, usize),
    PingResp,
}

/// What one [`Cabinet::uplink`] pass read.
#[derive(Default)]
struct Batch {
    publishes: Vec<Uplink>,
    replies: Vec<Reply>,
    /// Packets taken from the buffer.
    taken: usize,
    full: bool,
    need: usize,
    throttle: Option<Duration>,
    end: Option<Result<(), End>>,
}

struct Cabinet<'a> {
    shared: &'a Shared,
    acl: &'a Acl,
    direct: &'a Direct,
    id: &'a CabinetId,
    proto: Proto,
    max_packet: usize,
    max_batch: usize,
    window: Duration,
    last_read: Instant,
    /// Packet ids of QoS 1 downlinks not yet acknowledged, oldest first.
    unacked: VecDeque<u16>,
    next_pkid: u16,
    /// The cabinet's subscriptions: filter and granted QoS.
    subs: Vec<(String, QoS)>,
    bucket: Option<Bucket>,
}

/// Serves cabinet `id` (connection `conn_id`) from its CONNACK until the session ends.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run(
    shared: &Shared,
    tls: &mut TlsStream<TcpStream>,
    acl: &Acl,
    direct: &Direct,
    id: &CabinetId,
    conn_id: u64,
    connect: &ConnectInfo,
    connack: Option<ConnAckProperties>,
    pending: BytesMut,
    cert_end: Instant,
    cancel: &CancellationToken,
) -> Outcome {
    let cfg = &shared.cfg;
    let (slot, mut mailbox) = direct.register(id.clone(), conn_id);
    let mut cab = Cabinet {
        shared,
        acl,
        direct,
        id,
        proto: Proto::new(
            connect.version,
            connect.limits.clone(),
            cfg.topic_alias_max,
            0,
        ),
        max_packet: shared.max_packet(),
        max_batch: shared.links.max_batch(),
        window: Duration::from_millis(u64::from(connect.keep_alive) * 1500),
        last_read: Instant::now(),
        unacked: VecDeque::new(),
        next_pkid: 0,
        subs: Vec::new(),
        bucket: (cfg.uplink_rate_per_s > 0)
            .then(|| Bucket::new(cfg.uplink_rate_per_s, cfg.uplink_burst)),
    };
    let r = cab
        .serve(tls, &mut mailbox, connack, pending, cert_end, cancel)
        .await;
    drop(slot);
    match r {
        Ok(()) => Outcome::from(End::ClientDisconnected),
        Err(end) => Outcome::from(end),
    }
}

impl Cabinet<'_> {
    async fn serve(
        &mut self,
        tls: &mut TlsStream<TcpStream>,
        mailbox: &mut mpsc::Receiver<Downlink>,
        connack: Option<ConnAckProperties>,
        mut rbuf: BytesMut,
        cert_end: Instant,
        cancel: &CancellationToken,
    ) -> Result<(), End> {
        let mut out = BytesMut::new();
        let ack = ConnAck {
            session_present: false,
            code: ConnectReturnCode::Success,
        };
        self.put(Packet::ConnAck(ack, connack), &mut out)?;
        self.write(tls, &out, cancel).await?;
        out = BytesMut::new();

        let mut clock = Clock::new(self.last_read, self.window, cert_end);
        let mut need = 0;
        loop {
            while !rbuf.is_empty() && !clock.throttled() {
                let batch = self.uplink(&mut rbuf);
                need = batch.need;
                if let Some(wait) = batch.throttle {
                    clock.throttle(self.shared, wait);
                }
                if !batch.publishes.is_empty() {
                    tokio::select! {
                        biased;
                        _ = cancel.cancelled() => return Err(End::Cancelled),
                        ok = self.direct.uplink(self.id, batch.publishes) => if !ok {
                            return Err(End::BrokerClosed);
                        },
                    }
                }
                for r in batch.replies {
                    let packet = match r {
                        Reply::PubAck(pkid) => Packet::PubAck(
                            PubAck {
                                pkid,
                                reason: PubAckReason::Success,
                            },
                            None,
                        ),
                        Reply::SubAck(pkid, return_codes) => {
                            Packet::SubAck(SubAck { pkid, return_codes }, None)
                        }
                        Reply::UnsubAck(pkid, n) => Packet::UnsubAck(
                            UnsubAck {
                                pkid,
                                reasons: vec![UnsubAckReason::Success; n],
                            },
                            None,
                        ),
                        Reply::PingResp => Packet::PingResp(PingResp),
                    };
                    self.put(packet, &mut out)?;
                }
                if out.len() >= WRITE_CHUNK {
                    self.write(tls, &out, cancel).await?;
                    out.clear();
                }
                match batch.end {
                    Some(Ok(())) => {
                        if !out.is_empty() {
                            let _ = self.write(tls, &out, cancel).await;
                        }
                        return Ok(());
                    }
                    Some(Err(end)) => return Err(end),
                    None if batch.full || batch.throttle.is_some() => continue,
                    None => break,
                }
            }
            if !out.is_empty() {
                self.write(tls, &out, cancel).await?;
                out = BytesMut::new();
            }
            if rbuf.is_empty() && rbuf.capacity() > 0 {
                // Idle between packets: hold no read buffer while waiting.
                rbuf = BytesMut::new();
            }
            if self.unacked.is_empty() && self.unacked.capacity() > 0 {
                self.unacked = VecDeque::new();
            }

            let throttled = clock.throttled();
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return Err(End::Cancelled),
                d = mailbox.recv(), if self.unacked.len() < MAX_INFLIGHT => match d {
                    Some(d) => {
                        self.downlink(d, &mut out)?;
                        while self.unacked.len() < MAX_INFLIGHT && out.len() < WRITE_CHUNK {
                            match mailbox.try_recv() {
                                Ok(d) => self.downlink(d, &mut out)?,
                                Err(_) => break,
                            }
                        }
                        if !out.is_empty() {
                            self.write(tls, &out, cancel).await?;
                            out = BytesMut::new();
                        }
                    }
                    // A newer session of this cabinet took the table entry over.
                    None => return Err(End::Cancelled),
                },
                r = read_client(tls, &mut rbuf, need), if !throttled => match r {
                    Ok(0) => return Err(End::ClientClosed),
                    Ok(_) => self.last_read = Instant::now(),
                    Err(e) => return Err(End::Io(e)),
                },
                r = clock.fire(self.last_read) => {
                    r?;
                    self.last_read = Instant::now();
                }
            }
        }
    }

    async fn write(
        &self,
        tls: &mut TlsStream<TcpStream>,
        bytes: &[u8],
        cancel: &CancellationToken,
    ) -> Result<(), End> {
        write_client(self.shared, tls, bytes, self.window, cancel).await
    }

    /// Encodes a downlink for the cabinet at the QoS of its best matching subscription (not
    /// at all if none matches: counted as dropped, `not_subscribed`).
    fn downlink(&mut self, d: Downlink, out: &mut BytesMut) -> Result<(), End> {
        let topic = Topic::Down(self.id.clone(), d.kind).to_string();
        let qos = self
            .subs
            .iter()
            .filter(|(f, _)| matches(&topic, f))
            .map(|(_, q)| *q)
            .max_by_key(|q| *q as u8);
        let Some(qos) = qos else {
            self.direct.not_subscribed();
            return Ok(());
        };
        let mut p = wire::Publish {
            dup: false,
            qos: WireQoS::AtMostOnce,
            retain: false,
            topic,
            pkid: 0,
            payload: d.payload,
        };
        if qos != QoS::AtMostOnce {
            p.qos = WireQoS::AtLeastOnce;
            p.pkid = self.pkid();
            self.unacked.push_back(p.pkid);
        }
        if self.proto.is_v5() {
            let p5 = wire5::Publish {
                dup: false,
                qos: match p.qos {
                    WireQoS::AtMostOnce => rumqttc::v5::mqttbytes::QoS::AtMostOnce,
                    _ => rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                },
                retain: false,
                topic: p.topic.into_bytes().into(),
                pkid: p.pkid,
                payload: p.payload,
                properties: None,
            };
            return p5.write(out).map(|_| ()).map_err(|e| {
                End::Io(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("encoding a packet for the cabinet: {e:?}"),
                ))
            });
        }
        encode(&p, out)
    }

    /// Encodes one of the edge's own packets in the cabinet's protocol version.
    fn put(&self, packet: Packet, out: &mut BytesMut) -> Result<(), End> {
        self.proto.write(packet, out).map(|_| ()).map_err(|e| {
            End::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("encoding a packet for the cabinet: {e}"),
            ))
        })
    }

    /// The next packet id not awaiting an acknowledgement.
    fn pkid(&mut self) -> u16 {
        loop {
            self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
            if !self.unacked.contains(&self.next_pkid) {
                return self.next_pkid;
            }
        }
    }

    /// Parses and checks complete packets from `buf`, at most one batch: the publishes to
    /// hand on and the replies owed, in order.
    fn uplink(&mut self, buf: &mut BytesMut) -> Batch {
        let mut b = Batch::default();
        while b.taken < self.max_batch {
            let (_, packet, pkid) = match next_packet(
                self.shared,
                self.acl,
                &mut self.proto,
                self.bucket.as_mut(),
                buf,
                self.max_packet,
            ) {
                Ok(taken) => taken,
                Err(stop) => {
                    stop.record(&mut b.need, &mut b.throttle, &mut b.end);
                    return b;
                }
            };
            b.taken += 1;
            match packet {
                Packet::Publish(p, props) => {
                    if p.retain {
                        self.shared
                            .metrics
                            .retain_cleared
                            .with_label_values(&["publish"])
                            .inc();
                        self.shared.registry.report(
                            self.acl.identity().to_string(),
                            Reason::RetainCleared,
                            "PUBLISH with retain: passed on without it".into(),
                        );
                    }
                    let props = props.and_then(passed_on);
                    b.publishes
                        .push((Publish::new(p.topic, p.payload, false), props));
                    if let Some(id) = pkid {
                        b.replies.push(Reply::PubAck(id));
                    }
                }
                Packet::PubAck(ack, _) => match self.unacked.iter().position(|i| *i == ack.pkid) {
                    Some(at) => {
                        self.unacked.remove(at);
                    }
                    None => {
                        b.end = Some(Err(End::Refused((
                            Reason::UnexpectedPacket,
                            format!("PUBACK {} for no publish awaiting one", ack.pkid),
                        ))));
                        return b;
                    }
                },
                Packet::Subscribe(s, _) => {
                    let mut codes = Vec::with_capacity(s.filters.len());
                    for f in s.filters {
                        let qos = match f.qos {
                            QoS::AtMostOnce => QoS::AtMostOnce,
                            _ => QoS::AtLeastOnce,
                        };
                        codes.push(SubscribeReasonCode::Success(qos));
                        self.subs.retain(|(p, _)| *p != f.path);
                        self.subs.push((f.path, qos));
                    }
                    b.replies.push(Reply::SubAck(s.pkid, codes));
                }
                Packet::Unsubscribe(u, _) => {
                    self.subs.retain(|(p, _)| !u.filters.contains(p));
                    b.replies.push(Reply::UnsubAck(u.pkid, u.filters.len()));
                }
                Packet::PingReq(_) => b.replies.push(Reply::PingResp),
                Packet::Disconnect(d, _) => {
                    // MQTT 5 "disconnect with will message" asks for the will.
                    b.end = Some(End::on_disconnect(&d));
                    return b;
                }
                other => {
                    b.end = Some(Err(End::Refused((
                        Reason::UnexpectedPacket,
                        format!("a cabinet may not send {other:?}"),
                    ))));
                    return b;
                }
            }
        }
        b.full = true;
        b
    }
}

/// A packet the edge writes to a cabinet.
trait Encode {
    fn write_to(&self, out: &mut BytesMut) -> Result<usize, rumqttc::mqttbytes::Error>;
}

macro_rules! encodes {
    ($($t:ty),*) => {$(
        impl Encode for $t {
            fn write_to(&self, out: &mut BytesMut) -> Result<usize, rumqttc::mqttbytes::Error> {
                self.write(out)
            }
        }
    )*};
}
encodes!(wire::Publish);

/// The MQTT 5 properties of a cabinet's PUBLISH that pass on to subscribers: user properties,
/// content type and payload format; a message expiry interval becomes a deadline stamp
/// (integrators' sessions drop the message once it passed, or send the time left). Response
/// topic and correlation data (request/response between clients) do not: integrators never
/// publish, so no one could answer.
fn passed_on(p: PublishProperties) -> Option<PublishProperties> {
    let mut user_properties = p.user_properties;
    user_properties.retain(|(k, _)| k != EXPIRY_KEY);
    if let Some(secs) = p.message_expiry_interval {
        user_properties.push(expiry_stamp(secs));
    }
    let kept = PublishProperties {
        payload_format_indicator: p.payload_format_indicator,
        content_type: p.content_type,
        user_properties,
        ..Default::default()
    };
    (kept != PublishProperties::default()).then_some(kept)
}

fn encode(p: &impl Encode, out: &mut BytesMut) -> Result<(), End> {
    p.write_to(out).map(|_| ()).map_err(|e| {
        End::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("encoding a packet for the cabinet: {e:?}"),
        ))
    })
}
