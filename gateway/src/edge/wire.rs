//! What both kinds of client session share (a cabinet's, served by the edge itself, and an
//! integrator's, over its rumqttd link): taking the next packet from the client's bytes (framing,
//! size limit, the uplink rate limit, ACL), the session's timers ([`Clock`]: keep alive,
//! certificate end, rate-limit pause), and reading and writing the TLS stream.

use std::io;
use std::pin::Pin;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use futures::FutureExt;
use rumqttd::protocol::v4::{check, FixedHeader, PacketType};
use rumqttd::protocol::{Error as MqttError, Packet};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

use super::acl::{qos_bits, Acl};
use super::bucket::Bucket;
use super::metrics::Reason;
use super::proto::{AliasError, Proto, ReadError};
use super::relay::{Shared, READ_BUF};
use super::session::End;

/// Router or edge output encoded before it is written (a backlog is written in chunks of this
/// size).
pub(super) const WRITE_CHUNK: usize = 16 * 1024;

/// Longest single wait on the certificate's end (a timer is re-armed after it).
pub(super) const EXPIRY_STEP: Duration = Duration::from_secs(24 * 3600);

/// Why a pass over the client's buffered bytes stops before a complete packet.
pub(super) enum Stop {
    /// This many more bytes are needed for the next packet.
    Need(usize),
    /// The next packet is an uplink PUBLISH and the rate limit has no token for it yet: read
    /// nothing for this long (the packet stays in the buffer).
    Throttle(Duration),
    /// The session ends.
    End(End),
    /// An integrator's MQTT 5 PUBLISH was taken from the buffer and refused; the session
    /// answers it (PUBACK 0x87 at QoS 1, nothing at QoS 0) and goes on.
    RefusedPublish(Refused),
}

/// An integrator's refused MQTT 5 PUBLISH.
pub(super) struct Refused {
    pub refusal: super::acl::Refusal,
    /// Its packet id at QoS 1.
    pub pkid: Option<u16>,
}

impl Stop {
    /// Records the stop in a pass's fields.
    pub fn record(
        self,
        need: &mut usize,
        throttle: &mut Option<Duration>,
        end: &mut Option<Result<(), End>>,
    ) {
        match self {
            Stop::Need(n) => *need = n,
            Stop::Throttle(w) => *throttle = Some(w),
            Stop::End(e) => *end = Some(Err(e)),
            // Only integrators' sessions get it, and they handle it before recording.
            Stop::RefusedPublish(r) => *end = Some(Err(End::Refused(r.refusal))),
        }
    }
}

/// A complete packet the ACL allows and, for a QoS 1 PUBLISH, its packet id.
pub(super) type Taken = (FixedHeader, Packet, Option<u16>);

/// Takes the next packet from `buf` if it is complete: checks its size, the rate limit (for a
/// PUBLISH), its encoding (in the connection's protocol version), resolves an MQTT 5 topic
/// alias, checks the ACL, and counts its bytes.
pub(super) fn next_packet(
    shared: &Shared,
    acl: &Acl,
    proto: &mut Proto,
    bucket: Option<&mut Bucket>,
    buf: &mut BytesMut,
    max_packet: usize,
) -> Result<Taken, Stop> {
    let fh = match check(buf.iter(), max_packet) {
        Ok(fh) => fh,
        Err(MqttError::InsufficientBytes(n)) => return Err(Stop::Need(n)),
        Err(e @ MqttError::PayloadSizeLimitExceeded(_)) => {
            return Err(Stop::End(End::Refused((Reason::Oversized, e.to_string()))))
        }
        Err(e) => return Err(Stop::End(End::Refused((Reason::Malformed, e.to_string())))),
    };
    let len = fh.frame_length();
    let is_publish = matches!(fh.packet_type(), Ok(PacketType::Publish));
    if is_publish {
        if let Some(wait) = bucket.and_then(|b| b.take(Instant::now())) {
            return Err(Stop::Throttle(wait));
        }
    }
    let pkid = if is_publish && qos_bits(&fh) == 1 {
        buf.get(..len).and_then(publish_pkid)
    } else {
        None
    };
    let mut packet = match proto.read(&fh, buf, max_packet) {
        Ok(p) => p,
        Err(ReadError::Malformed(e)) => {
            return Err(Stop::End(End::Refused((Reason::Malformed, e))))
        }
        Err(ReadError::Unexpected(e)) => {
            return Err(Stop::End(End::Refused((Reason::UnexpectedPacket, e))))
        }
    };
    shared.metrics.bytes_in.inc_by(len as u64);
    if let Packet::Publish(p, props) = &mut packet {
        match proto.resolve_alias(p, props) {
            Ok(()) => {}
            Err(AliasError::Invalid(a)) => {
                return Err(Stop::End(End::Refused((
                    Reason::TopicAlias,
                    format!("topic alias {a} is 0 or above the maximum the edge announced"),
                ))))
            }
            Err(AliasError::Unknown(a)) => {
                return Err(Stop::End(End::Refused((
                    Reason::UnexpectedPacket,
                    format!("topic alias {a} was never set"),
                ))))
            }
        }
    }
    if let Err(r) = acl.inspect(&fh, &packet) {
        if matches!(packet, Packet::Publish(..))
            && r.0 == Reason::AclPublish
            && proto.is_v5()
            && acl.is_integrator()
        {
            return Err(Stop::RefusedPublish(Refused { refusal: r, pkid }));
        }
        return Err(Stop::End(End::Refused(r)));
    }
    Ok((fh, packet, pkid))
}

/// A session's timers: nothing from the client for `window` (1.5 x its keep alive), the end of
/// its certificate, and the pause of the uplink rate limit (allocated only while throttled: an
/// idle session keeps no timer for it).
pub(super) struct Clock {
    window: Duration,
    cert_end: Instant,
    idle: Pin<Box<Sleep>>,
    expiry: Pin<Box<Sleep>>,
    throttled: Option<Pin<Box<Sleep>>>,
}

impl Clock {
    pub fn new(last_read: Instant, window: Duration, cert_end: Instant) -> Self {
        Self {
            window,
            cert_end,
            idle: Box::pin(tokio::time::sleep_until(last_read + window)),
            expiry: Box::pin(tokio::time::sleep_until(
                cert_end.min(Instant::now() + EXPIRY_STEP),
            )),
            throttled: None,
        }
    }

    /// Whether the rate limit holds the client (read nothing).
    pub fn throttled(&self) -> bool {
        self.throttled.is_some()
    }

    /// Holds the client for `wait` (counted in the edge's metrics).
    pub fn throttle(&mut self, shared: &Shared, wait: Duration) {
        shared.metrics.throttled.inc();
        shared.metrics.throttled_seconds.inc_by(wait.as_secs_f64());
        self.throttled = Some(Box::pin(tokio::time::sleep_until(Instant::now() + wait)));
    }

    /// Waits for the next timer that matters, given when the client last sent something:
    /// `Ok` when the rate limit's pause ended (the client was sending all along: its keep
    /// alive counts from now), `Err` when the session must end. Cancel-safe.
    pub async fn fire(&mut self, last_read: Instant) -> Result<(), End> {
        loop {
            tokio::select! {
                _ = async {
                    match self.throttled.as_mut() {
                        Some(t) => t.as_mut().await,
                        None => std::future::pending().await,
                    }
                }, if self.throttled.is_some() => {
                    self.throttled = None;
                    return Ok(());
                }
                _ = self.expiry.as_mut() => {
                    let now = Instant::now();
                    if now >= self.cert_end {
                        return Err(End::Refused((
                            Reason::CertExpired,
                            "the client certificate expired while connected".into(),
                        )));
                    }
                    self.expiry.as_mut().reset(self.cert_end.min(now + EXPIRY_STEP));
                }
                _ = self.idle.as_mut() => {
                    let due = last_read + self.window;
                    if Instant::now() >= due {
                        return Err(End::Refused((
                            Reason::KeepAliveTimeout,
                            format!("nothing from the client for {:?}", self.window),
                        )));
                    }
                    self.idle.as_mut().reset(due);
                }
            }
        }
    }
}

/// Writes and flushes `bytes` to the client, which has `window` (one keep-alive window) to
/// take them.
pub(super) async fn write_client(
    shared: &Shared,
    tls: &mut TlsStream<TcpStream>,
    bytes: &[u8],
    window: Duration,
    cancel: &CancellationToken,
) -> Result<(), End> {
    let write = async {
        tls.write_all(bytes).await?;
        tls.flush().await
    };
    tokio::select! {
        biased;
        _ = cancel.cancelled() => Err(End::Cancelled),
        r = tokio::time::timeout(window, write) => match r {
            Ok(Ok(())) => {
                shared.metrics.bytes_out.inc_by(bytes.len() as u64);
                Ok(())
            }
            Ok(Err(e)) => Err(End::Io(e)),
            Err(_) => Err(End::Refused((
                Reason::KeepAliveTimeout,
                format!("the client did not read for {window:?}"),
            ))),
        },
    }
}

/// The packet id of a router publish at QoS 1 or 2 (`None` at QoS 0). rumqttd keeps a
/// publish's QoS and id private, so they are read back from its 3.1.1 encoding, made without
/// the payload (topic and header only: no copy of the message on the delivery path).
pub(super) fn router_pkid(p: &rumqttd::protocol::Publish) -> Option<u16> {
    use rumqttd::protocol::Protocol;
    let mut head = p.clone();
    head.payload = bytes::Bytes::new();
    let mut probe = BytesMut::new();
    rumqttd::protocol::v4::V4
        .write(Packet::Publish(head, None), &mut probe)
        .ok()?;
    publish_pkid(&probe)
}

/// The packet id of an encoded QoS 1 or 2 PUBLISH frame (`None` for QoS 0).
pub(super) fn publish_pkid(frame: &[u8]) -> Option<u16> {
    let fh = check(frame.iter(), usize::MAX).ok()?;
    if (fh.byte1 >> 1) & 0b11 == 0 {
        return None;
    }
    let vh = frame.get(fh.fixed_header_len..)?;
    let topic_len = usize::from(u16::from_be_bytes([*vh.first()?, *vh.get(1)?]));
    let id = vh.get(2 + topic_len..4 + topic_len)?;
    Some(u16::from_be_bytes([id[0], id[1]]))
}

/// Reads more client bytes into `buf`. Between packets the connection is idle: no buffer is
/// held while waiting (one byte is read into the stack first), then whatever is already
/// decrypted is taken without waiting. Cancel-safe (the only wait is the first read).
pub(super) async fn read_client(
    tls: &mut TlsStream<TcpStream>,
    buf: &mut BytesMut,
    need: usize,
) -> io::Result<usize> {
    if !buf.is_empty() {
        // Inside a packet: wait for the rest of it.
        buf.reserve(need.max(256));
        return tls.read_buf(buf).await;
    }
    let mut one = [0u8; 1];
    if tls.read(&mut one).await? == 0 {
        return Ok(0);
    }
    buf.reserve(READ_BUF);
    buf.put_u8(one[0]);
    match tls.read_buf(buf).now_or_never() {
        Some(Ok(n)) => Ok(1 + n),
        // An end or error right after the byte is seen by the next read.
        Some(Err(_)) | None => Ok(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use rumqttd::protocol::v4::V4;
    use rumqttd::protocol::{Protocol, Publish};

    #[test]
    fn publish_packet_ids_are_read_back_from_the_encoding() {
        let mut out = BytesMut::new();
        let p = Publish::new(Bytes::from_static(b"a/b"), Bytes::from_static(b"x"), false);
        V4.write(Packet::Publish(p, None), &mut out)
            .expect("encodes");
        assert_eq!(publish_pkid(&out), None);
        // A QoS 1 publish as the router sends it (decoded from the wire: the fields that
        // carry QoS and id are not settable from outside rumqttd).
        let mut wire = BytesMut::from(&[0x32, 8, 0, 3, b'a', b'/', b'b', 0x01, 0x2c, b'x'][..]);
        let Packet::Publish(p, _) = V4.read_mut(&mut wire, 100).expect("parses") else {
            panic!("not a publish");
        };
        let mut out = BytesMut::new();
        V4.write(Packet::Publish(p, None), &mut out)
            .expect("encodes");
        assert_eq!(publish_pkid(&out), Some(300));
        let Packet::Publish(p, _) = V4
            .read_mut(&mut BytesMut::from(&out[..]), 100)
            .expect("parses")
        else {
            panic!("not a publish");
        };
        assert_eq!(router_pkid(&p), Some(300), "read without the payload");
        assert_eq!(publish_pkid(&[0x32, 3, 0, 9, b'a']), None, "truncated");
    }
}
