//! A hand-driven cabinet: a raw MQTT client with a cabinet certificate that publishes
//! exactly the uplinks a test gives it and records every downlink. Tests of the gateway use it
//! where they need full control of the wire (duplicates, gaps, garbage); the real agent is
//! used everywhere else.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use locker_broker_config::pki::IssuedCert;
use locker_schemas::codec::{decode_downlink, encode_uplink};
use locker_schemas::{CabinetId, Downlink, DownlinkBody, Filter, Topic, Uplink, UplinkBody};
use rumqttc::{AsyncClient, Event, Packet, QoS};

use crate::mqtt;
use crate::pki::TestPki;

/// What a [`RawCabinet`] has seen.
#[derive(Default)]
pub struct Seen {
    pub downlinks: Vec<Downlink>,
    pub connected: bool,
    pub disconnects: usize,
}

/// A raw MQTT cabinet.
pub struct RawCabinet {
    pub id: CabinetId,
    pub client: AsyncClient,
    pub seen: Arc<Mutex<Seen>>,
    task: tokio::task::JoinHandle<()>,
}

impl RawCabinet {
    /// Connects with the given certificate (issued for `id`) and subscribes to its downlinks.
    pub fn connect(pki: &TestPki, cert: &IssuedCert, id: &str, edge: SocketAddr) -> Self {
        let ca = std::fs::read(pki.ca_pem()).expect("CA");
        let tls = mqtt::client_tls(&ca, Some(cert));
        let (client, mut ev) = mqtt::client(id, edge, tls);
        let id = CabinetId::new(id).expect("id");
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (s, c, cab) = (seen.clone(), client.clone(), id.clone());
        let task = tokio::spawn(async move {
            loop {
                match ev.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = c
                            .subscribe(Filter::cabinet_downlinks(&cab).as_str(), QoS::AtLeastOnce)
                            .await;
                        s.lock().expect("lock").connected = true;
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if let Ok(d) = decode_downlink(&p.payload) {
                            s.lock().expect("lock").downlinks.push(d);
                        }
                    }
                    Ok(_) => {}
                    Err(_) => {
                        {
                            let mut g = s.lock().expect("lock");
                            g.connected = false;
                            g.disconnects += 1;
                        }
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                }
            }
        });
        Self {
            id,
            client,
            seen,
            task,
        }
    }

    /// Publishes an uplink on its kind's topic (QoS 1).
    pub async fn send(&self, u: &Uplink) {
        let topic = Topic::Up(u.cabinet.clone(), u.body.kind()).to_string();
        let bytes = encode_uplink(u).expect("encode");
        self.client
            .publish(topic, QoS::AtLeastOnce, false, bytes)
            .await
            .expect("publish");
    }

    /// Publishes raw bytes on a topic.
    pub async fn send_raw(&self, topic: &str, bytes: Vec<u8>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, bytes)
            .await
            .expect("publish");
    }

    /// An uplink from this cabinet.
    pub fn uplink(&self, seq: u64, body: UplinkBody) -> Uplink {
        Uplink {
            cabinet: self.id.clone(),
            boot: 1,
            seq,
            ts: locker_schemas::now_millis(),
            body,
        }
    }

    /// The highest ack received.
    pub fn acked(&self) -> u64 {
        self.seen
            .lock()
            .expect("lock")
            .downlinks
            .iter()
            .filter_map(|d| match d.body {
                DownlinkBody::Ack(a) => Some(a.seq),
                _ => None,
            })
            .max()
            .unwrap_or(0)
    }

    /// Commands received, in order (with repeats).
    pub fn commands(&self) -> Vec<locker_schemas::Command> {
        self.seen
            .lock()
            .expect("lock")
            .downlinks
            .iter()
            .filter_map(|d| match &d.body {
                DownlinkBody::Command(c) => Some(c.clone()),
                _ => None,
            })
            .collect()
    }

    pub fn connected(&self) -> bool {
        self.seen.lock().expect("lock").connected
    }
}

impl Drop for RawCabinet {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Uplink bodies that raw-cabinet tests send.
pub mod bodies {
    use locker_schemas::{
        CompartmentId, CompartmentInfo, Door, DoorCause, Hello, NetworkKind, Size, UplinkBody,
    };

    /// A hello declaring compartments `1..=n` (size M) on LAN, firmware "test 1".
    pub fn hello(n: u16) -> UplinkBody {
        UplinkBody::Hello(Hello {
            firmware: "test 1".into(),
            hardware: "raw".into(),
            compartments: (1..=n)
                .map(|i| CompartmentInfo {
                    id: CompartmentId(i),
                    size: Size::M,
                })
                .collect(),
            network: NetworkKind::Lan,
            creds_version: 0,
        })
    }

    /// A door of compartment `c` opening or closing for no known cause.
    pub fn door(c: u16, open: bool) -> UplinkBody {
        UplinkBody::Door(Door {
            compartment: CompartmentId(c),
            open,
            cause: DoorCause::Unknown,
            parcel: None,
        })
    }
}
