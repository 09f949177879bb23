//! The `[notifications]` configuration: providers (HTTP and SMTP), the default provider per
//! channel, the per-site and per-carrier routes, the channel fallback order, the QR link and
//! the message files. Plain serde data with defaults; [`super::Notifier::new`] validates it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use locker_schemas::{CarrierId, SiteId};
use serde::{Deserialize, Serialize};

use crate::parcels::model::Channel;

/// `[notifications]` in gateway.toml.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NotifyConfig {
    /// Whether notices are delivered at all (off: they wait in the outbox for API readers).
    pub enabled: bool,
    /// The QR link in messages, a template over `qr` and `order`.
    pub qr_link: String,
    /// A folder of message files (`<language>.toml`) overriding or adding to the built-in
    /// ones; empty = built-in only.
    pub templates_dir: Option<PathBuf>,
    /// The channels tried, in order, after the recipient's own one when it has no address or
    /// no provider for it.
    pub fallback: Vec<Channel>,
    /// The providers by name.
    pub providers: BTreeMap<String, ProviderConfig>,
    /// The default provider of each channel.
    pub channels: ChannelProviders,
    /// Overrides per site and/or carrier (most specific wins).
    pub routes: Vec<RouteConfig>,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            qr_link: "https://lockers.example.com/qr/{{ qr }}".into(),
            templates_dir: None,
            fallback: vec![
                Channel::Sms,
                Channel::Whatsapp,
                Channel::Push,
                Channel::Email,
            ],
            providers: BTreeMap::new(),
            channels: ChannelProviders::default(),
            routes: Vec::new(),
        }
    }
}

impl NotifyConfig {
    /// Makes relative paths (the message folder, SMTP CA files) relative to `base`, the
    /// configuration file's folder.
    pub fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() && !p.as_os_str().is_empty() {
                *p = base.join(&*p);
            }
        };
        if let Some(d) = self.templates_dir.as_mut() {
            fix(d);
        }
        for p in self.providers.values_mut() {
            if let ProviderConfig::Smtp(s) = p {
                if let Some(c) = s.ca_file.as_mut() {
                    fix(c);
                }
            }
        }
    }
}

/// A provider name per channel (any may be missing).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChannelProviders {
    pub sms: Option<String>,
    pub whatsapp: Option<String>,
    pub email: Option<String>,
    pub push: Option<String>,
}

impl ChannelProviders {
    /// The provider named for `c`, if any.
    pub fn get(&self, c: Channel) -> Option<&str> {
        match c {
            Channel::Sms => self.sms.as_deref(),
            Channel::Whatsapp => self.whatsapp.as_deref(),
            Channel::Email => self.email.as_deref(),
            Channel::Push => self.push.as_deref(),
        }
    }

    /// Every (channel, provider) named.
    pub fn named(&self) -> impl Iterator<Item = (Channel, &str)> {
        CHANNELS
            .into_iter()
            .filter_map(|c| self.get(c).map(|p| (c, p)))
    }
}

/// Every channel, in the order of messages and docs.
pub const CHANNELS: [Channel; 4] = [
    Channel::Sms,
    Channel::Whatsapp,
    Channel::Email,
    Channel::Push,
];

/// The snake_case name of a channel.
pub fn channel_name(c: Channel) -> &'static str {
    match c {
        Channel::Sms => "sms",
        Channel::Whatsapp => "whatsapp",
        Channel::Email => "email",
        Channel::Push => "push",
    }
}

/// `[[notifications.routes]]`: the providers for a site, a carrier, or a carrier at a site.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    #[serde(default)]
    pub site: Option<SiteId>,
    #[serde(default)]
    pub carrier: Option<CarrierId>,
    #[serde(default)]
    pub sms: Option<String>,
    #[serde(default)]
    pub whatsapp: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub push: Option<String>,
}

impl RouteConfig {
    /// The provider this route names for `c`, if any.
    pub fn get(&self, c: Channel) -> Option<&str> {
        match c {
            Channel::Sms => self.sms.as_deref(),
            Channel::Whatsapp => self.whatsapp.as_deref(),
            Channel::Email => self.email.as_deref(),
            Channel::Push => self.push.as_deref(),
        }
    }

    /// The providers this route names.
    pub fn providers(&self) -> ChannelProviders {
        ChannelProviders {
            sms: self.sms.clone(),
            whatsapp: self.whatsapp.clone(),
            email: self.email.clone(),
            push: self.push.clone(),
        }
    }
}

/// `[notifications.providers.<name>]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ProviderConfig {
    /// An HTTP API: SMS and WhatsApp gateways (Twilio-like or local), app push endpoints.
    Http(HttpProvider),
    /// An SMTP server (e-mail).
    Smtp(SmtpProvider),
}

/// How an HTTP provider's request body is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ContentType {
    /// `application/x-www-form-urlencoded`: `body` is a table of fields.
    Form,
    /// `application/json`: `body` is a table of string fields or a JSON template.
    #[default]
    Json,
}

/// An HTTP provider's body: a table of fields (each a template), or a JSON template whose
/// `{{ value }}`s are written as JSON (strings quoted and escaped).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum BodyTemplate {
    Fields(BTreeMap<String, String>),
    Template(String),
}

/// How an HTTP provider authenticates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum AuthConfig {
    #[default]
    None,
    Basic {
        username: String,
        #[serde(default)]
        password: String,
    },
    Bearer {
        token: String,
    },
}

/// An HTTP provider.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpProvider {
    /// The URL, a template (the message's variables may appear in it).
    pub url: String,
    #[serde(default = "post")]
    pub method: String,
    /// Extra request headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub content_type: ContentType,
    pub body: BodyTemplate,
    /// The statuses meaning "accepted"; empty = any 2xx.
    #[serde(default)]
    pub success: Vec<u16>,
    /// A JSON pointer (RFC 6901) to the provider's message id in the response, e.g. `/sid`.
    #[serde(default)]
    pub message_id: Option<String>,
    #[serde(default = "ten_seconds")]
    pub timeout_ms: u64,
}

fn post() -> String {
    "POST".into()
}

fn ten_seconds() -> u64 {
    10_000
}

/// How an SMTP connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SmtpTls {
    /// Plain connection upgraded with STARTTLS; a server without it is refused.
    #[default]
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
    /// No encryption (a relay on localhost only).
    None,
}

/// An SMTP provider.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpProvider {
    pub host: String,
    #[serde(default = "submission")]
    pub port: u16,
    #[serde(default)]
    pub tls: SmtpTls,
    /// The name the server's certificate must carry; default `host`.
    #[serde(default)]
    pub tls_name: Option<String>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// The sender, e.g. `Locker Hub <noreply@lockers.example.com>`.
    pub from: String,
    #[serde(default = "ten_seconds")]
    pub timeout_ms: u64,
    /// An extra CA (PEM) to trust besides the public roots (a self-signed or private server).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

fn submission() -> u16 {
    587
}
