//! HTTP providers: SMS and WhatsApp gateways (a Twilio-like form API or a local JSON one) and
//! app push endpoints. Renders the provider's URL and body from a [`Message`], sends it with
//! the provider's auth and timeout, and sorts the answer into accepted, retryable or permanent.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use serde::Serialize;

use super::config::{channel_name, AuthConfig, BodyTemplate, ContentType, HttpProvider};
use super::templates::{kind_name, Templates, TextVars};
use super::{Message, NotifyConfigError, Receipt, SendError};

/// How much of a provider's answer is read (for the message id and error reasons).
const MAX_ANSWER: usize = 64 * 1024;

/// The variables of a provider's URL and body templates.
#[derive(Debug, Clone, Serialize)]
pub struct SendVars<'a> {
    pub to: &'a str,
    pub name: &'a str,
    /// The message text: the short text, or the e-mail body for the e-mail channel.
    pub text: &'a str,
    pub subject: &'a str,
    pub channel: &'static str,
    pub language: &'a str,
    pub notice: u64,
    pub order: String,
    pub kind: &'static str,
    pub pin: &'a str,
    pub qr: &'a str,
    pub qr_link: &'a str,
    pub site_name: &'a str,
    pub address: &'a str,
    pub expires_local: &'a str,
    pub site: &'a str,
    pub carrier: &'a str,
}

impl<'a> SendVars<'a> {
    pub fn new(m: &'a Message) -> SendVars<'a> {
        let s = |v: &'a Option<String>| v.as_deref().unwrap_or("");
        SendVars {
            to: &m.to,
            name: s(&m.name),
            text: &m.body,
            subject: s(&m.subject),
            channel: channel_name(m.channel),
            language: &m.language,
            notice: m.notice,
            order: m.order.to_string(),
            kind: kind_name(m.kind),
            pin: s(&m.pin),
            qr: s(&m.qr),
            qr_link: s(&m.qr_link),
            site_name: &m.site_name,
            address: &m.address,
            expires_local: s(&m.expires_local),
            site: m.site.as_str(),
            carrier: m.carrier.as_str(),
        }
    }
}

/// The sample message every provider template is rendered with at start.
pub fn sample_message() -> Result<Message, NotifyConfigError> {
    let v = TextVars::sample();
    let bad = |e: locker_schemas::SlugError| NotifyConfigError::invalid("sample message", e);
    Ok(Message {
        notice: 1,
        order: locker_schemas::OrderId(ulid::Ulid::nil()),
        kind: crate::parcels::model::NoticeKind::Ready,
        site: locker_schemas::SiteId::new("berlin-hbf").map_err(bad)?,
        carrier: locker_schemas::CarrierId::new("dhl").map_err(bad)?,
        provider: "sample".into(),
        channel: crate::parcels::model::Channel::Sms,
        to: "+4915112345678".into(),
        name: Some(v.name),
        language: "en".into(),
        subject: Some("Your parcel is ready".into()),
        body: "Your parcel \"is\" ready:\nPIN 123456 \\ {}".into(),
        pin: Some(v.pin),
        qr: Some(v.qr),
        qr_link: Some(v.qr_link),
        site_name: v.site_name,
        address: v.address,
        expires_local: Some(v.expires_local),
    })
}

#[derive(Debug)]
enum Body {
    /// Field name and template name.
    Form(Vec<(String, String)>),
    JsonFields(Vec<(String, String)>),
    /// Template name.
    JsonTemplate(String),
}

/// A configured HTTP provider.
#[derive(Debug)]
pub struct HttpSender {
    name: String,
    method: Method,
    url: String,
    headers: HeaderMap,
    auth: AuthConfig,
    body: Body,
    success: Vec<u16>,
    message_id: Option<String>,
    timeout: Duration,
}

impl HttpSender {
    /// Checks the provider `name` and adds its templates; errors name the key.
    pub fn new(
        name: &str,
        p: &HttpProvider,
        t: &mut Templates,
    ) -> Result<HttpSender, NotifyConfigError> {
        let key = |k: &str| format!("notifications.providers.{name}.{k}");
        let sample = sample_message()?;
        let vars = SendVars::new(&sample);
        let method = Method::from_bytes(p.method.trim().to_ascii_uppercase().as_bytes())
            .map_err(|e| NotifyConfigError::invalid(key("method"), e))?;
        let url = format!("providers/{name}/url.txt");
        t.add(url.clone(), p.url.clone())
            .map_err(|e| NotifyConfigError::invalid(key("url"), e))?;
        let sample_url = t
            .render(&url, &vars)
            .map_err(|e| NotifyConfigError::invalid(key("url"), e))?;
        match reqwest::Url::parse(&sample_url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            Ok(_) => return Err(NotifyConfigError::invalid(key("url"), "not http(s)")),
            Err(e) => return Err(NotifyConfigError::invalid(key("url"), e)),
        }
        let mut headers = HeaderMap::new();
        for (k, v) in &p.headers {
            let at = key(&format!("headers.{k}"));
            let n = HeaderName::from_bytes(k.as_bytes())
                .map_err(|e| NotifyConfigError::invalid(&at, e))?;
            let v = HeaderValue::from_str(v).map_err(|e| NotifyConfigError::invalid(&at, e))?;
            headers.insert(n, v);
        }
        match &p.auth {
            AuthConfig::Basic { username, .. } if username.is_empty() => {
                return Err(NotifyConfigError::invalid(
                    key("auth.username"),
                    "must not be empty",
                ))
            }
            AuthConfig::Bearer { token } if token.is_empty() => {
                return Err(NotifyConfigError::invalid(
                    key("auth.token"),
                    "must not be empty",
                ))
            }
            _ => {}
        }
        let mut field_templates = |fields: &std::collections::BTreeMap<String, String>| {
            let mut out = Vec::new();
            for (f, src) in fields {
                let at = key(&format!("body.{f}"));
                let n = format!("providers/{name}/fields/{f}.txt");
                t.add(n.clone(), src.clone())
                    .map_err(|e| NotifyConfigError::invalid(&at, e))?;
                t.render(&n, &vars)
                    .map_err(|e| NotifyConfigError::invalid(&at, e))?;
                out.push((f.clone(), n));
            }
            Ok::<_, NotifyConfigError>(out)
        };
        let body = match (&p.body, p.content_type) {
            (BodyTemplate::Fields(f), ContentType::Form) => Body::Form(field_templates(f)?),
            (BodyTemplate::Fields(f), ContentType::Json) => Body::JsonFields(field_templates(f)?),
            (BodyTemplate::Template(_), ContentType::Form) => {
                return Err(NotifyConfigError::invalid(
                    key("body"),
                    "a form body is a table of fields, e.g. { To = \"{{ to }}\", Body = \"{{ text }}\" }",
                ))
            }
            (BodyTemplate::Template(src), ContentType::Json) => {
                let n = format!("providers/{name}/body.json");
                t.add(n.clone(), src.clone())
                    .map_err(|e| NotifyConfigError::invalid(key("body"), e))?;
                let out = t
                    .render(&n, &vars)
                    .map_err(|e| NotifyConfigError::invalid(key("body"), e))?;
                serde_json::from_str::<serde_json::Value>(&out).map_err(|e| {
                    NotifyConfigError::invalid(
                        key("body"),
                        format!("renders to invalid JSON ({e}): write values bare, `{{{{ to }}}}`, they are quoted: {out}"),
                    )
                })?;
                Body::JsonTemplate(n)
            }
        };
        if let Some(s) = p.success.iter().find(|s| !(100..=599).contains(*s)) {
            return Err(NotifyConfigError::invalid(
                key("success"),
                format!("{s} is not an HTTP status"),
            ));
        }
        if let Some(ptr) = p.message_id.as_deref() {
            if !ptr.is_empty() && !ptr.starts_with('/') {
                return Err(NotifyConfigError::invalid(
                    key("message_id"),
                    "a JSON pointer starts with `/`, e.g. `/sid`",
                ));
            }
        }
        if p.timeout_ms == 0 {
            return Err(NotifyConfigError::invalid(
                key("timeout_ms"),
                "must be above 0",
            ));
        }
        Ok(HttpSender {
            name: name.to_owned(),
            method,
            url,
            headers,
            auth: p.auth.clone(),
            body,
            success: p.success.clone(),
            message_id: p.message_id.clone().filter(|p| !p.is_empty()),
            timeout: Duration::from_millis(p.timeout_ms),
        })
    }

    /// Sends `m` once.
    pub async fn send(
        &self,
        t: &Templates,
        client: &reqwest::Client,
        m: &Message,
    ) -> Result<Receipt, SendError> {
        let vars = SendVars::new(m);
        let render = |n: &str| {
            t.render(n, &vars).map_err(|e| SendError::Permanent {
                reason: format!("provider {}: template {n}: {e}", self.name),
            })
        };
        let url = render(&self.url)?;
        let mut req = client
            .request(self.method.clone(), &url)
            .timeout(self.timeout)
            .headers(self.headers.clone());
        req = match &self.auth {
            AuthConfig::None => req,
            AuthConfig::Basic { username, password } => req.basic_auth(username, Some(password)),
            AuthConfig::Bearer { token } => req.bearer_auth(token),
        };
        let fields = |fs: &[(String, String)]| -> Result<Vec<(String, String)>, SendError> {
            fs.iter()
                .map(|(f, n)| Ok((f.clone(), render(n)?)))
                .collect()
        };
        req = match &self.body {
            Body::Form(fs) => req.form(&fields(fs)?),
            Body::JsonFields(fs) => {
                let map: serde_json::Map<String, serde_json::Value> = fields(fs)?
                    .into_iter()
                    .map(|(k, v)| (k, serde_json::Value::String(v)))
                    .collect();
                req.json(&map)
            }
            Body::JsonTemplate(n) => {
                let body = render(n)?;
                if let Err(e) = serde_json::from_str::<serde_json::Value>(&body) {
                    return Err(SendError::Permanent {
                        reason: format!("provider {}: the body is not JSON: {e}", self.name),
                    });
                }
                req.header(CONTENT_TYPE, "application/json").body(body)
            }
        };
        let resp = req.send().await.map_err(|e| self.request_error(&e))?;
        let status = resp.status();
        let retry_after = retry_after(resp.headers());
        let answer = read_limited(resp).await;
        let accepted = if self.success.is_empty() {
            status.is_success()
        } else {
            self.success.contains(&status.as_u16())
        };
        if accepted {
            let message_id = self.message_id.as_deref().and_then(|ptr| {
                let v: serde_json::Value = serde_json::from_slice(&answer).ok()?;
                match v.pointer(ptr)? {
                    serde_json::Value::String(s) => Some(s.clone()),
                    serde_json::Value::Number(n) => Some(n.to_string()),
                    _ => None,
                }
            });
            return Ok(Receipt {
                provider: self.name.clone(),
                status: status.as_u16().to_string(),
                message_id,
            });
        }
        let reason = format!(
            "provider {}: HTTP {status}: {}",
            self.name,
            snippet(&answer)
        );
        if retryable(status) {
            Err(SendError::Retryable {
                reason,
                retry_after,
            })
        } else {
            Err(SendError::Permanent { reason })
        }
    }

    fn request_error(&self, e: &reqwest::Error) -> SendError {
        let mut reason = format!("provider {}: ", self.name);
        if e.is_timeout() {
            reason.push_str(&format!(
                "timed out after {} ms: ",
                self.timeout.as_millis()
            ));
        } else if e.is_connect() {
            reason.push_str("cannot connect: ");
        }
        reason.push_str(&chain(e));
        if e.is_builder() {
            SendError::Permanent { reason }
        } else {
            SendError::Retryable {
                reason,
                retry_after: None,
            }
        }
    }
}

/// Statuses worth another try: server errors, rate limits, request timeouts.
fn retryable(s: StatusCode) -> bool {
    s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS || s == StatusCode::REQUEST_TIMEOUT
}

/// `Retry-After` as seconds or an HTTP date.
pub fn retry_after(h: &HeaderMap) -> Option<Duration> {
    let v = h.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(s) = v.parse::<u64>() {
        return Some(Duration::from_secs(s));
    }
    let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let at = UNIX_EPOCH + Duration::from_secs(u64::try_from(at.timestamp()).ok()?);
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

async fn read_limited(mut resp: reqwest::Response) -> Vec<u8> {
    let mut out = Vec::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        let room = MAX_ANSWER.saturating_sub(out.len());
        out.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if out.len() >= MAX_ANSWER {
            break;
        }
    }
    out
}

/// The start of a provider's answer, for error reasons.
fn snippet(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(b);
    let s = s.trim();
    match s.char_indices().nth(200) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_owned(),
    }
}

/// An error with its sources, `a: b: c`.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
