//! A NATS JetStream cluster on loopback for the cluster-mode tests: real `nats-server` processes
//! (Debian's, installed by `scripts/install-test-deps.sh`; `$NATS_SERVER` names another
//! binary), each with its own JetStream store in a temp dir. Client and route ports are
//! reserved ([`crate::net`]) so a server killed with `kill -9` comes back on the same ones.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::net::{reserve, PortReservation};

/// One server of the cluster.
struct Server {
    name: String,
    client: PortReservation,
    route: PortReservation,
    store: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// A running `nats-server` cluster with JetStream.
pub struct NatsCluster {
    servers: Vec<Server>,
    _dir: tempfile::TempDir,
    /// One cluster at a time in a test binary (see [`NatsCluster::start`]).
    _turn: std::sync::MutexGuard<'static, ()>,
}

/// Cluster tests take their turn: three NATS servers and up to three gateway nodes under load
/// are as much as two cores carry, and two such tests side by side starve each other's timers.
static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn binary() -> String {
    std::env::var("NATS_SERVER").unwrap_or_else(|_| "nats-server".into())
}

impl NatsCluster {
    /// Starts `n` servers routed to each other (one JetStream domain, cluster `lk-test`) and
    /// waits until each accepts clients. Blocks while another test of the binary holds a
    /// cluster (until it drops it). JetStream elects its leader on its own within a
    /// second or two; the gateway waits for it ([`locker_gateway::cluster::Cluster::connect`]).
    pub fn start(n: usize) -> Self {
        let turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
        let dir = tempfile::tempdir().expect("temp dir");
        let servers: Vec<Server> = (0..n)
            .map(|i| Server {
                name: format!("n{}", i + 1),
                client: reserve(),
                route: reserve(),
                store: dir.path().join(format!("n{}", i + 1)),
                log: dir.path().join(format!("n{}.log", i + 1)),
                child: None,
            })
            .collect();
        let mut c = Self {
            servers,
            _dir: dir,
            _turn: turn,
        };
        for i in 0..n {
            c.spawn(i);
        }
        for i in 0..n {
            c.wait_accepting(i);
        }
        c
    }

    fn spawn(&mut self, i: usize) {
        let routes: Vec<String> = self
            .servers
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, s)| format!("nats://{}", s.route.addr()))
            .collect();
        let s = &mut self.servers[i];
        let log = std::fs::File::create(&s.log).expect("nats log file");
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
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {} ({e}): run scripts/install-test-deps.sh",
                    binary()
                )
            });
        s.child = Some(child);
    }

    fn wait_accepting(&self, i: usize) {
        let addr = self.servers[i].client.addr();
        let start = Instant::now();
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "nats-server {} never accepted on {addr}; its log:\n{}",
                self.servers[i].name,
                std::fs::read_to_string(&self.servers[i].log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
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

    /// SIGKILL of server `i`: no goodbye to its peers, its store as it was on disk.
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.servers[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts server `i` again on its ports and store.
    pub fn restart(&mut self, i: usize) {
        self.kill9(i);
        self.spawn(i);
        self.wait_accepting(i);
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
