//! What leaves the gateway for other systems: integrators' webhooks, carriers' tracking
//! updates and recipients' notifications, each delivered from a durable outbox with retries,
//! backoff and dead letters.
//!
//! - [`notify`]: the recipient channels (SMS and WhatsApp through an HTTP provider, e-mail over
//!   SMTP, app push) and their templates.

pub mod notify;
pub mod config;
pub mod model;
pub mod sign;
pub mod queue;
