//! The embedded rumqttd broker, in-process: its configuration, the router thread, the
//! [`LinkFactory`] that gives every edge connection its own local link to the router
//! (submodule `link`), and the gateway's own link (publisher and uplink subscriber).
//!
//! There is no MQTT listener and no socket between the edge and the broker: rumqttd's router
//! runs on its own thread (`Router::spawn`) and every client connection is a rumqttd *local
//! link* (a pair of shared buffers plus a wake-up channel), exactly what rumqttd's own
//! `RemoteLink` uses behind its TCP listeners. So a cabinet costs the gateway one file
//! descriptor (its own socket) and no network-link buffers.
//!
//! The gateway's link (client id `gw:internal`, which no certificate identity can take because
//! ':' is not allowed in ids) is driven by two dedicated threads, where blocking is fine: one
//! receives notifications (and answers `Unschedule` by re-arming the link), the other
//! publishes (a batch per router event). Async code talks to them through bounded channels.
//! The router and these threads live as long as the process.

mod link;

pub use link::{Link, LinkFactory};

use std::collections::VecDeque;
use std::thread;

use bytes::Bytes;
use locker_schemas::Topic;
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::protocol::{Packet, Publish};
use rumqttd::Notification;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// The client id of the gateway's own link.
pub const INTERNAL_CLIENT_ID: &str = "gw:internal";

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
    tx: mpsc::Sender<(Topic, Bytes)>,
}

impl Publisher {
    /// Queues a publish (QoS 0 at the broker; delivery is made reliable end to end by the
    /// application protocol). Waits if the link is backed up.
    pub async fn publish(&self, topic: Topic, payload: Bytes) -> bool {
        self.tx.send((topic, payload)).await.is_ok()
    }

    /// Whether the gateway's link to the router is still there (for readiness).
    pub fn is_open(&self) -> bool {
        !self.tx.is_closed()
    }

    /// Queues a publish without waiting; false if the link is backed up or gone.
    pub fn try_publish(&self, topic: Topic, payload: Bytes) -> bool {
        self.tx.try_send((topic, payload)).is_ok()
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
        let links = link::factory(cfg);
        let build = links.builder();
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
fn publish_loop(mut link_tx: LinkTx, mut rx: mpsc::Receiver<(Topic, Bytes)>) {
    let mut batch: VecDeque<(Topic, Bytes)> = VecDeque::new();
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
                    Publish::new(Bytes::from(t.to_string()), p, false),
                    None,
                ));
            }
        }
        // Pushes the last one and notifies the router once for the whole batch.
        if let Err(e) = link_tx.publish(topic.to_string(), payload) {
            tracing::error!(error = %e, "gateway link publish failed");
            return;
        }
    }
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
        let topic = Topic::Down(
            locker_schemas::CabinetId::new("A").expect("id"),
            locker_schemas::DownKind::Ack,
        );
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
}
