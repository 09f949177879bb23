//! A NATS JetStream cluster on loopback for cluster mode (the benchmarks' `--cluster-nodes`
//! and the cluster tests): real `nats-server` processes (Debian's, installed by
//! `scripts/install-test-deps.sh`; `$NATS_SERVER` names another binary), each with its own
//! JetStream store, in a temp dir ([`NatsCluster::start`]) or a directory of the caller's
//! ([`NatsCluster::start_in`]). Client and route ports are reserved ([`PortReservation`]) so a
//! server killed with `kill -9` comes back on the same ones.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::fleet::gateway::PortReservation;

/// Why the NATS cluster could not be started.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("cannot start {bin} ({source}): run scripts/install-test-deps.sh or set NATS_SERVER")]
    Spawn {
        bin: String,
        #[source]
        source: std::io::Error,
    },
    #[error("nats-server {name} never accepted on {addr}; its log:\n{log}")]
    NotAccepting {
        name: String,
        addr: SocketAddr,
        log: String,
    },
}

/// How long a server may take to accept clients.
const ACCEPT_WITHIN: Duration = Duration::from_secs(20);

/// One server of the cluster.
struct Server {
    name: String,
    client: PortReservation,
    route: PortReservation,
    store: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// A running `nats-server` cluster with JetStream (killed when dropped).
pub struct NatsCluster {
    servers: Vec<Server>,
    dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
}

impl std::fmt::Debug for NatsCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "NatsCluster({} servers in {})",
            self.servers.len(),
            self.dir.display()
        )
    }
}

fn binary() -> String {
    std::env::var("NATS_SERVER").unwrap_or_else(|_| "nats-server".into())
}

impl NatsCluster {
    /// Starts `n` servers routed to each other (one JetStream domain, cluster `lk-test`) in a
    /// temp dir and waits until each accepts clients. JetStream elects its leader on its own
    /// within a second or two; the gateway waits for it
    /// ([`locker_gateway::cluster::Cluster::connect`]).
    pub fn start(n: usize) -> Result<Self, NatsError> {
        let temp = tempfile::tempdir()?;
        let dir = temp.path().to_path_buf();
        Self::launch(n, dir, Some(temp))
    }

    /// As [`Self::start`], with the stores and logs in `dir` (emptied first, kept afterwards
    /// for a look at the servers' logs).
    pub fn start_in(dir: &Path, n: usize) -> Result<Self, NatsError> {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir)?;
        Self::launch(n, std::path::absolute(dir)?, None)
    }

    fn launch(n: usize, dir: PathBuf, temp: Option<tempfile::TempDir>) -> Result<Self, NatsError> {
        let mut servers = Vec::with_capacity(n);
        for i in 0..n {
            servers.push(Server {
                name: format!("n{}", i + 1),
                client: PortReservation::loopback()?,
                route: PortReservation::loopback()?,
                store: dir.join(format!("n{}", i + 1)),
                log: dir.join(format!("n{}.log", i + 1)),
                child: None,
            });
        }
        let mut c = Self {
            servers,
            dir,
            _temp: temp,
        };
        for i in 0..n {
            c.spawn(i)?;
        }
        for i in 0..n {
            c.wait_accepting(i)?;
        }
        Ok(c)
    }

    fn spawn(&mut self, i: usize) -> Result<(), NatsError> {
        let routes: Vec<String> = self
            .servers
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, s)| format!("nats://{}", s.route.addr()))
            .collect();
        let s = &mut self.servers[i];
        let log = std::fs::File::create(&s.log)?;
        let mut cmd = Command::new(binary());
        cmd.args(["-a", "127.0.0.1", "-p"])
            .arg(s.client.addr().port().to_string())
            .args(["-n", &s.name, "--cluster_name", "lk-test", "--cluster"])
            .arg(format!("nats://{}", s.route.addr()))
            .arg("-js")
            .arg("-sd")
            .arg(&s.store);
        if !routes.is_empty() {
            cmd.arg("--routes").arg(routes.join(","));
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|source| NatsError::Spawn {
                bin: binary(),
                source,
            })?;
        s.child = Some(child);
        Ok(())
    }

    fn wait_accepting(&self, i: usize) -> Result<(), NatsError> {
        let addr = self.servers[i].client.addr();
        let start = Instant::now();
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if start.elapsed() >= ACCEPT_WITHIN {
                return Err(NatsError::NotAccepting {
                    name: self.servers[i].name.clone(),
                    addr,
                    log: self.log(i),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// How many servers the cluster has.
    pub fn len(&self) -> usize {
        self.servers.len()
    }

    /// Whether the cluster has no server.
    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }

    /// Where the stores and logs are.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Server `i`'s process id, while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.servers[i].child.as_ref().map(Child::id)
    }

    /// The client URL of server `i`.
    pub fn url(&self, i: usize) -> String {
        format!("nats://{}", self.servers[i].client.addr())
    }

    /// Every server's client URL, starting with server `first` (a gateway connects to the first
    /// it can reach and learns the others).
    pub fn urls_from(&self, first: usize) -> Vec<String> {
        let n = self.servers.len();
        (0..n).map(|k| self.url((first + k) % n)).collect()
    }

    /// Makes `cfg` node `i` (named `gw{i+1}`) of a cluster on these servers, connecting first
    /// to server `i` (modulo the servers), with as many replicas as servers (at most three).
    pub fn configure_node(&self, cfg: &mut locker_gateway::config::GatewayConfig, i: usize) {
        cfg.cluster.enabled = true;
        cfg.cluster.node_id = format!("gw{}", i + 1);
        cfg.cluster.nats_urls = self.urls_from(i % self.servers.len().max(1));
        cfg.cluster.replicas = self.servers.len().clamp(1, 3);
    }

    /// SIGKILL of server `i`: no goodbye to its peers, its store as it was on disk.
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.servers[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts server `i` again on its ports and store and waits until it accepts clients.
    pub fn restart(&mut self, i: usize) -> Result<(), NatsError> {
        self.kill9(i);
        self.spawn(i)?;
        self.wait_accepting(i)
    }

    /// Server `i`'s log so far (for a failing test's message).
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.servers[i].log).unwrap_or_default()
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for s in &mut self.servers {
            if let Some(mut c) = s.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}
