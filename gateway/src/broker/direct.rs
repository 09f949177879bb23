//! Cabinet traffic that does not take a router connection per cabinet: the table of cabinet
//! sessions that downlinks are handed to ([`Direct::deliver`]), and the few shared links through
//! which the edge hands cabinet uplinks to the router ([`Direct::uplink`]).
//!
//! Why: rumqttd gives every connection its own queues (about 74 KB once a link has carried
//! traffic), builds each link with a blocking round trip to its router thread, and matches every
//! new subscription filter against every topic it has seen (and every new topic against every
//! filter). With one link and one `down/#` filter per cabinet that is O(cabinets^2) router work in
//! a reconnect storm and most of the gateway's memory (BENCHMARKS.md). A cabinet's downlinks are
//! only ever published by the gateway itself (integrators may never reach `down` topics), so the
//! edge serves a cabinet's subscription itself and the gateway hands its downlinks straight to
//! that cabinet's session. A cabinet's uplinks (and its will) go to the gateway's ingest
//! straight from the session (in order, waiting while ingest is full: TCP pushes back on the
//! cabinet), and to the router through one of [`UPLINK_LINKS`] shared links, chosen by cabinet
//! so each cabinet's order is kept, for the integrators' subscriptions.
//!
//! Nothing here is durable, exactly like the router: a downlink for a cabinet that is offline,
//! or whose session queue is full, is dropped and counted
//! (`locker_broker_downlinks_dropped_total{reason}`); the end-to-end protocol recovers it (the
//! dispatcher resends commands from its sled queue when the cabinet is back, ingest acknowledges
//! again when the agent resends).

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use locker_schemas::{CabinetId, DownKind};
use prometheus::{IntCounter, IntCounterVec, Opts};
use rumqttd::protocol::{Packet, Publish, PublishProperties};
use rumqttd::Notification;
use tokio::sync::mpsc;

use super::{BrokerError, Inbound, Link, LinkFactory};

/// A cabinet's uplink publish as the router takes it, with the MQTT 5 properties the edge
/// passes on (user properties, content type, payload format, the expiry stamp).
pub type Uplink = (Publish, Option<PublishProperties>);

/// Shared links carrying cabinet uplinks to the router.
pub const UPLINK_LINKS: usize = 4;
/// Batches queued per shared link.
const UPLINK_QUEUE: usize = 1024;
/// Downlinks queued per cabinet session before further ones are dropped.
pub const SESSION_QUEUE: usize = 1024;

/// A downlink for one cabinet's session.
#[derive(Debug, Clone)]
pub struct Downlink {
    pub kind: DownKind,
    pub payload: Bytes,
}

/// What happened to a downlink handed to [`Direct::deliver`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Queued for the cabinet's session.
    Queued,
    /// The cabinet has no session: dropped.
    Offline,
    /// The session's queue is full (the cabinet does not read): dropped.
    Full,
}

/// Cluster mode: where a downlink goes when its cabinet's session is on another node.
pub trait Remote: Send + Sync {
    /// Forwards a downlink without waiting; `false` if the cabinet is connected nowhere or the
    /// forwarding queue is full (the end-to-end protocol resends).
    fn forward(&self, cabinet: &CabinetId, kind: DownKind, payload: Bytes) -> bool;
}

/// A cabinet session's registration; dropping it removes the session from the table (unless a
/// newer session of the cabinet replaced it).
pub struct SessionSlot {
    direct: Direct,
    cabinet: CabinetId,
    conn_id: u64,
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        let mut t = self
            .direct
            .inner
            .sessions
            .write()
            .unwrap_or_else(|p| p.into_inner());
        if t.get(&self.cabinet)
            .is_some_and(|(id, _)| *id == self.conn_id)
        {
            t.remove(&self.cabinet);
        }
    }
}

struct Inner {
    sessions: RwLock<HashMap<CabinetId, (u64, mpsc::Sender<Downlink>)>>,
    /// The gateway's ingest.
    ingest: mpsc::Sender<Inbound>,
    uplinks: Vec<mpsc::Sender<Vec<Uplink>>>,
    dropped: IntCounterVec,
    delivered: IntCounter,
}

/// The direct cabinet paths (cheap to clone).
#[derive(Clone)]
pub struct Direct {
    inner: Arc<Inner>,
}

impl Direct {
    /// Connects the shared uplink links to the router. Their tasks end when the last handle
    /// is dropped (they are not tracked: like the router thread, they live as long as anything
    /// can use them, and shutting down never waits for them).
    pub(super) async fn start(
        links: &LinkFactory,
        ingest: mpsc::Sender<Inbound>,
    ) -> Result<Self, BrokerError> {
        let mut uplinks = Vec::with_capacity(UPLINK_LINKS);
        for i in 0..UPLINK_LINKS {
            let mut link = links.connect(format!("gw:edge-{i}"), true, None).await?;
            let _ = link.take_connack();
            let (tx, rx) = mpsc::channel(UPLINK_QUEUE);
            tokio::spawn(run_uplink(link, rx));
            uplinks.push(tx);
        }
        let dropped = IntCounterVec::new(
            Opts::new(
                "locker_broker_downlinks_dropped_total",
                "Downlinks for a cabinet dropped because it had no session (offline), its \
                 session queue was full (full) or it had not subscribed to the topic \
                 (not_subscribed); the end-to-end protocol resends them",
            ),
            &["reason"],
        )
        .map_err(|e| BrokerError::Link(e.to_string()))?;
        for reason in ["offline", "full", "not_subscribed"] {
            dropped.with_label_values(&[reason]);
        }
        let delivered = IntCounter::new(
            "locker_broker_downlinks_total",
            "Downlinks handed to a cabinet's session",
        )
        .map_err(|e| BrokerError::Link(e.to_string()))?;
        Ok(Self {
            inner: Arc::new(Inner {
                sessions: RwLock::new(HashMap::new()),
                ingest,
                uplinks,
                dropped,
                delivered,
            }),
        })
    }

    /// The metrics of the direct paths (registered by the edge).
    pub fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![
            Box::new(self.inner.dropped.clone()),
            Box::new(self.inner.delivered.clone()),
        ]
    }

    /// The cabinets with a session here, with their connection ids (cluster mode: a node
    /// checks that the presence bucket still names it for each).
    pub fn sessions(&self) -> Vec<(CabinetId, u64)> {
        self.inner
            .sessions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(c, (id, _))| (c.clone(), *id))
            .collect()
    }

    /// Registers `cabinet`'s session (connection `conn_id`), replacing an older one; its
    /// downlinks arrive on the returned receiver until the slot is dropped.
    pub fn register(
        &self,
        cabinet: CabinetId,
        conn_id: u64,
    ) -> (SessionSlot, mpsc::Receiver<Downlink>) {
        let (tx, rx) = mpsc::channel(SESSION_QUEUE);
        self.inner
            .sessions
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(cabinet.clone(), (conn_id, tx));
        let slot = SessionSlot {
            direct: self.clone(),
            cabinet,
            conn_id,
        };
        (slot, rx)
    }

    /// Hands a downlink to `cabinet`'s session without waiting.
    pub fn deliver(&self, cabinet: &CabinetId, kind: DownKind, payload: Bytes) -> Delivery {
        let sent = {
            let t = self
                .inner
                .sessions
                .read()
                .unwrap_or_else(|p| p.into_inner());
            match t.get(cabinet) {
                None => Delivery::Offline,
                Some((_, tx)) => match tx.try_send(Downlink { kind, payload }) {
                    Ok(()) => Delivery::Queued,
                    Err(mpsc::error::TrySendError::Full(_)) => Delivery::Full,
                    Err(mpsc::error::TrySendError::Closed(_)) => Delivery::Offline,
                },
            }
        };
        match sent {
            Delivery::Queued => self.inner.delivered.inc(),
            Delivery::Offline => self.inner.dropped.with_label_values(&["offline"]).inc(),
            Delivery::Full => self.inner.dropped.with_label_values(&["full"]).inc(),
        }
        sent
    }

    /// [`Direct::deliver`] for cluster mode, where a cabinet without a session here is normal
    /// (it is on another node): that is not counted as a drop.
    pub fn deliver_here(&self, cabinet: &CabinetId, kind: DownKind, payload: Bytes) -> Delivery {
        let here = self
            .inner
            .sessions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(cabinet);
        if !here {
            return Delivery::Offline;
        }
        self.deliver(cabinet, kind, payload)
    }

    /// Counts a downlink a session dropped because its cabinet had not subscribed to it.
    pub fn not_subscribed(&self) {
        self.inner
            .dropped
            .with_label_values(&["not_subscribed"])
            .inc();
    }

    /// Hands `cabinet`'s uplink publishes, in order, to the gateway's ingest and then (QoS 0)
    /// to its shared router link; waits while either is backed up. `false` if the router is
    /// gone. (Once ingest has stopped, at shutdown, they go to the router only.)
    pub async fn uplink(&self, cabinet: &CabinetId, publishes: Vec<Uplink>) -> bool {
        if publishes.is_empty() {
            return true;
        }
        for (p, _) in &publishes {
            let msg = Inbound {
                topic: p.topic.clone(),
                payload: p.payload.clone(),
                journal: None,
            };
            if self.inner.ingest.send(msg).await.is_err() {
                break;
            }
        }
        let mut h = DefaultHasher::new();
        cabinet.hash(&mut h);
        let i = (h.finish() as usize) % self.inner.uplinks.len().max(1);
        match self.inner.uplinks.get(i) {
            Some(tx) => tx.send(publishes).await.is_ok(),
            None => false,
        }
    }
}

/// One shared uplink link: pushes what the sessions hand it into the link's buffer (a router
/// event per batch of batches) and drains what the router sends back (nothing but scheduling
/// for QoS 0 publishers).
async fn run_uplink(mut link: Link, mut rx: mpsc::Receiver<Vec<Uplink>>) {
    let mut batches: Vec<Vec<Uplink>> = Vec::with_capacity(64);
    loop {
        tokio::select! {
            n = rx.recv_many(&mut batches, 64) => {
                if n == 0 {
                    break;
                }
                {
                    let mut buf = link.tx.buffer();
                    for (p, props) in batches.drain(..).flatten() {
                        buf.push_back(Packet::Publish(p, props));
                    }
                }
                if link.notify().await.is_err() {
                    tracing::error!("edge uplink link to the broker closed");
                    return;
                }
            }
            n = link.rx.next() => match n {
                Ok(Some(Notification::Unschedule)) => {
                    if link.rx.wake().await.is_err() {
                        return;
                    }
                }
                Ok(Some(Notification::Disconnect(..))) | Err(_) => {
                    link.router_closed();
                    tracing::error!("edge uplink link to the broker closed");
                    return;
                }
                Ok(_) => {}
            },
        }
    }
    link.close(true).await;
}
