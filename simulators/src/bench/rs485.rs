//! `locker-sim bench rs485`: how many door-sensor polls one RS-485 line sustains, at each baud
//! rate and number of lock boards on the line, next to what the agent's door debounce needs.
//!
//! The line is a pseudo-terminal pair (no socat needed); the simulated boards serve Modbus RTU
//! on one end with the wire time emulated at the baud rate (each answer is held back by the
//! time the request and the answer take on a real line, 11 bits per character), and the agent's
//! own serial-line task ([`locker_agent::hw::SerialLine`], the production code path with its
//! inter-frame silence) polls every board as fast as the line allows: one FC02 read of 16 door
//! sensors per poll, one poll in flight per board, as the agent's hardware task does when every
//! board is due. A pty has no baud rate of its own, so without the emulation the figures would
//! be memory speed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use locker_agent::config::{AgentConfig, SerialPortConfig};
use locker_agent::hw::rtu::{self, Op};
use locker_agent::hw::{LineStats, SerialLine};
use tokio_serial::SerialPort as _;

use super::BenchError;
use crate::modbus::rtu::RtuOptions;
use crate::{LockBoardConfig, LockBoardSim, ModbusDevice, ModbusServer};

/// Options of `locker-sim bench rs485`.
#[derive(Debug, Clone, clap::Args)]
pub struct Rs485Args {
    /// Baud rates to measure.
    #[arg(long, value_delimiter = ',', default_value = "9600,115200")]
    pub baud: Vec<u32>,
    /// Numbers of lock boards on the line.
    #[arg(long, value_delimiter = ',', default_value = "1,4,8")]
    pub boards: Vec<u8>,
    /// Measured seconds per combination.
    #[arg(long, default_value_t = 3.0)]
    pub seconds: f64,
}

/// One measured combination.
#[derive(Debug, Clone, PartialEq)]
pub struct Rs485Figure {
    pub baud: u32,
    pub boards: u8,
    /// Polls answered per second on the line (all boards).
    pub line_polls_s: f64,
    /// The same per board.
    pub board_polls_s: f64,
    /// The wire-time bound: 1 / (request + answer wire time + inter-frame silence).
    pub bound_polls_s: f64,
    /// Requests that failed (timeouts, CRC): 0 expected.
    pub failed: u64,
}

/// Runs every combination and prints a table.
pub async fn run(a: &Rs485Args) -> Result<Vec<Rs485Figure>, BenchError> {
    let defaults = AgentConfig::default().timing;
    let need = 1_000.0 / defaults.sensor_poll_ms as f64;
    let fast = 1_000.0 / defaults.fast_poll_ms as f64;
    println!(
        "agent defaults: sensor_poll_ms = {} ({need:.0} polls/s per board), debounce_reads = {} (a door change confirmed after {} ms), fast_poll_ms = {} ({fast:.0} polls/s for a board whose lock just fired)",
        defaults.sensor_poll_ms,
        defaults.debounce_reads,
        u64::from(defaults.debounce_reads) * defaults.sensor_poll_ms,
        defaults.fast_poll_ms
    );
    println!(
        "baud     boards  line polls/s  per board/s  wire bound/s  failed  meets 5/s per board"
    );
    let mut out = Vec::new();
    for &baud in &a.baud {
        for &boards in &a.boards {
            let f = measure(baud, boards, Duration::from_secs_f64(a.seconds)).await?;
            println!(
                "{:<8} {:>6}  {:>12.1}  {:>11.1}  {:>12.1}  {:>6}  {}",
                f.baud,
                f.boards,
                f.line_polls_s,
                f.board_polls_s,
                f.bound_polls_s,
                f.failed,
                if f.board_polls_s >= need { "yes" } else { "NO" }
            );
            out.push(f);
        }
    }
    Ok(out)
}

/// One combination: `boards` units (1..=boards) on a line at `baud`, polled for `time`.
pub async fn measure(baud: u32, boards: u8, time: Duration) -> Result<Rs485Figure, BenchError> {
    let setup = |e: &dyn std::fmt::Display| BenchError::Setup(e.to_string());
    let (master, slave) = tokio_serial::SerialStream::pair().map_err(|e| setup(&e))?;
    let path = slave
        .name()
        .ok_or_else(|| BenchError::Setup("the pty has no name".into()))?;
    // The agent's task opens the slave end itself (exclusively, as on a real adapter).
    drop(slave);
    let devices = (1..=boards)
        .map(|unit| {
            LockBoardSim::new(LockBoardConfig {
                unit_id: unit,
                ..LockBoardConfig::default()
            })
            .map(|b| Arc::new(b) as Arc<dyn ModbusDevice>)
            .map_err(|e| setup(&e))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let server = ModbusServer::new(devices).map_err(|e| setup(&e))?;
    let opts = RtuOptions {
        baud,
        emulate_wire: true,
    };
    let stats = LineStats::default();
    let line = SerialLine::spawn(
        SerialPortConfig {
            name: "bench".into(),
            path,
            baud,
            request_timeout_ms: 200,
            ..SerialPortConfig::default()
        },
        stats.clone(),
    );
    // The first request opens the slave end (nobody answers yet): only then may the
    // simulators read the master end, which reports an error while no slave is open.
    let _ = line.request(1, Op::ReadDiscrete(0, 16)).await;
    // That request is no one's: start on an empty line.
    master
        .clear(tokio_serial::ClearBuffer::Input)
        .map_err(|e| setup(&e))?;
    let serve = tokio::spawn(async move { server.run_rtu(master, &opts).await });
    // Warm up: every unit answers once.
    for unit in 1..=boards {
        let mut tries = 0;
        while let Err(e) = line.request(unit, Op::ReadDiscrete(0, 16)).await {
            tries += 1;
            if tries == 5 {
                return Err(BenchError::Setup(format!(
                    "unit {unit} does not answer: {e}"
                )));
            }
        }
    }
    let answered = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let until = tokio::time::Instant::now() + time;
    let pollers: Vec<_> = (1..=boards)
        .map(|unit| {
            let (line, answered, failed) = (line.clone(), answered.clone(), failed.clone());
            tokio::spawn(async move {
                while tokio::time::Instant::now() < until {
                    match line.request(unit, Op::ReadDiscrete(0, 16)).await {
                        Ok(_) => answered.fetch_add(1, Ordering::Relaxed),
                        Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    for p in pollers {
        p.await.map_err(|e| setup(&e))?;
    }
    let secs = start.elapsed().as_secs_f64();
    serve.abort();
    let n = answered.load(Ordering::Relaxed) as f64;
    // FC02 of 16 inputs: an 8-byte request, a 7-byte answer.
    let per_poll = rtu::wire_time(8 + 7, baud) + rtu::inter_frame_delay(baud);
    Ok(Rs485Figure {
        baud,
        boards,
        line_polls_s: n / secs,
        board_polls_s: n / secs / f64::from(boards),
        bound_polls_s: 1.0 / per_poll.as_secs_f64(),
        failed: failed.load(Ordering::Relaxed),
    })
}
