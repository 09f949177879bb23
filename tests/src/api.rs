//! A small client for the gateway's HTTP API, authenticated with a bearer token.

use std::net::SocketAddr;

use serde_json::Value;

/// The token [`crate::gateway::TestGateway`] configures for the integrator `test-suite`.
pub const TEST_TOKEN: &str = "test-token-0123456789abcdef";

/// An API client bound to one gateway.
#[derive(Clone)]
pub struct ApiClient {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl ApiClient {
    pub fn new(addr: SocketAddr, token: &str) -> Self {
        Self {
            base: format!("http://{addr}"),
            token: token.to_owned(),
            http: reqwest::Client::new(),
        }
    }

    /// A client of an API served over TLS (`[api.tls]`) that trusts only the CA in `ca_pem`.
    pub fn with_tls(addr: SocketAddr, token: &str, ca_pem: &[u8]) -> Self {
        let ca = reqwest::Certificate::from_pem(ca_pem).expect("CA certificate PEM");
        let http = reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca)
            .build()
            .expect("TLS API client");
        Self {
            base: format!("https://{addr}"),
            token: token.to_owned(),
            http,
        }
    }

    /// GET a path with a fresh connection; the status and JSON body, or the transport error
    /// (for tests where the server may refuse the connection).
    pub async fn try_get(&self, path: &str) -> Result<(u16, Value), reqwest::Error> {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .header(reqwest::header::CONNECTION, "close")
            .send()
            .await?;
        let status = r.status().as_u16();
        Ok((status, r.json().await.unwrap_or(Value::Null)))
    }

    /// GET a path; returns the status and the JSON body (Null if none).
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("API request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// POST JSON to a path; returns the status and the JSON body.
    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .expect("API request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// A cabinet's whole audit log (`GET /v1/cabinets/{cab}/events`, every page).
    pub async fn events(&self, cab: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut after = 0u64;
        loop {
            let (s, page) = self
                .get(&format!(
                    "/v1/cabinets/{cab}/events?after={after}&limit=1000"
                ))
                .await;
            assert_eq!(s, 200, "{page}");
            let batch = page["events"].as_array().cloned().unwrap_or_default();
            let Some(last) = batch.last().and_then(|e| e["seq"].as_u64()) else {
                return out;
            };
            after = last;
            out.extend(batch);
        }
    }

    /// The same client asking a cluster node for its own copy (`x-locker-node-local: 1` on
    /// every request): a follower then answers a GET itself instead of forwarding it.
    pub fn node_local(&self) -> Self {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert(
            "x-locker-node-local",
            reqwest::header::HeaderValue::from_static("1"),
        );
        let http = reqwest::Client::builder()
            .default_headers(h)
            .build()
            .expect("HTTP client");
        Self {
            http,
            ..self.clone()
        }
    }

    /// The same client with another bearer token (a carrier's, a site manager's).
    pub fn with_token(&self, token: &str) -> Self {
        Self {
            token: token.to_owned(),
            ..self.clone()
        }
    }

    /// PUT JSON to a path; returns the status and the JSON body.
    pub async fn put(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .put(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .expect("API request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// PATCH a path with JSON; returns the status and the JSON body.
    pub async fn patch(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .patch(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .expect("API request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// DELETE a path; returns the status and the JSON body.
    pub async fn delete(&self, path: &str) -> (u16, Value) {
        let r = self
            .http
            .delete(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("API request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// POST JSON with extra headers; returns the status and the JSON body.
    pub async fn post_with(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: Value,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(&body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let r = req.send().await.expect("API request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Any request, with this client's token or none; the status, the content type and the
    /// body as text (for pages, assets and routes whose body may not be JSON).
    pub async fn raw(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        with_token: bool,
    ) -> (u16, String, String) {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if with_token {
            req = req.bearer_auth(&self.token);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let r = req.send().await.expect("API request");
        let status = r.status().as_u16();
        let ctype = r
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        (status, ctype, r.text().await.unwrap_or_default())
    }

    /// GET a path with extra headers; returns the status, the response headers and the body
    /// as text (for routes that answer other than JSON, such as the audit export).
    pub async fn get_text(
        &self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (u16, reqwest::header::HeaderMap, String) {
        let mut req = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let r = req.send().await.expect("API request");
        let status = r.status().as_u16();
        let h = r.headers().clone();
        (status, h, r.text().await.expect("body"))
    }

    /// [`ApiClient::get_text`] without headers, or the transport error (a node that is
    /// restarting refuses connections for a moment).
    pub async fn try_get_text(
        &self,
        path: &str,
    ) -> Result<(u16, reqwest::header::HeaderMap, String), reqwest::Error> {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await?;
        let status = r.status().as_u16();
        let h = r.headers().clone();
        Ok((status, h, r.text().await?))
    }

    /// GET a path without any token.
    pub async fn get_anonymous(&self, path: &str) -> u16 {
        self.http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("API request")
            .status()
            .as_u16()
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .expect("metrics request")
            .text()
            .await
            .expect("metrics body")
    }

    /// The value of one sample in `/metrics` (`name{labels}` exactly as rendered), or 0.
    pub async fn metric(&self, sample: &str) -> f64 {
        metric_value(&self.metrics().await, sample)
    }
}

/// Finds `sample` (a metric name with its rendered labels, e.g.
/// `locker_ingest_events_total{kind="door"}`) in Prometheus text and returns its value.
pub fn metric_value(text: &str, sample: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == sample).then(|| value.parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}
