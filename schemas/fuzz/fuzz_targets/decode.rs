//! Fuzz target `decode`: arbitrary bytes through every decoder of the Locker Hub codec. Decoding
//! must never panic, and whatever decodes must re-encode to a message that decodes to the same
//! value (and to the same bytes again: encoding is deterministic).

#![no_main]

use libfuzzer_sys::fuzz_target;
use locker_schemas::codec;

fuzz_target!(|data: &[u8]| {
    if let Ok(u) = codec::decode_uplink(data) {
        let bytes = codec::encode_uplink(&u).expect("a decoded uplink encodes");
        let again = codec::decode_uplink(&bytes).expect("a re-encoded uplink decodes");
        assert_eq!(u, again);
        assert_eq!(bytes, codec::encode_uplink(&again).expect("encodes"));
    }
    if let Ok(d) = codec::decode_downlink(data) {
        let bytes = codec::encode_downlink(&d).expect("a decoded downlink encodes");
        let again = codec::decode_downlink(&bytes).expect("a re-encoded downlink decodes");
        assert_eq!(d, again);
        assert_eq!(bytes, codec::encode_downlink(&again).expect("encodes"));
    }
    if let Ok(s) = codec::decode_stream(data) {
        let bytes = codec::encode_stream(&s).expect("a decoded stream message encodes");
        let again = codec::decode_stream(&bytes).expect("a re-encoded stream message decodes");
        assert_eq!(s, again);
        assert_eq!(bytes, codec::encode_stream(&again).expect("encodes"));
    }
});
