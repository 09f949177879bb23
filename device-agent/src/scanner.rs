//! Scanner and keypad input sources: lines from stdin, from a serial device (or any file) read
//! line by line, or from TCP clients (the simulator's scanners). Each non-empty line is one
//! scan; an optional prefix `qr:`, `bar:`, `rfid:` or `pin:` selects the source (default keypad).
//!
//! TCP clients get one reply line per scan: `ok <seq>` once the Scan event is durably stored
//! (followed by ` pickup <compartment>` or ` deposit` when a cached credential matched), or
//! `err <reason>`.

use locker_schemas::ScanSource;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::task::JoinHandle;

use crate::agent::{Access, ScanSender};
use crate::config::{ScannerConfig, ScannerKind};

/// Longest accepted line; longer lines are refused.
pub const MAX_LINE: usize = 512;

/// Parses one input line into a scan.
pub fn parse_line(line: &str) -> Option<(ScanSource, String)> {
    let line = line.trim();
    if line.is_empty() || line.len() > MAX_LINE {
        return None;
    }
    let (source, value) = match line.split_once(':') {
        Some(("qr", v)) => (ScanSource::Qr, v),
        Some(("bar", v)) => (ScanSource::Barcode, v),
        Some(("rfid", v)) => (ScanSource::Rfid, v),
        Some(("pin", v)) => (ScanSource::Keypad, v),
        _ => (ScanSource::Keypad, line),
    };
    let value = value.trim();
    (!value.is_empty()).then(|| (source, value.to_owned()))
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
                if let Some((source, value)) = parse_line(&line) {
                    if let Err(e) = scans.scan(source, value).await {
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
                    None => "err empty or too long\n".to_owned(),
                    Some((source, value)) => match scans.scan(source, value).await {
                        Ok(r) => {
                            let seq = r.seq.map_or("-".to_owned(), |s| s.to_string());
                            match r.access {
                                Access::Pickup(c) => format!("ok {seq} pickup {c}\n"),
                                Access::Deposit => format!("ok {seq} deposit\n"),
                                Access::None => format!("ok {seq}\n"),
                            }
                        }
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

    #[test]
    fn prefixes_select_the_source() {
        assert_eq!(parse_line("qr:ABC"), Some((ScanSource::Qr, "ABC".into())));
        assert_eq!(
            parse_line("bar:123\r"),
            Some((ScanSource::Barcode, "123".into()))
        );
        assert_eq!(parse_line("rfid:77"), Some((ScanSource::Rfid, "77".into())));
        assert_eq!(
            parse_line("pin:1234"),
            Some((ScanSource::Keypad, "1234".into()))
        );
        assert_eq!(
            parse_line(" 4321 "),
            Some((ScanSource::Keypad, "4321".into()))
        );
        assert_eq!(parse_line("x:y"), Some((ScanSource::Keypad, "x:y".into())));
        assert_eq!(parse_line("   "), None);
        assert_eq!(parse_line("qr:"), None);
        assert_eq!(parse_line(&"9".repeat(MAX_LINE + 1)), None);
    }
}
