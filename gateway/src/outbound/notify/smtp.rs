//! SMTP providers: e-mail through `lettre`'s tokio transport with rustls, STARTTLS required by
//! default (implicit TLS or plain for a local relay on request), optional AUTH, an extra CA for
//! private servers. Sorts the server's answer into accepted, retryable (4xx, network, TLS,
//! timeouts) or permanent (5xx, an address that does not parse).

use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{Address, AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

use super::config::{SmtpProvider, SmtpTls};
use super::http::chain;
use super::{Message, NotifyConfigError, Receipt, SendError};

/// A configured SMTP provider.
pub struct SmtpSender {
    name: String,
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    timeout: Duration,
}

impl std::fmt::Debug for SmtpSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpSender")
            .field("name", &self.name)
            .field("from", &self.from.to_string())
            .finish_non_exhaustive()
    }
}

impl SmtpSender {
    /// Checks the provider `name` and builds its transport (reads `ca_file`: call at start).
    pub fn new(name: &str, p: &SmtpProvider) -> Result<SmtpSender, NotifyConfigError> {
        let key = |k: &str| format!("notifications.providers.{name}.{k}");
        let from: Mailbox = p
            .from
            .parse()
            .map_err(|e| NotifyConfigError::invalid(key("from"), e))?;
        let host = p.host.trim();
        if host.is_empty() {
            return Err(NotifyConfigError::invalid(key("host"), "must not be empty"));
        }
        if p.timeout_ms == 0 {
            return Err(NotifyConfigError::invalid(
                key("timeout_ms"),
                "must be above 0",
            ));
        }
        if p.password.is_some() && p.username.is_none() {
            return Err(NotifyConfigError::invalid(
                key("username"),
                "a password needs a username",
            ));
        }
        let tls_name = p.tls_name.clone().unwrap_or_else(|| host.to_owned());
        let mut params = TlsParameters::builder(tls_name);
        if let Some(ca) = p.ca_file.as_ref().filter(|c| !c.as_os_str().is_empty()) {
            let at = key("ca_file");
            let pem = std::fs::read(ca)
                .map_err(|e| NotifyConfigError::invalid(&at, format!("{}: {e}", ca.display())))?;
            let cert = Certificate::from_pem(&pem)
                .map_err(|e| NotifyConfigError::invalid(&at, format!("{}: {e}", ca.display())))?;
            params = params.add_root_certificate(cert);
        }
        let params = params
            .build_rustls()
            .map_err(|e| NotifyConfigError::invalid(key("tls"), e))?;
        let tls = match p.tls {
            SmtpTls::Starttls => Tls::Required(params),
            SmtpTls::Tls => Tls::Wrapper(params),
            SmtpTls::None => Tls::None,
        };
        let timeout = Duration::from_millis(p.timeout_ms);
        let mut b = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
            .port(p.port)
            .tls(tls)
            .timeout(Some(timeout));
        if let Some(u) = &p.username {
            b = b.credentials(Credentials::new(
                u.clone(),
                p.password.clone().unwrap_or_default(),
            ));
        }
        Ok(SmtpSender {
            name: name.to_owned(),
            transport: b.build(),
            from,
            timeout,
        })
    }

    /// The `Message-ID` of a notice's e-mail: the same on every try, so a receiving system
    /// can drop a duplicate after a retry whose first answer was lost.
    fn message_id(&self, m: &Message) -> String {
        format!(
            "<notice-{}.{}@{}>",
            m.notice,
            m.order,
            self.from.email.domain()
        )
    }

    /// Sends `m` once, within the provider's timeout.
    pub async fn send(&self, m: &Message) -> Result<Receipt, SendError> {
        let permanent = |what: &str, e: &dyn std::fmt::Display| SendError::Permanent {
            reason: format!("provider {}: {what}: {e}", self.name),
        };
        let addr: Address =
            m.to.parse()
                .map_err(|e| permanent("the recipient's address", &e))?;
        let name = m.name.clone().filter(|n| !n.trim().is_empty());
        let id = self.message_id(m);
        let email = lettre::Message::builder()
            .from(self.from.clone())
            .to(Mailbox::new(name, addr))
            .subject(m.subject.clone().unwrap_or_default())
            .message_id(Some(id.clone()))
            .header(ContentType::TEXT_PLAIN)
            .body(m.body.clone())
            .map_err(|e| permanent("the e-mail", &e))?;
        match tokio::time::timeout(self.timeout, self.transport.send(email)).await {
            Err(_) => Err(SendError::Retryable {
                reason: format!(
                    "provider {}: timed out after {} ms",
                    self.name,
                    self.timeout.as_millis()
                ),
                retry_after: None,
            }),
            Ok(Err(e)) => {
                let reason = format!("provider {}: {}", self.name, chain(&e));
                if e.is_permanent() {
                    Err(SendError::Permanent { reason })
                } else {
                    Err(SendError::Retryable {
                        reason,
                        retry_after: None,
                    })
                }
            }
            Ok(Ok(r)) => Ok(Receipt {
                provider: self.name.clone(),
                status: format!("{} {}", r.code(), r.message().collect::<Vec<_>>().join(" ")),
                message_id: Some(id),
            }),
        }
    }
}
