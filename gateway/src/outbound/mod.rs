//! What leaves the gateway for other systems: integrators' webhooks, carriers' tracking
//! updates and recipients' notifications, each delivered from a durable outbox with retries,
//! backoff and dead letters.
//!
//! One actor ([`actor::Outbound`]) owns the subscriptions and the outbox, reached through
//! [`OutboundHandle`]. It tails the parcel trail, the alert change log and the notice outbox by
//! durable cursors, takes presence changes from the edge, turns them into events
//! ([`events`]), queues one delivery per target that wants each (same batch as the cursor, so
//! a crash neither loses nor doubles one), and sends them with bounded concurrency per target,
//! in order per cabinet ([`queue`]), signed ([`sign`]), over HTTP ([`deliver`]).
//!
//! - [`notify`]: the recipient channels (SMS and WhatsApp through an HTTP provider, e-mail over
//!   SMTP, app push) and their templates.

pub mod actor;
mod admin;
pub mod config;
pub mod deliver;
pub mod events;
pub mod metrics;
pub mod model;
pub mod notify;
pub mod queue;
mod sending;
pub mod sign;

use locker_schemas::{CabinetId, CarrierId, Millis, SiteId};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

pub use actor::{Outbound, Parts};
pub use config::WebhooksConfig;
use model::{DeadLetter, Subscription};

use crate::parcels::Caller;

/// Why an outbox operation failed; each maps to one stable API error code.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OutboundError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Invalid(String),
    #[error("storage: {0}")]
    Storage(String),
    #[error("the outbox is shutting down")]
    Closed,
}

impl OutboundError {
    /// The API's error code.
    pub fn code(&self) -> &'static str {
        match self {
            OutboundError::NotFound(_) => "not_found",
            OutboundError::Forbidden(_) => "forbidden",
            OutboundError::Invalid(_) => "bad_request",
            OutboundError::Storage(_) => "storage",
            OutboundError::Closed => "unavailable",
        }
    }
}

/// A new subscription, as the API takes it.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSubscription {
    /// The receiver (`https://`; `http://` only with `webhooks.allow_http`).
    pub url: String,
    /// Event types or patterns: `order.ready`, `order.*`, `*`.
    pub events: Vec<String>,
    /// Only events of these sites (within the token's scope).
    #[serde(default)]
    #[schema(value_type = Vec<crate::api::openapi::SiteIdDoc>)]
    pub sites: Vec<SiteId>,
    /// Only events of these carriers (within the token's scope).
    #[serde(default)]
    #[schema(value_type = Vec<crate::api::openapi::CarrierIdDoc>)]
    pub carriers: Vec<CarrierId>,
    #[serde(default)]
    pub description: String,
    /// `whsec_<base64>` (24 to 64 bytes); generated when absent.
    #[serde(default)]
    pub secret: Option<String>,
}

/// A change to a subscription (absent fields stay).
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionPatch {
    pub url: Option<String>,
    pub events: Option<Vec<String>>,
    #[schema(value_type = Option<Vec<crate::api::openapi::SiteIdDoc>>)]
    pub sites: Option<Vec<SiteId>>,
    #[schema(value_type = Option<Vec<crate::api::openapi::CarrierIdDoc>>)]
    pub carriers: Option<Vec<CarrierId>>,
    pub description: Option<String>,
    pub enabled: Option<bool>,
}

/// How a target's deliveries are doing.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct Health {
    pub pending: usize,
    pub in_flight: usize,
    /// Age of the oldest waiting delivery, ms.
    pub oldest_pending_ms: Option<u64>,
    pub delivered: u64,
    pub failed_attempts: u64,
    pub dead_lettered: u64,
    pub last_delivered_at: Option<Millis>,
    pub last_error: Option<String>,
    pub last_error_at: Option<Millis>,
}

/// A subscription as the API shows it (secrets only when just created or rotated).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SubscriptionView {
    #[serde(flatten)]
    pub sub: SubscriptionOut,
    pub health: Health,
    /// The new secret: shown once, on create and rotate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

/// The stored subscription without its secrets.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SubscriptionOut {
    /// `WH-<ulid>`.
    pub id: String,
    pub url: String,
    pub events: Vec<String>,
    #[schema(value_type = Vec<crate::api::openapi::SiteIdDoc>)]
    pub sites: Vec<SiteId>,
    #[schema(value_type = Vec<crate::api::openapi::CarrierIdDoc>)]
    pub carriers: Vec<CarrierId>,
    pub description: String,
    pub owner: String,
    pub enabled: bool,
    pub disabled_reason: Option<String>,
    pub created_at: Millis,
    /// When the previous secret stops signing, during a rotation.
    pub previous_secret_expires: Option<Millis>,
}

impl From<&Subscription> for SubscriptionOut {
    fn from(s: &Subscription) -> Self {
        Self {
            id: s.id.clone(),
            url: s.url.clone(),
            events: s.events.clone(),
            sites: s.sites.clone(),
            carriers: s.carriers.clone(),
            description: s.description.clone(),
            owner: s.owner.client().to_owned(),
            enabled: s.enabled,
            disabled_reason: s.disabled_reason.clone(),
            created_at: s.created_at,
            previous_secret_expires: s.secrets.get(1).and_then(|x| x.expires),
        }
    }
}

type Reply<T> = oneshot::Sender<Result<T, OutboundError>>;

/// What the actor is asked.
pub(crate) enum Msg {
    Presence {
        cabinet: CabinetId,
        online: bool,
        at: Millis,
    },
    Create(NewSubscription, Caller, Reply<SubscriptionView>),
    List(Caller, Reply<Vec<SubscriptionView>>),
    Get(String, Caller, Reply<SubscriptionView>),
    Update(String, SubscriptionPatch, Caller, Reply<SubscriptionView>),
    Delete(String, Caller, Reply<()>),
    Rotate(String, u64, Caller, Reply<SubscriptionView>),
    Dead(String, u64, usize, Caller, Reply<Vec<DeadLetter>>),
    Replay(String, Option<Vec<u64>>, Caller, Reply<usize>),
    Ping(String, Caller, Reply<String>),
    /// The health of every target (the carriers' and notification providers' too).
    Targets(Reply<Vec<(String, Health)>>),
}

/// Talks to the outbound actor.
#[derive(Clone)]
pub struct OutboundHandle {
    tx: mpsc::Sender<Msg>,
}

/// The actor's inbox.
pub struct Inbox(pub(crate) mpsc::Receiver<Msg>);

impl OutboundHandle {
    /// A handle and the inbox the actor is started with.
    pub fn channel() -> (Self, Inbox) {
        let (tx, rx) = mpsc::channel(1024);
        (Self { tx }, Inbox(rx))
    }

    async fn ask<T>(&self, f: impl FnOnce(Reply<T>) -> Msg) -> Result<T, OutboundError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(f(tx))
            .await
            .map_err(|_| OutboundError::Closed)?;
        rx.await.map_err(|_| OutboundError::Closed)?
    }

    /// A cabinet connected or went away (never blocks the edge's presence path for long:
    /// the inbox is bounded and the actor drains it between deliveries).
    pub async fn presence(&self, cabinet: CabinetId, online: bool, at: Millis) {
        let _ = self
            .tx
            .send(Msg::Presence {
                cabinet,
                online,
                at,
            })
            .await;
    }

    pub async fn create(
        &self,
        s: NewSubscription,
        c: Caller,
    ) -> Result<SubscriptionView, OutboundError> {
        self.ask(|r| Msg::Create(s, c, r)).await
    }

    pub async fn list(&self, c: Caller) -> Result<Vec<SubscriptionView>, OutboundError> {
        self.ask(|r| Msg::List(c, r)).await
    }

    pub async fn get(&self, id: String, c: Caller) -> Result<SubscriptionView, OutboundError> {
        self.ask(|r| Msg::Get(id, c, r)).await
    }

    pub async fn update(
        &self,
        id: String,
        p: SubscriptionPatch,
        c: Caller,
    ) -> Result<SubscriptionView, OutboundError> {
        self.ask(|r| Msg::Update(id, p, c, r)).await
    }

    pub async fn delete(&self, id: String, c: Caller) -> Result<(), OutboundError> {
        self.ask(|r| Msg::Delete(id, c, r)).await
    }

    /// A new secret; the previous one keeps signing for `keep_old_s` seconds.
    pub async fn rotate(
        &self,
        id: String,
        keep_old_s: u64,
        c: Caller,
    ) -> Result<SubscriptionView, OutboundError> {
        self.ask(|r| Msg::Rotate(id, keep_old_s, c, r)).await
    }

    pub async fn dead_letters(
        &self,
        id: String,
        after: u64,
        limit: usize,
        c: Caller,
    ) -> Result<Vec<DeadLetter>, OutboundError> {
        self.ask(|r| Msg::Dead(id, after, limit, c, r)).await
    }

    /// Queues dead letters again (all of them, or the seqs named).
    pub async fn replay(
        &self,
        id: String,
        seqs: Option<Vec<u64>>,
        c: Caller,
    ) -> Result<usize, OutboundError> {
        self.ask(|r| Msg::Replay(id, seqs, c, r)).await
    }

    /// Queues a `webhook.ping` event; returns its event id.
    pub async fn ping(&self, id: String, c: Caller) -> Result<String, OutboundError> {
        self.ask(|r| Msg::Ping(id, c, r)).await
    }

    /// Every target's health.
    pub async fn targets(&self) -> Result<Vec<(String, Health)>, OutboundError> {
        self.ask(Msg::Targets).await
    }
}
