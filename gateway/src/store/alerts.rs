//! The rules engine's durable state, behind [`AlertStore`] (sled here; JetStream in cluster
//! mode later): each cabinet's rule state (pending conditions with their start times, windows,
//! the last readings) and every alert, active and cleared (the alert history, which is also
//! the alerts' audit trail: raise, acknowledgement, clear and actions with who and when).
//!
//! Trees (values are JSON): `rule_state` (by cabinet), `alerts` (by id: `ALR-<ulid>`, so in
//! time order), `alerts_active` (id -> empty: the active set, so a start reads only those),
//! `rule_actions` (command id -> the action whose command may not exist yet), `alert_log`
//! (big-endian position -> [`AlertChange`]: every raise, acknowledgement, clear and update in
//! the order they were committed, which webhooks tail).
//!
//! Blocking; the rules actor calls it through `spawn_blocking`, one flush per batch.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use locker_schemas::{CabinetId, Millis};

use super::{decode, encode, StoreError};
use crate::rules::model::{Alert, AlertFilter, PendingAction};
use crate::rules::state::CabState;

/// What happened to an alert in one commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    Raised,
    Acknowledged,
    Cleared,
    /// Its severity or actions changed while it stayed active.
    Updated,
}

impl ChangeKind {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Raised => "raised",
            ChangeKind::Acknowledged => "acknowledged",
            ChangeKind::Cleared => "cleared",
            ChangeKind::Updated => "updated",
        }
    }
}

/// One line of the alert change log.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AlertChange {
    /// Position in the log, from 1.
    pub pos: u64,
    /// When the change was committed.
    pub at: Millis,
    pub change: ChangeKind,
    /// The alert as it was after the change.
    pub alert: Alert,
}

/// What the rules actor starts from.
#[derive(Debug, Default)]
pub struct LoadedRules {
    pub cabinets: HashMap<CabinetId, CabState>,
    pub active: Vec<Alert>,
    /// Actions whose commands may not have been created before the last stop.
    pub actions: Vec<PendingAction>,
}

/// The rules engine's storage.
pub trait AlertStore: Send + Sync + 'static {
    /// Everything the engine needs at start.
    fn load(&self) -> Result<LoadedRules, StoreError>;
    /// Writes cabinet states, alerts (new, changed, cleared) and the actions they ask for,
    /// and makes them durable.
    fn commit(
        &self,
        states: &[(CabinetId, CabState)],
        alerts: &[Alert],
        actions: &[PendingAction],
    ) -> Result<(), StoreError>;
    /// The command of an action exists (or was refused for good): it is no longer pending.
    fn action_done(&self, command: &str) -> Result<(), StoreError>;
    /// One alert.
    fn get(&self, id: &str) -> Result<Option<Alert>, StoreError>;
    /// Alerts matching `f`, newest first.
    fn list(&self, f: &AlertFilter) -> Result<Vec<Alert>, StoreError>;
    /// Deletes cleared alerts that cleared before `before` (and change-log lines older than
    /// it); returns how many alerts.
    fn prune(&self, before: Millis) -> Result<usize, StoreError>;
    /// Change-log lines with `pos > after`, oldest first.
    fn changes(&self, after: u64, limit: usize) -> Result<Vec<AlertChange>, StoreError>;
    /// The alert history oldest first (by id, so in the order they were raised): up to
    /// `limit` alerts with an id after `after` (read-only; the audit export).
    fn history_page(&self, after: Option<&str>, limit: usize) -> Result<Vec<Alert>, StoreError>;
}

/// [`AlertStore`] on the gateway's sled database.
#[derive(Clone)]
pub struct SledAlerts {
    db: sled::Db,
    state: sled::Tree,
    alerts: sled::Tree,
    active: sled::Tree,
    actions: sled::Tree,
    log: sled::Tree,
    /// The next change-log position.
    next_change: Arc<AtomicU64>,
}

/// The rules engine's trees (a snapshot of the domain's `alerts` part copies them).
pub const TREES: &[&str] = &[
    "rule_state",
    "alerts",
    "alerts_active",
    "rule_actions",
    "alert_log",
];

impl SledAlerts {
    /// Opens the trees.
    pub fn open(db: &sled::Db) -> Result<Self, StoreError> {
        let log = db.open_tree("alert_log")?;
        Ok(Self {
            db: db.clone(),
            state: db.open_tree("rule_state")?,
            alerts: db.open_tree("alerts")?,
            active: db.open_tree("alerts_active")?,
            actions: db.open_tree("rule_actions")?,
            next_change: Arc::new(AtomicU64::new(last_pos(&log)? + 1)),
            log,
        })
    }
}

impl SledAlerts {
    /// Reads the next change-log position from the log again (after its trees were replaced
    /// by a snapshot).
    pub fn reload_position(&self) -> Result<(), StoreError> {
        self.next_change
            .store(last_pos(&self.log)? + 1, Ordering::Relaxed);
        Ok(())
    }

    /// The position the next change-log line gets.
    pub fn next_change(&self) -> u64 {
        self.next_change.load(Ordering::Relaxed)
    }

    fn take_change(&self) -> u64 {
        self.next_change.fetch_add(1, Ordering::Relaxed)
    }

    /// [`AlertStore::commit`] with its change-log lines from position `first` and `now` as the
    /// time of an update: a replica (cluster mode) applying the same commit writes the same
    /// lines, and applying it twice writes them once.
    pub fn commit_as(
        &self,
        first: u64,
        now: Millis,
        states: &[(CabinetId, CabState)],
        alerts: &[Alert],
        actions: &[PendingAction],
    ) -> Result<(), StoreError> {
        // a commit applied a second time finds its alerts as they are and logs nothing: the
        // positions never move back
        self.next_change.fetch_max(first, Ordering::Relaxed);
        let mut pending = sled::Batch::default();
        for p in actions {
            pending.insert(p.command.to_string().as_bytes(), encode(p)?);
        }
        let mut s = sled::Batch::default();
        for (id, st) in states {
            s.insert(id.as_str().as_bytes(), encode(st)?);
        }
        let mut a = sled::Batch::default();
        let mut act = sled::Batch::default();
        let mut log = sled::Batch::default();
        for al in alerts {
            let old: Option<Alert> = self
                .alerts
                .get(al.id.as_bytes())?
                .map(|v| decode("alerts", &v))
                .transpose()?;
            if worth_logging(old.as_ref(), al) {
                let change = change_of(old.as_ref(), al);
                let at = match change {
                    ChangeKind::Raised => al.raised_at,
                    ChangeKind::Cleared => al.cleared_at.unwrap_or(now),
                    ChangeKind::Acknowledged => al.acked_at.unwrap_or(now),
                    ChangeKind::Updated => now,
                };
                let change = AlertChange {
                    pos: self.take_change(),
                    at,
                    change,
                    alert: al.clone(),
                };
                log.insert(&change.pos.to_be_bytes(), encode(&change)?);
            }
            a.insert(al.id.as_bytes(), encode(al)?);
            if al.is_active() {
                act.insert(al.id.as_bytes(), &[] as &[u8]);
            } else {
                act.remove(al.id.as_bytes());
            }
        }
        // alerts first: a state that names an alert always finds it after a crash
        self.alerts.apply_batch(a)?;
        self.log.apply_batch(log)?;
        self.active.apply_batch(act)?;
        self.actions.apply_batch(pending)?;
        self.state.apply_batch(s)?;
        self.db.flush()?;
        Ok(())
    }
}

fn last_pos(t: &sled::Tree) -> Result<u64, StoreError> {
    Ok(match t.last()? {
        Some((k, _)) => be_u64(&k),
        None => 0,
    })
}

fn be_u64(k: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = k.len().min(8);
    b[..n].copy_from_slice(&k[..n]);
    u64::from_be_bytes(b)
}

/// What a commit did to an alert, from its stored and its new form.
fn change_of(old: Option<&Alert>, new: &Alert) -> ChangeKind {
    match old {
        None => ChangeKind::Raised,
        Some(o) if o.cleared_at.is_none() && new.cleared_at.is_some() => ChangeKind::Cleared,
        Some(o) if o.acked_at.is_none() && new.acked_at.is_some() => ChangeKind::Acknowledged,
        Some(_) => ChangeKind::Updated,
    }
}

/// Whether a change is worth a log line: not a measured value or detail moving while the
/// alert stays active (that would be a line per tick).
fn worth_logging(old: Option<&Alert>, new: &Alert) -> bool {
    match (old, change_of(old, new)) {
        (Some(o), ChangeKind::Updated) => o.severity != new.severity || o.actions != new.actions,
        (Some(o), _) => o != new,
        (None, _) => true,
    }
}

/// Whether an alert matches a filter (not the paging).
pub fn matches(a: &Alert, f: &AlertFilter) -> bool {
    f.active.is_none_or(|want| a.is_active() == want)
        && f.cabinet.as_ref().is_none_or(|c| &a.cabinet == c)
        && f.site.as_ref().is_none_or(|s| a.site.as_ref() == Some(s))
        && f.sites_in
            .as_ref()
            .is_none_or(|set| a.site.as_ref().is_some_and(|s| set.contains(s)))
        && f.kind.is_none_or(|k| a.kind == k)
        && f.severity.is_none_or(|s| a.severity == s)
}

impl AlertStore for SledAlerts {
    fn load(&self) -> Result<LoadedRules, StoreError> {
        let mut out = LoadedRules::default();
        for kv in self.state.iter() {
            let (k, v) = kv?;
            let id = CabinetId::new(String::from_utf8_lossy(&k).into_owned()).map_err(|e| {
                StoreError::Corrupt {
                    tree: "rule_state",
                    detail: e.to_string(),
                }
            })?;
            out.cabinets.insert(id, decode("rule_state", &v)?);
        }
        for kv in self.active.iter() {
            let (k, _) = kv?;
            if let Some(v) = self.alerts.get(&k)? {
                let a: Alert = decode("alerts", &v)?;
                if a.is_active() {
                    out.active.push(a);
                }
            }
        }
        for kv in self.actions.iter() {
            let (_, v) = kv?;
            out.actions.push(decode("rule_actions", &v)?);
        }
        Ok(out)
    }

    fn commit(
        &self,
        states: &[(CabinetId, CabState)],
        alerts: &[Alert],
        actions: &[PendingAction],
    ) -> Result<(), StoreError> {
        let first = self.next_change();
        self.commit_as(first, locker_schemas::now_millis(), states, alerts, actions)
    }

    fn action_done(&self, command: &str) -> Result<(), StoreError> {
        // no flush: an action found pending again at start is looked up before it is created
        self.actions.remove(command.as_bytes())?;
        Ok(())
    }

    fn get(&self, id: &str) -> Result<Option<Alert>, StoreError> {
        self.alerts
            .get(id.as_bytes())?
            .map(|v| decode("alerts", &v))
            .transpose()
    }

    fn list(&self, f: &AlertFilter) -> Result<Vec<Alert>, StoreError> {
        let limit = f.limit.clamp(1, 1_000);
        let mut out = Vec::new();
        let iter = match &f.before {
            Some(b) => self.alerts.range(..b.as_bytes().to_vec()),
            None => self.alerts.range::<Vec<u8>, _>(..),
        };
        if f.active == Some(true) {
            // the active set is small: read it rather than the history
            let mut all = Vec::new();
            for kv in self.active.iter() {
                let (k, _) = kv?;
                if f.before
                    .as_ref()
                    .is_some_and(|b| k.as_ref() >= b.as_bytes())
                {
                    continue;
                }
                if let Some(v) = self.alerts.get(&k)? {
                    let a: Alert = decode("alerts", &v)?;
                    if matches(&a, f) {
                        all.push(a);
                    }
                }
            }
            all.sort_by(|a, b| b.id.cmp(&a.id));
            all.truncate(limit);
            return Ok(all);
        }
        for kv in iter.rev() {
            let (_, v) = kv?;
            let a: Alert = decode("alerts", &v)?;
            if matches(&a, f) {
                out.push(a);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    fn prune(&self, before: Millis) -> Result<usize, StoreError> {
        let mut b = sled::Batch::default();
        let mut n = 0;
        for kv in self.alerts.iter() {
            let (k, v) = kv?;
            let a: Alert = decode("alerts", &v)?;
            // ids are time-ordered: past the cut-off nothing older remains
            if a.raised_at >= before {
                break;
            }
            if a.cleared_at.is_some_and(|c| c < before) {
                b.remove(k);
                n += 1;
            }
        }
        let mut l = sled::Batch::default();
        let mut lines = 0;
        for kv in self.log.iter() {
            let (k, v) = kv?;
            let c: AlertChange = decode("alert_log", &v)?;
            if c.at >= before {
                break;
            }
            l.remove(k);
            lines += 1;
        }
        if n > 0 || lines > 0 {
            self.alerts.apply_batch(b)?;
            self.log.apply_batch(l)?;
            self.db.flush()?;
        }
        Ok(n)
    }

    fn changes(&self, after: u64, limit: usize) -> Result<Vec<AlertChange>, StoreError> {
        let mut out = Vec::new();
        let from = after.saturating_add(1).to_be_bytes();
        for kv in self.log.range(from..) {
            let (_, v) = kv?;
            out.push(decode("alert_log", &v)?);
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    fn history_page(&self, after: Option<&str>, limit: usize) -> Result<Vec<Alert>, StoreError> {
        let iter = match after {
            // the first key after `after`
            Some(a) => {
                let mut k = a.as_bytes().to_vec();
                k.push(0);
                self.alerts.range(k..)
            }
            None => self.alerts.range::<Vec<u8>, _>(..),
        };
        iter.take(limit)
            .map(|kv| {
                let (_, v) = kv?;
                decode("alerts", &v)
            })
            .collect()
    }
}
