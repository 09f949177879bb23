//! One HTTP delivery: a webhook (JSON body signed as Standard Webhooks defines) or a carrier's
//! tracking update (the carrier's shape, its headers, signed when it has a secret). Returns
//! what happened in the terms the outbox retries on.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER, USER_AGENT};

use super::sign;

/// What became of one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Sent {
    /// 2xx.
    Delivered { status: u16, took: Duration },
    /// Worth another try (connect error, timeout, 408, 429, 5xx, another 4xx: a receiver
    /// being deployed answers 404 for a while).
    Retry {
        reason: String,
        retry_after: Option<Duration>,
        took: Duration,
    },
    /// 410 Gone: the receiver asks to be forgotten (the subscription is disabled).
    Gone { took: Duration },
    /// Refused for good (a notification provider's 4xx, an SMTP 5xx): no retry, a dead letter.
    Refused { reason: String, took: Duration },
}

/// A request to make.
pub struct Request<'a> {
    pub url: &'a str,
    pub event_id: &'a str,
    pub body: Vec<u8>,
    pub content_type: &'a str,
    /// Secrets to sign with (none: unsigned).
    pub secrets: Vec<&'a str>,
    pub headers: &'a BTreeMap<String, String>,
}

/// The shared HTTP client.
#[derive(Clone)]
pub struct Http {
    client: reqwest::Client,
}

/// Why the client could not be built.
#[derive(Debug, thiserror::Error)]
#[error("webhook HTTP client: {0}")]
pub struct HttpError(#[from] reqwest::Error);

impl Http {
    pub fn new(timeout: Duration) -> Result<Self, HttpError> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            // a receiver answers where it was asked; a redirect is an error to fix there
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(16)
            .build()?;
        Ok(Self { client })
    }

    /// Sends one request.
    pub async fn send(&self, r: Request<'_>) -> Sent {
        let started = Instant::now();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut h = HeaderMap::new();
        h.insert(USER_AGENT, HeaderValue::from_static("LockerHub-Webhooks/1"));
        if let Ok(v) = HeaderValue::from_str(r.content_type) {
            h.insert(CONTENT_TYPE, v);
        }
        for (k, v) in r.headers {
            if let (Ok(k), Ok(v)) = (
                HeaderName::from_bytes(k.as_bytes()),
                HeaderValue::from_str(v),
            ) {
                h.insert(k, v);
            }
        }
        let id = HeaderValue::from_str(r.event_id).unwrap_or(HeaderValue::from_static(""));
        h.insert("webhook-id", id.clone());
        h.insert("idempotency-key", id);
        h.insert("webhook-timestamp", HeaderValue::from(now));
        if !r.secrets.is_empty() {
            let sig = sign::header(&r.secrets, r.event_id, now, &r.body);
            if let Ok(v) = HeaderValue::from_str(&sig) {
                h.insert("webhook-signature", v);
            }
        }
        let resp = self.client.post(r.url).headers(h).body(r.body).send().await;
        let took = started.elapsed();
        match resp {
            Ok(resp) => {
                let status = resp.status();
                if status.is_success() {
                    return Sent::Delivered {
                        status: status.as_u16(),
                        took,
                    };
                }
                if status == reqwest::StatusCode::GONE {
                    return Sent::Gone { took };
                }
                let retry_after = resp
                    .headers()
                    .get(RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                Sent::Retry {
                    reason: format!("HTTP {}", status.as_u16()),
                    retry_after,
                    took,
                }
            }
            Err(e) => {
                let reason = if e.is_timeout() {
                    "timeout".to_owned()
                } else if e.is_connect() {
                    "connection refused or unreachable".to_owned()
                } else {
                    e.to_string()
                };
                Sent::Retry {
                    reason,
                    retry_after: None,
                    took,
                }
            }
        }
    }
}
