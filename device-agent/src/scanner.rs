//! Scanner and keypad input sources: lines from stdin, from a serial device (or any file) read
//! line by line, or from TCP clients (the simulator's scanners). Each non-empty line is one
//! scan; an optional prefix `qr:`, `bar:`, `rfid:` or `pin:` selects the source (default
//! keypad). A line `key:<name>` is a key press (`bigger`, `collect`, `s`, `m`, `l`, `xl`,
//! `logout`, any case), not a scan.
//!
//! TCP clients get one reply line per input: `ok <seq>` once the Scan event is durably stored
//! (`-` for a key, which is not a Scan event), followed by what happened (` pickup <c>`,
//! ` courier <ref>`, ` deposit <c>`, ` collect <c>`, ` parcel noted`, ` logout`), or
//! `err <reason>` when the agent refused it (`err locked`, `err wrong carrier`, ...; see
//! [`crate::agent::Refusal`]).

use locker_schemas::ScanSource;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::task::JoinHandle;

use crate::agent::{Access, Key, ScanReply, ScanSender};
use crate::config::{ScannerConfig, ScannerKind};

/// Longest accepted line; longer lines are refused.
pub const MAX_LINE: usize = 512;

/// One line of scanner input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A scan or keypad entry.
    Scan(ScanSource, String),
    /// A key press (`key:<name>`).
    Key(Key),
}

impl Input {
    /// Hands the input to the agent.
    pub async fn send(self, scans: &ScanSender) -> Result<ScanReply, crate::agent::AgentError> {
        match self {
            Input::Scan(source, value) => scans.scan(source, value).await,
            Input::Key(k) => scans.key(k).await,
        }
    }
}

/// The reply line for a TCP scanner client (with its newline).
pub fn reply_line(r: &ScanReply) -> String {
    let seq = r.seq.map_or("-".to_owned(), |s| s.to_string());
    match &r.access {
        Access::None => format!("ok {seq}\n"),
        Access::Pickup(c) => format!("ok {seq} pickup {c}\n"),
        Access::Deposit => format!("ok {seq} deposit\n"),
        Access::SignedIn(courier) => format!("ok {seq} courier {courier}\n"),
        Access::DepositInto(c) => format!("ok {seq} deposit {c}\n"),
        Access::Collect(c) => format!("ok {seq} collect {c}\n"),
        Access::ParcelNoted => format!("ok {seq} parcel noted\n"),
        Access::SignedOut => format!("ok {seq} logout\n"),
        Access::Refused(why) => format!("err {why}\n"),
    }
}

/// Parses one input line: `None` if it is empty, too long, or names an unknown key.
pub fn parse_line(line: &str) -> Option<Input> {
    let line = line.trim();
    if line.is_empty() || line.len() > MAX_LINE {
        return None;
    }
    if let Some(("key", name)) = line.split_once(':') {
        return Key::parse(name).map(Input::Key);
    }
    let (source, value) = match line.split_once(':') {
        Some(("qr", v)) => (ScanSource::Qr, v),
        Some(("bar", v)) => (ScanSource::Barcode, v),
        Some(("rfid", v)) => (ScanSource::Rfid, v),
        Some(("pin", v)) => (ScanSource::Keypad, v),
        _ => (ScanSource::Keypad, line),
    };
    let value = value.trim();
    (!value.is_empty()).then(|| Input::Scan(source, value.to_owned()))
}

/// Starts the configured input source, if any.
pub fn spawn(cfg: &ScannerConfig, scans: ScanSender) -> Option<JoinHandle<()>> {
    match cfg.kind {
        ScannerKind::None => None,
        ScannerKind::Stdin => Some(tokio::spawn(read_lines(tokio::io::stdin(), scans))),
        ScannerKind::Serial => {
            let path = cfg.path.clone();
            Some(tokio::spawn(async move {
                loop {
                    match tokio::fs::File::open(&path).await {
                        Ok(f) => read_lines(f, scans.clone()).await,
                        Err(e) => {
                            tracing::warn!(path = %path.display(), error = %e, "scanner device unavailable")
                        }
                    }
                    if scans.is_closed() {
                        return;
                    }
                    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                }
            }))
        }
        ScannerKind::Tcp => {
            let addr = cfg.listen.clone();
            Some(tokio::spawn(async move {
                match tokio::net::TcpListener::bind(&addr).await {
                    Ok(l) => serve_tcp(l, scans).await,
                    Err(e) => tracing::error!(%addr, error = %e, "cannot listen for scanners"),
                }
            }))
        }
    }
}

async fn read_lines<R: AsyncRead + Unpin>(r: R, scans: ScanSender) {
    let mut lines = BufReader::new(r).lines();
    loop {
        match lines.next_line().await {
            Ok(Some(line)) => {
                if let Some(input) = parse_line(&line) {
                    if let Err(e) = input.send(&scans).await {
                        tracing::warn!(error = %e, "scan not handled");
                        if scans.is_closed() {
                            return;
                        }
                    }
                }
            }
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "scanner input failed");
                return;
            }
        }
    }
}

/// Serves scanner clients on an already bound listener (one task per client).
pub async fn serve_tcp(listener: tokio::net::TcpListener, scans: ScanSender) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "scanner accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        if scans.is_closed() {
            return;
        }
        let scans = scans.clone();
        tokio::spawn(async move {
            let (r, mut w) = stream.into_split();
            let mut lines = BufReader::new(r).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let reply = match parse_line(&line) {
                    None => "err empty, too long or unknown key\n".to_owned(),
                    Some(input) => match input.send(&scans).await {
                        Ok(r) => reply_line(&r),
                        Err(e) => format!("err {e}\n"),
                    },
                };
                if w.write_all(reply.as_bytes()).await.is_err() {
                    break;
                }
            }
            tracing::debug!(%peer, "scanner client left");
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(source: ScanSource, v: &str) -> Option<Input> {
        Some(Input::Scan(source, v.into()))
    }

    #[test]
    fn prefixes_select_the_source() {
        assert_eq!(parse_line("qr:ABC"), scan(ScanSource::Qr, "ABC"));
        assert_eq!(parse_line("bar:123\r"), scan(ScanSource::Barcode, "123"));
        assert_eq!(parse_line("rfid:77"), scan(ScanSource::Rfid, "77"));
        assert_eq!(parse_line("pin:1234"), scan(ScanSource::Keypad, "1234"));
        assert_eq!(parse_line(" 4321 "), scan(ScanSource::Keypad, "4321"));
        assert_eq!(parse_line("x:y"), scan(ScanSource::Keypad, "x:y"));
        assert_eq!(parse_line("   "), None);
        assert_eq!(parse_line("qr:"), None);
        assert_eq!(parse_line(&"9".repeat(MAX_LINE + 1)), None);
    }

    #[test]
    fn key_lines_are_keys() {
        use locker_schemas::Size;
        assert_eq!(parse_line("key:bigger"), Some(Input::Key(Key::Bigger)));
        assert_eq!(parse_line("key:collect"), Some(Input::Key(Key::Collect)));
        assert_eq!(parse_line("key:logout"), Some(Input::Key(Key::Logout)));
        assert_eq!(parse_line("key:S"), Some(Input::Key(Key::Size(Size::S))));
        assert_eq!(parse_line("key:m"), Some(Input::Key(Key::Size(Size::M))));
        assert_eq!(parse_line("key:L"), Some(Input::Key(Key::Size(Size::L))));
        assert_eq!(parse_line("key:XL"), Some(Input::Key(Key::Size(Size::Xl))));
        assert_eq!(parse_line("key:open-all"), None);
    }

    #[test]
    fn replies_say_what_happened() {
        use crate::agent::Refusal;
        use locker_schemas::CompartmentId;
        let r = |seq, access| reply_line(&ScanReply { seq, access });
        assert_eq!(
            r(Some(3), Access::SignedIn("C-1".into())),
            "ok 3 courier C-1\n"
        );
        assert_eq!(
            r(Some(4), Access::DepositInto(CompartmentId(7))),
            "ok 4 deposit 7\n"
        );
        assert_eq!(
            r(None, Access::Collect(CompartmentId(2))),
            "ok - collect 2\n"
        );
        assert_eq!(r(Some(5), Access::Refused(Refusal::Locked)), "err locked\n");
        assert_eq!(
            r(Some(6), Access::Refused(Refusal::WrongCarrier)),
            "err wrong carrier\n"
        );
    }
}
