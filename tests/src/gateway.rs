//! The real gateway for tests: in-process ([`TestGateway`]) or as the `locker-gateway` binary
//! ([`GatewayProcess`], for `kill -9`).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use locker_gateway::app::Gateway;
use locker_gateway::config::GatewayConfig;
use locker_schemas::Filter;

use crate::api::{ApiClient, TEST_TOKEN};
use crate::pki::TestPki;

/// The integrator the test config allows to read uplinks and gateway streams.
pub const TEST_INTEGRATOR: &str = "analytics";

/// A gateway configuration for tests: everything on 127.0.0.1:0, certificates from `pki`,
/// the sled database in `data_dir`, short timers.
pub fn test_config(pki: &TestPki, data_dir: &Path) -> GatewayConfig {
    let mut cfg = GatewayConfig {
        data_dir: data_dir.to_path_buf(),
        ..Default::default()
    };
    cfg.edge.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    cfg.edge.ca_cert = pki.pki.paths().ca_cert();
    cfg.edge.server_cert = pki.pki.paths().server_cert();
    cfg.edge.server_key = pki.pki.paths().server_key();
    cfg.edge.crl = Some(pki.pki.paths().crl());
    cfg.edge.crl_check_interval_ms = 100;
    cfg.edge.integrator_acls.insert(
        TEST_INTEGRATOR.into(),
        vec![Filter::all_uplinks(), Filter::all_streams()],
    );
    cfg.api.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    cfg.api
        .tokens
        .insert(TEST_TOKEN.into(), "test-suite".into());
    cfg.commands.resend_after_ms = 1_000;
    cfg.commands.tick_ms = 100;
    cfg
}

/// The gateway running inside the test process.
pub struct TestGateway {
    pub gw: Gateway,
    pub api: ApiClient,
    pub data: tempfile::TempDir,
    /// The configuration it runs with (edge and API addresses fixed to the bound ones, so a
    /// restart comes back on the same ports).
    pub config: GatewayConfig,
}

impl TestGateway {
    /// Starts a gateway with [`test_config`].
    pub async fn start(pki: &TestPki) -> Self {
        Self::start_with(pki, |_| {}).await
    }

    /// Starts a gateway with [`test_config`] changed by `tweak`.
    pub async fn start_with(pki: &TestPki, tweak: impl FnOnce(&mut GatewayConfig)) -> Self {
        crate::init_tracing();
        let data = tempfile::tempdir().expect("temp dir");
        let mut cfg = test_config(pki, data.path());
        tweak(&mut cfg);
        let gw = Gateway::start(cfg.clone()).await.expect("gateway starts");
        cfg.edge.listen = gw.edge_addr;
        cfg.api.listen = gw.api_addr;
        let api = match &cfg.api.tls {
            None => ApiClient::new(gw.api_addr, TEST_TOKEN),
            Some(_) => {
                let ca = std::fs::read(pki.ca_pem()).expect("CA PEM");
                ApiClient::with_tls(gw.api_addr, TEST_TOKEN, &ca)
            }
        };
        Self {
            gw,
            api,
            data,
            config: cfg,
        }
    }

    /// Shuts the gateway down cleanly and starts it again on the same data and ports.
    pub async fn restart(self) -> Self {
        self.stop().await.start().await
    }

    /// Shuts the gateway down cleanly, keeping its data and ports for [`StoppedGateway::start`]
    /// (the cabinets are offline meanwhile).
    pub async fn stop(self) -> StoppedGateway {
        let Self {
            gw,
            api,
            data,
            config,
        } = self;
        gw.shutdown().await;
        StoppedGateway { api, data, config }
    }

    pub fn edge_addr(&self) -> SocketAddr {
        self.gw.edge_addr
    }
}

/// A [`TestGateway`] that was stopped: its data directory and configuration, to start again.
pub struct StoppedGateway {
    pub api: ApiClient,
    pub data: tempfile::TempDir,
    pub config: GatewayConfig,
}

impl StoppedGateway {
    /// Starts the gateway again on the same data and ports.
    pub async fn start(self) -> TestGateway {
        let Self { api, data, config } = self;
        // Blocking storage calls of the old instance that were already running finish on
        // their own threads; the database lock is free once they have.
        let started = std::time::Instant::now();
        let gw = loop {
            match Gateway::start(config.clone()).await {
                Ok(gw) => break gw,
                Err(e)
                    if started.elapsed() < crate::wait::DEADLINE
                        && e.to_string().contains("lock") =>
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("gateway restarts: {e}"),
            }
        };
        TestGateway {
            gw,
            api,
            data,
            config,
        }
    }
}

/// Path of a workspace binary, building it if needed (tests of the `locker-tests` package
/// cannot use `CARGO_BIN_EXE_*` for other packages' binaries).
pub fn workspace_bin(name: &str, package: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target profile dir");
    let bin = profile_dir.join(name);
    // `cargo test --workspace --all-targets` (the README's command) has already built it;
    // rebuild only when a source file of the workspace is newer than the binary, because a
    // lone `cargo build -p` unifies features differently and recompiles much of the tree.
    if let Ok(built) = std::fs::metadata(&bin).and_then(|m| m.modified()) {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap_or(Path::new("."));
        let stale = ["gateway", "schemas", "broker-config", "Cargo.lock"]
            .iter()
            .any(|d| newer_than(&root.join(d), built));
        if !stale {
            return bin;
        }
    }
    let status = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "-p", package, "--bin", name])
        .args(if profile_dir.ends_with("release") {
            vec!["--release"]
        } else {
            vec![]
        })
        .status()
        .expect("run cargo build");
    assert!(status.success(), "building {name} failed");
    assert!(bin.exists(), "{} missing after build", bin.display());
    bin
}

/// Whether `path` (a file, or any file under a directory) was modified after `t`.
fn newer_than(path: &Path, t: std::time::SystemTime) -> bool {
    let Ok(meta) = std::fs::metadata(path) else {
        return false;
    };
    if meta.is_file() {
        return meta.modified().map(|m| m > t).unwrap_or(true);
    }
    std::fs::read_dir(path)
        .map(|rd| {
            rd.flatten().any(|e| {
                let p = e.path();
                p.file_name().is_some_and(|n| n != "target" && n != "fuzz") && newer_than(&p, t)
            })
        })
        .unwrap_or(false)
}

/// The real `locker-gateway` binary running as a child process.
pub struct GatewayProcess {
    child: Child,
    pub edge_addr: SocketAddr,
    pub api_addr: SocketAddr,
    pub api: ApiClient,
    config_path: PathBuf,
}

impl GatewayProcess {
    /// Writes `cfg` as TOML next to its data dir and starts the binary on it.
    pub fn start(cfg: &GatewayConfig) -> Self {
        let config_path = cfg.data_dir.join("gateway.toml");
        std::fs::create_dir_all(&cfg.data_dir).expect("data dir");
        std::fs::write(&config_path, toml::to_string(cfg).expect("config to TOML"))
            .expect("write config");
        Self::start_file(&config_path)
    }

    fn start_file(config_path: &Path) -> Self {
        let bin = workspace_bin("locker-gateway", "locker-gateway");
        let mut child = Command::new(bin)
            .arg("--config")
            .arg(config_path)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn locker-gateway");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let (edge_addr, api_addr) = loop {
            let line = lines
                .next()
                .expect("gateway exited before listening")
                .expect("read gateway stdout");
            if let Some(rest) = line.strip_prefix("LISTENING ") {
                let mut edge = None;
                let mut api = None;
                for kv in rest.split_whitespace() {
                    match kv.split_once('=') {
                        Some(("edge", v)) => edge = v.parse().ok(),
                        Some(("api", v)) => api = v.parse().ok(),
                        _ => {}
                    }
                }
                break (edge.expect("edge addr"), api.expect("api addr"));
            }
        };
        // keep draining stdout so the child never blocks on a full pipe
        std::thread::spawn(move || for _ in lines {});
        Self {
            child,
            edge_addr,
            api_addr,
            api: ApiClient::new(api_addr, TEST_TOKEN),
            config_path: config_path.to_path_buf(),
        }
    }

    /// SIGKILL: no drain, no flush.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        for _ in 0..3000 {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("gateway did not exit after SIGTERM");
    }

    /// Starts the binary again on the same configuration file (same ports, same data).
    pub fn restart(&mut self) {
        let next = Self::start_file(&self.config_path);
        *self = next;
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
