//! The operations console: its settings (`[console]`), its routes (the embedded pages at
//! `/console/`, login sessions at `/console/session`) and the security headers of both.
//!
//! The console is a client of the gateway's own HTTP API: its pages (plain JavaScript modules,
//! no build step, in the repository's `gateway/console/`, embedded in release binaries by
//! [`assets`]) log in with an API token at `/console/session` ([`session`]), which sets an
//! `HttpOnly`, `SameSite=Strict` session cookie (`Secure` when the API is on TLS); the `/v1`
//! routes accept that cookie in place of `Authorization: Bearer`, with the token's scope, and
//! demand the session's CSRF token in `X-CSRF-Token` on every unsafe method. Live updates come
//! from `GET /v1/live` ([`crate::live`]). So every scope rule is the API's own: a page a
//! scope may not see is an API error the page shows, also when its URL is typed.

pub mod assets;
pub mod session;

use axum::http::{header, HeaderValue};
use axum::routing::get;
use axum::Router;
use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use serde::{Deserialize, Serialize};

pub use session::{ConsoleError, Sessions};

use crate::api::ApiState;

/// Console settings (the `[console]` table of gateway.toml).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsoleConfig {
    /// Serve the console at `/console/` and accept its session cookie on `/v1`.
    pub enabled: bool,
    /// A session ends after this many minutes without a request.
    pub session_idle_min: u64,
    /// A session ends this many hours after its login, used or not.
    pub session_max_h: u64,
    /// Live subscribers (`GET /v1/live`: console pages and integrators) at most.
    pub live_max_clients: usize,
    /// Changes buffered per live subscriber; one that falls further behind is told to resync.
    pub live_buffer: usize,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            session_idle_min: 480,
            session_max_h: 24,
            live_max_clients: 256,
            live_buffer: 1024,
        }
    }
}

impl ConsoleConfig {
    /// Checks the settings; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.session_idle_min == 0 {
            return Err("console.session_idle_min must be at least 1".into());
        }
        if self.session_max_h == 0 {
            return Err("console.session_max_h must be at least 1".into());
        }
        if self.live_max_clients == 0 {
            return Err("console.live_max_clients must be at least 1".into());
        }
        Ok(())
    }
}

/// The console's metrics.
#[derive(Clone)]
pub struct ConsoleMetrics {
    /// Logins by outcome (`ok`, `unknown_token`, `cross_origin`, `bad_request`).
    pub logins: IntCounterVec,
    /// Requests with a session cookie refused, by reason (`unknown`, `expired`,
    /// `token_revoked`, `csrf`).
    pub refused: IntCounterVec,
    /// Sessions held: counted at start and by the hourly prune, moved by logins, logouts and
    /// expiries in between.
    pub sessions: IntGauge,
}

impl ConsoleMetrics {
    /// Creates and registers the console's metrics.
    pub fn new(r: &Registry) -> Result<Self, prometheus::Error> {
        let logins = IntCounterVec::new(
            Opts::new("locker_console_logins_total", "Console logins, by outcome"),
            &["outcome"],
        )?;
        let refused = IntCounterVec::new(
            Opts::new(
                "locker_console_refused_total",
                "Requests with a console session refused, by reason",
            ),
            &["reason"],
        )?;
        let sessions = IntGauge::new("locker_console_sessions", "Console sessions held")?;
        r.register(Box::new(logins.clone()))?;
        r.register(Box::new(refused.clone()))?;
        r.register(Box::new(sessions.clone()))?;
        Ok(Self {
            logins,
            refused,
            sessions,
        })
    }
}

/// The console's routes: pages, assets and sessions (empty when the console is disabled).
pub fn routes(st: &ApiState) -> Router<ApiState> {
    if st.sessions.is_none() {
        return Router::new();
    }
    Router::new()
        .route("/console", get(assets::to_index))
        .route("/console/", get(assets::index))
        .route("/console/assets/{*path}", get(assets::asset))
        .route(
            "/console/session",
            get(session::me)
                .post(session::login)
                .delete(session::logout),
        )
        .layer(axum::middleware::map_response(security_headers))
}

/// The content security policy of every console response: scripts, styles and connections
/// from the gateway only, no inline code, never framed.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; \
form-action 'self'";

async fn security_headers(mut resp: axum::response::Response) -> axum::response::Response {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}
