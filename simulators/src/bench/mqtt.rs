//! Benchmark MQTT clients.
//!
//! - [`connect_hold`]: a minimal mTLS MQTT 3.1.1 client that connects (TCP, TLS with its own
//!   certificate, CONNECT, CONNACK) and then just holds the connection: what the connect
//!   benchmark opens by the thousand, identical against the gateway and Mosquitto.
//! - [`publisher`]: a rumqttc client publishing `n` Scan envelopes (seq 1..=n) at QoS 1. Against
//!   the gateway it also subscribes to its ack topic and resends from the last acknowledged seq
//!   when acks stall (go-back-N, as the agent does), finishing when seq n is acknowledged, i.e.
//!   durably stored; against Mosquitto it finishes when every PUBACK arrived.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use locker_schemas::{
    codec, CabinetId, DownKind, DownlinkBody, Filter, ScanSource, Topic, Uplink, UplinkBody,
};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::BenchError;

fn connect_packet(client_id: &str, keep_alive_s: u16) -> Vec<u8> {
    let id = client_id.as_bytes();
    let mut vh = vec![0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02];
    vh.extend_from_slice(&keep_alive_s.to_be_bytes());
    vh.extend_from_slice(&u16::try_from(id.len()).unwrap_or(0).to_be_bytes());
    vh.extend_from_slice(id);
    let mut out = vec![0x10];
    let mut len = vh.len();
    loop {
        let mut b = u8::try_from(len % 128).unwrap_or(0);
        len /= 128;
        if len > 0 {
            b |= 0x80;
        }
        out.push(b);
        if len == 0 {
            break;
        }
    }
    out.extend(vh);
    out
}

/// Connects over mTLS, sends CONNECT (clean session) and waits for a successful CONNACK.
pub async fn connect_hold(
    addr: SocketAddr,
    server_name: &str,
    tls: Arc<rustls::ClientConfig>,
    client_id: &str,
    keep_alive_s: u16,
) -> Result<TlsStream<TcpStream>, BenchError> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name =
        ServerName::try_from(server_name.to_owned()).map_err(|e| BenchError::Tls(e.to_string()))?;
    let mut s = TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(|e| BenchError::Tls(e.to_string()))?;
    s.write_all(&connect_packet(client_id, keep_alive_s))
        .await?;
    s.flush().await?;
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack).await?;
    if ack[0] != 0x20 || ack[3] != 0 {
        return Err(BenchError::Mqtt(format!("CONNACK refused: {ack:02x?}")));
    }
    Ok(s)
}

/// What a publisher did.
#[derive(Debug, Default)]
pub struct PublishStats {
    pub published: AtomicU64,
    pub acked_seq: AtomicU64,
    pub rewinds: AtomicU64,
    pub pubacks: AtomicU64,
}

/// What a benchmark publisher sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mix {
    /// Barcode scans only (the rules engine has nothing to judge in them).
    Scan,
    /// What a busy cabinet sends: door opens and closes, power telemetry with a falling state
    /// of charge (low-battery alerts and power-save actions happen), and scans, so every rule
    /// that reads events runs.
    Mixed,
}

/// The body of event `seq` in a mix.
pub fn body(mix: Mix, seq: u64) -> UplinkBody {
    let scan = || {
        UplinkBody::Scan(locker_schemas::Scan {
            source: ScanSource::Barcode,
            value: format!("PKG{seq:010}"),
        })
    };
    match (mix, seq % 4) {
        (Mix::Scan, _) | (Mix::Mixed, 0) => scan(),
        (Mix::Mixed, 1 | 2) => UplinkBody::Door(locker_schemas::Door {
            compartment: locker_schemas::CompartmentId(((seq / 4) % 16 + 1) as u16),
            open: seq % 4 == 1,
            cause: locker_schemas::DoorCause::LocalAccess,
            parcel: (seq % 4 == 2).then_some(false),
        }),
        _ => UplinkBody::Power(locker_schemas::Power {
            battery_mv: 12_800,
            soc_pct: (100 - (seq / 4) % 100) as u8,
            pv_w: (seq % 60) as u32,
            load_w: 12,
            charging: locker_schemas::ChargeState::Float,
            temp_dc: 215,
        }),
    }
}

/// Publishes `n` events of `cabinet` (seq 1..=n, boot `boot`; scans, or the [`Mix`]) at QoS 1
/// to the broker at `addr`. With `end_to_end`, completes when the gateway acknowledged seq n
/// (resending from the last ack when acks stall); otherwise when n PUBACKs arrived.
#[allow(clippy::too_many_arguments)]
pub async fn publisher(
    addr: SocketAddr,
    host: &str,
    tls: Arc<rustls::ClientConfig>,
    cabinet: CabinetId,
    boot: u32,
    n: u64,
    end_to_end: bool,
    mix: Mix,
    stats: Arc<PublishStats>,
) -> Result<(), BenchError> {
    let mut o = MqttOptions::new(cabinet.as_str(), host, addr.port());
    o.set_keep_alive(Duration::from_secs(60));
    o.set_clean_session(true);
    o.set_inflight(1_000);
    o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
    let (client, mut el) = AsyncClient::new(o, 2_048);
    // Encoded once: the payloads are the same bytes against both brokers.
    let (topics, payloads): (Vec<String>, Vec<Vec<u8>>) = (1..=n)
        .map(|seq| {
            let body = body(mix, seq);
            let topic = Topic::Up(cabinet.clone(), body.kind()).to_string();
            codec::encode_uplink(&Uplink {
                cabinet: cabinet.clone(),
                boot,
                seq,
                ts: locker_schemas::now_millis(),
                body,
            })
            .map(|p| (topic, p))
            .map_err(|e| BenchError::Codec(e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .unzip();
    let ack_topic = Topic::Down(cabinet.clone(), DownKind::Ack).to_string();
    let _ = Filter::cabinet_downlinks(&cabinet);
    let (conn_tx, mut conn_rx) = tokio::sync::watch::channel(0u64);
    let st = stats.clone();
    let poller = tokio::spawn(async move {
        let mut connects = 0u64;
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    connects += 1;
                    let _ = conn_tx.send(connects);
                }
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    st.pubacks.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if let Ok(d) = codec::decode_downlink(&p.payload) {
                        if let DownlinkBody::Ack(a) = d.body {
                            st.acked_seq.fetch_max(a.seq, Ordering::Relaxed);
                        }
                    }
                }
                Ok(_) => {}
                Err(rumqttc::ConnectionError::RequestsDone) => return,
                Err(e) => {
                    tracing::debug!(error = %e, "bench publisher connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    if conn_rx.changed().await.is_err() {
        return Err(BenchError::Mqtt("event loop ended".into()));
    }
    if end_to_end {
        client
            .subscribe(ack_topic, QoS::AtMostOnce)
            .await
            .map_err(|e| BenchError::Mqtt(e.to_string()))?;
    }
    const WINDOW: u64 = 2_000;
    let mut next = 1u64;
    let mut last_progress = tokio::time::Instant::now();
    let mut last_acked = 0u64;
    loop {
        let acked = stats.acked_seq.load(Ordering::Relaxed);
        let done = if end_to_end {
            acked >= n
        } else {
            stats.pubacks.load(Ordering::Relaxed) >= n
        };
        if done {
            break;
        }
        if acked > last_acked {
            last_acked = acked;
            last_progress = tokio::time::Instant::now();
        }
        if end_to_end && last_progress.elapsed() > Duration::from_secs(2) && next > acked + 1 {
            // Acks stalled: go back to the first unacknowledged event.
            next = acked + 1;
            last_progress = tokio::time::Instant::now();
            stats.rewinds.fetch_add(1, Ordering::Relaxed);
        }
        let limit = if end_to_end { acked + WINDOW } else { n };
        if next <= n && next <= limit {
            let i = usize::try_from(next - 1).unwrap_or(0);
            client
                .publish(
                    topics[i].clone(),
                    QoS::AtLeastOnce,
                    false,
                    payloads[i].clone(),
                )
                .await
                .map_err(|e| BenchError::Mqtt(e.to_string()))?;
            stats.published.fetch_add(1, Ordering::Relaxed);
            next += 1;
        } else {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), poller).await;
    Ok(())
}
