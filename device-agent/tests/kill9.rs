//! The outbox survives `kill -9` of the real `locker-agent` process: every event a scanner was
//! told is stored is still there after the kill, and the outbox has no gap and no duplicate.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use locker_schemas::UplinkBody;
use locker_sim::fleet::gateway::PortReservation;
use support::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// A loopback port held for the whole test (the agent's scanner binds it in every round; no
/// MQTT server ever listens on the other one, so connections to it are refused).
fn reserve() -> PortReservation {
    PortReservation::loopback().unwrap()
}

fn write_config(dir: &Path, board: SocketAddr, scanner: u16, mqtt_port: u16) -> std::path::PathBuf {
    let text = format!(
        r#"
cabinet_id = "CAB-K9"
[mqtt]
host = "127.0.0.1"
port = {mqtt_port}
tls = false
backoff_base_ms = 50
backoff_max_ms = 200
[storage]
path = "{db}"
[timing]
sensor_poll_ms = 10
fast_poll_ms = 5
[scanner]
kind = "tcp"
listen = "127.0.0.1:{scanner}"
[[lock_boards]]
address = "{board}"
unit = 1
locks = 16
"#,
        db = dir.join("db").display()
    );
    let p = dir.join("agent.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn spawn_agent(config: &Path) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_locker-agent"))
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn locker-agent")
}

async fn connect(port: u16) -> TcpStream {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(s) = TcpStream::connect(("127.0.0.1", port)).await {
            return s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "scanner port never opened"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends scans until at least `n` were confirmed stored and `busy` passed (so the door task
/// moves doors meanwhile); returns (value, seq) of the confirmed ones.
async fn scan_until(port: u16, prefix: &str, n: usize, busy: Duration) -> Vec<(String, u64)> {
    let s = connect(port).await;
    let started = tokio::time::Instant::now();
    let (r, mut w) = s.into_split();
    let mut lines = BufReader::new(r).lines();
    let mut confirmed = Vec::new();
    for i in 0.. {
        if i >= n && started.elapsed() >= busy {
            break;
        }
        let value = format!("{prefix}-{i}");
        w.write_all(format!("bar:{value}\n").as_bytes())
            .await
            .unwrap();
        let line = lines.next_line().await.unwrap().expect("reply");
        let seq: u64 = line
            .strip_prefix("ok ")
            .and_then(|r| r.split(' ').next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad reply {line:?}"));
        confirmed.push((value, seq));
    }
    confirmed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_survives_kill_9_without_gaps_or_duplicates() {
    let (_d, dir) = tempdir();
    let b = board(1).await;
    let (scanner_port, mqtt_port) = (reserve(), reserve());
    let scanner = scanner_port.addr().port();
    let cfg = write_config(&dir, b.addr, scanner, mqtt_port.addr().port());

    // Doors keep moving the whole time, making door and alarm events concurrently.
    let sim = b.sim.clone();
    let doors = tokio::spawn(async move {
        loop {
            let _ = sim.open_door(0);
            tokio::time::sleep(Duration::from_millis(40)).await;
            let _ = sim.close_door(0);
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
    });

    let mut confirmed = Vec::new();
    for round in 0..3 {
        let mut child = spawn_agent(&cfg);
        confirmed.extend(
            scan_until(
                scanner,
                &format!("r{round}"),
                25,
                Duration::from_millis(300),
            )
            .await,
        );
        // Keep producing while the kill lands.
        let s = connect(scanner).await;
        let (_r, mut w) = s.into_split();
        for i in 0..20 {
            let _ = w
                .write_all(format!("bar:inflight-{round}-{i}\n").as_bytes())
                .await;
        }
        child.start_kill().unwrap(); // SIGKILL
        let status = child.wait().await.unwrap();
        assert!(!status.success(), "killed, not exited: {status:?}");
    }
    doors.abort();

    // The process is dead: the dump subcommand can open the database.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_locker-agent"))
        .args(["outbox", "--config"])
        .arg(&cfg)
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("acked 0"));
    let dumped: Vec<u64> = lines
        .map(|l| l.split(' ').next().unwrap().parse().unwrap())
        .collect();

    let db = sled::open(dir.join("db")).unwrap();
    let tree = db.open_tree("CAB-K9").unwrap();
    let ob = locker_agent::storage::read_all(&tree).unwrap();
    assert_eq!(dumped, ob.iter().map(|u| u.seq).collect::<Vec<_>>());
    assert_eq!(ob.first().map(|u| u.seq), Some(1));
    assert_contiguous(&ob);
    let boots: HashSet<u32> = ob.iter().map(|u| u.boot).collect();
    assert_eq!(boots, HashSet::from([1, 2, 3]));
    let mut values = HashSet::new();
    for u in &ob {
        if let UplinkBody::Scan(s) = &u.body {
            assert!(values.insert(s.value.clone()), "duplicate scan {}", s.value);
        }
    }
    for (value, seq) in &confirmed {
        let u = ob
            .iter()
            .find(|u| u.seq == *seq)
            .unwrap_or_else(|| panic!("confirmed seq {seq} lost"));
        assert!(
            matches!(&u.body, UplinkBody::Scan(s) if &s.value == value),
            "seq {seq} holds {:?}, not scan {value}",
            u.body
        );
    }
    let door_events = ob
        .iter()
        .filter(|u| matches!(u.body, UplinkBody::Door(_)))
        .count();
    assert!(door_events > 0, "door events were stored too");
}
