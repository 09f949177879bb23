//! The storage worker: one OS thread per `sled::Db` that runs every sled call of every agent
//! sharing that database, in arrival order, and makes writes durable with group commits.
//!
//! Agents never call sled on an async task. They send a job (a closure over their own
//! `sled::Tree`) through a bounded channel and await its reply. A job says how durable its
//! effects must be before it is answered:
//! - [`Durability::Flush`]: the batch it arrived in is flushed before the reply (safety-critical
//!   events, command start records);
//! - [`Durability::Group`]: the reply waits for the next group flush, at most `group_flush`
//!   later (telemetry);
//! - [`Durability::None`]: answered as soon as it ran (reads, ack deletions: sled's own
//!   background flush or the next group commit persists them).
//!
//! With 10,000 agents on one database a single flush covers every job of a batch, which is what
//! makes durable uplink cheap. The thread ends when the last [`Storage`] handle is dropped.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// Why a storage job failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StorageError {
    #[error("sled: {0}")]
    Sled(String),
    #[error("flush failed: {0}")]
    Flush(String),
    #[error("the storage worker has stopped")]
    Stopped,
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

impl From<sled::Error> for StorageError {
    fn from(e: sled::Error) -> Self {
        StorageError::Sled(e.to_string())
    }
}

/// How durable a job's writes must be before it is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Flushed before the reply.
    Flush,
    /// Flushed by the next group commit (at most `group_flush` later) before the reply.
    Group,
    /// Answered at once; persisted by a later flush.
    None,
}

type Done = Box<dyn FnOnce(Result<(), StorageError>) + Send>;

struct Job {
    durability: Durability,
    work: Box<dyn FnOnce() -> Done + Send>,
}

struct Inner {
    db: sled::Db,
    tx: flume::Sender<Job>,
}

/// A cloneable handle to a sled database and its storage worker thread.
#[derive(Clone)]
pub struct Storage {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Storage")
    }
}

/// Jobs waiting in the channel at most (backpressure beyond that).
const QUEUE: usize = 4_096;
/// Jobs run between two flushes at most.
const BATCH: usize = 1_024;

impl Storage {
    /// Wraps an open database and starts its worker thread. Share the returned handle (clone
    /// it) between all agents that use this database.
    pub fn new(db: sled::Db, group_flush: Duration) -> Result<Self, StorageError> {
        let (tx, rx) = flume::bounded::<Job>(QUEUE);
        let wdb = db.clone();
        std::thread::Builder::new()
            .name("locker-storage".into())
            .spawn(move || worker(wdb, rx, group_flush))
            .map_err(|e| StorageError::Sled(format!("cannot start storage thread: {e}")))?;
        Ok(Self {
            inner: Arc::new(Inner { db, tx }),
        })
    }

    /// Opens (or creates) a sled database at `path` and starts its worker. Blocking: call it
    /// before the runtime or from `spawn_blocking`.
    pub fn open(path: &std::path::Path, group_flush: Duration) -> Result<Self, StorageError> {
        let db = sled::open(path)?;
        Self::new(db, group_flush)
    }

    /// The database.
    pub fn db(&self) -> &sled::Db {
        &self.inner.db
    }

    /// Runs `f` on the worker thread and returns its result once it is as durable as asked.
    pub async fn run<T, F>(&self, durability: Durability, f: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job = Job {
            durability,
            work: Box::new(move || {
                let out = f();
                Box::new(move |flushed: Result<(), StorageError>| {
                    let _ = tx.send(flushed.map(|()| out));
                })
            }),
        };
        self.inner
            .tx
            .send_async(job)
            .await
            .map_err(|_| StorageError::Stopped)?;
        rx.await.map_err(|_| StorageError::Stopped)?
    }

    /// Queues `f` without waiting for it (still in order with this handle's other jobs).
    pub async fn detach<F>(&self, durability: Durability, f: F) -> Result<(), StorageError>
    where
        F: FnOnce() + Send + 'static,
    {
        let job = Job {
            durability,
            work: Box::new(move || {
                f();
                Box::new(|_| {})
            }),
        };
        self.inner
            .tx
            .send_async(job)
            .await
            .map_err(|_| StorageError::Stopped)
    }

    /// Flushes everything written so far.
    pub async fn flush(&self) -> Result<(), StorageError> {
        self.run(Durability::Flush, || ()).await
    }
}

fn worker(db: sled::Db, rx: flume::Receiver<Job>, group_flush: Duration) {
    let mut waiting: Vec<Done> = Vec::new();
    let mut oldest: Option<Instant> = None;
    let mut open = true;
    while open {
        let first = match oldest {
            None => match rx.recv() {
                Ok(j) => Some(j),
                Err(_) => break,
            },
            Some(t) => match rx.recv_timeout(group_flush.saturating_sub(t.elapsed())) {
                Ok(j) => Some(j),
                Err(flume::RecvTimeoutError::Timeout) => None,
                Err(flume::RecvTimeoutError::Disconnected) => {
                    open = false;
                    None
                }
            },
        };
        let mut must_flush = false;
        let mut batch = first.into_iter().collect::<Vec<_>>();
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        for job in batch {
            let done = (job.work)();
            match job.durability {
                Durability::None => done(Ok(())),
                Durability::Flush => {
                    must_flush = true;
                    waiting.push(done);
                }
                Durability::Group => {
                    oldest.get_or_insert_with(Instant::now);
                    waiting.push(done);
                }
            }
        }
        let group_due = oldest.is_some_and(|t| t.elapsed() >= group_flush);
        if must_flush || group_due || (!open && !waiting.is_empty()) {
            let r = db
                .flush()
                .map(|_| ())
                .map_err(|e| StorageError::Flush(e.to_string()));
            if let Err(e) = &r {
                tracing::error!(error = %e, "sled flush failed");
            }
            for done in waiting.drain(..) {
                done(r.clone());
            }
            oldest = None;
        }
    }
    if let Err(e) = db.flush() {
        tracing::error!(error = %e, "final sled flush failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_run_in_order_and_group_replies_come_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let st = Storage::open(dir.path(), Duration::from_millis(20)).expect("open");
        let tree = st.db().open_tree("t").expect("tree");
        for i in 0u32..50 {
            let t = tree.clone();
            let d = [Durability::Flush, Durability::Group, Durability::None][(i % 3) as usize];
            st.run(d, move || t.insert(i.to_be_bytes(), &[1u8]).map(|_| ()))
                .await
                .expect("worker")
                .expect("insert");
        }
        let t = tree.clone();
        let n = st
            .run(Durability::None, move || t.len())
            .await
            .expect("len");
        assert_eq!(n, 50);
        st.flush().await.expect("flush");
    }
}
