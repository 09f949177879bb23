//! The replicated stores: the same interfaces as the sled stores ([`CommandLog`],
//! [`ParcelStore`], [`AlertStore`], [`OutboundStore`]), for the node that runs the domain in
//! cluster mode. A write goes to the domain stream first (fenced, [`super::Writer`]), then to
//! the node's own trees, then the part's mark moves; a read is the node's own trees. A write the
//! stream did not take is not applied here either, so the actor's retry (or the next leader)
//! starts from the same state.
//!
//! The records ([`Record`]) are what [`super::apply`] applies on the other nodes, with the same
//! sled code, so every node's trees end the same.
//!
//! **Snapshots keep the stream short** (when `snapshot_min_bytes` is set). Once a part has written as many bytes since its last
//! snapshot as that snapshot held (and at least `snapshot_min_bytes`), the writer copies the
//! part's trees whole into one snapshot record ([`Record::Snapshot`], in chunks when large) and
//! purges the part's older messages from the stream. A node behind the purge, or with an empty
//! disk, reads the snapshot first: applying it makes its trees exactly the copy. Writes of a
//! part are serialised around the copy, so it is the state after exactly the records before it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use locker_schemas::{CabinetId, CommandId, Millis, OrderId};
use serde::{Deserialize, Serialize};

use super::{Part, Writer};
use crate::commands::record::CommandRecord;
use crate::outbound::model::{DeadLetter, Entry, Target};
use crate::parcels::model::{Notice, Order};
use crate::rules::model::{Alert, AlertFilter, PendingAction};
use crate::rules::state::CabState;
use crate::store::alerts::{AlertChange, AlertStore, LoadedRules, SledAlerts};
use crate::store::commands::{CommandLog, CommandStore, Sync};
use crate::store::outbound::{LoadedOutbound, OutBatch, OutboundStore, SledOutbound};
use crate::store::parcels::{AuditRecord, Batch, Loaded, ParcelStore, SledParcels};
use crate::store::snapshot::{self, TreeDump};
use crate::store::{DomainMarks, Store, StoreError, Writers};

/// One record of the domain stream: one commit of one part's actor. Externally tagged
/// (`{"parcels": {...}}`): serde cannot read integer map keys (compartments) back through an
/// internally tagged enum.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Record {
    Commands {
        records: Vec<CommandRecord>,
    },
    Parcels {
        batch: Batch,
    },
    AlertsCommit {
        /// The change-log position of the commit's first line, and its clock.
        first: u64,
        now: Millis,
        states: Vec<(CabinetId, CabState)>,
        alerts: Vec<Alert>,
        actions: Vec<PendingAction>,
    },
    AlertActionDone {
        command: String,
    },
    AlertsPrune {
        before: Millis,
    },
    Outbound {
        batch: OutBatch,
        flush: bool,
    },
    /// The part's whole state: every entry of its trees.
    Snapshot {
        part: String,
        trees: Vec<TreeDump>,
    },
}

/// A [`Record`] as it is written, borrowing the actor's data (the same JSON).
#[derive(Serialize)]
#[serde(rename_all = "snake_case")]
enum RecordRef<'a> {
    Commands {
        records: &'a [CommandRecord],
    },
    Parcels {
        batch: &'a Batch,
    },
    AlertsCommit {
        first: u64,
        now: Millis,
        states: &'a [(CabinetId, CabState)],
        alerts: &'a [Alert],
        actions: &'a [PendingAction],
    },
    AlertActionDone {
        command: &'a str,
    },
    AlertsPrune {
        before: Millis,
    },
    Outbound {
        batch: &'a OutBatch,
        flush: bool,
    },
    Snapshot {
        part: &'a str,
        trees: &'a [TreeDump],
    },
}

/// The trees of a part's state (what its snapshot copies).
pub fn part_trees(part: Part) -> &'static [&'static str] {
    match part {
        Part::Commands => crate::store::commands::TREES,
        Part::Parcels => crate::store::parcels::TREES,
        Part::Alerts => crate::store::alerts::TREES,
        Part::Outbound => crate::store::outbound::TREES,
    }
}

impl Record {
    /// Applies the record to this node's own trees (idempotent: applying it again changes
    /// nothing).
    pub fn apply(&self, store: &Store) -> Result<(), StoreError> {
        match self {
            Record::Commands { records } => {
                store.sled_commands().put_commands(records, Sync::Flush)
            }
            Record::Parcels { batch } => store.parcels().commit(batch),
            Record::AlertsCommit {
                first,
                now,
                states,
                alerts,
                actions,
            } => store
                .alerts()
                .commit_as(*first, *now, states, alerts, actions),
            Record::AlertActionDone { command } => store.alerts().action_done(command),
            Record::AlertsPrune { before } => store.alerts().prune(*before).map(|_| ()),
            Record::Outbound { batch, flush } => store.outbound().commit(batch, *flush),
            Record::Snapshot { part, trees } => {
                let Some(p) = Part::named(part) else {
                    return Err(StoreError::Corrupt {
                        tree: "snapshot",
                        detail: format!("a snapshot of the unknown part {part:?}"),
                    });
                };
                snapshot::restore(store.db(), part_trees(p), trees)?;
                if p == Part::Alerts {
                    store.alerts().reload_position()?;
                }
                Ok(())
            }
        }
    }
}

/// Writes a part's record to the stream, then applies it here and moves the part's mark; and
/// snapshots the part when enough was written since its last snapshot.
struct Replicated {
    writer: Writer,
    marks: DomainMarks,
    part: Part,
    db: sled::Db,
    /// One write (or snapshot) of the part at a time: a snapshot copies the state after
    /// exactly the records before it.
    serial: Mutex<()>,
    /// Bytes written since the last snapshot (this run's).
    since: AtomicU64,
    /// The last snapshot's size, bytes.
    last_snapshot: AtomicU64,
    /// A snapshot is due once `since` reaches the larger of this and `last_snapshot`.
    snapshot_min: u64,
}

impl Replicated {
    fn write<T>(
        &self,
        record: &RecordRef<'_>,
        apply: impl FnOnce() -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let bytes = serde_json::to_vec(record)?;
        let len = bytes.len() as u64;
        let _one = self
            .serial
            .lock()
            .map_err(|_| StoreError::Join("a domain write panicked".into()))?;
        let seq = self.writer.append(bytes)?;
        let out = apply()?;
        self.marks.set(self.part.name(), seq)?;
        let since = self.since.fetch_add(len, Ordering::Relaxed) + len;
        if self.snapshot_min > 0
            && since
                >= self
                    .snapshot_min
                    .max(self.last_snapshot.load(Ordering::Relaxed))
        {
            // the commit is done: a failed snapshot only leaves the stream longer for now
            if let Err(e) = self.snapshot() {
                self.writer.snapshot_failed();
                tracing::warn!(part = self.part.name(), error = %e, "domain snapshot failed; tried again after the next writes");
            }
        }
        Ok(out)
    }

    /// Copies the part's trees into a snapshot record, then purges the part's older messages.
    /// Called with `serial` held.
    fn snapshot(&self) -> Result<(), StoreError> {
        let started = std::time::Instant::now();
        let trees = snapshot::dump(&self.db, part_trees(self.part))?;
        let record = RecordRef::Snapshot {
            part: self.part.name(),
            trees: &trees,
        };
        let bytes = serde_json::to_vec(&record)?;
        let len = bytes.len() as u64;
        let (first, last) = self.writer.append_span(bytes)?;
        self.marks.set(self.part.name(), last)?;
        self.since.store(0, Ordering::Relaxed);
        self.last_snapshot.store(len, Ordering::Relaxed);
        let purged = self.writer.purge_below(first)?;
        self.writer.snapshot_written(purged);
        tracing::info!(
            part = self.part.name(),
            bytes = len,
            first,
            purged,
            ms = started.elapsed().as_millis() as u64,
            "domain snapshot written; older records purged"
        );
        Ok(())
    }
}

/// Builds the replicated writers over `store`'s own trees, one [`Writer`] per part; each part
/// is snapshotted once it has written `snapshot_min` bytes and its last snapshot's size since.
pub fn writers(
    store: &Store,
    snapshot_min: u64,
    mut writer: impl FnMut(Part) -> Writer,
) -> Writers {
    let rep = |part: Part, w: Writer| Replicated {
        writer: w,
        marks: store.domain_marks().clone(),
        part,
        db: store.db().clone(),
        serial: Mutex::new(()),
        since: AtomicU64::new(0),
        last_snapshot: AtomicU64::new(0),
        snapshot_min,
    };
    Writers {
        commands: Arc::new(Commands {
            local: store.sled_commands().clone(),
            rep: rep(Part::Commands, writer(Part::Commands)),
        }),
        parcels: Arc::new(Parcels {
            local: store.parcels().clone(),
            rep: rep(Part::Parcels, writer(Part::Parcels)),
        }),
        alerts: Arc::new(Alerts {
            local: store.alerts().clone(),
            rep: rep(Part::Alerts, writer(Part::Alerts)),
        }),
        outbound: Arc::new(Outbound {
            local: store.outbound().clone(),
            rep: rep(Part::Outbound, writer(Part::Outbound)),
        }),
    }
}

/// The most commands one record carries (a record stays far below NATS's payload limit).
const COMMANDS_PER_RECORD: usize = 256;

struct Commands {
    local: CommandStore,
    rep: Replicated,
}

impl CommandLog for Commands {
    fn put_commands(&self, recs: &[CommandRecord], sync: Sync) -> Result<(), StoreError> {
        // the stream is durable: the local flush is the single-node rule, kept for the trees
        for chunk in recs.chunks(COMMANDS_PER_RECORD) {
            let record = RecordRef::Commands { records: chunk };
            self.rep
                .write(&record, || self.local.put_commands(chunk, sync))?;
        }
        Ok(())
    }

    fn get_command(&self, id: CommandId) -> Result<Option<CommandRecord>, StoreError> {
        self.local.get_command(id)
    }

    fn recent_commands(
        &self,
        cabinet: &CabinetId,
        limit: usize,
    ) -> Result<Vec<CommandRecord>, StoreError> {
        self.local.recent_commands(cabinet, limit)
    }

    fn pending_commands(&self) -> Result<Vec<CommandRecord>, StoreError> {
        self.local.pending_commands()
    }
}

struct Parcels {
    local: SledParcels,
    rep: Replicated,
}

impl ParcelStore for Parcels {
    fn load(&self) -> Result<Loaded, StoreError> {
        self.local.load()
    }

    fn commit(&self, batch: &Batch) -> Result<(), StoreError> {
        let record = RecordRef::Parcels { batch };
        self.rep.write(&record, || self.local.commit(batch))
    }

    fn notices(&self, after: u64, limit: usize) -> Result<Vec<Notice>, StoreError> {
        self.local.notices(after, limit)
    }

    fn notices_of(&self, order: &OrderId) -> Result<Vec<Notice>, StoreError> {
        self.local.notices_of(order)
    }

    fn audit(&self, after: u64, limit: usize) -> Result<Vec<AuditRecord>, StoreError> {
        self.local.audit(after, limit)
    }

    fn archived(&self, id: OrderId) -> Result<Option<Order>, StoreError> {
        self.local.archived(id)
    }

    fn heads(&self) -> Result<(u64, u64), StoreError> {
        self.local.heads()
    }

    fn audit_seek(&self, at: Millis) -> Result<u64, StoreError> {
        self.local.audit_seek(at)
    }

    fn stored_order(&self, id: OrderId) -> Result<Option<Order>, StoreError> {
        self.local.stored_order(id)
    }
}

struct Alerts {
    local: SledAlerts,
    rep: Replicated,
}

impl AlertStore for Alerts {
    fn load(&self) -> Result<LoadedRules, StoreError> {
        self.local.load()
    }

    fn commit(
        &self,
        states: &[(CabinetId, CabState)],
        alerts: &[Alert],
        actions: &[PendingAction],
    ) -> Result<(), StoreError> {
        let first = self.local.next_change();
        let now = locker_schemas::now_millis();
        let record = RecordRef::AlertsCommit {
            first,
            now,
            states,
            alerts,
            actions,
        };
        self.rep.write(&record, || {
            self.local.commit_as(first, now, states, alerts, actions)
        })
    }

    fn action_done(&self, command: &str) -> Result<(), StoreError> {
        let record = RecordRef::AlertActionDone { command };
        self.rep.write(&record, || self.local.action_done(command))
    }

    fn get(&self, id: &str) -> Result<Option<Alert>, StoreError> {
        self.local.get(id)
    }

    fn list(&self, f: &AlertFilter) -> Result<Vec<Alert>, StoreError> {
        self.local.list(f)
    }

    fn prune(&self, before: Millis) -> Result<usize, StoreError> {
        let record = RecordRef::AlertsPrune { before };
        self.rep.write(&record, || self.local.prune(before))
    }

    fn changes(&self, after: u64, limit: usize) -> Result<Vec<AlertChange>, StoreError> {
        self.local.changes(after, limit)
    }

    fn history_page(&self, after: Option<&str>, limit: usize) -> Result<Vec<Alert>, StoreError> {
        self.local.history_page(after, limit)
    }
}

struct Outbound {
    local: SledOutbound,
    rep: Replicated,
}

impl OutboundStore for Outbound {
    fn load(&self) -> Result<LoadedOutbound, StoreError> {
        self.local.load()
    }

    fn commit(&self, batch: &OutBatch, flush: bool) -> Result<(), StoreError> {
        let record = RecordRef::Outbound { batch, flush };
        self.rep.write(&record, || self.local.commit(batch, flush))
    }

    fn entry(&self, target: &Target, seq: u64) -> Result<Option<Entry>, StoreError> {
        self.local.entry(target, seq)
    }

    fn dead(
        &self,
        target: &Target,
        after: u64,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        self.local.dead(target, after, limit)
    }
}
