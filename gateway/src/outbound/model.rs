//! The outbox's records: webhook subscriptions, the events they receive, the deliveries
//! queued for each target (a subscription, a carrier's tracking endpoint, a notification
//! provider) and the dead letters. Plain data; [`super::actor`] schedules them.

use locker_schemas::{CarrierId, Millis, SiteId};
use serde::{Deserialize, Serialize};

/// The event types a subscription can ask for.
pub const EVENT_TYPES: &[&str] = &[
    "order.created",
    "order.reserved",
    "order.deposited",
    "order.ready",
    "order.picked_up",
    "order.expired",
    "order.return_requested",
    "order.returned",
    "order.cancelled",
    "order.exception",
    "alert.raised",
    "alert.acknowledged",
    "alert.cleared",
    "cabinet.online",
    "cabinet.offline",
    "door.exception",
];

/// Whether `pattern` (an exact type, `prefix.*` or `*`) names `kind`.
pub fn type_matches(pattern: &str, kind: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_suffix(".*") {
        Some(prefix) => kind
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('.')),
        None => pattern == kind,
    }
}

/// Whether a pattern names at least one known type.
pub fn valid_pattern(pattern: &str) -> bool {
    EVENT_TYPES.iter().any(|t| type_matches(pattern, t))
}

/// Who owns a subscription: the API client that created it and its scope then.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "scope", rename_all = "snake_case")]
pub enum Owner {
    Operator { client: String },
    Carrier { client: String, carrier: CarrierId },
    SiteManager { client: String, sites: Vec<SiteId> },
}

impl Owner {
    /// The client's name.
    pub fn client(&self) -> &str {
        match self {
            Owner::Operator { client }
            | Owner::Carrier { client, .. }
            | Owner::SiteManager { client, .. } => client,
        }
    }

    /// Whether the owner's scope sees an event of this carrier and site.
    pub fn sees(&self, carrier: Option<&CarrierId>, site: Option<&SiteId>) -> bool {
        match self {
            Owner::Operator { .. } => true,
            Owner::Carrier { carrier: c, .. } => carrier == Some(c),
            Owner::SiteManager { sites, .. } => site.is_some_and(|s| sites.contains(s)),
        }
    }
}

/// A signing secret; during a rotation the previous one stays valid until `expires`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Secret {
    /// `whsec_<base64>`.
    pub secret: String,
    /// Until when it is still used to sign (the previous secret after a rotation).
    #[serde(default)]
    pub expires: Option<Millis>,
}

/// An integrator's webhook subscription.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Subscription {
    /// `WH-<ulid>`.
    pub id: String,
    pub url: String,
    /// Event types or patterns (`order.*`, `*`).
    pub events: Vec<String>,
    /// Only events of these sites (empty: every site the owner sees).
    #[serde(default)]
    pub sites: Vec<SiteId>,
    /// Only events of these carriers (empty: every carrier the owner sees).
    #[serde(default)]
    pub carriers: Vec<CarrierId>,
    #[serde(default)]
    pub description: String,
    pub owner: Owner,
    /// The current secret first, then the previous one while a rotation lasts.
    pub secrets: Vec<Secret>,
    pub enabled: bool,
    pub created_at: Millis,
    /// Why it was disabled by the gateway (the receiver answered 410 Gone).
    #[serde(default)]
    pub disabled_reason: Option<String>,
}

impl Subscription {
    /// Whether the subscription wants this event.
    pub fn wants(&self, e: &Event) -> bool {
        self.enabled
            && self.events.iter().any(|p| type_matches(p, &e.kind))
            && self.owner.sees(e.carrier.as_ref(), e.site.as_ref())
            && (self.sites.is_empty() || e.site.as_ref().is_some_and(|s| self.sites.contains(s)))
            && (self.carriers.is_empty()
                || e.carrier
                    .as_ref()
                    .is_some_and(|c| self.carriers.contains(c)))
    }

    /// The secrets that sign now.
    pub fn signing(&self, now: Millis) -> Vec<&str> {
        self.secrets
            .iter()
            .filter(|s| s.expires.is_none_or(|e| e > now))
            .map(|s| s.secret.as_str())
            .collect()
    }
}

/// An event as integrators receive it (the webhook body).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Stable across retries and restarts: `evt_<source>_<position>`.
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// When it happened, ms since the epoch.
    pub at: Millis,
    /// The same, RFC 3339 UTC.
    pub timestamp: String,
    pub cabinet: Option<String>,
    pub site: Option<SiteId>,
    pub carrier: Option<CarrierId>,
    pub data: serde_json::Value,
}

/// Where a queued delivery goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "kind", content = "id", rename_all = "snake_case")]
pub enum Target {
    /// A webhook subscription.
    Webhook(String),
    /// A carrier's tracking endpoint.
    Carrier(String),
    /// A notification provider.
    Notify(String),
}

impl Target {
    /// The metric label and the store key: `WH-...`, `carrier:dhl`, `notify:sms`.
    pub fn label(&self) -> String {
        match self {
            Target::Webhook(id) => id.clone(),
            Target::Carrier(c) => format!("carrier:{c}"),
            Target::Notify(p) => format!("notify:{p}"),
        }
    }

    /// The inverse of [`Target::label`].
    pub fn parse(label: &str) -> Option<Target> {
        if let Some(c) = label.strip_prefix("carrier:") {
            Some(Target::Carrier(c.to_owned()))
        } else if let Some(p) = label.strip_prefix("notify:") {
            Some(Target::Notify(p.to_owned()))
        } else if label.starts_with("WH-") {
            Some(Target::Webhook(label.to_owned()))
        } else {
            None
        }
    }
}

/// A delivery waiting in the outbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Entry {
    /// Position in its target's queue.
    pub seq: u64,
    /// The event's (or notice's) id: the `webhook-id` and idempotency key.
    pub event_id: String,
    /// The event type (`order.ready`) or notice kind.
    pub kind: String,
    /// Deliveries with the same key go one after the other, in order (the cabinet; the order
    /// for notifications).
    pub key: String,
    /// When the event happened (the outbox's added latency is measured from here).
    pub at: Millis,
    pub queued_at: Millis,
    #[serde(default)]
    pub attempts: u32,
    #[serde(default)]
    pub last_error: Option<String>,
    /// What is sent: the JSON body for webhooks and carriers, the rendered message for
    /// notifications.
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
}

/// A delivery that failed for good (too old, or refused for good), kept for replay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeadLetter {
    pub entry: Entry,
    pub dead_at: Millis,
    pub reason: String,
}
