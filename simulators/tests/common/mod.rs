//! Shared helpers for the simulator tests: connecting real tokio-modbus clients over TCP or
//! over an in-memory duplex pipe, and polling with a deadline.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;

use locker_sim::ModbusServer;
use tokio_modbus::{client::Context, prelude::*};

/// How a test client reaches the simulator.
#[derive(Debug, Clone, Copy)]
pub enum Transport {
    /// Real Modbus TCP on 127.0.0.1:0 (tokio-modbus server).
    Tcp,
    /// `tokio::io::duplex` served by `serve_stream` (our MBAP adapter).
    Duplex,
    /// The in-memory link the fleet simulator uses (`connect_memory`: no pipe, no task).
    Memory,
}

/// Serve `server` over `transport` and return a connected client for `unit`.
pub async fn connect(server: &ModbusServer, transport: Transport, unit: u8) -> Context {
    match transport {
        Transport::Tcp => {
            let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
            let (addr, task) = server.serve_tcp(addr).await.expect("serve tcp");
            // Keep the server running for the whole test: leak the handle.
            std::mem::forget(task);
            tcp::connect_slave(addr, Slave(unit))
                .await
                .expect("connect")
        }
        Transport::Duplex => {
            let (client, served) = tokio::io::duplex(4096);
            let _task = server.serve_stream(served);
            tcp::attach_slave(client, Slave(unit))
        }
        Transport::Memory => tcp::attach_slave(server.connect_memory(), Slave(unit)),
    }
}

/// Poll `$cond` (may contain `.await`) every 20 ms until it holds; fail after 20 s.
#[macro_export]
macro_rules! eventually {
    ($what:expr, $cond:expr) => {{
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            if $cond {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {}",
                $what
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }};
}

/// Read one discrete input, expecting success.
pub async fn di(ctx: &mut Context, addr: u16) -> bool {
    ctx.read_discrete_inputs(addr, 1)
        .await
        .expect("io")
        .expect("no exception")[0]
}

/// Read one coil, expecting success.
pub async fn coil(ctx: &mut Context, addr: u16) -> bool {
    ctx.read_coils(addr, 1)
        .await
        .expect("io")
        .expect("no exception")[0]
}

/// Read input registers, expecting success.
pub async fn ir(ctx: &mut Context, addr: u16, qty: u16) -> Vec<u16> {
    ctx.read_input_registers(addr, qty)
        .await
        .expect("io")
        .expect("no exception")
}
