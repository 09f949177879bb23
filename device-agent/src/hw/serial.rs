//! One RS-485 line (Modbus RTU): the task that owns the serial port, reached through a
//! [`SerialLine`] handle by every unit (lock board, charge controller) on that line.
//!
//! The task answers one request at a time, in the order they arrive, so requests of all units
//! on the line are serialised: it keeps the inter-frame silence before each request, discards
//! whatever is pending on the line (a late reply, noise), writes the frame and reads one reply
//! within the line's request timeout. A unit that does not answer costs one timeout per request
//! and its driver backs it off (`timing.modbus_reconnect_ms` once offline), so a dead board
//! cannot take more than its share of the line. A reply with a bad CRC or a wrong unit is a
//! failed request (counted), and the line is re-synchronised by discarding bytes until a
//! silence. A port that fails (device node gone, `EIO`, end of file) is closed and reopened
//! with backoff (250 ms doubling up to `reopen_max_ms`); meanwhile every request fails at once,
//! so its units go offline as a TCP board that went away does.
//!
//! Counters of every line of the agent are in [`LineStats`].

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_modbus::bytes::Bytes;
use tokio_modbus::{ExceptionResponse, Response};
use tokio_serial::{DataBits, Parity, SerialStream, StopBits};

use super::link::LinkError;
use super::rtu::{self, Op};
use crate::config::{ParityName, SerialPortConfig};

/// First reopen delay after a port failed.
const REOPEN_MIN: Duration = Duration::from_millis(250);

/// Counters of the agent's serial lines (all lines together). Cheap to clone (one `Arc`).
#[derive(Debug, Clone, Default)]
pub struct LineStats(Arc<LineCounters>);

#[derive(Debug, Default)]
struct LineCounters {
    requests: AtomicU64,
    answered: AtomicU64,
    timeouts: AtomicU64,
    crc_errors: AtomicU64,
    framing_errors: AtomicU64,
    port_failures: AtomicU64,
    reopens: AtomicU64,
}

/// A snapshot of [`LineStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LineSnapshot {
    /// Requests sent on a line.
    pub requests: u64,
    /// Requests answered with a good frame (a Modbus exception included).
    pub answered: u64,
    /// Requests a unit did not answer within the line's request timeout.
    pub timeouts: u64,
    /// Replies with a bad CRC.
    pub crc_errors: u64,
    /// Replies that were not a Modbus RTU frame for the request (wrong unit, unknown function).
    pub framing_errors: u64,
    /// Times a port failed (device node gone, I/O error) or could not be opened.
    pub port_failures: u64,
    /// Times a port was opened again after a failure.
    pub reopens: u64,
}

impl LineStats {
    /// The counters now.
    pub fn snapshot(&self) -> LineSnapshot {
        let c = &self.0;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        LineSnapshot {
            requests: g(&c.requests),
            answered: g(&c.answered),
            timeouts: g(&c.timeouts),
            crc_errors: g(&c.crc_errors),
            framing_errors: g(&c.framing_errors),
            port_failures: g(&c.port_failures),
            reopens: g(&c.reopens),
        }
    }

    fn add(&self, f: impl Fn(&LineCounters) -> &AtomicU64) {
        f(&self.0).fetch_add(1, Ordering::Relaxed);
    }
}

struct Job {
    unit: u8,
    op: Op,
    reply: oneshot::Sender<Result<Response, LinkError>>,
}

/// The handle of one line's task. Cheap to clone; the task ends when the last handle is gone.
#[derive(Clone)]
pub struct SerialLine {
    tx: mpsc::Sender<Job>,
    path: Arc<str>,
}

impl std::fmt::Debug for SerialLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SerialLine({})", self.path)
    }
}

impl SerialLine {
    /// Starts the task of the line `cfg` (the port is opened on the first request).
    pub fn spawn(cfg: SerialPortConfig, stats: LineStats) -> Self {
        let (tx, rx) = mpsc::channel(32);
        let path: Arc<str> = Arc::from(cfg.path.as_str());
        let port = Port {
            cfg,
            stream: None,
            last_io: Instant::now(),
            reopen_at: Instant::now(),
            backoff: REOPEN_MIN,
            failed_before: false,
            stats,
        };
        tokio::spawn(port.run(rx));
        Self { tx, path }
    }

    /// The device path.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// One request to `unit`, answered when its turn on the line came and went.
    pub async fn request(&self, unit: u8, op: Op) -> Result<Response, LinkError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job { unit, op, reply })
            .await
            .map_err(|_| LinkError::Io(io::Error::other("serial line task ended")))?;
        rx.await
            .map_err(|_| LinkError::Io(io::Error::other("serial line task ended")))?
    }
}

/// Why a transaction failed, as the port task sees it.
enum Fail {
    /// The unit's fault (timeout, bad frame): the port stays open.
    Unit(LinkError),
    /// The port's fault: close it and reopen later.
    Port(io::Error),
}

struct Port {
    cfg: SerialPortConfig,
    stream: Option<SerialStream>,
    last_io: Instant,
    reopen_at: Instant,
    backoff: Duration,
    failed_before: bool,
    stats: LineStats,
}

impl Port {
    async fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        while let Some(job) = rx.recv().await {
            let r = self.transact(job.unit, job.op).await;
            // The driver may have given up waiting (it never does today): nothing to do.
            let _ = job.reply.send(r);
        }
    }

    async fn open(&mut self) -> Result<(), LinkError> {
        if self.stream.is_some() {
            return Ok(());
        }
        let now = Instant::now();
        if now < self.reopen_at {
            return Err(LinkError::Io(io::Error::new(
                io::ErrorKind::NotConnected,
                format!("serial port {} is down (reopening)", self.cfg.path),
            )));
        }
        let c = &self.cfg;
        let builder = tokio_serial::new(c.path.as_str(), c.baud)
            .data_bits(DataBits::Eight)
            .parity(match c.parity {
                ParityName::None => Parity::None,
                ParityName::Even => Parity::Even,
                ParityName::Odd => Parity::Odd,
            })
            .stop_bits(if c.stop_bits == 2 {
                StopBits::Two
            } else {
                StopBits::One
            });
        // Opening and configuring the tty are blocking system calls: off the async task.
        let opened = tokio::task::spawn_blocking(move || builder.open_native())
            .await
            .map_err(|e| tokio_serial::Error::new(tokio_serial::ErrorKind::Unknown, e.to_string()))
            .and_then(|r| r)
            .and_then(SerialStream::try_from);
        match opened {
            Ok(s) => {
                self.stream = Some(s);
                self.last_io = Instant::now();
                self.backoff = REOPEN_MIN;
                if std::mem::take(&mut self.failed_before) {
                    self.stats.add(|c| &c.reopens);
                    tracing::info!(path = %c.path, "serial port open again");
                } else {
                    tracing::info!(path = %c.path, baud = c.baud, "serial port open");
                }
                Ok(())
            }
            Err(e) => {
                let e = io::Error::other(format!("opening serial port {}: {e}", c.path));
                self.port_failed(&e);
                Err(LinkError::Io(e))
            }
        }
    }

    /// Closes the port and schedules the reopen; logged once per outage.
    fn port_failed(&mut self, e: &io::Error) {
        self.stream = None;
        self.stats.add(|c| &c.port_failures);
        if !std::mem::replace(&mut self.failed_before, true) {
            tracing::warn!(path = %self.cfg.path, error = %e, "serial port failed: its units are unreachable until it reopens");
        }
        self.reopen_at = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(Duration::from_millis(self.cfg.reopen_max_ms));
    }

    async fn transact(&mut self, unit: u8, op: Op) -> Result<Response, LinkError> {
        self.open().await?;
        self.stats.add(|c| &c.requests);
        let r = self.exchange(unit, op).await;
        self.last_io = Instant::now();
        match r {
            Ok(Ok(resp)) => {
                self.stats.add(|c| &c.answered);
                Ok(resp)
            }
            Ok(Err(exc)) => {
                self.stats.add(|c| &c.answered);
                Err(LinkError::Exception(exc.exception.to_string()))
            }
            Err(Fail::Unit(e)) => Err(e),
            Err(Fail::Port(e)) => {
                self.port_failed(&e);
                Err(LinkError::Io(e))
            }
        }
    }

    async fn exchange(
        &mut self,
        unit: u8,
        op: Op,
    ) -> Result<Result<Response, ExceptionResponse>, Fail> {
        let ifd = self.cfg.inter_frame_delay();
        let timeout = self.cfg.request_timeout();
        tokio::time::sleep_until(self.last_io + ifd).await;
        let Some(stream) = self.stream.as_mut() else {
            return Err(Fail::Port(io::Error::other("serial port closed")));
        };
        // Whatever is on the line now is no answer to this request (a late reply, noise).
        let mut scratch = [0u8; rtu::MAX_FRAME];
        loop {
            match stream.try_read(&mut scratch) {
                Ok(0) => return Err(Fail::Port(io::Error::other("serial port closed"))),
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(Fail::Port(e)),
            }
        }
        let frame = op.frame(unit);
        let fc = frame[1];
        stream.write_all(&frame).await.map_err(Fail::Port)?;
        stream.flush().await.map_err(Fail::Port)?;
        let deadline = Instant::now() + timeout;
        let mut buf: Vec<u8> = Vec::with_capacity(rtu::MAX_FRAME);
        let mut need_more = true;
        loop {
            if need_more {
                let read = tokio::time::timeout_at(deadline, stream.read(&mut scratch)).await;
                let n = match read {
                    Err(_) => {
                        self.stats.add(|c| &c.timeouts);
                        return Err(Fail::Unit(LinkError::Timeout(timeout)));
                    }
                    Ok(Ok(0)) => return Err(Fail::Port(io::Error::other("serial port closed"))),
                    Ok(Ok(n)) => n,
                    Ok(Err(e)) => return Err(Fail::Port(e)),
                };
                buf.extend_from_slice(&scratch[..n]);
            }
            need_more = true;
            let Some(len) = rtu::response_len(&buf) else {
                continue;
            };
            if len == 0 || len > rtu::MAX_FRAME {
                return Err(self
                    .resync(format!("unknown function {:#04x}", buf[1]))
                    .await);
            }
            if buf.len() < len {
                continue;
            }
            if !rtu::crc_ok(&buf[..len]) {
                self.stats.add(|c| &c.crc_errors);
                let e = LinkError::Protocol(format!("bad CRC in the reply of unit {unit}"));
                return Err(self.drain(e).await);
            }
            if buf[0] != unit || buf[1] & 0x7F != fc {
                // A good frame that answers another request: a late reply to a request that
                // timed out. Skip it and keep waiting for ours.
                self.stats.add(|c| &c.framing_errors);
                tracing::debug!(
                    unit,
                    from = buf[0],
                    function = buf[1],
                    "stray reply skipped"
                );
                buf.drain(..len);
                need_more = buf.is_empty();
                continue;
            }
            if buf.len() > len {
                let extra = buf.len() - len;
                return Err(self.resync(format!("{extra} bytes after the reply")).await);
            }
            let pdu = Bytes::copy_from_slice(&buf[1..len - 2]);
            if buf[1] & 0x80 != 0 {
                return ExceptionResponse::try_from(pdu)
                    .map(Err)
                    .map_err(|e| Fail::Unit(LinkError::Protocol(e.to_string())));
            }
            return Response::try_from(pdu)
                .map(Ok)
                .map_err(|e| Fail::Unit(LinkError::Protocol(e.to_string())));
        }
    }

    /// A frame that makes no sense: counted, then [`Port::drain`].
    async fn resync(&mut self, what: String) -> Fail {
        self.stats.add(|c| &c.framing_errors);
        self.drain(LinkError::Protocol(what)).await
    }

    /// Discards bytes until the line is silent for the inter-frame delay (at most one request
    /// timeout), so the next request starts on a clean line; then fails with `e`.
    async fn drain(&mut self, e: LinkError) -> Fail {
        let quiet = self.cfg.inter_frame_delay().max(Duration::from_millis(1));
        let until = Instant::now() + self.cfg.request_timeout();
        let Some(stream) = self.stream.as_mut() else {
            return Fail::Unit(e);
        };
        let mut scratch = [0u8; rtu::MAX_FRAME];
        while Instant::now() < until {
            match tokio::time::timeout(quiet, stream.read(&mut scratch)).await {
                Err(_) => break,
                Ok(Ok(0)) => return Fail::Port(io::Error::other("serial port closed")),
                Ok(Ok(_)) => continue,
                Ok(Err(err)) => return Fail::Port(err),
            }
        }
        Fail::Unit(e)
    }
}
