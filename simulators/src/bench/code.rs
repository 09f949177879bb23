//! `locker-sim bench code`: code-to-door latency at the cabinet, offline (no gateway).
//!
//! A REAL agent (`locker_agent::Agent`, MQTT off: the cabinet is offline) drives one simulated
//! lock board, either over the in-memory Modbus link the fleet simulator uses
//! ([`crate::modbus::memory`]) or over real Modbus TCP to the same board served as
//! `locker-sim lockboard` serves it. The agent holds a credential set built as the gateway
//! builds it: a PIN and a QR token per compartment (pickup), plus courier badges (deposit),
//! split into parts by `locker_gateway::parcels::codes::split` and delivered as `down/creds`
//! downlinks. Each measured scan types one pickup code at the keypad and waits (on the agent's
//! status watch, no polling) until the agent reports that compartment's door open; then the
//! door is closed again (not measured). Used codes are consumed by the agent, so a fresh set
//! (new codes, next version) is delivered when a round is used up.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use locker_agent::config::TimingConfig;
use locker_agent::{Access, Agent, AgentConfig, AgentDeps, AgentHandle, ModbusConnector, Storage};
use locker_schemas::{
    secret_hash, CabinetId, CompartmentId, CredKind, Credential, DownlinkBody, ScanSource,
};
use rand::Rng as _;

use super::cpu::{CpuReport, CpuSpan};
use super::{BenchError, Percentiles};
use crate::{LockBoardConfig, LockBoardSim};

/// How the agent reaches its lock board.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BoardLink {
    /// The fleet simulator's in-memory Modbus link (real Modbus TCP framing, no socket).
    Memory,
    /// Real Modbus TCP over loopback to the board served as `locker-sim lockboard` does.
    Tcp,
}

impl std::fmt::Display for BoardLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BoardLink::Memory => "in-memory Modbus link",
            BoardLink::Tcp => "Modbus TCP (loopback)",
        })
    }
}

/// Options of `locker-sim bench code`.
#[derive(Debug, Clone, clap::Args)]
pub struct CodeArgs {
    /// State directory (the agent's sled database is made fresh per run under it).
    #[arg(long, default_value = "state/bench")]
    pub state: PathBuf,
    /// Measured scans per board link.
    #[arg(long, default_value_t = 1_000)]
    pub scans: usize,
    /// Locks on the board (16, 24 or 48); each compartment holds a parcel with a PIN and a QR
    /// token, so the set holds twice as many pickup codes.
    #[arg(long, default_value_t = 48)]
    pub locks: u16,
    /// Courier badges in the credential set.
    #[arg(long, default_value_t = 200)]
    pub badges: usize,
    /// Board links to measure (default both).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "memory,tcp")]
    pub link: Vec<BoardLink>,
    /// Solenoid pulse of the simulated board, ms (the door springs open after it).
    #[arg(long, default_value_t = 1)]
    pub pulse_ms: u64,
    /// Delay between the end of the pulse and the door springing open, ms.
    #[arg(long, default_value_t = 1)]
    pub spring_ms: u64,
    /// Override the agent's `timing.fast_poll_ms` (default: agent.toml's).
    #[arg(long)]
    pub fast_poll_ms: Option<u64>,
    /// Override the agent's `timing.debounce_reads` (default: agent.toml's).
    #[arg(long)]
    pub debounce_reads: Option<u8>,
}

/// The figures of one board link.
#[derive(Debug, Clone)]
pub struct CodeReport {
    pub link: BoardLink,
    /// Scan to door reported open, microseconds.
    pub latency: Percentiles,
    /// Scan call alone (credential match, lock command queued), microseconds.
    pub scan_call: Percentiles,
    pub opened: usize,
    pub refused: usize,
    pub credentials: usize,
    pub parts: usize,
    pub timing: TimingConfig,
    pub pulse: Duration,
    pub spring: Duration,
    pub cpu: CpuReport,
}

impl std::fmt::Display for CodeReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let t = &self.timing;
        writeln!(
            f,
            "code to door ({}), {} scans ({} opened, {} refused), set of {} credentials in {} part(s): scan to door open {}",
            self.link,
            self.opened + self.refused,
            self.opened,
            self.refused,
            self.credentials,
            self.parts,
            self.latency
        )?;
        writeln!(
            f,
            "  scan call alone (match + lock fired): {}",
            self.scan_call
        )?;
        writeln!(
            f,
            "  included: lock pulse {} ms + spring {} ms (simulated board); door seen after timing.fast_poll_ms = {} x timing.debounce_reads = {} (one read may land right after the open: {}..{} ms of poll and debounce)",
            self.pulse.as_millis(),
            self.spring.as_millis(),
            t.fast_poll_ms,
            t.debounce_reads,
            t.fast_poll_ms * u64::from(t.debounce_reads.saturating_sub(1)),
            t.fast_poll_ms * u64::from(t.debounce_reads),
        )?;
        write!(f, "  scan phase {}", self.cpu)
    }
}

fn histogram() -> Result<hdrhistogram::Histogram<u64>, BenchError> {
    hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 3)
        .map_err(|e| BenchError::Setup(e.to_string()))
}

fn record(h: &mut hdrhistogram::Histogram<u64>, d: Duration) {
    let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1);
    let _ = h.record(us);
}

/// A round of codes: per compartment (0-based lock index) a PIN and a QR token.
struct Round {
    codes: Vec<(usize, String)>,
}

fn new_round(locks: u16) -> Round {
    let mut rng = rand::thread_rng();
    let shuffled = |rng: &mut rand::rngs::ThreadRng| {
        let mut v: Vec<usize> = (0..usize::from(locks)).collect();
        for k in (1..v.len()).rev() {
            v.swap(k, rng.gen_range(0..=k));
        }
        v
    };
    // Scanned from the end: every PIN (compartments in random order), then every QR token (in
    // another order), so a compartment comes round again only after all the others and its
    // door, closed right after it opened, has been seen closed by then.
    let mut codes = Vec::new();
    for i in shuffled(&mut rng) {
        let qr: [u8; 16] = rng.gen();
        let hex: String = qr.iter().map(|b| format!("{b:02x}")).collect();
        codes.push((i, format!("QR-{hex}")));
    }
    // PINs unique within the cabinet's live codes, as the gateway issues them
    let mut pins = std::collections::HashSet::new();
    for i in shuffled(&mut rng) {
        let pin = loop {
            let p = format!("{:06}", rng.gen_range(0..1_000_000u32));
            if pins.insert(p.clone()) {
                break p;
            }
        };
        codes.push((i, pin));
    }
    Round { codes }
}

/// The credential set of a round, as the gateway builds it (pickup codes with their
/// compartment, courier badges), in parts.
fn credential_parts(
    cab: &CabinetId,
    round: &Round,
    badges: usize,
    version: u64,
) -> Vec<locker_schemas::Credentials> {
    let far = locker_schemas::now_millis() + 7 * 24 * 3_600_000;
    let mut entries: Vec<Credential> = round
        .codes
        .iter()
        .map(|(i, code)| Credential {
            kind: CredKind::Pickup,
            secret_hash: secret_hash(code, cab).to_vec(),
            compartment: Some(CompartmentId(u16::try_from(i + 1).unwrap_or(1))),
            reference: format!("ord-bench-{version}-{i}"),
            expires_at: far,
            carrier: String::new(),
        })
        .collect();
    for b in 0..badges {
        entries.push(Credential {
            kind: CredKind::Deposit,
            secret_hash: secret_hash(&format!("BADGE-{b:06}"), cab).to_vec(),
            compartment: None,
            reference: format!("courier-{b}"),
            expires_at: far,
            carrier: if b % 2 == 0 { "dhl" } else { "ups" }.into(),
        });
    }
    locker_gateway::parcels::codes::split(
        version,
        entries,
        locker_gateway::parcels::codes::MAX_PART_BYTES,
    )
}

async fn deliver(
    h: &AgentHandle,
    parts: Vec<locker_schemas::Credentials>,
    version: u64,
) -> Result<(), BenchError> {
    for p in parts {
        h.downlink(DownlinkBody::Credentials(p))
            .await
            .map_err(|e| BenchError::Agent(e.to_string()))?;
    }
    let mut w = h.watch_status();
    let limit = tokio::time::Instant::now() + Duration::from_secs(30);
    while w.borrow_and_update().creds_version != version {
        if tokio::time::timeout_at(limit, w.changed()).await.is_err() {
            return Err(BenchError::Agent(format!(
                "the agent did not take credential set {version}"
            )));
        }
    }
    Ok(())
}

/// Waits until the agent's status says compartment `c`'s door is open (`open`) or closed.
async fn door(h: &AgentHandle, c: CompartmentId, open: bool) -> Result<(), BenchError> {
    let mut w = h.watch_status();
    let limit = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (is_open, known) = {
            let s = w.borrow_and_update();
            (s.open_doors.contains(&c), s.known_doors > 0)
        };
        if known && is_open == open {
            return Ok(());
        }
        if tokio::time::timeout_at(limit, w.changed()).await.is_err() {
            return Err(BenchError::Agent(format!(
                "door {} not reported {} within 10 s",
                c.0,
                if open { "open" } else { "closed" }
            )));
        }
    }
}

/// Measures one board link.
pub async fn run_link(a: &CodeArgs, link: BoardLink) -> Result<CodeReport, BenchError> {
    let cab = CabinetId::new("CAB-CODE-1").map_err(|e| BenchError::Setup(e.to_string()))?;
    let (pulse, spring) = (
        Duration::from_millis(a.pulse_ms),
        Duration::from_millis(a.spring_ms),
    );
    let board = LockBoardSim::new(LockBoardConfig {
        unit_id: 1,
        locks: a.locks,
        pulse,
        spring,
        auto_close: None,
        ..LockBoardConfig::default()
    })
    .map_err(|e| BenchError::Setup(e.to_string()))?;
    let mut config = AgentConfig {
        cabinet_id: cab.to_string(),
        ..AgentConfig::default()
    };
    // offline: no gateway at all
    config.mqtt.enabled = false;
    if let Some(v) = a.fast_poll_ms {
        config.timing.fast_poll_ms = v;
    }
    if let Some(v) = a.debounce_reads {
        config.timing.debounce_reads = v;
    }
    let dir = a.state.join(format!("code-{link:?}").to_lowercase());
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    config.storage.path = dir.join("db");
    let (modbus, address, _server) = match link {
        BoardLink::Memory => {
            let server = board.modbus_server();
            let c = ModbusConnector::custom(move |_addr: String| {
                std::future::ready(Ok(server.connect_memory()))
            });
            (c, "board".to_owned(), None)
        }
        BoardLink::Tcp => {
            let bind = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
            let (addr, task) = board
                .serve_tcp(bind)
                .await
                .map_err(|e| BenchError::Setup(e.to_string()))?;
            (
                ModbusConnector::Tcp,
                addr.to_string(),
                Some(AbortOnDrop(task)),
            )
        }
    };
    config.lock_boards = vec![locker_agent::config::LockBoardConfig {
        address,
        unit: 1,
        locks: a.locks,
        first_compartment: 1,
        ..locker_agent::config::LockBoardConfig::default()
    }];
    let timing = config.timing.clone();
    let path = config.storage.path.clone();
    let group = Duration::from_millis(config.storage.group_flush_ms);
    let storage = tokio::task::spawn_blocking(move || Storage::open(&path, group))
        .await
        .map_err(|e| BenchError::Setup(e.to_string()))?
        .map_err(|e| BenchError::Agent(e.to_string()))?;
    let deps = AgentDeps {
        modbus,
        clock: Arc::new(locker_agent::SystemClock),
        ..AgentDeps::new(storage)
    };
    let h = Agent::start(config, deps)
        .await
        .map_err(|e| BenchError::Agent(e.to_string()))?;
    let result = measure(a, &cab, &board, &h, link, timing, pulse, spring).await;
    h.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

#[allow(clippy::too_many_arguments)]
async fn measure(
    a: &CodeArgs,
    cab: &CabinetId,
    board: &LockBoardSim,
    h: &AgentHandle,
    link: BoardLink,
    timing: TimingConfig,
    pulse: Duration,
    spring: Duration,
) -> Result<CodeReport, BenchError> {
    let mut lat = histogram()?;
    let mut call = histogram()?;
    let (mut opened, mut refused) = (0, 0);
    let (mut credentials, mut parts) = (0, 0);
    let mut version = 0u64;
    let mut round = Round { codes: Vec::new() };
    // the whole phase: scans, doors closing, and the few set deliveries between rounds
    let cpu = CpuSpan::start(None);
    for _ in 0..a.scans {
        if round.codes.is_empty() {
            // a fresh set of codes (not measured)
            version += 1;
            round = new_round(a.locks);
            let p = credential_parts(cab, &round, a.badges, version);
            parts = p.len();
            credentials = p.iter().map(|x| x.entries.len()).sum();
            deliver(h, p, version).await?;
        }
        let Some((i, code)) = round.codes.pop() else {
            continue;
        };
        let c = CompartmentId(u16::try_from(i + 1).unwrap_or(1));
        door(h, c, false).await?;
        let source = if code.starts_with("QR-") {
            ScanSource::Barcode
        } else {
            ScanSource::Keypad
        };
        let t = Instant::now();
        let reply = h
            .scan(source, code)
            .await
            .map_err(|e| BenchError::Agent(e.to_string()))?;
        record(&mut call, t.elapsed());
        if reply.access != Access::Pickup(c) {
            refused += 1;
            continue;
        }
        door(h, c, true).await?;
        record(&mut lat, t.elapsed());
        opened += 1;
        // the recipient takes the parcel and closes the door (not measured)
        board
            .close_door(i)
            .map_err(|e| BenchError::Setup(e.to_string()))?;
    }
    let cpu = cpu.stop(None);
    Ok(CodeReport {
        link,
        latency: Percentiles::of(&lat),
        scan_call: Percentiles::of(&call),
        opened,
        refused,
        credentials,
        parts,
        timing,
        pulse,
        spring,
        cpu,
    })
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs every asked board link and prints the figures.
pub async fn run(a: &CodeArgs) -> Result<Vec<CodeReport>, BenchError> {
    let mut out = Vec::new();
    for link in &a.link {
        let r = run_link(a, *link).await?;
        println!("{r}");
        out.push(r);
    }
    Ok(out)
}
