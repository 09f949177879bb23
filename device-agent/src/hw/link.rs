//! One Modbus client link: how the transport is made ([`ModbusConnector`]: real TCP, or any
//! caller-provided async stream such as one end of an in-process `tokio::io::duplex`), the
//! per-request deadline, and reconnection (a link that failed is dropped and made again on the
//! next request, so a late reply can never be taken for the answer to a newer request).
//!
//! Both kinds of transport go through `tokio_modbus::client::tcp::attach_slave`, so the same
//! driver code runs against real boards, the simulators over TCP, and the fleet simulator.
//! A unit on an RS-485 line ([`Link::serial`]) sends its requests through the line's task
//! instead ([`super::serial`]), which owns the port and its deadline.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_modbus::client::Context;
use tokio_modbus::prelude::{Reader, Slave, Writer};
use tokio_modbus::Response;

use super::rtu::Op;
use super::serial::SerialLine;

/// Why a Modbus request failed.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("transport: {0}")]
    Io(#[from] io::Error),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("device exception: {0}")]
    Exception(String),
    #[error("short reply: wanted {wanted} values, got {got}")]
    Short { wanted: usize, got: usize },
}

trait Stream: AsyncRead + AsyncWrite + Send {}
impl<T: AsyncRead + AsyncWrite + Send> Stream for T {}

/// A type-erased Modbus transport stream.
pub struct ModbusStream(Pin<Box<dyn Stream>>);

impl ModbusStream {
    /// Wraps any async byte stream.
    pub fn new<S: AsyncRead + AsyncWrite + Send + 'static>(s: S) -> Self {
        Self(Box::pin(s))
    }
}

impl fmt::Debug for ModbusStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ModbusStream")
    }
}

impl AsyncRead for ModbusStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.0.as_mut().poll_read(cx, buf)
    }
}

impl AsyncWrite for ModbusStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.0.as_mut().poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        self.0.as_mut().poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        self.0.as_mut().poll_shutdown(cx)
    }
}

/// A future that yields a connected stream.
pub type ConnectFuture = Pin<Box<dyn Future<Output = io::Result<ModbusStream>> + Send>>;

/// How Modbus transports are made.
#[derive(Clone, Default)]
pub enum ModbusConnector {
    /// `TcpStream::connect(address)`.
    #[default]
    Tcp,
    /// A caller-provided factory: given the configured address, yields a stream.
    Custom(Arc<dyn Fn(&str) -> ConnectFuture + Send + Sync>),
}

impl fmt::Debug for ModbusConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModbusConnector::Tcp => f.write_str("ModbusConnector::Tcp"),
            ModbusConnector::Custom(_) => f.write_str("ModbusConnector::Custom"),
        }
    }
}

impl ModbusConnector {
    /// A connector from an async factory returning any stream.
    pub fn custom<F, Fut, S>(f: F) -> Self
    where
        F: Fn(String) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = io::Result<S>> + Send + 'static,
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        ModbusConnector::Custom(Arc::new(move |addr: &str| {
            let fut = f(addr.to_owned());
            Box::pin(async move { fut.await.map(ModbusStream::new) })
        }))
    }

    /// Makes a stream to `address`.
    pub async fn connect(&self, address: &str) -> io::Result<ModbusStream> {
        match self {
            ModbusConnector::Tcp => {
                let s = tokio::net::TcpStream::connect(address).await?;
                s.set_nodelay(true)?;
                Ok(ModbusStream::new(s))
            }
            ModbusConnector::Custom(f) => f(address).await,
        }
    }
}

/// A Modbus client for one unit at one address, with deadlines and reconnects.
pub struct Link {
    address: String,
    unit: u8,
    timeout: Duration,
    connector: ModbusConnector,
    ctx: Option<Context>,
    /// The RS-485 line of a Modbus RTU unit (then `connector` and `ctx` are unused).
    line: Option<SerialLine>,
}

impl fmt::Debug for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Link({}#{})", self.address, self.unit)
    }
}

fn unexpected(r: Response) -> LinkError {
    LinkError::Protocol(format!("unexpected response {:?}", r.function_code()))
}

type ModbusResult<T> = tokio_modbus::Result<T>;

impl Link {
    /// A link (not connected until the first request).
    pub fn new(address: String, unit: u8, timeout: Duration, connector: ModbusConnector) -> Self {
        Self {
            address,
            unit,
            timeout,
            connector,
            ctx: None,
            line: None,
        }
    }

    /// A link to `unit` on an RS-485 line (Modbus RTU through the line's task).
    pub fn serial(line: SerialLine, unit: u8) -> Self {
        Self {
            address: line.path().to_owned(),
            unit,
            timeout: Duration::ZERO,
            connector: ModbusConnector::Tcp,
            ctx: None,
            line: Some(line),
        }
    }

    /// The configured address.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Drops the connection (the next request reconnects).
    pub fn reset(&mut self) {
        self.ctx = None;
    }

    async fn ctx(&mut self) -> Result<&mut Context, LinkError> {
        if self.ctx.is_none() {
            let stream = tokio::time::timeout(self.timeout, self.connector.connect(&self.address))
                .await
                .map_err(|_| LinkError::Timeout(self.timeout))??;
            self.ctx = Some(tokio_modbus::client::tcp::attach_slave(
                stream,
                Slave(self.unit),
            ));
        }
        self.ctx
            .as_mut()
            .ok_or_else(|| LinkError::Io(io::Error::other("no context")))
    }

    fn finish<T>(
        &mut self,
        r: Result<ModbusResult<T>, tokio::time::error::Elapsed>,
    ) -> Result<T, LinkError> {
        match r {
            Err(_) => {
                self.ctx = None;
                Err(LinkError::Timeout(self.timeout))
            }
            Ok(Err(tokio_modbus::Error::Transport(e))) => {
                self.ctx = None;
                Err(LinkError::Io(e))
            }
            Ok(Err(tokio_modbus::Error::Protocol(e))) => {
                self.ctx = None;
                Err(LinkError::Protocol(e.to_string()))
            }
            Ok(Ok(Err(exc))) => Err(LinkError::Exception(exc.to_string())),
            Ok(Ok(Ok(v))) => Ok(v),
        }
    }

    /// FC02: reads `n` discrete inputs from `addr`.
    pub async fn read_discrete(&mut self, addr: u16, n: u16) -> Result<Vec<bool>, LinkError> {
        let mut v = if let Some(line) = &self.line {
            match line.request(self.unit, Op::ReadDiscrete(addr, n)).await? {
                Response::ReadDiscreteInputs(v) => v,
                r => return Err(unexpected(r)),
            }
        } else {
            let t = self.timeout;
            let ctx = self.ctx().await?;
            let r = tokio::time::timeout(t, ctx.read_discrete_inputs(addr, n)).await;
            self.finish(r)?
        };
        if v.len() < usize::from(n) {
            return Err(LinkError::Short {
                wanted: n.into(),
                got: v.len(),
            });
        }
        v.truncate(n.into());
        Ok(v)
    }

    /// FC04: reads `n` input registers from `addr`.
    pub async fn read_input(&mut self, addr: u16, n: u16) -> Result<Vec<u16>, LinkError> {
        let v = if let Some(line) = &self.line {
            match line.request(self.unit, Op::ReadInput(addr, n)).await? {
                Response::ReadInputRegisters(v) => v,
                r => return Err(unexpected(r)),
            }
        } else {
            let t = self.timeout;
            let ctx = self.ctx().await?;
            let r = tokio::time::timeout(t, ctx.read_input_registers(addr, n)).await;
            self.finish(r)?
        };
        if v.len() < usize::from(n) {
            return Err(LinkError::Short {
                wanted: n.into(),
                got: v.len(),
            });
        }
        Ok(v)
    }

    /// FC05: writes one coil.
    pub async fn write_coil(&mut self, addr: u16, on: bool) -> Result<(), LinkError> {
        if let Some(line) = &self.line {
            return match line.request(self.unit, Op::WriteCoil(addr, on)).await? {
                Response::WriteSingleCoil(_, _) => Ok(()),
                r => Err(unexpected(r)),
            };
        }
        let t = self.timeout;
        let ctx = self.ctx().await?;
        let r = tokio::time::timeout(t, ctx.write_single_coil(addr, on)).await;
        self.finish(r)
    }
}
