//! One client connection, from TCP accept to close: the TLS handshake (bounded by the
//! handshake semaphore and the deadline), identity and revocation checks, the first-packet
//! CONNECT check and rewrite, then the relay to the broker. Client-to-broker packets are framed,
//! checked by the [`Acl`] and forwarded as the client's own bytes; broker-to-client bytes are
//! copied as they come. Both directions apply backpressure (nothing is read while a write
//! waits), and idle connections hold no relay buffers.

use std::io;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use futures::FutureExt;
use rumqttc::mqttbytes::{check, Error as MqttError};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;
use tokio_rustls::LazyConfigAcceptor;
use tokio_util::sync::CancellationToken;

use super::acl::{Acl, Refusal};
use super::config::EdgeConfig;
use super::identity;
use super::metrics::{EdgeMetrics, Reason};
use super::registry::{ConnectionInfo, Registry};
use super::tls::{classify, TlsState};

/// Initial size of a connection's client-to-broker buffer (it grows for a bigger packet and
/// shrinks back after it; it is freed while the connection is idle).
const READ_BUF: usize = 2048;
/// Size of the broker-to-client chunk buffer (allocated only while bytes are flowing).
const COPY_BUF: usize = 4096;
/// Most TLS output buffered for one client (rustls' default is 64 KiB).
const TLS_SEND_LIMIT: usize = 16 * 1024;
/// Longest refusal detail that is logged.
const MAX_DETAIL: usize = 160;

/// Everything the connection tasks share.
pub(crate) struct Shared {
    pub cfg: EdgeConfig,
    pub upstream: SocketAddr,
    pub username: String,
    pub password: String,
    pub tls: Arc<TlsState>,
    pub metrics: EdgeMetrics,
    pub registry: Registry,
    pub handshakes: Semaphore,
    pub next_id: AtomicU64,
    /// Connections accepted and not yet closed (handshaking or relayed).
    pub live: AtomicUsize,
}

/// Holds one of the `live` slots; frees it on drop, however the task ends.
pub(crate) struct Slot(pub Arc<Shared>);

impl Slot {
    pub fn take(shared: &Arc<Shared>) -> Self {
        shared.live.fetch_add(1, Ordering::AcqRel);
        Slot(shared.clone())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Counts a running handshake for as long as it lives.
struct InFlight<'a>(&'a prometheus::IntGauge);

impl<'a> InFlight<'a> {
    fn new(g: &'a prometheus::IntGauge) -> Self {
        g.inc();
        Self(g)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A client that passed every check, its CONNECT already relayed.
struct Established {
    tls: TlsStream<TcpStream>,
    upstream: TcpStream,
    acl: Acl,
    serial: String,
    /// Bytes the client sent after its CONNECT, not yet checked.
    pending: BytesMut,
}

/// How a relayed connection ended.
enum End {
    ClientClosed,
    BrokerClosed,
    Cancelled,
    Io(io::Error),
    Refused(Refusal),
}

/// Serves one accepted TCP connection until it closes. `_slot` and `_done` are held for the
/// life of the task (connection count and shutdown completion).
pub(crate) async fn serve(
    slot: Slot,
    tcp: TcpStream,
    peer: SocketAddr,
    accepted_at: Instant,
    cancel: CancellationToken,
    _done: mpsc::Sender<()>,
) {
    let shared = slot.0.clone();
    let deadline = accepted_at + shared.cfg.handshake_timeout();
    let setup = tokio::select! {
        biased;
        _ = cancel.cancelled() => return,
        // Boxed: the handshake state (rustls and the acceptor) is large and would otherwise
        // size this task's allocation for the whole life of the connection.
        r = tokio::time::timeout_at(deadline, Box::pin(establish(&shared, tcp, accepted_at))) => r,
    };
    let est = match setup {
        Err(_) => {
            refuse(
                &shared,
                peer.ip().to_string(),
                (
                    Reason::HandshakeTimeout,
                    "no CONNECT within the deadline".into(),
                ),
            );
            return;
        }
        Ok(Err((who, refusal))) => {
            refuse(
                &shared,
                who.unwrap_or_else(|| peer.ip().to_string()),
                refusal,
            );
            return;
        }
        Ok(Ok(est)) => est,
    };

    let conn_id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let identity = est.acl.identity().clone();
    let info = ConnectionInfo {
        conn_id,
        identity: identity.clone(),
        peer,
        serial: est.serial.clone(),
        since: locker_schemas::now_millis(),
    };
    shared.registry.register(info, cancel.clone()).await;
    shared
        .metrics
        .sessions
        .with_label_values(&[identity.role()])
        .inc();
    tracing::debug!(%identity, conn_id, %peer, "edge: relaying");

    let end = AssertUnwindSafe(relay(&shared, est, &cancel))
        .catch_unwind()
        .await;
    match end {
        Ok(End::Refused(refusal)) => refuse(&shared, identity.to_string(), refusal),
        Ok(End::Io(e)) => tracing::debug!(%identity, conn_id, error = %e, "edge: connection error"),
        Ok(End::ClientClosed | End::BrokerClosed | End::Cancelled) => {
            tracing::debug!(%identity, conn_id, "edge: connection closed")
        }
        Err(_) => {
            tracing::error!(%identity, conn_id, "edge: relay task panicked; connection closed")
        }
    }
    shared.registry.unregister(conn_id).await;
}

/// Counts and (rate-limited) logs a refusal.
fn refuse(shared: &Shared, who: String, (reason, mut detail): Refusal) {
    shared.metrics.reject(reason);
    // Details quote client input (topics): keep log lines short.
    if detail.len() > MAX_DETAIL {
        let cut = (0..=MAX_DETAIL)
            .rev()
            .find(|i| detail.is_char_boundary(*i))
            .unwrap_or(0);
        detail.truncate(cut);
        detail.push('…');
    }
    shared.registry.report(who, reason, detail);
}

/// TLS handshake, identity, first packet, upstream CONNECT. On failure: who (once known) and
/// why.
async fn establish(
    shared: &Shared,
    tcp: TcpStream,
    accepted_at: Instant,
) -> Result<Established, (Option<String>, Refusal)> {
    let _ = tcp.set_nodelay(true);
    let tls_failed = |e: io::Error| (None, (classify(&e), e.to_string()));
    // Reading the ClientHello costs no CPU worth bounding: a client that connects and stalls
    // holds no handshake slot.
    let hello = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp)
        .await
        .map_err(tls_failed)?;
    let mut tls = {
        let _permit = shared
            .handshakes
            .acquire()
            .await
            .map_err(|_| (None, (Reason::TlsError, "edge is shutting down".into())))?;
        let _g = InFlight::new(&shared.metrics.handshakes_in_flight);
        hello
            .into_stream(shared.tls.config())
            .await
            .map_err(tls_failed)?
    };
    shared
        .metrics
        .handshake_seconds
        .observe(accepted_at.elapsed().as_secs_f64());
    // A slow client may hold at most this much encrypted output in the edge (plus the
    // kernel's socket buffer); beyond it the relay stops reading from the broker.
    tls.get_mut().1.set_buffer_limit(Some(TLS_SEND_LIMIT));
    let kind = match tls.get_ref().1.handshake_kind() {
        Some(rustls::HandshakeKind::Resumed) => "resumed",
        _ => "full",
    };
    shared.metrics.handshakes.with_label_values(&[kind]).inc();

    let der = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or_else(|| (None, (Reason::NoCert, "no client certificate".into())))?;
    let (identity, serial) = identity::from_cert_der(der.as_ref())
        .map_err(|e| (None, (Reason::BadIdentity, e.to_string())))?;
    let who = Some(identity.to_string());
    if shared.tls.revoked().contains(&serial) {
        // A resumed session skips verification: the CRL is checked here too.
        return Err((
            who,
            (Reason::Revoked, format!("serial {serial} is revoked")),
        ));
    }
    let acl = Acl::new(identity, &shared.cfg.integrator_acls);

    let max = shared.cfg.max_packet_bytes;
    let mut buf = BytesMut::with_capacity(READ_BUF);
    let fh = loop {
        match check(buf.iter(), max) {
            Ok(fh) => break fh,
            Err(MqttError::InsufficientBytes(n)) => {
                buf.reserve(n);
                match tls.read_buf(&mut buf).await {
                    Ok(0) => {
                        return Err((who, (Reason::ClosedEarly, "closed before CONNECT".into())))
                    }
                    Ok(_) => {}
                    Err(e) => return Err((who, (Reason::ClosedEarly, e.to_string()))),
                }
            }
            Err(e @ MqttError::PayloadSizeLimitExceeded(_)) => {
                return Err((who, (Reason::Oversized, e.to_string())))
            }
            Err(e) => return Err((who, (Reason::Malformed, e.to_string()))),
        }
    };
    let first = buf.split_to(fh.frame_length()).freeze();
    let connect = acl
        .connect(fh, first, &shared.username, &shared.password)
        .map_err(|r| (who.clone(), r))?;

    let upstream_failed =
        |e: io::Error| (who.clone(), (Reason::UpstreamUnavailable, e.to_string()));
    let mut upstream = TcpStream::connect(shared.upstream)
        .await
        .map_err(upstream_failed)?;
    let _ = upstream.set_nodelay(true);
    upstream
        .write_all(&connect)
        .await
        .map_err(upstream_failed)?;
    shared.metrics.bytes_in.inc_by(connect.len() as u64);
    Ok(Established {
        tls,
        upstream,
        acl,
        serial,
        pending: buf,
    })
}

/// Relays both directions until one ends or the connection is cancelled.
async fn relay(shared: &Shared, est: Established, cancel: &CancellationToken) -> End {
    let Established {
        tls,
        upstream,
        acl,
        pending,
        ..
    } = est;
    let (client_rd, client_wr) = tokio::io::split(tls);
    let (broker_rd, broker_wr) = upstream.into_split();
    tokio::select! {
        _ = cancel.cancelled() => End::Cancelled,
        end = uplink(shared, &acl, client_rd, broker_wr, pending) => end,
        end = downlink(shared, broker_rd, client_wr) => end,
    }
}

/// Client to broker: frame, check, forward the raw bytes of every allowed packet.
async fn uplink(
    shared: &Shared,
    acl: &Acl,
    mut rd: ReadHalf<TlsStream<TcpStream>>,
    mut wr: OwnedWriteHalf,
    mut buf: BytesMut,
) -> End {
    let max = shared.cfg.max_packet_bytes;
    loop {
        // Frame every complete packet in the buffer.
        let mut total = 0;
        let mut refusal = None;
        let mut need = 0;
        loop {
            match check(buf[total..].iter(), max) {
                Ok(fh) => total += fh.frame_length(),
                Err(MqttError::InsufficientBytes(n)) => {
                    need = n;
                    break;
                }
                Err(e @ MqttError::PayloadSizeLimitExceeded(_)) => {
                    refusal = Some((Reason::Oversized, e.to_string()));
                    break;
                }
                Err(e) => {
                    refusal = Some((Reason::Malformed, e.to_string()));
                    break;
                }
            }
        }
        // Check them in order; forward those before the first refused one, in one write.
        if total > 0 {
            let batch = buf.split_to(total).freeze();
            let mut ok = 0;
            while ok < total {
                let checked = check(batch[ok..].iter(), max)
                    .map_err(|e| (Reason::Malformed, e.to_string()))
                    .and_then(|fh| {
                        let len = fh.frame_length();
                        acl.inspect(fh, batch.slice(ok..ok + len)).map(|()| len)
                    });
                match checked {
                    Ok(len) => ok += len,
                    Err(r) => {
                        refusal = Some(r);
                        break;
                    }
                }
            }
            if ok > 0 {
                if let Err(e) = wr.write_all(&batch[..ok]).await {
                    return End::Io(e);
                }
                shared.metrics.bytes_in.inc_by(ok as u64);
            }
        }
        if let Some(r) = refusal {
            return End::Refused(r);
        }

        if buf.is_empty() {
            // Between packets: take what is already there without waiting; if nothing is,
            // the connection is idle: free the buffer and wait for one byte.
            if buf.capacity() > READ_BUF {
                buf = BytesMut::new();
            }
            if buf.capacity() > 0 {
                match rd.read_buf(&mut buf).now_or_never() {
                    Some(Ok(0)) => return End::ClientClosed,
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return End::Io(e),
                    None => buf = BytesMut::new(),
                }
            }
            let mut one = [0u8; 1];
            match rd.read(&mut one).await {
                Ok(0) => return End::ClientClosed,
                Ok(_) => {}
                Err(e) => return End::Io(e),
            }
            buf.reserve(READ_BUF);
            buf.put_u8(one[0]);
            match rd.read_buf(&mut buf).now_or_never() {
                Some(Ok(0)) => return End::ClientClosed,
                Some(Err(e)) => return End::Io(e),
                Some(Ok(_)) | None => {}
            }
        } else {
            // Inside a packet: wait for the rest of it.
            buf.reserve(need.max(256));
            match rd.read_buf(&mut buf).await {
                Ok(0) => return End::ClientClosed,
                Ok(_) => {}
                Err(e) => return End::Io(e),
            }
        }
    }
}

/// Broker to client: copy bytes as they come, with a buffer that exists only while they do.
async fn downlink(
    shared: &Shared,
    rd: OwnedReadHalf,
    mut wr: WriteHalf<TlsStream<TcpStream>>,
) -> End {
    loop {
        if let Err(e) = rd.readable().await {
            return End::Io(e);
        }
        let mut chunk = BytesMut::with_capacity(COPY_BUF);
        loop {
            match rd.try_read_buf(&mut chunk) {
                Ok(0) => {
                    let _ = wr.flush().await;
                    return End::BrokerClosed;
                }
                Ok(n) => {
                    if let Err(e) = wr.write_all(&chunk).await {
                        return End::Io(e);
                    }
                    chunk.clear();
                    shared.metrics.bytes_out.inc_by(n as u64);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return End::Io(e),
            }
        }
        if let Err(e) = wr.flush().await {
            return End::Io(e);
        }
    }
}
