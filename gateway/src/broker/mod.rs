//! The embedded rumqttd broker, in-process: its configuration, the router thread, the
//! [`LinkFactory`] that gives every integrator connection its own local link to the router
//! (submodule `link`), the direct cabinet paths ([`Direct`], submodule `direct`: a cabinet's
//! downlinks straight to its session, its uplinks straight to ingest and through shared links to
//! the router), and the gateway's own link (publisher).
//!
//! There is no MQTT listener and no socket between the edge and the broker: rumqttd's router
//! runs on its own thread (`Router::spawn`) and every link is a rumqttd *local link* (a pair of
//! shared buffers plus a wake-up channel), exactly what rumqttd's own `RemoteLink` uses behind
//! its TCP listeners. So a cabinet costs the gateway one file descriptor (its own socket) and no
//! network-link buffers.
//!
//! The gateway's own link (client id `gw:internal`, which no certificate identity can take
//! because ':' is not allowed in ids) is the same async [`Link`] the edge uses per integrator,
//! owned by one task (`gw-link`, on the runtime; no OS thread, no blocking call): it hands the
//! router what the gateway publishes in batches (one router event per batch; a cabinet's
//! downlinks skip it, see [`Publisher::publish`]) and forwards the publishes the router delivers
//! for its subscriptions (none in the gateway: cabinet uplinks reach ingest directly) to
//! ingest's bounded channel. While ingest is full the task stops reading
//! the link (rumqttd buffers, then parks the link with `Unschedule`) but keeps publishing, so an
//! ingest waiting to publish an ack never waits on it. The task ends when every [`Publisher`] is
//! dropped (the actors that publish have stopped), closing the link; the router thread lives as
//! long as the process.

mod direct;
mod link;

pub use direct::{Delivery, Direct, Downlink, Remote, SessionSlot, Uplink};
pub use link::{Link, LinkFactory};

use std::collections::VecDeque;

use bytes::Bytes;
use locker_schemas::{DownKind, Topic};
use rumqttd::protocol::{Packet, Publish};
use rumqttd::Notification;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;

/// The client id of the gateway's own link.
pub const INTERNAL_CLIENT_ID: &str = "gw:internal";

/// Publishes the gateway's link hands to the router per notification.
const PUBLISH_BATCH: usize = 256;

/// Room for publishes queued by the gateway's components (acks, commands, presence).
const PUBLISH_QUEUE: usize = 4096;

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
    /// Its sequence in the cluster's uplink stream, when it came from there (cluster mode:
    /// ingest reports the highest one it has made durable).
    pub journal: Option<u64>,
}

/// A running embedded broker and the gateway's link to it.
pub struct EmbeddedBroker {
    /// Publishes to send through the gateway's link (bounded).
    pub publisher: Publisher,
    /// Makes a link per edge connection.
    pub links: LinkFactory,
    /// The task that owns the gateway's link; it ends once every [`Publisher`] is dropped.
    pub link_task: JoinHandle<()>,
}

/// Cloneable handle to publish through the gateway's link.
#[derive(Clone)]
pub struct Publisher {
    tx: mpsc::Sender<(Topic, Bytes)>,
    direct: Direct,
    /// Cluster mode: where a downlink for a cabinet connected to another node goes.
    remote: Option<std::sync::Arc<dyn Remote>>,
}

impl Publisher {
    /// Queues a publish (QoS 0 at the broker; delivery is made reliable end to end by the
    /// application protocol). Waits if the link is backed up. A cabinet downlink goes straight
    /// to the cabinet's session without waiting (see [`Direct`]); `false` if it was dropped
    /// (the cabinet is offline or not reading).
    pub async fn publish(&self, topic: Topic, payload: Bytes) -> bool {
        if let Topic::Down(cabinet, kind) = &topic {
            return self.downlink(cabinet, *kind, payload);
        }
        self.tx.send((topic, payload)).await.is_ok()
    }

    /// This publisher, forwarding downlinks for cabinets connected elsewhere to `remote`
    /// (cluster mode).
    pub fn with_remote(mut self, remote: std::sync::Arc<dyn Remote>) -> Self {
        self.remote = Some(remote);
        self
    }

    /// Hands a cabinet downlink to its session here, or (cluster mode) to the node holding it.
    /// Acknowledgements are never forwarded: every node acknowledges every uplink it ingests,
    /// and the node holding the session delivers its own.
    fn downlink(
        &self,
        cabinet: &locker_schemas::CabinetId,
        kind: DownKind,
        payload: Bytes,
    ) -> bool {
        let Some(remote) = &self.remote else {
            return self.direct.deliver(cabinet, kind, payload) == Delivery::Queued;
        };
        match self.direct.deliver_here(cabinet, kind, payload.clone()) {
            Delivery::Queued => true,
            Delivery::Full => false,
            Delivery::Offline if kind == DownKind::Ack => false,
            Delivery::Offline => remote.forward(cabinet, kind, payload),
        }
    }

    /// Whether the gateway's link to the router is still there (for readiness).
    pub fn is_open(&self) -> bool {
        !self.tx.is_closed()
    }

    /// Queues a publish without waiting; false if the link is backed up or gone.
    pub fn try_publish(&self, topic: Topic, payload: Bytes) -> bool {
        if let Topic::Down(cabinet, kind) = &topic {
            return self.downlink(cabinet, *kind, payload);
        }
        self.tx.try_send((topic, payload)).is_ok()
    }
}

impl EmbeddedBroker {
    /// Starts rumqttd's router on its own thread, links the gateway to it with the given
    /// subscriptions, and returns the link factory for the edge.
    ///
    /// Every publish matching `filters` is delivered on `inbound` (a bounded channel: when
    /// ingest falls behind, the link waits, and rumqttd buffers and eventually skips, which the
    /// end-to-end acknowledgements make safe). Cabinet uplinks and wills are delivered on
    /// `inbound` straight from the edge ([`Direct`]), not through the router: `filters` should
    /// not match them (they would arrive twice).
    pub async fn start(
        cfg: &BrokerConfig,
        filters: &[String],
        inbound: mpsc::Sender<Inbound>,
    ) -> Result<Self, BrokerError> {
        Self::start_tracked(cfg, filters, inbound, &TaskTracker::new()).await
    }

    /// [`EmbeddedBroker::start`], with the task owning the gateway's link spawned on `tracker`.
    pub async fn start_tracked(
        cfg: &BrokerConfig,
        filters: &[String],
        inbound: mpsc::Sender<Inbound>,
        tracker: &TaskTracker,
    ) -> Result<Self, BrokerError> {
        let mut links = link::factory(cfg);
        let direct = Direct::start(&links, inbound.clone()).await?;
        links.set_direct(direct.clone());
        let mut link = links.connect(INTERNAL_CLIENT_ID.into(), true, None).await?;
        let _connack = link.take_connack();
        for f in filters {
            link.subscribe(f.clone()).await?;
        }
        let (tx, rx) = mpsc::channel(PUBLISH_QUEUE);
        let link_task = tracker.spawn(run_link(link, rx, inbound));
        Ok(Self {
            publisher: Publisher {
                tx,
                direct,
                remote: None,
            },
            links,
            link_task,
        })
    }
}

/// The gateway's link: publishes what the gateway queues (a batch per router event) and
/// forwards what the router delivers to `inbound`, until every [`Publisher`] is gone.
async fn run_link(
    mut link: Link,
    mut outgoing: mpsc::Receiver<(Topic, Bytes)>,
    inbound: mpsc::Sender<Inbound>,
) {
    let mut batch: Vec<(Topic, Bytes)> = Vec::with_capacity(PUBLISH_BATCH);
    // Delivered by the router, not yet taken by ingest (empty unless ingest is full).
    let mut waiting: VecDeque<Inbound> = VecDeque::new();
    // Ingest has stopped: what the router still delivers is dropped.
    let mut ingest_gone = false;
    loop {
        tokio::select! {
            n = outgoing.recv_many(&mut batch, PUBLISH_BATCH) => {
                if n == 0 {
                    break;
                }
                {
                    let mut buf = link.tx.buffer();
                    for (topic, payload) in batch.drain(..) {
                        buf.push_back(Packet::Publish(
                            Publish::new(Bytes::from(topic.to_string()), payload, false),
                            None,
                        ));
                    }
                }
                if let Err(e) = link.notify().await {
                    tracing::error!(error = %e, "gateway link to the broker closed");
                    return;
                }
            }
            permit = inbound.reserve(), if !waiting.is_empty() => match permit {
                Ok(p) => {
                    if let Some(msg) = waiting.pop_front() {
                        p.send(msg);
                    }
                }
                Err(_) => {
                    ingest_gone = true;
                    waiting.clear();
                }
            },
            n = link.rx.next(), if waiting.is_empty() => match n {
                Ok(Some(Notification::Forward(f))) => {
                    if !ingest_gone {
                        let msg = Inbound { topic: f.publish.topic, payload: f.publish.payload, journal: None };
                        match inbound.try_send(msg) {
                            Ok(()) => {}
                            Err(mpsc::error::TrySendError::Full(msg)) => waiting.push_back(msg),
                            Err(mpsc::error::TrySendError::Closed(_)) => ingest_gone = true,
                        }
                    }
                }
                // rumqttd parks a link whose buffer filled up until it says it is ready again.
                Ok(Some(Notification::Unschedule)) => {
                    if link.rx.wake().await.is_err() {
                        tracing::error!("gateway link to the broker closed");
                        return;
                    }
                }
                Ok(Some(Notification::Disconnect(..))) | Err(_) => {
                    link.router_closed();
                    tracing::error!("gateway link to the broker closed");
                    return;
                }
                Ok(_) => {}
            },
        }
    }
    link.close(true).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttd::protocol::{LastWill, QoS};
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
        let topic = stream_topic("A");
        sub.subscribe(topic.to_string()).await.expect("subscribe");
        assert!(matches!(next_packet(&mut sub).await, Packet::SubAck(..)));
        assert!(
            broker
                .publisher
                .publish(topic.clone(), Bytes::from_static(b"x"))
                .await
        );
        let Packet::Publish(p, _) = next_packet(&mut sub).await else {
            panic!("expected the gateway's publish");
        };
        assert_eq!(
            &p.topic[..],
            topic.to_string().as_bytes(),
            "no will after a clean close"
        );
    }

    fn link_threads() -> Vec<String> {
        std::fs::read_dir("/proc/self/task")
            .map(|d| {
                d.flatten()
                    .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
                    .map(|n| n.trim().to_owned())
                    .filter(|n| n.starts_with("gw-link"))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn stream_topic(cabinet: &str) -> Topic {
        Topic::Stream(
            locker_schemas::CabinetId::new(cabinet).expect("id"),
            locker_schemas::StreamKind::Presence,
        )
    }

    #[tokio::test]
    async fn downlinks_go_to_the_cabinets_session_or_are_counted_as_dropped() {
        let (tx, _inbound) = mpsc::channel(16);
        let broker = EmbeddedBroker::start(&BrokerConfig::default(), &[], tx)
            .await
            .expect("broker starts");
        let direct = broker.links.direct().expect("direct paths").clone();
        let a = locker_schemas::CabinetId::new("A").expect("id");
        let ack = Topic::Down(a.clone(), locker_schemas::DownKind::Ack);
        assert!(
            !broker
                .publisher
                .publish(ack.clone(), Bytes::from_static(b"1"))
                .await,
            "offline: dropped"
        );
        let (old_slot, mut old_rx) = direct.register(a.clone(), 1);
        assert!(
            broker
                .publisher
                .publish(ack.clone(), Bytes::from_static(b"2"))
                .await
        );
        let got = old_rx.recv().await.expect("delivered");
        assert_eq!(&got.payload[..], b"2");
        // A newer session of the cabinet takes the entry over; the old one's end leaves it.
        let (slot, mut rx) = direct.register(a.clone(), 2);
        drop(old_slot);
        assert!(
            broker
                .publisher
                .publish(ack.clone(), Bytes::from_static(b"3"))
                .await
        );
        assert_eq!(&rx.recv().await.expect("delivered").payload[..], b"3");
        assert!(
            old_rx.recv().await.is_none(),
            "the old session's queue is closed"
        );
        // A session that does not read: its queue fills, then downlinks are dropped.
        for _ in 0..direct::SESSION_QUEUE {
            assert!(broker
                .publisher
                .try_publish(ack.clone(), Bytes::from_static(b"x")));
        }
        assert!(!broker
            .publisher
            .try_publish(ack.clone(), Bytes::from_static(b"y")));
        drop(slot);
        assert!(
            !broker
                .publisher
                .publish(ack, Bytes::from_static(b"4"))
                .await
        );
        let families: Vec<_> = direct
            .collectors()
            .iter()
            .flat_map(|c| c.collect())
            .collect();
        let dropped = |reason: &str| -> f64 {
            families
                .iter()
                .filter(|f| f.name() == "locker_broker_downlinks_dropped_total")
                .flat_map(|f| f.get_metric())
                .filter(|m| m.get_label().iter().any(|l| l.value() == reason))
                .map(|m| m.get_counter().get_value())
                .sum()
        };
        assert_eq!(dropped("offline"), 2.0);
        assert_eq!(dropped("full"), 1.0);
    }

    #[tokio::test]
    async fn cabinet_uplinks_reach_the_router_in_order_through_the_shared_links() {
        let (tx, mut inbound) = mpsc::channel(1024);
        let broker = EmbeddedBroker::start(&BrokerConfig::default(), &[], tx)
            .await
            .expect("broker starts");
        let direct = broker.links.direct().expect("direct paths").clone();
        // An integrator-like subscriber on the router.
        let mut sub = broker
            .links
            .connect("sub".into(), true, None)
            .await
            .expect("link");
        sub.subscribe("lk/v1/+/up/#").await.expect("subscribe");
        assert!(matches!(next_packet(&mut sub).await, Packet::SubAck(..)));
        let ids: Vec<_> = (0..8)
            .map(|i| locker_schemas::CabinetId::new(format!("C{i}")).expect("id"))
            .collect();
        for n in 0..50u32 {
            for id in &ids {
                let topic = Topic::Up(id.clone(), locker_schemas::UpKind::Scan).to_string();
                let p = Publish::new(
                    Bytes::from(topic),
                    Bytes::from(n.to_be_bytes().to_vec()),
                    false,
                );
                assert!(direct.uplink(id, vec![(p, None)]).await);
            }
        }
        /// Counts off one message: each topic's numbers must come 0, 1, 2, ...
        fn in_order(next: &mut std::collections::HashMap<Bytes, u32>, m: &Inbound) {
            let n = u32::from_be_bytes(m.payload[..4].try_into().expect("4 bytes"));
            let want = next.entry(m.topic.clone()).or_insert(0);
            assert_eq!(n, *want, "in order per cabinet");
            *want += 1;
        }
        let wait = Duration::from_secs(10);
        // Ingest gets each once, in order per cabinet, straight from the edge ...
        let mut next = Default::default();
        for _ in 0..(50 * ids.len()) {
            let m = tokio::time::timeout(wait, inbound.recv())
                .await
                .expect("in time");
            in_order(&mut next, &m.expect("open"));
        }
        assert!(inbound.try_recv().is_err(), "and only once");
        // ... and the router's subscribers get them too, in order per cabinet.
        let mut next = Default::default();
        for _ in 0..(50 * ids.len()) {
            let m = tokio::time::timeout(wait, sub.next_publish())
                .await
                .expect("in time");
            in_order(&mut next, &m.expect("open"));
        }
    }

    #[tokio::test]
    async fn the_gateways_link_is_a_task_that_ends_with_its_last_publisher() {
        let (tx, _inbound) = mpsc::channel(16);
        let broker = EmbeddedBroker::start(&BrokerConfig::default(), &["a/#".into()], tx)
            .await
            .expect("broker starts");
        assert_eq!(
            link_threads(),
            Vec::<String>::new(),
            "no OS thread per direction"
        );
        let EmbeddedBroker {
            publisher,
            link_task,
            ..
        } = broker;
        let second = publisher.clone();
        drop(publisher);
        assert!(second.try_publish(stream_topic("A"), Bytes::from_static(b"x")));
        drop(second);
        tokio::time::timeout(Duration::from_secs(10), link_task)
            .await
            .expect("the link task ends once every publisher is gone")
            .expect("no panic");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_gateway_keeps_publishing_while_ingest_is_full() {
        // Ingest takes one message and is then stuck (as when it waits to publish an ack).
        let (tx, _inbound) = mpsc::channel(1);
        let broker = EmbeddedBroker::start(&BrokerConfig::default(), &["a/#".into()], tx)
            .await
            .expect("broker starts");
        let uplinks = broker
            .links
            .connect("up".into(), true, None)
            .await
            .expect("link");
        for i in 0..300u32 {
            uplinks
                .publish(format!("a/{i}"), Bytes::from_static(b"u"))
                .await
                .expect("publish");
        }
        let mut sub = broker
            .links
            .connect("sub".into(), true, None)
            .await
            .expect("link");
        let topic = stream_topic("B");
        sub.subscribe(topic.to_string()).await.expect("subscribe");
        assert!(matches!(next_packet(&mut sub).await, Packet::SubAck(..)));
        for _ in 0..100 {
            assert!(
                broker
                    .publisher
                    .publish(topic.clone(), Bytes::from_static(b"ack"))
                    .await
            );
        }
        let mut got = 0;
        while got < 100 {
            if let Packet::Publish(p, _) = next_packet(&mut sub).await {
                assert_eq!(&p.payload[..], b"ack");
                got += 1;
            }
        }
    }
}
