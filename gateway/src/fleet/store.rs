//! The fleet's durable state: its snapshots, behind [`SnapshotStore`], and the background
//! saver that writes them so the fleet actor never waits on storage.
//!
//! The actor hands a batch of dirty snapshots to the saver only when the saver is free
//! (a one-slot channel and `try_reserve`); while a save runs, changes keep accumulating in
//! the actor's dirty set and go out with the next batch.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::metrics::StoreMetrics;
use crate::model::CabinetSnapshot;
use crate::store::{self, Store, StoreError};

/// Where fleet snapshots are kept (blocking calls; run off the async workers).
pub trait SnapshotStore: Send + Sync + 'static {
    /// Saves the snapshots (not necessarily flushed: they are caches) and returns the
    /// store's size on disk, bytes.
    fn save(&self, snaps: &[CabinetSnapshot]) -> Result<u64, StoreError>;
}

impl SnapshotStore for Store {
    fn save(&self, snaps: &[CabinetSnapshot]) -> Result<u64, StoreError> {
        self.save_snapshots(snaps)?;
        Ok(self.size_on_disk())
    }
}

/// Starts the saver: it writes each batch it receives, one at a time, off the async workers.
/// It ends when the sender is dropped, after the batch in hand.
pub(super) fn spawn_saver(
    store: Arc<dyn SnapshotStore>,
    metrics: StoreMetrics,
) -> (mpsc::Sender<Vec<CabinetSnapshot>>, JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<Vec<CabinetSnapshot>>(1);
    let task = tokio::spawn(async move {
        while let Some(snaps) = rx.recv().await {
            let st = store.clone();
            match store::blocking(move || st.save(&snaps)).await {
                Ok(size) => metrics
                    .size_bytes
                    .set(i64::try_from(size).unwrap_or(i64::MAX)),
                Err(e) => tracing::warn!(error = %e, "cannot save fleet snapshots"),
            }
        }
    });
    (tx, task)
}
