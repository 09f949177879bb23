//! `locker-sim charger`: one simulated solar charge controller on Modbus TCP, or as a Modbus
//! RTU unit on a serial line (`--serial`).

use std::{io::Write as _, net::SocketAddr, path::PathBuf};

use anyhow::Context as _;
use locker_sim::{charger::Chemistry, control, ChargerConfig, ChargerSim};

/// Options of `locker-sim charger`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Modbus TCP address to listen on (port 0 picks a free port; the bound address is printed).
    #[arg(long, default_value = "127.0.0.1:5021")]
    listen: SocketAddr,
    /// Modbus unit id the charger answers to; other unit ids get exception 0x0B.
    #[arg(long, default_value_t = 1)]
    unit: u8,
    /// Serve Modbus RTU on this serial device instead of Modbus TCP (reopened whenever it
    /// disappears).
    #[arg(long)]
    serial: Option<PathBuf>,
    /// Baud rate of the serial line.
    #[arg(long, default_value_t = 9_600)]
    baud: u32,
    /// Hold every RTU answer back by its wire time at --baud (a pty has no baud rate).
    #[arg(long)]
    emulate_wire: bool,
    /// Clock speed: simulated seconds per real second (e.g. 3600: an hour per second).
    #[arg(long, default_value_t = 1.0)]
    speed: f64,
    /// Simulated time of day at start, in hours (0..24; sunrise 06:00, sunset 18:00).
    #[arg(long, default_value_t = 12.0)]
    start_hour: f64,
    /// Usable battery capacity in Wh (100 Ah x 12 V = 1200).
    #[arg(long, default_value_t = 1200.0)]
    capacity_wh: f64,
    /// Battery chemistry.
    #[arg(long, value_enum, default_value_t = Chemistry::Lifepo4)]
    chemistry: Chemistry,
    /// State of charge at start, percent.
    #[arg(long, default_value_t = 80.0)]
    initial_soc: f64,
    /// PV power at noon under a clear sky, in W.
    #[arg(long, default_value_t = 100.0)]
    peak_pv_w: f64,
    /// Constant load in W (lock pulses add to it when boards are attached).
    #[arg(long, default_value_t = 5.0)]
    load_w: f64,
    /// Cloudiness in percent (0 clear .. 100 overcast).
    #[arg(long, default_value_t = 0.0)]
    cloud: f64,
    /// Optional HTTP control API address (e.g. 127.0.0.1:0); see GET /state.
    #[arg(long)]
    control: Option<SocketAddr>,
}

/// Run the charger until Ctrl-C.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let charger = ChargerSim::new(ChargerConfig {
        unit_id: args.unit,
        capacity_wh: args.capacity_wh,
        chemistry: args.chemistry,
        initial_soc_pct: args.initial_soc,
        peak_pv_w: args.peak_pv_w,
        load_w: args.load_w,
        speed: args.speed,
        start_hour: args.start_hour,
        cloudiness_pct: args.cloud,
        ..ChargerConfig::default()
    })
    .context("charger configuration")?;
    let _server = if let Some(path) = &args.serial {
        let opts = locker_sim::modbus::rtu::RtuOptions {
            baud: args.baud,
            emulate_wire: args.emulate_wire,
        };
        let task = charger.modbus_server().serve_rtu(path.clone(), opts);
        println!(
            "rtu={} baud={} unit={}",
            path.display(),
            args.baud,
            args.unit
        );
        task
    } else {
        let (addr, task) = charger
            .serve_tcp(args.listen)
            .await
            .context("starting the Modbus TCP server")?;
        println!("modbus={addr} unit={}", args.unit);
        task
    };
    super::start_control(args.control, control::charger_router(charger.clone())).await?;
    std::io::stdout().flush().context("flushing stdout")?;
    tracing::info!(unit = args.unit, speed = args.speed, "charger running");
    super::wait_for_shutdown().await
}
