//! Test support: simulated lock boards and a charger on real Modbus TCP (127.0.0.1:0), a sled
//! database in a temp dir, an agent configuration pointing at them, and `eventually`.
#![allow(dead_code, clippy::unwrap_used)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use locker_agent::config::{ChargerConfig, LockBoardConfig};
use locker_agent::{Agent, AgentConfig, AgentDeps, AgentHandle, Clock, Storage};
use locker_schemas::{
    Action, Command, CommandId, CompartmentId, Door, DoorCause, Uplink, UplinkBody,
};
use locker_sim::{ChargerSim, LockBoardSim};

/// Polls `cond` until it holds or `secs` pass (then panics with `what`).
pub async fn eventually<F, Fut>(secs: u64, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if cond().await {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One simulated board served over real Modbus TCP.
pub struct SimBoard {
    pub sim: LockBoardSim,
    pub addr: SocketAddr,
}

pub async fn board(unit: u8) -> SimBoard {
    let sim = LockBoardSim::new(locker_sim::LockBoardConfig {
        unit_id: unit,
        locks: 16,
        pulse: Duration::from_millis(50),
        spring: Duration::from_millis(20),
        ..Default::default()
    })
    .expect("board");
    let (addr, _task) = sim
        .serve_tcp("127.0.0.1:0".parse::<SocketAddr>().unwrap())
        .await
        .expect("serve board");
    SimBoard { sim, addr }
}

pub async fn charger() -> (ChargerSim, SocketAddr) {
    let sim = ChargerSim::new(locker_sim::ChargerConfig::default()).expect("charger");
    let (addr, _task) = sim
        .serve_tcp("127.0.0.1:0".parse::<SocketAddr>().unwrap())
        .await
        .expect("serve charger");
    (sim, addr)
}

/// A fast configuration for tests: MQTT off, boards as given (16 locks each).
pub fn config(cabinet: &str, dir: &Path, boards: &[&SimBoard]) -> AgentConfig {
    let mut c = AgentConfig {
        cabinet_id: cabinet.into(),
        ..Default::default()
    };
    c.mqtt.enabled = false;
    c.storage.path = dir.join("db");
    c.timing.sensor_poll_ms = 20;
    c.timing.fast_poll_ms = 5;
    c.timing.debounce_reads = 2;
    c.timing.unlock_confirm_ms = 1_500;
    c.timing.modbus_timeout_ms = 200;
    c.timing.modbus_reconnect_ms = 100;
    c.timing.offline_after_failures = 3;
    c.lock_boards = boards
        .iter()
        .enumerate()
        .map(|(i, b)| LockBoardConfig {
            address: b.addr.to_string(),
            unit: b.sim.unit_id(),
            locks: 16,
            first_compartment: 1 + 16 * i as u16,
            ..Default::default()
        })
        .collect();
    c
}

pub fn with_charger(mut c: AgentConfig, addr: SocketAddr) -> AgentConfig {
    c.charger = Some(ChargerConfig {
        address: addr.to_string(),
        serial: None,
        unit: 1,
        poll_s: 1,
        interval_s: 3_600,
        soc_thresholds: vec![50, 20, 10],
        battery_min_mv: 11_500,
    });
    c
}

/// Opens a storage worker on `dir/db`.
pub fn storage(dir: &Path) -> Storage {
    Storage::open(&dir.join("db"), Duration::from_millis(10)).expect("storage")
}

pub async fn start(cfg: AgentConfig, storage: &Storage) -> AgentHandle {
    Agent::start(cfg, AgentDeps::new(storage.clone()))
        .await
        .expect("agent starts")
}

pub async fn start_with_clock(
    cfg: AgentConfig,
    storage: &Storage,
    clock: Arc<dyn Clock>,
) -> AgentHandle {
    let mut deps = AgentDeps::new(storage.clone());
    deps.clock = clock;
    Agent::start(cfg, deps).await.expect("agent starts")
}

/// Waits until the agent has read every board once (doors known).
pub async fn ready(h: &AgentHandle, boards: usize) {
    eventually(5, "every door read once", || {
        let ok = h.status().known_doors == 16 * boards;
        async move { ok }
    })
    .await;
}

pub fn unlock(c: u16) -> Command {
    command(Action::UnlockCompartment(CompartmentId(c)))
}

pub fn command(action: Action) -> Command {
    let now = locker_schemas::now_millis();
    Command {
        id: CommandId::generate(),
        issued_at: now,
        expires_at: now + 60_000,
        ttl_ms: 60_000,
        action,
    }
}

pub fn doors(outbox: &[Uplink]) -> Vec<Door> {
    outbox
        .iter()
        .filter_map(|u| match &u.body {
            UplinkBody::Door(d) => Some(d.clone()),
            _ => None,
        })
        .collect()
}

/// A door event without a parcel reading (every opening, and a close on a board without
/// parcel sensors or whose read failed).
pub fn door(c: u16, open: bool, cause: DoorCause) -> Door {
    Door {
        compartment: CompartmentId(c),
        open,
        cause,
        parcel: None,
    }
}

/// A close with the parcel sensor reading `parcel`.
pub fn closed(c: u16, cause: DoorCause, parcel: Option<bool>) -> Door {
    Door {
        parcel,
        ..door(c, false, cause)
    }
}

/// Checks that the outbox seqs are contiguous and increasing.
pub fn assert_contiguous(outbox: &[Uplink]) {
    for w in outbox.windows(2) {
        assert_eq!(
            w[1].seq,
            w[0].seq + 1,
            "outbox seqs contiguous: {outbox:#?}"
        );
    }
}

pub fn tempdir() -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().expect("tempdir");
    let p = d.path().to_path_buf();
    (d, p)
}
