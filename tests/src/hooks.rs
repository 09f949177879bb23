//! A real webhook receiver for end-to-end tests: an HTTP server on 127.0.0.1 that records
//! every request (headers and body) and answers as the test tells it (200, an error status,
//! or not at all until released: a hung receiver); and the check of its signatures with a
//! stock implementation, Python's `hmac`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use base64::Engine;
use serde_json::Value;
use tokio::sync::watch;

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Hook {
    pub path: String,
    pub id: String,
    pub timestamp: String,
    pub signature: String,
    pub content_type: String,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Hook {
    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// How the receiver answers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// 200 to everything.
    Up,
    /// This status to everything.
    Status(u16),
    /// Holds every request open until the mode changes.
    Hang,
}

#[derive(Clone)]
struct Shared {
    got: Arc<Mutex<Vec<Hook>>>,
    mode: watch::Receiver<Mode>,
}

/// The receiver.
pub struct Receiver {
    pub addr: SocketAddr,
    got: Arc<Mutex<Vec<Hook>>>,
    mode: watch::Sender<Mode>,
    task: tokio::task::JoinHandle<()>,
}

async fn take(
    State(s): State<Shared>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let h = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let hook = Hook {
        path: uri.path().to_owned(),
        id: h("webhook-id"),
        timestamp: h("webhook-timestamp"),
        signature: h("webhook-signature"),
        content_type: h("content-type"),
        headers: headers.clone(),
        body: body.to_vec(),
    };
    let mut mode = s.mode.clone();
    loop {
        let m = *mode.borrow_and_update();
        match m {
            Mode::Up => {
                s.got.lock().expect("lock").push(hook);
                return StatusCode::OK;
            }
            Mode::Status(c) => {
                return StatusCode::from_u16(c).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
            }
            Mode::Hang => {
                if mode.changed().await.is_err() {
                    return StatusCode::SERVICE_UNAVAILABLE;
                }
            }
        }
    }
}

impl Receiver {
    /// Starts a receiver answering 200.
    pub async fn start() -> Self {
        let (mode, rx) = watch::channel(Mode::Up);
        let got = Arc::new(Mutex::new(Vec::new()));
        let app = Router::new().fallback(post(take)).with_state(Shared {
            got: got.clone(),
            mode: rx,
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            addr,
            got,
            mode,
            task,
        }
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn set(&self, m: Mode) {
        let _ = self.mode.send(m);
    }

    /// Requests accepted (answered 200) so far, in arrival order.
    pub fn hooks(&self) -> Vec<Hook> {
        self.got.lock().expect("lock").clone()
    }

    /// Accepted requests to one path.
    pub fn hooks_to(&self, path: &str) -> Vec<Hook> {
        self.hooks()
            .into_iter()
            .filter(|h| h.path == path)
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Checks every hook's `webhook-signature` with Python's `hmac` (the stock implementation a
/// receiver would use): at least one `v1,` entry must equal base64(HMAC-SHA256(key,
/// `id.timestamp.body`)) with the key from `whsec_<base64>`. Returns the ids that failed.
pub fn python_rejects(secret: &str, hooks: &[Hook]) -> Vec<String> {
    use std::io::Write;
    const SCRIPT: &str = r#"
import base64, hashlib, hmac, json, sys
bad = []
for line in sys.stdin:
    h = json.loads(line)
    key = base64.b64decode(h["secret"].split("_", 1)[1])
    body = base64.b64decode(h["body"])
    msg = h["id"].encode() + b"." + h["ts"].encode() + b"." + body
    want = base64.b64encode(hmac.new(key, msg, hashlib.sha256).digest()).decode()
    sigs = [s.split(",", 1)[1] for s in h["sig"].split(" ") if s.startswith("v1,")]
    if not any(hmac.compare_digest(want, s) for s in sigs):
        bad.append(h["id"])
print(json.dumps(bad))
"#;
    let mut child = std::process::Command::new("python3")
        .args(["-c", SCRIPT])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 (scripts/install-test-deps.sh installs it)");
    {
        let mut stdin = child.stdin.take().expect("stdin");
        for h in hooks {
            let line = serde_json::json!({
                "secret": secret,
                "id": h.id,
                "ts": h.timestamp,
                "sig": h.signature,
                "body": base64::engine::general_purpose::STANDARD.encode(&h.body),
            });
            writeln!(stdin, "{line}").expect("write");
        }
    }
    let out = child.wait_with_output().expect("python3 output");
    assert!(out.status.success(), "python3 failed");
    serde_json::from_slice(&out.stdout).expect("python3 answer")
}
