//! The gateway HTTP API calls the fleet makes: create a command (optionally waiting for its
//! outcome), read a command, page through a cabinet's audit log, read `/metrics`; and the
//! parcel domain's calls (see [`super::world`] and [`super::scenario`]): sites, carriers and
//! couriers, orders (create, batch, act, remote unlock, list), the notification outbox and a
//! cabinet's compartments. [`Api::with_token`] gives a carrier its own client;
//! [`Api::round_robin`] one that spreads its calls over several nodes of a cluster.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

/// Why an API call failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("http: {0}")]
    Http(#[from] reqwest::Error),
    #[error("{status}: {body}")]
    Status { status: u16, body: String },
}

/// A cloneable API client: of one gateway, or round robin over several (clones share the
/// turn).
#[derive(Clone, Debug)]
pub struct Api {
    client: reqwest::Client,
    /// `http://{addr}` of each node called (at least one).
    bases: Arc<[String]>,
    next: Arc<AtomicUsize>,
    token: String,
}

/// One audit-log event, reduced to what the invariant checks need.
#[derive(Debug, Clone)]
pub struct AuditEvent {
    pub seq: u64,
    pub kind: String,
    pub data: Value,
}

impl Api {
    /// A client for the API at `addr`.
    pub fn new(addr: SocketAddr, token: &str) -> Self {
        Self::round_robin(&[addr], token)
    }

    /// A client whose calls go to `addrs` in turn (one address: always that one; none: the
    /// unroutable 127.0.0.1:9, every call fails).
    pub fn round_robin(addrs: &[SocketAddr], token: &str) -> Self {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap_or_default();
        let mut bases: Vec<String> = addrs.iter().map(|a| format!("http://{a}")).collect();
        if bases.is_empty() {
            bases.push("http://127.0.0.1:9".into());
        }
        Self {
            client,
            bases: bases.into(),
            next: Arc::new(AtomicUsize::new(0)),
            token: token.to_owned(),
        }
    }

    /// The same client (connection pool, nodes and turn) with another bearer token (a
    /// carrier's).
    pub fn with_token(&self, token: &str) -> Self {
        Self {
            client: self.client.clone(),
            bases: self.bases.clone(),
            next: self.next.clone(),
            token: token.to_owned(),
        }
    }

    /// The same client asking each node for its own copy: `x-locker-node-local: 1` on every
    /// request, so a cluster node answers a GET itself instead of forwarding it to the node
    /// running the domain.
    pub fn node_local(&self) -> Self {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert(
            "x-locker-node-local",
            reqwest::header::HeaderValue::from_static("1"),
        );
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .timeout(Duration::from_secs(60))
            .default_headers(h)
            .build()
            .unwrap_or_else(|_| self.client.clone());
        Self {
            client,
            ..self.clone()
        }
    }

    /// The base URL of the next call.
    fn base(&self) -> &str {
        let i = match self.bases.len() {
            1 => 0,
            n => self.next.fetch_add(1, Ordering::Relaxed) % n,
        };
        &self.bases[i]
    }

    /// `GET {path}` (path and query), the JSON answer.
    pub async fn get(&self, path: &str) -> Result<Value, ApiError> {
        let r = self
            .client
            .get(format!("{}{path}", self.base()))
            .bearer_auth(&self.token)
            .send()
            .await?;
        Self::json(r).await
    }

    /// `POST {path}` with a JSON body and optional idempotency key, the JSON answer.
    pub async fn post(
        &self,
        path: &str,
        body: &Value,
        key: Option<&str>,
    ) -> Result<Value, ApiError> {
        let mut rq = self
            .client
            .post(format!("{}{path}", self.base()))
            .bearer_auth(&self.token)
            .json(body);
        if let Some(k) = key {
            rq = rq.header("idempotency-key", k);
        }
        Self::json(rq.send().await?).await
    }

    /// `PUT {path}` with a JSON body, the JSON answer.
    pub async fn put(&self, path: &str, body: &Value) -> Result<Value, ApiError> {
        let r = self
            .client
            .put(format!("{}{path}", self.base()))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await?;
        Self::json(r).await
    }

    /// `DELETE {path}`.
    pub async fn delete(&self, path: &str) -> Result<(), ApiError> {
        let r = self
            .client
            .delete(format!("{}{path}", self.base()))
            .bearer_auth(&self.token)
            .send()
            .await?;
        let status = r.status().as_u16();
        if !r.status().is_success() {
            let body = r.text().await.unwrap_or_default();
            return Err(ApiError::Status { status, body });
        }
        Ok(())
    }

    /// Every order the token sees (`GET /v1/orders`, paged), oldest first.
    pub async fn orders(&self) -> Result<Vec<Value>, ApiError> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let q = match &after {
                Some(a) => format!("/v1/orders?limit=1000&after={a}"),
                None => "/v1/orders?limit=1000".to_owned(),
            };
            let page = self.get(&q).await?;
            let orders = page["orders"].as_array().cloned().unwrap_or_default();
            if orders.is_empty() {
                return Ok(out);
            }
            out.extend(orders);
            match page["next_after"].as_str() {
                Some(n) if after.as_deref() != Some(n) => after = Some(n.to_owned()),
                _ => return Ok(out),
            }
        }
    }

    /// One page of the notification outbox after position `after`: the notices and the next
    /// position.
    pub async fn notifications(&self, after: u64) -> Result<(Vec<Value>, u64), ApiError> {
        let page = self
            .get(&format!("/v1/notifications?after={after}&limit=1000"))
            .await?;
        let items = page["notifications"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let next = page["next_after"].as_u64().unwrap_or(after).max(after);
        Ok((items, next))
    }

    async fn json(r: reqwest::Response) -> Result<Value, ApiError> {
        let status = r.status().as_u16();
        if !(200..300).contains(&status) {
            let body = r.text().await.unwrap_or_default();
            return Err(ApiError::Status { status, body });
        }
        Ok(r.json().await?)
    }

    /// `POST /v1/cabinets/{id}/commands` for an unlock; the command record.
    pub async fn unlock(
        &self,
        cabinet: &str,
        compartment: u16,
        ttl_ms: u32,
        wait_ms: u64,
    ) -> Result<Value, ApiError> {
        let body = json!({
            "action": {"type": "unlock", "compartment": compartment},
            "ttl_ms": ttl_ms, "wait_ms": wait_ms,
        });
        let r = self
            .client
            .post(format!("{}/v1/cabinets/{cabinet}/commands", self.base()))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await?;
        Self::json(r).await
    }

    /// `GET /v1/commands/{id}`.
    pub async fn command(&self, id: &str) -> Result<Value, ApiError> {
        let r = self
            .client
            .get(format!("{}/v1/commands/{id}", self.base()))
            .bearer_auth(&self.token)
            .send()
            .await?;
        Self::json(r).await
    }

    /// `GET /v1/cabinets/{id}`.
    pub async fn cabinet(&self, id: &str) -> Result<Value, ApiError> {
        let r = self
            .client
            .get(format!("{}/v1/cabinets/{id}", self.base()))
            .bearer_auth(&self.token)
            .send()
            .await?;
        Self::json(r).await
    }

    /// The whole audit log of a cabinet, oldest first.
    pub async fn events(&self, cabinet: &str) -> Result<Vec<AuditEvent>, ApiError> {
        let mut out = Vec::new();
        let mut after = 0u64;
        loop {
            let r = self
                .client
                .get(format!(
                    "{}/v1/cabinets/{cabinet}/events?after={after}&limit=1000",
                    self.base()
                ))
                .bearer_auth(&self.token)
                .send()
                .await?;
            let page = Self::json(r).await?;
            let events = page["events"].as_array().cloned().unwrap_or_default();
            if events.is_empty() {
                return Ok(out);
            }
            for e in events {
                out.push(AuditEvent {
                    seq: e["seq"].as_u64().unwrap_or(0),
                    kind: e["kind"].as_str().unwrap_or("?").to_owned(),
                    data: e["data"].clone(),
                });
            }
            match page["next_after"].as_u64() {
                Some(n) if n > after => after = n,
                _ => return Ok(out),
            }
        }
    }

    /// `GET /metrics` as text.
    pub async fn metrics(&self) -> Result<String, ApiError> {
        let r = self
            .client
            .get(format!("{}/metrics", self.base()))
            .send()
            .await?;
        let status = r.status().as_u16();
        if status != 200 {
            return Err(ApiError::Status {
                status,
                body: String::new(),
            });
        }
        Ok(r.text().await?)
    }
}

/// Sums every sample of a metric family in Prometheus text (all label sets).
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            let base = key.split('{').next()?;
            (base == name).then(|| value.parse::<f64>().ok())?
        })
        // (a float sum of nothing is -0.0, which prints as "-0")
        .sum::<f64>()
        + 0.0
}

/// One labelled sample's value (`label` like `outcome="opened"`), summed over other labels.
pub fn metric_with(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            let base = key.split('{').next()?;
            (base == name && key.contains(label)).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}
