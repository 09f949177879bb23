//! The mTLS edge in front of the embedded broker (architecture sections 2 and 4, invariant 5).
//!
//! It owns the public MQTT listener: TLS handshakes run concurrently, each in its own task
//! with per-phase deadlines and holding nothing scarce while it waits for the peer, so
//! stalled clients (up to `max_connections` of them) never delay another; the
//! client certificate must chain to the fleet CA and not be revoked (the CRL is re-read when
//! it changes, and clients whose serial becomes revoked are disconnected); the identity comes
//! from the certificate. An integrator's MQTT 3.1.1 session is then served in-process through
//! its own rumqttd local link ([`crate::broker::LinkFactory`]), a cabinet's by the edge itself
//! (below): the client id is the identity, every PUBLISH, SUBSCRIBE and will is checked against the identity's ACL (a
//! violation closes that connection), the will is kept and published by the edge, and keep
//! alive is enforced. No socket is opened towards the broker: a cabinet costs one file
//! descriptor. The edge is the authority on cabinet presence ([`PresenceEvent`]).
//!
//! Cabinets are the exception to "a link per client": a cabinet's session is served by the edge
//! itself (`cabinet`), its downlinks handed to it directly and its uplinks passed to the router
//! through a few shared links ([`crate::broker::Direct`]), because a router connection and
//! subscription per cabinet is what limited a 10,000-cabinet fleet (BENCHMARKS.md).
//!
//! Submodules: [`config`] (settings), `tls` (rustls configuration and CRL), `verifier` (client
//! certificates against the fleet CA and the revoked serials), `tickets` (TLS
//! ticket keys kept across restarts), `hello` (admission control at the ClientHello), `identity`, `acl` (packet rules), `proto` (MQTT 3.1.1 or 5: codecs, client limits, topic aliases, reason codes), `bucket` (the uplink
//! rate limit), `relay` (one connection up to its session), `session` (an integrator's MQTT
//! session over its link), `shared` (shared subscription groups), `cabinet` (a cabinet's session, served directly), `wire` (what both sessions share), `registry`
//! (connection table, presence, takeover, disconnects), `metrics`.

mod acl;
mod bucket;
mod cabinet;
pub mod config;
mod hello;
mod identity;
mod metrics;
mod proto;
mod registry;
mod relay;
mod session;
mod shared;
mod tickets;
mod tls;
mod verifier;
mod wire;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use config::{ConfigError, EdgeConfig};
pub use identity::{Identity, IdentityError};
pub use metrics::Reason;
pub use registry::{ConnectionInfo, PresenceEvent};
pub use tls::TlsError;
pub(crate) use tls::{read_certs, read_key};

use crate::broker::LinkFactory;
use metrics::EdgeMetrics;
use registry::Registry;
use relay::{AddrSlot, Shared, Slot};
use tls::{FileSig, TlsState};

/// Why the edge could not start or reload.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    #[error("edge configuration: {0}")]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("binding the edge listener on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("registering edge metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("the revocation list was not reloaded: {0}")]
    Reload(String),
    #[error("the edge has shut down")]
    Stopped,
}

/// Starts the edge; see [`Edge::start`].
pub struct Edge;

impl Edge {
    /// Loads the TLS material, binds `cfg.listen` and runs the edge on the current tokio
    /// runtime. Each client gets a link to the broker from `links`. Metrics are registered
    /// into `registry`; cabinet presence changes are sent on `presence` (the caller must keep
    /// draining it: the edge waits rather than drop an event).
    ///
    /// Returns the handle and the bound address (useful with port 0).
    pub async fn start(
        cfg: EdgeConfig,
        links: LinkFactory,
        registry: &prometheus::Registry,
        presence: mpsc::Sender<PresenceEvent>,
    ) -> Result<(EdgeHandle, SocketAddr), EdgeError> {
        cfg.validate()?;
        if cfg.max_concurrent_handshakes.is_some() {
            tracing::warn!(
                "edge.max_concurrent_handshakes is no longer used (handshakes never wait for a \
                 slot; see edge.hello_timeout_ms, tls_timeout_ms, connect_timeout_ms): remove it"
            );
        }
        let load_cfg = cfg.clone();
        let (tls, crl_sig) = tokio::task::spawn_blocking(move || TlsState::load(&load_cfg))
            .await
            .map_err(|e| TlsError::Join(e.to_string()))??;
        let tls = Arc::new(tls);
        let metrics = EdgeMetrics::register(registry)?;
        if let Some(direct) = links.direct() {
            for c in direct.collectors() {
                registry.register(c)?;
            }
        }
        metrics.revoked_serials.set(tls.revoked().len() as i64);
        metrics
            .crl_number
            .set(tls.crl_number().map_or(0, |n| n as i64));

        let listener = TcpListener::bind(cfg.listen)
            .await
            .map_err(|source| EdgeError::Bind {
                addr: cfg.listen,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| EdgeError::Bind {
            addr: cfg.listen,
            source,
        })?;

        let registry = Registry::spawn(presence, tls.revoked(), metrics.clone());
        let cancel = CancellationToken::new();
        let groups = shared::Groups::new(links.clone(), metrics.shared.clone(), cancel.clone());
        let shared = Arc::new(Shared {
            per_address: std::sync::Mutex::new(std::collections::HashMap::new()),
            cfg,
            links,
            tls,
            metrics,
            registry,
            next_id: AtomicU64::new(1),
            live: AtomicUsize::new(0),
            admissions: hello::Admissions::default(),
            session_gens: Arc::new(tokio::sync::Mutex::new(std::collections::HashMap::new())),
            groups,
            cancel: cancel.clone(),
        });
        let (done_tx, done_rx) = mpsc::channel(1);
        let (reload_tx, reload_rx) = mpsc::channel(8);
        tokio::spawn(accept_loop(
            shared.clone(),
            listener,
            cancel.clone(),
            done_tx.clone(),
        ));
        if let Some(keys) = shared.tls.tickets().cloned() {
            tokio::spawn(rotate_tickets(keys, cancel.clone(), done_tx.clone()));
        }
        tokio::spawn(crl_watch(
            shared.clone(),
            crl_sig,
            reload_rx,
            cancel.clone(),
            done_tx,
        ));
        tracing::info!(%local_addr, "edge listening");
        let handle = EdgeHandle {
            inner: Arc::new(HandleInner {
                shared,
                cancel,
                local_addr,
                reload_tx,
                done: tokio::sync::Mutex::new(Some(done_rx)),
            }),
        };
        Ok((handle, local_addr))
    }
}

/// A reload request: the reply carries how many connections were closed.
type ReloadReply = oneshot::Sender<Result<usize, String>>;

struct HandleInner {
    shared: Arc<Shared>,
    cancel: CancellationToken,
    local_addr: SocketAddr,
    reload_tx: mpsc::Sender<ReloadReply>,
    done: tokio::sync::Mutex<Option<mpsc::Receiver<()>>>,
}

/// Controls a running edge (cheap to clone).
#[derive(Clone)]
pub struct EdgeHandle {
    inner: Arc<HandleInner>,
}

impl EdgeHandle {
    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// Every connection whose CONNECT was accepted, oldest first.
    pub async fn connected(&self) -> Vec<ConnectionInfo> {
        self.inner.shared.registry.list().await
    }

    /// Closes every connection of `identity`; returns how many were closed.
    pub async fn disconnect(&self, identity: &Identity) -> usize {
        self.inner
            .shared
            .registry
            .disconnect(identity.clone())
            .await
    }

    /// Re-reads the CRL now (without waiting for the poll) and closes every connection whose
    /// certificate it revokes; returns how many were closed. On error the previous CRL stays.
    pub async fn reload_revocations(&self) -> Result<usize, EdgeError> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .reload_tx
            .send(tx)
            .await
            .map_err(|_| EdgeError::Stopped)?;
        match rx.await {
            Ok(Ok(n)) => Ok(n),
            Ok(Err(what)) => Err(EdgeError::Reload(what)),
            Err(_) => Err(EdgeError::Stopped),
        }
    }

    /// Whether [`EdgeHandle::shutdown`] was called.
    pub fn is_shut_down(&self) -> bool {
        self.inner.cancel.is_cancelled()
    }

    /// Stops accepting, closes every connection and waits until all of the edge's tasks
    /// have finished. Idempotent.
    pub async fn shutdown(&self) {
        self.inner.cancel.cancel();
        let mut done = self.inner.done.lock().await;
        if let Some(rx) = done.as_mut() {
            // Every task holds a sender; `None` means all of them have ended.
            while rx.recv().await.is_some() {}
        }
        *done = None;
        tracing::info!(local_addr = %self.inner.local_addr, "edge stopped");
    }
}

/// Accepts TCP connections and hands each to its own task; refuses at once when full.
async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    cancel: CancellationToken,
    done: mpsc::Sender<()>,
) {
    loop {
        let accepted = tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            r = listener.accept() => r,
        };
        let (tcp, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and the like: back off a little, keep serving.
                tracing::warn!(error = %e, "edge: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let accepted_at = Instant::now();
        shared.metrics.accepted.inc();
        if shared.live.load(Ordering::Acquire) >= shared.cfg.max_connections {
            shared.metrics.reject(Reason::TooManyConnections);
            shared.registry.report(
                peer.ip().to_string(),
                Reason::TooManyConnections,
                format!("{} connections open", shared.cfg.max_connections),
            );
            drop(tcp);
            continue;
        }
        let addr_slot = if shared.cfg.max_handshakes_per_address > 0 {
            match AddrSlot::take(&shared, peer.ip()) {
                Some(s) => Some(s),
                None => {
                    shared.metrics.reject(Reason::TooManyFromAddress);
                    shared.registry.report(
                        peer.ip().to_string(),
                        Reason::TooManyFromAddress,
                        format!(
                            "{} handshakes from this address in progress",
                            shared.cfg.max_handshakes_per_address
                        ),
                    );
                    drop(tcp);
                    continue;
                }
            }
        } else {
            None
        };
        let slot = Slot::take(&shared);
        tokio::spawn(relay::serve(
            slot,
            addr_slot,
            tcp,
            peer,
            accepted_at,
            cancel.child_token(),
            done.clone(),
        ));
    }
}

/// Polls the CRL file for changes (and serves explicit reload requests): the only task that
/// installs a new revocation list, so reloads never race.
async fn crl_watch(
    shared: Arc<Shared>,
    mut sig: FileSig,
    mut requests: mpsc::Receiver<ReloadReply>,
    cancel: CancellationToken,
    _done: mpsc::Sender<()>,
) {
    let mut tick = tokio::time::interval(shared.cfg.crl_check_interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failed: FileSig = None;
    loop {
        let reply = tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            r = requests.recv() => match r {
                Some(reply) => Some(reply),
                None => break,
            },
            _ = tick.tick() => None,
        };
        let Some(path) = shared.tls.crl_path().map(|p| p.to_owned()) else {
            if let Some(reply) = reply {
                let _ = reply.send(Ok(0));
            }
            continue;
        };
        let now = tokio::task::spawn_blocking(move || tls::file_sig(&path))
            .await
            .unwrap_or(None);
        if reply.is_none() && (now.is_none() || now == sig || now == failed) {
            continue;
        }
        let result = reload(&shared).await;
        match &result {
            Ok(closed) => {
                sig = now;
                failed = None;
                tracing::info!(
                    revoked = shared.tls.revoked().len(),
                    closed,
                    "edge: revocation list reloaded"
                );
            }
            Err(e) => {
                if failed != now || reply.is_some() {
                    tracing::error!(error = %e, "edge: revocation list not reloaded; keeping the previous one");
                }
                failed = now;
            }
        }
        if let Some(reply) = reply {
            let _ = reply.send(result.map_err(|e| e.to_string()));
        }
    }
}

/// Rotates the TLS ticket keys when due and writes them to their file (on the blocking pool).
async fn rotate_tickets(
    keys: Arc<tickets::TicketKeys>,
    cancel: CancellationToken,
    _done: mpsc::Sender<()>,
) {
    let mut tick = tokio::time::interval(keys.check_every());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        let k = keys.clone();
        let r = tokio::task::spawn_blocking(move || match k.rotate_if_due() {
            Ok(true) => k.save().map(|()| true),
            other => other,
        })
        .await;
        match r {
            Ok(Ok(true)) => tracing::info!("edge: TLS ticket key rotated"),
            Ok(Ok(false)) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "edge: TLS ticket key rotation failed"),
            Err(e) => tracing::error!(error = %e, "edge: TLS ticket key rotation task failed"),
        }
    }
}

/// Reads, verifies and installs the CRL, then disconnects newly revoked clients.
async fn reload(shared: &Arc<Shared>) -> Result<usize, TlsError> {
    let tls = shared.tls.clone();
    let installed = tokio::task::spawn_blocking(move || {
        tls.read_crl()?.map(|crl| tls.install_crl(crl)).transpose()
    })
    .await
    .map_err(|e| TlsError::Join(e.to_string()))
    .and_then(|r| r);
    let serials = match installed {
        Ok(Some(Some(serials))) => serials,
        // No CRL configured, or the installed one again.
        Ok(None) | Ok(Some(None)) => return Ok(0),
        Err(e) => {
            let result = match e {
                TlsError::Stale { .. } => "stale",
                _ => "error",
            };
            shared
                .metrics
                .crl_reloads
                .with_label_values(&[result])
                .inc();
            return Err(e);
        }
    };
    shared.metrics.crl_reloads.with_label_values(&["ok"]).inc();
    shared.metrics.revoked_serials.set(serials.len() as i64);
    shared
        .metrics
        .crl_number
        .set(shared.tls.crl_number().map_or(0, |n| n as i64));
    Ok(shared.registry.revoked(serials).await)
}
