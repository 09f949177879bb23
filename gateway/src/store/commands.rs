//! The command log ([`CommandStore`]): its own two sled trees, owned by the dispatcher.
//!
//! - `commands`: `command id (16 bytes)` -> JSON [`CommandRecord`];
//! - `queue`: `cabinet \0 command id` -> empty: commands still waiting for a final outcome, in
//!   creation order (ids are ULIDs).
//! - `commands_by_cabinet`: `cabinet \0 command id` -> empty: every command of a cabinet, in
//!   creation order (the console's recent commands of a cabinet); filled from `commands` once,
//!   when a database from before it is opened (the key `\0indexed` says that was done).
//!
//! Every method blocks (sled I/O); the dispatcher calls them through [`super::blocking`].
//!
//! Writes say whether they are flushed ([`Sync`]): a new command and every state the gateway
//! decides on its own are flushed before the dispatcher acts on them; an outcome that came in
//! a cabinet's Result is not, because that Result is already durable in the audit log and
//! [`crate::commands::recover`] gives the command the same outcome from it after a crash. The
//! record is written before its queue entry is removed, so a crash that keeps only a prefix of
//! the writes never leaves a command out of the queue without its outcome.

use locker_schemas::{CabinetId, CommandId};

use super::{decode, encode, StoreError};
use crate::commands::record::CommandRecord;

/// Whether a write is flushed before it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sync {
    /// On disk when the call returns.
    Flush,
    /// In sled's buffers: on disk with the next flush of the database (any group commit of
    /// ingest, sled's own periodic flush, the shutdown flush), lost by a crash before it.
    Buffered,
}

/// The command log as the dispatcher uses it: [`CommandStore`] on sled, or in cluster mode a
/// replicated log whose writes go to JetStream first (reads are the node's own copy).
pub trait CommandLog: Send + std::marker::Sync + 'static {
    /// Records a command (new or updated). Flushed before returning.
    fn put_command(&self, rec: &CommandRecord) -> Result<(), StoreError> {
        self.put_commands(std::slice::from_ref(rec), Sync::Flush)
    }
    /// Records several commands; with [`Sync::Flush`], durable before returning.
    fn put_commands(&self, recs: &[CommandRecord], sync: Sync) -> Result<(), StoreError>;
    /// One command by id.
    fn get_command(&self, id: CommandId) -> Result<Option<CommandRecord>, StoreError>;
    /// A cabinet's most recent commands, newest first, at most `limit` (capped at
    /// [`RECENT_MAX`]).
    fn recent_commands(
        &self,
        cabinet: &CabinetId,
        limit: usize,
    ) -> Result<Vec<CommandRecord>, StoreError>;
    /// Every command still waiting for an outcome, oldest first per cabinet.
    fn pending_commands(&self) -> Result<Vec<CommandRecord>, StoreError>;
}

/// The command trees (cheap to clone).
#[derive(Clone)]
pub struct CommandStore {
    db: sled::Db,
    commands: sled::Tree,
    queue: sled::Tree,
    by_cabinet: sled::Tree,
}

/// The key in `commands_by_cabinet` that says every stored command is indexed (no cabinet id
/// starts with a zero byte).
const INDEXED: &[u8] = b"\0indexed";

/// Recent commands of a cabinet one call returns at most.
pub const RECENT_MAX: usize = 500;

fn queue_key(cabinet: &CabinetId, id: CommandId) -> Vec<u8> {
    let mut k = cabinet.as_str().as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(&id.to_bytes());
    k
}

/// The trees of the command queue (a snapshot of the domain's `commands` part copies them).
pub const TREES: &[&str] = &["commands", "queue", "commands_by_cabinet"];

impl CommandStore {
    /// Opens the command trees of `db`.
    pub fn open(db: &sled::Db) -> Result<Self, StoreError> {
        let s = Self {
            commands: db.open_tree("commands")?,
            queue: db.open_tree("queue")?,
            by_cabinet: db.open_tree("commands_by_cabinet")?,
            db: db.clone(),
        };
        if s.by_cabinet.get(INDEXED)?.is_none() {
            // a database from before the index: index what it holds, once
            for kv in s.commands.iter() {
                let (_, v) = kv?;
                let rec: CommandRecord = decode("commands", &v)?;
                s.by_cabinet.insert(queue_key(&rec.cabinet, rec.id), &[])?;
            }
            s.by_cabinet.insert(INDEXED, &[])?;
            s.db.flush()?;
        } else {
            // a crash between a command's write and its index entry keeps the command only:
            // index the newest commands (ids are ULIDs, in creation order) until one is
            let mut repaired = false;
            for kv in s.commands.iter().rev() {
                let (_, v) = kv?;
                let rec: CommandRecord = decode("commands", &v)?;
                let k = queue_key(&rec.cabinet, rec.id);
                if s.by_cabinet.contains_key(&k)? {
                    break;
                }
                s.by_cabinet.insert(k, &[])?;
                repaired = true;
            }
            if repaired {
                s.db.flush()?;
            }
        }
        Ok(s)
    }
}

impl CommandLog for CommandStore {
    /// Records several commands; with [`Sync::Flush`], one flush for all of them (a group
    /// commit) before returning.
    fn put_commands(&self, recs: &[CommandRecord], sync: Sync) -> Result<(), StoreError> {
        for rec in recs {
            self.commands.insert(rec.id.to_bytes(), encode(rec)?)?;
            let qk = queue_key(&rec.cabinet, rec.id);
            self.by_cabinet.insert(qk.as_slice(), &[])?;
            if rec.outcome.is_some() {
                self.queue.remove(qk)?;
            } else {
                self.queue.insert(qk, &[])?;
            }
        }
        if sync == Sync::Flush {
            self.db.flush()?;
        }
        Ok(())
    }

    /// One command by id.
    fn get_command(&self, id: CommandId) -> Result<Option<CommandRecord>, StoreError> {
        match self.commands.get(id.to_bytes())? {
            None => Ok(None),
            Some(v) => Ok(Some(decode("commands", &v)?)),
        }
    }

    /// A cabinet's most recent commands, newest first, at most `limit` (capped at
    /// [`RECENT_MAX`]).
    fn recent_commands(
        &self,
        cabinet: &CabinetId,
        limit: usize,
    ) -> Result<Vec<CommandRecord>, StoreError> {
        let mut prefix = cabinet.as_str().as_bytes().to_vec();
        prefix.push(0);
        let mut out = Vec::new();
        for kv in self
            .by_cabinet
            .scan_prefix(&prefix)
            .rev()
            .take(limit.min(RECENT_MAX))
        {
            let (k, _) = kv?;
            let id: [u8; 16] = k
                .get(prefix.len()..)
                .and_then(|s| s.try_into().ok())
                .ok_or(StoreError::Corrupt {
                    tree: "commands_by_cabinet",
                    detail: "bad key".into(),
                })?;
            if let Some(rec) = self.get_command(CommandId::from_bytes(id))? {
                out.push(rec);
            }
        }
        Ok(out)
    }

    /// Every command still waiting for an outcome, oldest first per cabinet.
    fn pending_commands(&self) -> Result<Vec<CommandRecord>, StoreError> {
        let mut out = Vec::new();
        for kv in self.queue.iter() {
            let (k, _) = kv?;
            let n = k.len();
            let id: [u8; 16] = k
                .get(n.saturating_sub(16)..)
                .and_then(|s| s.try_into().ok())
                .ok_or(StoreError::Corrupt {
                    tree: "queue",
                    detail: "short key".into(),
                })?;
            // a record with its outcome whose queue entry a crash kept is not pending
            if let Some(rec) = self.get_command(CommandId::from_bytes(id))? {
                if rec.outcome.is_none() {
                    out.push(rec);
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::record::{ActionSpec, CommandState};

    fn rec(cabinet: &str, n: u64) -> CommandRecord {
        CommandRecord {
            id: CommandId(ulid::Ulid::from_parts(n, 1)),
            cabinet: CabinetId::new(cabinet).expect("id"),
            action: ActionSpec::Reboot,
            issued_at: n,
            expires_at: n + 1,
            ttl_ms: 1,
            created_by: "t".into(),
            state: CommandState::Queued,
            sends: 0,
            last_sent_at: None,
            outcome: None,
            detail: String::new(),
            finished_at: None,
            audit_from: 0,
            next_send_at: None,
            final_sent: false,
            cancel_requested_at: None,
            late_outcome: None,
            late_detail: String::new(),
        }
    }

    fn ids(v: &[CommandRecord]) -> Vec<u64> {
        v.iter().map(|r| r.issued_at).collect()
    }

    #[test]
    fn recent_commands_of_one_cabinet_newest_first_also_from_a_database_before_the_index() {
        let dir = tempfile::tempdir().expect("dir");
        let db = sled::open(dir.path()).expect("db");
        let s = CommandStore::open(&db).expect("open");
        // CAB-1 and CAB-10 share a prefix: the index keeps them apart
        let recs: Vec<_> = (1..=5)
            .map(|n| rec("CAB-1", n))
            .chain((6..=7).map(|n| rec("CAB-10", n)))
            .collect();
        s.put_commands(&recs, Sync::Flush).expect("put");
        let one = CabinetId::new("CAB-1").expect("id");
        assert_eq!(ids(&s.recent_commands(&one, 3).expect("recent")), [5, 4, 3]);
        // a database written before the index existed: it is built when opened
        db.drop_tree("commands_by_cabinet").expect("drop");
        let s = CommandStore::open(&db).expect("reopen");
        assert_eq!(
            ids(&s.recent_commands(&one, 100).expect("recent")),
            [5, 4, 3, 2, 1]
        );
        let ten = CabinetId::new("CAB-10").expect("id");
        assert_eq!(ids(&s.recent_commands(&ten, 100).expect("recent")), [7, 6]);
    }

    #[test]
    fn a_torn_write_that_kept_the_command_but_not_its_index_entry_is_repaired_on_open() {
        let dir = tempfile::tempdir().expect("dir");
        let db = sled::open(dir.path()).expect("db");
        let s = CommandStore::open(&db).expect("open");
        let recs: Vec<_> = (1..=3).map(|n| rec("CAB-1", n)).collect();
        s.put_commands(&recs, Sync::Flush).expect("put");
        // the newest command's index entry was lost in the crash
        s.by_cabinet
            .remove(queue_key(&recs[2].cabinet, recs[2].id))
            .expect("remove");
        let one = CabinetId::new("CAB-1").expect("id");
        assert_eq!(ids(&s.recent_commands(&one, 10).expect("recent")), [2, 1]);
        let s = CommandStore::open(&db).expect("reopen");
        assert_eq!(
            ids(&s.recent_commands(&one, 10).expect("recent")),
            [3, 2, 1]
        );
    }
}
