//! The `[webhooks]` table of gateway.toml: how the outbox retries and paces deliveries, and
//! each carrier's tracking endpoint with the shape its tracking system expects.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Webhook delivery settings (`[webhooks]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhooksConfig {
    /// Deliver at all (off: nothing is queued; subscriptions can still be managed).
    pub enabled: bool,
    /// How often the outbox reads the order, alert and notice logs for new records, ms.
    pub poll_ms: u64,
    /// One request may take this long (connect, send, answer), ms.
    pub timeout_ms: u64,
    /// Requests in flight to one endpoint at most (events of one cabinet are always sent one
    /// after the other, in order).
    pub concurrency_per_endpoint: usize,
    /// Requests in flight to all endpoints together at most.
    pub max_in_flight: usize,
    /// The first retry waits about this long, ms; each further one twice as long.
    pub retry_base_ms: u64,
    /// No retry waits longer than this, ms.
    pub retry_max_ms: u64,
    /// A delivery still failing this long after it was queued goes to the dead letters, s.
    pub max_age_s: u64,
    /// Subscriptions at most (over all integrators).
    pub max_subscriptions: usize,
    /// Deliveries waiting for one target at most (memory stays bounded while a receiver is
    /// down): beyond it new ones go straight to the dead letters, replayable.
    pub max_pending_per_endpoint: usize,
    /// Allow `http://` endpoint URLs (tests, a receiver on the same host); `https://` always.
    pub allow_http: bool,
    /// Each carrier's tracking endpoint (`[webhooks.carriers.<carrier id>]`).
    pub carriers: BTreeMap<String, CarrierTracking>,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            poll_ms: 100,
            timeout_ms: 10_000,
            concurrency_per_endpoint: 4,
            max_in_flight: 256,
            retry_base_ms: 1_000,
            retry_max_ms: 600_000,
            max_age_s: 86_400,
            max_subscriptions: 1_000,
            max_pending_per_endpoint: 1_000_000,
            allow_http: false,
            carriers: BTreeMap::new(),
        }
    }
}

/// Where a carrier's tracking system takes status updates, and in which shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CarrierTracking {
    /// The carrier's endpoint.
    pub url: String,
    /// The carrier's status for each order state it wants (`deposited`, `ready`,
    /// `picked_up`, `expired`, `returned`, `cancelled`, ...); other states are not sent.
    pub statuses: BTreeMap<String, String>,
    /// The request body: a minijinja template over `tracking`, `reference`, `status`,
    /// `state`, `order`, `at` (ms), `at_utc` (RFC 3339), `site`, `cabinet`, `compartment`,
    /// `carrier`. Use `| tojson` for JSON strings.
    #[serde(default = "default_tracking_body")]
    pub body: String,
    /// `Content-Type` of the body.
    #[serde(default = "json_type")]
    pub content_type: String,
    /// Extra headers (an API key, `Authorization`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Sign the request as a webhook with this secret (`whsec_...`) as well.
    #[serde(default)]
    pub secret: Option<String>,
}

fn json_type() -> String {
    "application/json".into()
}

fn default_tracking_body() -> String {
    r#"{"tracking_number": {{ tracking | tojson }}, "status": {{ status | tojson }}, "occurred_at": {{ at_utc | tojson }}, "location": {"site": {{ site | tojson }}, "cabinet": {{ cabinet | tojson }}}}"#.into()
}
