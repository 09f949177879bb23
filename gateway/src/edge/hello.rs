//! Admission control at the TLS ClientHello: what the edge learns from a client's first bytes
//! before it spends CPU on the handshake, and the count of handshakes in progress.
//!
//! The ClientHello is peeked (not read: rustls reads it afterwards as usual) and parsed with
//! `tls-parser` for the `pre_shared_key` extension, which a client sends when it offers a
//! session ticket, i.e. when it was connected before. [`Admission`] then admits it while fewer
//! than `max_handshakes_in_progress` handshakes run, and a client offering nothing to resume
//! only while fewer than half do: in a reconnect storm the fleet that was online comes back
//! first, on cheap abbreviated handshakes, and a flood of full handshakes cannot crowd it out.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tls_parser::{
    parse_tls_client_hello_extensions, parse_tls_plaintext, TlsExtension, TlsMessage,
    TlsMessageHandshake,
};
use tokio::net::TcpStream;

/// Most bytes looked at (a ClientHello is a few hundred bytes; a larger one is treated as
/// offering nothing to resume).
const PEEK: usize = 4096;
/// Wait between peeks while the ClientHello is still arriving (rare: it fits one segment).
const PEEK_AGAIN: Duration = Duration::from_millis(2);

/// Waits for the client's ClientHello record and tells whether it offers a session to resume.
/// Never consumes a byte. Run it under the hello deadline. `Ok(false)` for anything that does
/// not parse as a TLS ClientHello (rustls will refuse it properly).
pub(super) async fn offers_resumption(tcp: &TcpStream) -> std::io::Result<bool> {
    let mut buf = vec![0u8; PEEK];
    let mut seen = 0;
    loop {
        let n = tcp.peek(&mut buf).await?;
        if n == 0 {
            return Ok(false); // closed: the acceptor reports it
        }
        if let Some(done) = complete(&buf[..n]) {
            return Ok(done && has_psk(&buf[..n]));
        }
        if n == buf.len() {
            return Ok(false);
        }
        if n == seen {
            tokio::time::sleep(PEEK_AGAIN).await;
        }
        seen = n;
    }
}

/// `None` while the first TLS record is incomplete; `Some(true)` when it is a complete
/// handshake record, `Some(false)` when it is not a TLS handshake at all.
fn complete(b: &[u8]) -> Option<bool> {
    if b.len() < 5 {
        return None;
    }
    if b[0] != 0x16 {
        return Some(false);
    }
    let len = usize::from(u16::from_be_bytes([b[3], b[4]]));
    (b.len() >= 5 + len).then_some(true)
}

/// Whether the ClientHello in `b` carries a `pre_shared_key` extension.
fn has_psk(b: &[u8]) -> bool {
    let Ok((_, record)) = parse_tls_plaintext(b) else {
        return false;
    };
    record.msg.iter().any(|m| match m {
        TlsMessage::Handshake(TlsMessageHandshake::ClientHello(ch)) => ch
            .ext
            .and_then(|e| parse_tls_client_hello_extensions(e).ok())
            .is_some_and(|(_, exts)| {
                exts.iter()
                    .any(|x| matches!(x, TlsExtension::PreSharedKey(_)))
            }),
        _ => false,
    })
}

/// Handshakes in progress (from an admitted ClientHello to the end of TLS).
#[derive(Debug, Default)]
pub(crate) struct Admissions {
    running: AtomicUsize,
}

/// One admitted handshake; frees its place on drop.
pub(crate) struct Admission<'a>(&'a AtomicUsize);

impl Admissions {
    /// Admits a handshake if fewer than `max` run (fewer than `max / 2` for a client that
    /// offers nothing to resume); `max == 0` admits all.
    pub fn admit(&self, max: usize, resuming: bool) -> Option<Admission<'_>> {
        let limit = if resuming { max } else { max.div_ceil(2) };
        let before = self.running.fetch_add(1, Ordering::AcqRel);
        if max > 0 && before >= limit {
            self.running.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Admission(&self.running))
    }

    /// Handshakes running now.
    #[cfg(test)]
    pub fn running(&self) -> usize {
        self.running.load(Ordering::Acquire)
    }
}

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// The first flight a rustls client with nothing to resume sends. (A hello that offers a
    /// ticket is tested end to end, `tests/tests/edge_admission.rs`: rustls makes one only
    /// from a real session.)
    fn client_hello() -> Vec<u8> {
        let roots = rustls::RootCertStore::empty();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("gateway").expect("name");
        let mut conn = rustls::ClientConnection::new(Arc::new(cfg), name).expect("client");
        let mut out = Vec::new();
        conn.write_tls(&mut out).expect("hello");
        out
    }

    #[test]
    fn a_plain_client_hello_offers_nothing_and_garbage_is_not_a_hello() {
        let hello = client_hello();
        assert_eq!(complete(&hello), Some(true));
        assert!(!has_psk(&hello));
        assert_eq!(complete(&hello[..3]), None);
        assert_eq!(complete(&hello[..hello.len() - 1]), None);
        assert_eq!(complete(b"GET / HTTP/1.1\r\n"), Some(false));
        assert!(!has_psk(b"\x16\x03\x01\x00\x04garbage"));
    }

    #[test]
    fn resuming_clients_may_use_all_places_others_half() {
        let a = Admissions::default();
        let full: Vec<_> = (0..2).filter_map(|_| a.admit(4, false)).collect();
        assert_eq!(full.len(), 2);
        assert!(a.admit(4, false).is_none(), "full handshakes: half of 4");
        let resumed: Vec<_> = (0..3).filter_map(|_| a.admit(4, true)).collect();
        assert_eq!(resumed.len(), 2, "resuming ones take the rest");
        assert_eq!(a.running(), 4);
        drop(full);
        assert_eq!(a.running(), 2);
        assert!(a.admit(4, false).is_none(), "still 2 of 4 running");
        drop(resumed);
        assert!(a.admit(4, false).is_some());
        assert!(Admissions::default().admit(0, false).is_some(), "0 = off");
    }
}
