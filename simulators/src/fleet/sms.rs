//! The recipients' SMS provider for a fleet run: an HTTP server on 127.0.0.1 standing in for
//! a local SMS gateway. The gateway the fleet starts is configured to deliver its notices
//! there ([`SmsProvider::configure`], a JSON provider for every channel); the receiver keeps
//! each message by notice id, and at the end [`SmsProvider::verify`] checks that every notice
//! of the run reached it once with its pickup code in the text.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use locker_gateway::config::GatewayConfig;
use serde::Deserialize;
use serde_json::Value;

use super::api::{Api, ApiError};

/// One message as the provider received it.
#[derive(Debug, Clone, Deserialize)]
pub struct Sms {
    pub notice: u64,
    pub order: String,
    pub to: String,
    pub text: String,
    pub kind: String,
}

#[derive(Default)]
struct Got {
    by_notice: Mutex<HashMap<u64, Sms>>,
    requests: AtomicU64,
    duplicates: AtomicU64,
}

/// The provider.
pub struct SmsProvider {
    addr: SocketAddr,
    got: Arc<Got>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for SmsProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SmsProvider({})", self.addr)
    }
}

impl Drop for SmsProvider {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn take(State(g): State<Arc<Got>>, Json(m): Json<Sms>) -> StatusCode {
    g.requests.fetch_add(1, Ordering::Relaxed);
    let mut by = g.by_notice.lock().unwrap_or_else(PoisonError::into_inner);
    if by.insert(m.notice, m).is_some() {
        g.duplicates.fetch_add(1, Ordering::Relaxed);
    }
    StatusCode::ACCEPTED
}

/// What the run's notices came to.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SmsSummary {
    /// Notices of the run (in the gateway's outbox).
    pub notices: u64,
    /// Of them, received by the provider.
    pub received: u64,
    /// Requests for a notice already received (redeliveries).
    pub duplicates: u64,
    /// Messages whose text lacked the notice's pickup code.
    pub wrong_code: u64,
    /// Why nothing was checked, if so.
    pub note: String,
}

impl std::fmt::Display for SmsSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if !self.note.is_empty() {
            return write!(f, "  notifications: not checked ({})", self.note);
        }
        write!(
            f,
            "  notifications (the gateway's outbox to the fleet's SMS provider): {} of {} notices delivered, {} redeliveries, {} without their pickup code",
            self.received, self.notices, self.duplicates, self.wrong_code
        )
    }
}

impl SmsProvider {
    /// Starts the provider on 127.0.0.1:0.
    pub async fn start() -> std::io::Result<Self> {
        let got = Arc::new(Got::default());
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let addr = listener.local_addr()?;
        let app = Router::new()
            .route("/sms", post(take))
            .with_state(got.clone());
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::warn!(error = %e, "SMS provider stopped");
            }
        });
        Ok(Self { addr, got, task })
    }

    /// Delivers the gateway's notices here, on every channel.
    pub fn configure(&self, cfg: &mut GatewayConfig) -> Result<(), String> {
        let url = format!("http://{}/sms", self.addr);
        cfg.notifications = toml::from_str(&format!(
            r#"
            enabled = true
            qr_link = "https://lockers.example.com/qr/{{{{ qr }}}}"
            [channels]
            sms = "fleet-sms"
            whatsapp = "fleet-sms"
            push = "fleet-sms"
            email = "fleet-sms"
            [providers.fleet-sms]
            kind = "http"
            url = "{url}"
            body = '{{"notice": {{{{ notice }}}}, "order": {{{{ order }}}}, "to": {{{{ to }}}}, "text": {{{{ text }}}}, "kind": {{{{ kind }}}}}}'
            "#
        ))
        .map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Messages received (first occurrences).
    pub fn received(&self) -> u64 {
        self.got
            .by_notice
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len() as u64
    }

    /// Waits (at most `limit`) until every notice after `after` reached the provider, then
    /// checks each carried its pickup code.
    pub async fn verify(
        &self,
        api: &Api,
        after: u64,
        limit: Duration,
        mut problem: impl FnMut(String),
    ) -> SmsSummary {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notices = match notices_after(api, after).await {
                Ok(n) => n,
                Err(e) => {
                    problem(format!("notifications not checked: {e}"));
                    return SmsSummary {
                        note: e.to_string(),
                        ..Default::default()
                    };
                }
            };
            let by = self
                .got
                .by_notice
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            let missing = notices
                .iter()
                .filter(|n| !by.contains_key(&n["id"].as_u64().unwrap_or(0)))
                .count();
            if missing > 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            }
            let mut s = SmsSummary {
                notices: notices.len() as u64,
                duplicates: self.got.duplicates.load(Ordering::Relaxed),
                ..Default::default()
            };
            for n in &notices {
                let id = n["id"].as_u64().unwrap_or(0);
                match by.get(&id) {
                    None => problem(format!(
                        "notice {id} ({} for order {}) never reached the SMS provider",
                        n["kind"], n["order"]
                    )),
                    Some(m) => {
                        s.received += 1;
                        if let Some(pin) = n["pin"].as_str() {
                            if !m.text.contains(pin) {
                                s.wrong_code += 1;
                                problem(format!(
                                    "notice {id}: the message to {} lacks its code",
                                    m.to
                                ));
                            }
                        }
                    }
                }
            }
            return s;
        }
    }
}

/// The outbox's notices with an id above `after`, oldest first.
pub async fn notices_after(api: &Api, mut after: u64) -> Result<Vec<Value>, ApiError> {
    let mut out = Vec::new();
    loop {
        let v = api
            .get(&format!("/v1/notifications?after={after}&limit=1000"))
            .await?;
        let page = v["notifications"].as_array().cloned().unwrap_or_default();
        if page.is_empty() {
            return Ok(out);
        }
        after = v["next_after"].as_u64().unwrap_or(after);
        out.extend(page);
    }
}

/// The id of the newest notice (where a run's own notices start).
pub async fn last_notice(api: &Api) -> Result<u64, ApiError> {
    Ok(notices_after(api, 0)
        .await?
        .last()
        .and_then(|n| n["id"].as_u64())
        .unwrap_or(0))
}
