//! Audit log retention: a background task that prunes each cabinet's oldest entries older than
//! `[ingest] retention_days` (by the cabinet's clock) or beyond `retention_max_events`, in
//! batches of `retention_batch` deletions per blocking step, counting them in
//! `locker_ingest_pruned_total`. It never deletes a cabinet's last entry (it carries the
//! cabinet's place in its sequence). sled reclaims the space of deleted entries as it rewrites
//! its segments (compaction happens in the background).

use std::time::Duration;

use locker_schemas::now_millis;
use tokio_util::sync::CancellationToken;

use super::IngestConfig;
use crate::metrics::IngestMetrics;
use crate::store::{self, Store};

const DAY_MS: u64 = 24 * 60 * 60 * 1000;

/// One pass over every cabinet; returns how many entries were deleted.
pub async fn prune_once(
    cfg: &IngestConfig,
    store: &Store,
    metrics: &IngestMetrics,
) -> Result<u64, store::StoreError> {
    let cutoff = match cfg.retention_days {
        0 => 0,
        d => now_millis().saturating_sub(d.saturating_mul(DAY_MS)),
    };
    let (max, batch) = (cfg.retention_max_events, cfg.retention_batch.max(1));
    let st = store.clone();
    let cabinets = store::blocking(move || st.audit().cabinets()).await?;
    let mut total = 0;
    for cab in cabinets {
        loop {
            let (st, c) = (store.clone(), cab.clone());
            let n = store::blocking(move || st.audit().prune(&c, cutoff, max, batch)).await?;
            metrics.faults.pruned.inc_by(n);
            total += n;
            if (n as usize) < batch {
                break;
            }
        }
    }
    Ok(total)
}

/// Runs [`prune_once`] every `retention_interval_ms` until cancelled (does nothing when no
/// retention is configured).
pub async fn run(
    cfg: IngestConfig,
    store: Store,
    metrics: IngestMetrics,
    cancel: CancellationToken,
) {
    if cfg.retention_days == 0 && cfg.retention_max_events == 0 {
        return;
    }
    let mut tick =
        tokio::time::interval(Duration::from_millis(cfg.retention_interval_ms.max(1_000)));
    let mut failing = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = cancel.cancelled() => return,
        }
        match prune_once(&cfg, &store, &metrics).await {
            Ok(n) => {
                failing = false;
                if n > 0 {
                    tracing::info!(pruned = n, "audit log retention pass");
                }
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "audit log retention failed; retried next interval");
                }
                failing = true;
            }
        }
    }
}
