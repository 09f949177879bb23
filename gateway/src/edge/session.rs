//! One established integrator's MQTT session (cabinets are served by `cabinet`), driven like
//! rumqttd's own `RemoteLink` but by the edge, in a single task per connection: it selects over the client's bytes, the router's
//! notifications (from the connection's local link), the keep-alive timer and cancellation.
//!
//! - Client to router: bytes are framed and parsed with rumqttd's v4 codec, every packet is
//!   checked by the [`Acl`], allowed packets are pushed into the link's buffer (up to the
//!   broker's batch size) and the router is told once per batch. A refused packet ends the
//!   session (the packets before it are handed over). A client PUBACK must acknowledge the
//!   oldest unacknowledged QoS 1 publish the edge sent it: rumqttd drops a link on an
//!   out-of-order acknowledgement, which the edge refuses itself instead. QoS 2 is not spoken
//!   (see `acl`): a QoS 2 subscription is granted QoS 1.
//! - Router to client: notifications are turned into packets (CONNACK, PUBLISH, PUBACK,
//!   SUBACK, UNSUBACK, PINGRESP; the router answers PINGREQ itself), encoded together and
//!   written in one go; `Unschedule` is answered with `wake` once they are written.
//! - Keep alive: nothing from the client for 1.5 x its keep alive, or a write it does not
//!   take within that time, ends the session.
//! - Abuse limits: an integrator never publishes (the ACL refuses it) and may subscribe to at
//!   most `max_filters_per_client` distinct filters per connection (counted without decrement
//!   on UNSUBSCRIBE: rumqttd keeps a filter's state after the last unsubscribe).
//! - Certificate lifetime: the session ends when the client certificate's notAfter passes.
//!
//! Nothing is read while a write waits (backpressure in both directions), and an idle session
//! holds no read or write buffer.

use std::collections::{HashSet, VecDeque};
use std::io;
use std::time::Duration;

use bytes::BytesMut;
use futures::FutureExt;
use rumqttd::local::LinkError;
use rumqttd::protocol::v4::V4;
use rumqttd::protocol::{Packet, Protocol, QoS};
use rumqttd::Notification;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

use super::acl::{Acl, Refusal, Session as ConnectInfo};
use super::metrics::Reason;
use super::relay::Shared;
use super::wire::{next_packet, publish_pkid, read_client, write_client, Clock, WRITE_CHUNK};
use crate::broker::Link;

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
    max_packet: usize,
    max_batch: usize,
    /// 1.5 x the client's keep alive.
    window: Duration,
    last_read: Instant,
    /// Packet ids of the QoS 1 publishes sent to the client and not yet acknowledged, oldest
    /// first (the router allows at most 100).
    unacked: VecDeque<u16>,
    /// The distinct filters an integrator subscribed to on this connection.
    filters: HashSet<String>,
}

/// Runs the session from the CONNACK until it ends; `cert_end` is when the client's
/// certificate stops being valid.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run(
    shared: &Shared,
    tls: &mut TlsStream<TcpStream>,
    acl: &Acl,
    link: &mut Link,
    connect: &ConnectInfo,
    pending: BytesMut,
    cert_end: Instant,
    cancel: &CancellationToken,
) -> Outcome {
    let mut st = State {
        shared,
        acl,
        max_packet: shared.max_packet(),
        max_batch: shared.links.max_batch(),
        window: Duration::from_millis(u64::from(connect.keep_alive) * 1500),
        last_read: Instant::now(),
        unacked: VecDeque::new(),
        filters: HashSet::new(),
    };
    match st.serve(tls, link, pending, cert_end, cancel).await {
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
        mut rbuf: BytesMut,
        cert_end: Instant,
        cancel: &CancellationToken,
    ) -> Result<(), End> {
        let mut out = BytesMut::new();
        match link.take_connack().and_then(Option::<Packet>::from) {
            Some(p @ Packet::ConnAck(..)) => self.encode(p, &mut out)?,
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
                    tokio::select! {
                        biased;
                        _ = cancel.cancelled() => return Err(End::Cancelled),
                        r = link.notify() => if r.is_err() {
                            return Err(End::BrokerClosed);
                        },
                    }
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
                n = link.rx.next() => Box::pin(self.downlink(tls, link, n, cancel)).await?,
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

    /// Parses, checks and pushes complete packets from `buf` into the link's buffer, at most
    /// one batch. Does not notify the router.
    fn uplink(&mut self, buf: &mut BytesMut, link: &Link) -> Batch {
        let mut batch = Batch::default();
        let mut queue = link.tx.buffer();
        while batch.pushed < self.max_batch {
            let (_, packet, _) = match next_packet(
                self.shared,
                self.acl,
                None, // no uplink rate limit: integrators do not publish
                buf,
                self.max_packet,
            ) {
                Ok(taken) => taken,
                Err(stop) => {
                    stop.record(&mut batch.need, &mut batch.throttle, &mut batch.end);
                    return batch;
                }
            };
            let packet = match packet {
                Packet::PubAck(ack, _) => {
                    if self.unacked.front() != Some(&ack.pkid) {
                        batch.end = Some(Err(End::Refused((
                            Reason::UnexpectedPacket,
                            format!(
                                "PUBACK {} is not for the oldest unacknowledged publish ({:?})",
                                ack.pkid,
                                self.unacked.front()
                            ),
                        ))));
                        return batch;
                    }
                    self.unacked.pop_front();
                    Packet::PubAck(ack, None)
                }
                Packet::Subscribe(mut s, _) => {
                    if let super::Identity::Integrator(_) = self.acl.identity() {
                        for f in &s.filters {
                            if !self.filters.contains(&f.path) {
                                self.filters.insert(f.path.clone());
                            }
                        }
                        let cap = self.shared.cfg.max_filters_per_client;
                        if self.filters.len() > cap {
                            batch.end = Some(Err(End::Refused((
                                Reason::TooManyFilters,
                                format!("more than {cap} distinct subscription filters"),
                            ))));
                            return batch;
                        }
                    }
                    for f in &mut s.filters {
                        if f.qos == QoS::ExactlyOnce {
                            f.qos = QoS::AtLeastOnce;
                        }
                    }
                    Packet::Subscribe(s, None)
                }
                Packet::Disconnect(..) => {
                    // The link sends the router its own DISCONNECT when it is closed.
                    batch.end = Some(Ok(()));
                    return batch;
                }
                // (No PUBLISH gets here: the ACL lets no integrator publish.)
                p => p,
            };
            queue.push_back(packet);
            batch.pushed += 1;
        }
        batch.full = true;
        batch
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
                        self.encode(p, &mut out)?;
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

    /// Encodes a router packet for the client (MQTT 3.1.1: properties dropped); records the
    /// packet id of a QoS 1 publish.
    fn encode(&mut self, packet: Packet, out: &mut BytesMut) -> Result<(), End> {
        let packet = match packet {
            Packet::Publish(p, _) => Packet::Publish(p, None),
            Packet::PubAck(p, _) => Packet::PubAck(p, None),
            Packet::SubAck(p, _) => Packet::SubAck(p, None),
            Packet::UnsubAck(p, _) => Packet::UnsubAck(p, None),
            Packet::ConnAck(p, _) => Packet::ConnAck(p, None),
            Packet::PingResp(p) => Packet::PingResp(p),
            // Nothing else goes to an MQTT 3.1.1 client (QoS 2 is not spoken; a server
            // closes instead of sending DISCONNECT).
            other => {
                tracing::debug!(packet = ?other, "edge: router packet not sent to the client");
                return Ok(());
            }
        };
        let is_publish = matches!(packet, Packet::Publish(..));
        let start = out.len();
        V4.write(packet, out).map_err(|e| {
            End::Io(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("encoding a packet for the client: {e}"),
            ))
        })?;
        if is_publish {
            if let Some(pkid) = publish_pkid(&out[start..]) {
                self.unacked.push_back(pkid);
            }
        }
        Ok(())
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

/// What one [`State::uplink`] pass did.
#[derive(Default)]
struct Batch {
    /// Packets pushed into the link's buffer.
    pushed: usize,
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
