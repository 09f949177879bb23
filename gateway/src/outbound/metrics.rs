//! The outbox's metrics, per target (a webhook subscription id, `carrier:<id>`,
//! `notify:<provider>`): delivered, failed attempts, retries, dead letters, request latency,
//! what waits and how old the oldest is; and the outbox's added latency (event to delivery).

use prometheus::{
    Error, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts,
    Registry,
};

fn register<M: prometheus::core::Collector + Clone + 'static>(
    r: &Registry,
    m: M,
) -> Result<M, Error> {
    r.register(Box::new(m.clone()))?;
    Ok(m)
}

fn counter_vec(r: &Registry, name: &str, help: &str) -> Result<IntCounterVec, Error> {
    register(r, IntCounterVec::new(Opts::new(name, help), &["target"])?)
}

fn gauge_vec(r: &Registry, name: &str, help: &str) -> Result<IntGaugeVec, Error> {
    register(r, IntGaugeVec::new(Opts::new(name, help), &["target"])?)
}

const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 3600.0,
];

/// The outbox's metrics.
#[derive(Clone)]
pub struct OutboundMetrics {
    pub delivered: IntCounterVec,
    pub failed: IntCounterVec,
    pub retried: IntCounterVec,
    pub dead: IntCounterVec,
    pub request: HistogramVec,
    pub pending: IntGaugeVec,
    pub oldest: IntGaugeVec,
    pub delay: Histogram,
    pub queued: IntCounter,
    pub storage_errors: IntCounter,
}

impl OutboundMetrics {
    pub fn new(r: &Registry) -> Result<Self, Error> {
        Ok(Self {
            delivered: counter_vec(
                r,
                "locker_outbound_delivered_total",
                "Deliveries the target accepted (2xx; a notification provider's acceptance)",
            )?,
            failed: counter_vec(
                r,
                "locker_outbound_failed_total",
                "Delivery attempts that failed (error, timeout, non-2xx), each counted",
            )?,
            retried: counter_vec(
                r,
                "locker_outbound_retried_total",
                "Delivery attempts after the first (retries)",
            )?,
            dead: counter_vec(
                r,
                "locker_outbound_dead_lettered_total",
                "Deliveries given up (older than webhooks.max_age_s, or refused for good) and kept as dead letters",
            )?,
            request: register(
                r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "locker_outbound_request_seconds",
                        "Time of one delivery request, by target",
                    )
                    .buckets(BUCKETS.to_vec()),
                    &["target"],
                )?,
            )?,
            pending: gauge_vec(
                r,
                "locker_outbound_pending",
                "Deliveries waiting (in flight included), by target",
            )?,
            oldest: gauge_vec(
                r,
                "locker_outbound_oldest_seconds",
                "Age of the oldest waiting delivery, by target (0 when none waits)",
            )?,
            delay: register(
                r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "locker_outbound_delay_seconds",
                        "From the event (or notice) to its delivery: what the outbox adds, retries included",
                    )
                    .buckets(BUCKETS.to_vec()),
                )?,
            )?,
            queued: register(
                r,
                IntCounter::new(
                    "locker_outbound_queued_total",
                    "Deliveries queued (an event times the targets that want it)",
                )?,
            )?,
            storage_errors: register(
                r,
                IntCounter::new(
                    "locker_outbound_storage_errors_total",
                    "Outbox reads or writes that failed (retried at the next poll)",
                )?,
            )?,
        })
    }

    /// Forgets a deleted target's series.
    pub fn forget(&self, target: &str) {
        for v in [&self.delivered, &self.failed, &self.retried, &self.dead] {
            let _ = v.remove_label_values(&[target]);
        }
        let _ = self.request.remove_label_values(&[target]);
        let _ = self.pending.remove_label_values(&[target]);
        let _ = self.oldest.remove_label_values(&[target]);
    }
}
