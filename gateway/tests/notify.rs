//! Recipient notifications against real receivers started here: an HTTP server (axum on
//! 127.0.0.1:0) standing in for SMS, WhatsApp and push providers, and a real SMTP server
//! (aiosmtpd, `gateway/tests/smtp_server.py`) that requires STARTTLS with a certificate made
//! here and AUTH. Checks what arrives on the wire and how failures are classified.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use locker_gateway::outbound::notify::{Message, Notifier, NotifyConfig, SendError};
use locker_gateway::parcels::model::{Channel, Notice, NoticeKind, Recipient};
use locker_schemas::{CarrierId, OrderId, SiteId};
use tokio::io::AsyncBufReadExt;

const NAME: &str = "Zoë \"Z\" O'Brien & Co <x> 🚀";

fn notice(recipient: Recipient) -> Notice {
    Notice {
        id: 11,
        order: OrderId(ulid::Ulid::from_parts(1_700_000_000_000, 42)),
        kind: NoticeKind::Ready,
        carrier: CarrierId::new("dhl").expect("id"),
        site: SiteId::new("berlin-hbf").expect("id"),
        cabinet: None,
        compartment: None,
        recipient,
        pin: Some("482913".into()),
        qr: Some("QR-abc".into()),
        site_name: "Berlin Hbf".into(),
        address: "Europaplatz 1, 10557 Berlin".into(),
        expires_at: Some(1_796_317_200_000),
        expires_local: Some("2026-12-03 18:00 CET".into()),
        created_at: 1,
    }
}

fn recipient(channel: Channel, language: &str, email: &str) -> Recipient {
    Recipient {
        name: Some(NAME.into()),
        phone: Some("+4915112345678".into()),
        email: Some(email.into()),
        push: Some("push-token-\"1\"".into()),
        channel,
        language: language.into(),
    }
}

fn notifier(toml_src: &str) -> Notifier {
    let cfg: NotifyConfig = toml::from_str(toml_src).expect("config parses");
    Notifier::new(&cfg).unwrap_or_else(|e| panic!("config: {e}"))
}

// ---------------------------------------------------------------------------------------------
// The HTTP receiver.

#[derive(Debug, Clone)]
struct Seen {
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

struct Receiver {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    /// Answers by path: `/sms` 201 with a Twilio-like `sid`, `/json` 202 with a numeric `id`,
    /// `/push` 200, `/500`, `/429` (Retry-After: 7), `/408`, `/400` (with a reason), and
    /// `/slow` never answers.
    async fn start() -> Receiver {
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let s = seen.clone();
        let app = axum::Router::new().fallback(
            move |uri: axum::http::Uri, headers: HeaderMap, body: Bytes| {
                let s = s.clone();
                async move {
                    let path = uri.path().to_owned();
                    s.lock().expect("lock").push(Seen {
                        path: path.clone(),
                        headers,
                        body,
                    });
                    answer(&path).await
                }
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("serve");
        });
        Receiver { addr, seen, task }
    }

    fn take(&self, path: &str) -> Seen {
        let seen = self.seen.lock().expect("lock");
        let hits: Vec<_> = seen.iter().filter(|s| s.path == path).collect();
        assert_eq!(hits.len(), 1, "requests to {path}: {seen:?}");
        hits[0].clone()
    }
}

async fn answer(path: &str) -> Response {
    let json = [("content-type", "application/json")];
    match path {
        "/sms" => (
            StatusCode::CREATED,
            json,
            r#"{"sid": "SM0123", "status": "queued"}"#,
        )
            .into_response(),
        "/json" => (StatusCode::ACCEPTED, json, r#"{"result": {"id": 42}}"#).into_response(),
        "/push" => StatusCode::OK.into_response(),
        "/500" => (StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response(),
        "/429" => (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "7")],
            "slow down",
        )
            .into_response(),
        "/408" => StatusCode::REQUEST_TIMEOUT.into_response(),
        "/400" => (
            StatusCode::BAD_REQUEST,
            json,
            r#"{"message": "The 'To' number is not valid"}"#,
        )
            .into_response(),
        "/slow" => std::future::pending().await,
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

fn http_providers(addr: SocketAddr) -> String {
    format!(
        r#"
qr_link = "https://lockers.example.com/qr/{{{{ qr }}}}"
[providers.twilio]
kind = "http"
url = "http://{addr}/sms"
auth = {{ kind = "basic", username = "AC0123", password = "s3cret:x" }}
content_type = "form"
body = {{ To = "{{{{ to }}}}", From = "+15005550006", Body = "{{{{ text }}}}", Name = "{{{{ name }}}}" }}
message_id = "/sid"
[providers.local]
kind = "http"
url = "http://{addr}/json"
headers = {{ "X-Api-Key" = "k-123" }}
body = '{{"to": {{{{ to }}}}, "name": {{{{ name }}}}, "text": {{{{ text }}}}, "order": {{{{ order }}}}, "lang": {{{{ language }}}}}}'
success = [202]
message_id = "/result/id"
[providers.push]
kind = "http"
url = "http://{addr}/push"
auth = {{ kind = "bearer", token = "push-t0ken" }}
body = {{ token = "{{{{ to }}}}", title = "{{{{ subject }}}}", body = "{{{{ text }}}}" }}
[channels]
sms = "twilio"
whatsapp = "local"
push = "push"
"#
    )
}

#[tokio::test]
async fn http_providers_receive_form_json_and_push_bodies_with_auth_and_escaping() {
    let rx = Receiver::start().await;
    let n = notifier(&http_providers(rx.addr));

    // Twilio-like SMS: form body, basic auth, the message id from the answer.
    let m = n
        .render(&notice(recipient(Channel::Sms, "en", "z@example.com")))
        .expect("render");
    let r = n.send(&m).await.expect("accepted");
    assert_eq!((r.provider.as_str(), r.status.as_str()), ("twilio", "201"));
    assert_eq!(r.message_id.as_deref(), Some("SM0123"));
    let seen = rx.take("/sms");
    let basic = base64::engine::general_purpose::STANDARD.encode("AC0123:s3cret:x");
    assert_eq!(
        seen.headers["authorization"].to_str().expect("ascii"),
        format!("Basic {basic}")
    );
    assert_eq!(
        seen.headers["content-type"],
        "application/x-www-form-urlencoded"
    );
    let form: Vec<(String, String)> = serde_urlencoded::from_bytes(&seen.body).expect("form");
    let field = |k: &str| {
        form.iter()
            .find(|(f, _)| f == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no {k} in {form:?}"))
    };
    assert_eq!(field("To"), "+4915112345678");
    assert_eq!(field("From"), "+15005550006");
    assert_eq!(field("Name"), NAME);
    let text = field("Body");
    for want in [
        "482913",
        "https://lockers.example.com/qr/QR-abc",
        "Berlin Hbf, Europaplatz 1, 10557 Berlin",
        "2026-12-03 18:00 CET",
    ] {
        assert!(text.contains(want), "{want:?} not in {text:?}");
    }

    // A local JSON provider (WhatsApp here), German: every value JSON-escaped.
    let m = n
        .render(&notice(recipient(
            Channel::Whatsapp,
            "de-DE",
            "z@example.com",
        )))
        .expect("render");
    let r = n.send(&m).await.expect("accepted");
    assert_eq!(r.message_id.as_deref(), Some("42"));
    let seen = rx.take("/json");
    assert_eq!(seen.headers["x-api-key"], "k-123");
    assert_eq!(seen.headers["content-type"], "application/json");
    assert!(seen.headers.get("authorization").is_none());
    let v: serde_json::Value = serde_json::from_slice(&seen.body).expect("valid JSON");
    assert_eq!(v["to"], "+4915112345678");
    assert_eq!(v["name"], NAME);
    assert_eq!(v["lang"], "de");
    assert_eq!(v["order"], m.order.to_string());
    assert_eq!(v["text"], m.body.as_str());
    assert!(m.body.starts_with("Ihr Paket liegt bereit"), "{}", m.body);

    // App push: bearer token, the token and title from the message.
    let m = n
        .render(&notice(recipient(Channel::Push, "en", "z@example.com")))
        .expect("render");
    let r = n.send(&m).await.expect("accepted");
    assert_eq!((r.status.as_str(), r.message_id), ("200", None));
    let seen = rx.take("/push");
    assert_eq!(seen.headers["authorization"], "Bearer push-t0ken");
    let v: serde_json::Value = serde_json::from_slice(&seen.body).expect("valid JSON");
    assert_eq!(v["token"], "push-token-\"1\"");
    assert_eq!(v["title"], m.subject.as_deref().expect("title"));
    assert_eq!(v["body"], m.body.as_str());
}

/// A provider at `path` of the receiver, with a short timeout.
fn provider_at(name: &str, url: &str) -> String {
    format!(
        "[providers.{name}]\nkind = \"http\"\nurl = \"{url}\"\nbody = {{ to = \"{{{{ to }}}}\" }}\ntimeout_ms = 500\n"
    )
}

#[tokio::test]
async fn http_failures_are_retryable_or_permanent() {
    let rx = Receiver::start().await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let a = rx.addr;
    let mut src = String::from("[channels]\nsms = \"p500\"\n");
    for (name, url) in [
        ("p500", format!("http://{a}/500")),
        ("p429", format!("http://{a}/429")),
        ("p408", format!("http://{a}/408")),
        ("p400", format!("http://{a}/400")),
        ("p404", format!("http://{a}/nowhere")),
        ("slow", format!("http://{a}/slow")),
        ("closed", format!("http://{closed}/sms")),
    ] {
        src.push_str(&provider_at(name, &url));
    }
    let n = notifier(&src);
    let m = n
        .render(&notice(recipient(Channel::Sms, "en", "z@example.com")))
        .expect("render");
    let send = |provider: &str| {
        let m = Message {
            provider: provider.into(),
            ..m.clone()
        };
        let n = n.clone();
        async move { n.send(&m).await }
    };

    let e = send("p500").await.expect_err("500");
    assert!(e.is_retryable() && e.retry_after().is_none(), "{e:?}");
    assert!(
        e.reason().contains("500") && e.reason().contains("boom"),
        "{e}"
    );

    let e = send("p429").await.expect_err("429");
    assert_eq!(e.retry_after(), Some(Duration::from_secs(7)), "{e:?}");

    let e = send("p408").await.expect_err("408");
    assert!(e.is_retryable(), "{e:?}");

    let e = send("p400").await.expect_err("400");
    assert!(
        matches!(&e, SendError::Permanent { reason } if reason.contains("The 'To' number is not valid")),
        "{e:?}"
    );
    let e = send("p404").await.expect_err("404");
    assert!(!e.is_retryable(), "{e:?}");

    let e = send("slow").await.expect_err("timeout");
    assert!(
        e.is_retryable() && e.reason().contains("timed out after 500 ms"),
        "{e:?}"
    );

    let e = send("closed").await.expect_err("closed port");
    assert!(
        e.is_retryable() && e.reason().contains("cannot connect"),
        "{e:?}"
    );

    // A message whose provider was removed from the configuration since it was rendered.
    let e = send("gone").await.expect_err("gone");
    assert!(!e.is_retryable() && e.reason().contains("gone"), "{e:?}");
}

// ---------------------------------------------------------------------------------------------
// The SMTP server.

/// A Python with aiosmtpd: `$LOCKER_TEST_PYTHON`, `python3`, or the system's.
fn python_with_aiosmtpd() -> PathBuf {
    let candidates: Vec<PathBuf> = std::env::var_os("LOCKER_TEST_PYTHON")
        .map(PathBuf::from)
        .into_iter()
        .chain(["python3".into(), "/usr/bin/python3".into()])
        .collect();
    for p in &candidates {
        let ok = std::process::Command::new(p)
            .args(["-c", "import aiosmtpd"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return p.clone();
        }
    }
    panic!(
        "the e-mail tests need Python's aiosmtpd (tried {candidates:?}): run \
         scripts/install-test-deps.sh (or set LOCKER_TEST_PYTHON to a python3 that has it)"
    );
}

struct SmtpServer {
    port: u16,
    out: PathBuf,
    ca: PathBuf,
    _child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

const SMTP_USER: &str = "notify";
const SMTP_PASSWORD: &str = "p@ss wörd";

impl SmtpServer {
    /// A CA and a certificate for 127.0.0.1 made here; aiosmtpd requiring STARTTLS and AUTH
    /// (`plain`: offering no STARTTLS).
    async fn start(plain: bool) -> SmtpServer {
        let python = python_with_aiosmtpd();
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "notify test CA");
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("CA");
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
            .expect("params")
            .signed_by(&key, &ca)
            .expect("server cert");
        let path = |n: &str| dir.path().join(n);
        std::fs::write(path("ca.pem"), ca.pem()).expect("write");
        std::fs::write(path("cert.pem"), cert.pem()).expect("write");
        std::fs::write(path("key.pem"), key.serialize_pem()).expect("write");
        std::fs::create_dir(path("mail")).expect("mkdir");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/smtp_server.py");
        let mut child = tokio::process::Command::new(python)
            .arg(script)
            .args(["--cert".as_ref(), path("cert.pem").as_os_str()])
            .args(["--key".as_ref(), path("key.pem").as_os_str()])
            .args(["--out".as_ref(), path("mail").as_os_str()])
            .args(["--user", SMTP_USER, "--password", SMTP_PASSWORD])
            .args(plain.then_some("--plain"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start smtp_server.py");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let line = lines
            .next_line()
            .await
            .expect("read")
            .expect("smtp_server.py exited before READY (see its stderr above)");
        let port = line
            .strip_prefix("READY ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        SmtpServer {
            port,
            out: path("mail"),
            ca: path("ca.pem"),
            _child: child,
            _dir: dir,
        }
    }

    /// The decoded messages received so far (headers, a blank line, the text body).
    fn received(&self) -> Vec<String> {
        let mut names: Vec<_> = std::fs::read_dir(&self.out)
            .expect("read dir")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|x| x == "eml"))
            .collect();
        names.sort();
        names
            .iter()
            .map(|p| std::fs::read_to_string(p).expect("read"))
            .collect()
    }

    fn config(&self, extra: &str) -> String {
        format!(
            r#"
[providers.mail]
kind = "smtp"
host = "127.0.0.1"
port = {port}
username = "{SMTP_USER}"
password = "{SMTP_PASSWORD}"
from = "Locker Hub <noreply@lockers.example.com>"
timeout_ms = 20000
{extra}
[channels]
email = "mail"
"#,
            port = self.port,
        )
    }
}

/// The text body of a received message (the server decoded it).
fn decoded_body(raw: &str) -> &str {
    raw.split_once("\r\n\r\n").expect("headers and body").1
}

#[tokio::test]
async fn email_arrives_over_starttls_in_german_and_smtp_refusals_are_classified() {
    let smtp = SmtpServer::start(false).await;
    let n = notifier(&smtp.config(&format!("ca_file = {:?}", smtp.ca)));

    let m = n
        .render(&notice(recipient(
            Channel::Email,
            "de-AT",
            "zoe@example.com",
        )))
        .expect("render");
    assert_eq!((m.channel, m.language.as_str()), (Channel::Email, "de"));
    let r = n.send(&m).await.expect("accepted");
    assert!(r.status.starts_with("250"), "{r:?}");
    let id = r.message_id.expect("Message-ID");

    let got = smtp.received();
    assert_eq!(got.len(), 1, "{got:?}");
    let raw = &got[0];
    assert!(raw.contains("X-Envelope-To: zoe@example.com"), "{raw}");
    assert!(raw.contains("X-Tls: True"), "STARTTLS: {raw}");
    assert!(
        raw.contains(&format!("X-Auth-User: {SMTP_USER}")),
        "AUTH: {raw}"
    );
    assert!(raw.contains(&format!("Message-ID: {id}")), "{raw}");
    assert!(raw.contains("noreply@lockers.example.com>"), "{raw}");
    assert!(
        raw.contains("Subject: Ihr Paket liegt zur Abholung bereit: Berlin Hbf"),
        "{raw}"
    );
    let body = decoded_body(raw);
    for want in [
        &format!("Hallo {NAME},"),
        "Abholcode (PIN): 482913",
        "QR-Code: https://lockers.example.com/qr/QR-abc",
        "Paketstation Berlin Hbf, Europaplatz 1, 10557 Berlin",
        "bis 2026-12-03 18:00 CET (Ortszeit)",
    ] {
        assert!(body.contains(want), "{want:?} not in\n{body}");
    }

    // The server refuses the mailbox (550): permanent. Busy (451): try again.
    let refused = n
        .render(&notice(recipient(
            Channel::Email,
            "en",
            "refused@example.com",
        )))
        .expect("render");
    let e = n.send(&refused).await.expect_err("550");
    assert!(
        matches!(&e, SendError::Permanent { reason } if reason.contains("550")),
        "{e:?}"
    );
    let busy = n
        .render(&notice(recipient(Channel::Email, "en", "busy@example.com")))
        .expect("render");
    let e = n.send(&busy).await.expect_err("451");
    assert!(e.is_retryable() && e.reason().contains("451"), "{e:?}");
    assert_eq!(smtp.received().len(), 1, "nothing else was accepted");

    // Without the test CA the server's certificate is not trusted: no mail, try again later
    // (an operator fixes the CA and the outbox delivers).
    let untrusted = notifier(&smtp.config(""));
    let e = untrusted.send(&m).await.expect_err("untrusted certificate");
    assert!(e.is_retryable(), "{e:?}");
    // A wrong password is refused by the server (535): permanent.
    let wrong = notifier(
        &smtp
            .config(&format!("ca_file = {:?}", smtp.ca))
            .replace(SMTP_PASSWORD, "wrong"),
    );
    let e = wrong.send(&m).await.expect_err("bad credentials");
    assert!(!e.is_retryable() && e.reason().contains("535"), "{e:?}");
    assert_eq!(smtp.received().len(), 1);
}

#[tokio::test]
async fn email_is_never_sent_in_the_clear_to_a_server_without_starttls() {
    let smtp = SmtpServer::start(true).await;
    // `tls` is left out: STARTTLS is required by default.
    let n = notifier(&smtp.config(""));
    let m = n
        .render(&notice(recipient(Channel::Email, "en", "zoe@example.com")))
        .expect("render");
    let e = n.send(&m).await.expect_err("no STARTTLS offered");
    assert!(e.is_retryable() && e.reason().contains("STARTTLS"), "{e:?}");
    assert!(smtp.received().is_empty(), "{:?}", smtp.received());
    // An operator who means a plain local relay says so.
    let n = notifier(&smtp.config("tls = \"none\""));
    n.send(&m).await.expect("sent in the clear, as configured");
    let got = smtp.received();
    assert_eq!(got.len(), 1);
    assert!(got[0].contains("X-Tls: False"), "{}", got[0]);
}
