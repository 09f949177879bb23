//! Ports for tests. A server under test binds `127.0.0.1:0` itself and the test reads the
//! address back (`TestGateway`, `GatewayProcess`, the simulated boards all do). When an address
//! must be known before its server exists, or must survive the server's restart (`kill -9` and
//! start again), hold a [`PortReservation`]: never bind a port, read it and release it, which
//! races with every other test on the machine.

pub use locker_sim::fleet::gateway::PortReservation;

/// Reserves a loopback port (see [`PortReservation`]); the reservation must outlive every
/// server that binds it.
pub fn reserve() -> PortReservation {
    PortReservation::loopback().expect("reserve a loopback port")
}
