//! One client connection, from TCP accept to close: the TLS handshake, identity, revocation
//! and certificate-expiry checks, the first-packet CONNECT check, registration (presence,
//! takeover of an older connection of the same identity), then for a cabinet its session served
//! by the edge ([`cabinet`](super::cabinet)), for an integrator its broker link (a rumqttd local
//! link, in-process) and the [`session`](super::session) loop, until the connection ends; the
//! will is published on an abnormal end, but not for a client cut off because its certificate
//! was revoked or expired.
//!
//! A handshake waiting for the peer holds nothing scarce: admission control
//! (`max_handshakes_in_progress`, see `hello`) counts a handshake only from its ClientHello and
//! for at most `admission_hold_ms` of waiting. Each phase (TCP accept to ClientHello, the rest of TLS, the CONNECT) has
//! its own deadline inside the overall one; handshakes in progress count against
//! `max_connections` (file descriptors are the real limit) and, if configured, against a
//! per-address limit ([`AddrSlot`]).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::BytesMut;
use futures::FutureExt;
use rumqttd::protocol::v4::check;
use rumqttd::protocol::Error as MqttError;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;
use tokio_rustls::LazyConfigAcceptor;
use tokio_util::sync::CancellationToken;

use super::acl::{Acl, Refusal, Session};
use super::cabinet;
use super::config::EdgeConfig;
use super::hello;
use super::identity;
use super::metrics::{EdgeMetrics, Reason};
use super::proto::{self, Version};
use rumqttd::protocol::ConnAckProperties;

mod integrator;
use super::registry::{ConnectionInfo, Registry};
use super::session::End;
use super::tls::{classify, TlsState};
use crate::broker::{Direct, Link, LinkFactory};
use locker_schemas::CabinetId;

/// Initial size of a connection's read buffer (it grows for a bigger packet and shrinks back
/// after it; it is freed while the connection is idle).
pub(super) const READ_BUF: usize = 2048;
/// Most TLS output buffered for one client (rustls' default is 64 KiB).
const TLS_SEND_LIMIT: usize = 16 * 1024;
/// Longest refusal detail that is logged.
const MAX_DETAIL: usize = 160;
/// How long the edge waits to write a refusal (CONNACK or MQTT 5 DISCONNECT) before it closes.
const SAY_GOODBYE: Duration = Duration::from_secs(1);

/// Everything the connection tasks share.
pub(crate) struct Shared {
    pub cfg: EdgeConfig,
    pub links: LinkFactory,
    pub tls: Arc<TlsState>,
    pub metrics: EdgeMetrics,
    pub registry: Registry,
    /// Handshakes in progress per client address (only with `max_handshakes_per_address`).
    pub per_address: Mutex<HashMap<IpAddr, usize>>,
    pub next_id: AtomicU64,
    /// Connections accepted and not yet closed (handshaking or established).
    pub live: AtomicUsize,
    /// TLS handshakes admitted and running (`max_handshakes_in_progress`).
    pub admissions: hello::Admissions,
    /// Per integrator client id, a count of its connections: an MQTT 5 session whose expiry
    /// timer fires is removed only if no connection of that client came since. Held across
    /// the removal, so a connection waits for a removal in progress.
    pub session_gens: Arc<tokio::sync::Mutex<HashMap<String, u64>>>,
    /// Shared subscription groups (`$share/{group}/{filter}`) of integrators.
    pub groups: super::shared::Groups,
    /// Cancelled when the edge stops (ends the session expiry timers and shared groups).
    pub cancel: CancellationToken,
}

impl Shared {
    /// The largest packet a client may send (remaining length): the edge's limit or the
    /// broker's, whichever is smaller.
    pub fn max_packet(&self) -> usize {
        self.cfg.max_packet_bytes.min(self.links.max_payload_size())
    }
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

/// Holds one of an address's handshake slots (with `max_handshakes_per_address`); frees it
/// on drop.
pub(crate) struct AddrSlot {
    shared: Arc<Shared>,
    ip: IpAddr,
}

impl AddrSlot {
    /// Takes a slot for `ip`; `None` when the address is at its limit. Only called when the
    /// limit is on.
    pub fn take(shared: &Arc<Shared>, ip: IpAddr) -> Option<Self> {
        let limit = shared.cfg.max_handshakes_per_address;
        let mut map = shared.per_address.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= limit {
            return None;
        }
        *n += 1;
        Some(Self {
            shared: shared.clone(),
            ip,
        })
    }
}

impl Drop for AddrSlot {
    fn drop(&mut self) {
        let mut map = self
            .shared
            .per_address
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
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

/// A client that passed every check up to and including its CONNECT, and then its broker
/// link: everything a connection keeps for its whole life, in one heap allocation (the
/// futures that serve it hold only references and their own small state).
struct Established {
    tls: TlsStream<TcpStream>,
    acl: Acl,
    serial: String,
    /// When the client certificate stops being valid (its notAfter).
    cert_end: SystemTime,
    session: Session,
    /// Bytes the client sent after its CONNECT, not yet checked.
    pending: BytesMut,
    /// The broker link, once made.
    link: Option<Link>,
}

impl Established {
    /// When the client certificate stops being valid, as a timer instant.
    fn cert_deadline(&self) -> Instant {
        Instant::now()
            + self
                .cert_end
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO)
    }

    /// Whether a session that ended with `end` was cut off because its certificate was
    /// revoked or has expired: it publishes no will (it is no longer trusted to speak).
    fn cut_off(&self, shared: &Shared, end: &End) -> bool {
        match end {
            End::Refused((Reason::CertExpired | Reason::Revoked, _)) => true,
            End::Cancelled => shared.tls.revoked().contains(&self.serial),
            _ => false,
        }
    }
}

/// Serves one accepted TCP connection until it closes. `_slot` and `_done` are held for the
/// life of the task (connection count and shutdown completion).
/// `addr_slot` (the per-address handshake count) is released once the handshake ends.
pub(crate) async fn serve(
    slot: Slot,
    addr_slot: Option<AddrSlot>,
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
    drop(addr_slot);

    // Boxed: `serve` keeps no handshake-time state for the life of the connection (the
    // connection's own state is in `est`, one allocation).
    Box::pin(connected(&shared, est, peer, &cancel)).await;
}

/// Registers an established client, runs it and unregisters it.
async fn connected(
    shared: &Shared,
    est: Box<Established>,
    peer: SocketAddr,
    cancel: &CancellationToken,
) {
    let conn_id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let identity = est.acl.identity().clone();
    let info = ConnectionInfo {
        conn_id,
        identity: identity.clone(),
        client: match &identity {
            super::Identity::Integrator(_) => Some(est.session.client_id.clone()),
            super::Identity::Cabinet(_) => None,
        },
        peer,
        serial: est.serial.clone(),
        since: locker_schemas::now_millis(),
    };
    let predecessors = shared.registry.register(info, cancel.clone()).await;
    shared
        .metrics
        .sessions
        .with_label_values(&[identity.role()])
        .inc();
    shared
        .metrics
        .protocols
        .with_label_values(&[est.session.version.as_str(), identity.role()])
        .inc();
    tracing::debug!(%identity, conn_id, %peer, "edge: accepted");

    let end = AssertUnwindSafe(run(shared, est, conn_id, predecessors, cancel))
        .catch_unwind()
        .await;
    match end {
        Ok(End::Refused(refusal)) => refuse(shared, identity.to_string(), refusal),
        Ok(End::Io(e)) => tracing::debug!(%identity, conn_id, error = %e, "edge: connection error"),
        Ok(end) => tracing::debug!(%identity, conn_id, ?end, "edge: connection closed"),
        Err(_) => {
            tracing::error!(%identity, conn_id, "edge: connection task panicked; connection closed")
        }
    }
    // Only now: a takeover waiting for this connection starts its session after this one's
    // has ended at the router (the link is closed, or dropped, by then).
    shared.registry.unregister(conn_id).await;
}

/// Takeover, link, session; closes the link at the end. The setup and the close run in
/// boxed futures of their own, so the future that lives as long as the connection holds only
/// the session's state. An MQTT 5 session the edge ends gets a DISCONNECT with the reason.
async fn run(
    shared: &Shared,
    mut est: Box<Established>,
    conn_id: u64,
    predecessors: oneshot::Receiver<()>,
    cancel: &CancellationToken,
) -> End {
    let est = &mut *est;
    if wait_for_predecessors(shared, est.acl.identity(), predecessors, cancel)
        .await
        .is_err()
    {
        return End::Cancelled;
    }
    let end = if let super::Identity::Cabinet(id) = est.acl.identity().clone() {
        // The broker always sets the direct paths up (`EmbeddedBroker::start`).
        match shared.links.direct() {
            Some(direct) => Box::pin(run_cabinet(shared, est, &id, direct, conn_id, cancel)).await,
            None => End::Refused((
                Reason::UpstreamUnavailable,
                "the broker has no direct cabinet paths".into(),
            )),
        }
    } else {
        Box::pin(integrator::run(shared, est, cancel)).await
    };
    if est.session.version == Version::V5 {
        Box::pin(say_goodbye(shared, est, &end)).await;
    }
    end
}

/// Writes the MQTT 5 DISCONNECT that says why the edge ended a session (nothing when the
/// client ended it).
async fn say_goodbye(shared: &Shared, est: &mut Established, end: &End) {
    use rumqttd::protocol::DisconnectReasonCode as Code;
    let (code, detail) = match end {
        End::Refused((reason, detail)) => (proto::disconnect_code(*reason), detail.as_str()),
        End::Cancelled if shared.cancel.is_cancelled() => {
            (Code::ServerShuttingDown, "the gateway is stopping")
        }
        End::Cancelled if shared.tls.revoked().contains(&est.serial) => {
            (Code::NotAuthorized, "the client certificate was revoked")
        }
        End::Cancelled => (
            Code::SessionTakenOver,
            "closed by the gateway (another connection of this identity, or an operator)",
        ),
        End::BrokerClosed => (Code::UnspecifiedError, "the broker closed the session"),
        _ => return,
    };
    let p = proto::Proto::new(Version::V5, Default::default(), 0, 0);
    if let Some(bytes) = p.disconnect(code, detail) {
        let say = async {
            est.tls.write_all(&bytes).await?;
            est.tls.flush().await
        };
        let _ = tokio::time::timeout(SAY_GOODBYE, say).await;
    }
}

/// Waits for an older connection of the same identity to end (takeover); `Err` if this one
/// was closed meanwhile.
async fn wait_for_predecessors(
    shared: &Shared,
    identity: &super::Identity,
    predecessors: oneshot::Receiver<()>,
    cancel: &CancellationToken,
) -> Result<(), ()> {
    let window = shared.cfg.handshake_timeout();
    tokio::select! {
        biased;
        _ = cancel.cancelled() => return Err(()),
        r = tokio::time::timeout(window, predecessors) => if r.is_err() {
            tracing::warn!(%identity, "edge: the previous connection did not close in time; taking over anyway");
        },
    }
    Ok(())
}

/// A cabinet's session, served by the edge itself (no link of its own, see
/// [`crate::broker::Direct`]); its will goes to the router through its shared uplink link.
async fn run_cabinet(
    shared: &Shared,
    est: &mut Established,
    id: &CabinetId,
    direct: &Direct,
    conn_id: u64,
    cancel: &CancellationToken,
) -> End {
    let pending = std::mem::take(&mut est.pending);
    let cert_end = est.cert_deadline();
    let connack = (est.session.version == Version::V5).then(|| {
        let mut p = connack_properties(shared, &est.session);
        // No session is kept for a cabinet between connections (see `cabinet`).
        if est.session.session_expiry != 0 {
            p.session_expiry_interval = Some(0);
        }
        p
    });
    let outcome = cabinet::run(
        shared,
        &mut est.tls,
        &est.acl,
        direct,
        id,
        conn_id,
        &est.session,
        connack,
        pending,
        cert_end,
        cancel,
    )
    .await;
    let cut_off = est.cut_off(shared, &outcome.end);
    if !(outcome.clean || cut_off) {
        if let Some(w) = est.session.will.take() {
            let will = rumqttd::protocol::Publish::new(w.topic, w.message, false);
            direct.uplink(id, vec![(will, None)]).await;
        }
    }
    outcome.end
}

/// The MQTT 5 CONNACK properties of an accepted session: what the edge offers and enforces.
/// The client id the edge assigned (the client sent none) goes back in it.
pub(super) fn connack_properties(shared: &Shared, session: &Session) -> ConnAckProperties {
    let cfg = &shared.cfg;
    ConnAckProperties {
        receive_max: Some(cfg.receive_max),
        max_qos: Some(1),
        retain_available: Some(0),
        max_packet_size: u32::try_from(shared.max_packet()).ok(),
        assigned_client_identifier: session
            .client_id_assigned
            .then(|| session.client_id.clone()),
        topic_alias_max: Some(cfg.topic_alias_max),
        wildcard_subscription_available: Some(1),
        subscription_identifiers_available: Some(0),
        shared_subscription_available: Some(1),
        server_keep_alive: session.server_keep_alive,
        ..proto::empty_connack_properties()
    }
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

/// TLS handshake, identity, first packet. On failure: who (once known) and why.
async fn establish(
    shared: &Shared,
    tcp: TcpStream,
    accepted_at: Instant,
) -> Result<Box<Established>, (Option<String>, Refusal)> {
    let _ = tcp.set_nodelay(true);
    let cfg = &shared.cfg;
    let tls_failed = |e: io::Error| (None, (classify(&e), e.to_string()));
    let timed_out = |phase: &str, after: Duration| {
        (
            None,
            (
                Reason::HandshakeTimeout,
                format!("no {phase} within {after:?}"),
            ),
        )
    };
    // Nothing scarce is held while waiting for the peer, in any phase: each phase has its own
    // deadline, and handshakes in progress are bounded by `max_connections`.
    let hello_by = Instant::now() + cfg.hello_timeout();
    let max = cfg.max_handshakes_in_progress;
    let resuming = if max > 0 {
        tokio::time::timeout_at(hello_by, hello::offers_resumption(&tcp))
            .await
            .map_err(|_| timed_out("ClientHello", cfg.hello_timeout()))?
            .map_err(tls_failed)?
    } else {
        false
    };
    let hello = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp);
    let hello = tokio::time::timeout_at(hello_by, hello)
        .await
        .map_err(|_| timed_out("ClientHello", cfg.hello_timeout()))?
        .map_err(tls_failed)?;
    // Admission: the CPU of the handshake is spent from here on.
    let Some(admitted) = shared.admissions.admit(max, resuming) else {
        let kind = if resuming { "resuming" } else { "full" };
        return Err((
            None,
            (
                Reason::Busy,
                format!(
                    "{max} handshakes in progress ({kind} handshake refused; the client retries)"
                ),
            ),
        ));
    };
    let mut tls = {
        // The place is held while the handshake can be using CPU; a handshake still waiting
        // for its client after `admission_hold_ms` gives it back (a stalled client then holds
        // nothing scarce, as before admission control).
        let _g = InFlight::new(&shared.metrics.handshakes_in_flight);
        let mut admitted = Some(admitted);
        let handshake = hello.into_stream(shared.tls.config());
        tokio::pin!(handshake);
        let hold = tokio::time::sleep(cfg.admission_hold());
        tokio::pin!(hold);
        let run = async {
            loop {
                tokio::select! {
                    r = &mut handshake => break r,
                    _ = &mut hold, if admitted.is_some() => admitted = None,
                }
            }
        };
        tokio::time::timeout(cfg.tls_timeout(), run)
            .await
            .map_err(|_| timed_out("TLS handshake", cfg.tls_timeout()))?
            .map_err(tls_failed)?
    };
    shared
        .metrics
        .handshake_seconds
        .observe(accepted_at.elapsed().as_secs_f64());
    // A slow client may hold at most this much encrypted output in the edge (plus the
    // kernel's socket buffer); beyond it the session stops taking from the broker.
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
    // A resumed session skips certificate verification (rustls restores the certificate
    // from the ticket): the validity period is checked here, on every handshake.
    let cert_end = identity::not_after(der.as_ref())
        .map_err(|e| (who.clone(), (Reason::BadIdentity, e.to_string())))?;
    if cert_end <= SystemTime::now() {
        return Err((
            who,
            (
                Reason::CertExpired,
                format!("certificate {serial} has expired ({kind} handshake)"),
            ),
        ));
    }
    if shared.tls.revoked().contains(&serial) {
        // A resumed session skips verification: the CRL is checked here too.
        return Err((
            who,
            (Reason::Revoked, format!("serial {serial} is revoked")),
        ));
    }
    let acl = Acl::new(identity, &shared.cfg.integrator_acls);

    let max = shared.max_packet();
    let mut buf = BytesMut::with_capacity(READ_BUF);
    let connect_by = Instant::now() + cfg.connect_timeout();
    let fh = loop {
        match check(buf.iter(), max) {
            Ok(fh) => break fh,
            Err(MqttError::InsufficientBytes(n)) => {
                buf.reserve(n);
                match tokio::time::timeout_at(connect_by, tls.read_buf(&mut buf)).await {
                    Ok(Ok(0)) => {
                        return Err((who, (Reason::ClosedEarly, "closed before CONNECT".into())))
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Err((who, (Reason::ClosedEarly, e.to_string()))),
                    Err(_) => {
                        let after = cfg.connect_timeout();
                        return Err((
                            who,
                            (
                                Reason::HandshakeTimeout,
                                format!("no CONNECT within {after:?} of the TLS handshake"),
                            ),
                        ));
                    }
                }
            }
            Err(e @ MqttError::PayloadSizeLimitExceeded(_)) => {
                return Err((who, (Reason::Oversized, e.to_string())))
            }
            Err(e) => return Err((who, (Reason::Malformed, e.to_string()))),
        }
    };
    let first = buf.split_to(fh.frame_length());
    shared.metrics.bytes_in.inc_by(first.len() as u64);
    let session = match acl.connect(&fh, first) {
        Ok(s) => s,
        Err((refusal, version)) => {
            // Answer in the version the client speaks, where the spec gives an answer.
            if let Some(v) = version {
                let answer = proto::connack_refusal(v, refusal.0, &refusal.1);
                if !answer.is_empty() {
                    let say = async {
                        tls.write_all(&answer).await?;
                        tls.flush().await
                    };
                    let _ = tokio::time::timeout(SAY_GOODBYE, say).await;
                }
            }
            return Err((who, refusal));
        }
    };
    let mut session = session;
    if session.client_id.is_empty() {
        if acl.is_integrator() && session.version == Version::V4 && !session.clean_session {
            // MQTT 3.1.1: a persistent session needs a client id to find it again.
            let answer = [0x20, 0x02, 0x00, 0x02];
            let _ = tokio::time::timeout(SAY_GOODBYE, async {
                tls.write_all(&answer).await?;
                tls.flush().await
            })
            .await;
            return Err((
                who,
                (
                    Reason::Malformed,
                    "empty client id with a persistent session (identifier rejected)".into(),
                ),
            ));
        }
        // A cabinet's session is its identity; an integrator's gets one unique for the process
        // (an empty client id never takes another session over). MQTT 5 is told in CONNACK.
        session.client_id = match acl.identity() {
            super::Identity::Cabinet(c) => c.to_string(),
            super::Identity::Integrator(_) => {
                format!("auto-{}", shared.next_id.fetch_add(1, Ordering::Relaxed))
            }
        };
        session.client_id_assigned = true;
    }
    if session.will_retain_cleared {
        shared
            .metrics
            .retain_cleared
            .with_label_values(&["will"])
            .inc();
        if let Some(who) = &who {
            shared.registry.report(
                who.clone(),
                Reason::RetainCleared,
                "retained will: kept without retain".into(),
            );
        }
    }
    Ok(Box::new(Established {
        tls,
        acl,
        serial,
        cert_end,
        session,
        pending: buf,
        link: None,
    }))
}
