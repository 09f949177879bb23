//! Prometheus metrics of the gateway's own components (ingest, commands, store, API), all in
//! one registry that `GET /metrics` renders. The edge registers its `locker_edge_*` metrics in
//! the same registry.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

/// Why a metric could not be registered (a programming error: a duplicate name).
#[derive(Debug, thiserror::Error)]
#[error("metrics registration failed: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

fn counter(r: &Registry, name: &str, help: &str) -> Result<IntCounter, MetricsError> {
    let c = IntCounter::new(name, help)?;
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

fn counter_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntCounterVec, MetricsError> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

fn gauge(r: &Registry, name: &str, help: &str) -> Result<IntGauge, MetricsError> {
    let g = IntGauge::new(name, help)?;
    r.register(Box::new(g.clone()))?;
    Ok(g)
}

fn histogram(
    r: &Registry,
    name: &str,
    help: &str,
    buckets: Vec<f64>,
) -> Result<Histogram, MetricsError> {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))?;
    r.register(Box::new(h.clone()))?;
    Ok(h)
}

fn latency_buckets() -> Vec<f64> {
    vec![
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ]
}

/// Ingest: uplinks from the broker to durable storage and acknowledgements.
#[derive(Clone)]
pub struct IngestMetrics {
    /// Events durably stored, by kind.
    pub events: IntCounterVec,
    /// Uplinks already stored (redeliveries, replays), dropped and re-acknowledged.
    pub duplicates: IntCounter,
    /// Uplinks ahead of the next expected sequence number (dropped; the cabinet resends).
    pub gaps: IntCounter,
    /// Payloads that failed to decode, by reason.
    pub decode_errors: IntCounterVec,
    /// Uplinks whose envelope cabinet does not match the topic's, or on an unknown topic.
    pub foreign: IntCounter,
    /// Events per group commit.
    pub batch_size: Histogram,
    /// Time to write and flush one group commit.
    pub flush_seconds: Histogram,
    /// Time from receipt at ingest to durable (acknowledgeable) storage.
    pub lag_seconds: Histogram,
    /// Acknowledgements published.
    pub acks: IntCounter,
    /// `locker_store_flushes_total{store}` (ingest counts `audit`).
    pub flushes: IntCounterVec,
    /// Quarantine, storage lives, storage failure and retention (behind one pointer, so the
    /// gateway's handle stays small).
    pub faults: std::sync::Arc<IngestFaultMetrics>,
}

/// Ingest's fault metrics.
pub struct IngestFaultMetrics {
    /// Uplinks quarantined (kept with their bytes, acknowledged if placeable), by reason.
    pub quarantined: IntCounterVec,
    /// Old quarantine records dropped by the caps.
    pub quarantine_dropped: IntCounter,
    /// Quarantine records held.
    pub quarantine_held: IntGauge,
    /// Uplinks behind the high-water mark that match nothing stored (dropped, never acked).
    pub stale: IntCounter,
    /// New storage lives started (an agent whose storage was wiped began again at seq 1).
    pub new_lives: IntCounter,
    /// 1 while group commits fail (storage alarm), else 0.
    pub storage_failing: IntGauge,
    /// Failed group commit attempts.
    pub storage_errors: IntCounter,
    /// Audit entries deleted by retention.
    pub pruned: IntCounter,
}

/// Commands: the offline queue and the dispatcher.
#[derive(Clone)]
pub struct CommandMetrics {
    /// Commands accepted by the API, by action.
    pub created: IntCounterVec,
    /// Final outcomes, by outcome.
    pub outcomes: IntCounterVec,
    /// From creation to the recorded outcome.
    pub latency_seconds: HistogramVec,
    /// Commands waiting for an outcome (queued or sent).
    pub queue_depth: IntGauge,
    /// Commands sent to cabinets (first sends and resends).
    pub sends: IntCounterVec,
    /// Results for unknown or already finished commands.
    pub stray_results: IntCounter,
    /// Results that came after their command ended `no_answer` (recorded as `late_outcome`).
    pub late_results: IntCounter,
    /// Outcomes found in the audit log at start (stored, but not recorded before a stop).
    pub recovered: IntCounter,
    /// Queue reports and outcomes the rules engine's full queue did not take.
    pub notes_dropped: IntCounter,
    /// `locker_store_flushes_total{store}`: flushes of the database by store (the dispatcher
    /// counts `commands`, ingest counts `audit`).
    pub flushes: IntCounterVec,
}

/// Storage and fleet.
#[derive(Clone)]
pub struct StoreMetrics {
    /// Size of the sled database on disk, bytes.
    pub size_bytes: IntGauge,
    /// Cabinets known to the gateway.
    pub cabinets_known: IntGauge,
    /// Cabinets whose edge connection is open.
    pub cabinets_online: IntGauge,
    /// API requests by route and status class.
    pub api_requests: IntCounterVec,
    /// Parts of events the fleet state did not take (unknown compartment, caps), by reason.
    pub fleet_rejected: IntCounterVec,
}

/// The API's connections (serving limits).
#[derive(Clone)]
pub struct ApiMetrics {
    /// Open API connections (each holds one of `api.max_connections`).
    pub connections_open: IntGauge,
    /// API connections closed by the server before or instead of serving a request, by
    /// reason (`too_many_connections`, `header_timeout`, `tls_handshake`).
    pub connections_refused: IntCounterVec,
    /// Audit exports by how they ended (`ok`, `aborted` by the client, `failed` mid-stream,
    /// `refused` before the first byte).
    pub exports: IntCounterVec,
    /// Records streamed by audit exports, by format.
    pub export_records: IntCounterVec,
}

/// The parcel domain.
#[derive(Clone)]
pub struct ParcelMetrics {
    /// Orders held in memory (live, and finished within `parcels.keep_finished_h`), by state.
    pub orders: prometheus::IntGaugeVec,
    /// Order transitions published, by new state.
    pub events: IntCounterVec,
    /// Exceptions raised on orders, by exception.
    pub exceptions: IntCounterVec,
    /// Allocation attempts that found no compartment.
    pub allocation_failures: IntCounter,
    /// Credential set parts handed to cabinets' sessions.
    pub creds_sent: IntCounter,
    /// Notification requests put in the outbox, by kind.
    pub notices: IntCounterVec,
    /// Reports from cabinets the domain could not match (unknown order or parcel), by kind.
    pub unmatched: IntCounterVec,
    /// Keypads locked at cabinets after too many wrong codes.
    pub keypad_lockouts: IntCounter,
    /// Group commits of the parcel state.
    pub commits: IntCounter,
    /// Failed attempts to store the parcel state (retried).
    pub storage_errors: IntCounter,
}

/// Every gateway metric, grouped by component.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub ingest: IngestMetrics,
    pub commands: CommandMetrics,
    pub store: StoreMetrics,
    pub api: ApiMetrics,
    pub parcels: ParcelMetrics,
    pub rules: crate::rules::metrics::RulesMetrics,
    pub outbound: crate::outbound::metrics::OutboundMetrics,
    pub console: crate::console::ConsoleMetrics,
    pub live: crate::live::LiveMetrics,
}

impl Metrics {
    /// Creates and registers every metric in a fresh registry.
    pub fn new() -> Result<Self, MetricsError> {
        let r = Registry::new();
        let flushes = counter_vec(
            &r,
            "locker_store_flushes_total",
            "Flushes (fsyncs) of the database, by the store that asked for them",
            &["store"],
        )?;
        let ingest = IngestMetrics {
            flushes: flushes.clone(),
            events: counter_vec(&r, "locker_ingest_events_total", "Events durably stored, by kind", &["kind"])?,
            duplicates: counter(&r, "locker_ingest_duplicates_total", "Uplinks already stored (dropped and re-acknowledged)")?,
            gaps: counter(&r, "locker_ingest_gaps_total", "Uplinks ahead of the next expected sequence number (dropped, resent by the cabinet)")?,
            decode_errors: counter_vec(&r, "locker_ingest_decode_errors_total", "Payloads that failed to decode, by reason", &["reason"])?,
            foreign: counter(&r, "locker_ingest_foreign_total", "Uplinks whose envelope cabinet does not match the topic")?,
            batch_size: histogram(&r, "locker_ingest_batch_events", "Events per group commit", vec![1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0])?,
            flush_seconds: histogram(&r, "locker_ingest_flush_seconds", "Time to write and flush one group commit", latency_buckets())?,
            lag_seconds: histogram(&r, "locker_ingest_lag_seconds", "From receipt at ingest to durable storage", latency_buckets())?,
            acks: counter(&r, "locker_ingest_acks_total", "Acknowledgements published to cabinets")?,
            faults: std::sync::Arc::new(IngestFaultMetrics {
            quarantined: counter_vec(&r, "locker_ingest_quarantined_total", "Uplinks quarantined with their raw bytes, by reason", &["reason"])?,
            quarantine_dropped: counter(&r, "locker_ingest_quarantine_dropped_total", "Oldest quarantine records dropped by the caps")?,
            quarantine_held: gauge(&r, "locker_ingest_quarantine_records", "Quarantine records held")?,
            stale: counter(&r, "locker_ingest_stale_total", "Uplinks behind the high-water mark matching nothing stored (dropped, not acknowledged)")?,
            new_lives: counter(&r, "locker_ingest_new_lives_total", "Cabinets that started a new storage life (wiped agent storage)")?,
            storage_failing: gauge(&r, "locker_ingest_storage_failing", "1 while group commits to storage fail (nothing is acknowledged meanwhile)")?,
            storage_errors: counter(&r, "locker_ingest_storage_errors_total", "Failed group commit attempts")?,
            pruned: counter(&r, "locker_ingest_pruned_total", "Audit log entries deleted by retention")?,
            }),
        };
        let commands = CommandMetrics {
            created: counter_vec(
                &r,
                "locker_commands_created_total",
                "Commands accepted, by action",
                &["action"],
            )?,
            outcomes: counter_vec(
                &r,
                "locker_commands_outcomes_total",
                "Final command outcomes, by outcome",
                &["outcome"],
            )?,
            latency_seconds: {
                let h = HistogramVec::new(
                    HistogramOpts::new(
                        "locker_command_latency_seconds",
                        "From command creation to its recorded outcome",
                    )
                    .buckets(latency_buckets()),
                    &["action"],
                )?;
                r.register(Box::new(h.clone()))?;
                h
            },
            queue_depth: gauge(
                &r,
                "locker_commands_pending",
                "Commands waiting for an outcome (queued or sent)",
            )?,
            sends: counter_vec(
                &r,
                "locker_commands_sends_total",
                "Commands published to cabinets",
                &["kind"],
            )?,
            stray_results: counter(
                &r,
                "locker_commands_stray_results_total",
                "Results for unknown or already finished commands",
            )?,
            late_results: counter(
                &r,
                "locker_commands_late_results_total",
                "Results that came after their command ended no_answer",
            )?,
            recovered: counter(
                &r,
                "locker_commands_recovered_total",
                "Command outcomes found in the audit log at start",
            )?,
            notes_dropped: counter(
                &r,
                "locker_commands_notes_dropped_total",
                "Queue reports and outcomes the rules engine's full queue did not take",
            )?,
            flushes,
        };
        // Every outcome's series exists from the start, at 0: a counter series that appears at
        // 1 shows no `increase()`, so alerts would miss the first `no_answer` after a start.
        for o in locker_schemas::Outcome::ALL {
            commands.outcomes.with_label_values(&[o.as_str()]);
        }
        let store = StoreMetrics {
            size_bytes: gauge(
                &r,
                "locker_store_size_bytes",
                "Size of the sled database on disk",
            )?,
            cabinets_known: gauge(&r, "locker_cabinets_known", "Cabinets known to the gateway")?,
            cabinets_online: gauge(
                &r,
                "locker_cabinets_online",
                "Cabinets with an open edge connection",
            )?,
            api_requests: counter_vec(
                &r,
                "locker_api_requests_total",
                "API requests by route and status class",
                &["route", "status"],
            )?,
            fleet_rejected: counter_vec(
                &r,
                "locker_fleet_rejected_total",
                "Parts of events the fleet state did not take, by reason",
                &["reason"],
            )?,
        };
        let api = ApiMetrics {
            connections_open: gauge(&r, "locker_api_connections_open", "Open API connections")?,
            connections_refused: counter_vec(
                &r,
                "locker_api_connections_refused_total",
                "API connections closed by the server before or instead of a request, by reason",
                &["reason"],
            )?,
            exports: counter_vec(
                &r,
                "locker_api_exports_total",
                "Audit exports by how they ended (ok, aborted, failed, refused)",
                &["result"],
            )?,
            export_records: counter_vec(
                &r,
                "locker_api_export_records_total",
                "Records streamed by audit exports, by format",
                &["format"],
            )?,
        };
        let parcels = ParcelMetrics {
            orders: {
                let g = prometheus::IntGaugeVec::new(
                    Opts::new(
                        "locker_parcel_orders",
                        "Orders in memory (live and recently finished), by state",
                    ),
                    &["state"],
                )?;
                r.register(Box::new(g.clone()))?;
                g
            },
            events: counter_vec(
                &r,
                "locker_parcel_transitions_total",
                "Order transitions, by new state",
                &["state"],
            )?,
            exceptions: counter_vec(
                &r,
                "locker_parcel_exceptions_total",
                "Exceptions raised on orders, by exception",
                &["exception"],
            )?,
            allocation_failures: counter(
                &r,
                "locker_parcel_allocation_failures_total",
                "Allocations that found no compartment free",
            )?,
            creds_sent: counter(
                &r,
                "locker_parcel_creds_parts_sent_total",
                "Credential set parts handed to cabinet sessions",
            )?,
            notices: counter_vec(
                &r,
                "locker_parcel_notices_total",
                "Notification requests put in the outbox, by kind",
                &["kind"],
            )?,
            unmatched: counter_vec(
                &r,
                "locker_parcel_unmatched_reports_total",
                "Cabinet reports the parcel domain could not match, by kind",
                &["kind"],
            )?,
            keypad_lockouts: counter(
                &r,
                "locker_parcel_keypad_lockouts_total",
                "Keypads locked at cabinets after too many wrong codes",
            )?,
            commits: counter(
                &r,
                "locker_parcel_commits_total",
                "Group commits of the parcel state",
            )?,
            storage_errors: counter(
                &r,
                "locker_parcel_storage_errors_total",
                "Failed attempts to store the parcel state (retried)",
            )?,
        };
        let rules = crate::rules::metrics::RulesMetrics::new(&r)?;
        let outbound = crate::outbound::metrics::OutboundMetrics::new(&r)?;
        let console = crate::console::ConsoleMetrics::new(&r)?;
        let live = crate::live::LiveMetrics::new(&r)?;
        Ok(Self {
            console,
            live,
            rules,
            outbound,
            registry: r,
            ingest,
            commands,
            store,
            api,
            parcels,
        })
    }

    /// The Prometheus text exposition of every registered metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let enc = TextEncoder::new();
        if enc.encode(&self.registry.gather(), &mut buf).is_err() {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}
