//! The agent's public face: [`Agent::start`] with its [`AgentDeps`], the cloneable-free
//! [`AgentHandle`] (status, shutdown, test-side command execution and scan injection) and the
//! types they exchange. The main loop itself lives in [`core`].
//!
//! Per agent there are few tasks: the main loop, the hardware task, the rumqttc event-loop task
//! (if MQTT is enabled) and the scanner input (if configured). Storage goes through the shared
//! storage worker of the caller's database.
//!
//! Module map (each part owns its state behind methods; `core` composes them, parts never
//! import `core`, and no two modules import each other):
//! - [`types`]: the public types and the handle's requests (a leaf);
//! - [`ctx`]: what every part reads (configuration, cabinet id, clock);
//! - [`uplink`]: the outbox, the go-back-N window, the MQTT session, alarms;
//! - [`doors`] (with its `access` child): door states, pending unlocks, boards, power, local access;
//! - [`exec`]: the command executor (jobs, waiters, durable claims and outcomes);
//! - [`core`]: the main loop that owns the parts and routes events between them.

mod core;
mod ctx;
mod doors;
mod exec;
mod types;
mod uplink;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use locker_schemas::{Command, DownlinkBody, ScanSource, Uplink};

use crate::config::AgentConfig;

use types::Request;
pub use types::{
    Access, AgentDeps, AgentError, AgentStatus, Counters, ExecOutcome, ExitReason, Key, Refusal,
    ScanReply, ScanSender,
};

/// The handle to one running agent.
pub struct AgentHandle {
    tx: mpsc::Sender<Request>,
    status: watch::Receiver<AgentStatus>,
    task: Option<JoinHandle<ExitReason>>,
    exit: Option<ExitReason>,
}

impl AgentHandle {
    /// The current status.
    pub fn status(&self) -> AgentStatus {
        self.status.borrow().clone()
    }

    /// A receiver that sees every status change.
    pub fn watch_status(&self) -> watch::Receiver<AgentStatus> {
        self.status.clone()
    }

    /// Executes a command through the same path as one received over MQTT (without MQTT) and
    /// waits for its result.
    pub async fn execute(&self, cmd: Command) -> Result<ExecOutcome, AgentError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Execute { cmd, reply })
            .await
            .map_err(|_| AgentError::Stopped)?;
        rx.await.map_err(|_| AgentError::Stopped)
    }

    /// Handles a downlink as if it came over MQTT (an ack, a command received now, or a
    /// credential set), and returns once it was acted on (a command's result is NOT awaited:
    /// use [`AgentHandle::execute`] for that).
    pub async fn downlink(&self, body: DownlinkBody) -> Result<(), AgentError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Downlink { body, reply })
            .await
            .map_err(|_| AgentError::Stopped)?;
        rx.await.map_err(|_| AgentError::Stopped)
    }

    /// Injects a scan (see [`ScanSender::scan`]).
    pub async fn scan(
        &self,
        source: ScanSource,
        value: impl Into<String>,
    ) -> Result<ScanReply, AgentError> {
        self.scanner().scan(source, value.into()).await
    }

    /// Injects a key press (`key:bigger`, `key:collect`, `key:S`..`key:XL`, `key:logout` at
    /// the scanner input; see [`ScanSender::key`]).
    pub async fn key(&self, key: Key) -> Result<ScanReply, AgentError> {
        self.scanner().key(key).await
    }

    /// A cloneable scan sender for input tasks.
    pub fn scanner(&self) -> ScanSender {
        ScanSender {
            tx: self.tx.clone(),
        }
    }

    /// Every event in the outbox (stored and not yet acknowledged), decoded, in seq order.
    pub async fn outbox(&self) -> Result<Vec<Uplink>, AgentError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Outbox { reply })
            .await
            .map_err(|_| AgentError::Stopped)?;
        rx.await
            .map_err(|_| AgentError::Stopped)?
            .map_err(AgentError::Refused)
    }

    /// Waits until the agent stops by itself (a Reboot command or a failure).
    pub async fn wait(&mut self) -> ExitReason {
        if let Some(e) = &self.exit {
            return e.clone();
        }
        let r = match self.task.take() {
            Some(t) => t
                .await
                .unwrap_or_else(|e| ExitReason::Failed(format!("agent task: {e}"))),
            None => ExitReason::Failed("already stopped".into()),
        };
        self.exit = Some(r.clone());
        r
    }

    /// Stops the agent cleanly (MQTT disconnect, storage flushed) and waits for it.
    pub async fn shutdown(mut self) -> ExitReason {
        let _ = self.tx.send(Request::Shutdown).await;
        self.wait().await
    }
}

impl Drop for AgentHandle {
    fn drop(&mut self) {
        if self.task.is_some() {
            let _ = self.tx.try_send(Request::Shutdown);
        }
    }
}

/// The agent.
pub struct Agent;

impl Agent {
    /// Validates the configuration, opens the cabinet's storage (incrementing the boot counter),
    /// settles commands interrupted by a restart, and starts the tasks.
    pub async fn start(config: AgentConfig, deps: AgentDeps) -> Result<AgentHandle, AgentError> {
        config.validate()?;
        let (tx, rx) = mpsc::channel(64);
        let scans = ScanSender { tx: tx.clone() };
        let (core, status) = core::Core::open(config, deps, rx, scans).await?;
        let task = tokio::spawn(core.run());
        Ok(AgentHandle {
            tx,
            status,
            task: Some(task),
            exit: None,
        })
    }
}

#[cfg(test)]
mod tests {
    /// The layering of the agent's modules: each part may use only the modules listed before
    /// it (never `core`, which composes them), so there is no import circle.
    #[test]
    fn parts_never_import_core_or_a_later_part() {
        let layers: [(&str, &str, &[&str]); 8] = [
            ("types", include_str!("types.rs"), &[]),
            ("ctx", include_str!("ctx.rs"), &[]),
            ("uplink", include_str!("uplink.rs"), &["ctx", "types"]),
            (
                "doors",
                include_str!("doors.rs"),
                &["ctx", "types", "uplink"],
            ),
            (
                "doors/access",
                include_str!("doors/access/mod.rs"),
                &["ctx", "types", "uplink"],
            ),
            (
                "doors/access/session",
                include_str!("doors/access/session.rs"),
                &[],
            ),
            (
                "doors/access/lockout",
                include_str!("doors/access/lockout.rs"),
                &[],
            ),
            (
                "exec",
                include_str!("exec.rs"),
                &["ctx", "types", "uplink", "doors"],
            ),
        ];
        let modules = ["core", "types", "ctx", "uplink", "doors", "exec"];
        for (name, src, allowed) in layers {
            for m in modules {
                if allowed.contains(&m) || name.starts_with(m) {
                    continue;
                }
                for path in [format!("super::{m}"), format!("agent::{m}")] {
                    assert!(!src.contains(&path), "{name} uses {path}");
                }
            }
        }
    }
}
