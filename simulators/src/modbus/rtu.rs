//! Modbus RTU serving: the simulated units of a [`ModbusServer`] on one serial line.
//!
//! Frames are delimited by their length (known from the function code) and checked with the
//! Modbus CRC ([`locker_agent::hw::rtu`]); a frame with a bad CRC or an unknown function is
//! dropped and the server waits for silence before reading a new one, as a real slave does. A
//! request for a unit id that no device on the line has gets no answer at all (on a shared bus
//! it is some other slave's request); a broadcast (unit 0) is executed and never answered.
//! PDUs are decoded and answered exactly as on the TCP paths ([`super::stream`]).
//!
//! tokio-modbus 0.17's RTU server only serves a `SerialStream` and frames every answer itself,
//! so it can neither inject a corrupted CRC ([`super::Link::corrupt_next`]) nor emulate the
//! wire: with a pseudo-terminal there is no baud rate, bytes pass at memory speed. With
//! [`RtuOptions::emulate_wire`] each answer is held back by the time the request and the
//! answer take on a real line at [`RtuOptions::baud`] (11 bits per character), so measured
//! poll rates mean something (`locker-sim bench rs485`).

use std::path::PathBuf;
use std::time::Duration;

use locker_agent::hw::rtu::{self as frame, crc_ok, push_crc, request_len, wire_time};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::task::JoinHandle;
use tokio_modbus::bytes::{Bytes, BytesMut};

use super::stream::{encode_exception, encode_response_into, execute_pdu};
use super::{ModbusError, ModbusServer};

/// How a line is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtuOptions {
    /// The line's baud rate (the serial port's setting, and the emulated wire speed).
    pub baud: u32,
    /// Hold each answer back by the wire time of the request and the answer at `baud`.
    pub emulate_wire: bool,
}

impl Default for RtuOptions {
    fn default() -> Self {
        Self {
            baud: 9_600,
            emulate_wire: false,
        }
    }
}

/// Opens `path` and serves it; reopens it (every 50 ms while missing) when it fails.
pub(super) fn serve_path(server: ModbusServer, path: PathBuf, opts: RtuOptions) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut missing_logged = false;
        loop {
            let name = path.to_string_lossy().into_owned();
            let builder = tokio_serial::new(name, opts.baud);
            // Opening a tty is a blocking system call: off the async task.
            let opened = tokio::task::spawn_blocking(move || builder.open_native())
                .await
                .map_err(|e| {
                    tokio_serial::Error::new(tokio_serial::ErrorKind::Unknown, e.to_string())
                })
                .and_then(|r| r)
                .and_then(tokio_serial::SerialStream::try_from);
            match opened {
                Ok(port) => {
                    missing_logged = false;
                    tracing::info!(path = %path.display(), "RTU line open");
                    match run(&server, port, &opts).await {
                        Ok(()) => tracing::info!(path = %path.display(), "RTU line closed"),
                        Err(err) => tracing::info!(path = %path.display(), %err, "RTU line failed"),
                    }
                }
                Err(err) => {
                    if !std::mem::replace(&mut missing_logged, true) {
                        tracing::info!(path = %path.display(), %err, "RTU line unavailable; retrying");
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
}

/// Serves one transport until end of file (`Ok`) or an I/O error.
pub(super) async fn run<T>(
    server: &ModbusServer,
    mut transport: T,
    opts: &RtuOptions,
) -> Result<(), ModbusError>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    // A pseudo-terminal hands over whole writes; on a real line a frame's bytes arrive
    // t3.5 apart at most. Wait a little longer before calling a partial frame garbage.
    let gap = frame::inter_frame_delay(opts.baud).max(Duration::from_millis(20));
    let mut buf: Vec<u8> = Vec::with_capacity(frame::MAX_FRAME);
    let mut scratch = [0u8; frame::MAX_FRAME];
    let mut out = BytesMut::with_capacity(frame::MAX_FRAME);
    loop {
        let n = if buf.is_empty() {
            transport.read(&mut scratch).await?
        } else {
            match tokio::time::timeout(gap, transport.read(&mut scratch)).await {
                Ok(r) => r?,
                Err(_) => {
                    tracing::debug!(bytes = buf.len(), "incomplete RTU frame dropped");
                    buf.clear();
                    continue;
                }
            }
        };
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&scratch[..n]);
        while let Some(len) = request_len(&buf) {
            if len == 0 || len > frame::MAX_FRAME {
                tracing::debug!(function = buf[1], "unknown RTU request dropped");
                buf.clear();
                break;
            }
            if buf.len() < len {
                break;
            }
            let request: Vec<u8> = buf.drain(..len).collect();
            if !crc_ok(&request) {
                tracing::debug!("RTU request with a bad CRC dropped");
                buf.clear();
                break;
            }
            if let Some(answer) = answer(server, &request, &mut out).await {
                if opts.emulate_wire {
                    tokio::time::sleep(wire_time(request.len() + answer.len(), opts.baud)).await;
                }
                transport.write_all(&answer).await?;
                transport.flush().await?;
            }
        }
    }
}

/// The answer frame to one request frame (CRC checked), if one is due.
async fn answer(server: &ModbusServer, request: &[u8], out: &mut BytesMut) -> Option<Vec<u8>> {
    let unit = request[0];
    let broadcast = unit == 0;
    let device = if broadcast {
        None
    } else {
        Some(server.device(unit)?.clone())
    };
    let pdu = Bytes::copy_from_slice(&request[1..request.len() - 2]);
    let (function, execution) = execute_pdu(server, unit, pdu).ok()?;
    let result = execution.finish().await?;
    if broadcast {
        return None;
    }
    out.clear();
    let pdu = match result {
        Ok(response) => {
            encode_response_into(&response, out)?;
            out.split().freeze()
        }
        Err(exception) => encode_exception(function, exception),
    };
    let mut f = Vec::with_capacity(pdu.len() + 3);
    f.push(unit);
    f.extend_from_slice(&pdu);
    push_crc(&mut f);
    if device.is_some_and(|d| d.link().take_corrupt()) {
        let last = f.len() - 1;
        f[last] ^= 0x5A;
    }
    Some(f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{LockBoardConfig, LockBoardSim};
    use locker_agent::hw::rtu::{crc_ok, Op};
    use std::sync::Arc;

    #[tokio::test]
    async fn serves_units_on_one_line_and_corrupts_on_demand() {
        let b1 = LockBoardSim::new(LockBoardConfig::default()).unwrap();
        let b2 = LockBoardSim::new(LockBoardConfig {
            unit_id: 2,
            ..Default::default()
        })
        .unwrap();
        b2.open_door(3).unwrap();
        let server = ModbusServer::new(vec![Arc::new(b1.clone()), Arc::new(b2.clone())]).unwrap();
        let (mut client, line) = tokio::io::duplex(1024);
        let opts = RtuOptions::default();
        tokio::spawn(async move { server.run_rtu(line, &opts).await });
        let mut reply = [0u8; 64];
        let ask = |unit: u8| Op::ReadDiscrete(0, 16).frame(unit);
        // unit 2: door 3 open
        client.write_all(&ask(2)).await.unwrap();
        let n = client.read(&mut reply).await.unwrap();
        assert_eq!(&reply[..n - 2], &[2, 2, 2, 0b1000, 0]);
        assert!(crc_ok(&reply[..n]));
        // unit 7 is not on the line: silence, then unit 1 answers the next request
        client.write_all(&ask(7)).await.unwrap();
        client.write_all(&ask(1)).await.unwrap();
        let n = client.read(&mut reply).await.unwrap();
        assert_eq!(reply[0], 1);
        assert!(crc_ok(&reply[..n]));
        // a corrupted answer, then a good one
        b1.corrupt_next_replies(1);
        client.write_all(&ask(1)).await.unwrap();
        let n = client.read(&mut reply).await.unwrap();
        assert!(!crc_ok(&reply[..n]));
        client.write_all(&ask(1)).await.unwrap();
        let n = client.read(&mut reply).await.unwrap();
        assert!(crc_ok(&reply[..n]));
        assert_eq!(b1.link_stats().corrupted, 1);
    }
}
