//! Lenient reading of an uplink envelope's head `[v, cabinet, boot, seq, ts, ...]`: just enough
//! CBOR (unsigned integers, a text string, an array header) to place an event that the codec
//! cannot accept as is (a newer schema version, a broken body, an envelope naming another
//! cabinet) in its cabinet's sequence. Reads only the first elements, so a truncated or
//! malformed body after them does not matter. Never panics on any input.

/// The head fields of an envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub version: u64,
    pub cabinet: String,
    pub boot: u32,
    pub seq: u64,
    /// The cabinet's clock, if the fifth element is readable.
    pub ts: Option<u64>,
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Option<u8> {
        let b = *self.bytes.get(self.at)?;
        self.at += 1;
        Some(b)
    }

    /// Reads an initial byte and its argument; returns (major type, argument or None for an
    /// indefinite length).
    fn header(&mut self) -> Option<(u8, Option<u64>)> {
        let ib = self.byte()?;
        let major = ib >> 5;
        let info = ib & 0x1f;
        let arg = match info {
            0..=23 => Some(u64::from(info)),
            24..=27 => {
                let n = 1usize << (info - 24);
                let slice = self.bytes.get(self.at..self.at.checked_add(n)?)?;
                self.at += n;
                Some(slice.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
            }
            31 => None,
            _ => return None,
        };
        Some((major, arg))
    }

    fn uint(&mut self) -> Option<u64> {
        match self.header()? {
            (0, Some(v)) => Some(v),
            _ => None,
        }
    }

    fn text(&mut self) -> Option<&'a str> {
        let (0x03, Some(len)) = self.header()? else {
            return None;
        };
        let len = usize::try_from(len).ok()?;
        let slice = self.bytes.get(self.at..self.at.checked_add(len)?)?;
        self.at += len;
        std::str::from_utf8(slice).ok()
    }
}

/// Reads the head of an uplink envelope, or None if even that is unreadable. A sequence number
/// of 0 (sequences start at 1) counts as unreadable.
pub fn read_head(bytes: &[u8]) -> Option<Head> {
    let mut r = Reader { bytes, at: 0 };
    let (major, len) = r.header()?;
    if major != 4 || len.is_some_and(|n| n < 4) {
        return None;
    }
    let version = r.uint()?;
    let cabinet = r.text()?.to_owned();
    let boot = u32::try_from(r.uint()?).ok()?;
    let seq = r.uint()?;
    if seq == 0 {
        return None;
    }
    let ts = if len.is_none_or(|n| n >= 5) {
        r.uint()
    } else {
        None
    };
    Some(Head {
        version,
        cabinet,
        boot,
        seq,
        ts,
    })
}

/// FNV-1a (64 bit) of a payload: how a stored event is recognised when it is sent again
/// (the agent replays events byte-identically).
pub fn digest(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use locker_schemas::{codec, vectors};

    #[test]
    fn reads_the_head_of_every_example_and_of_broken_or_newer_ones() {
        for u in vectors::door_examples() {
            let bytes = codec::encode_uplink(&u).expect("encode");
            let h = read_head(&bytes).expect("head");
            assert_eq!(
                (h.version, h.cabinet.as_str(), h.boot, h.seq, h.ts),
                (1, u.cabinet.as_str(), u.boot, u.seq, Some(u.ts))
            );
            // a newer version, and a body cut off: the head still reads
            let mut v9 = bytes.clone();
            v9[1] = 0x09;
            assert_eq!(read_head(&v9).expect("v9").version, 9);
            let cut = &bytes[..bytes.len() - 3];
            assert!(codec::decode_uplink(cut).is_err());
            assert_eq!(read_head(cut).expect("cut").seq, u.seq);
        }
        for junk in [&[][..], &[0xff, 0x00, 0x13], &[0x9f; 100], &[0x84, 0x01]] {
            assert_eq!(read_head(junk), None);
        }
    }

    #[test]
    fn never_panics_on_arbitrary_prefixes() {
        let u = &vectors::door_examples()[0];
        let bytes = codec::encode_uplink(u).expect("encode");
        for n in 0..bytes.len() {
            let _ = read_head(&bytes[..n]);
            let mut b = bytes.clone();
            b[n] = 0xff;
            let _ = read_head(&b);
        }
    }
}
