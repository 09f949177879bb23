//! Modbus RTU framing shared by the agent's serial ports and the RTU simulators: the CRC-16
//! (polynomial 0xA001, initial 0xFFFF, low byte first on the wire), the frame length a
//! request or a response announces, the inter-frame silence at a baud rate, and the encoding of
//! the few requests the agent sends (FC02, FC04, FC05).
//!
//! PDUs are decoded with tokio-modbus' public `Request`/`Response` conversions; only the RTU
//! envelope (unit id, CRC, silence) lives here, because tokio-modbus keeps its RTU codec
//! private and, on a bad CRC, silently drops bytes until a later frame decodes, which would
//! hide CRC errors from the agent's counters and could take a late reply for the next answer.

use std::time::Duration;

/// Smallest RTU frame: unit, function, one byte, CRC.
pub const MIN_FRAME: usize = 4;
/// Largest RTU frame (Modbus spec: 256 bytes).
pub const MAX_FRAME: usize = 256;
/// Bits on the wire per character: start, 8 data, parity or second stop, stop.
pub const BITS_PER_CHAR: u32 = 11;

/// The Modbus CRC-16 of `data`.
pub fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0xFFFF;
    for &b in data {
        crc ^= u16::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
        }
    }
    crc
}

/// Appends the CRC of `frame` to it (low byte first).
pub fn push_crc(frame: &mut Vec<u8>) {
    let crc = crc16(frame);
    frame.extend_from_slice(&crc.to_le_bytes());
}

/// Whether the last two bytes of `frame` are the CRC of the rest.
pub fn crc_ok(frame: &[u8]) -> bool {
    match frame.len().checked_sub(2) {
        Some(n) if n >= 2 => crc16(&frame[..n]).to_le_bytes() == [frame[n], frame[n + 1]],
        _ => false,
    }
}

/// The length of the response frame that starts `buf`, once enough of it is there to tell:
/// `Some(n)` for a complete length, `None` while more bytes are needed. Unknown function codes
/// give `Some(0)` (the caller waits for the inter-frame silence instead).
pub fn response_len(buf: &[u8]) -> Option<usize> {
    let fc = *buf.get(1)?;
    if fc & 0x80 != 0 {
        return Some(5);
    }
    match fc {
        1..=4 => buf.get(2).map(|&n| 5 + usize::from(n)),
        5 | 6 | 15 | 16 => Some(8),
        _ => Some(0),
    }
}

/// The length of the request frame that starts `buf` (as [`response_len`], for a server).
pub fn request_len(buf: &[u8]) -> Option<usize> {
    let fc = *buf.get(1)?;
    match fc {
        1..=6 => Some(8),
        15 | 16 => buf.get(6).map(|&n| 9 + usize::from(n)),
        _ => Some(0),
    }
}

/// The time `bytes` characters take on the wire at `baud` (11 bits each).
pub fn wire_time(bytes: usize, baud: u32) -> Duration {
    let bits = u64::try_from(bytes).unwrap_or(u64::MAX) * u64::from(BITS_PER_CHAR);
    Duration::from_nanos(bits.saturating_mul(1_000_000_000) / u64::from(baud.max(1)))
}

/// The inter-frame silence (t3.5) at `baud`: 3.5 character times, and 1.75 ms above 19,200
/// baud, as the Modbus serial line specification says.
pub fn inter_frame_delay(baud: u32) -> Duration {
    if baud > 19_200 {
        Duration::from_micros(1_750)
    } else {
        let bits = 35 * u64::from(BITS_PER_CHAR); // 3.5 chars, in tenths
        Duration::from_nanos(bits * 100_000_000 / u64::from(baud.max(1)))
    }
}

/// The requests the agent sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// FC02: read `n` discrete inputs from an address.
    ReadDiscrete(u16, u16),
    /// FC04: read `n` input registers from an address.
    ReadInput(u16, u16),
    /// FC05: write one coil.
    WriteCoil(u16, bool),
}

impl Op {
    /// The request frame for `unit`, CRC included.
    pub fn frame(&self, unit: u8) -> Vec<u8> {
        let (fc, a, b) = match *self {
            Op::ReadDiscrete(addr, n) => (2u8, addr, n),
            Op::ReadInput(addr, n) => (4, addr, n),
            Op::WriteCoil(addr, on) => (5, addr, if on { 0xFF00 } else { 0 }),
        };
        let mut f = Vec::with_capacity(8);
        f.push(unit);
        f.push(fc);
        f.extend_from_slice(&a.to_be_bytes());
        f.extend_from_slice(&b.to_be_bytes());
        push_crc(&mut f);
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_matches_the_spec_example() {
        // Modbus over serial line spec, read of 2 holding registers at 0x006B from unit 0x11.
        let f = [0x11u8, 0x03, 0x00, 0x6B, 0x00, 0x03];
        assert_eq!(crc16(&f).to_le_bytes(), [0x76, 0x87]);
        let mut v = f.to_vec();
        push_crc(&mut v);
        assert!(crc_ok(&v));
        v[3] ^= 1;
        assert!(!crc_ok(&v));
    }

    #[test]
    fn lengths_and_timings() {
        assert_eq!(response_len(&[1, 2]), None);
        assert_eq!(response_len(&[1, 2, 2]), Some(7));
        assert_eq!(response_len(&[1, 0x82]), Some(5));
        assert_eq!(response_len(&[1, 5]), Some(8));
        assert_eq!(request_len(&[1, 2]), Some(8));
        assert_eq!(request_len(&[1, 15, 0, 0, 0, 9]), None);
        assert_eq!(request_len(&[1, 15, 0, 0, 0, 9, 2]), Some(11));
        assert_eq!(Op::ReadDiscrete(0, 16).frame(3).len(), 8);
        let t = inter_frame_delay(9_600);
        assert!(
            t > Duration::from_micros(4_000) && t < Duration::from_micros(4_020),
            "{t:?}"
        );
        assert_eq!(inter_frame_delay(115_200), Duration::from_micros(1_750));
        assert_eq!(wire_time(960, 9_600), Duration::from_millis(1_100));
    }
}
