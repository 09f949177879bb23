//! The command log ([`CommandStore`]): its own two sled trees, owned by the dispatcher.
//!
//! - `commands`: `command id (16 bytes)` -> JSON [`CommandRecord`];
//! - `queue`: `cabinet \0 command id` -> empty: commands still waiting for a final outcome, in
//!   creation order (ids are ULIDs).
//!
//! Every method blocks (sled I/O); the dispatcher calls them through [`super::blocking`].

use locker_schemas::{CabinetId, CommandId};

use super::{decode, encode, StoreError};
use crate::commands::record::CommandRecord;

/// The command trees (cheap to clone).
#[derive(Clone)]
pub struct CommandStore {
    db: sled::Db,
    commands: sled::Tree,
    queue: sled::Tree,
}

fn queue_key(cabinet: &CabinetId, id: CommandId) -> Vec<u8> {
    let mut k = cabinet.as_str().as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(&id.to_bytes());
    k
}

impl CommandStore {
    /// Opens the command trees of `db`.
    pub fn open(db: &sled::Db) -> Result<Self, StoreError> {
        Ok(Self {
            commands: db.open_tree("commands")?,
            queue: db.open_tree("queue")?,
            db: db.clone(),
        })
    }

    /// Records a command (new or updated); pending commands are in the cabinet's queue, final
    /// ones are removed from it. Flushed before returning.
    pub fn put_command(&self, rec: &CommandRecord) -> Result<(), StoreError> {
        self.put_commands(std::slice::from_ref(rec))
    }

    /// Records several commands with one flush.
    pub fn put_commands(&self, recs: &[CommandRecord]) -> Result<(), StoreError> {
        for rec in recs {
            self.commands.insert(rec.id.to_bytes(), encode(rec)?)?;
            let qk = queue_key(&rec.cabinet, rec.id);
            if rec.outcome.is_some() {
                self.queue.remove(qk)?;
            } else {
                self.queue.insert(qk, &[])?;
            }
        }
        self.db.flush()?;
        Ok(())
    }

    /// One command by id.
    pub fn get_command(&self, id: CommandId) -> Result<Option<CommandRecord>, StoreError> {
        match self.commands.get(id.to_bytes())? {
            None => Ok(None),
            Some(v) => Ok(Some(decode("commands", &v)?)),
        }
    }

    /// Every command still waiting for an outcome, oldest first per cabinet.
    pub fn pending_commands(&self) -> Result<Vec<CommandRecord>, StoreError> {
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
            if let Some(rec) = self.get_command(CommandId::from_bytes(id))? {
                out.push(rec);
            }
        }
        Ok(out)
    }
}
