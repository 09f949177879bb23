//! The MQTT session: rumqttc options (stable client id = cabinet id, persistent session, keep-alive
//! for 4G, mTLS) and the event-loop task, which reconnects with exponential backoff and full
//! jitter and forwards connects, disconnects and downlink publishes to the agent's main loop.
//!
//! Retransmission belongs to the agent (go-back-N over its outbox, see [`super::window`]), so the
//! task drops rumqttc's own replay queue after every connection error: every resend is an exact
//! copy of a stored event. Incoming publishes are acknowledged manually by the main loop once
//! they are handled (a command is claimed durably before its PUBACK goes out).

use std::sync::Arc;
use std::time::Duration;

use locker_schemas::{CabinetId, MAX_PAYLOAD_BYTES};
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, NetworkOptions, Outgoing, Packet,
    Publish, TlsConfiguration, Transport,
};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::backoff::Backoff;
use crate::config::MqttConfig;

/// What the session task tells the main loop.
#[derive(Debug)]
pub enum MqttEvent {
    /// CONNACK received.
    Connected { session_present: bool },
    /// The connection was lost (or could not be made after having been up).
    Disconnected { error: String },
    /// A publish from the broker and when it arrived (acknowledge it with the client once
    /// handled; relative command TTLs count from the arrival).
    Message(Publish, Instant),
}

/// Builds the rumqttc options for a cabinet. `tls` is kept for the life of the session task:
/// every reconnect uses the same `Arc<ClientConfig>` and so resumes its TLS session.
pub fn options(
    cfg: &MqttConfig,
    cabinet: &CabinetId,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> MqttOptions {
    let mut o = MqttOptions::new(cabinet.as_str(), cfg.host.clone(), cfg.port);
    o.set_keep_alive(Duration::from_secs(cfg.keep_alive_s.max(1)));
    o.set_clean_session(false);
    o.set_manual_acks(true);
    // The app-level window bounds what is in flight; leave MQTT room for a rewind on top of it.
    o.set_inflight(cfg.window.saturating_mul(2).max(8));
    let max = MAX_PAYLOAD_BYTES + 1024;
    o.set_max_packet_size(max, max);
    if let Some(c) = tls {
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(c)));
    }
    o
}

/// Creates the client and spawns the event-loop task.
pub fn spawn(
    opts: MqttOptions,
    cfg: &MqttConfig,
    events: mpsc::Sender<MqttEvent>,
) -> (AsyncClient, tokio::task::JoinHandle<()>) {
    let cap = usize::from(cfg.window) + 16;
    let (client, mut el) = AsyncClient::new(opts, cap);
    let mut net = NetworkOptions::new();
    net.set_connection_timeout(cfg.connect_timeout_s);
    net.set_tcp_nodelay(true);
    el.set_network_options(net);
    let backoff = Backoff {
        base: Duration::from_millis(cfg.backoff_base_ms),
        max: Duration::from_millis(cfg.backoff_max_ms),
    };
    let task = tokio::spawn(run(el, backoff, events));
    (client, task)
}

/// A connection that lasted this long resets the backoff.
const STABLE: Duration = Duration::from_secs(30);

async fn run(mut el: EventLoop, backoff: Backoff, events: mpsc::Sender<MqttEvent>) {
    let mut failures: u32 = 0;
    let mut connected_at: Option<Instant> = None;
    loop {
        match el.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                connected_at = Some(Instant::now());
                let ev = MqttEvent::Connected {
                    session_present: ack.session_present,
                };
                if events.send(ev).await.is_err() {
                    return;
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if events
                    .send(MqttEvent::Message(p, Instant::now()))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
            Ok(_) => {}
            Err(ConnectionError::RequestsDone) => return,
            Err(e) => {
                el.pending.clear();
                if let Some(t) = connected_at.take() {
                    if t.elapsed() >= STABLE {
                        failures = 0;
                    }
                    let ev = MqttEvent::Disconnected {
                        error: e.to_string(),
                    };
                    if events.send(ev).await.is_err() {
                        return;
                    }
                }
                let d = backoff.delay(failures, &mut rand::thread_rng());
                failures = failures.saturating_add(1);
                tracing::debug!(error = %e, sleep_ms = d.as_millis() as u64, failures, "mqtt connection failed");
                tokio::time::sleep(d).await;
            }
        }
    }
}
