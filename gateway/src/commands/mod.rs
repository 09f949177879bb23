//! Commands: the per-cabinet offline queue and the dispatcher. One actor ([`Dispatcher`], in
//! [`dispatcher`]) owns every command that has no outcome yet; the records are in [`record`],
//! their trees behind [`crate::store::CommandStore`], and the rebuild at start in [`recover`].
//!
//! Life of a command: the API creates it (validated: TTL, size, `set_config` keys; persisted
//! with the cabinet's audit-log position, flushed) -> it is sent when its cabinet is ready (its
//! hello was stored since it connected), with `state = sent` persisted BEFORE the publish -> it
//! is resent with exponential backoff and jitter (`resend_after_ms` doubling up to
//! `resend_max_ms`) while no result has come -> the result (already durable in the audit log)
//! gives its one outcome.
//!
//! Ends without the cabinet: a command that expires before it was ever sent ends `expired`. A
//! sent one is never declared expired by the gateway (only the cabinet knows whether it ran):
//! past its expiry it is sent one last time (the cabinet answers its stored outcome or
//! `expired`), and if nothing comes `give_up_after_ms` after its expiry it ends `no_answer`
//! (state `unconfirmed`), which claims nothing about the door; a late Result is still recorded
//! on the record (`late_outcome`) and is in the audit log. So the gateway and the cabinet can
//! never disagree about whether a door opened.
//!
//! Cancel: a queued command ends `cancelled`. A sent one may already have run, so a cancel only
//! stops its resends; its outcome is still the cabinet's, or `no_answer` `give_up_after_ms`
//! after the cancel.
//!
//! Restarts: results are stored by ingest before the dispatcher hears of them. If the gateway
//! stops in between, [`recover`] finds them in the audit log at the next start (each command
//! records the cabinet's audit position at creation), and a cabinet answers a resent finished
//! command with its stored outcome.

pub mod dispatcher;
pub mod record;
pub mod recover;

use std::time::Duration;

use locker_schemas::limits::SettingError;
use locker_schemas::CabinetId;
use locker_schemas::CommandId;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

pub use dispatcher::Dispatcher;
pub use record::{ActionSpec, CommandRecord, CommandState};
pub use recover::{recover, Recovered};

use crate::store::StoreError;

/// Command settings (the `[commands]` table of gateway.toml).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct CommandsConfig {
    /// TTL when the API request gives none, ms.
    pub default_ttl_ms: u32,
    /// The longest TTL the API accepts, ms (how long a command may wait for an offline cabinet).
    pub max_ttl_ms: u32,
    /// First resend of a sent command with no result after this long, ms; each further resend
    /// waits twice as long (plus up to a quarter of jitter), up to `resend_max_ms`.
    pub resend_after_ms: u64,
    /// The longest wait between two resends, ms.
    pub resend_max_ms: u64,
    /// A sent command with no result this long after its expiry (or after a cancel was asked)
    /// ends `no_answer`, ms.
    pub give_up_after_ms: u64,
    /// How often the dispatcher checks for resends and expiries, ms.
    pub tick_ms: u64,
}

impl Default for CommandsConfig {
    fn default() -> Self {
        Self {
            default_ttl_ms: 60_000,
            max_ttl_ms: 7 * 24 * 3_600_000,
            resend_after_ms: 5_000,
            resend_max_ms: 300_000,
            give_up_after_ms: 3_600_000,
            tick_ms: 500,
        }
    }
}

/// Why a command request failed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("ttl_ms must be between 1 and {max}")]
    Ttl { max: u32 },
    #[error("the command is {len} bytes encoded; a cabinet accepts at most {max}")]
    TooLarge { len: usize, max: usize },
    #[error("set_config: {0}")]
    BadConfig(#[from] SettingError),
    #[error("command {0} not found")]
    NotFound(CommandId),
    #[error("command {0} already has its outcome")]
    Finished(CommandId),
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    /// A group commit of new commands failed (the same error for every command in it).
    #[error("storage: {0}")]
    GroupCommit(String),
    #[error("the command dispatcher is shutting down")]
    Closed,
}

/// A new command as the API asks for it.
#[derive(Debug, Clone)]
pub struct NewCommand {
    /// The id to give the command (a caller that records it before the command exists, as
    /// the parcel domain does for a remote unlock); `None` makes a new one.
    pub id: Option<CommandId>,
    pub cabinet: CabinetId,
    pub action: ActionSpec,
    pub ttl_ms: Option<u32>,
    pub created_by: String,
}

/// Where the dispatcher sends a command's record once it has its outcome.
pub(crate) type Waiter = oneshot::Sender<CommandRecord>;

pub(crate) enum Msg {
    /// A new command, and optionally a waiter for its outcome (registered with the command,
    /// so waiting costs no second message).
    Create(
        NewCommand,
        oneshot::Sender<Result<CommandRecord, CommandError>>,
        Option<Waiter>,
    ),
    Get(
        CommandId,
        oneshot::Sender<Result<Option<CommandRecord>, CommandError>>,
    ),
    Wait(CommandId, Waiter),
    Cancel(
        CommandId,
        oneshot::Sender<Result<CommandRecord, CommandError>>,
    ),
    Offline(CabinetId),
    /// A cabinet's most recent commands, newest first.
    Recent(
        CabinetId,
        usize,
        oneshot::Sender<Result<Vec<CommandRecord>, CommandError>>,
    ),
    HoldResults(bool, oneshot::Sender<()>),
}

/// Cloneable handle to the dispatcher.
#[derive(Clone)]
pub struct CommandsHandle {
    tx: mpsc::Sender<Msg>,
}

impl CommandsHandle {
    /// A handle to no dispatcher (a cluster node that does not run the domain): every call
    /// answers that the dispatcher is gone.
    pub fn detached() -> Self {
        let (tx, _) = mpsc::channel(1);
        Self { tx }
    }

    async fn call<T>(
        &self,
        f: impl FnOnce(oneshot::Sender<Result<T, CommandError>>) -> Msg,
    ) -> Result<T, CommandError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(f(tx))
            .await
            .map_err(|_| CommandError::Closed)?;
        rx.await.map_err(|_| CommandError::Closed)?
    }

    /// Creates, persists and (if the cabinet is ready) sends a command.
    pub async fn create(&self, c: NewCommand) -> Result<CommandRecord, CommandError> {
        self.call(|tx| Msg::Create(c, tx, None)).await
    }

    /// [`CommandsHandle::create`], then waits up to `timeout` for the outcome (one message to
    /// the dispatcher); returns the record as it is then.
    pub async fn create_and_wait(
        &self,
        c: NewCommand,
        timeout: Duration,
    ) -> Result<CommandRecord, CommandError> {
        let (wtx, wrx) = oneshot::channel();
        let rec = self.call(|tx| Msg::Create(c, tx, Some(wtx))).await?;
        match tokio::time::timeout(timeout, wrx).await {
            Ok(Ok(done)) => Ok(done),
            // timed out (or the dispatcher stopped): the record as it is now
            _ => Ok(self.get(rec.id).await?.unwrap_or(rec)),
        }
    }

    /// A command by id (pending or finished).
    pub async fn get(&self, id: CommandId) -> Result<Option<CommandRecord>, CommandError> {
        self.call(|tx| Msg::Get(id, tx)).await
    }

    /// Cancels a queued command (it ends `cancelled`); for a sent one, stops its resends (its
    /// outcome stays the cabinet's). Returns the record as it is now.
    pub async fn cancel(&self, id: CommandId) -> Result<CommandRecord, CommandError> {
        self.call(|tx| Msg::Cancel(id, tx)).await
    }

    /// Waits up to `timeout` for a command's outcome; returns the record either way.
    pub async fn wait(
        &self,
        id: CommandId,
        timeout: Duration,
    ) -> Result<Option<CommandRecord>, CommandError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Msg::Wait(id, tx))
            .await
            .map_err(|_| CommandError::Closed)?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(rec)) => Ok(Some(rec)),
            _ => self.get(id).await,
        }
    }

    /// A cabinet's most recent commands, newest first, at most `limit` (1 to 500): the
    /// stored records, with the dispatcher's newer state of those still pending.
    pub async fn recent(
        &self,
        cabinet: CabinetId,
        limit: usize,
    ) -> Result<Vec<CommandRecord>, CommandError> {
        self.call(|tx| Msg::Recent(cabinet, limit, tx)).await
    }

    /// Tells the dispatcher a cabinet went offline (stop sending until its next hello).
    pub async fn offline(&self, cabinet: CabinetId) {
        let _ = self.tx.send(Msg::Offline(cabinet)).await;
    }

    /// For fault-injection tests only: while held, the dispatcher puts stored Results aside
    /// (in memory) instead of recording them, so a test can stop the gateway between ingest
    /// storing a Result and the dispatcher recording the outcome; releasing records them.
    /// Returns once in effect.
    #[doc(hidden)]
    pub async fn hold_results_for_tests(&self, hold: bool) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::HoldResults(hold, tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}
