//! Minimal Modbus TCP (MBAP) server adapter for one already-connected transport.
//!
//! tokio-modbus 0.17 serves only sockets accepted from a `TcpListener` and keeps its codec
//! private, so this module frames requests itself: a 7-byte MBAP header (transaction id,
//! protocol id 0, length, unit id) followed by the PDU. PDUs are decoded with tokio-modbus'
//! public `Request::try_from(Bytes)`; responses and exceptions are encoded here
//! ([`encode_response`], [`encode_exception`]). Requests are answered one at a time, in order,
//! like tokio-modbus' own server loop.
//!
//! Differences to the tokio-modbus TCP path, on purpose: a PDU that fails to decode (e.g. a
//! malformed FC16) gets an `IllegalDataValue` exception and the connection keeps serving;
//! tokio-modbus closes the connection. A wrong protocol id or length closes the stream.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio_modbus::{
    bytes::{BufMut, Bytes, BytesMut},
    ExceptionCode, FunctionCode, Request, Response, SlaveRequest,
};

use super::{ModbusError, ModbusServer};

/// MBAP header length including the unit id.
const MBAP_LEN: usize = 7;
/// Largest PDU the Modbus spec allows.
const MAX_PDU: usize = 253;

/// Serve `transport` until the peer closes it.
pub(crate) async fn run<T>(server: &ModbusServer, transport: T) -> Result<(), ModbusError>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let mut io = BufReader::new(transport);
    let mut out = BytesMut::with_capacity(MBAP_LEN + MAX_PDU);
    loop {
        let mut hdr = [0u8; MBAP_LEN];
        match io.read_exact(&mut hdr).await {
            Ok(_) => {}
            Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(err) => return Err(err.into()),
        }
        let transaction = u16::from_be_bytes([hdr[0], hdr[1]]);
        let protocol = u16::from_be_bytes([hdr[2], hdr[3]]);
        let length = usize::from(u16::from_be_bytes([hdr[4], hdr[5]]));
        let unit = hdr[6];
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
        let mut pdu = vec![0u8; length - 1];
        io.read_exact(&mut pdu).await?;
        let function = pdu[0];
        if function >= 0x80 {
            return Err(ModbusError::Framing(format!(
                "function code {function:#04x} is not a request"
            )));
        }
        let result = match Request::try_from(Bytes::from(pdu)) {
            Ok(request) => {
                server
                    .dispatch(SlaveRequest {
                        slave: unit,
                        request,
                    })
                    .await
            }
            Err(err) => {
                tracing::debug!(%err, function, "undecodable request PDU");
                Err(ExceptionCode::IllegalDataValue)
            }
        };
        let pdu = match result {
            Ok(None) => continue,
            Ok(Some(response)) => encode_response(&response).unwrap_or_else(|| {
                tracing::warn!(?response, "response cannot be encoded");
                encode_exception(function, ExceptionCode::ServerDeviceFailure)
            }),
            Err(exception) => encode_exception(function, exception),
        };
        out.clear();
        out.put_u16(transaction);
        out.put_u16(0);
        // PDU length is bounded by encode_response (<= MAX_PDU), so this fits.
        out.put_u16(u16::try_from(pdu.len() + 1).unwrap_or(u16::MAX));
        out.put_u8(unit);
        out.put_slice(&pdu);
        let stream = io.get_mut();
        stream.write_all(&out).await?;
        stream.flush().await?;
    }
}

/// Encode an exception response PDU.
pub fn encode_exception(function: u8, exception: ExceptionCode) -> Bytes {
    Bytes::from(vec![function | 0x80, u8::from(exception)])
}

fn pack_bits(buf: &mut BytesMut, bits: &[bool]) -> Option<()> {
    let bytes = bits.len().div_ceil(8);
    buf.put_u8(u8::try_from(bytes).ok()?);
    let mut packed = vec![0u8; bytes];
    for (i, bit) in bits.iter().enumerate() {
        packed[i / 8] |= u8::from(*bit) << (i % 8);
    }
    buf.put_slice(&packed);
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
    let function: FunctionCode = response.function_code();
    buf.put_u8(function.value());
    match response {
        Response::ReadCoils(bits) | Response::ReadDiscreteInputs(bits) => {
            pack_bits(&mut buf, bits)?
        }
        Response::ReadInputRegisters(words)
        | Response::ReadHoldingRegisters(words)
        | Response::ReadWriteMultipleRegisters(words) => put_words(&mut buf, words)?,
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
    (buf.len() <= MAX_PDU).then(|| buf.freeze())
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
