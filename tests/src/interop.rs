//! Stock MQTT clients against the edge, as integrators run them: Debian's `mosquitto_sub` and
//! `mosquitto_pub` (mosquitto-clients) and Python `paho-mqtt` (`tests/interop/mqtt_client.py`),
//! in MQTT 5 and 3.1.1, as child processes of the test (killed when dropped), with the
//! fixture's CA, certificate and key written to PEM files ([`Creds`]).
//!
//! The stock clients verify the server certificate for real: they connect to `127.0.0.1`,
//! which the test PKI's server certificate carries as an IP subjectAltName (no `--insecure`).
//! `scripts/install-test-deps.sh` installs both.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use locker_broker_config::pki::IssuedCert;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};

use crate::edge::EdgeFixture;
use crate::wait::DEADLINE;

/// The MQTT version a stock client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V311,
    V5,
}

impl Version {
    /// mosquitto's `-V` argument.
    pub fn mosquitto(self) -> &'static str {
        match self {
            Version::V311 => "mqttv311",
            Version::V5 => "mqttv5",
        }
    }

    /// `mqtt_client.py`'s `--version` argument.
    pub fn paho(self) -> &'static str {
        match self {
            Version::V311 => "311",
            Version::V5 => "5",
        }
    }
}

/// The CA certificate, a client certificate and its key as PEM files in a temp dir.
pub struct Creds {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    _dir: tempfile::TempDir,
}

impl Creds {
    /// Writes the fixture's CA and `cert` (with its key) to a new temp dir.
    pub fn new(fx: &EdgeFixture, cert: &IssuedCert) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let (ca, c, key) = (
            dir.path().join("ca.pem"),
            dir.path().join("client.pem"),
            dir.path().join("client.key"),
        );
        std::fs::write(&ca, fx.ca_pem()).expect("write CA");
        std::fs::write(&c, &cert.cert_pem).expect("write certificate");
        std::fs::write(&key, &cert.key_pem).expect("write key");
        Self {
            ca,
            cert: c,
            key,
            _dir: dir,
        }
    }

    fn mosquitto_args(&self, cmd: &mut Command, fx: &EdgeFixture, v: Version) {
        cmd.arg("--cafile")
            .arg(&self.ca)
            .arg("--cert")
            .arg(&self.cert)
            .arg("--key")
            .arg(&self.key)
            .args(["-h", "127.0.0.1", "-p", &fx.addr.port().to_string()])
            .args(["-V", v.mosquitto()]);
    }
}

/// A stock client running as a child process: its stdout lines and stderr as they come.
/// Killed when dropped.
pub struct Stock {
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    readers: Vec<tokio::task::JoinHandle<()>>,
    what: String,
}

impl Stock {
    /// Starts `cmd` with its output captured line by line.
    pub fn spawn(mut cmd: Command, what: &str) -> Self {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("{what}: {e} (scripts/install-test-deps.sh installs it)"));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            collect(child.stdout.take().expect("stdout"), stdout.clone()),
            collect(child.stderr.take().expect("stderr"), stderr.clone()),
        ];
        Self {
            child,
            stdout,
            stderr,
            readers,
            what: what.to_owned(),
        }
    }

    /// The stdout lines so far.
    pub fn lines(&self) -> Vec<String> {
        self.stdout.lock().expect("lock").clone()
    }

    /// The stderr text so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("lock").join("\n")
    }

    /// Everything printed so far (stdout then stderr), for failure messages.
    pub fn output(&self) -> String {
        format!(
            "{}: stdout:\n{}\nstderr:\n{}",
            self.what,
            self.lines().join("\n"),
            self.stderr()
        )
    }

    /// The stdout lines parsed as JSON (paho's events; other lines skipped).
    pub fn events(&self) -> Vec<Value> {
        self.lines()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The events of one kind (`connack`, `suback`, `message`, `disconnect`, ...).
    pub fn events_of(&self, kind: &str) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| e["event"] == kind)
            .collect()
    }

    /// paho's messages as (topic, payload).
    pub fn messages(&self) -> Vec<(String, Vec<u8>)> {
        self.events_of("message")
            .iter()
            .map(|m| {
                let topic = m["topic"].as_str().unwrap_or_default().to_owned();
                let hex = m["payload_hex"].as_str().unwrap_or_default();
                (topic, from_hex(hex))
            })
            .collect()
    }

    /// The exit status if the process has ended.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits (bounded) for the process to end; panics with its output if it does not.
    pub async fn wait_exit(&mut self) -> std::process::ExitStatus {
        match tokio::time::timeout(DEADLINE, self.child.wait()).await {
            Ok(Ok(s)) => {
                // The readers end at EOF: then every line is in.
                for r in self.readers.drain(..) {
                    let _ = tokio::time::timeout(DEADLINE, r).await;
                }
                s
            }
            _ => panic!("did not exit in time: {}", self.output()),
        }
    }

    /// Kills the process (SIGKILL) and reaps it.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }
}

impl Drop for Stock {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        for r in &self.readers {
            r.abort();
        }
    }
}

fn collect(
    stream: impl AsyncRead + Unpin + Send + 'static,
    into: Arc<Mutex<Vec<String>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(l)) = lines.next_line().await {
            into.lock().expect("lock").push(l);
        }
    })
}

fn from_hex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .filter_map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok())
        .collect()
}

/// `mosquitto_sub` on `filters` at QoS 1, printing `topic payload` per message (`-F '%t %p'`),
/// ending after `count` messages (`-C`, 0: no limit) or `timeout_s` seconds (`-W`); `extra`
/// arguments appended (e.g. `-i`, `--will-topic`).
pub fn mosquitto_sub(
    fx: &EdgeFixture,
    creds: &Creds,
    v: Version,
    filters: &[&str],
    count: usize,
    timeout_s: u64,
    extra: &[&str],
) -> Stock {
    // Line-buffered stdout (coreutils' stdbuf): its `-d` lines (SUBACK) come as they happen,
    // not at exit (mosquitto_sub flushes only its message lines itself).
    let mut cmd = Command::new("stdbuf");
    cmd.args(["-oL", "mosquitto_sub"]);
    creds.mosquitto_args(&mut cmd, fx, v);
    cmd.args(["-q", "1", "-F", "%t %p", "-W", &timeout_s.to_string()]);
    if count > 0 {
        cmd.args(["-C", &count.to_string()]);
    }
    for f in filters {
        cmd.args(["-t", f]);
    }
    cmd.args(extra);
    Stock::spawn(cmd, "mosquitto_sub")
}

/// `mosquitto_pub` of `payload` on `topic` at QoS 1 (`-d`: it prints what it receives).
pub fn mosquitto_pub(
    fx: &EdgeFixture,
    creds: &Creds,
    v: Version,
    topic: &str,
    payload: &str,
) -> Stock {
    let mut cmd = Command::new("mosquitto_pub");
    creds.mosquitto_args(&mut cmd, fx, v);
    cmd.args(["-q", "1", "-d", "-t", topic, "-m", payload]);
    Stock::spawn(cmd, "mosquitto_pub")
}

/// `mosquitto_sub` lines (`topic payload`) as (topic, payload).
pub fn sub_messages(s: &Stock) -> Vec<(String, String)> {
    s.lines()
        .iter()
        .filter_map(|l| l.split_once(' '))
        .map(|(t, p)| (t.to_owned(), p.to_owned()))
        .collect()
}

/// The Python interpreter with paho: `$PYTHON`, else `python3` on PATH if it has paho, else
/// Debian's `/usr/bin/python3` (where `python3-paho-mqtt` installs it).
pub fn python() -> String {
    if let Ok(p) = std::env::var("PYTHON") {
        return p;
    }
    let has_paho = |py: &str| {
        std::process::Command::new(py)
            .args(["-c", "import paho.mqtt.client"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    if has_paho("python3") {
        "python3".into()
    } else {
        "/usr/bin/python3".into()
    }
}

/// Options of a paho client ([`paho`]).
#[derive(Debug, Clone)]
pub struct PahoOpts {
    pub version: Version,
    pub client_id: String,
    pub filters: Vec<String>,
    pub qos: u8,
    /// Exit after this many messages (0: never).
    pub count: usize,
    pub timeout_s: u64,
    pub session_expiry: Option<u32>,
    pub clean: bool,
}

impl PahoOpts {
    pub fn new(version: Version, filters: &[&str]) -> Self {
        Self {
            version,
            client_id: String::new(),
            filters: filters.iter().map(|f| (*f).to_owned()).collect(),
            qos: 1,
            count: 0,
            timeout_s: DEADLINE.as_secs(),
            session_expiry: None,
            clean: true,
        }
    }
}

/// Runs `tests/interop/mqtt_client.py` (paho) with `o`; one JSON line per event.
pub fn paho(fx: &EdgeFixture, creds: &Creds, o: &PahoOpts) -> Stock {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/interop/mqtt_client.py");
    let mut cmd = Command::new(python());
    cmd.arg(script)
        .args(["--port", &fx.addr.port().to_string()])
        .arg("--cafile")
        .arg(&creds.ca)
        .arg("--cert")
        .arg(&creds.cert)
        .arg("--key")
        .arg(&creds.key)
        .args(["--version", o.version.paho()])
        .args(["--client-id", &o.client_id])
        .args(["--qos", &o.qos.to_string()])
        .args(["--count", &o.count.to_string()])
        .args(["--timeout", &o.timeout_s.to_string()])
        .args(["--clean", if o.clean { "1" } else { "0" }]);
    for f in &o.filters {
        cmd.args(["--sub", f]);
    }
    if let Some(s) = o.session_expiry {
        cmd.args(["--session-expiry", &s.to_string()]);
    }
    Stock::spawn(cmd, "paho")
}
