//! Durable state in one sled database: the audit log of every stored uplink ([`events`]), the
//! quarantine of uplinks that could not be accepted as they are ([`quarantine`]), the cabinets
//! the gateway knows (with their last fleet snapshot), and the command log with its
//! per-cabinet offline queue.
//!
//! Trees and keys:
//! - `events`, `quarantine`, `quarantine_by_cabinet`: see [`events`] and [`quarantine`];
//! - `health`: `probe` -> the time of the last readiness probe (written and flushed);
//! - `cabinets`: `cabinet` -> JSON [`CabinetSnapshot`];
//! - `commands`, `queue`, `commands_by_cabinet`: the command log, behind
//!   [`commands::CommandStore`];
//! - `parcel_*`: the parcel domain, behind [`parcels::ParcelStore`];
//! - `rule_state`, `alerts`, `alerts_active`, `rule_actions`, `alert_log`: the rules engine,
//!   behind [`alerts::AlertStore`];
//! - `outbound`: webhook subscriptions and the delivery outbox, behind
//!   [`outbound::OutboundStore`];
//! - `console_sessions`: the console's login sessions, behind [`sessions::SessionStore`];
//! - `domain_marks`: cluster mode, how far the replicated domain log is applied here
//!   ([`marks::DomainMarks`]).
//!
//! The domain's actors write through [`Writers`]: these sled stores on a single node; in
//! cluster mode the replicated stores of [`crate::cluster::domain`], which write the record to
//! JetStream first and then to these same trees. Reads (the API, the export) always read the
//! node's own trees.
//!
//! Every method here blocks (sled I/O); actors call them through `spawn_blocking`.

pub mod alerts;
pub mod commands;
pub mod events;
pub mod marks;
pub mod outbound;
pub mod parcels;
pub mod quarantine;
pub mod sessions;
pub mod snapshot;

use std::sync::Arc;

use locker_schemas::CabinetId;
use serde::{de::DeserializeOwned, Serialize};

use crate::model::CabinetSnapshot;
pub use commands::{CommandLog, CommandStore};
pub use events::{AuditEntry, AuditLog, Life, NewEntry};
pub use marks::DomainMarks;
pub use quarantine::{QuarantineLimits, QuarantineRecord, QuarantineStore};

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    #[error("corrupt record in tree {tree}: {detail}")]
    Corrupt { tree: &'static str, detail: String },
    #[error("cannot encode record: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("storage task failed: {0}")]
    Join(String),
    /// Cluster mode: the replicated domain log did not take the write (NATS unreachable, a
    /// timeout); nothing was applied, the write may be tried again.
    #[error("replicated domain log: {0}")]
    Replication(String),
    /// Cluster mode: this node no longer runs the domain (another node wrote the log since, or
    /// its lease ran out); nothing was applied and trying again will not help.
    #[error("this node no longer runs the domain: {0}")]
    NotLeader(String),
}

/// Where the domain's actors (dispatcher, parcels, rules, outbound) write their state.
#[derive(Clone)]
pub struct Writers {
    pub commands: Arc<dyn CommandLog>,
    pub parcels: Arc<dyn parcels::ParcelStore>,
    pub alerts: Arc<dyn alerts::AlertStore>,
    pub outbound: Arc<dyn outbound::OutboundStore>,
}

/// Handle to the gateway's sled database (cheap to clone).
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    audit: AuditLog,
    quarantine: QuarantineStore,
    /// One key written and flushed by the readiness probe.
    health: sled::Tree,
    cabinets: sled::Tree,
    commands: CommandStore,
    parcels: parcels::SledParcels,
    alerts: alerts::SledAlerts,
    outbound: outbound::SledOutbound,
    sessions: sessions::SledSessions,
    marks: DomainMarks,
    writers: Writers,
}

fn decode<T: DeserializeOwned>(tree: &'static str, v: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(v).map_err(|e| StoreError::Corrupt {
        tree,
        detail: e.to_string(),
    })
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    Ok(serde_json::to_vec(v)?)
}

/// Runs a blocking storage call off the async workers.
pub async fn blocking<T, F>(f: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, StoreError> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Join(e.to_string()))?
}

/// How long [`open_db`] waits for a lock that a just-dropped handle of this process still holds.
const LOCK_RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Opens the sled database, waiting out a lock still held by a handle just dropped.
///
/// sled 0.34's `Db::drop` signals its flusher thread to stop but does not join it, and the
/// thread holds the directory's `flock` until it exits (spacejam/sled#1289, #1234). A gateway
/// that restarts in place (a cluster node changing role) or a test that reopens a database can
/// therefore find the lock taken for a few milliseconds. A lock held by another live gateway on
/// the same directory is held for its whole life, so it still fails, after the wait, with sled's
/// own "could not acquire lock" error.
pub(crate) fn open_db(path: &std::path::Path) -> Result<sled::Db, sled::Error> {
    let deadline = std::time::Instant::now() + LOCK_RELEASE_WAIT;
    let mut pause = std::time::Duration::from_millis(5);
    loop {
        match sled::Config::new()
            .path(path)
            .cache_capacity(128 * 1024 * 1024)
            .open()
        {
            Err(sled::Error::Io(e))
                if is_lock_contention(&e) && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(pause);
                pause = (pause * 2).min(std::time::Duration::from_millis(200));
            }
            other => return other,
        }
    }
}

/// sled reports a taken lock as `Other` with the `flock` error in its message.
fn is_lock_contention(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::WouldBlock || e.to_string().contains("could not acquire lock")
}

impl Store {
    /// Opens (or creates) the database at `path`.
    pub fn open(path: &std::path::Path) -> Result<Self, StoreError> {
        let db = open_db(path)?;
        let commands = CommandStore::open(&db)?;
        let parcels = parcels::SledParcels::open(&db)?;
        let alerts = alerts::SledAlerts::open(&db)?;
        let outbound = outbound::SledOutbound::open(&db)?;
        let writers = Writers {
            commands: Arc::new(commands.clone()),
            parcels: Arc::new(parcels.clone()),
            alerts: Arc::new(alerts.clone()),
            outbound: Arc::new(outbound.clone()),
        };
        Ok(Self {
            audit: AuditLog::open(&db)?,
            quarantine: QuarantineStore::open(&db)?,
            health: db.open_tree("health")?,
            cabinets: db.open_tree("cabinets")?,
            commands,
            parcels,
            alerts,
            outbound,
            sessions: sessions::SledSessions::open(&db)?,
            marks: DomainMarks::open(&db)?,
            writers,
            db,
        })
    }

    /// Every known cabinet with its snapshot and the last stored sequence number.
    ///
    /// Cabinets are taken from the audit log itself as well as from the snapshots, so a crash
    /// between an event write and its snapshot write can never make the gateway forget where
    /// a cabinet's sequence stands.
    pub fn load_cabinets(&self) -> Result<Vec<(CabinetSnapshot, u64)>, StoreError> {
        let mut snaps = std::collections::BTreeMap::new();
        for kv in self.cabinets.iter() {
            let (_, v) = kv?;
            let snap: CabinetSnapshot = decode("cabinets", &v)?;
            snaps.insert(snap.id.clone(), snap);
        }
        for id in self.audit.cabinets()? {
            snaps
                .entry(id.clone())
                .or_insert_with(|| CabinetSnapshot::new(id));
        }
        let mut out = Vec::with_capacity(snaps.len());
        for (id, snap) in snaps {
            let hwm = self.high_water(&id)?;
            out.push((snap, hwm));
        }
        Ok(out)
    }

    /// The audit log.
    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// The quarantine.
    pub fn quarantine(&self) -> &QuarantineStore {
        &self.quarantine
    }

    /// The readiness probe: writes and flushes one small key (fails while a write fault is
    /// injected into the audit log, as a full disk would).
    pub fn probe_writable(&self) -> Result<(), StoreError> {
        self.audit.check_writable()?;
        self.health
            .insert(b"probe", &locker_schemas::now_millis().to_be_bytes())?;
        self.db.flush()?;
        Ok(())
    }

    /// The last audit position of a cabinet (0 if none): monotonic per cabinet.
    pub fn high_water(&self, cabinet: &CabinetId) -> Result<u64, StoreError> {
        self.audit.high_water(cabinet)
    }

    /// Appends a group of audit entries, quarantine records and the snapshots of new cabinets
    /// (only where none exists), then flushes: when this returns Ok, everything in the batch
    /// is on disk and may be acknowledged. Returns how many old quarantine records the caps
    /// dropped.
    pub fn append_events(
        &self,
        entries: &[NewEntry],
        quarantined: &[QuarantineRecord],
        limits: QuarantineLimits,
        new_cabinets: &[CabinetSnapshot],
    ) -> Result<u64, StoreError> {
        self.audit.append(entries)?;
        let dropped = self.quarantine.insert(quarantined, limits)?;
        for c in new_cabinets {
            let _ = self.cabinets.compare_and_swap(
                c.id.as_str().as_bytes(),
                None as Option<&[u8]>,
                Some(encode(c)?),
            )?;
        }
        self.db.flush()?;
        Ok(dropped)
    }

    /// Saves fleet snapshots (not flushed: they are caches rebuilt from events and presence).
    pub fn save_snapshots(&self, snaps: &[CabinetSnapshot]) -> Result<(), StoreError> {
        for c in snaps {
            self.cabinets.insert(c.id.as_str().as_bytes(), encode(c)?)?;
        }
        Ok(())
    }

    /// A page of a cabinet's audit log: stored uplinks `(position, CBOR)` with
    /// `position > after`, oldest first (quarantined events are in [`Store::quarantine`]).
    pub fn events_page(
        &self,
        cabinet: &CabinetId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        self.audit.events_page(cabinet, after, limit)
    }

    /// The command log as the dispatcher writes it (see [`Writers`]).
    pub fn commands(&self) -> &dyn CommandLog {
        &*self.writers.commands
    }

    /// The command log's own trees on this node.
    pub fn sled_commands(&self) -> &CommandStore {
        &self.commands
    }

    /// Where the domain's actors write.
    pub fn writers(&self) -> &Writers {
        &self.writers
    }

    /// The same store with the domain's writes going through `writers` (cluster mode).
    pub fn with_writers(mut self, writers: Writers) -> Self {
        self.writers = writers;
        self
    }

    /// How far the replicated domain log is applied here (cluster mode).
    pub fn domain_marks(&self) -> &DomainMarks {
        &self.marks
    }

    /// The parcel domain's state (owned by the parcel actor).
    pub fn parcels(&self) -> &parcels::SledParcels {
        &self.parcels
    }

    /// Bytes on disk.
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }

    /// The rules engine's trees.
    pub fn alerts(&self) -> &alerts::SledAlerts {
        &self.alerts
    }

    /// The outbox's storage.
    pub fn outbound(&self) -> &outbound::SledOutbound {
        &self.outbound
    }

    /// The console's sessions.
    pub fn sessions(&self) -> &sessions::SledSessions {
        &self.sessions
    }

    /// The database (for whole-tree copies, [`snapshot`]).
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    /// Flushes everything (shutdown).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(cab: &str, seq: u64) -> NewEntry {
        NewEntry {
            cabinet: CabinetId::new(cab).expect("id"),
            position: seq,
            entry: AuditEntry::Event(b"\x80".to_vec()),
        }
    }

    #[test]
    fn every_tree_is_either_one_domain_parts_or_the_nodes_own() {
        let dir = tempfile::tempdir().expect("dir");
        let s = Store::open(dir.path()).expect("open");
        let mut domain: Vec<&str> = [
            commands::TREES,
            parcels::TREES,
            alerts::TREES,
            outbound::TREES,
        ]
        .concat();
        // what each node keeps for itself: uplinks (every node ingests them), its sessions and
        // its position in the domain stream
        let own = [
            "__sled__default",
            "events",
            "quarantine",
            "quarantine_by_cabinet",
            "health",
            "cabinets",
            "console_sessions",
            "domain_marks",
        ];
        let names: Vec<String> = s
            .db()
            .tree_names()
            .into_iter()
            .map(|n| String::from_utf8_lossy(&n).into_owned())
            .collect();
        for n in &names {
            assert!(
                domain.contains(&n.as_str()) || own.contains(&n.as_str()),
                "tree {n:?} belongs to no snapshot part and is not the node's own"
            );
        }
        domain.sort();
        let before = domain.len();
        domain.dedup();
        assert_eq!(before, domain.len(), "a tree in two parts");
        for d in &domain {
            assert!(names.iter().any(|n| n == d), "{d} is never opened");
        }
    }

    #[test]
    fn a_database_reopens_at_once_after_its_last_handle_drops() {
        let dir = tempfile::tempdir().expect("dir");
        for _ in 0..20 {
            let s = Store::open(dir.path()).expect("open right after the previous drop");
            s.flush().expect("flush");
        }
    }

    #[test]
    fn a_lock_held_by_a_live_handle_is_still_an_error() {
        let dir = tempfile::tempdir().expect("dir");
        let _live = Store::open(dir.path()).expect("open");
        let err = match Store::open(dir.path()) {
            Ok(_) => panic!("two live handles on one directory"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("could not acquire lock"), "{err}");
    }

    #[test]
    fn high_water_marks_come_from_the_audit_log_even_without_snapshots() {
        let dir = tempfile::tempdir().expect("dir");
        {
            let s = Store::open(dir.path()).expect("open");
            let batch: Vec<_> = (1..=5)
                .map(|i| ev("CAB-1", i))
                .chain((7..=9).map(|i| ev("CAB-10", i)))
                .chain([ev("A", 1)])
                .collect();
            // no snapshots written: as after a crash between the two writes
            let limits = QuarantineLimits {
                max_per_cabinet: 10,
                max_total: 10,
            };
            s.append_events(&batch, &[], limits, &[]).expect("append");
        }
        let s = Store::open(dir.path()).expect("reopen");
        let mut got: Vec<(String, u64)> = s
            .load_cabinets()
            .expect("load")
            .into_iter()
            .map(|(c, h)| (c.id.to_string(), h))
            .collect();
        got.sort();
        assert_eq!(
            got,
            vec![("A".into(), 1), ("CAB-1".into(), 5), ("CAB-10".into(), 9)]
        );
        let page = s
            .events_page(&CabinetId::new("CAB-1").expect("id"), 2, 2)
            .expect("page");
        assert_eq!(page.iter().map(|(q, _)| *q).collect::<Vec<_>>(), vec![3, 4]);
    }
}
