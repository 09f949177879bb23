//! In-process Modbus TCP link without a pipe or a task: [`MemoryLink`].
//!
//! The fleet simulator runs thousands of agents, each polling its lock board five times a
//! second. Served over `tokio::io::duplex` (see [`super::stream`]), every request cost a pipe
//! write, a wakeup of the board's serving task, the task's run, a pipe write back and a wakeup
//! of the agent: the simulator's own overhead, not the agent's. A [`MemoryLink`] is the client
//! end of a connection whose far end is the simulated device itself: the request bytes the
//! client writes are framed (MBAP), decoded and executed inside that `poll_write`, and the
//! encoded answer is ready for the client's next `poll_read`. The client still speaks real
//! Modbus TCP (tokio-modbus' client codec and MBAP framing, byte for byte what a socket
//! would carry, shared with [`super::stream`]); only the transport and the server task are gone.
//!
//! Link faults keep their meaning: an *unresponsive* device drops the request (the read stays
//! pending until the client's own deadline); a *delay* executes the request at once and makes
//! the answer readable only after the delay (a timer inside the link, armed only then), and an
//! answer is lost if the device went unresponsive meanwhile. Answers come out in request
//! order. A framing error closes the link as the serving task would close its stream: what was
//! already answered can still be read, then reads see end of file and writes `BrokenPipe`.
//!
//! Memory is bounded: at most [`MAX_WRITE`] request bytes are taken per write, and writes wait
//! (`Pending`, woken by the next read) while more than [`MAX_UNREAD`] answer bytes are unread.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};
use tokio_modbus::{
    bytes::{Buf, BytesMut},
    ExceptionCode, Response,
};

use super::stream::{parse_header, put_frame, Header, MBAP_LEN};
use super::{deliver, Execution, ModbusDevice, ModbusServer};

/// Request bytes taken per `poll_write` at most.
pub const MAX_WRITE: usize = 4_096;
/// Unread answer bytes above which writes wait for the client to read.
pub const MAX_UNREAD: usize = 64 * 1024;

/// An answer held back by the device's link delay.
struct Held {
    due: Instant,
    header: Header,
    function: u8,
    device: Option<Arc<dyn ModbusDevice>>,
    result: Result<Response, ExceptionCode>,
}

/// The client end of an in-process Modbus TCP connection to a [`ModbusServer`]'s devices,
/// served inline (see the module docs). Made by [`ModbusServer::connect_memory`].
pub struct MemoryLink {
    server: ModbusServer,
    inbox: BytesMut,
    outbox: BytesMut,
    held: VecDeque<Held>,
    timer: Option<Pin<Box<Sleep>>>,
    read_waker: Option<Waker>,
    write_waker: Option<Waker>,
    closed: bool,
}

impl std::fmt::Debug for MemoryLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryLink")
            .field("server", &self.server)
            .field("unread", &self.outbox.len())
            .field("held", &self.held.len())
            .field("closed", &self.closed)
            .finish()
    }
}

impl MemoryLink {
    pub(super) fn new(server: ModbusServer) -> Self {
        Self {
            server,
            inbox: BytesMut::with_capacity(2 * (MBAP_LEN + super::stream::MAX_PDU)),
            outbox: BytesMut::with_capacity(2 * (MBAP_LEN + super::stream::MAX_PDU)),
            held: VecDeque::new(),
            timer: None,
            read_waker: None,
            write_waker: None,
            closed: false,
        }
    }

    /// Frames, executes and answers every complete request in the inbox.
    fn serve_inbox(&mut self) {
        while !self.closed {
            let header = match parse_header(&self.inbox) {
                Ok(Some(h)) => h,
                Ok(None) => return,
                Err(err) => return self.close(&err),
            };
            if self.inbox.len() < MBAP_LEN + header.pdu_len {
                return;
            }
            self.inbox.advance(MBAP_LEN);
            let pdu = self.inbox.split_to(header.pdu_len).freeze();
            match super::stream::execute_pdu(&self.server, header.unit, pdu) {
                Err(err) => return self.close(&err),
                Ok((function, execution)) => self.answer(header, function, execution),
            }
        }
    }

    fn answer(&mut self, header: Header, function: u8, execution: Execution) {
        let (device, result, delay) = match execution {
            Execution::Drop => return,
            Execution::Now(result) => (None, result, std::time::Duration::ZERO),
            Execution::Device {
                device,
                result,
                delay,
            } => (Some(device), result, delay),
        };
        if delay.is_zero() && self.held.is_empty() {
            self.put(header, function, device.as_deref(), result);
        } else {
            self.held.push_back(Held {
                due: Instant::now() + delay,
                header,
                function,
                device,
                result,
            });
        }
    }

    fn put(
        &mut self,
        header: Header,
        function: u8,
        device: Option<&dyn ModbusDevice>,
        result: Result<Response, ExceptionCode>,
    ) {
        let result = match device {
            Some(d) => match deliver(d, result) {
                Some(r) => r,
                None => return,
            },
            None => result,
        };
        put_frame(&mut self.outbox, header, function, result);
    }

    /// Moves the held answers that are due into the outbox.
    fn release_due(&mut self) {
        if self.held.is_empty() {
            return;
        }
        let now = Instant::now();
        while self.held.front().is_some_and(|h| h.due <= now) {
            if let Some(h) = self.held.pop_front() {
                self.put(h.header, h.function, h.device.as_deref(), h.result);
            }
        }
    }

    fn close(&mut self, err: &super::ModbusError) {
        tracing::debug!(%err, "in-memory Modbus link closed");
        self.closed = true;
        self.inbox.clear();
        self.held.clear();
        self.timer = None;
        self.wake_reader();
    }

    fn wake_reader(&mut self) {
        if let Some(w) = self.read_waker.take() {
            w.wake();
        }
    }
}

impl AsyncRead for MemoryLink {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            this.release_due();
            if !this.outbox.is_empty() {
                let n = this.outbox.len().min(buf.remaining());
                buf.put_slice(&this.outbox[..n]);
                this.outbox.advance(n);
                if let Some(w) = this.write_waker.take() {
                    w.wake();
                }
                return Poll::Ready(Ok(()));
            }
            if this.closed {
                return Poll::Ready(Ok(()));
            }
            let Some(due) = this.held.front().map(|h| h.due) else {
                this.timer = None;
                this.read_waker = Some(cx.waker().clone());
                return Poll::Pending;
            };
            let timer = this
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
            if timer.deadline() != due {
                timer.as_mut().reset(due);
            }
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
    }
}

impl AsyncWrite for MemoryLink {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.closed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if this.outbox.len() > MAX_UNREAD {
            this.write_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = buf.len().min(MAX_WRITE);
        this.inbox.extend_from_slice(&buf[..n]);
        let unread = this.outbox.len();
        this.serve_inbox();
        if this.outbox.len() > unread {
            this.wake_reader();
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The device sees end of file: it stops serving, as the stream server does.
        let this = self.get_mut();
        this.closed = true;
        this.held.clear();
        this.timer = None;
        Poll::Ready(Ok(()))
    }
}
