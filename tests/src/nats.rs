//! A NATS JetStream cluster on loopback for the cluster-mode tests: the simulator's
//! [`locker_sim::nats::NatsCluster`] (the one launcher, shared with `locker-sim bench
//! --cluster-nodes`), with its errors turned into test failures. Every other method (`url`,
//! `urls_from`, `kill9`, `log`, ...) is the simulator's, through `Deref`.
//!
//! Cluster tests take their turn: three NATS servers and up to three gateway nodes under load
//! are as much as two cores carry, and two such tests side by side starve each other's timers.

pub use locker_sim::nats::NatsError;

/// One cluster at a time in a test binary.
static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A running `nats-server` cluster with JetStream (see [`locker_sim::nats::NatsCluster`]).
pub struct NatsCluster {
    inner: locker_sim::nats::NatsCluster,
    /// (Declared after the servers: released once they are killed.)
    _turn: std::sync::MutexGuard<'static, ()>,
}

impl NatsCluster {
    /// Starts `n` servers routed to each other in a temp dir and waits until each accepts
    /// clients (see [`locker_sim::nats::NatsCluster::start`]). Blocks while another test of
    /// the binary holds a cluster.
    pub fn start(n: usize) -> Self {
        let turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
        let inner = locker_sim::nats::NatsCluster::start(n).expect("start the NATS cluster");
        Self { inner, _turn: turn }
    }

    /// Starts server `i` again on its ports and store.
    pub fn restart(&mut self, i: usize) {
        self.inner
            .restart(i)
            .unwrap_or_else(|e| panic!("restart nats-server {i}: {e}"));
    }
}

impl std::ops::Deref for NatsCluster {
    type Target = locker_sim::nats::NatsCluster;
    fn deref(&self) -> &Self::Target {
        &self.inner
    }
}

impl std::ops::DerefMut for NatsCluster {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.inner
    }
}
