//! The connection registry: one task owns the table of connections, decides presence (a
//! cabinet is online from its first accepted CONNECT until its last connection closes),
//! performs the MQTT session takeover (a new connection of an identity closes the older ones,
//! and starts its broker session only once they are gone, so the router never sees two
//! sessions of one client id and an old will is published before the new session starts),
//! closes connections on demand (by identity, or because their serial was revoked), and
//! rate-limits the edge's violation logs.

use std::collections::{hash_map, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use locker_schemas::{CabinetId, Millis};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::identity::Identity;
use super::metrics::{EdgeMetrics, Reason};

/// At most one log line per (who, reason) in this window.
const LOG_WINDOW: Duration = Duration::from_secs(60);
/// Queue depth of the registry's inbox.
const INBOX: usize = 1024;
/// At most this many distinct (who, reason) keys are remembered; beyond it (a flood from many
/// addresses) new keys are not logged at all until the window passes (metrics still count).
const MAX_LOG_KEYS: usize = 10_000;

/// A cabinet came online or went offline (the edge is the authority on presence).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceEvent {
    /// The cabinet.
    pub cabinet: CabinetId,
    /// `true` when its first connection was relayed, `false` when its last one closed.
    pub online: bool,
    /// The connection that caused the change.
    pub conn_id: u64,
    /// When, in ms since the epoch.
    pub at: Millis,
}

/// One relayed connection, as listed by [`super::EdgeHandle::connected`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// The edge's id for this connection (unique for the life of the process).
    pub conn_id: u64,
    /// Who is connected.
    pub identity: Identity,
    /// An integrator's MQTT client id (`None` for a cabinet). One certificate may hold several
    /// integrator connections at once (the members of a shared subscription group, say); a
    /// new connection takes over only the older ones with the same client id. A cabinet's
    /// identity is its only session.
    pub client: Option<String>,
    /// The client's address.
    pub peer: SocketAddr,
    /// The client certificate's serial (lowercase hex).
    pub serial: String,
    /// When its CONNECT was relayed, in ms since the epoch.
    pub since: Millis,
}

enum Cmd {
    Register(ConnectionInfo, CancellationToken, oneshot::Sender<()>),
    Unregister(u64),
    Disconnect(Identity, oneshot::Sender<usize>),
    Revoked(Arc<HashSet<String>>, oneshot::Sender<usize>),
    List(oneshot::Sender<Vec<ConnectionInfo>>),
    Violation {
        who: String,
        reason: Reason,
        detail: String,
    },
}

/// A cloneable handle to the registry task.
#[derive(Clone)]
pub(crate) struct Registry {
    tx: mpsc::Sender<Cmd>,
}

impl Registry {
    /// Spawns the registry task. Presence events go to `presence` (awaited: a consumer that
    /// stops draining it eventually holds up new connections, never loses an event).
    pub fn spawn(
        presence: mpsc::Sender<PresenceEvent>,
        revoked: Arc<HashSet<String>>,
        metrics: EdgeMetrics,
    ) -> Self {
        let (tx, rx) = mpsc::channel(INBOX);
        let actor = Actor {
            conns: HashMap::new(),
            takeovers: HashMap::new(),
            per_identity: HashMap::new(),
            presence,
            revoked,
            metrics,
            logged: HashMap::new(),
            logged_len: 0,
        };
        tokio::spawn(actor.run(rx));
        Self { tx }
    }

    /// Records a connection whose CONNECT was accepted; `cancel` closes it. A serial that is
    /// already revoked is cancelled at once. Older connections of the same identity are
    /// cancelled (takeover); the returned receiver completes once none of them is left (or
    /// errs if the registry is gone or this connection was closed meanwhile).
    pub async fn register(
        &self,
        info: ConnectionInfo,
        cancel: CancellationToken,
    ) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        let _ = self.tx.send(Cmd::Register(info, cancel, tx)).await;
        rx
    }

    /// Forgets a closed connection (its broker session has ended).
    pub async fn unregister(&self, conn_id: u64) {
        let _ = self.tx.send(Cmd::Unregister(conn_id)).await;
    }

    /// Closes every connection of `identity`; returns how many.
    pub async fn disconnect(&self, identity: Identity) -> usize {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Cmd::Disconnect(identity, tx)).await.is_err() {
            return 0;
        }
        rx.await.unwrap_or(0)
    }

    /// Installs a new revoked set and closes every connection whose serial is in it.
    pub async fn revoked(&self, serials: Arc<HashSet<String>>) -> usize {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Cmd::Revoked(serials, tx)).await.is_err() {
            return 0;
        }
        rx.await.unwrap_or(0)
    }

    /// Every relayed connection, ordered by connection id.
    pub async fn list(&self) -> Vec<ConnectionInfo> {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Cmd::List(tx)).await.is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    /// Logs a refused client or violation, at most once per (who, reason) per minute. Never
    /// waits: under a flood, excess reports are dropped (they are counted in metrics anyway).
    pub fn report(&self, who: String, reason: Reason, detail: String) {
        let _ = self.tx.try_send(Cmd::Violation {
            who,
            reason,
            detail,
        });
    }
}

struct Entry {
    info: ConnectionInfo,
    cancel: CancellationToken,
}

struct Actor {
    conns: HashMap<u64, Entry>,
    /// New connections waiting for older ones of their identity to close: identity -> (its
    /// connection id, whom to tell).
    takeovers: HashMap<Identity, Vec<(u64, oneshot::Sender<()>)>>,
    /// The open connections of each identity, by connection id (ascending: ids only grow).
    /// Every lookup by identity goes through this index, so no operation scans the table.
    per_identity: HashMap<Identity, Vec<u64>>,
    presence: mpsc::Sender<PresenceEvent>,
    revoked: Arc<HashSet<String>>,
    metrics: EdgeMetrics,
    logged: HashMap<(String, Reason), (Instant, u64)>,
    logged_len: usize,
}

impl Actor {
    /// After `closed` (of `identity`) left: releases the takeovers of that identity that no
    /// longer wait for anyone, and drops the one of `closed` itself. Touches only `identity`'s
    /// entries.
    fn takeover_progress(&mut self, identity: &Identity, closed: u64) {
        let Some(waiting) = self.takeovers.remove(identity) else {
            return;
        };
        let open = self.per_identity.get(identity);
        let client_of = |id: &u64| self.conns.get(id).map(|e| &e.info.client);
        let mut still = Vec::new();
        for (id, ready) in waiting {
            if id == closed {
                continue; // closed before it took over: its sender drops
            }
            let mine = client_of(&id);
            let waits = open.is_some_and(|ids| ids.iter().any(|c| *c < id && client_of(c) == mine));
            if waits {
                still.push((id, ready));
            } else {
                let _ = ready.send(());
            }
        }
        if !still.is_empty() {
            self.takeovers.insert(identity.clone(), still);
        }
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Cmd>) {
        let mut prune = tokio::time::interval(LOG_WINDOW);
        prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(cmd) => self.handle(cmd).await,
                    None => break,
                },
                _ = prune.tick() => {
                    let now = Instant::now();
                    self.logged.retain(|_, (t, _)| now.duration_since(*t) < LOG_WINDOW);
                }
            }
        }
    }

    async fn handle(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Register(info, cancel, ready) => {
                if self.revoked.contains(&info.serial) {
                    // Revoked between its handshake and now: never let it in (no presence;
                    // its unregister finds nothing).
                    self.metrics.reject(Reason::Revoked);
                    cancel.cancel();
                    return;
                }
                let mut older = 0;
                if let Some(ids) = self.per_identity.get(&info.identity) {
                    for id in ids {
                        if let Some(e) = self.conns.get(id) {
                            if e.info.client == info.client {
                                e.cancel.cancel();
                                older += 1;
                            }
                        }
                    }
                }
                if older == 0 {
                    let _ = ready.send(());
                } else {
                    tracing::debug!(
                        identity = %info.identity,
                        conn_id = info.conn_id,
                        older,
                        "edge: takeover, closing older connections first"
                    );
                    self.takeovers
                        .entry(info.identity.clone())
                        .or_default()
                        .push((info.conn_id, ready));
                }
                let role = info.identity.role();
                self.metrics.open.with_label_values(&[role]).inc();
                let ids = self.per_identity.entry(info.identity.clone()).or_default();
                ids.push(info.conn_id);
                let first = ids.len() == 1;
                let event = match (&info.identity, first) {
                    (Identity::Cabinet(c), true) => Some(PresenceEvent {
                        cabinet: c.clone(),
                        online: true,
                        conn_id: info.conn_id,
                        at: info.since,
                    }),
                    _ => None,
                };
                self.conns.insert(info.conn_id, Entry { info, cancel });
                if let Some(ev) = event {
                    let _ = self.presence.send(ev).await;
                }
            }
            Cmd::Unregister(conn_id) => {
                let Some(entry) = self.conns.remove(&conn_id) else {
                    return;
                };
                let identity = entry.info.identity;
                let last = match self.per_identity.get_mut(&identity) {
                    Some(ids) => {
                        ids.retain(|c| *c != conn_id);
                        ids.is_empty()
                    }
                    None => true,
                };
                if last {
                    self.per_identity.remove(&identity);
                }
                self.takeover_progress(&identity, conn_id);
                self.metrics
                    .open
                    .with_label_values(&[identity.role()])
                    .dec();
                if let (Identity::Cabinet(c), true) = (identity, last) {
                    let ev = PresenceEvent {
                        cabinet: c,
                        online: false,
                        conn_id,
                        at: locker_schemas::now_millis(),
                    };
                    let _ = self.presence.send(ev).await;
                }
            }
            Cmd::Disconnect(identity, reply) => {
                let mut n = 0;
                for id in self.per_identity.get(&identity).into_iter().flatten() {
                    if let Some(e) = self.conns.get(id) {
                        e.cancel.cancel();
                        n += 1;
                    }
                }
                let _ = reply.send(n);
            }
            Cmd::Revoked(serials, reply) => {
                let mut n = 0;
                for e in self.conns.values() {
                    if serials.contains(&e.info.serial) && !e.cancel.is_cancelled() {
                        tracing::warn!(
                            identity = %e.info.identity,
                            serial = %e.info.serial,
                            conn_id = e.info.conn_id,
                            "certificate revoked: closing its connection"
                        );
                        self.metrics.reject(Reason::Revoked);
                        e.cancel.cancel();
                        n += 1;
                    }
                }
                self.revoked = serials;
                let _ = reply.send(n);
            }
            Cmd::List(reply) => {
                let mut v: Vec<ConnectionInfo> =
                    self.conns.values().map(|e| e.info.clone()).collect();
                v.sort_by_key(|c| c.conn_id);
                let _ = reply.send(v);
            }
            Cmd::Violation {
                who,
                reason,
                detail,
            } => {
                let now = Instant::now();
                self.logged_len = self.logged.len();
                let suppressed = match self.logged.entry((who.clone(), reason)) {
                    hash_map::Entry::Vacant(v) if self.logged_len < MAX_LOG_KEYS => {
                        v.insert((now, 0));
                        Some(0)
                    }
                    hash_map::Entry::Vacant(_) => None,
                    hash_map::Entry::Occupied(mut o) => {
                        let (at, n) = *o.get();
                        if now.duration_since(at) >= LOG_WINDOW {
                            o.insert((now, 0));
                            Some(n)
                        } else {
                            o.insert((at, n + 1));
                            None
                        }
                    }
                };
                if let Some(suppressed) = suppressed {
                    tracing::warn!(%who, %reason, suppressed, "edge refused (or corrected) a client: {detail}");
                }
            }
        }
    }
}
