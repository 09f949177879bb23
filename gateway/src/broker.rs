//! The embedded rumqttd router, in-process: its configuration, the router thread, the
//! [`LinkFactory`] that gives every edge connection its own local link to the router, and the
//! gateway's own link (publisher and uplink subscriber).
//!
//! There is no MQTT listener and no socket between the edge and the broker: rumqttd's router
//! runs on its own thread (`Router::spawn`) and every client connection is a rumqttd *local
//! link* (a pair of shared buffers plus a wake-up channel), exactly what rumqttd's own
//! `RemoteLink` uses behind its TCP listeners. So a cabinet costs the gateway one file
//! descriptor (its own socket) and no network-link buffers.
//!
//! rumqttd keeps its router event type private, so the factory holds the router's sender only
//! inside closures (the type is inferred, never named). Two calls of the link API block a
//! thread and are kept off the async workers:
//! - `LinkBuilder::build` waits for the router's CONNACK: it runs on the blocking pool
//!   ([`LinkFactory::connect`]);
//! - `LinkTx::send`/`publish` use flume's blocking `send` on the router's bounded(1000) queue.
//!   The edge never calls them: it pushes packets into the link's buffer and tells the router
//!   with [`Link::notify`], which sends the same `DeviceData` event with flume's `send_async`
//!   (waiting for room asynchronously). The event value is minted by a *probe* `LinkTx` whose
//!   router queue is a private channel: `LinkTx::try_publish` on it produces exactly
//!   `(connection id, DeviceData)`, which is then forwarded to the real router queue.
//!
//! The gateway's link (client id `gw:internal`, which no certificate identity can take because
//! ':' is not allowed in ids) is driven by two dedicated threads, where blocking is fine: one
//! receives notifications (and answers `Unschedule` by re-arming the link), the other
//! publishes. Async code talks to them through bounded channels.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::thread;

use bytes::Bytes;
use rumqttd::local::{LinkBuilder, LinkRx, LinkTx};
use rumqttd::protocol::{
    Disconnect, DisconnectReasonCode, Filter as SubscribeFilter, LastWill, Packet, Publish, QoS,
    RetainForwardRule, Subscribe,
};
use rumqttd::{ConnectionId, Notification, Router, RouterConfig};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Semaphore};

/// The client id of the gateway's own link.
pub const INTERNAL_CLIENT_ID: &str = "gw:internal";

/// How many links may wait for the router's CONNACK at once (each waits on a blocking-pool
/// thread; the router answers in order anyway, so more would only cost threads).
const CONCURRENT_BUILDS: usize = 16;

/// Publishes the gateway's link hands to the router per notification.
const PUBLISH_BATCH: usize = 256;

/// Broker settings (the `[broker]` table of gateway.toml).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct BrokerConfig {
    /// Maximum connections (links) the router holds, the gateway's own included.
    pub max_connections: usize,
    /// Largest MQTT packet (remaining length, bytes) the edge hands to the router; the edge
    /// enforces the smaller of this and `edge.max_packet_bytes`.
    pub max_payload_size: usize,
    /// Most client packets the edge hands to the router in one batch (one router event).
    pub max_inflight_count: usize,
    /// Packets forwarded to a subscriber per scheduling round.
    pub max_outgoing_packet_count: u64,
    /// Size of one in-memory log segment per topic filter, bytes.
    pub max_segment_size: usize,
    /// Segments kept per topic filter (older data is dropped for slow subscribers).
    pub max_segment_count: usize,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            max_connections: 20_100,
            max_payload_size: locker_schemas::MAX_PAYLOAD_BYTES,
            max_inflight_count: 100,
            max_outgoing_packet_count: 200,
            max_segment_size: 4 * 1024 * 1024,
            max_segment_count: 4,
        }
    }
}

/// Why the broker could not start, or a link could not be made.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot start a broker thread: {0}")]
    Thread(std::io::Error),
    #[error("the router refused the link (connection limit reached, or it stopped): {0}")]
    Link(String),
    #[error("the router has stopped")]
    Stopped,
}

/// A publish the broker forwarded to the gateway's link.
#[derive(Debug, Clone)]
pub struct Inbound {
    pub topic: Bytes,
    pub payload: Bytes,
}

/// A running embedded broker and the gateway's link to it.
pub struct EmbeddedBroker {
    /// Publishes to send through the gateway's link (bounded).
    pub publisher: Publisher,
    /// Makes a link per edge connection.
    pub links: LinkFactory,
}

/// Cloneable handle to publish through the gateway's link.
#[derive(Clone)]
pub struct Publisher {
    tx: mpsc::Sender<(String, Bytes)>,
}

impl Publisher {
    /// Queues a publish (QoS 0 at the broker; delivery is made reliable end to end by the
    /// application protocol). Waits if the link is backed up.
    pub async fn publish(&self, topic: String, payload: Bytes) -> bool {
        self.tx.send((topic, payload)).await.is_ok()
    }

    /// Queues a publish without waiting; false if the link is backed up or gone.
    pub fn try_publish(&self, topic: String, payload: Bytes) -> bool {
        self.tx.try_send((topic, payload)).is_ok()
    }
}

/// A future that hands one `DeviceData` event to the router; `false` if the router is gone.
type NotifyFuture = Pin<Box<dyn Future<Output = bool> + Send>>;
/// Mints the `DeviceData` event of a connection (see the module doc).
type NotifyFn = dyn Fn(ConnectionId) -> Option<NotifyFuture> + Send + Sync;
/// Builds a link (blocking: waits for the router's CONNACK).
type BuildFn = dyn Fn(&str, bool) -> Result<(LinkTx, LinkRx, Notification), String> + Send + Sync;

/// Makes local links to the router (cheap to clone).
#[derive(Clone)]
pub struct LinkFactory {
    build: Arc<BuildFn>,
    notify: Arc<NotifyFn>,
    builds: Arc<Semaphore>,
    max_payload_size: usize,
    max_batch: usize,
}

impl LinkFactory {
    /// Connects `client_id` to the router as a new session (`clean_session`) or a resumed one.
    /// A connection with the same client id is dropped by the router (MQTT takeover).
    ///
    /// `last_will` is kept by the [`Link`], not given to rumqttd: the link publishes it when it
    /// is closed abnormally or dropped (see [`Link::close`]).
    pub async fn connect(
        &self,
        client_id: String,
        clean_session: bool,
        last_will: Option<LastWill>,
    ) -> Result<Link, BrokerError> {
        let _permit = self
            .builds
            .acquire()
            .await
            .map_err(|_| BrokerError::Stopped)?;
        let build = self.build.clone();
        let notify = self.notify.clone();
        // The link is wrapped before it leaves the blocking thread: if this future is
        // dropped meanwhile, dropping the `Link` still tells the router the client is gone.
        tokio::task::spawn_blocking(move || {
            let (tx, rx, connack) = build(&client_id, clean_session).map_err(BrokerError::Link)?;
            Ok(Link {
                id: rx.id(),
                tx,
                rx,
                connack: Some(connack),
                notify,
                will: last_will,
                open: true,
            })
        })
        .await
        .map_err(|e| BrokerError::Link(e.to_string()))?
    }

    /// The largest packet the router should be handed (remaining length, bytes).
    pub fn max_payload_size(&self) -> usize {
        self.max_payload_size
    }

    /// Most packets to hand to the router per notification.
    pub fn max_batch(&self) -> usize {
        self.max_batch
    }
}

/// One client's local link to the router.
///
/// Push packets into `tx.buffer()` and call [`Link::notify`]; read notifications with
/// `rx.next()` and answer `Notification::Unschedule` with `rx.wake()`. End it with
/// [`Link::close`]; a link dropped without it is closed abnormally in the background (its will
/// published, the router told), so the router never keeps a connection nobody serves.
pub struct Link {
    id: ConnectionId,
    pub tx: LinkTx,
    pub rx: LinkRx,
    connack: Option<Notification>,
    notify: Arc<NotifyFn>,
    will: Option<LastWill>,
    /// Whether the router still has this connection (as far as this link knows).
    open: bool,
}

impl Link {
    /// The router's id of this connection.
    pub fn id(&self) -> ConnectionId {
        self.id
    }

    /// The router's CONNACK (once).
    pub fn take_connack(&mut self) -> Option<Notification> {
        self.connack.take()
    }

    /// Tells the router that packets were pushed into `tx.buffer()`. Waits (asynchronously)
    /// for room in the router's queue; never blocks the thread.
    pub async fn notify(&self) -> Result<(), BrokerError> {
        match (self.notify)(self.id) {
            Some(f) => f.await.then_some(()).ok_or(BrokerError::Stopped),
            None => Err(BrokerError::Stopped),
        }
    }

    /// Records that the router already dropped this connection (the link's channel closed or
    /// it sent a disconnect): nothing more can be sent through it, not even the will.
    pub fn router_closed(&mut self) {
        self.open = false;
    }

    /// Subscribes this link to `filter` at QoS 0 (for in-process clients: tests, tools).
    pub async fn subscribe(&self, filter: impl Into<String>) -> Result<(), BrokerError> {
        let filters = vec![SubscribeFilter {
            path: filter.into(),
            qos: QoS::AtMostOnce,
            nolocal: false,
            preserve_retain: false,
            retain_forward_rule: RetainForwardRule::Never,
        }];
        self.tx
            .buffer()
            .push_back(Packet::Subscribe(Subscribe { pkid: 1, filters }, None));
        self.notify().await
    }

    /// Publishes at QoS 0 through this link (for in-process clients: tests, tools).
    pub async fn publish(
        &self,
        topic: impl Into<Bytes>,
        payload: impl Into<Bytes>,
    ) -> Result<(), BrokerError> {
        let publish = Publish::new(topic.into(), payload.into(), false);
        self.tx.buffer().push_back(Packet::Publish(publish, None));
        self.notify().await
    }

    /// The next publish the router forwards to this link; acknowledgements are skipped and
    /// `Unschedule` is answered (for in-process clients: tests, tools).
    pub async fn next_publish(&mut self) -> Result<Inbound, BrokerError> {
        loop {
            match self.rx.next().await {
                Ok(Some(Notification::Forward(f))) => {
                    return Ok(Inbound {
                        topic: f.publish.topic,
                        payload: f.publish.payload,
                    })
                }
                Ok(Some(Notification::Unschedule)) => {
                    self.rx.wake().await.map_err(|_| BrokerError::Stopped)?
                }
                Ok(Some(Notification::Disconnect(..))) | Err(_) => {
                    self.open = false;
                    return Err(BrokerError::Stopped);
                }
                Ok(_) => {}
            }
        }
    }

    /// Ends the session: publishes the will unless `clean` (the client sent DISCONNECT), then
    /// has the router remove the connection. The will goes through this same link, as a
    /// QoS 0 publish with the client's retain flag, right before the disconnect.
    pub async fn close(mut self, clean: bool) {
        if self.push_end(clean) {
            let _ = self.notify().await;
        }
    }

    /// Pushes the will (unless `clean`) and a DISCONNECT; false if the router is gone already.
    fn push_end(&mut self, clean: bool) -> bool {
        if !std::mem::replace(&mut self.open, false) {
            return false;
        }
        let will = self.will.take().filter(|_| !clean);
        let mut buf = self.tx.buffer();
        if let Some(w) = will {
            let publish = Publish::new(w.topic, w.message, w.retain);
            buf.push_back(Packet::Publish(publish, None));
        }
        buf.push_back(Packet::Disconnect(
            Disconnect {
                reason_code: DisconnectReasonCode::NormalDisconnection,
            },
            None,
        ));
        true
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        if !self.push_end(false) {
            return;
        }
        let Some(fut) = (self.notify)(self.id) else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(fut);
            }
            // Outside a runtime (the process is stopping): wait here; the router never waits
            // for anyone, so this ends.
            Err(_) => {
                futures::executor::block_on(fut);
            }
        }
    }
}

/// Builds the factory's closures around the router's sender (whose type cannot be named).
fn factory(cfg: &BrokerConfig) -> LinkFactory {
    let router_config = RouterConfig {
        max_connections: cfg.max_connections,
        max_outgoing_packet_count: cfg.max_outgoing_packet_count,
        max_segment_size: cfg.max_segment_size,
        max_segment_count: cfg.max_segment_count,
        custom_segment: None,
        initialized_filters: None,
        shared_subscriptions_strategy: Default::default(),
    };
    let router_tx = Router::new(0, router_config).spawn();

    // The probe: a LinkTx whose "router" is this private channel. One at a time (the lock),
    // so the event taken out is the one just minted.
    let (probe_tx, probe_rx) = flume::bounded(1);
    let probe_buf = Arc::default();
    let probe = Mutex::new((probe_tx, probe_rx, probe_buf));
    let to_router = router_tx.clone();
    let notify = move |id: ConnectionId| -> Option<NotifyFuture> {
        let event = {
            let guard = probe.lock().ok()?;
            let (ptx, prx, pbuf) = &*guard;
            let mut minted = LinkTx::new(id, ptx.clone(), Arc::clone(pbuf));
            let sent = minted.try_publish(Bytes::new(), Bytes::new()).is_ok();
            minted.buffer().clear();
            let event = prx.try_recv().ok();
            sent.then_some(event).flatten()?
        };
        let router = to_router.clone();
        Some(Box::pin(
            async move { router.send_async(event).await.is_ok() },
        ))
    };

    let build = move |client_id: &str, clean: bool| {
        LinkBuilder::new(client_id, router_tx.clone())
            .clean_session(clean)
            .dynamic_filters(true)
            .build()
            .map_err(|e| e.to_string())
    };

    LinkFactory {
        build: Arc::new(build),
        notify: Arc::new(notify),
        builds: Arc::new(Semaphore::new(CONCURRENT_BUILDS)),
        max_payload_size: cfg.max_payload_size,
        max_batch: cfg.max_inflight_count.max(1),
    }
}

impl EmbeddedBroker {
    /// Starts rumqttd's router on its own thread, links the gateway to it with the given
    /// subscriptions, and returns the link factory for the edge.
    ///
    /// Every publish matching `filters` is delivered on `inbound` (a bounded channel: when
    /// ingest falls behind, the link thread waits, and rumqttd buffers and eventually skips,
    /// which the end-to-end acknowledgements make safe).
    pub async fn start(
        cfg: &BrokerConfig,
        filters: &[String],
        inbound: mpsc::Sender<Inbound>,
    ) -> Result<Self, BrokerError> {
        let links = factory(cfg);
        let build = links.build.clone();
        let filters = filters.to_vec();
        // Blocking calls (build waits for the CONNACK, subscribe uses a blocking send).
        let (link_tx, link_rx) = tokio::task::spawn_blocking(move || {
            let (mut tx, rx, _connack) =
                build(INTERNAL_CLIENT_ID, true).map_err(BrokerError::Link)?;
            for f in filters {
                tx.subscribe(f)
                    .map_err(|e| BrokerError::Link(e.to_string()))?;
            }
            Ok::<_, BrokerError>((tx, rx))
        })
        .await
        .map_err(|e| BrokerError::Link(e.to_string()))??;

        thread::Builder::new()
            .name("gw-link-rx".into())
            .spawn(move || receive_loop(link_rx, inbound))
            .map_err(BrokerError::Thread)?;

        let (tx, rx) = mpsc::channel(4096);
        thread::Builder::new()
            .name("gw-link-tx".into())
            .spawn(move || publish_loop(link_tx, rx))
            .map_err(BrokerError::Thread)?;

        Ok(Self {
            publisher: Publisher { tx },
            links,
        })
    }
}

fn receive_loop(mut link_rx: LinkRx, inbound: mpsc::Sender<Inbound>) {
    loop {
        match link_rx.recv() {
            Ok(Some(Notification::Forward(f))) => {
                let msg = Inbound {
                    topic: f.publish.topic,
                    payload: f.publish.payload,
                };
                if inbound.blocking_send(msg).is_err() {
                    return; // the gateway is shutting down
                }
            }
            Ok(Some(Notification::Unschedule)) => {
                // rumqttd parks a link whose buffer filled up until it says it is ready again.
                if link_rx.ready().is_err() {
                    return;
                }
            }
            Ok(Some(_)) | Ok(None) => {}
            Err(e) => {
                tracing::error!(error = %e, "gateway link to the broker closed");
                return;
            }
        }
    }
}

/// Publishes what the gateway queues, handing the router a batch per event.
fn publish_loop(mut link_tx: LinkTx, mut rx: mpsc::Receiver<(String, Bytes)>) {
    let mut batch: VecDeque<(String, Bytes)> = VecDeque::new();
    while let Some(first) = rx.blocking_recv() {
        batch.push_back(first);
        while batch.len() < PUBLISH_BATCH {
            match rx.try_recv() {
                Ok(m) => batch.push_back(m),
                Err(_) => break,
            }
        }
        let Some((topic, payload)) = batch.pop_back() else {
            continue;
        };
        {
            let mut buf = link_tx.buffer();
            for (t, p) in batch.drain(..) {
                buf.push_back(Packet::Publish(
                    Publish::new(Bytes::from(t), p, false),
                    None,
                ));
            }
        }
        // Pushes the last one and notifies the router once for the whole batch.
        if let Err(e) = link_tx.publish(topic, payload) {
            tracing::error!(error = %e, "gateway link publish failed");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn next_packet(link: &mut Link) -> Packet {
        loop {
            let n = tokio::time::timeout(Duration::from_secs(10), link.rx.next())
                .await
                .expect("a notification in time")
                .expect("link open");
            if let Some(p) = n.and_then(Option::<Packet>::from) {
                return p;
            }
        }
    }

    #[tokio::test]
    async fn links_publish_subscribe_and_close_without_blocking() {
        let (tx, mut inbound) = mpsc::channel(16);
        let broker = EmbeddedBroker::start(&BrokerConfig::default(), &["a/#".into()], tx)
            .await
            .expect("broker starts");

        let mut sub = broker
            .links
            .connect("sub".into(), true, None)
            .await
            .expect("link");
        assert!(matches!(
            sub.take_connack().and_then(Option::<Packet>::from),
            Some(Packet::ConnAck(..))
        ));
        sub.subscribe("a/#").await.expect("subscribe");
        assert!(matches!(next_packet(&mut sub).await, Packet::SubAck(..)));

        // A link closed abnormally publishes its will; a PINGREQ is answered by the router.
        let will = LastWill {
            topic: Bytes::from_static(b"a/will"),
            message: Bytes::from_static(b"gone"),
            qos: QoS::AtLeastOnce,
            retain: false,
        };
        let pub_link = broker
            .links
            .connect("pub".into(), true, Some(will))
            .await
            .expect("link");
        pub_link
            .tx
            .buffer()
            .push_back(Packet::PingReq(rumqttd::protocol::PingReq));
        pub_link.notify().await.expect("notify");
        let mut pub_link = pub_link;
        let mut got_pong = false;
        while !got_pong {
            got_pong = matches!(next_packet(&mut pub_link).await, Packet::PingResp(_));
        }
        pub_link.close(false).await;
        let Packet::Publish(p, _) = next_packet(&mut sub).await else {
            panic!("expected the will");
        };
        assert_eq!(&p.payload[..], b"gone");
        // ... and the gateway's own link saw it too.
        let got = tokio::time::timeout(Duration::from_secs(10), inbound.recv())
            .await
            .expect("inbound in time")
            .expect("inbound");
        assert_eq!(&got.topic[..], b"a/will");

        // Dropping a link closes it too (and a clean close publishes no will).
        let will2 = LastWill {
            topic: Bytes::from_static(b"a/will"),
            message: Bytes::from_static(b"dropped"),
            qos: QoS::AtMostOnce,
            retain: false,
        };
        let dropped = broker
            .links
            .connect("drop".into(), true, Some(will2.clone()))
            .await
            .expect("link");
        drop(dropped);
        let Packet::Publish(p, _) = next_packet(&mut sub).await else {
            panic!("expected the dropped link's will");
        };
        assert_eq!(&p.payload[..], b"dropped");
        let clean = broker
            .links
            .connect("drop".into(), true, Some(will2))
            .await
            .expect("the same id connects again once the first is gone");
        clean.close(true).await;
        assert!(
            broker
                .publisher
                .publish("a/x".into(), Bytes::from_static(b"x"))
                .await
        );
        let Packet::Publish(p, _) = next_packet(&mut sub).await else {
            panic!("expected a/x");
        };
        assert_eq!(&p.topic[..], b"a/x", "no will after a clean close");
    }
}
