//! Minimal Modbus TCP (MBAP) server adapter for one already-connected transport, and the MBAP
//! framing it shares with the in-process [`super::memory::MemoryLink`].
//!
//! tokio-modbus 0.17 serves only sockets accepted from a `TcpListener` and keeps its codec
//! private, so this module frames requests itself: a 7-byte MBAP header (transaction id,
//! protocol id 0, length, unit id) followed by the PDU. PDUs are decoded with tokio-modbus'
//! public `Request::try_from(Bytes)`; responses and exceptions are encoded here, straight into
//! the output buffer ([`put_frame`], [`encode_response_into`]). Requests are answered one at a
//! time, in order, like tokio-modbus' own server loop.
//!
//! Differences to the tokio-modbus TCP path, on purpose: a PDU that fails to decode (e.g. a
//! malformed FC16) gets an `IllegalDataValue` exception and the connection keeps serving;
//! tokio-modbus closes the connection. A wrong protocol id or length closes the stream.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio_modbus::{
    bytes::{BufMut, Bytes, BytesMut},
    ExceptionCode, FunctionCode, Request, Response,
};

use super::{Execution, ModbusError, ModbusServer};

/// MBAP header length including the unit id.
pub(crate) const MBAP_LEN: usize = 7;
/// Largest PDU the Modbus spec allows.
pub(crate) const MAX_PDU: usize = 253;

/// The parts of a request's MBAP header an answer needs, and the PDU length that follows.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Header {
    pub transaction: u16,
    pub unit: u8,
    pub pdu_len: usize,
}

/// Parses the MBAP header at the start of `buf`: `Ok(None)` while fewer than
/// [`MBAP_LEN`] bytes are there; an error for a protocol id other than 0 or a length out of
/// range (the connection must be closed).
pub(crate) fn parse_header(buf: &[u8]) -> Result<Option<Header>, ModbusError> {
    let Some(hdr) = buf.get(..MBAP_LEN) else {
        return Ok(None);
    };
    let protocol = u16::from_be_bytes([hdr[2], hdr[3]]);
    let length = usize::from(u16::from_be_bytes([hdr[4], hdr[5]]));
    if protocol != 0 {
        return Err(ModbusError::Framing(format!(
            "protocol id {protocol} is not 0"
        )));
    }
    if !(2..=MAX_PDU + 1).contains(&length) {
        return Err(ModbusError::Framing(format!(
            "MBAP length {length} out of range"
        )));
    }
    Ok(Some(Header {
        transaction: u16::from_be_bytes([hdr[0], hdr[1]]),
        unit: hdr[6],
        pdu_len: length - 1,
    }))
}

/// Decodes one request PDU and executes it on `server` (see [`ModbusServer::execute`]);
/// returns the request's function code with the execution. A response function code
/// (>= 0x80) is a framing error; an undecodable PDU is answered `IllegalDataValue`.
pub(crate) fn execute_pdu(
    server: &ModbusServer,
    unit: u8,
    pdu: Bytes,
) -> Result<(u8, Execution), ModbusError> {
    let function = pdu.first().copied().unwrap_or(0);
    if function >= 0x80 {
        return Err(ModbusError::Framing(format!(
            "function code {function:#04x} is not a request"
        )));
    }
    let execution = match Request::try_from(pdu) {
        Ok(request) => server.execute(unit, &request),
        Err(err) => {
            tracing::debug!(%err, function, "undecodable request PDU");
            Execution::Now(Err(ExceptionCode::IllegalDataValue))
        }
    };
    Ok((function, execution))
}

/// Appends one MBAP answer frame to `out`: the response, or the exception for `function`.
pub(crate) fn put_frame(
    out: &mut BytesMut,
    header: Header,
    function: u8,
    result: Result<Response, ExceptionCode>,
) {
    let start = out.len();
    out.put_u16(header.transaction);
    out.put_u16(0);
    out.put_u16(0); // length, filled in below
    out.put_u8(header.unit);
    let pdu = out.len();
    match result {
        Ok(response) => {
            if encode_response_into(&response, out).is_none() {
                tracing::warn!(?response, "response cannot be encoded");
                out.truncate(pdu);
                put_exception(out, function, ExceptionCode::ServerDeviceFailure);
            }
        }
        Err(exception) => put_exception(out, function, exception),
    }
    // The PDU is at most MAX_PDU bytes (encode_response_into checks), so this fits.
    let length = u16::try_from(out.len() - pdu + 1).unwrap_or(u16::MAX);
    out[start + 4..start + 6].copy_from_slice(&length.to_be_bytes());
}

/// Serve `transport` until the peer closes it.
pub(crate) async fn run<T>(server: &ModbusServer, transport: T) -> Result<(), ModbusError>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let mut io = BufReader::new(transport);
    let mut out = BytesMut::with_capacity(MBAP_LEN + MAX_PDU);
    let mut pdu = BytesMut::with_capacity(MAX_PDU);
    loop {
        let mut hdr = [0u8; MBAP_LEN];
        match io.read_exact(&mut hdr).await {
            Ok(_) => {}
            Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(err) => return Err(err.into()),
        }
        let Some(header) = parse_header(&hdr)? else {
            continue;
        };
        pdu.clear();
        pdu.resize(header.pdu_len, 0);
        io.read_exact(&mut pdu).await?;
        let (function, execution) = execute_pdu(server, header.unit, pdu.split().freeze())?;
        let Some(result) = execution.finish().await else {
            continue;
        };
        out.clear();
        put_frame(&mut out, header, function, result);
        let stream = io.get_mut();
        stream.write_all(&out).await?;
        stream.flush().await?;
    }
}

/// Encode an exception response PDU.
pub fn encode_exception(function: u8, exception: ExceptionCode) -> Bytes {
    let mut buf = BytesMut::with_capacity(2);
    put_exception(&mut buf, function, exception);
    buf.freeze()
}

fn put_exception(buf: &mut BytesMut, function: u8, exception: ExceptionCode) {
    buf.put_u8(function | 0x80);
    buf.put_u8(u8::from(exception));
}

fn pack_bits(buf: &mut BytesMut, bits: &[bool]) -> Option<()> {
    buf.put_u8(u8::try_from(bits.len().div_ceil(8)).ok()?);
    for chunk in bits.chunks(8) {
        let byte = chunk
            .iter()
            .enumerate()
            .fold(0u8, |b, (i, bit)| b | (u8::from(*bit) << i));
        buf.put_u8(byte);
    }
    Some(())
}

fn put_words(buf: &mut BytesMut, words: &[u16]) -> Option<()> {
    buf.put_u8(u8::try_from(words.len() * 2).ok()?);
    for w in words {
        buf.put_u16(*w);
    }
    Some(())
}

/// Encode a normal response PDU; `None` for responses this simulator never produces
/// (device identification) or that exceed the maximum PDU size.
pub fn encode_response(response: &Response) -> Option<Bytes> {
    let mut buf = BytesMut::with_capacity(MAX_PDU);
    encode_response_into(response, &mut buf)?;
    Some(buf.freeze())
}

/// Append a normal response PDU to `out`; `None` (with `out` possibly written to) for
/// responses this simulator never produces or that exceed the maximum PDU size.
pub fn encode_response_into(response: &Response, out: &mut BytesMut) -> Option<()> {
    let start = out.len();
    let buf = out;
    let function: FunctionCode = response.function_code();
    buf.put_u8(function.value());
    match response {
        Response::ReadCoils(bits) | Response::ReadDiscreteInputs(bits) => pack_bits(buf, bits)?,
        Response::ReadInputRegisters(words)
        | Response::ReadHoldingRegisters(words)
        | Response::ReadWriteMultipleRegisters(words) => put_words(buf, words)?,
        Response::WriteSingleCoil(addr, on) => {
            buf.put_u16(*addr);
            buf.put_u16(if *on { 0xFF00 } else { 0x0000 });
        }
        Response::WriteMultipleCoils(addr, quantity)
        | Response::WriteMultipleRegisters(addr, quantity)
        | Response::WriteSingleRegister(addr, quantity) => {
            buf.put_u16(*addr);
            buf.put_u16(*quantity);
        }
        Response::MaskWriteRegister(addr, and, or) => {
            buf.put_u16(*addr);
            buf.put_u16(*and);
            buf.put_u16(*or);
        }
        Response::ReportServerId(id, running, data) => {
            buf.put_u8(u8::try_from(data.len() + 2).ok()?);
            buf.put_u8(*id);
            buf.put_u8(if *running { 0xFF } else { 0x00 });
            buf.put_slice(data);
        }
        Response::Custom(_, data) => buf.put_slice(data),
        Response::ReadDeviceIdentification(_) => return None,
    }
    (buf.len() - start <= MAX_PDU).then_some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_packed_bits_lsb_first() {
        let pdu = encode_response(&Response::ReadCoils(vec![
            true, false, true, false, false, false, false, false, true,
        ]))
        .expect("encodable");
        assert_eq!(&pdu[..], &[0x01, 2, 0b0000_0101, 0b0000_0001]);
    }

    #[test]
    fn encodes_registers_and_exceptions() {
        let pdu = encode_response(&Response::ReadInputRegisters(vec![0x0102, 16])).expect("ok");
        assert_eq!(&pdu[..], &[0x04, 4, 0x01, 0x02, 0x00, 0x10]);
        let pdu = encode_exception(0x03, ExceptionCode::IllegalDataAddress);
        assert_eq!(&pdu[..], &[0x83, 0x02]);
        let pdu = encode_response(&Response::WriteSingleCoil(7, true)).expect("ok");
        assert_eq!(&pdu[..], &[0x05, 0, 7, 0xFF, 0x00]);
    }

    #[test]
    fn refuses_oversized_pdu() {
        assert!(encode_response(&Response::ReadHoldingRegisters(vec![0; 200])).is_none());
    }
}
