//! Cluster mode, on a node that does not run the domain: the API is served by the node that
//! does (the holder of the domain lease), so this node forwards every API and console request
//! to it, unchanged (method, path, query, headers, body), and answers with its response, streamed
//! (the live feed and the audit export stream through). The node's own `/healthz`, `/readyz`, `/metrics`, `/openapi.json` and `/docs`
//! are answered here.
//!
//! - No leader known (the lease is between holders): 503 `domain_unavailable` with
//!   `Retry-After`.
//! - The leader unreachable: 502 `domain_unreachable`.
//! - A request that was already forwarded once is never forwarded again (two nodes with a stale
//!   view of the lease cannot bounce it): 503 `domain_unavailable`.
//!
//! Responses carry `x-locker-served-by` (the node that answered). A `GET` with
//! `x-locker-node-local: 1` is answered by this node from its own copy (its audit log, its fleet
//! view: what an operator compares between nodes); a route that needs the domain's actors then
//! answers that they do not run here.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::sync::watch;

use super::ApiError;
use crate::cluster::lease::Leader;

/// The header a forwarded request carries (the forwarding node's view of the leader).
pub const FORWARDED: &str = "x-locker-forwarded";
/// The header of every response a forwarding node passes on: the node that answered.
pub const SERVED_BY: &str = "x-locker-served-by";

/// The request header that asks a node to answer a `GET` itself.
pub const NODE_LOCAL: &str = "x-locker-node-local";

/// The largest request body forwarded.
const MAX_FORWARDED_BODY: usize = 4 * 1024 * 1024;

/// Paths a follower answers itself.
const LOCAL: &[&str] = &["/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"];

/// Headers that belong to one connection, not to the request (RFC 9110 section 7.6.1).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "host",
];

/// Forwards requests to the domain's leader.
#[derive(Clone)]
pub struct Forwarder {
    holder: watch::Receiver<Option<Leader>>,
    client: reqwest::Client,
    /// Set while forwarding fails (logged once until it works again).
    failing: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Forwarder {
    /// A forwarder to whichever node `holder` names; `ca_pem`: a CA (PEM) trusted besides the
    /// system's roots for the nodes' HTTPS APIs (the fleet CA that signs the nodes' server
    /// certificates, when `[api.tls]` serves the API over TLS).
    pub fn new(
        holder: watch::Receiver<Option<Leader>>,
        ca_pem: Option<&[u8]>,
    ) -> Result<Self, reqwest::Error> {
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(std::time::Duration::from_secs(5));
        if let Some(pem) = ca_pem {
            builder = builder.add_root_certificate(reqwest::Certificate::from_pem(pem)?);
        }
        Ok(Self {
            holder,
            client: builder.build()?,
            failing: Default::default(),
        })
    }

    /// Whether `req` is answered by this node itself: its health, readiness, metrics and API
    /// description, and a `GET` that asks for this node's own copy.
    pub fn is_local(req: &Request) -> bool {
        let path = req.uri().path();
        let own = LOCAL
            .iter()
            .any(|p| path == *p || path.starts_with(&format!("{p}/")));
        own || (req.method() == axum::http::Method::GET
            && req
                .headers()
                .get(NODE_LOCAL)
                .is_some_and(|v| v.as_bytes() == b"1"))
    }

    /// Sends `req` to the leader and returns its response.
    pub async fn forward(&self, req: Request) -> Response {
        let leader = self.holder.borrow().clone();
        let Some(leader) = leader else {
            return unavailable("no node runs the domain right now (the lease is moving)");
        };
        if req.headers().contains_key(FORWARDED) {
            return unavailable(
                "the request was forwarded here, and this node does not run the domain either",
            );
        }
        let path = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let url = format!("{}{path}", leader.api);
        let method = req.method().clone();
        let mut headers = req.headers().clone();
        for h in HOP_BY_HOP {
            headers.remove(*h);
        }
        if let Ok(v) = HeaderValue::from_str(&leader.node) {
            headers.insert(HeaderName::from_static(FORWARDED), v);
        }
        // request bodies are small JSON (axum's own limit is 2 MiB): read whole, then sent
        let body = match axum::body::to_bytes(req.into_body(), MAX_FORWARDED_BODY).await {
            Ok(b) => b,
            Err(e) => {
                return ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body_too_large",
                    format!("request body not forwarded: {e}"),
                )
                .into_response()
            }
        };
        let sent = self
            .client
            .request(method, &url)
            .headers(headers)
            .body(body)
            .send()
            .await;
        let resp = match sent {
            Ok(r) => r,
            Err(e) => {
                if !self
                    .failing
                    .swap(true, std::sync::atomic::Ordering::Relaxed)
                {
                    tracing::warn!(leader = %leader.node, url = %leader.api, error = %e, "forwarding to the domain's node failed (logged once until it works again)");
                }
                return ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "domain_unreachable",
                    format!(
                        "the node running the domain ({}) did not answer: {e}",
                        leader.node
                    ),
                )
                .into_response();
            }
        };
        if self
            .failing
            .swap(false, std::sync::atomic::Ordering::Relaxed)
        {
            tracing::info!(leader = %leader.node, "forwarding to the domain's node works again");
        }
        let mut out = Response::builder().status(resp.status());
        if let Some(h) = out.headers_mut() {
            for (k, v) in resp.headers() {
                if !HOP_BY_HOP.contains(&k.as_str()) {
                    h.append(k.clone(), v.clone());
                }
            }
            if !h.contains_key(SERVED_BY) {
                if let Ok(v) = HeaderValue::from_str(&leader.node) {
                    h.insert(HeaderName::from_static(SERVED_BY), v);
                }
            }
        }
        out.body(Body::from_stream(resp.bytes_stream()))
            .unwrap_or_else(|e| {
                ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "domain_unreachable",
                    format!("the domain node's response could not be passed on: {e}"),
                )
                .into_response()
            })
    }
}

fn unavailable(why: &str) -> Response {
    let mut r =
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "domain_unavailable", why).into_response();
    r.headers_mut()
        .insert("retry-after", HeaderValue::from_static("2"));
    r
}
