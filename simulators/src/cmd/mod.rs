//! Subcommands of the `locker-sim` binary, one module each, plus shared start-up helpers.

pub mod bench;
pub mod charger;
pub mod demo;
pub mod fleet;
pub mod live;
pub mod lockboard;

use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::path::Path;

use anyhow::Context as _;
use axum::Router;

fn env_filter(default: &str) -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default))
}

/// Logs to stderr, filtered by `RUST_LOG` (default `default`); colours only on a terminal.
pub fn init_tracing(default: &str) {
    // Fails only if a subscriber is already set, which then keeps logging.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(env_filter(default))
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

/// Logs to the file `path` (created with its directory, truncated), plain text, filtered by
/// `RUST_LOG` (default `default`); standard output and error stay free for the summary.
pub fn init_tracing_file(default: &str, path: &Path) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the log directory {}", dir.display()))?;
    }
    let file = std::fs::File::create(path)
        .with_context(|| format!("creating the log file {}", path.display()))?;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(env_filter(default))
        .with_ansi(false)
        .with_writer(std::sync::Mutex::new(file))
        .try_init();
    Ok(())
}

/// Start the optional HTTP control surface and print its address.
pub async fn start_control(addr: Option<SocketAddr>, router: Router) -> anyhow::Result<()> {
    if let Some(addr) = addr {
        let (bound, _task) = locker_sim::control::serve_http(addr, router)
            .await
            .with_context(|| format!("starting the control API on {addr}"))?;
        println!("control=http://{bound}");
    }
    Ok(())
}

/// Wait for Ctrl-C (or SIGTERM on Unix).
pub async fn wait_for_shutdown() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        tokio::select! {
            res = tokio::signal::ctrl_c() => res.context("waiting for Ctrl-C")?,
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    tracing::info!("shutting down");
    Ok(())
}
