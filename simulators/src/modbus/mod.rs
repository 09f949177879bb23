//! Modbus serving shared by every simulated device.
//!
//! Owns the [`ModbusDevice`] trait (what a simulated board answers), the per-device link
//! faults and counters ([`Link`]), and [`ModbusServer`], a cheap cloneable routing table from
//! unit id to device that serves either
//!
//! * real Modbus TCP on a socket ([`ModbusServer::serve_tcp`]), through the stock
//!   `tokio_modbus::server::tcp::Server` with our [`tokio_modbus::server::Service`]; or
//! * one already-connected transport ([`ModbusServer::serve_stream`]), e.g. one end of a
//!   `tokio::io::duplex` pipe. tokio-modbus 0.17 cannot do this: its server only accepts from a
//!   `TcpListener` and its MBAP codec is crate-private, so [`stream`] holds a minimal MBAP
//!   adapter: requests are decoded with tokio-modbus' public `Request::try_from(Bytes)`, responses
//!   are encoded by our own small encoder; or
//! * an in-process client link with no pipe and no task ([`ModbusServer::connect_memory`], see
//!   [`memory`]): the fleet simulator's path, the same MBAP framing as [`stream`], each request
//!   answered inside the client's write.
//!
//! Every path executes requests through [`ModbusServer::execute`] (route, link faults, the
//! device) and delivers the answer after the device's delay.
//!
//! Unit ids: a request for a unit id that no device on this server has is answered with the
//! exception `GatewayTargetDevice` (0x0B), as an RS-485/TCP gateway would, so a misconfigured
//! client fails fast instead of timing out.
//!
//! * Modbus RTU on a serial device or any byte stream ([`ModbusServer::serve_rtu`],
//!   [`ModbusServer::run_rtu`], see [`rtu`]): several units on one line, silence for a unit id
//!   no device has (as on a real RS-485 bus), optional emulation of the wire time.
//!
//! Link faults per device: *unresponsive* drops requests without executing them and without
//! answering (the connection stays open, the client must time out); *delay* executes the
//! request at once and sends the answer D later (so a client that gives up early may still
//! have moved the hardware: the realistic "lost reply" case); *corrupt* (RTU only) sends the
//! next N answers with a wrong CRC.

pub mod memory;
pub mod rtu;
pub mod stream;

pub use memory::MemoryLink;

use std::{
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use serde::Serialize;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};
use tokio_modbus::{
    server::{tcp::Server, Service},
    ExceptionCode, Request, Response, SlaveRequest,
};

/// Errors of the Modbus serving layer.
#[derive(Debug, thiserror::Error)]
pub enum ModbusError {
    /// Binding the TCP listener failed.
    #[error("cannot bind Modbus TCP listener on {addr}: {source}")]
    Bind {
        /// Requested address.
        addr: SocketAddr,
        /// Underlying error.
        source: io::Error,
    },
    /// Reading the bound address of a listener failed.
    #[error("cannot read the listener's local address: {0}")]
    LocalAddr(io::Error),
    /// Two devices on one server share a unit id.
    #[error("two devices on one Modbus server use unit id {0}")]
    DuplicateUnit(u8),
    /// A server needs at least one device.
    #[error("a Modbus server needs at least one device")]
    NoDevice,
    /// Transport error while serving a stream.
    #[error("transport error: {0}")]
    Io(#[from] io::Error),
    /// The peer sent something that is not Modbus TCP framing.
    #[error("Modbus TCP framing error: {0}")]
    Framing(String),
}

/// A simulated Modbus device: answers decoded requests for its unit id.
pub trait ModbusDevice: Send + Sync + 'static {
    /// The unit id (slave id) this device answers to.
    fn unit_id(&self) -> u8;
    /// Link faults and counters of this device.
    fn link(&self) -> &Link;
    /// Execute one request. Must not block: it runs on the serving task.
    fn handle(&self, request: &Request<'_>) -> Result<Response, ExceptionCode>;
}

/// Link faults (unresponsive, slow) and request counters of one device. Lock-free.
#[derive(Debug, Default)]
pub struct Link {
    unresponsive: AtomicBool,
    delay_ms: AtomicU64,
    answered: AtomicU64,
    exceptions: AtomicU64,
    dropped: AtomicU64,
    corrupt_next: AtomicU64,
    corrupted: AtomicU64,
}

/// Request counters of one device, for state dumps and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LinkStats {
    /// Requests answered with a normal response.
    pub answered: u64,
    /// Requests answered with a Modbus exception.
    pub exceptions: u64,
    /// Requests dropped unanswered because the device was unresponsive.
    pub dropped: u64,
    /// Whether the device currently ignores requests.
    pub unresponsive: bool,
    /// Current answer delay in milliseconds.
    pub delay_ms: u64,
    /// RTU answers sent with a corrupted CRC.
    pub corrupted: u64,
}

impl Link {
    /// Make the device stop (`true`) or resume (`false`) answering.
    pub fn set_unresponsive(&self, on: bool) {
        self.unresponsive.store(on, Ordering::SeqCst);
    }

    /// Whether the device currently ignores requests.
    pub fn unresponsive(&self) -> bool {
        self.unresponsive.load(Ordering::SeqCst)
    }

    /// Delay every answer by `delay` (zero: answer at once). Saturates at u64 milliseconds.
    pub fn set_delay(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.delay_ms.store(ms, Ordering::SeqCst);
    }

    /// Current answer delay.
    pub fn delay(&self) -> Duration {
        Duration::from_millis(self.delay_ms.load(Ordering::SeqCst))
    }

    /// Snapshot of the counters.
    pub fn stats(&self) -> LinkStats {
        LinkStats {
            answered: self.answered.load(Ordering::Relaxed),
            exceptions: self.exceptions.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            unresponsive: self.unresponsive(),
            delay_ms: self.delay_ms.load(Ordering::Relaxed),
            corrupted: self.corrupted.load(Ordering::Relaxed),
        }
    }

    /// Send the next `n` RTU answers with a wrong CRC (Modbus TCP has no CRC: unaffected).
    pub fn corrupt_next(&self, n: u64) {
        self.corrupt_next.store(n, Ordering::SeqCst);
    }

    /// Whether this answer is to be corrupted (consumes one of [`Link::corrupt_next`]).
    pub(crate) fn take_corrupt(&self) -> bool {
        let took = self
            .corrupt_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if took {
            self.corrupted.fetch_add(1, Ordering::Relaxed);
        }
        took
    }
}

/// Where [`ModbusServer::serve_tcp`] listens: an address to bind or a bound listener.
#[derive(Debug)]
pub enum Bind {
    /// Bind this address (port 0 picks a free port).
    Addr(SocketAddr),
    /// Use this already-bound listener.
    Listener(TcpListener),
}

impl From<SocketAddr> for Bind {
    fn from(addr: SocketAddr) -> Self {
        Self::Addr(addr)
    }
}

impl From<TcpListener> for Bind {
    fn from(listener: TcpListener) -> Self {
        Self::Listener(listener)
    }
}

impl Bind {
    /// Bind if needed; returns the listener and its local address.
    pub async fn listen(self) -> Result<(TcpListener, SocketAddr), ModbusError> {
        let listener = match self {
            Self::Addr(addr) => TcpListener::bind(addr)
                .await
                .map_err(|source| ModbusError::Bind { addr, source })?,
            Self::Listener(listener) => listener,
        };
        let addr = listener.local_addr().map_err(ModbusError::LocalAddr)?;
        Ok((listener, addr))
    }
}

/// Routes Modbus requests by unit id to simulated devices. Clone is cheap (one `Arc`).
#[derive(Clone)]
pub struct ModbusServer {
    devices: Arc<[Arc<dyn ModbusDevice>]>,
}

impl std::fmt::Debug for ModbusServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let units: Vec<u8> = self.devices.iter().map(|d| d.unit_id()).collect();
        f.debug_struct("ModbusServer")
            .field("units", &units)
            .finish()
    }
}

/// The boxed future our [`Service`] returns.
pub type DispatchFuture =
    Pin<Box<dyn Future<Output = Result<Option<Response>, ExceptionCode>> + Send>>;

impl ModbusServer {
    /// A server for several devices on one link (like an RS-485 bus behind a TCP gateway).
    pub fn new(devices: Vec<Arc<dyn ModbusDevice>>) -> Result<Self, ModbusError> {
        if devices.is_empty() {
            return Err(ModbusError::NoDevice);
        }
        for (i, d) in devices.iter().enumerate() {
            if devices[..i].iter().any(|e| e.unit_id() == d.unit_id()) {
                return Err(ModbusError::DuplicateUnit(d.unit_id()));
            }
        }
        Ok(Self {
            devices: devices.into(),
        })
    }

    /// A server for exactly one device.
    pub fn single(device: impl ModbusDevice) -> Self {
        let device: Arc<dyn ModbusDevice> = Arc::new(device);
        Self {
            devices: Arc::from(vec![device]),
        }
    }

    fn device(&self, unit: u8) -> Option<&Arc<dyn ModbusDevice>> {
        self.devices.iter().find(|d| d.unit_id() == unit)
    }

    /// Execute one request now: route by unit id and apply the device's link faults. The
    /// answer is due after the returned delay (see [`Execution::finish`]).
    pub(crate) fn execute(&self, unit: u8, request: &Request<'_>) -> Execution {
        let Some(device) = self.device(unit) else {
            tracing::debug!(unit, "request for unknown unit id");
            return Execution::Now(Err(ExceptionCode::GatewayTargetDevice));
        };
        let link = device.link();
        if link.unresponsive() {
            link.dropped.fetch_add(1, Ordering::Relaxed);
            return Execution::Drop;
        }
        let result = device.handle(request);
        Execution::Device {
            device: Arc::clone(device),
            result,
            delay: link.delay(),
        }
    }

    /// Execute one request: route by unit id, apply the device's link faults.
    /// `Ok(None)` means "send nothing".
    pub fn dispatch(&self, request: SlaveRequest<'static>) -> DispatchFuture {
        let execution = self.execute(request.slave, &request.request);
        Box::pin(async move { execution.finish().await.transpose() })
    }

    /// A client link to this server's devices, served inline with no task (see [`memory`]).
    pub fn connect_memory(&self) -> MemoryLink {
        MemoryLink::new(self.clone())
    }

    /// Serve real Modbus TCP (tokio-modbus' server) until the returned task is aborted.
    /// Returns the bound address (useful with port 0).
    ///
    /// If accepting fails (e.g. out of file descriptors) the tokio-modbus server returns and
    /// drops its open connections; we log, wait 100 ms and serve again on the same listener.
    pub async fn serve_tcp(
        &self,
        bind: impl Into<Bind>,
    ) -> Result<(SocketAddr, JoinHandle<()>), ModbusError> {
        let (listener, addr) = bind.into().listen().await?;
        let service = Arc::new(ModbusService {
            server: self.clone(),
        });
        let task = tokio::spawn(async move {
            let server = Server::new(listener);
            let on_connected = move |stream: TcpStream, peer: SocketAddr| {
                let service = Arc::clone(&service);
                async move {
                    if let Err(err) = stream.set_nodelay(true) {
                        tracing::debug!(%peer, %err, "cannot set TCP_NODELAY");
                    }
                    tracing::debug!(%peer, "Modbus TCP client connected");
                    Ok(Some((service, stream)))
                }
            };
            loop {
                let on_error =
                    |err: io::Error| tracing::debug!(%err, "Modbus TCP connection ended");
                match server.serve(&on_connected, on_error).await {
                    Ok(()) => break,
                    Err(err) => {
                        tracing::warn!(%addr, %err, "Modbus TCP accept failed; retrying");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        Ok((addr, task))
    }

    /// Serve Modbus RTU on the serial device `path` on a new task until it is aborted; the
    /// device is (re)opened whenever it is missing or fails, as a board on a line that was
    /// unplugged and plugged back. See [`rtu`].
    pub fn serve_rtu(
        &self,
        path: impl Into<std::path::PathBuf>,
        opts: rtu::RtuOptions,
    ) -> JoinHandle<()> {
        rtu::serve_path(self.clone(), path.into(), opts)
    }

    /// Serve Modbus RTU on one transport on the current task until it ends (`Ok` at end of
    /// file, `Err` on an I/O error). See [`rtu`].
    pub async fn run_rtu<T>(&self, transport: T, opts: &rtu::RtuOptions) -> Result<(), ModbusError>
    where
        T: AsyncRead + AsyncWrite + Unpin,
    {
        rtu::run(self, transport, opts).await
    }

    /// Serve one already-connected transport on a new task until the peer closes it.
    pub fn serve_stream<T>(&self, transport: T) -> JoinHandle<()>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let server = self.clone();
        tokio::spawn(async move {
            if let Err(err) = server.run_stream(transport).await {
                tracing::debug!(%err, "Modbus stream ended with error");
            }
        })
    }

    /// Serve one already-connected transport on the current task until the peer closes it
    /// (`Ok`) or sends something that is not Modbus TCP (`Err`).
    pub async fn run_stream<T>(&self, transport: T) -> Result<(), ModbusError>
    where
        T: AsyncRead + AsyncWrite + Unpin,
    {
        stream::run(self, transport).await
    }
}

/// What executing a request left to do.
pub(crate) enum Execution {
    /// Send nothing: the device is unresponsive.
    Drop,
    /// Answer at once (no device behind the unit id).
    Now(Result<Response, ExceptionCode>),
    /// The device's answer, due after `delay` (see [`deliver`]).
    Device {
        device: Arc<dyn ModbusDevice>,
        result: Result<Response, ExceptionCode>,
        delay: Duration,
    },
}

impl Execution {
    /// Wait out the device's delay; the answer to send, if any.
    pub(crate) async fn finish(self) -> Option<Result<Response, ExceptionCode>> {
        match self {
            Self::Drop => None,
            Self::Now(result) => Some(result),
            Self::Device {
                device,
                result,
                delay,
            } => {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                deliver(device.as_ref(), result)
            }
        }
    }
}

/// The device's answer is due now: lost if the device went unresponsive while "slow",
/// otherwise counted and returned.
pub(crate) fn deliver(
    device: &dyn ModbusDevice,
    result: Result<Response, ExceptionCode>,
) -> Option<Result<Response, ExceptionCode>> {
    let link = device.link();
    if link.unresponsive() {
        link.dropped.fetch_add(1, Ordering::Relaxed);
        return None;
    }
    match &result {
        Ok(_) => link.answered.fetch_add(1, Ordering::Relaxed),
        Err(_) => link.exceptions.fetch_add(1, Ordering::Relaxed),
    };
    Some(result)
}

/// Our tokio-modbus [`Service`]: forwards to [`ModbusServer::dispatch`].
#[derive(Debug, Clone)]
pub struct ModbusService {
    server: ModbusServer,
}

impl ModbusService {
    /// A service for this server.
    pub fn new(server: ModbusServer) -> Self {
        Self { server }
    }
}

impl Service for ModbusService {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = DispatchFuture;

    fn call(&self, req: Self::Request) -> Self::Future {
        self.server.dispatch(req)
    }
}

/// Maximum quantity for FC01/FC02 reads (Modbus spec).
pub const MAX_READ_BITS: u16 = 2000;
/// Maximum quantity for FC15 writes (Modbus spec).
pub const MAX_WRITE_BITS: u16 = 1968;
/// Maximum quantity for FC03/FC04 reads (Modbus spec).
pub const MAX_READ_REGISTERS: u16 = 125;
/// Maximum quantity for FC16 writes (Modbus spec).
pub const MAX_WRITE_REGISTERS: u16 = 123;

/// Check a request quantity: 1..=max, else `IllegalDataValue` (as the spec orders).
pub fn check_quantity(quantity: usize, max: u16) -> Result<(), ExceptionCode> {
    if quantity == 0 || quantity > usize::from(max) {
        Err(ExceptionCode::IllegalDataValue)
    } else {
        Ok(())
    }
}

/// If `[addr, addr + quantity)` lies inside the block `[start, start + len)`, the offset of
/// `addr` in the block.
pub fn offset_in(addr: u16, quantity: usize, start: u16, len: usize) -> Option<usize> {
    let addr = usize::from(addr);
    let start = usize::from(start);
    (addr >= start && addr + quantity <= start + len).then(|| addr - start)
}
