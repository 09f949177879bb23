//! Local links to the router for async code: the [`LinkFactory`] and each link's [`Link`]
//! (one per integrator connection, the gateway's own, and the shared cabinet uplink links).
//!
//! rumqttd keeps its router event type private, so the factory holds the router's sender only
//! inside closures (the type is inferred, never named). Two calls of rumqttd's link API block a
//! thread and are kept off the async workers:
//! - `LinkBuilder::build` waits for the router's CONNACK: it runs on the blocking pool
//!   ([`LinkFactory::connect`]);
//! - `LinkTx::send`/`publish` use flume's blocking `send` on the router's bounded(1000) queue.
//!   Links never call them: packets are pushed into the link's buffer and the router is told
//!   with [`Link::notify`], which sends the same `DeviceData` event with flume's `send_async`
//!   (waiting for room asynchronously). The event value is minted by a *probe* `LinkTx` whose
//!   router queue is a private channel: `LinkTx::try_publish` on it produces exactly
//!   `(connection id, DeviceData)`, which is then forwarded to the real router queue.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use rumqttd::local::{LinkBuilder, LinkRx, LinkTx};
use rumqttd::protocol::{
    Disconnect, DisconnectReasonCode, Filter as SubscribeFilter, LastWill, Packet, Publish, QoS,
    RetainForwardRule, Subscribe,
};
use rumqttd::{ConnectionId, Notification, Router, RouterConfig};
use tokio::sync::Semaphore;

use super::{BrokerConfig, BrokerError, Direct, Inbound};

/// How many links may wait for the router's CONNACK at once (each waits on a blocking-pool
/// thread; the router answers in order anyway, so more would only cost threads).
const CONCURRENT_BUILDS: usize = 16;

/// An empty incoming buffer with more capacity than this (packets) is shrunk.
const TRIM_ABOVE: usize = 4;

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
    direct: Option<Direct>,
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

    /// The direct cabinet paths (set once the broker has started).
    pub fn direct(&self) -> Option<&Direct> {
        self.direct.as_ref()
    }

    pub(super) fn set_direct(&mut self, direct: Direct) {
        self.direct = Some(direct);
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
/// Memory (rumqttd 0.20): building a link allocates rumqttd's fixed-capacity queues (incoming
/// 200 packets, outgoing 200 and a receive cache of 100 notifications, two ack logs of 100);
/// only the pages written are resident. [`Link::trim`] frees the incoming one. The two
/// notification queues are swapped back and forth by `LinkRx::next`, which consumes with
/// `pop_front` and never rewinds an emptied queue, so traffic walks both rings and an active
/// link ends up with all of them resident (about 74 KB): a one-line `cache.clear()` before
/// the swap in rumqttd's `link/local.rs` fixes it (not reachable through its public API).
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

    /// Frees the spare capacity of the link's incoming buffer when it is empty. rumqttd
    /// allocates it for 200 packets (about 78 KiB) and the router swaps buffers with the
    /// links it serves, so an idle link would otherwise keep a large one.
    pub fn trim(&self) {
        let mut queue = self.tx.buffer();
        if queue.is_empty() && queue.capacity() > TRIM_ABOVE {
            queue.shrink_to_fit();
        }
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
                        journal: None,
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

/// Starts rumqttd's router on its own thread and builds the factory's closures around the
/// router's sender (whose type cannot be named).
pub(super) fn factory(cfg: &BrokerConfig) -> LinkFactory {
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
        direct: None,
    }
}
