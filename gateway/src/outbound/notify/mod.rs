//! Recipient notifications: renders a parcel notice in the recipient's language and delivers
//! it through the channel configured for its site and carrier. Owns the `[notifications]`
//! configuration, the message files, the routing and the providers (HTTP for SMS, WhatsApp and
//! push; SMTP for e-mail). It keeps no state of its own: the durable outbox that calls
//! [`Notifier::render`] and [`Notifier::send`] (retries, dead letters, replay) is in the
//! outbound delivery module, and decides from [`SendError`] what to do next.
//!
//! - [`config`]: the serde structs of `[notifications]`;
//! - [`templates`]: the built-in and overriding message files, language fallback;
//! - [`routing`]: provider per channel, site and carrier; channel fallback;
//! - [`http`] and [`smtp`]: one message through one provider.

pub mod config;
pub mod http;
pub mod routing;
pub mod smtp;
pub mod templates;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use locker_schemas::{CarrierId, OrderId, SiteId};
use serde::{Deserialize, Serialize};

pub use config::{NotifyConfig, ProviderConfig};

use crate::parcels::model::{Channel, Notice, NoticeKind};
use config::{channel_name, CHANNELS};
use http::HttpSender;
use routing::Router;
use smtp::SmtpSender;
use templates::{kind_name, Templates, TextVars};

/// A configuration the notifier cannot run with; `key` names the setting.
#[derive(Debug, thiserror::Error)]
pub enum NotifyConfigError {
    #[error("{key}: {reason}")]
    Invalid { key: String, reason: String },
}

impl NotifyConfigError {
    /// An error about `key`.
    pub fn invalid(key: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        NotifyConfigError::Invalid {
            key: key.into(),
            reason: reason.to_string(),
        }
    }

    /// The configuration key at fault.
    pub fn key(&self) -> &str {
        match self {
            NotifyConfigError::Invalid { key, .. } => key,
        }
    }
}

/// Why a message was not delivered, and whether trying again may help.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SendError {
    /// Network errors, timeouts, HTTP 5xx/429/408, SMTP 4xx, TLS: try again (not before
    /// `retry_after` when the provider said so).
    #[error("retryable: {reason}")]
    Retryable {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// No address or provider for the recipient, other HTTP 4xx, SMTP 5xx: trying again
    /// gives the same answer.
    #[error("permanent: {reason}")]
    Permanent { reason: String },
}

impl SendError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, SendError::Retryable { .. })
    }

    pub fn reason(&self) -> &str {
        match self {
            SendError::Retryable { reason, .. } | SendError::Permanent { reason } => reason,
        }
    }

    /// The provider's `Retry-After`, if it gave one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            SendError::Retryable { retry_after, .. } => *retry_after,
            SendError::Permanent { .. } => None,
        }
    }
}

/// One rendered message for one provider: what the outbox stores and hands to
/// [`Notifier::send`] (possibly after a restart, so it carries everything the provider's
/// templates may use).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// The notice it was rendered from.
    pub notice: u64,
    pub order: OrderId,
    pub kind: NoticeKind,
    pub site: SiteId,
    pub carrier: CarrierId,
    /// The provider's name in `[notifications.providers]`.
    pub provider: String,
    pub channel: Channel,
    /// Phone number, e-mail address or push token.
    pub to: String,
    /// The recipient's name, if known.
    #[serde(default)]
    pub name: Option<String>,
    /// The language of the text (after fallback).
    pub language: String,
    /// E-mail subject and push title.
    #[serde(default)]
    pub subject: Option<String>,
    /// The text: the short text for SMS, WhatsApp and push, the e-mail body for e-mail.
    pub body: String,
    #[serde(default)]
    pub pin: Option<String>,
    #[serde(default)]
    pub qr: Option<String>,
    #[serde(default)]
    pub qr_link: Option<String>,
    #[serde(default)]
    pub site_name: String,
    #[serde(default)]
    pub address: String,
    #[serde(default)]
    pub expires_local: Option<String>,
}

/// A provider's acceptance of a message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Receipt {
    pub provider: String,
    /// The HTTP status (`201`) or the SMTP reply (`250 OK`).
    pub status: String,
    /// The provider's message id (HTTP: from `message_id` in the answer; SMTP: the
    /// `Message-ID` of the e-mail).
    pub message_id: Option<String>,
}

enum Provider {
    Http(HttpSender),
    Smtp(SmtpSender),
}

struct Inner {
    enabled: bool,
    templates: Templates,
    router: Router,
    providers: BTreeMap<String, Provider>,
    client: reqwest::Client,
}

/// Renders notices and sends messages. Cheap to clone.
#[derive(Clone)]
pub struct Notifier {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field("enabled", &self.inner.enabled)
            .field(
                "providers",
                &self.inner.providers.keys().collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// The template name of the QR link.
const QR_LINK: &str = "qr_link.txt";

impl Notifier {
    /// Checks the whole configuration (every template compiles and renders a sample, every
    /// route names a defined provider of a kind that fits the channel, addresses and files
    /// parse) and builds the providers. Reads `templates_dir` and CA files: call it at start.
    pub fn new(cfg: &NotifyConfig) -> Result<Notifier, NotifyConfigError> {
        let mut templates = Templates::load(cfg.templates_dir.as_deref())?;
        let key = "notifications.qr_link";
        templates
            .add(QR_LINK.into(), cfg.qr_link.clone())
            .map_err(|e| NotifyConfigError::invalid(key, e))?;
        templates
            .render(
                QR_LINK,
                &QrVars {
                    qr: "T",
                    order: "O",
                },
            )
            .map_err(|e| NotifyConfigError::invalid(key, e))?;
        let mut providers = BTreeMap::new();
        for (name, p) in &cfg.providers {
            if name.trim().is_empty() || name.contains('/') {
                return Err(NotifyConfigError::invalid(
                    format!("notifications.providers.{name:?}"),
                    "a provider name is a non-empty word",
                ));
            }
            let sender = match p {
                ProviderConfig::Http(h) => {
                    Provider::Http(HttpSender::new(name, h, &mut templates)?)
                }
                ProviderConfig::Smtp(s) => Provider::Smtp(SmtpSender::new(name, s)?),
            };
            providers.insert(name.clone(), sender);
        }
        let fits = |at: String, c: Channel, name: &str| match providers.get(name) {
            None => Err(NotifyConfigError::invalid(
                at,
                format!("no provider `{name}` in [notifications.providers]"),
            )),
            Some(Provider::Smtp(_)) if c != Channel::Email => Err(NotifyConfigError::invalid(
                at,
                format!("`{name}` is an SMTP provider: it sends e-mail only"),
            )),
            Some(_) => Ok(()),
        };
        for (c, name) in cfg.channels.named() {
            fits(
                format!("notifications.channels.{}", channel_name(c)),
                c,
                name,
            )?;
        }
        let mut seen = BTreeSet::new();
        for (i, r) in cfg.routes.iter().enumerate() {
            let at = format!("notifications.routes[{i}]");
            if r.site.is_none() && r.carrier.is_none() {
                return Err(NotifyConfigError::invalid(
                    at,
                    "a route names a site, a carrier or both (the defaults are [notifications.channels])",
                ));
            }
            for c in CHANNELS {
                if let Some(name) = r.get(c) {
                    fits(format!("{at}.{}", channel_name(c)), c, name)?;
                    let k = (r.site.clone(), r.carrier.clone(), channel_name(c));
                    if !seen.insert(k) {
                        return Err(NotifyConfigError::invalid(
                            format!("{at}.{}", channel_name(c)),
                            "an earlier route names a provider for the same site, carrier and channel",
                        ));
                    }
                }
            }
        }
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("locker-hub/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| NotifyConfigError::invalid("notifications", e))?;
        Ok(Notifier {
            inner: Arc::new(Inner {
                enabled: cfg.enabled,
                templates,
                router: Router {
                    defaults: cfg.channels.clone(),
                    routes: cfg.routes.clone(),
                    fallback: cfg.fallback.clone(),
                },
                providers,
                client,
            }),
        })
    }

    /// Whether a provider of this name is configured.
    pub fn has_provider(&self, name: &str) -> bool {
        self.inner.providers.contains_key(name)
    }

    /// Whether notices are to be delivered (`notifications.enabled`).
    pub fn enabled(&self) -> bool {
        self.inner.enabled
    }

    /// The language a tag is served in (`de-AT` -> `de`, unknown -> `en`).
    pub fn language(&self, tag: &str) -> String {
        self.inner.templates.language(tag)
    }

    /// Picks the channel and provider (the recipient's channel, routed per site and carrier,
    /// else the fallback order) and renders the text in the recipient's language.
    /// `Err(Permanent)` when no channel has both an address and a provider.
    pub fn render(&self, n: &Notice) -> Result<Message, SendError> {
        let i = &self.inner;
        let route = i
            .router
            .route(&n.site, &n.carrier, &n.recipient)
            .map_err(|reason| SendError::Permanent {
                reason: format!("notice {}: {reason}", n.id),
            })?;
        let template_error = |e: minijinja::Error| SendError::Permanent {
            reason: format!("notice {}: {e:#}", n.id),
        };
        let order = n.order.to_string();
        let qr_link = match n.qr.as_deref() {
            Some(qr) => Some(
                i.templates
                    .render(QR_LINK, &QrVars { qr, order: &order })
                    .map_err(template_error)?,
            ),
            None => None,
        };
        let s = |v: &Option<String>| v.clone().unwrap_or_default();
        let vars = TextVars {
            name: s(&n.recipient.name),
            pin: s(&n.pin),
            qr: s(&n.qr),
            qr_link: s(&qr_link),
            site_name: n.site_name.clone(),
            address: n.address.clone(),
            expires_local: s(&n.expires_local),
            order,
            kind: kind_name(n.kind).into(),
            carrier: n.carrier.to_string(),
            site: n.site.to_string(),
            cabinet: n
                .cabinet
                .as_ref()
                .map(|c| c.to_string())
                .unwrap_or_default(),
            compartment: n
                .compartment
                .as_ref()
                .map(|c| c.to_string())
                .unwrap_or_default(),
        };
        let texts = i
            .templates
            .texts(&n.recipient.language, n.kind, &vars)
            .map_err(template_error)?;
        let (subject, body) = match route.channel {
            Channel::Email => (Some(texts.subject), texts.email),
            Channel::Push => (Some(texts.subject), texts.short),
            Channel::Sms | Channel::Whatsapp => (None, texts.short),
        };
        Ok(Message {
            notice: n.id,
            order: n.order,
            kind: n.kind,
            site: n.site.clone(),
            carrier: n.carrier.clone(),
            provider: route.provider,
            channel: route.channel,
            to: route.to,
            name: n.recipient.name.clone(),
            language: texts.language,
            subject,
            body,
            pin: n.pin.clone(),
            qr: n.qr.clone(),
            qr_link,
            site_name: n.site_name.clone(),
            address: n.address.clone(),
            expires_local: n.expires_local.clone(),
        })
    }

    /// Sends one rendered message through its provider, once, within the provider's timeout.
    pub async fn send(&self, m: &Message) -> Result<Receipt, SendError> {
        let i = &self.inner;
        match i.providers.get(&m.provider) {
            None => Err(SendError::Permanent {
                reason: format!(
                    "provider `{}` is no longer in [notifications.providers]",
                    m.provider
                ),
            }),
            Some(Provider::Http(h)) => h.send(&i.templates, &i.client, m).await,
            Some(Provider::Smtp(s)) => s.send(m).await,
        }
    }
}

#[derive(Serialize)]
struct QrVars<'a> {
    qr: &'a str,
    order: &'a str,
}
