//! Per-connection memory of the edge, measured as process RSS growth: the broker and the edge
//! run in this process, the clients in a child process (this same test binary, in its
//! `memory_client` mode), so their memory is not counted. Phase 1 connects N plain MQTT
//! clients straight to rumqttd (the broker's own cost), phase 2 connects N mutual-TLS
//! cabinets through the edge (broker + edge). The difference is the edge's share.
//!
//! Run each measurement alone:
//! `cargo test -p locker-gateway --test edge_memory -- --ignored --nocapture --exact memory_broker_plain`
//! and the same with `memory_through_edge`; the difference is the edge's share.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod edge_support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use edge_support::*;
use locker_schemas::CabinetId;
use rumqttc::mqttbytes::v4::{Packet, Subscribe};
use rumqttc::mqttbytes::QoS;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const N: usize = 1000;

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("rss pages");
    pages * 4096
}

/// Runs the client side in a child process; returns it once all `n` are connected.
fn spawn_clients(
    mode: &str,
    addr: std::net::SocketAddr,
    dir: &std::path::Path,
) -> std::process::Child {
    let mut child = Command::new(std::env::current_exe().expect("exe"))
        .args([
            "--exact",
            "memory_client",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("EDGE_MEM_MODE", mode)
        .env("EDGE_MEM_ADDR", addr.to_string())
        .env("EDGE_MEM_DIR", dir)
        .env("EDGE_MEM_N", N.to_string())
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
    // Let lazily freed memory settle, then sample.
    tokio::time::sleep(Duration::from_millis(500)).await;
    rss_bytes()
}

/// Connects N clients of `mode` from a child process and prints the RSS growth per client.
async fn measure(mode: &str) -> f64 {
    let mut fx = start(|cfg| cfg.max_connections = 4 * N).await;
    let ids: Vec<CabinetId> = (0..N)
        .map(|i| CabinetId::new(format!("MEM-{i:05}")).expect("id"))
        .collect();
    fx.pki.issue_cabinets(&ids).expect("issue");
    let creds = format!("{}:{}", fx.broker.username, fx.broker.password);
    std::fs::write(fx.dir.path().join("broker-creds"), creds).expect("creds");
    let base = settle().await;
    let target = if mode == "tls" {
        fx.addr
    } else {
        fx.broker.addr
    };
    let mut child = spawn_clients(mode, target, fx.dir.path());
    if mode == "tls" {
        fx.wait_connected(N).await;
    }
    let with = settle().await;
    drop(child.stdin.take());
    child.wait().expect("child exits");
    let per = with.saturating_sub(base) as f64 / N as f64 / 1024.0;
    println!("EDGE_MEM {mode}: RSS +{per:.1} KiB per connection ({N} connections)");
    per
}

/// rumqttd alone: N plain MQTT clients straight to the broker. Run on its own (`--exact`):
/// memory freed by another test in the same process would hide growth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; run explicitly (see the module doc)"]
async fn memory_broker_plain() {
    measure("plain").await;
}

/// rumqttd and the edge: N mutual-TLS cabinets through the edge. Run on its own (`--exact`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; run explicitly (see the module doc)"]
async fn memory_through_edge() {
    measure("tls").await;
}

/// The client side (only when started by a `memory_*` measurement).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "helper process of the memory_* measurements"]
async fn memory_client() {
    let Ok(mode) = std::env::var("EDGE_MEM_MODE") else {
        return;
    };
    let addr: std::net::SocketAddr = std::env::var("EDGE_MEM_ADDR").unwrap().parse().unwrap();
    let dir = std::path::PathBuf::from(std::env::var("EDGE_MEM_DIR").unwrap());
    let n: usize = std::env::var("EDGE_MEM_N").unwrap().parse().unwrap();
    let ca = std::fs::read(dir.join("ca.pem")).unwrap();
    let mut conns: Vec<Box<dyn Conn>> = Vec::new();
    for i in 0..n {
        let id = format!("MEM-{i:05}");
        let mut s: Box<dyn Conn> = if mode == "tls" {
            let cert = std::fs::read(dir.join("cabinets").join(format!("{id}.pem"))).unwrap();
            let key = std::fs::read(dir.join("cabinets").join(format!("{id}.key"))).unwrap();
            let cfg = tls_config(&ca, &cert, &key);
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let name = ServerName::try_from("localhost").unwrap();
            Box::new(
                tokio_rustls::TlsConnector::from(cfg)
                    .connect(name, tcp)
                    .await
                    .unwrap(),
            )
        } else {
            Box::new(tokio::net::TcpStream::connect(addr).await.unwrap())
        };
        let mut c = rumqttc::mqttbytes::v4::Connect::new(id.clone());
        c.keep_alive = 600;
        if mode != "tls" {
            let creds = std::fs::read_to_string(dir.join("broker-creds")).unwrap();
            let (u, p) = creds.split_once(':').unwrap();
            c.set_login(u, p);
        }
        let mut b = bytes::BytesMut::new();
        Packet::Connect(c).write(&mut b, 1 << 16).unwrap();
        let mut sub = Subscribe::new(format!("lk/v1/{id}/down/#"), QoS::AtLeastOnce);
        sub.pkid = 1;
        Packet::Subscribe(sub).write(&mut b, 1 << 16).unwrap();
        s.write_all(&b).await.unwrap();
        let mut connack = [0u8; 4];
        s.read_exact(&mut connack).await.unwrap();
        assert_eq!(connack, [0x20, 2, 0, 0]);
        let mut suback = [0u8; 5];
        s.read_exact(&mut suback).await.unwrap();
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

fn tls_config(ca: &[u8], cert: &[u8], key: &[u8]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut &ca[..]) {
        roots.add(c.unwrap()).unwrap();
    }
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut &cert[..])
        .map(|c| c.unwrap())
        .collect();
    let key = rustls_pemfile::private_key(&mut &key[..]).unwrap().unwrap();
    let key = match key {
        PrivateKeyDer::Pkcs8(k) => {
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(k.secret_pkcs8_der().to_vec()))
        }
        k => k,
    };
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap(),
    )
}
