//! Console login sessions: `POST /console/session` trades an API token for a session cookie,
//! `GET` tells the page who is logged in (and its CSRF token), `DELETE` logs out; and
//! [`Sessions::authenticate`], which the API's auth layer calls for a request that carries the
//! cookie instead of a bearer token.
//!
//! - The cookie `lk_session` holds 32 random bytes (base64url); the store keeps only their
//!   SHA-256 ([`crate::store::sessions`]). `HttpOnly`, `SameSite=Strict`, `Path=/`, and
//!   `Secure` when the API is served over TLS.
//! - A session names its token by the token's SHA-256 and gets that token's scope on every
//!   request: removing a token from `[api.tokens]` ends its sessions at their next request.
//! - Every unsafe method (POST, PUT, PATCH, DELETE) with the cookie needs the session's CSRF
//!   token in `X-CSRF-Token`, and a browser's `Sec-Fetch-Site`/`Origin`, when sent, must say
//!   same origin; a login from another origin is refused too.
//! - Sessions end after `console.session_idle_min` without a request and
//!   `console.session_max_h` after the login; expired ones are pruned hourly.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use locker_schemas::{now_millis, CarrierId, SiteId};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{ConsoleConfig, ConsoleMetrics};
use crate::api::scope::TokenSpec;
use crate::api::ApiState;
use crate::parcels::{Caller, Scope};
use crate::store::sessions::{SessionRecord, SessionStore, SledSessions};
use crate::store::{self, StoreError};

/// The session cookie's name.
pub const COOKIE: &str = "lk_session";
/// The header carrying the CSRF token.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// A session's last use is written at most this often.
const TOUCH_EVERY_MS: u64 = 60_000;

/// Why a console request was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("unknown or expired session: log in again")]
    NoSession(&'static str),
    #[error(
        "this request needs the session's CSRF token in X-CSRF-Token, from the console's own pages"
    )]
    Csrf,
    #[error("unknown token")]
    UnknownToken,
    #[error("login from another origin refused")]
    CrossOrigin,
    #[error("{0}")]
    BadRequest(String),
    #[error("session storage: {0}")]
    Store(#[from] StoreError),
    #[error("no randomness from the operating system: {0}")]
    Random(String),
}

impl ConsoleError {
    fn status_code(&self) -> (StatusCode, &'static str) {
        match self {
            ConsoleError::NoSession(_) | ConsoleError::UnknownToken => {
                (StatusCode::UNAUTHORIZED, "unauthorized")
            }
            ConsoleError::Csrf | ConsoleError::CrossOrigin => (StatusCode::FORBIDDEN, "csrf"),
            ConsoleError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ConsoleError::Store(_) => (StatusCode::INTERNAL_SERVER_ERROR, "storage"),
            ConsoleError::Random(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        }
    }
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_code();
        crate::api::ApiError::new(status, code, self.to_string()).into_response()
    }
}

/// The sessions service (cheap to clone): the store, the tokens by hash, the settings.
#[derive(Clone)]
pub struct Sessions {
    store: Arc<dyn SessionStore>,
    tokens: Arc<HashMap<[u8; 32], TokenSpec>>,
    cfg: Arc<ConsoleConfig>,
    /// Whether the cookie is marked `Secure` (the API is on TLS).
    secure: bool,
    metrics: ConsoleMetrics,
}

/// Who a session is, as `GET /console/session` answers.
#[derive(Debug, Serialize)]
pub struct SessionView {
    pub name: String,
    pub scope: &'static str,
    pub carrier: Option<CarrierId>,
    pub sites: Vec<SiteId>,
    pub csrf: String,
    pub expires_at: String,
}

fn sha256(b: &[u8]) -> [u8; 32] {
    Sha256::digest(b).into()
}

/// Compares without leaking where the first difference is.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// 32 random bytes from the OS (base64url); an OS that cannot give them refuses the login.
fn random_token() -> Result<String, ConsoleError> {
    let mut b = [0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut b)
        .map_err(|e| ConsoleError::Random(e.to_string()))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b))
}

impl Sessions {
    /// The service over the gateway's session store.
    pub fn new(
        store: SledSessions,
        tokens: &HashMap<String, TokenSpec>,
        cfg: ConsoleConfig,
        secure: bool,
        metrics: ConsoleMetrics,
    ) -> Self {
        Self {
            store: Arc::new(store),
            tokens: Arc::new(
                tokens
                    .iter()
                    .map(|(t, spec)| (sha256(t.as_bytes()), spec.clone()))
                    .collect(),
            ),
            cfg: Arc::new(cfg),
            secure,
            metrics,
        }
    }

    fn idle_ms(&self) -> u64 {
        self.cfg.session_idle_min.saturating_mul(60_000)
    }

    fn max_ms(&self) -> u64 {
        self.cfg.session_max_h.saturating_mul(3_600_000)
    }

    fn expired(&self, s: &SessionRecord, now: u64) -> bool {
        now >= s.expires_ms || now.saturating_sub(s.seen_ms) >= self.idle_ms()
    }

    fn caller_of(&self, s: &SessionRecord) -> Option<Caller> {
        let mut h = [0u8; 32];
        hex::decode_to_slice(&s.token_sha256, &mut h).ok()?;
        self.tokens.get(&h).map(TokenSpec::caller)
    }

    /// Logs in with an API token: the new session's cookie value and record.
    pub async fn login(
        &self,
        token: &str,
    ) -> Result<(String, SessionRecord, Caller), ConsoleError> {
        let h = sha256(token.as_bytes());
        let caller = match self.tokens.get(&h) {
            Some(spec) => spec.caller(),
            None => {
                self.metrics
                    .logins
                    .with_label_values(&["unknown_token"])
                    .inc();
                return Err(ConsoleError::UnknownToken);
            }
        };
        let id = random_token()?;
        let now = now_millis();
        let rec = SessionRecord {
            token_sha256: hex::encode(h),
            client: caller.client.clone(),
            csrf: random_token()?,
            created_ms: now,
            seen_ms: now,
            expires_ms: now.saturating_add(self.max_ms()),
        };
        let (store, key, r) = (self.store.clone(), sha256(id.as_bytes()), rec.clone());
        store::blocking(move || store.put(&key, &r)).await?;
        self.metrics.logins.with_label_values(&["ok"]).inc();
        self.metrics.sessions.inc();
        tracing::info!(client = %caller.client, scope = caller.scope.name(), "console login");
        Ok((id, rec, caller))
    }

    /// The session of a cookie value: its caller and record (its last use updated now and
    /// then). A refusal is counted by reason.
    pub async fn resolve(&self, id: &str) -> Result<(Caller, SessionRecord), ConsoleError> {
        let key = sha256(id.as_bytes());
        let store = self.store.clone();
        let rec = store::blocking(move || store.get(&key)).await?;
        let refuse = |reason: &'static str| {
            self.metrics.refused.with_label_values(&[reason]).inc();
            ConsoleError::NoSession(reason)
        };
        let Some(mut rec) = rec else {
            return Err(refuse("unknown"));
        };
        let now = now_millis();
        if self.expired(&rec, now) {
            let store = self.store.clone();
            if store::blocking(move || store.remove(&key)).await.is_ok() {
                self.metrics.sessions.dec();
            }
            return Err(refuse("expired"));
        }
        let Some(caller) = self.caller_of(&rec) else {
            return Err(refuse("token_revoked"));
        };
        if now.saturating_sub(rec.seen_ms) >= TOUCH_EVERY_MS {
            rec.seen_ms = now;
            let (store, r) = (self.store.clone(), rec.clone());
            store::blocking(move || store.touch(&key, &r)).await?;
        }
        Ok((caller, rec))
    }

    /// Authenticates a `/v1` request by its session cookie: the caller, after the CSRF
    /// checks of unsafe methods. `None` when the request has no session cookie.
    pub async fn authenticate(
        &self,
        method: &Method,
        headers: &HeaderMap,
    ) -> Option<Result<Caller, ConsoleError>> {
        let id = cookie(headers)?;
        Some(self.check(method, headers, &id).await)
    }

    async fn check(
        &self,
        method: &Method,
        headers: &HeaderMap,
        id: &str,
    ) -> Result<Caller, ConsoleError> {
        let (caller, rec) = self.resolve(id).await?;
        let safe = matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
        if !safe {
            let sent = headers
                .get(CSRF_HEADER)
                .map(|v| v.as_bytes())
                .unwrap_or_default();
            if !same(sent, rec.csrf.as_bytes()) || cross_site(headers) {
                self.metrics.refused.with_label_values(&["csrf"]).inc();
                return Err(ConsoleError::Csrf);
            }
        }
        Ok(caller)
    }

    /// Ends a session.
    pub async fn logout(&self, id: &str) -> Result<(), ConsoleError> {
        let (store, key) = (self.store.clone(), sha256(id.as_bytes()));
        store::blocking(move || store.remove(&key)).await?;
        self.metrics.sessions.dec();
        Ok(())
    }

    /// Removes expired sessions and refreshes the sessions gauge.
    pub async fn prune(&self) -> Result<usize, ConsoleError> {
        let this = self.clone();
        let now = now_millis();
        let store = self.store.clone();
        let n = store::blocking(move || store.prune(&|s| this.expired(s, now))).await?;
        let store = self.store.clone();
        let held = store::blocking(move || Ok(store.count())).await?;
        self.metrics.sessions.set(held as i64);
        Ok(n)
    }

    /// Prunes expired sessions every hour until `cancel`.
    pub async fn run_pruner(self, cancel: tokio_util::sync::CancellationToken) {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(3600));
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = every.tick() => {
                    if let Err(e) = self.prune().await {
                        tracing::warn!(error = %e, "pruning console sessions failed");
                    }
                }
            }
        }
    }

    fn set_cookie(&self, id: &str, max_age_s: u64) -> Option<HeaderValue> {
        let secure = if self.secure { "; Secure" } else { "" };
        HeaderValue::from_str(&format!(
            "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age_s}{secure}"
        ))
        .ok()
    }

    fn view(&self, caller: &Caller, rec: &SessionRecord) -> SessionView {
        let (carrier, sites) = match &caller.scope {
            Scope::Operator => (None, Vec::new()),
            Scope::Carrier { carrier } => (Some(carrier.clone()), Vec::new()),
            Scope::SiteManager { sites } => (None, sites.iter().cloned().collect()),
        };
        SessionView {
            name: caller.client.clone(),
            scope: caller.scope.name(),
            carrier,
            sites,
            csrf: rec.csrf.clone(),
            expires_at: crate::json::utc(rec.expires_ms.min(rec.seen_ms + self.idle_ms())),
        }
    }
}

/// The session cookie's value, if the request has one.
pub fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_owned())
        .filter(|v| !v.is_empty())
}

/// Whether a browser says the request comes from another site (`Sec-Fetch-Site`), or its
/// `Origin` names another host than the one it was sent to.
fn cross_site(headers: &HeaderMap) -> bool {
    let fetch_site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
    if matches!(fetch_site, Some("cross-site") | Some("same-site")) {
        return true;
    }
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    match (origin, host) {
        (Some("null"), _) => true,
        (Some(o), Some(h)) => o.split_once("://").map(|(_, rest)| rest) != Some(h),
        _ => false,
    }
}

fn sessions(st: &ApiState) -> Result<&Sessions, ConsoleError> {
    st.sessions
        .as_ref()
        .ok_or(ConsoleError::NoSession("disabled"))
}

/// `POST /console/session` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LoginBody {
    token: String,
}

/// `POST /console/session`: logs in with an API token.
pub(super) async fn login(
    State(st): State<ApiState>,
    headers: HeaderMap,
    body: Result<Json<LoginBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ConsoleError> {
    let s = sessions(&st)?;
    if cross_site(&headers) {
        s.metrics.logins.with_label_values(&["cross_origin"]).inc();
        return Err(ConsoleError::CrossOrigin);
    }
    let Json(b) = body.map_err(|e| {
        s.metrics.logins.with_label_values(&["bad_request"]).inc();
        ConsoleError::BadRequest(format!("expected {{\"token\": \"...\"}}: {e}"))
    })?;
    let (id, rec, caller) = s.login(b.token.trim()).await?;
    let mut h = HeaderMap::new();
    if let Some(c) = s.set_cookie(&id, s.cfg.session_max_h.saturating_mul(3600)) {
        h.insert(header::SET_COOKIE, c);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok((h, Json(s.view(&caller, &rec))).into_response())
}

/// `GET /console/session`: who is logged in.
pub(super) async fn me(
    State(st): State<ApiState>,
    headers: HeaderMap,
) -> Result<Response, ConsoleError> {
    let s = sessions(&st)?;
    let id = cookie(&headers).ok_or(ConsoleError::NoSession("none"))?;
    let (caller, rec) = s.resolve(&id).await?;
    let mut h = HeaderMap::new();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok((h, Json(s.view(&caller, &rec))).into_response())
}

/// `DELETE /console/session`: logs out (CSRF token required).
pub(super) async fn logout(
    State(st): State<ApiState>,
    headers: HeaderMap,
) -> Result<Response, ConsoleError> {
    let s = sessions(&st)?;
    let id = cookie(&headers).ok_or(ConsoleError::NoSession("none"))?;
    s.check(&Method::DELETE, &headers, &id).await?;
    s.logout(&id).await?;
    let mut h = HeaderMap::new();
    if let Some(c) = s.set_cookie("", 0) {
        h.insert(header::SET_COOKIE, c);
    }
    Ok((StatusCode::NO_CONTENT, h).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).expect("value"));
        }
        h
    }

    #[test]
    fn the_cookie_is_found_among_others() {
        let h = headers(&[("cookie", "a=1; lk_session=abc; b=2")]);
        assert_eq!(cookie(&h).as_deref(), Some("abc"));
        assert_eq!(cookie(&headers(&[("cookie", "lk_session=")])), None);
        assert_eq!(cookie(&HeaderMap::new()), None);
    }

    #[test]
    fn cross_site_requests_are_recognised() {
        assert!(cross_site(&headers(&[("sec-fetch-site", "cross-site")])));
        assert!(!cross_site(&headers(&[("sec-fetch-site", "same-origin")])));
        assert!(cross_site(&headers(&[
            ("origin", "https://evil.example"),
            ("host", "gw.example:8080")
        ])));
        assert!(!cross_site(&headers(&[
            ("origin", "http://gw.example:8080"),
            ("host", "gw.example:8080")
        ])));
        assert!(cross_site(&headers(&[("origin", "null")])));
        assert!(
            !cross_site(&HeaderMap::new()),
            "non-browser clients send neither"
        );
    }

    #[test]
    fn comparison_is_exact() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"ab"));
        assert!(!same(b"", b"a"));
    }
}
