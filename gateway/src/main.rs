//! `locker-gateway`: runs the Locker Hub gateway (mTLS edge, embedded broker, ingest, command
//! queue, HTTP API, metrics) until SIGTERM or Ctrl-C, then drains and flushes.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use locker_gateway::app::Gateway;
use locker_gateway::config::GatewayConfig;

/// The Locker Hub gateway.
///
/// Configuration comes from the TOML file given with --config (see broker-config/gateway.toml
/// for every key), overridden by LOCKER_* environment variables (nested keys joined with "__",
/// e.g. LOCKER_API__LISTEN=0.0.0.0:8080). Logs go to stderr; RUST_LOG sets the level.
#[derive(Parser, Debug)]
#[command(name = "locker-gateway", version, about, long_about = None)]
struct Cli {
    /// Path of the gateway configuration file (TOML).
    #[arg(long, short, env = "LOCKER_GATEWAY_CONFIG")]
    config: Option<PathBuf>,
    /// Load and validate the configuration (file plus LOCKER_* overrides): zero-sized batches,
    /// windows and limits, and that the certificate, key and CRL files can be read. Prints the
    /// effective configuration as TOML and exits without starting anything; exits non-zero
    /// naming the key and the file when something would fail at start.
    #[arg(long)]
    check: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,rumqttd=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let cfg = GatewayConfig::load(cli.config.as_deref()).context("loading the configuration")?;
    if cli.check {
        cfg.check_files().context("checking the configuration")?;
        println!(
            "{}",
            toml::to_string_pretty(&cfg).context("printing the configuration")?
        );
        return Ok(());
    }
    // The handler is in place before anyone learns the gateway listens: a SIGTERM right after
    // the LISTENING line drains instead of killing the process.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let mut first = true;
    loop {
        let gw = Gateway::start(cfg.clone())
            .await
            .context("starting the gateway")?;
        tracing::info!(edge = %gw.edge_addr, api = %gw.api_addr, domain = gw.domain_here, "gateway running");
        if first {
            // Machine-readable line for scripts and tests that start the binary.
            println!("LISTENING edge={} api={}", gw.edge_addr, gw.api_addr);
            first = false;
        }
        // Cluster mode: a node that takes the domain over, or loses it, restarts its gateway in
        // the new role (its cabinets reconnect once).
        let again = tokio::select! {
            _ = term.recv() => {
                tracing::info!("SIGTERM: draining");
                false
            }
            _ = tokio::signal::ctrl_c() => {
                tracing::info!("interrupted: draining");
                false
            }
            _ = gw.role_changed() => {
                tracing::info!("the domain role of this node changed: restarting the gateway in its new role");
                true
            }
        };
        gw.shutdown().await;
        if !again {
            break;
        }
    }
    tracing::info!("gateway stopped");
    Ok(())
}
