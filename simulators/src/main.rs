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
    /// Run N real agents with simulated hardware against a gateway, with scripted couriers,
    /// recipients, outages, a gateway restart and nightfall; then check the invariants.
    Fleet(cmd::fleet::Args),
    /// The whole system on this machine: PKI, gateway, a few hundred cabinets, an accelerated day.
    Demo(cmd::demo::Args),
    /// Load benchmarks against the gateway (as a separate process), side by side with Mosquitto.
    #[command(subcommand)]
    Bench(cmd::bench::Bench),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Fleet runs have thousands of agents: only warnings unless RUST_LOG says otherwise.
    let quiet = "warn,rumqttd=off,locker_gateway::edge::registry=error";
    match &cli.command {
        Command::Lockboard(_) | Command::Charger(_) => cmd::init_tracing("info"),
        // The demo's standard output is its summary: the logs go to a file it names.
        Command::Demo(args) => cmd::init_tracing_file(
            "warn,locker_gateway=info,rumqttd=off,locker_gateway::edge::registry=warn",
            &args.log_path(),
        )?,
        _ => cmd::init_tracing(quiet),
    }
    match cli.command {
        Command::Lockboard(args) => cmd::lockboard::run(args).await,
        Command::Charger(args) => cmd::charger::run(args).await,
        Command::Fleet(args) => cmd::fleet::run(args).await,
        Command::Demo(args) => cmd::demo::run(args).await,
        Command::Bench(b) => cmd::bench::run(b).await,
    }
}
