//! `locker-sim`: run simulated Locker Hub hardware from the command line.
//!
//! Each subcommand lives in its own module under `cmd/`; add new ones (fleet, demo, bench) by
//! adding a module and a [`Command`] variant.

mod cmd;

use clap::{Parser, Subcommand};

/// Simulated Locker Hub hardware: Modbus TCP lock boards and solar charge controllers.
#[derive(Debug, Parser)]
#[command(name = "locker-sim", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one lock board (coils fire solenoids, discrete inputs report doors and parcels).
    Lockboard(cmd::lockboard::Args),
    /// Run one solar charge controller (EPEver Tracer-style input registers).
    Charger(cmd::charger::Args),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    cmd::init_tracing();
    let cli = Cli::parse();
    match cli.command {
        Command::Lockboard(args) => cmd::lockboard::run(args).await,
        Command::Charger(args) => cmd::charger::run(args).await,
    }
}
