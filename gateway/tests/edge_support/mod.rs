//! Shared setup for the edge tests: a fleet PKI in a temp dir (the real
//! `locker_broker_config::pki`), a real rumqttd with a plain loopback listener as upstream, the
//! edge itself, rumqttc clients over mutual TLS, a raw TLS client, metric readers and
//! `eventually`. (To be merged into the `tests/` harness crate.)

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use locker_broker_config::pki::{IssuedCert, Pki};
use locker_gateway::edge::{Edge, EdgeConfig, EdgeHandle, PresenceEvent};
use locker_schemas::{CabinetId, Filter};
use rumqttc::{AsyncClient, Event, EventLoop, Incoming, MqttOptions, TlsConfiguration, Transport};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::sync::mpsc;

/// How long a condition may take before a test fails (generous; tests pass as soon as it holds).
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Polls `cond` until it is true; panics with `what` after [`DEADLINE`].
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Polls an async condition until it returns `Some`; panics with `what` after [`DEADLINE`].
pub async fn eventually_async<T, F, Fut>(what: &str, mut cond: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = cond().await {
            return v;
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A real rumqttd with one plain MQTT 3.1.1 listener on loopback, password-protected.
pub struct Broker {
    pub addr: SocketAddr,
    pub username: String,
    pub password: String,
}

/// Starts rumqttd on its own thread (it lives until the test process ends).
pub fn start_broker() -> Broker {
    use rumqttd::{Config, ConnectionSettings, RouterConfig, ServerSettings};
    let port = {
        let l = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("free port");
        l.local_addr().expect("addr").port()
    };
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let (username, password) = ("edge".to_owned(), "internal-secret".to_owned());
    let mut auth = HashMap::new();
    auth.insert(username.clone(), password.clone());
    let server = ServerSettings {
        name: "internal".into(),
        listen: addr,
        tls: None,
        next_connection_delay_ms: 0,
        connections: ConnectionSettings {
            connection_timeout_ms: 10_000,
            max_payload_size: 256 * 1024,
            max_inflight_count: 100,
            auth: Some(auth),
            external_auth: None,
            dynamic_filters: true,
        },
    };
    let config = Config {
        id: 0,
        router: RouterConfig {
            max_connections: 10_000,
            max_outgoing_packet_count: 200,
            max_segment_size: 1024 * 1024,
            max_segment_count: 10,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(HashMap::from([("internal".to_owned(), server)])),
        ..Default::default()
    };
    std::thread::spawn(move || {
        let mut broker = rumqttd::Broker::new(config);
        let _ = broker.start();
    });
    // Wait until it listens.
    let start = Instant::now();
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(start.elapsed() < DEADLINE, "rumqttd did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    Broker {
        addr,
        username,
        password,
    }
}

/// Everything a test needs: PKI, broker, edge, metrics and presence.
pub struct Fixture {
    pub pki: Pki,
    pub dir: tempfile::TempDir,
    pub broker: Broker,
    pub edge: EdgeHandle,
    pub addr: SocketAddr,
    pub registry: prometheus::Registry,
    pub presence: Arc<Mutex<Vec<PresenceEvent>>>,
}

/// Integrator `erp` may read door events of every cabinet.
pub fn default_acls() -> BTreeMap<String, Vec<Filter>> {
    BTreeMap::from([(
        "erp".to_owned(),
        vec![Filter::new("lk/v1/+/up/door").expect("filter")],
    )])
}

/// Starts PKI, broker and edge with `tweak` applied to the edge config.
pub async fn start(tweak: impl FnOnce(&mut EdgeConfig)) -> Fixture {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = Pki::init(dir.path(), &["localhost".into(), "127.0.0.1".into()]).expect("PKI");
    let broker = start_broker();
    let paths = pki.paths();
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
    let registry = prometheus::Registry::new();
    let (tx, mut rx) = mpsc::channel(256);
    let (edge, addr) = Edge::start(
        cfg,
        broker.addr,
        broker.username.clone(),
        broker.password.clone(),
        &registry,
        tx,
    )
    .await
    .expect("edge starts");
    let presence = Arc::new(Mutex::new(Vec::new()));
    let p = presence.clone();
    tokio::spawn(async move {
        while let Some(ev) = rx.recv().await {
            p.lock().unwrap().push(ev);
        }
    });
    Fixture {
        pki,
        dir,
        broker,
        edge,
        addr,
        registry,
        presence,
    }
}

impl Fixture {
    pub fn cabinet(&mut self, id: &str) -> IssuedCert {
        self.pki
            .issue_cabinet(&CabinetId::new(id).expect("id"))
            .expect("issue cabinet")
    }

    pub fn integrator(&mut self, name: &str) -> IssuedCert {
        self.pki.issue_integrator(name).expect("issue integrator")
    }

    pub fn ca_pem(&self) -> Vec<u8> {
        self.pki.ca_cert_pem().as_bytes().to_vec()
    }

    /// A TLS client config trusting the fleet CA and presenting `cert`.
    pub fn tls(&self, cert: Option<&IssuedCert>) -> Arc<rustls::ClientConfig> {
        client_tls(&self.ca_pem(), cert)
    }

    /// An MQTT client of `cert` through the edge, driven by a task.
    pub fn client(&self, client_id: &str, cert: Option<&IssuedCert>) -> Client {
        Client::start(mqtt_options(client_id, self.addr, self.tls(cert)))
    }

    /// An MQTT client straight to the broker with the internal credential (what the broker
    /// delivers, as an observer).
    pub fn observer(&self, client_id: &str) -> Client {
        let mut o = MqttOptions::new(
            client_id,
            self.broker.addr.ip().to_string(),
            self.broker.addr.port(),
        );
        o.set_credentials(self.broker.username.clone(), self.broker.password.clone());
        o.set_keep_alive(Duration::from_secs(30));
        Client::start(o)
    }

    /// `locker_edge_rejections_total{reason}`.
    pub fn rejections(&self, reason: &str) -> u64 {
        metric(
            &self.registry,
            "locker_edge_rejections_total",
            Some(("reason", reason)),
        )
    }

    /// Presence events so far.
    pub fn presence(&self) -> Vec<PresenceEvent> {
        self.presence.lock().unwrap().clone()
    }

    /// Waits until the edge lists `n` connections.
    pub async fn wait_connected(&self, n: usize) {
        let edge = self.edge.clone();
        eventually_async(&format!("{n} relayed connections"), || {
            let edge = edge.clone();
            async move { (edge.connected().await.len() == n).then_some(()) }
        })
        .await;
    }
}

/// Reads a counter or gauge value (summed over series matching `label`).
pub fn metric(registry: &prometheus::Registry, name: &str, label: Option<(&str, &str)>) -> u64 {
    let mut total = 0.0;
    for fam in registry.gather() {
        if fam.name() != name {
            continue;
        }
        for m in fam.get_metric() {
            let ok = match label {
                None => true,
                Some((k, v)) => m
                    .get_label()
                    .iter()
                    .any(|l| l.name() == k && l.value() == v),
            };
            if ok {
                total += m.get_counter().get_value() + m.get_gauge().get_value();
            }
        }
    }
    total as u64
}

/// A rustls client config trusting `ca_pem` and presenting `cert` (or none).
pub fn client_tls(ca_pem: &[u8], cert: Option<&IssuedCert>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut &ca_pem[..]) {
        roots.add(c.expect("CA PEM")).expect("add CA");
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots);
    Arc::new(match cert {
        Some(c) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from(c.cert_der.clone())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(c.key_der.clone())),
            )
            .expect("client cert"),
        None => builder.with_no_client_auth(),
    })
}

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
    pub suback_codes: Vec<rumqttc::SubscribeReasonCode>,
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
        self.seen.lock().unwrap().clone()
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
        match el.poll().await {
            Ok(Event::Incoming(Incoming::ConnAck(_))) => seen.lock().unwrap().connacks += 1,
            Ok(Event::Incoming(Incoming::SubAck(s))) => {
                seen.lock().unwrap().suback_codes.extend(s.return_codes)
            }
            Ok(Event::Incoming(Incoming::Publish(p))) => seen
                .lock()
                .unwrap()
                .publishes
                .push((p.topic.clone(), p.payload.to_vec())),
            Ok(_) => {}
            Err(e) => {
                seen.lock().unwrap().error = Some(e.to_string());
                return;
            }
        }
    }
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

/// The bytes of an MQTT 3.1.1 CONNECT (via rumqttc's encoder).
pub fn connect_bytes(client_id: &str, protocol_v5: bool) -> Vec<u8> {
    use rumqttc::mqttbytes::v4::{Connect, Packet};
    let mut c = Connect::new(client_id);
    if protocol_v5 {
        c.protocol = rumqttc::mqttbytes::Protocol::V5;
    }
    let mut b = bytes::BytesMut::new();
    Packet::Connect(c).write(&mut b, 1 << 20).expect("encode");
    b.to_vec()
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
