//! The rules engine's metrics: alerts active, raised, cleared and acknowledged; actions;
//! cabinets by power state; the offline queue's oldest command; the replay backlog; and the
//! per-cabinet gauges behind `rules.per_cabinet_metrics`.

use prometheus::{Error, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use super::model::{AlertKind, Severity};

fn register<M: prometheus::core::Collector + Clone + 'static>(
    r: &Registry,
    m: M,
) -> Result<M, Error> {
    r.register(Box::new(m.clone()))?;
    Ok(m)
}

fn counter(r: &Registry, name: &str, help: &str) -> Result<IntCounter, Error> {
    register(r, IntCounter::new(name, help)?)
}

fn counter_vec(r: &Registry, name: &str, help: &str, l: &[&str]) -> Result<IntCounterVec, Error> {
    register(r, IntCounterVec::new(Opts::new(name, help), l)?)
}

fn gauge(r: &Registry, name: &str, help: &str) -> Result<IntGauge, Error> {
    register(r, IntGauge::new(name, help)?)
}

fn gauge_vec(r: &Registry, name: &str, help: &str, l: &[&str]) -> Result<IntGaugeVec, Error> {
    register(r, IntGaugeVec::new(Opts::new(name, help), l)?)
}

/// The rules engine's metrics.
#[derive(Clone)]
pub struct RulesMetrics {
    /// `locker_alerts_active{kind,severity}`.
    pub active: IntGaugeVec,
    pub raised: IntCounterVec,
    pub cleared: IntCounterVec,
    pub acked: IntCounter,
    pub actions: IntCounterVec,
    pub events: IntCounter,
    pub storage_errors: IntCounter,
    pub refused: IntCounter,
    pub by_power: IntGaugeVec,
    pub queue_oldest: IntGauge,
    pub backlog: IntGauge,
    pub replayed: IntCounter,
    pub cab_online: IntGaugeVec,
    pub cab_soc: IntGaugeVec,
    pub cab_backlog: IntGaugeVec,
    pub cab_queue: IntGaugeVec,
}

impl RulesMetrics {
    /// Registers the metrics (every kind and severity starts at 0, so dashboards and alerting
    /// rules see the series before the first alert).
    pub fn new(r: &Registry) -> Result<Self, Error> {
        let m = Self {
            active: gauge_vec(
                r,
                "locker_alerts_active",
                "Alerts active now, by kind and severity",
                &["kind", "severity"],
            )?,
            raised: counter_vec(
                r,
                "locker_alerts_raised_total",
                "Alerts raised, by kind and severity",
                &["kind", "severity"],
            )?,
            cleared: counter_vec(
                r,
                "locker_alerts_cleared_total",
                "Alerts cleared, by kind",
                &["kind"],
            )?,
            acked: counter(
                r,
                "locker_alerts_acknowledged_total",
                "Alerts acknowledged through the API",
            )?,
            actions: counter_vec(
                r,
                "locker_rule_actions_total",
                "Commands asked for by rules, by action and result (created, failed)",
                &["action", "result"],
            )?,
            events: counter(
                r,
                "locker_rules_events_total",
                "Committed events the rules engine evaluated",
            )?,
            storage_errors: counter(
                r,
                "locker_rules_storage_errors_total",
                "Failed attempts to store the rule state and alerts (retried)",
            )?,
            refused: counter(
                r,
                "locker_rules_refused_total",
                "New conditions refused because the cabinet holds rules.max_conditions_per_cabinet",
            )?,
            by_power: gauge_vec(
                r,
                "locker_cabinets_by_power_state",
                "Cabinets by power state (normal, low_battery, on_battery, solar_deficit, unknown)",
                &["state"],
            )?,
            queue_oldest: gauge(
                r,
                "locker_command_queue_oldest_seconds",
                "Age of the oldest command waiting for an offline cabinet (0 when none)",
            )?,
            backlog: gauge(
                r,
                "locker_replay_backlog_events",
                "Events replayed so far by cabinets still replaying after they came back",
            )?,
            replayed: counter(
                r,
                "locker_replayed_events_total",
                "Events that arrived after their cabinet reconnected but were recorded before",
            )?,
            cab_online: gauge_vec(
                r,
                "locker_cabinet_online",
                "1 if the cabinet is connected (rules.per_cabinet_metrics only)",
                &["cabinet", "site"],
            )?,
            cab_soc: gauge_vec(
                r,
                "locker_cabinet_soc_percent",
                "The cabinet's state of charge (rules.per_cabinet_metrics only)",
                &["cabinet", "site"],
            )?,
            cab_backlog: gauge_vec(
                r,
                "locker_cabinet_backlog_events",
                "Events the cabinet has replayed in its current replay (rules.per_cabinet_metrics only)",
                &["cabinet", "site"],
            )?,
            cab_queue: gauge_vec(
                r,
                "locker_cabinet_queue_depth",
                "Commands waiting for the cabinet (rules.per_cabinet_metrics only)",
                &["cabinet", "site"],
            )?,
        };
        m.reset_active();
        for k in AlertKind::ALL {
            for s in Severity::ALL {
                m.raised.with_label_values(&[k.as_str(), s.as_str()]);
            }
            m.cleared.with_label_values(&[k.as_str()]);
        }
        Ok(m)
    }

    /// Sets every (kind, severity) of `locker_alerts_active` to 0.
    pub fn reset_active(&self) {
        for k in AlertKind::ALL {
            for s in Severity::ALL {
                self.active
                    .with_label_values(&[k.as_str(), s.as_str()])
                    .set(0);
            }
        }
    }
}
