//! The agent against the REAL gateway (in-process: mTLS edge, embedded broker, ingest, API) with
//! a PKI made per test: events made while the gateway is unreachable are all delivered in order
//! once it comes up (hello first on connect), acknowledged and deleted; a command from the API
//! fires the lock once and its outcome reaches the API.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;

use locker_broker_config::pki::Pki;
use locker_gateway::app::Gateway;
use locker_gateway::config::GatewayConfig;
use locker_schemas::{CabinetId, ScanSource};
use serde_json::{json, Value};
use support::*;

const TOKEN: &str = "test-token-0123456789abcdef";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn api_get(addr: SocketAddr, path: &str) -> Value {
    reqwest::Client::new()
        .get(format!("http://{addr}{path}"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap_or(Value::Null)
}

async fn api_post(addr: SocketAddr, path: &str, body: Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("http://{addr}{path}"))
        .bearer_auth(TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_delivers_offline_events_in_order_and_executes_api_commands() {
    let (_d, dir) = tempdir();
    let pki_dir = dir.join("pki");
    let mut pki = Pki::init(&pki_dir, &["localhost".into(), "127.0.0.1".into()]).unwrap();
    let cab = CabinetId::new("CAB-E2E").unwrap();
    let cert = pki.issue_cabinet(&cab).unwrap();
    let edge_port = free_port();

    // The agent starts first: the gateway is not there yet.
    let b = board(1).await;
    let st = storage(&dir);
    let mut cfg = config(cab.as_str(), &dir, &[&b]);
    cfg.mqtt.enabled = true;
    cfg.mqtt.host = "127.0.0.1".into();
    cfg.mqtt.port = edge_port;
    cfg.mqtt.ca_cert = pki.paths().ca_cert();
    cfg.mqtt.client_cert = cert.cert_path.clone();
    cfg.mqtt.client_key = cert.key_path.clone();
    cfg.mqtt.backoff_base_ms = 50;
    cfg.mqtt.backoff_max_ms = 300;
    cfg.mqtt.connect_timeout_s = 5;
    cfg.network.signal_dbm = Some(-71);
    let h = start(cfg, &st).await;
    ready(&h, 1).await;
    for i in 0..10 {
        h.scan(ScanSource::Qr, format!("offline-{i}"))
            .await
            .unwrap();
    }
    b.sim.open_door(3).unwrap();
    eventually(5, "door 4 open", || async {
        h.status().open_doors.len() == 1
    })
    .await;
    b.sim.close_door(3).unwrap();
    eventually(5, "door 4 closed", || async {
        h.status().open_doors.is_empty()
    })
    .await;
    let offline = h.status().next_seq - 1;
    assert!(offline >= 14, "scans, doors and alarms stored: {offline}");
    assert!(!h.status().mqtt_connected);

    // The gateway comes up on the port the agent keeps trying.
    let mut gcfg = GatewayConfig {
        data_dir: dir.join("gw"),
        ..GatewayConfig::default()
    };
    gcfg.edge.listen = SocketAddr::from(([127, 0, 0, 1], edge_port));
    gcfg.edge.ca_cert = pki.paths().ca_cert();
    gcfg.edge.server_cert = pki.paths().server_cert();
    gcfg.edge.server_key = pki.paths().server_key();
    gcfg.edge.crl = Some(pki.paths().crl());
    gcfg.api.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    gcfg.api.tokens = HashMap::from([(TOKEN.to_owned(), "agent-tests".to_owned())]);
    gcfg.commands.resend_after_ms = 1_000;
    gcfg.commands.tick_ms = 100;
    let gw = Gateway::start(gcfg).await.unwrap();
    let api = gw.api_addr;

    eventually(20, "connected and everything acknowledged", || async {
        let s = h.status();
        s.mqtt_connected && s.outbox_depth == 0 && s.last_acked_seq > offline
    })
    .await;
    assert!(h.outbox().await.unwrap().is_empty(), "acked events deleted");

    let page = api_get(api, "/v1/cabinets/CAB-E2E/events?limit=1000").await;
    let events = page["events"].as_array().unwrap().clone();
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "in order, no gap"
    );
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert!(kinds[..10].iter().all(|k| *k == "scan"), "{kinds:?}");
    assert_eq!(events[0]["data"]["value"], json!("offline-0"));
    let hello = kinds
        .iter()
        .position(|k| *k == "hello")
        .expect("hello stored");
    assert!(
        hello as u64 >= offline,
        "hello after the offline events: {kinds:?}"
    );
    assert_eq!(kinds[hello + 1], "network");

    // A command from the API: one pulse, outcome opened.
    let (s, r) = api_post(
        api,
        "/v1/cabinets/CAB-E2E/commands",
        json!({"action": {"type": "unlock", "compartment": 9}, "ttl_ms": 30000, "wait_ms": 20000}),
    )
    .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["outcome"], json!("opened"), "{r}");
    assert_eq!(b.sim.pulse_count(8).unwrap(), 1);
    eventually(10, "result acknowledged", || async {
        h.status().outbox_depth == 0
    })
    .await;

    h.shutdown().await;
    gw.shutdown().await;
}
