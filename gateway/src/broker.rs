//! The embedded rumqttd broker: its configuration, the thread it runs on, and the gateway's
//! own local link to it.
//!
//! rumqttd listens only on loopback with a plain MQTT 3.1.1 listener that accepts a single
//! internal credential, which only the edge knows; clients reach it through the edge. The
//! gateway's link (client id `gw:internal`, which no certificate identity can take because ':'
//! is not allowed in ids) is driven by two dedicated threads, because rumqttd's link calls
//! block: one receives notifications (and answers `Unschedule` by re-arming the link), the other
//! publishes. Async code talks to them through bounded channels.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::thread;

use bytes::Bytes;
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::{Broker, Config, ConnectionSettings, Notification, RouterConfig, ServerSettings};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// The client id of the gateway's own link.
pub const INTERNAL_CLIENT_ID: &str = "gw:internal";

/// Broker settings (the `[broker]` table of gateway.toml).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct BrokerConfig {
    /// Loopback port of the plain internal listener; 0 picks a free one.
    pub internal_port: u16,
    /// Maximum MQTT connections the router accepts.
    pub max_connections: usize,
    /// Maximum PUBLISH payload accepted by rumqttd, bytes.
    pub max_payload_size: usize,
    /// Maximum unacknowledged QoS 1 publishes per connection.
    pub max_inflight_count: usize,
    /// Packets forwarded to a subscriber per scheduling round.
    pub max_outgoing_packet_count: u64,
    /// Size of one in-memory log segment per topic filter, bytes.
    pub max_segment_size: usize,
    /// Segments kept per topic filter (older data is dropped for slow subscribers).
    pub max_segment_count: usize,
    /// Seconds a TCP connection may take to send CONNECT.
    pub connection_timeout_ms: u16,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            internal_port: 0,
            max_connections: 20_100,
            max_payload_size: locker_schemas::MAX_PAYLOAD_BYTES,
            max_inflight_count: 100,
            max_outgoing_packet_count: 200,
            max_segment_size: 4 * 1024 * 1024,
            max_segment_count: 4,
            connection_timeout_ms: 10_000,
        }
    }
}

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot find a free loopback port for the internal listener: {0}")]
    Port(std::io::Error),
    #[error("cannot start a broker thread: {0}")]
    Thread(std::io::Error),
    #[error("rumqttd refused the gateway link: {0}")]
    Link(String),
}

/// A publish the broker forwarded to the gateway's link.
#[derive(Debug, Clone)]
pub struct Inbound {
    pub topic: Bytes,
    pub payload: Bytes,
}

/// A running embedded broker and the gateway's link to it.
pub struct EmbeddedBroker {
    /// The plain loopback listener the edge relays to.
    pub addr: SocketAddr,
    /// The internal credential the edge presents in every CONNECT.
    pub username: String,
    pub password: String,
    /// Publishes to send through the gateway's link (bounded).
    pub publisher: Publisher,
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

fn free_port() -> Result<u16, BrokerError> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(BrokerError::Port)?;
    l.local_addr().map(|a| a.port()).map_err(BrokerError::Port)
}

fn random_secret() -> String {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    (0..32)
        .map(|_| format!("{:02x}", rng.gen::<u8>()))
        .collect()
}

impl EmbeddedBroker {
    /// Starts rumqttd on its own threads, links the gateway to it with the given
    /// subscriptions, and returns where the edge should relay to.
    ///
    /// Every publish matching `filters` is delivered on `inbound` (a bounded channel: when
    /// ingest falls behind, the link thread waits, and rumqttd buffers and eventually skips,
    /// which the end-to-end acknowledgements make safe).
    pub fn start(
        cfg: &BrokerConfig,
        filters: &[String],
        inbound: mpsc::Sender<Inbound>,
    ) -> Result<Self, BrokerError> {
        let port = if cfg.internal_port == 0 {
            free_port()?
        } else {
            cfg.internal_port
        };
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let username = "locker-edge".to_owned();
        let password = random_secret();

        let mut auth = HashMap::new();
        auth.insert(username.clone(), password.clone());
        let server = ServerSettings {
            name: "internal".into(),
            listen: addr,
            tls: None,
            next_connection_delay_ms: 0,
            connections: ConnectionSettings {
                connection_timeout_ms: cfg.connection_timeout_ms,
                max_payload_size: cfg.max_payload_size,
                max_inflight_count: cfg.max_inflight_count,
                auth: Some(auth),
                external_auth: None,
                dynamic_filters: true,
            },
        };
        let mut v4 = HashMap::new();
        v4.insert("internal".to_owned(), server);
        let config = Config {
            id: 0,
            router: RouterConfig {
                max_connections: cfg.max_connections,
                max_outgoing_packet_count: cfg.max_outgoing_packet_count,
                max_segment_size: cfg.max_segment_size,
                max_segment_count: cfg.max_segment_count,
                custom_segment: None,
                initialized_filters: None,
                shared_subscriptions_strategy: Default::default(),
            },
            v4: Some(v4),
            ..Default::default()
        };

        let mut broker = Broker::new(config);
        let (mut link_tx, link_rx) = broker
            .link(INTERNAL_CLIENT_ID)
            .map_err(|e| BrokerError::Link(e.to_string()))?;
        for f in filters {
            link_tx
                .subscribe(f.clone())
                .map_err(|e| BrokerError::Link(e.to_string()))?;
        }

        thread::Builder::new()
            .name("rumqttd".into())
            .spawn(move || {
                if let Err(e) = broker.start() {
                    tracing::error!(error = %e, "embedded broker stopped");
                }
            })
            .map_err(BrokerError::Thread)?;

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
            addr,
            username,
            password,
            publisher: Publisher { tx },
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

fn publish_loop(mut link_tx: LinkTx, mut rx: mpsc::Receiver<(String, Bytes)>) {
    while let Some((topic, payload)) = rx.blocking_recv() {
        if let Err(e) = link_tx.publish(topic, payload) {
            tracing::error!(error = %e, "gateway link publish failed");
            return;
        }
    }
}
