//! The console from a test's side. Without a browser ([`Session`], [`Live`]): log in with a
//! token, call the API with the session cookie and its CSRF token as the console's pages do,
//! and read the live feed (`GET /v1/live`, server-sent events) as a stream of
//! `(event, data)`. With one ([`ConsoleWorld`]): the gateway with the parcel world's tokens and
//! a headless Chromium, what every browser test starts from.

use std::net::SocketAddr;

use locker_gateway::config::GatewayConfig;
use reqwest::Method;
use serde_json::{json, Value};

use crate::api::ApiClient;
use crate::browser::Browser;
use crate::gateway::TestGateway;
use crate::pki::TestPki;

/// A gateway with the parcel world's tokens ([`crate::parcels::tokens`], then `tweak`), its
/// fleet PKI (for cabinets the test starts) and a headless browser.
pub struct ConsoleWorld {
    pub gw: TestGateway,
    pub browser: Browser,
    pub pki: TestPki,
}

impl ConsoleWorld {
    /// Starts the gateway and the browser.
    pub async fn start(tweak: impl FnOnce(&mut GatewayConfig)) -> Self {
        let pki = TestPki::new();
        let gw = TestGateway::start_with(&pki, |cfg| {
            crate::parcels::tokens(cfg);
            tweak(cfg);
        })
        .await;
        let browser = Browser::start().await;
        Self { gw, browser, pki }
    }

    /// `http://<api>`.
    pub fn base(&self) -> String {
        format!("http://{}", self.gw.gw.api_addr)
    }

    /// An API client with `token`.
    pub fn client(&self, token: &str) -> ApiClient {
        ApiClient::new(self.gw.gw.api_addr, token)
    }

    /// Opens a console page (`#/...`).
    pub async fn page(&self, hash: &str) {
        self.browser
            .goto(&format!("{}/console/{hash}", self.base()))
            .await;
    }

    /// Closes the browser.
    pub async fn close(self) {
        self.browser.close().await;
    }
}

/// A console login (cookie and CSRF token), or a client that calls with neither.
pub struct Session {
    base: String,
    http: reqwest::Client,
    /// The `lk_session` cookie's value.
    pub cookie: String,
    /// The CSRF token the login returned.
    pub csrf: String,
    /// The login's answer (`name`, `scope`, `carrier`, `sites`, `csrf`, `expires_at`).
    pub me: Value,
    /// The whole `Set-Cookie` header of the login.
    pub set_cookie: String,
}

/// What a login attempt answered.
pub struct LoginAnswer {
    pub status: u16,
    pub set_cookie: Option<String>,
    pub body: Value,
}

/// Posts a login with `token` (and an `Origin` header if given).
pub async fn try_login(api: SocketAddr, token: &str, origin: Option<&str>) -> LoginAnswer {
    let mut req = reqwest::Client::new()
        .post(format!("http://{api}/console/session"))
        .json(&json!({ "token": token }));
    if let Some(o) = origin {
        req = req.header("origin", o);
    }
    let r = req.send().await.expect("login request");
    let status = r.status().as_u16();
    let set_cookie = r
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    LoginAnswer {
        status,
        set_cookie,
        body: r.json().await.unwrap_or(Value::Null),
    }
}

impl Session {
    /// Logs in with `token`; panics unless the gateway answers 200 with a cookie.
    pub async fn login(api: SocketAddr, token: &str) -> Self {
        let a = try_login(api, token, None).await;
        assert_eq!(a.status, 200, "login: {}", a.body);
        let set_cookie = a.set_cookie.expect("Set-Cookie on login");
        let cookie = set_cookie
            .split(';')
            .next()
            .and_then(|kv| kv.strip_prefix("lk_session="))
            .expect("lk_session cookie")
            .to_owned();
        Self {
            base: format!("http://{api}"),
            http: reqwest::Client::new(),
            cookie,
            csrf: a.body["csrf"].as_str().expect("csrf").to_owned(),
            me: a.body,
            set_cookie,
        }
    }

    /// A request with the session cookie; `csrf` adds the CSRF header; `extra` headers too.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        csrf: Option<&str>,
        extra: &[(&str, &str)],
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("cookie", format!("lk_session={}", self.cookie));
        if let Some(c) = csrf {
            req = req.header("x-csrf-token", c);
        }
        for (k, v) in extra {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.expect("request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// GET with the cookie.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.send(Method::GET, path, None, None, &[]).await
    }

    /// An unsafe method with the cookie and the session's CSRF token, as the pages send it.
    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let csrf = self.csrf.clone();
        self.send(method, path, body, Some(&csrf), &[]).await
    }

    /// Opens the live feed with the cookie.
    pub async fn live(&self, query: &str) -> Live {
        let r = self
            .http
            .get(format!("{}/v1/live{query}", self.base))
            .header("cookie", format!("lk_session={}", self.cookie))
            .send()
            .await
            .expect("live request");
        Live::new(r)
    }
}

/// A live feed being read.
pub struct Live {
    pub status: u16,
    pub content_type: String,
    resp: reqwest::Response,
    buf: String,
}

impl Live {
    /// Wraps an answer of `GET /v1/live`.
    pub fn new(resp: reqwest::Response) -> Self {
        Self {
            status: resp.status().as_u16(),
            content_type: resp
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned(),
            resp,
            buf: String::new(),
        }
    }

    /// Opens the feed with a bearer token.
    pub async fn bearer(api: SocketAddr, token: &str, query: &str) -> Self {
        let r = reqwest::Client::new()
            .get(format!("http://{api}/v1/live{query}"))
            .bearer_auth(token)
            .send()
            .await
            .expect("live request");
        Self::new(r)
    }

    /// The next event (`event` name and parsed `data`; comments skipped); `None` when the
    /// stream ended.
    pub async fn next(&mut self) -> Option<(String, Value)> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut event = String::from("message");
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if block.lines().all(|l| l.starts_with(':') || l.is_empty()) {
                    continue;
                }
                return Some((event, serde_json::from_str(&data).unwrap_or(Value::Null)));
            }
            let chunk = self.resp.chunk().await.ok()??;
            self.buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// Reads events until one satisfies `want`, within the harness deadline; returns it.
    pub async fn until(&mut self, what: &str, mut want: impl FnMut(&str, &Value) -> bool) -> Value {
        let found = tokio::time::timeout(crate::wait::DEADLINE, async {
            while let Some((e, d)) = self.next().await {
                if want(&e, &d) {
                    return Some(d);
                }
            }
            None
        })
        .await;
        match found {
            Ok(Some(d)) => d,
            Ok(None) => panic!("live feed ended before {what}"),
            Err(_) => panic!("no live event {what} within the deadline"),
        }
    }
}
