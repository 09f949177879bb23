//! `locker-agent`: runs one cabinet's device agent (the library does the work), dumps the outbox
//! of a stopped agent, or checks a configuration.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use locker_agent::{Agent, AgentConfig, AgentDeps, ExitReason, Storage};

/// Locker Hub device agent: drives a cabinet's lock boards, charge controller and scanner,
/// keeps every event in a durable outbox and talks to the gateway over MQTT with mutual TLS.
#[derive(Parser, Debug)]
#[command(version)]
struct Cli {
    /// Path of the agent configuration file (TOML). Every key can be overridden by a
    /// `LOCKER_`-prefixed environment variable, `__` between levels (`LOCKER_MQTT__PORT=8884`).
    #[arg(long, short, global = true, default_value = "agent.toml")]
    config: PathBuf,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the agent (the default). Exits 0 on SIGTERM/Ctrl-C and after a Reboot command
    /// (a supervisor restarts it), 1 on failure.
    Run,
    /// Print the outbox of a STOPPED agent (events stored and not yet acknowledged), one line
    /// per event: `seq boot ts kind body`, after a first line `acked <seq>`.
    Outbox,
    /// Validate the configuration and exit.
    CheckConfig,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("locker-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let cfg = AgentConfig::load(&cli.config)
        .with_context(|| format!("configuration {}", cli.config.display()))?;
    match cli.cmd.unwrap_or(Cmd::Run) {
        Cmd::CheckConfig => {
            println!("configuration is valid");
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Outbox => dump_outbox(&cfg),
        Cmd::Run => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("tokio runtime")?;
            rt.block_on(run_agent(cfg))
        }
    }
}

fn dump_outbox(cfg: &AgentConfig) -> anyhow::Result<ExitCode> {
    let db = sled::open(&cfg.storage.path).with_context(|| {
        format!(
            "opening {} (is the agent still running?)",
            cfg.storage.path.display()
        )
    })?;
    let tree = db.open_tree(cfg.cabinet()?.as_str())?;
    println!("acked {}", locker_agent::storage::acked(&tree)?);
    for u in locker_agent::storage::read_all(&tree)? {
        println!(
            "{} {} {} {} {:?}",
            u.seq,
            u.boot,
            u.ts,
            u.body.kind(),
            u.body
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn run_agent(cfg: AgentConfig) -> anyhow::Result<ExitCode> {
    let path = cfg.storage.path.clone();
    let group = Duration::from_millis(cfg.storage.group_flush_ms);
    let storage = tokio::task::spawn_blocking(move || Storage::open(&path, group))
        .await
        .context("storage thread")?
        .with_context(|| format!("opening storage {}", cfg.storage.path.display()))?;
    let mut handle = Agent::start(cfg, AgentDeps::new(storage))
        .await
        .context("starting the agent")?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("SIGTERM handler")?;
    let stop = async {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    let by_itself = tokio::select! {
        r = handle.wait() => Some(r),
        _ = stop => None,
    };
    let exit = match by_itself {
        Some(r) => r,
        None => handle.shutdown().await,
    };
    match exit {
        ExitReason::Shutdown => Ok(ExitCode::SUCCESS),
        ExitReason::Reboot => {
            tracing::info!("reboot requested: exiting so the supervisor restarts the agent");
            Ok(ExitCode::SUCCESS)
        }
        ExitReason::Failed(why) => {
            tracing::error!(%why, "agent failed");
            Ok(ExitCode::FAILURE)
        }
    }
}
