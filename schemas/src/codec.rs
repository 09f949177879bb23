//! The CBOR codec: encoding and decoding of uplinks, downlinks and integrator streams, with a
//! size limit checked before any parsing and typed errors for everything that can go wrong.
//!
//! Decoding never panics on any input (a property test and `schemas/fuzz` check this).

use crate::downlink::{Downlink, DownlinkOrHead};
use crate::stream::{StreamMessage, StreamOrHead};
use crate::uplink::{Uplink, UplinkOrHead};

/// The schema version carried as the first element of every message.
pub const SCHEMA_VERSION: u8 = 1;

/// The largest payload the codec accepts (a hello with 255 compartments is about 1.5 KiB;
/// a full credential set for a 48-door cabinet about 6 KiB).
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024;

/// Why a payload could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("payload of {len} bytes is over the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
    #[error("payload is empty")]
    Empty,
    #[error("unsupported schema version {0} (this build speaks version {SCHEMA_VERSION})")]
    Version(u64),
    #[error("unknown message kind {0}")]
    Kind(u64),
    #[error("malformed CBOR or wrong shape: {0}")]
    Malformed(String),
    #[error("{0} trailing bytes after the message")]
    Trailing(usize),
}

impl DecodeError {
    /// A stable short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            DecodeError::TooLarge { .. } => "too_large",
            DecodeError::Empty => "empty",
            DecodeError::Version(_) => "version",
            DecodeError::Kind(_) => "kind",
            DecodeError::Malformed(_) => "malformed",
            DecodeError::Trailing(_) => "trailing",
        }
    }
}

/// Why a message could not be encoded (only an I/O or serde failure of the writer).
#[derive(Debug, thiserror::Error)]
#[error("could not encode message: {0}")]
pub struct EncodeError(String);

fn encode<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::with_capacity(64);
    ciborium::into_writer(v, &mut out).map_err(|e| EncodeError(e.to_string()))?;
    Ok(out)
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    if bytes.len() > MAX_PAYLOAD_BYTES {
        return Err(DecodeError::TooLarge {
            len: bytes.len(),
            max: MAX_PAYLOAD_BYTES,
        });
    }
    // Parse into a generic CBOR value first, then map it onto the message types. Going through
    // `ciborium::Value` is what makes appended fields work: its deserializer lets a struct stop
    // reading an array early, whereas the streaming deserializer would leave the unread
    // elements in the byte stream and misalign everything after them.
    let mut rest = bytes;
    let value: ciborium::Value = ciborium::de::from_reader_with_recursion_limit(&mut rest, 16)
        .map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(DecodeError::Trailing(rest.len()));
    }
    value
        .deserialized()
        .map_err(|e| DecodeError::Malformed(e.to_string()))
}

/// Encodes an uplink.
pub fn encode_uplink(u: &Uplink) -> Result<Vec<u8>, EncodeError> {
    encode(u)
}

/// Decodes an uplink.
pub fn decode_uplink(bytes: &[u8]) -> Result<Uplink, DecodeError> {
    match decode::<UplinkOrHead>(bytes)? {
        UplinkOrHead::Ok(u) => Ok(u),
        UplinkOrHead::BadVersion(v) => Err(DecodeError::Version(v)),
        UplinkOrHead::BadKind(k) => Err(DecodeError::Kind(k)),
    }
}

/// Encodes a downlink.
pub fn encode_downlink(d: &Downlink) -> Result<Vec<u8>, EncodeError> {
    encode(d)
}

/// Decodes a downlink.
pub fn decode_downlink(bytes: &[u8]) -> Result<Downlink, DecodeError> {
    match decode::<DownlinkOrHead>(bytes)? {
        DownlinkOrHead::Ok(d) => Ok(d),
        DownlinkOrHead::BadVersion(v) => Err(DecodeError::Version(v)),
        DownlinkOrHead::BadKind(k) => Err(DecodeError::Kind(k)),
    }
}

/// Encodes a gateway-made stream message.
pub fn encode_stream(m: &StreamMessage) -> Result<Vec<u8>, EncodeError> {
    encode(m)
}

/// Decodes a gateway-made stream message.
pub fn decode_stream(bytes: &[u8]) -> Result<StreamMessage, DecodeError> {
    match decode::<StreamOrHead>(bytes)? {
        StreamOrHead::Ok(m) => Ok(m),
        StreamOrHead::BadVersion(v) => Err(DecodeError::Version(v)),
        StreamOrHead::BadKind(k) => Err(DecodeError::Kind(k)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vectors;
    use proptest::prelude::*;

    #[test]
    fn every_example_round_trips() {
        for (name, bytes) in vectors::all() {
            let again = vectors::reencode(&name, &bytes).expect("decodes");
            assert_eq!(bytes, again, "{name} re-encodes byte-identically");
        }
    }

    #[test]
    fn door_event_fits_in_64_bytes() {
        for u in vectors::door_examples() {
            let bytes = encode_uplink(&u).expect("encodes");
            assert!(
                bytes.len() <= 64,
                "door event is {} bytes: {:?}",
                bytes.len(),
                u
            );
        }
    }

    #[test]
    fn typed_errors() {
        assert_eq!(decode_uplink(&[]), Err(DecodeError::Empty));
        assert!(matches!(
            decode_uplink(&vec![0u8; MAX_PAYLOAD_BYTES + 1]),
            Err(DecodeError::TooLarge { .. })
        ));
        // [2, ...] : version 2
        let mut v2 = encode_uplink(&vectors::door_examples()[0]).expect("encodes");
        v2[1] = 0x02;
        assert_eq!(decode_uplink(&v2), Err(DecodeError::Version(2)));
        // kind 30
        let u = &vectors::door_examples()[0];
        let raw: ciborium::Value =
            ciborium::from_reader(&encode_uplink(u).expect("e")[..]).expect("d");
        let ciborium::Value::Array(mut items) = raw else {
            panic!("array")
        };
        items[5] = ciborium::Value::Integer(30.into());
        let mut buf = Vec::new();
        ciborium::into_writer(&ciborium::Value::Array(items), &mut buf).expect("e");
        assert_eq!(decode_uplink(&buf), Err(DecodeError::Kind(30)));
        let mut trailing = encode_uplink(u).expect("e");
        trailing.push(0);
        assert_eq!(decode_uplink(&trailing), Err(DecodeError::Trailing(1)));
        assert!(matches!(
            decode_uplink(&[0xff, 0x00]),
            Err(DecodeError::Malformed(_))
        ));
    }

    /// Appends `extra` to the array at `path` (indices from the top-level array).
    fn append_at(bytes: &[u8], path: &[usize], extra: ciborium::Value) -> Vec<u8> {
        fn walk(v: &mut ciborium::Value, path: &[usize], extra: ciborium::Value) {
            let ciborium::Value::Array(items) = v else {
                panic!("path leads to a non-array")
            };
            match path.split_first() {
                None => items.push(extra),
                Some((i, rest)) => walk(&mut items[*i], rest, extra),
            }
        }
        let mut v: ciborium::Value = ciborium::from_reader(bytes).expect("decodes");
        walk(&mut v, path, extra);
        let mut out = Vec::new();
        ciborium::into_writer(&v, &mut out).expect("encodes");
        out
    }

    #[test]
    fn appended_fields_are_ignored_at_every_level() {
        let extra = || ciborium::Value::Text("from a newer revision".into());
        for (name, bytes) in vectors::all() {
            let body = if name.starts_with("up-") { 6 } else { 2 };
            let mut paths = vec![vec![], vec![body]];
            if name.starts_with("down-cmd-") {
                paths.push(vec![2, 4]); // the action
            }
            if name == "up-hello" {
                paths.push(vec![6, 2, 0]); // a compartment
            }
            if name == "down-creds" {
                paths.push(vec![2, 1, 0]); // a credential
            }
            for path in paths {
                let longer = append_at(&bytes, &path, extra());
                let again = vectors::reencode(&name, &longer)
                    .unwrap_or_else(|e| panic!("{name} with a field appended at {path:?}: {e}"));
                assert_eq!(
                    again, bytes,
                    "{name}: appended field at {path:?} is dropped"
                );
            }
        }
    }

    #[test]
    fn stream_errors_are_typed() {
        let (_, presence) = vectors::all()
            .into_iter()
            .find(|(n, _)| n == "gw-presence")
            .expect("example exists");
        let mut v2 = presence.clone();
        v2[1] = 0x02;
        assert_eq!(decode_stream(&v2), Err(DecodeError::Version(2)));
        let mut k9 = presence.clone();
        k9[2] = 0x09;
        assert_eq!(decode_stream(&k9), Err(DecodeError::Kind(9)));
        let mut trailing = presence;
        trailing.push(0);
        assert_eq!(decode_stream(&trailing), Err(DecodeError::Trailing(1)));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode_uplink(&bytes);
            let _ = decode_downlink(&bytes);
            let _ = decode_stream(&bytes);
        }

        #[test]
        fn mutated_vectors_never_panic(i in 0usize..64, byte in any::<u8>(), which in 0usize..32) {
            let all = vectors::all();
            let (_, mut bytes) = all[which % all.len()].clone();
            let n = bytes.len();
            bytes[i % n] = byte;
            let _ = decode_uplink(&bytes);
            let _ = decode_downlink(&bytes);
            let _ = decode_stream(&bytes);
        }
    }
}
