//! `locker-sim lockboard`: one simulated lock board on Modbus TCP.

use std::{io::Write as _, net::SocketAddr, time::Duration};

use anyhow::Context as _;
use locker_sim::{control, LockBoardConfig, LockBoardSim};

/// Options of `locker-sim lockboard`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Modbus TCP address to listen on (port 0 picks a free port; the bound address is printed).
    #[arg(long, default_value = "127.0.0.1:5020")]
    listen: SocketAddr,
    /// Modbus unit id the board answers to; other unit ids get exception 0x0B.
    #[arg(long, default_value_t = 1)]
    unit: u8,
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
    /// Optional HTTP control API address (e.g. 127.0.0.1:0); see GET /state.
    #[arg(long)]
    control: Option<SocketAddr>,
}

fn parse_locks(s: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(n @ (16 | 24 | 48)) => Ok(n),
        _ => Err(format!("{s:?} is not one of 16, 24, 48")),
    }
}

/// Run the board until Ctrl-C.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let board = LockBoardSim::new(LockBoardConfig {
        unit_id: args.unit,
        locks: args.locks,
        pulse: Duration::from_millis(args.pulse_ms),
        auto_close: args.auto_close_ms.map(Duration::from_millis),
        ..LockBoardConfig::default()
    })
    .context("lock board configuration")?;
    let (addr, _server) = board
        .serve_tcp(args.listen)
        .await
        .context("starting the Modbus TCP server")?;
    println!("modbus={addr} unit={} locks={}", args.unit, args.locks);
    super::start_control(args.control, control::lockboard_router(board.clone())).await?;
    std::io::stdout().flush().context("flushing stdout")?;
    tracing::info!(%addr, unit = args.unit, locks = args.locks, "lock board running");
    super::wait_for_shutdown().await
}
