//! What a connection costs the gateway process and that nothing stays behind, counted on this
//! process's open file descriptors: 1,500 mutual-TLS cabinets connected at once hold one
//! descriptor each in the gateway (their socket; the broker is in-process), and 200
//! connect/close cycles leave neither descriptors nor router connections behind.
//!
//! Both tests count the whole process's descriptors, so they take [`FDS`] in turn and this
//! test binary holds no other tests.

use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use locker_schemas::{CabinetId, DownKind, Topic, UpKind};
use locker_tests::edge::*;
use locker_tests::eventually;
use locker_tests::mqtt::client_tls;
use rumqttc::mqttbytes::v4::{Connect, LastWill, Packet, Subscribe};
use rumqttc::mqttbytes::QoS as RawQoS;
use rumqttc::QoS;

/// Held by a test while it counts descriptors.
static FDS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const CONNACK_OK: [u8; 4] = [0x20, 0x02, 0x00, 0x00];
const DISCONNECT: [u8; 2] = [0xe0, 0x00];

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// Connects a cabinet, subscribes it to its downlinks (QoS 1) and returns its stream.
async fn cabinet(addr: std::net::SocketAddr, tls: Arc<rustls::ClientConfig>, id: CabinetId) -> Tls {
    let mut s = raw_tls(addr, tls).await.expect("TLS");
    let mut c = Connect::new(id.as_str());
    c.keep_alive = 300;
    let mut sub = Subscribe::new(
        locker_schemas::Filter::cabinet_downlinks(&id).as_str(),
        RawQoS::AtLeastOnce,
    );
    sub.pkid = 1;
    let mut bytes = encode(Packet::Connect(c));
    bytes.extend(encode(Packet::Subscribe(sub)));
    send(&mut s, &bytes).await;
    assert_eq!(read_exact(&mut s, 4).await, CONNACK_OK);
    assert_eq!(read_exact(&mut s, 5).await, [0x90, 3, 0, 1, 1], "SUBACK");
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifteen_hundred_cabinets_at_once_cost_one_descriptor_each() {
    const N: usize = 1500;
    let _fds = FDS.lock().await;
    // A generous handshake deadline: this is about capacity, not speed (debug builds on a
    // busy machine handshake slowly).
    let mut fx = EdgeFixture::start(|cfg| {
        cfg.max_connections = 2 * N;
        handshake_deadlines(cfg, 300_000);
    })
    .await;
    let obs = fx.observer(&[]).await;
    let ids: Vec<CabinetId> = (0..N)
        .map(|i| CabinetId::new(format!("SCALE-{i:04}")).expect("id"))
        .collect();
    let certs = fx.pki.pki.issue_cabinets(&ids).expect("issue");
    let ca = fx.ca_pem();
    let configs: Vec<_> = certs.iter().map(|c| client_tls(&ca, Some(c))).collect();

    let before = open_fds();
    let started = Instant::now();
    let addr = fx.addr;
    let mut conns: Vec<(usize, Tls)> = futures::stream::iter(
        configs
            .into_iter()
            .zip(ids.iter().cloned())
            .enumerate()
            .map(|(i, (tls, id))| async move { (i, cabinet(addr, tls, id).await) }),
    )
    .buffer_unordered(64)
    .collect()
    .await;
    conns.sort_by_key(|(i, _)| *i);
    fx.wait_connected(N).await;
    let connected_in = started.elapsed();
    let with = open_fds();
    // This process holds both ends: N client sockets plus what the gateway holds.
    let gateway = with.saturating_sub(before).saturating_sub(N);
    println!(
        "EDGE_SCALE: {N} mTLS cabinets connected and subscribed in {connected_in:?}; process fds \
         {before} -> {with}: {gateway} held by the gateway = {:.3} per cabinet; RSS {:.1} MiB",
        gateway as f64 / N as f64,
        rss_bytes() as f64 / 1048576.0
    );
    assert!(
        gateway <= N + N / 50,
        "about one descriptor per cabinet, got {gateway} for {N}"
    );

    // They are all live sessions: a command reaches every 100th one.
    for i in (0..N).step_by(100) {
        let topic = Topic::Down(ids[i].clone(), DownKind::Cmd).to_string();
        obs.publish(&topic, "open").await;
        let frame = read_exact(&mut conns[i].1, 2 + 2 + topic.len() + 2 + 4).await;
        assert_eq!(&frame[..2], &[0x32, (2 + topic.len() + 2 + 4) as u8]);
        assert_eq!(&frame[4..4 + topic.len()], topic.as_bytes());
    }

    drop(conns);
    fx.wait_connected(0).await;
    eventually("descriptors given back", || open_fds() <= before + 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_connections_leave_nothing_behind() {
    let _fds = FDS.lock().await;
    // Room in the router for the gateway's own link, the observer and a few clients only:
    // a connection the router kept after its client left would soon exhaust it.
    let mut fx = EdgeFixture::start_with(|_| {}, |b| b.max_connections = 6).await;
    let obs = fx.observer(&[]).await;
    let same = fx.cabinet("CAB-SAME");
    let same_tls = (fx.tls(Some(&same)), "CAB-SAME".to_owned());
    let others: Vec<_> = (0..100)
        .map(|i| {
            let id = format!("CAB-D{i:03}");
            let cert = fx.cabinet(&id);
            (fx.tls(Some(&cert)), id)
        })
        .collect();

    // Every session leaves a will (published on the abnormal ends); half of them end with
    // DISCONNECT, half by dropping the socket.
    let cycle = |(tls, id): (Arc<rustls::ClientConfig>, String), clean: bool| {
        let addr = fx.addr;
        async move {
            let cabinet = CabinetId::new(id).expect("id");
            let will = Topic::Up(cabinet, UpKind::Network).to_string();
            let mut c = Connect::new("ignored");
            c.keep_alive = 60;
            c.last_will = Some(LastWill::new(will, "x", RawQoS::AtLeastOnce, false));
            let mut s = raw_tls(addr, tls).await.expect("TLS");
            send(&mut s, &encode(Packet::Connect(c))).await;
            assert_eq!(
                read_exact(&mut s, 4).await,
                CONNACK_OK,
                "the router took it"
            );
            if clean {
                send(&mut s, &DISCONNECT).await;
                read_until_closed(&mut s).await;
            }
        }
    };
    // Warm up (one of each path), then measure.
    cycle(same_tls.clone(), true).await;
    cycle(same_tls.clone(), false).await;
    fx.wait_connected(0).await;
    let (fds, rss) = (open_fds(), rss_bytes());

    for i in 0..200 {
        let who = if i % 2 == 0 {
            same_tls.clone()
        } else {
            others[i / 2].clone()
        };
        cycle(who, i % 4 < 2).await;
        fx.wait_connected(0).await;
    }
    let (fds_after, rss_after) = (open_fds(), rss_bytes());
    println!(
        "EDGE_CYCLES: 200 connect/close cycles: fds {fds} -> {fds_after}, RSS {:.1} MiB -> {:.1} MiB",
        rss as f64 / 1048576.0,
        rss_after as f64 / 1048576.0
    );
    assert!(fds_after <= fds + 2, "fds grew from {fds} to {fds_after}");

    // The last one still works end to end.
    let c = fx.client("CAB-SAME", Some(&same));
    c.wait_connected("a final connection").await;
    c.client
        .subscribe("lk/v1/CAB-SAME/down/#", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    eventually("subscribed", || !c.seen().suback_codes.is_empty()).await;
    obs.publish("lk/v1/CAB-SAME/down/cmd", "open").await;
    eventually("delivered", || c.received("lk/v1/CAB-SAME/down/cmd") == 1).await;
}
