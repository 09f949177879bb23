//! A NATS JetStream cluster on loopback for the cluster-mode tests: the simulator's
//! [`locker_sim::nats::NatsCluster`] (the one launcher, shared with `locker-sim bench
//! --cluster-nodes`), with its errors turned into test failures. Every other method (`url`,
//! `urls_from`, `kill9`, `log`, ...) is the simulator's, through `Deref`.

pub use locker_sim::nats::NatsError;

/// A running `nats-server` cluster with JetStream (see [`locker_sim::nats::NatsCluster`]).
pub struct NatsCluster(locker_sim::nats::NatsCluster);

impl NatsCluster {
    /// Starts `n` servers routed to each other in a temp dir and waits until each accepts
    /// clients (see [`locker_sim::nats::NatsCluster::start`]).
    pub fn start(n: usize) -> Self {
        Self(locker_sim::nats::NatsCluster::start(n).expect("start the NATS cluster"))
    }

    /// Starts server `i` again on its ports and store.
    pub fn restart(&mut self, i: usize) {
        self.0
            .restart(i)
            .unwrap_or_else(|e| panic!("restart nats-server {i}: {e}"));
    }
}

impl std::ops::Deref for NatsCluster {
    type Target = locker_sim::nats::NatsCluster;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for NatsCluster {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}
