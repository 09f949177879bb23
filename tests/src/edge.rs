//! The edge on its own, for the edge tests: a fleet PKI ([`TestPki`]), the gateway's embedded
//! broker (rumqttd's router, in-process) and the mTLS edge in front of it on `127.0.0.1:0`,
//! with presence recorded and metrics readable; rumqttc clients over mutual TLS with a
//! [`Client`] that records what it sees; an in-process [`Observer`] on the broker itself; a
//! raw TLS client for hand-made bytes; sockets stalled at each handshake phase
//! ([`stalled_before_hello`], [`stalled_after_hello`], [`stalled_before_connect`]);
//! short-lived certificates ([`EdgeFixture::cabinet_valid_for`]); process measurements
//! (open fds, RSS); and for MQTT 5, rumqttc's v5 client ([`ClientV5`]) and a raw v5 client on
//! rumqttc's v5 codec ([`RawV5`]).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use locker_broker_config::pki::IssuedCert;
use locker_gateway::broker::{BrokerConfig, EmbeddedBroker, Link, Publisher};
use locker_gateway::edge::{Edge, EdgeConfig, EdgeHandle, PresenceEvent};
use locker_gateway::metrics::Metrics;
use locker_schemas::{Filter, Topic};
use rumqttc::v5::mqttbytes::v5 as v5b;
use rumqttc::{AsyncClient, Event, EventLoop, Incoming, MqttOptions, TlsConfiguration, Transport};
use rustls::pki_types::ServerName;
use tokio::sync::mpsc;

use crate::pki::TestPki;
use crate::wait::{eventually, eventually_async, DEADLINE};

/// Integrator `erp` may read door events of every cabinet.
pub fn default_acls() -> BTreeMap<String, Vec<Filter>> {
    BTreeMap::from([(
        "erp".to_owned(),
        vec![Filter::new("lk/v1/+/up/door").expect("filter")],
    )])
}

/// The edge and its broker, running in this process.
pub struct EdgeFixture {
    pub pki: TestPki,
    pub broker: EmbeddedBroker,
    pub edge: EdgeHandle,
    pub addr: SocketAddr,
    pub metrics: Metrics,
    presence: Arc<Mutex<Vec<PresenceEvent>>>,
    observers: usize,
}

impl EdgeFixture {
    /// Starts PKI, broker and edge with the test defaults ([`default_acls`], CRL polled every
    /// 50 ms) changed by `tweak`.
    pub async fn start(tweak: impl FnOnce(&mut EdgeConfig)) -> Self {
        Self::start_with(tweak, |_| {}).await
    }

    /// Like [`EdgeFixture::start`], with the broker configuration changed by `broker`.
    pub async fn start_with(
        tweak: impl FnOnce(&mut EdgeConfig),
        broker: impl FnOnce(&mut BrokerConfig),
    ) -> Self {
        crate::init_tracing();
        let pki = TestPki::new();
        let paths = pki.pki.paths();
        let mut cfg = EdgeConfig {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            ca_cert: paths.ca_cert(),
            server_cert: paths.server_cert(),
            server_key: paths.server_key(),
            crl: Some(paths.crl()),
            crl_check_interval_ms: 50,
            integrator_acls: default_acls(),
            ..EdgeConfig::default()
        };
        tweak(&mut cfg);
        let mut broker_cfg = BrokerConfig::default();
        broker(&mut broker_cfg);
        // The gateway's own link subscribes to nothing here: tests observe with [`Observer`].
        let (inbound, mut drain) = mpsc::channel(16);
        tokio::spawn(async move { while drain.recv().await.is_some() {} });
        let broker = EmbeddedBroker::start(&broker_cfg, &[], inbound)
            .await
            .expect("broker starts");
        let metrics = Metrics::new().expect("metrics");
        let (tx, mut rx) = mpsc::channel(256);
        let (edge, addr) = Edge::start(cfg, broker.links.clone(), &metrics.registry, tx)
            .await
            .expect("edge starts");
        let presence = Arc::new(Mutex::new(Vec::new()));
        let p = presence.clone();
        tokio::spawn(async move {
            while let Some(ev) = rx.recv().await {
                p.lock().expect("lock").push(ev);
            }
        });
        Self {
            pki,
            broker,
            edge,
            addr,
            metrics,
            presence,
            observers: 0,
        }
    }

    /// Issues a cabinet certificate.
    pub fn cabinet(&mut self, id: &str) -> IssuedCert {
        self.pki.cabinet(id)
    }

    /// Issues a cabinet certificate whose notAfter is `secs` seconds from now.
    pub fn cabinet_valid_for(&mut self, id: &str, secs: i64) -> IssuedCert {
        let before = self.pki.pki.leaf_validity();
        self.pki
            .pki
            .set_leaf_validity(time::Duration::seconds(secs))
            .expect("leaf validity");
        let cert = self.pki.cabinet(id);
        self.pki
            .pki
            .set_leaf_validity(before)
            .expect("leaf validity");
        cert
    }

    /// Issues an integrator certificate.
    pub fn integrator(&mut self, name: &str) -> IssuedCert {
        self.pki.integrator(name)
    }

    /// The fleet CA certificate (PEM).
    pub fn ca_pem(&self) -> Vec<u8> {
        self.pki.pki.ca_cert_pem().as_bytes().to_vec()
    }

    /// A TLS client config trusting the fleet CA and presenting `cert`.
    pub fn tls(&self, cert: Option<&IssuedCert>) -> Arc<rustls::ClientConfig> {
        crate::mqtt::client_tls(&self.ca_pem(), cert)
    }

    /// An MQTT client of `cert` through the edge, driven by a task.
    pub fn client(&self, client_id: &str, cert: Option<&IssuedCert>) -> Client {
        Client::start(mqtt_options(client_id, self.addr, self.tls(cert)))
    }

    /// An in-process client of the broker itself (what the broker delivers, and a way to
    /// publish commands), subscribed to `filters`.
    pub async fn observer(&mut self, filters: &[&str]) -> Observer {
        self.observers += 1;
        let link = self
            .broker
            .links
            .connect(format!("obs:{}", self.observers), true, None)
            .await
            .expect("observer link");
        Observer::start(link, self.broker.publisher.clone(), filters).await
    }

    /// `locker_edge_rejections_total{reason}`.
    pub fn rejections(&self, reason: &str) -> u64 {
        self.metric("locker_edge_rejections_total", Some(("reason", reason)))
    }

    /// A counter or gauge (summed over the series whose label `label` has the given value).
    pub fn metric(&self, name: &str, label: Option<(&str, &str)>) -> u64 {
        metric(&self.metrics.render(), name, label)
    }

    /// Presence events so far.
    pub fn presence(&self) -> Vec<PresenceEvent> {
        self.presence.lock().expect("lock").clone()
    }

    /// Waits until the edge lists `n` connections.
    pub async fn wait_connected(&self, n: usize) {
        let edge = self.edge.clone();
        eventually_async(&format!("{n} connections at the edge"), || {
            let edge = edge.clone();
            async move { (edge.connected().await.len() == n).then_some(()) }
        })
        .await;
    }
}

/// Sets the overall handshake deadline and every phase deadline (ClientHello, TLS, CONNECT)
/// to `ms`.
pub fn handshake_deadlines(cfg: &mut EdgeConfig, ms: u64) {
    cfg.handshake_timeout_ms = ms;
    cfg.hello_timeout_ms = ms;
    cfg.tls_timeout_ms = ms;
    cfg.connect_timeout_ms = ms;
}

/// Sums the samples of `name` in Prometheus text (those with `label`'s value, if given).
pub fn metric(text: &str, name: &str, label: Option<(&str, &str)>) -> u64 {
    let mut total = 0.0;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (metric_name, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if metric_name != name {
            continue;
        }
        let matches = match label {
            None => true,
            Some((k, v)) => labels.split(',').any(|kv| kv == format!("{k}=\"{v}\"")),
        };
        if matches {
            total += value.parse::<f64>().unwrap_or(0.0);
        }
    }
    total as u64
}

/// rumqttc options for `addr` over mutual TLS, keep alive 30 s.
pub fn mqtt_options(
    client_id: &str,
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
) -> MqttOptions {
    let mut o = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
    o.set_keep_alive(Duration::from_secs(30));
    o.set_transport(Transport::Tls(TlsConfiguration::Rustls(tls)));
    o
}

/// What a client's event loop has seen.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    pub connacks: usize,
    /// `session_present` of each CONNACK.
    pub sessions_present: Vec<bool>,
    pub suback_codes: Vec<rumqttc::SubscribeReasonCode>,
    pub pubacks: usize,
    pub pingresps: usize,
    pub publishes: Vec<(String, Vec<u8>)>,
    /// The error that ended the event loop (the task stops at the first one).
    pub error: Option<String>,
}

/// An rumqttc client whose event loop runs in a task until its first error.
pub struct Client {
    pub client: AsyncClient,
    pub seen: Arc<Mutex<Seen>>,
    task: tokio::task::JoinHandle<()>,
}

impl Client {
    pub fn start(o: MqttOptions) -> Self {
        let (client, el) = AsyncClient::new(o, 64);
        let seen = Arc::new(Mutex::new(Seen::default()));
        let task = tokio::spawn(drive(el, seen.clone()));
        Self { client, seen, task }
    }

    pub fn seen(&self) -> Seen {
        self.seen.lock().expect("lock").clone()
    }

    pub fn connected(&self) -> bool {
        let s = self.seen();
        s.connacks > 0 && s.error.is_none()
    }

    pub fn failed(&self) -> bool {
        self.seen().error.is_some()
    }

    pub async fn wait_connected(&self, what: &str) {
        eventually(what, || self.connected()).await;
    }

    pub async fn wait_failed(&self, what: &str) {
        eventually(what, || self.failed()).await;
    }

    pub fn received(&self, topic: &str) -> usize {
        self.seen()
            .publishes
            .iter()
            .filter(|(t, _)| t == topic)
            .count()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn drive(mut el: EventLoop, seen: Arc<Mutex<Seen>>) {
    loop {
        let ev = el.poll().await;
        let mut s = seen.lock().expect("lock");
        match ev {
            Ok(Event::Incoming(Incoming::ConnAck(a))) => {
                s.connacks += 1;
                s.sessions_present.push(a.session_present);
            }
            Ok(Event::Incoming(Incoming::SubAck(a))) => s.suback_codes.extend(a.return_codes),
            Ok(Event::Incoming(Incoming::PubAck(_))) => s.pubacks += 1,
            Ok(Event::Incoming(Incoming::PingResp)) => s.pingresps += 1,
            Ok(Event::Incoming(Incoming::Publish(p))) => {
                s.publishes.push((p.topic.clone(), p.payload.to_vec()))
            }
            Ok(_) => {}
            Err(e) => {
                s.error = Some(e.to_string());
                return;
            }
        }
    }
}

/// Publishes as (topic, payload), in arrival order.
type Messages = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// An in-process client of the broker: records every publish forwarded to it and publishes
/// (QoS 0) through its own link; a cabinet downlink (`lk/v1/{id}/down/{kind}`) goes the way the
/// gateway sends it, straight to the cabinet's session ([`locker_gateway::broker::Direct`]).
pub struct Observer {
    publish: mpsc::Sender<(String, Vec<u8>)>,
    seen: Messages,
    task: tokio::task::JoinHandle<()>,
}

impl Observer {
    async fn start(mut link: Link, publisher: Publisher, filters: &[&str]) -> Self {
        for f in filters {
            link.subscribe(*f).await.expect("observer subscribes");
        }
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (publish, mut rx) = mpsc::channel::<(String, Vec<u8>)>(64);
        let s = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    p = rx.recv() => match p {
                        Some((topic, payload)) => match topic.parse::<Topic>() {
                            Ok(t @ Topic::Down(..)) => {
                                publisher.publish(t, payload.into()).await;
                            }
                            _ => {
                                if link.publish(topic, payload).await.is_err() {
                                    return;
                                }
                            }
                        },
                        None => return,
                    },
                    m = link.next_publish() => match m {
                        Ok(m) => s.lock().expect("lock").push((
                            String::from_utf8_lossy(&m.topic).into_owned(),
                            m.payload.to_vec(),
                        )),
                        Err(_) => return,
                    },
                }
            }
        });
        Self {
            publish,
            seen,
            task,
        }
    }

    /// Publishes `payload` on `topic` (QoS 0) through the observer's link.
    pub async fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.publish
            .send((topic.to_owned(), payload.into()))
            .await
            .expect("observer running");
    }

    /// Everything forwarded to the observer so far.
    pub fn seen(&self) -> Vec<(String, Vec<u8>)> {
        self.seen.lock().expect("lock").clone()
    }

    /// How many publishes on `topic` were forwarded to the observer.
    pub fn received(&self, topic: &str) -> usize {
        self.seen().iter().filter(|(t, _)| t == topic).count()
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A TCP connection to the edge that sends nothing (stalled before its ClientHello).
pub async fn stalled_before_hello(addr: SocketAddr) -> tokio::net::TcpStream {
    tokio::net::TcpStream::connect(addr).await.expect("connect")
}

/// A TCP connection to the edge that sent a real TLS ClientHello (made by a rustls client
/// connection that is then never driven again) and nothing more.
pub async fn stalled_after_hello(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let name = ServerName::try_from("localhost").expect("server name");
    let mut conn = rustls::ClientConnection::new(tls, name).expect("client connection");
    let mut hello = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut hello).expect("ClientHello bytes");
    }
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(&hello).await.expect("write ClientHello");
    tcp
}

/// A completed TLS handshake with the edge, and then no CONNECT.
pub async fn stalled_before_connect(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    raw_tls(addr, tls).await.expect("TLS handshake")
}

/// A raw TLS connection to the edge (for hand-made bytes).
pub async fn raw_tls(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").expect("server name");
    tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
}

/// The bytes of a CONNECT (via rumqttc's encoder): MQTT 3.1.1, or 5 if `protocol_v5`;
/// keep alive 60 s.
pub fn connect_bytes(client_id: &str, protocol_v5: bool) -> Vec<u8> {
    use rumqttc::mqttbytes::v4::Connect;
    let mut c = Connect::new(client_id);
    c.keep_alive = 60;
    if protocol_v5 {
        c.protocol = rumqttc::mqttbytes::Protocol::V5;
    }
    encode(rumqttc::mqttbytes::v4::Packet::Connect(c))
}

/// Encodes one MQTT 3.1.1 packet with rumqttc's encoder.
pub fn encode(p: rumqttc::mqttbytes::v4::Packet) -> Vec<u8> {
    let mut b = bytes::BytesMut::new();
    p.write(&mut b, 1 << 20).expect("encode");
    b.to_vec()
}

/// Writes `bytes` to a raw stream and flushes it (a TLS stream may keep written bytes in
/// its buffer until flushed).
pub async fn send<S: tokio::io::AsyncWrite + Unpin>(s: &mut S, bytes: &[u8]) {
    use tokio::io::AsyncWriteExt;
    s.write_all(bytes).await.expect("write");
    s.flush().await.expect("flush");
}

/// Reads from a raw stream until EOF or error; returns the bytes read (bounded wait).
pub async fn read_until_closed<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return out,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => panic!("connection was not closed"),
        }
    }
}

/// Reads exactly `n` bytes from a raw stream (bounded wait).
pub async fn read_exact<S: tokio::io::AsyncRead + Unpin>(s: &mut S, n: usize) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; n];
    tokio::time::timeout(DEADLINE, s.read_exact(&mut buf))
        .await
        .expect("bytes in time")
        .expect("read");
    buf
}

/// Open file descriptors of this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .count()
}

/// Resident memory of this process, bytes.
pub fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("rss pages");
    pages * 4096
}

// --- MQTT 5 (issue 15): rumqttc's v5 client, and a raw v5 client on rumqttc's v5 codec ---

/// rumqttc v5 options for `addr` over mutual TLS, keep alive 30 s.
pub fn mqtt5_options(
    client_id: &str,
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
) -> rumqttc::v5::MqttOptions {
    let mut o = rumqttc::v5::MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
    o.set_keep_alive(Duration::from_secs(30));
    o.set_transport(Transport::Tls(TlsConfiguration::Rustls(tls)));
    o
}

/// What an MQTT 5 client's event loop has seen.
#[derive(Debug, Default, Clone)]
pub struct SeenV5 {
    pub connacks: Vec<v5b::ConnAck>,
    pub suback_codes: Vec<v5b::SubscribeReasonCode>,
    pub pubacks: Vec<v5b::PubAckReason>,
    pub publishes: Vec<v5b::Publish>,
    /// The reason code of a DISCONNECT from the edge.
    pub disconnect: Option<v5b::DisconnectReasonCode>,
    /// The CONNACK refusal code, if the connection was refused.
    pub refused: Option<v5b::ConnectReturnCode>,
    /// The error that ended the event loop (the task stops at the first one).
    pub error: Option<String>,
}

/// A rumqttc v5 client whose event loop runs in a task until its first error.
pub struct ClientV5 {
    pub client: rumqttc::v5::AsyncClient,
    pub seen: Arc<Mutex<SeenV5>>,
    task: tokio::task::JoinHandle<()>,
}

impl ClientV5 {
    pub fn start(o: rumqttc::v5::MqttOptions) -> Self {
        let (client, el) = rumqttc::v5::AsyncClient::new(o, 64);
        let seen = Arc::new(Mutex::new(SeenV5::default()));
        let task = tokio::spawn(drive_v5(el, seen.clone()));
        Self { client, seen, task }
    }

    pub fn seen(&self) -> SeenV5 {
        self.seen.lock().expect("lock").clone()
    }

    pub fn connected(&self) -> bool {
        let s = self.seen();
        !s.connacks.is_empty() && s.error.is_none()
    }

    pub fn failed(&self) -> bool {
        self.seen().error.is_some()
    }

    pub async fn wait_connected(&self, what: &str) {
        eventually(what, || self.connected()).await;
    }

    pub async fn wait_failed(&self, what: &str) {
        eventually(what, || self.failed()).await;
    }

    /// Waits until the edge closed the connection with DISCONNECT and returns its reason.
    pub async fn wait_disconnected(&self, what: &str) -> v5b::DisconnectReasonCode {
        self.wait_failed(what).await;
        let s = self.seen();
        s.disconnect
            .unwrap_or_else(|| panic!("{what}: closed without DISCONNECT: {:?}", s.error))
    }

    pub fn received(&self, topic: &str) -> usize {
        self.seen()
            .publishes
            .iter()
            .filter(|p| p.topic == topic.as_bytes())
            .count()
    }

    /// The payloads received on `topic`, in order.
    pub fn payloads(&self, topic: &str) -> Vec<Vec<u8>> {
        self.seen()
            .publishes
            .iter()
            .filter(|p| p.topic == topic.as_bytes())
            .map(|p| p.payload.to_vec())
            .collect()
    }
}

impl Drop for ClientV5 {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn drive_v5(mut el: rumqttc::v5::EventLoop, seen: Arc<Mutex<SeenV5>>) {
    use rumqttc::v5::{ConnectionError, Event, StateError};
    loop {
        let ev = el.poll().await;
        let mut s = seen.lock().expect("lock");
        match ev {
            Ok(Event::Incoming(v5b::Packet::ConnAck(a))) => s.connacks.push(a),
            Ok(Event::Incoming(v5b::Packet::SubAck(a))) => s.suback_codes.extend(a.return_codes),
            Ok(Event::Incoming(v5b::Packet::PubAck(a))) => s.pubacks.push(a.reason),
            Ok(Event::Incoming(v5b::Packet::Publish(p))) => s.publishes.push(p),
            Ok(Event::Incoming(v5b::Packet::Disconnect(d))) => s.disconnect = Some(d.reason_code),
            Ok(_) => {}
            Err(e) => {
                match &e {
                    ConnectionError::MqttState(StateError::ServerDisconnect {
                        reason_code,
                        ..
                    }) => s.disconnect = Some(*reason_code),
                    ConnectionError::ConnectionRefused(code) => s.refused = Some(*code),
                    ConnectionError::MqttState(StateError::ConnFail { reason }) => {
                        s.refused = Some(*reason)
                    }
                    _ => {}
                }
                s.error = Some(e.to_string());
                return;
            }
        }
    }
}

impl EdgeFixture {
    /// A rumqttc MQTT 5 client of `cert` through the edge, driven by a task.
    pub fn client_v5(&self, client_id: &str, cert: Option<&IssuedCert>) -> ClientV5 {
        ClientV5::start(mqtt5_options(client_id, self.addr, self.tls(cert)))
    }

    /// A raw MQTT 5 client of `cert` that sent `connect` and read the answer (CONNACK, or
    /// whatever came before the close).
    pub async fn raw_v5(
        &self,
        cert: &IssuedCert,
        connect: v5b::Connect,
        will: Option<v5b::LastWill>,
    ) -> (RawV5, Option<v5b::Packet>) {
        let mut raw = RawV5::open(self.addr, self.tls(Some(cert))).await;
        raw.send(v5b::Packet::Connect(connect, will, None)).await;
        let first = raw.next().await;
        (raw, first)
    }

    /// A raw MQTT 5 client of `cert` connected with `props` (clean start); panics unless
    /// the CONNACK is a success. Returns the client and the CONNACK.
    pub async fn raw_v5_connected(
        &self,
        cert: &IssuedCert,
        props: Option<v5b::ConnectProperties>,
    ) -> (RawV5, v5b::ConnAck) {
        let (raw, first) = self.raw_v5(cert, connect_v5("raw", props), None).await;
        match first {
            Some(v5b::Packet::ConnAck(a)) if a.code == v5b::ConnectReturnCode::Success => (raw, a),
            other => panic!("expected a successful CONNACK, got {other:?}"),
        }
    }
}

/// An MQTT 5 CONNECT: clean start, keep alive 60 s, `props`.
pub fn connect_v5(client_id: &str, props: Option<v5b::ConnectProperties>) -> v5b::Connect {
    v5b::Connect {
        keep_alive: 60,
        client_id: client_id.to_owned(),
        clean_start: true,
        properties: props,
    }
}

/// An MQTT 5 PUBLISH (packet id `pkid`, 0 for QoS 0) with properties `p`.
pub fn publish_v5(
    topic: &str,
    qos: rumqttc::v5::mqttbytes::QoS,
    pkid: u16,
    payload: &str,
    p: Option<v5b::PublishProperties>,
) -> v5b::Packet {
    let mut p = v5b::Publish::new(topic, qos, payload.to_owned(), p);
    p.pkid = pkid;
    v5b::Packet::Publish(p)
}

/// Encodes one MQTT 5 packet with rumqttc's v5 encoder.
pub fn encode_v5(p: &v5b::Packet) -> Vec<u8> {
    let mut b = bytes::BytesMut::new();
    p.write(&mut b, None).expect("encode");
    b.to_vec()
}

/// A raw MQTT 5 client over the edge's mutual TLS: packets written and read with rumqttc's v5
/// codec, nothing done behind the test's back (no acknowledgements, no keep alive, no alias
/// resolution).
pub struct RawV5 {
    pub stream: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    buf: bytes::BytesMut,
}

impl RawV5 {
    /// A TLS connection to the edge, nothing sent yet.
    pub async fn open(addr: SocketAddr, tls: Arc<rustls::ClientConfig>) -> Self {
        Self {
            stream: raw_tls(addr, tls).await.expect("TLS"),
            buf: bytes::BytesMut::new(),
        }
    }

    /// Sends one packet.
    pub async fn send(&mut self, p: v5b::Packet) {
        send(&mut self.stream, &encode_v5(&p)).await;
    }

    /// Sends raw bytes.
    pub async fn send_bytes(&mut self, b: &[u8]) {
        send(&mut self.stream, b).await;
    }

    /// The next packet from the edge, or `None` once it closed the connection (bounded
    /// wait; panics on bytes that are not an MQTT 5 packet).
    pub async fn next(&mut self) -> Option<v5b::Packet> {
        use tokio::io::AsyncReadExt;
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            // rumqttc's v5 reader wants a payload in DISCONNECT: a bare one is "normal".
            if self.buf.starts_with(&[0xe0, 0x00]) {
                let _ = self.buf.split_to(2);
                return Some(v5b::Packet::Disconnect(v5b::Disconnect::new(
                    v5b::DisconnectReasonCode::NormalDisconnection,
                )));
            }
            match v5b::Packet::read(&mut self.buf, None) {
                Ok(p) => return Some(p),
                Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(_)) => {}
                Err(e) => panic!("not an MQTT 5 packet from the edge: {e:?} ({:?})", self.buf),
            }
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    assert!(self.buf.is_empty(), "a partial packet before the close");
                    return None;
                }
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
                Err(_) => panic!("no packet from the edge in time"),
            }
        }
    }

    /// The next packet, which must exist (panics on a close).
    pub async fn expect_next(&mut self, what: &str) -> v5b::Packet {
        self.next()
            .await
            .unwrap_or_else(|| panic!("{what}: the edge closed the connection"))
    }

    /// Reads until the close; returns the packets read before it.
    pub async fn until_closed(&mut self) -> Vec<v5b::Packet> {
        let mut out = Vec::new();
        while let Some(p) = self.next().await {
            out.push(p);
        }
        out
    }

    /// Subscribes to `filters` at QoS 1 (packet id `pkid`) and returns the SUBACK codes
    /// (publishes read before it are returned too).
    pub async fn subscribe(
        &mut self,
        pkid: u16,
        filters: &[&str],
    ) -> (Vec<v5b::SubscribeReasonCode>, Vec<v5b::Publish>) {
        let mut s = v5b::Subscribe::new_many(
            filters
                .iter()
                .map(|f| v5b::Filter::new(*f, rumqttc::v5::mqttbytes::QoS::AtLeastOnce)),
            None,
        );
        s.pkid = pkid;
        self.send(v5b::Packet::Subscribe(s)).await;
        let mut early = Vec::new();
        loop {
            match self.expect_next("SUBACK").await {
                v5b::Packet::SubAck(a) if a.pkid == pkid => return (a.return_codes, early),
                v5b::Packet::Publish(p) => early.push(p),
                other => panic!("expected SUBACK, got {other:?}"),
            }
        }
    }

    /// Reads publishes (acknowledging QoS 1 ones) until `n` arrived; panics on anything else
    /// but PINGRESP.
    pub async fn publishes(&mut self, n: usize) -> Vec<v5b::Publish> {
        let mut out = Vec::new();
        while out.len() < n {
            match self.expect_next("publishes").await {
                v5b::Packet::Publish(p) => {
                    if p.qos == rumqttc::v5::mqttbytes::QoS::AtLeastOnce {
                        self.puback(p.pkid).await;
                    }
                    out.push(p);
                }
                v5b::Packet::PingResp(_) => {}
                other => panic!("expected PUBLISH, got {other:?}"),
            }
        }
        out
    }

    /// Acknowledges a QoS 1 publish.
    pub async fn puback(&mut self, pkid: u16) {
        self.send(v5b::Packet::PubAck(v5b::PubAck::new(pkid, None)))
            .await;
    }
}
