//! One established integrator's MQTT session (cabinets are served by `cabinet`), driven like
//! rumqttd's own `RemoteLink` but by the edge, in a single task per connection: it selects over
//! the client's bytes, the router's notifications (from the connection's local link), the
//! keep-alive timer and cancellation. MQTT 3.1.1 and 5 are spoken ([`Proto`]).
//!
//! - Client to router: bytes are framed and parsed with rumqttd's codecs, every packet is
//!   checked by the [`Acl`], allowed packets are pushed into the link's buffer (up to the
//!   broker's batch size) and the router is told once per batch.
//! - SUBSCRIBE is judged filter by filter: refused filters (outside the ACL, beyond
//!   `max_filters_per_client`, not a valid filter, a shared subscription) get a SUBACK failure
//!   code (0x80 in 3.1.1; 0x87, 0x97, 0x8F, 0x9E in 5) and the connection stays; the allowed
//!   ones go to the router, and its SUBACK is merged with the refused codes in filter order.
//!   QoS 2 is not spoken (see `acl`): a QoS 2 subscription is granted QoS 1.
//! - An integrator never publishes: MQTT 5 gets PUBACK 0x87 at QoS 1 (a QoS 0 publish is
//!   dropped) and the connection stays; 3.1.1, which has no way to say it, is disconnected.
//! - Router to client: notifications are turned into packets (CONNACK, PUBLISH, PUBACK,
//!   SUBACK, UNSUBACK, PINGRESP; the router answers PINGREQ itself), encoded together and
//!   written in one go; `Unschedule` is answered with `wake` once they are written.
//! - QoS 1 deliveries: the client may acknowledge them in any order; rumqttd drops a link on
//!   an out-of-order acknowledgement, so the edge hands the router its PUBACKs in the order
//!   the router sent the publishes. An MQTT 5 client's receive maximum holds further
//!   publishes back in the edge until it acknowledges; a message larger than its maximum
//!   packet size is not sent to it (counted, acknowledged to the router in its turn); outbound
//!   topic aliases are used when the client takes them.
//! - Keep alive: nothing from the client for 1.5 x its keep alive, or a write it does not
//!   take within that time, ends the session.
//! - Certificate lifetime: the session ends when the client certificate's notAfter passes.
//!
//! Nothing is read while a write waits (backpressure in both directions), and an idle session
//! holds no read or write buffer.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::time::Duration;

use bytes::BytesMut;
use futures::FutureExt;
use rumqttd::local::LinkError;
use rumqttd::protocol::{
    ConnAck, ConnAckProperties, Packet, PubAck, PubAckProperties, PubAckReason, Publish,
    PublishProperties, QoS, SubAck, SubscribeReasonCode, UnsubAck, UnsubAckReason,
};
use rumqttd::Notification;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

use super::acl::{Acl, Refusal, Session as ConnectInfo};
use super::metrics::Reason;
use super::proto::parse_shared;
use super::proto::{Proto, SubRefusal};
use super::relay::Shared;
use super::shared::{Delivery, GroupKey, GroupRef, Membership};
use super::wire::{next_packet, read_client, write_client, Clock, Stop, WRITE_CHUNK};
use crate::broker::Link;
use answers::Split;

mod answers;
mod deliver;

/// How a session ended.
#[derive(Debug)]
pub(crate) enum End {
    /// The client sent DISCONNECT (no will).
    ClientDisconnected,
    /// The client closed the connection without DISCONNECT.
    ClientClosed,
    /// The router dropped the connection.
    BrokerClosed,
    /// Closed by the edge (disconnect on demand, revocation, takeover, shutdown).
    Cancelled,
    Io(io::Error),
    Refused(Refusal),
}

impl End {
    /// How a client's DISCONNECT ends its session: `Ok` (no will) for reason 0x00; any other
    /// MQTT 5 reason asks for the will, as a close without DISCONNECT does.
    pub(crate) fn on_disconnect(d: &rumqttd::protocol::Disconnect) -> Result<(), End> {
        if super::proto::publishes_will(d.reason_code) {
            Err(End::ClientClosed)
        } else {
            Ok(())
        }
    }
}

/// The end of a session and what the link must do about it.
pub(crate) struct Outcome {
    pub end: End,
    /// The client ended it with DISCONNECT: no will.
    pub clean: bool,
    /// The router has already dropped the connection.
    pub router_gone: bool,
}

impl From<End> for Outcome {
    fn from(end: End) -> Self {
        Outcome {
            clean: matches!(end, End::ClientDisconnected),
            router_gone: matches!(end, End::BrokerClosed),
            end,
        }
    }
}

/// Per-session state.
struct State<'a> {
    shared: &'a Shared,
    acl: &'a Acl,
    proto: Proto,
    max_packet: usize,
    max_batch: usize,
    /// 1.5 x the client's keep alive.
    window: Duration,
    last_read: Instant,
    /// The router's QoS 1 publishes not yet acknowledged to the router, oldest first: packet
    /// id and whether the client acknowledged it (or the edge dropped it for the client).
    /// The router allows at most 100.
    unacked: VecDeque<(u16, bool)>,
    /// Publishes sent to the client and not acknowledged by it (its receive maximum counts
    /// these).
    in_flight: usize,
    /// Publishes held back by the client's receive maximum, in order.
    held: VecDeque<Held>,
    /// PUBACKs for the router pushed into the link's buffer since the router was last told.
    acks_pushed: usize,
    /// The distinct filters an integrator subscribed to on this connection.
    filters: HashSet<String>,
    /// SUBACK codes decided by the edge for SUBSCRIBEs partly passed to the router.
    subacks: Split<SubscribeReasonCode>,
    /// The same for UNSUBSCRIBEs that also named shared subscriptions.
    unsubacks: Split<UnsubAckReason>,
    /// Shared subscription groups this session is a member of, by `$share/...` filter.
    memberships: HashMap<String, Membership>,
    /// Where the groups deliver to this session.
    group_tx: mpsc::Sender<Delivery>,
    group_rx: mpsc::Receiver<Delivery>,
    /// Group deliveries sent to the client at QoS 1 and not acknowledged, by the packet id the
    /// edge gave them (above the router's, which are 1 to 100).
    group_out: HashMap<u16, (GroupRef, u64)>,
    next_pkid: u16,
}

/// A publish waiting for room under the client's receive maximum.
enum Held {
    Router(Publish, Option<PublishProperties>, u16),
    Group(Delivery),
}

/// Packet ids the edge gives group deliveries (the router's own are 1 to 100).
const GROUP_PKIDS: std::ops::RangeInclusive<u16> = 1001..=u16::MAX;

/// Runs the session from the CONNACK until it ends; `cert_end` is when the client's
/// certificate stops being valid; `connack` holds the MQTT 5 CONNACK properties.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run(
    shared: &Shared,
    tls: &mut TlsStream<TcpStream>,
    acl: &Acl,
    link: &mut Link,
    connect: &ConnectInfo,
    connack: Option<ConnAckProperties>,
    pending: BytesMut,
    cert_end: Instant,
    cancel: &CancellationToken,
) -> Outcome {
    let (group_tx, group_rx) = mpsc::channel(super::shared::WINDOW * 2);
    let mut st = State {
        shared,
        acl,
        proto: Proto::new(
            connect.version,
            connect.limits.clone(),
            0, // integrators never publish: no inbound aliases
            shared.cfg.topic_alias_max,
        ),
        max_packet: shared.max_packet(),
        max_batch: shared.links.max_batch(),
        window: Duration::from_millis(u64::from(connect.keep_alive) * 1500),
        last_read: Instant::now(),
        unacked: VecDeque::new(),
        in_flight: 0,
        held: VecDeque::new(),
        acks_pushed: 0,
        filters: HashSet::new(),
        subacks: Split::default(),
        unsubacks: Split::default(),
        memberships: HashMap::new(),
        group_tx,
        group_rx,
        group_out: HashMap::new(),
        next_pkid: *GROUP_PKIDS.start(),
    };
    match st
        .serve(tls, link, connack, pending, cert_end, cancel)
        .await
    {
        Ok(()) => Outcome::from(End::ClientDisconnected),
        Err(end) => Outcome::from(end),
    }
}

impl State<'_> {
    /// Returns `Ok` when the client sent DISCONNECT, the reason otherwise.
    async fn serve(
        &mut self,
        tls: &mut TlsStream<TcpStream>,
        link: &mut Link,
        connack: Option<ConnAckProperties>,
        mut rbuf: BytesMut,
        cert_end: Instant,
        cancel: &CancellationToken,
    ) -> Result<(), End> {
        let mut out = BytesMut::new();
        match link.take_connack().and_then(Option::<Packet>::from) {
            Some(Packet::ConnAck(ack, _)) => {
                let ack = ConnAck {
                    session_present: ack.session_present,
                    code: ack.code,
                };
                self.put(Packet::ConnAck(ack, connack), &mut out)?
            }
            other => {
                return Err(End::Refused((
                    Reason::UpstreamUnavailable,
                    format!("the broker answered the connect with {other:?}"),
                )))
            }
        }
        Box::pin(self.write(tls, &out, cancel)).await?;
        drop(out);

        let mut clock = Clock::new(self.last_read, self.window, cert_end);
        let mut need = 0;
        loop {
            // Hand what the client already sent to the router, a batch per notification.
            while !rbuf.is_empty() && !clock.throttled() {
                let batch = self.uplink(&mut rbuf, link);
                need = batch.need;
                if let Some(wait) = batch.throttle {
                    clock.throttle(self.shared, wait);
                }
                if batch.pushed > 0 {
                    self.tell_router(link, cancel).await?;
                }
                let mut out = BytesMut::new();
                for p in batch.replies {
                    self.put(p, &mut out)?;
                }
                // Acknowledgements may have made room under the client's receive maximum.
                self.release_held(link, &mut out)?;
                if self.acks_pushed > 0 {
                    self.tell_router(link, cancel).await?;
                }
                if !out.is_empty() {
                    self.write(tls, &out, cancel).await?;
                }
                match batch.end {
                    Some(Ok(())) => return Ok(()),
                    Some(Err(end)) => return Err(end),
                    None if batch.full || batch.throttle.is_some() => continue,
                    None => break,
                }
            }
            if rbuf.is_empty() && rbuf.capacity() > 0 {
                // Idle between packets: hold no read buffer while waiting.
                rbuf = BytesMut::new();
            }
            if self.unacked.is_empty() && self.unacked.capacity() > 0 {
                self.unacked = VecDeque::new();
            }
            link.trim();

            let throttled = clock.throttled();
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return Err(End::Cancelled),
                // Boxed: its state exists only while it runs.
                n = link.rx.next() => {
                    Box::pin(self.downlink(tls, link, n, cancel)).await?;
                    if self.acks_pushed > 0 {
                        self.tell_router(link, cancel).await?;
                    }
                }
                Some(d) = self.group_rx.recv() => {
                    let mut out = BytesMut::new();
                    self.take_group_delivery(d, &mut out)?;
                    while out.len() < WRITE_CHUNK {
                        match self.group_rx.try_recv() {
                            Ok(d) => self.take_group_delivery(d, &mut out)?,
                            Err(_) => break,
                        }
                    }
                    if !out.is_empty() {
                        self.write(tls, &out, cancel).await?;
                    }
                }
                r = read_client(tls, &mut rbuf, need), if !throttled => match r {
                    Ok(0) => return Err(End::ClientClosed),
                    Ok(_) => self.last_read = Instant::now(),
                    Err(e) => return Err(End::Io(e)),
                },
                r = clock.fire(self.last_read) => {
                    r?;
                    // The pause ended; the client was sending all along.
                    self.last_read = Instant::now();
                }
            }
        }
    }

    /// Tells the router that packets were pushed into the link's buffer.
    async fn tell_router(&mut self, link: &Link, cancel: &CancellationToken) -> Result<(), End> {
        self.acks_pushed = 0;
        tokio::select! {
            biased;
            _ = cancel.cancelled() => Err(End::Cancelled),
            r = link.notify() => r.map_err(|_| End::BrokerClosed),
        }
    }

    /// Parses, checks and pushes complete packets from `buf` into the link's buffer, at most
    /// one batch; collects the edge's own answers. Does not notify the router.
    fn uplink(&mut self, buf: &mut BytesMut, link: &Link) -> Batch {
        let mut batch = Batch::default();
        while batch.pushed < self.max_batch {
            let (_, packet, _) = match next_packet(
                self.shared,
                self.acl,
                &mut self.proto,
                None, // no uplink rate limit: integrators do not publish
                buf,
                self.max_packet,
            ) {
                Ok(taken) => taken,
                Err(Stop::RefusedPublish(r)) => {
                    self.refused(r.refusal.clone());
                    if let Some(pkid) = r.pkid {
                        let ack = PubAck {
                            pkid,
                            reason: PubAckReason::NotAuthorized,
                        };
                        let props = PubAckProperties {
                            reason_string: Some("integrators may not publish".into()),
                            user_properties: Vec::new(),
                        };
                        batch.replies.push(Packet::PubAck(ack, Some(props)));
                    }
                    continue;
                }
                Err(stop) => {
                    stop.record(&mut batch.need, &mut batch.throttle, &mut batch.end);
                    return batch;
                }
            };
            match packet {
                Packet::PubAck(ack, _) => {
                    if let Some((group, seq)) = self.group_out.remove(&ack.pkid) {
                        group.ack(seq);
                        self.in_flight = self.in_flight.saturating_sub(1);
                        continue;
                    }
                    let Some(entry) = self
                        .unacked
                        .iter_mut()
                        .find(|(id, done)| *id == ack.pkid && !*done)
                    else {
                        batch.end = Some(Err(End::Refused((
                            Reason::UnexpectedPacket,
                            format!("PUBACK {} for no publish awaiting one", ack.pkid),
                        ))));
                        return batch;
                    };
                    entry.1 = true;
                    self.in_flight = self.in_flight.saturating_sub(1);
                    batch.pushed += self.ack_router(link);
                }
                Packet::Subscribe(mut s, props) => {
                    let mut codes = Vec::with_capacity(s.filters.len());
                    let mut allowed = Vec::with_capacity(s.filters.len());
                    for mut f in std::mem::take(&mut s.filters) {
                        match self.judge(&f.path) {
                            Ok(()) => {
                                if f.qos == QoS::ExactlyOnce {
                                    f.qos = QoS::AtLeastOnce;
                                }
                                if let Some(Ok((group, inner))) = parse_shared(&f.path) {
                                    let key = GroupKey {
                                        integrator: self.acl.identity().to_string(),
                                        group: group.to_owned(),
                                        filter: inner.to_owned(),
                                    };
                                    let qos1 = f.qos == QoS::AtLeastOnce;
                                    // A repeated SUBSCRIBE replaces the membership (its QoS).
                                    let m =
                                        self.shared.groups.join(key, qos1, self.group_tx.clone());
                                    self.memberships.insert(f.path.clone(), m);
                                    codes.push(Some(SubscribeReasonCode::Success(f.qos)));
                                } else {
                                    codes.push(None);
                                    allowed.push(f);
                                }
                            }
                            Err(code) => codes.push(Some(code)),
                        }
                    }
                    if let Some(return_codes) = self.subacks.record(s.pkid, codes) {
                        let ack = SubAck {
                            pkid: s.pkid,
                            return_codes,
                        };
                        batch.replies.push(Packet::SubAck(ack, None));
                        continue;
                    }
                    s.filters = allowed;
                    link.tx.buffer().push_back(Packet::Subscribe(s, props));
                    batch.pushed += 1;
                }
                Packet::Unsubscribe(mut u, props) => {
                    let mut reasons = Vec::with_capacity(u.filters.len());
                    let mut rest = Vec::with_capacity(u.filters.len());
                    for f in std::mem::take(&mut u.filters) {
                        if parse_shared(&f).is_some() {
                            let was = self.memberships.remove(&f).is_some();
                            reasons.push(Some(if was {
                                UnsubAckReason::Success
                            } else {
                                UnsubAckReason::NoSubscriptionExisted
                            }));
                        } else {
                            reasons.push(None);
                            rest.push(f);
                        }
                    }
                    if let Some(reasons) = self.unsubacks.record(u.pkid, reasons) {
                        let ack = UnsubAck {
                            pkid: u.pkid,
                            reasons,
                        };
                        batch.replies.push(Packet::UnsubAck(ack, None));
                        continue;
                    }
                    u.filters = rest;
                    link.tx.buffer().push_back(Packet::Unsubscribe(u, props));
                    batch.pushed += 1;
                }
                Packet::Disconnect(d, _) => {
                    // The link sends the router its own DISCONNECT when it is closed. MQTT 5
                    // "disconnect with will message" asks for the will.
                    batch.end = Some(End::on_disconnect(&d));
                    return batch;
                }
                // (No PUBLISH gets here: the ACL lets no integrator publish.)
                p => {
                    link.tx.buffer().push_back(p);
                    batch.pushed += 1;
                }
            }
        }
        batch.full = true;
        batch
    }

    /// Judges one SUBSCRIBE filter: `Err` with its SUBACK failure code (the refusal counted
    /// and logged once per client and reason).
    fn judge(&mut self, path: &str) -> Result<(), SubscribeReasonCode> {
        let refused = match self.acl.judge_filter(path) {
            Ok(()) => {
                let cap = self.shared.cfg.max_filters_per_client;
                if self.filters.contains(path) {
                    return Ok(());
                }
                if self.filters.len() >= cap {
                    (
                        SubRefusal::Quota,
                        Reason::TooManyFilters,
                        format!("more than {cap} distinct subscription filters ({path:?})"),
                    )
                } else {
                    self.filters.insert(path.to_owned());
                    return Ok(());
                }
            }
            Err(why @ SubRefusal::NotAuthorized) => {
                (why, Reason::AclSubscribe, format!("subscribe to {path:?}"))
            }
            Err(why @ SubRefusal::Invalid) => (
                why,
                Reason::InvalidFilter,
                format!("{path:?} is not a valid topic filter"),
            ),
            Err(why @ SubRefusal::Quota) => (why, Reason::TooManyFilters, path.to_owned()),
        };
        let (why, reason, detail) = refused;
        self.refused((reason, detail));
        Err(self.proto.suback_refusal(why))
    }

    /// Counts a refusal that does not end the session, and logs it (rate-limited).
    fn refused(&self, (reason, detail): Refusal) {
        self.shared.metrics.reject(reason);
        self.shared
            .registry
            .report(self.acl.identity().to_string(), reason, detail);
    }

    /// Pops the publishes at the front of `unacked` that are done and pushes their PUBACKs
    /// for the router into the link's buffer, in the router's order; returns how many.
    fn ack_router(&mut self, link: &Link) -> usize {
        let mut n = 0;
        while let Some((id, true)) = self.unacked.front().copied() {
            self.unacked.pop_front();
            link.tx.buffer().push_back(Packet::PubAck(
                PubAck {
                    pkid: id,
                    reason: PubAckReason::Success,
                },
                None,
            ));
            n += 1;
        }
        n
    }

    /// Writes `first` and every notification already waiting, then re-arms the link if the
    /// router unscheduled it.
    async fn downlink(
        &mut self,
        tls: &mut TlsStream<TcpStream>,
        link: &mut Link,
        first: Result<Option<Notification>, LinkError>,
        cancel: &CancellationToken,
    ) -> Result<(), End> {
        let mut out = BytesMut::new();
        let mut unscheduled = false;
        let mut next = Some(first);
        let mut end = None;
        while let Some(n) = next.take() {
            match n {
                Err(_) => {
                    end = Some(End::BrokerClosed);
                    break;
                }
                Ok(None) => {}
                Ok(Some(Notification::Unschedule)) => unscheduled = true,
                Ok(Some(Notification::Disconnect(..))) => {
                    end = Some(End::BrokerClosed);
                    break;
                }
                Ok(Some(n)) => {
                    if let Some(p) = Option::<Packet>::from(n) {
                        self.take_router_packet(p, link, &mut out)?;
                    }
                }
            }
            if out.len() >= WRITE_CHUNK {
                self.write(tls, &out, cancel).await?;
                out = BytesMut::new();
            }
            next = link.rx.next().now_or_never();
        }
        if !out.is_empty() {
            self.write(tls, &out, cancel).await?;
        }
        if let Some(end) = end {
            return Err(end);
        }
        if unscheduled && link.rx.wake().await.is_err() {
            return Err(End::BrokerClosed);
        }
        Ok(())
    }

    /// Encodes a packet for the client in its protocol version.
    fn put(&mut self, packet: Packet, out: &mut BytesMut) -> Result<(), End> {
        self.proto.write(packet, out).map(|_| ()).map_err(encoding)
    }

    /// Writes and flushes `bytes`; the client has one keep-alive window to take them.
    async fn write(
        &self,
        tls: &mut TlsStream<TcpStream>,
        bytes: &[u8],
        cancel: &CancellationToken,
    ) -> Result<(), End> {
        write_client(self.shared, tls, bytes, self.window, cancel).await
    }
}

/// An encoding failure ends the session (it cannot happen for what the edge builds).
fn encoding(e: rumqttd::protocol::Error) -> End {
    End::Io(io::Error::new(
        io::ErrorKind::InvalidData,
        format!("encoding a packet for the client: {e}"),
    ))
}

/// What one [`State::uplink`] pass did.
#[derive(Default)]
struct Batch {
    /// Packets pushed into the link's buffer.
    pushed: usize,
    /// Answers from the edge itself (SUBACK of refused filters, PUBACK 0x87), in order.
    replies: Vec<Packet>,
    /// The batch limit was reached (more complete packets may be buffered).
    full: bool,
    /// Bytes still missing for the next packet.
    need: usize,
    /// The next packet is an uplink PUBLISH and the rate limit has no token for it yet:
    /// read nothing for this long.
    throttle: Option<Duration>,
    /// The session ends: `Ok` on DISCONNECT, the reason otherwise.
    end: Option<Result<(), End>>,
}
