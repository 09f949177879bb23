//! `locker-sim lockboard`: one simulated lock board on Modbus TCP, or several (and optionally a
//! charge controller) as Modbus RTU units on one serial line (`--serial`).

use std::{io::Write as _, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use locker_sim::{control, modbus::rtu::RtuOptions, ModbusDevice, ModbusServer};
use locker_sim::{ChargerConfig, ChargerSim, LockBoardConfig, LockBoardSim};

/// Options of `locker-sim lockboard`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Modbus TCP address to listen on (port 0 picks a free port; the bound address is printed).
    #[arg(long, default_value = "127.0.0.1:5020")]
    listen: SocketAddr,
    /// Modbus unit id the board answers to; other unit ids get exception 0x0B (over TCP) or
    /// no answer (on a serial line). Repeat it (or use --units) for several boards on a line.
    #[arg(long, default_value = "1", value_delimiter = ',', alias = "units")]
    unit: Vec<u8>,
    /// Serve Modbus RTU on this serial device (e.g. one end of a socat pty pair, or
    /// /dev/ttyUSB0) instead of Modbus TCP; reopened whenever it disappears.
    #[arg(long)]
    serial: Option<PathBuf>,
    /// Baud rate of the serial line.
    #[arg(long, default_value_t = 9_600)]
    baud: u32,
    /// Hold every RTU answer back by the wire time of request and answer at --baud (11 bits a
    /// character): a pty has no baud rate of its own.
    #[arg(long)]
    emulate_wire: bool,
    /// Also serve a charge controller with this unit id on the serial line.
    #[arg(long)]
    charger_unit: Option<u8>,
    /// Number of locks on the board: 16, 24 or 48.
    #[arg(long, default_value_t = 16, value_parser = parse_locks)]
    locks: u16,
    /// Initial solenoid pulse length in ms (holding register 0; 1..=10000).
    #[arg(long, default_value_t = 300)]
    pulse_ms: u64,
    /// Close an open door automatically this many ms after it opened (default: never; a
    /// person closes it through the control API).
    #[arg(long)]
    auto_close_ms: Option<u64>,
    /// Optional HTTP control API address (e.g. 127.0.0.1:0) of the first board; see GET /state.
    #[arg(long)]
    control: Option<SocketAddr>,
}

fn parse_locks(s: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(n @ (16 | 24 | 48)) => Ok(n),
        _ => Err(format!("{s:?} is not one of 16, 24, 48")),
    }
}

/// Run the board(s) until Ctrl-C.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let boards = args
        .unit
        .iter()
        .map(|&unit| {
            LockBoardSim::new(LockBoardConfig {
                unit_id: unit,
                locks: args.locks,
                pulse: Duration::from_millis(args.pulse_ms),
                auto_close: args.auto_close_ms.map(Duration::from_millis),
                ..LockBoardConfig::default()
            })
            .context("lock board configuration")
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let first = boards.first().context("no --unit given")?.clone();
    let units = format!("{:?}", args.unit);
    if let Some(path) = &args.serial {
        let mut devices: Vec<Arc<dyn ModbusDevice>> = boards
            .iter()
            .map(|b| Arc::new(b.clone()) as Arc<dyn ModbusDevice>)
            .collect();
        if let Some(unit) = args.charger_unit {
            let charger = ChargerSim::new(ChargerConfig {
                unit_id: unit,
                ..ChargerConfig::default()
            })
            .context("charger configuration")?;
            devices.push(Arc::new(charger));
        }
        let server = ModbusServer::new(devices).context("units on the line")?;
        let _task = server.serve_rtu(
            path.clone(),
            RtuOptions {
                baud: args.baud,
                emulate_wire: args.emulate_wire,
            },
        );
        println!(
            "rtu={} baud={} units={units} charger={:?} locks={}",
            path.display(),
            args.baud,
            args.charger_unit,
            args.locks
        );
    } else {
        anyhow::ensure!(
            args.unit.len() == 1 && args.charger_unit.is_none(),
            "several units (or --charger-unit) need --serial: over TCP run one board per port"
        );
        let (addr, _server) = first
            .serve_tcp(args.listen)
            .await
            .context("starting the Modbus TCP server")?;
        println!("modbus={addr} unit={units} locks={}", args.locks);
    }
    // The control API drives the first board.
    super::start_control(args.control, control::lockboard_router(first)).await?;
    std::io::stdout().flush().context("flushing stdout")?;
    tracing::info!(units, locks = args.locks, "lock board running");
    super::wait_for_shutdown().await
}
