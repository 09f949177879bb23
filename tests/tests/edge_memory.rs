//! Per-connection cost of the edge and its embedded broker, measured on the process: RSS
//! growth and open file descriptors. The edge and the broker (rumqttd's router, in-process,
//! one local link per client) run in this process; the clients run in a child process (this
//! same test binary, in its `memory_client` mode), so their memory and sockets are not
//! counted. Each client is a mutual-TLS cabinet that connects, subscribes to its downlinks at
//! QoS 1 and stays idle. The edge's handshake deadline is raised so `tls`-stage clients (which
//! never send CONNECT) stay.
//!
//! Run it alone (memory freed by another test in the same process would hide growth):
//! `cargo test -p locker-tests --test edge_memory -- --ignored --nocapture --exact memory_through_edge`
//! (`EDGE_MEM_N` sets the number of cabinets, 1000 by default; `EDGE_MEM_STAGE=tls` or
//! `connect` stops the clients after the TLS handshake or after CONNECT, to see the parts).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use locker_schemas::CabinetId;
use locker_tests::edge::*;
use rumqttc::mqttbytes::v4::{Packet, Subscribe};
use rumqttc::mqttbytes::QoS;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Pings each `pings`-stage client exchanges before it idles.
const PINGS: usize = 250;

/// How far each client goes (`EDGE_MEM_STAGE`): `tls` (handshake only, no MQTT), `connect`
/// (CONNECT, no subscription), `subscribe` (CONNECT and a QoS 1 subscription; the default) or
/// `pings` (then 250 PINGREQ/PINGRESP exchanges: traffic through the link before it idles).
fn stage() -> String {
    std::env::var("EDGE_MEM_STAGE").unwrap_or_else(|_| "subscribe".into())
}

fn cabinets() -> usize {
    std::env::var("EDGE_MEM_N")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000)
}

/// Runs the client side in a child process; returns it once all `n` are connected.
fn spawn_clients(
    addr: std::net::SocketAddr,
    dir: &std::path::Path,
    n: usize,
) -> std::process::Child {
    let mut child = Command::new(std::env::current_exe().expect("exe"))
        .args([
            "--exact",
            "memory_client",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("EDGE_MEM_ADDR", addr.to_string())
        .env("EDGE_MEM_DIR", dir)
        .env("EDGE_MEM_N", n.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn client process");
    let out = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(out).lines();
    while let Some(line) = lines.next() {
        if line.expect("child output").contains("EDGE_MEM_READY") {
            // Keep draining the child's output so it never sees a broken pipe.
            std::thread::spawn(move || lines.for_each(drop));
            return child;
        }
    }
    let _ = child.wait();
    panic!("client process ended before connecting");
}

async fn settle() -> u64 {
    // Let lazily freed memory settle (no condition to poll for: this is a measurement).
    tokio::time::sleep(Duration::from_millis(500)).await;
    rss_bytes()
}

/// The edge and the broker: N mutual-TLS cabinets through the edge, each subscribed at QoS 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; run explicitly (see the module doc)"]
async fn memory_through_edge() {
    let n = cabinets();
    let mut fx = EdgeFixture::start(|cfg| {
        cfg.max_connections = 4 * n;
        handshake_deadlines(cfg, 600_000);
    })
    .await;
    let ids: Vec<CabinetId> = (0..n)
        .map(|i| CabinetId::new(format!("MEM-{i:05}")).expect("id"))
        .collect();
    fx.pki.pki.issue_cabinets(&ids).expect("issue");
    // One connection first, so one-time allocations (TLS session cache, router tables)
    // are not counted per connection.
    let warm = fx.cabinet("WARM-UP");
    let c = fx.client("WARM-UP", Some(&warm));
    c.wait_connected("warm-up cabinet").await;
    let base = settle().await;
    let fds = open_fds();
    let mut child = spawn_clients(fx.addr, fx.pki.dir(), n);
    if stage() == "tls" {
        let handshakes = || fx.metric("locker_edge_tls_handshakes_total", None);
        locker_tests::eventually("handshakes", || handshakes() > n as u64).await;
    } else {
        fx.wait_connected(n + 1).await;
    }
    let with = settle().await;
    let fds_with = open_fds();
    drop(child.stdin.take());
    child.wait().expect("child exits");
    let per = with.saturating_sub(base) as f64 / n as f64 / 1024.0;
    let per_fd = (fds_with as f64 - fds as f64) / n as f64;
    println!(
        "EDGE_MEM: RSS +{per:.1} KiB and {per_fd:.2} fds per connection ({n} mTLS cabinets, \
         stage {}; RSS {:.1} MiB -> {:.1} MiB)",
        stage(),
        base as f64 / 1048576.0,
        with as f64 / 1048576.0
    );
    assert!(
        per_fd < 1.1,
        "one socket per cabinet, got {per_fd:.2} fds each"
    );
}

/// The client side (only when started by `memory_through_edge`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "helper process of memory_through_edge"]
async fn memory_client() {
    let Ok(addr) = std::env::var("EDGE_MEM_ADDR") else {
        return;
    };
    let addr: std::net::SocketAddr = addr.parse().expect("addr");
    let dir = std::path::PathBuf::from(std::env::var("EDGE_MEM_DIR").expect("dir"));
    let n: usize = std::env::var("EDGE_MEM_N").expect("n").parse().expect("n");
    let ca = std::fs::read(dir.join("ca.pem")).expect("ca");
    let mut conns: Vec<Box<dyn Conn>> = Vec::new();
    for i in 0..n {
        let id = format!("MEM-{i:05}");
        let cert = std::fs::read(dir.join("cabinets").join(format!("{id}.pem"))).expect("cert");
        let key = std::fs::read(dir.join("cabinets").join(format!("{id}.key"))).expect("key");
        let cfg = locker_tests::pki::client_tls_pem(&ca, &cert, &key);
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let name = ServerName::try_from("localhost").expect("name");
        let mut s: Box<dyn Conn> = Box::new(
            tokio_rustls::TlsConnector::from(cfg)
                .connect(name, tcp)
                .await
                .expect("TLS"),
        );
        if stage() == "tls" {
            conns.push(s);
            continue;
        }
        let mut c = rumqttc::mqttbytes::v4::Connect::new(id.clone());
        c.keep_alive = 600;
        let mut b = bytes::BytesMut::new();
        Packet::Connect(c).write(&mut b, 1 << 16).expect("encode");
        let subscribe = stage() != "connect";
        if subscribe {
            let mut sub = Subscribe::new(format!("lk/v1/{id}/down/#"), QoS::AtLeastOnce);
            sub.pkid = 1;
            Packet::Subscribe(sub)
                .write(&mut b, 1 << 16)
                .expect("encode");
        }
        s.write_all(&b).await.expect("write");
        s.flush().await.expect("flush");
        let mut connack = [0u8; 4];
        s.read_exact(&mut connack).await.expect("CONNACK");
        assert_eq!(connack, [0x20, 2, 0, 0]);
        if subscribe {
            let mut suback = [0u8; 5];
            s.read_exact(&mut suback).await.expect("SUBACK");
        }
        if stage() == "pings" {
            // Traffic through the link after the fact: 250 PINGREQ / PINGRESP, one at a time.
            for _ in 0..PINGS {
                s.write_all(&[0xc0, 0]).await.expect("PINGREQ");
                s.flush().await.expect("flush");
                let mut pong = [0u8; 2];
                s.read_exact(&mut pong).await.expect("PINGRESP");
            }
        }
        conns.push(s);
    }
    println!("EDGE_MEM_READY");
    // Hold the connections until the parent closes our stdin.
    let mut stdin = tokio::io::stdin();
    let mut sink = Vec::new();
    let _ = stdin.read_to_end(&mut sink).await;
    drop(conns);
}

trait Conn: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Conn for T {}
