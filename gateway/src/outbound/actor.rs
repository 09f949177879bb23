//! The outbound actor: owns the subscriptions, every target's queue and the source cursors.
//! Each turn it reads what the source logs gained since its cursors, queues a delivery per
//! target that wants each event (committed together with the cursors), applies finished
//! requests, commits, and starts what may go ([`super::sending`]). Requests run in a
//! [`JoinSet`] it owns, bounded per target and overall, so a slow receiver holds only its own
//! slots.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use locker_schemas::{now_millis, CabinetId, Millis, SiteId};
use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::config::WebhooksConfig;
use super::deliver::{Http, HttpError};
use super::events::{self, TemplateError, TrackingTemplates};
use super::metrics::OutboundMetrics;
use super::model::{Entry, Event, Subscription, Target};
use super::notify::Notifier;
use super::queue::{Meta, Queue};
use super::sending::Done;
use super::{Health, Inbox};
use crate::parcels::{Caller, ParcelsHandle, Scope};
use crate::store::alerts::AlertStore;
use crate::store::outbound::{OutBatch, OutboundStore};
use crate::store::parcels::ParcelStore;
use crate::store::{self, StoreError};

/// Records read from each source log per turn at most.
const READ_BATCH: usize = 1_000;

/// Why the outbox could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("{0}")]
    Invalid(String),
}

/// Checks each carrier's tracking endpoint: a URL the client can reach, a usable secret.
fn check_carriers(cfg: &WebhooksConfig) -> Result<(), StartError> {
    for (id, c) in &cfg.carriers {
        let key = format!("webhooks.carriers.{id}");
        let url = reqwest::Url::parse(&c.url)
            .map_err(|e| StartError::Invalid(format!("{key}.url: {e}")))?;
        match url.scheme() {
            "https" => {}
            "http" if cfg.allow_http => {}
            other => {
                return Err(StartError::Invalid(format!(
                    "{key}.url: scheme {other} (https, or http with webhooks.allow_http = true)"
                )))
            }
        }
        if let Some(s) = &c.secret {
            super::sign::key_of(s)
                .map_err(|e| StartError::Invalid(format!("{key}.secret: {e}")))?;
        }
        let states: Vec<&str> = crate::parcels::OrderState::ALL
            .iter()
            .map(|s| s.as_str())
            .collect();
        if let Some(bad) = c.statuses.keys().find(|k| !states.contains(&k.as_str())) {
            return Err(StartError::Invalid(format!(
                "{key}.statuses: {bad:?} is not an order state ({})",
                states.join(", ")
            )));
        }
        if c.statuses.is_empty() {
            return Err(StartError::Invalid(format!(
                "{key}.statuses: name at least one order state, e.g. {{ ready = \"DELIVERED_TO_LOCKER\" }}"
            )));
        }
    }
    Ok(())
}

/// What the actor is built from.
pub struct Parts {
    pub cfg: WebhooksConfig,
    pub store: Arc<dyn OutboundStore>,
    /// The parcel trail (order transitions).
    pub parcel_log: Arc<dyn ParcelStore>,
    /// The alert change log.
    pub alert_log: Arc<dyn AlertStore>,
    /// Where cabinets are (the site of a presence event).
    pub parcels: Option<ParcelsHandle>,
    /// Recipient notifications (`None`: notices are left to the API's readers).
    pub notifier: Option<Notifier>,
    pub metrics: OutboundMetrics,
}

/// One target's queue and how it is doing.
#[derive(Default)]
pub(super) struct TargetState {
    pub queue: Queue,
    pub next_seq: u64,
    pub health: Health,
}

/// The actor.
pub struct Outbound {
    pub(super) cfg: WebhooksConfig,
    pub(super) store: Arc<dyn OutboundStore>,
    pub(super) parcel_log: Arc<dyn ParcelStore>,
    pub(super) alert_log: Arc<dyn AlertStore>,
    pub(super) parcels: Option<ParcelsHandle>,
    pub(super) notifier: Option<Notifier>,
    pub(super) metrics: OutboundMetrics,
    pub(super) templates: TrackingTemplates,
    pub(super) http: Http,
    pub(super) subs: BTreeMap<String, Subscription>,
    pub(super) cursors: HashMap<String, u64>,
    pub(super) targets: BTreeMap<Target, TargetState>,
    /// Events that came as messages (presence), queued at the next turn.
    pub(super) waiting: Vec<Event>,
    pub(super) batch: OutBatch,
    pub(super) site_of: HashMap<CabinetId, SiteId>,
    pub(super) running: JoinSet<Done>,
    pub(super) rng: StdRng,
    /// A storage error was logged (once until the next success).
    pub(super) storage_failing: bool,
    /// A source read hit its limit: read again without waiting for the poll.
    pub(super) more: bool,
}

impl Outbound {
    /// Loads the outbox and starts the actor.
    pub async fn spawn(
        parts: Parts,
        inbox: Inbox,
        cancel: CancellationToken,
        tracker: &TaskTracker,
    ) -> Result<JoinHandle<()>, StartError> {
        check_carriers(&parts.cfg)?;
        let templates = TrackingTemplates::new(&parts.cfg.carriers)?;
        let http = Http::new(Duration::from_millis(parts.cfg.timeout_ms))?;
        let (st, pl) = (parts.store.clone(), parts.parcel_log.clone());
        let (loaded, heads) = store::blocking(move || Ok((st.load()?, pl.heads()?))).await?;
        let targets = targets_from(loaded.last_seq, loaded.pending);
        let mut cursors = loaded.cursors;
        let mut batch = OutBatch::default();
        // the first start reads the logs from their current end: records from before the
        // outbox existed are not sent
        for (name, head) in [("parcel", heads.1), ("notice", heads.0)] {
            if !cursors.contains_key(name) {
                cursors.insert(name.into(), head);
                batch.cursors.push((name.into(), head));
            }
        }
        let mut actor = Outbound {
            subs: loaded
                .subscriptions
                .into_iter()
                .map(|s| (s.id.clone(), s))
                .collect(),
            cfg: parts.cfg,
            store: parts.store,
            parcel_log: parts.parcel_log,
            alert_log: parts.alert_log,
            parcels: parts.parcels,
            notifier: parts.notifier,
            metrics: parts.metrics,
            templates,
            http,
            cursors,
            targets,
            waiting: Vec::new(),
            batch,
            site_of: HashMap::new(),
            running: JoinSet::new(),
            rng: StdRng::from_entropy(),
            storage_failing: false,
            more: false,
        };
        let pending: usize = actor.targets.values().map(|t| t.queue.len()).sum();
        tracing::info!(subscriptions = actor.subs.len(), pending, "outbox loaded");
        Ok(tracker.spawn(async move { actor.run(inbox, cancel).await }))
    }

    async fn run(&mut self, mut inbox: Inbox, cancel: CancellationToken) {
        let mut poll = tokio::time::interval(Duration::from_millis(self.cfg.poll_ms.max(1)));
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut gauges = tokio::time::interval(Duration::from_secs(1));
        let mut sites = tokio::time::interval(Duration::from_secs(30));
        loop {
            let wake = self.next_wake();
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                Some(done) = self.running.join_next(), if !self.running.is_empty() => {
                    if let Ok(d) = done {
                        self.finished(d);
                    }
                    while let Some(Ok(d)) = self.running.try_join_next() {
                        self.finished(d);
                    }
                }
                m = inbox.0.recv() => match m {
                    Some(m) => self.on_msg(m).await,
                    None => break,
                },
                _ = poll.tick() => self.poll().await,
                _ = tokio::time::sleep(wake), if wake < Duration::from_secs(3600) => {}
                _ = gauges.tick() => self.gauges(),
                _ = sites.tick() => self.refresh_sites().await,
            }
            if self.more {
                self.poll().await;
            }
            self.commit().await;
            self.dispatch();
        }
        // What is in flight is abandoned: it stays queued and goes again after a restart.
        self.running.abort_all();
        self.commit().await;
    }

    /// How long until a queued delivery becomes due.
    fn next_wake(&self) -> Duration {
        let now = now_millis();
        let next = self
            .targets
            .values()
            .filter_map(|t| t.queue.next_due())
            .min();
        match next {
            Some(at) => Duration::from_millis(at.saturating_sub(now).max(1)),
            None => Duration::from_secs(3600),
        }
    }

    /// Reads what the source logs gained and queues their deliveries.
    async fn poll(&mut self) {
        self.more = false;
        if !self.cfg.enabled {
            self.waiting.clear();
            return;
        }
        let pa = self.cursors.get("parcel").copied().unwrap_or(0);
        let al = self.cursors.get("alert").copied().unwrap_or(0);
        let no = self.cursors.get("notice").copied().unwrap_or(0);
        let (pl, alog) = (self.parcel_log.clone(), self.alert_log.clone());
        let read = store::blocking(move || {
            Ok((
                pl.audit(pa, READ_BATCH)?,
                alog.changes(al, READ_BATCH)?,
                pl.notices(no, READ_BATCH)?,
            ))
        })
        .await;
        let (records, changes, notices) = match read {
            Ok(x) => x,
            Err(e) => {
                self.storage_error("read the source logs", &e);
                return;
            }
        };
        self.more = records.len() >= READ_BATCH
            || changes.len() >= READ_BATCH
            || notices.len() >= READ_BATCH;
        for n in &notices {
            self.notice(n);
        }
        if let Some(last) = notices.last() {
            self.set_cursor("notice", last.id);
        }
        let mut evs = std::mem::take(&mut self.waiting);
        for r in &records {
            evs.extend(events::from_parcel(r));
            match self.templates.update(&self.cfg.carriers, r) {
                Ok(Some((id, body))) => {
                    let carrier = r
                        .carrier
                        .as_ref()
                        .map(|c| c.to_string())
                        .unwrap_or_default();
                    let key = r
                        .cabinet
                        .as_ref()
                        .map(|c| c.to_string())
                        .unwrap_or_default();
                    let entry = self.entry(
                        id,
                        "tracking".into(),
                        key,
                        r.at,
                        serde_json::json!({ "body": body }),
                    );
                    self.enqueue(Target::Carrier(carrier), entry);
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "carrier tracking update not rendered"),
            }
        }
        for c in &changes {
            evs.extend(events::from_alert(c));
        }
        evs.sort_by_key(|e| e.at);
        for e in evs {
            self.fan_out(e);
        }
        if let Some(last) = records.last() {
            self.set_cursor("parcel", last.pos);
        }
        if let Some(last) = changes.last() {
            self.set_cursor("alert", last.pos);
        }
    }

    fn set_cursor(&mut self, name: &str, pos: u64) {
        self.cursors.insert(name.to_owned(), pos);
        self.batch.cursors.retain(|(n, _)| n != name);
        self.batch.cursors.push((name.to_owned(), pos));
    }

    /// Queues an event for every subscription that wants it.
    pub(super) fn fan_out(&mut self, e: Event) {
        let wanted: Vec<String> = self
            .subs
            .values()
            .filter(|s| s.wants(&e))
            .map(|s| s.id.clone())
            .collect();
        if wanted.is_empty() {
            return;
        }
        let payload = serde_json::to_value(&e).unwrap_or_default();
        let key = e.cabinet.clone().unwrap_or_default();
        for id in wanted {
            let entry = self.entry(
                e.id.clone(),
                e.kind.clone(),
                key.clone(),
                e.at,
                payload.clone(),
            );
            self.enqueue(Target::Webhook(id), entry);
        }
    }

    pub(super) fn entry(
        &self,
        event_id: String,
        kind: String,
        key: String,
        at: Millis,
        payload: serde_json::Value,
    ) -> Entry {
        Entry {
            seq: 0,
            event_id,
            kind,
            key,
            at,
            queued_at: now_millis(),
            attempts: 0,
            last_error: None,
            payload,
        }
    }

    /// Gives an entry its target's next seq and queues it (written at the next commit); a
    /// target already holding `max_pending_per_endpoint` gets it as a dead letter instead.
    pub(super) fn enqueue(&mut self, target: Target, mut e: Entry) {
        let cap = self.cfg.max_pending_per_endpoint.max(1);
        if self
            .targets
            .get(&target)
            .is_some_and(|t| t.queue.len() >= cap)
        {
            let reason = format!(
                "{cap} deliveries already wait for this target (webhooks.max_pending_per_endpoint)"
            );
            return self.dead_on_arrival(target, e, reason);
        }
        let ts = self.targets.entry(target.clone()).or_default();
        ts.next_seq = ts.next_seq.max(1);
        e.seq = ts.next_seq;
        ts.next_seq += 1;
        let meta = Meta {
            key: e.key.clone(),
            at: e.at,
            queued_at: e.queued_at,
            attempts: 0,
        };
        ts.queue.push(e.seq, meta, e.queued_at);
        self.metrics.queued.inc();
        self.batch.queued.push((target, e));
    }

    /// Queues a notice for its provider, rendered now (with notifications off, the notice is
    /// left to the API's readers and the cursor moves on).
    fn notice(&mut self, n: &crate::parcels::Notice) {
        let Some(notifier) = self.notifier.as_ref().filter(|x| x.enabled()) else {
            return;
        };
        let kind = serde_json::to_value(n.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let id = format!("ntc_{}", n.id);
        match notifier.render(n) {
            Ok(m) => {
                let payload = serde_json::to_value(&m).unwrap_or_default();
                let entry = self.entry(id, kind, n.order.to_string(), n.created_at, payload);
                self.enqueue(Target::Notify(m.provider), entry);
            }
            Err(e) => {
                // no channel, address or provider fits: kept for the operator, replayable
                // once the configuration or the recipient is fixed
                let payload = serde_json::to_value(n).unwrap_or_default();
                let entry = self.entry(id, kind, n.order.to_string(), n.created_at, payload);
                self.dead_on_arrival(
                    Target::Notify("unroutable".into()),
                    entry,
                    e.reason().to_owned(),
                );
            }
        }
    }

    /// A presence change, as an event at the next turn.
    pub(super) fn presence(&mut self, cabinet: CabinetId, online: bool, at: Millis) {
        if !self.cfg.enabled {
            return;
        }
        let site = self.site_of.get(&cabinet).cloned();
        let id = format!("evt_presence_{}", ulid::Ulid::new());
        self.waiting
            .push(events::from_presence(id, &cabinet, site, online, at));
    }

    /// Writes what this turn changed. On failure the batch is kept for the next turn and
    /// nothing new is sent (a request reads its entry from the store).
    pub(super) async fn commit(&mut self) -> bool {
        if self.batch.is_empty() {
            return true;
        }
        let b = std::mem::take(&mut self.batch);
        let flush = b.needs_flush();
        let st = self.store.clone();
        match store::blocking(move || st.commit(&b, flush).map(|_| b)).await {
            Ok(_) => {
                self.storage_failing = false;
                true
            }
            Err(e) => {
                self.storage_error("write the outbox", &e);
                // not retried blindly: the cursors stay where they were, so the next poll
                // queues the same events again under the same ids
                self.rebuild_after_failed_commit().await;
                false
            }
        }
    }

    /// After a failed commit, memory may hold deliveries and subscriptions the store does
    /// not: reload them (what the failed batch held is redone: the cursors were not moved).
    async fn rebuild_after_failed_commit(&mut self) {
        let st = self.store.clone();
        let Ok(loaded) = store::blocking(move || st.load()).await else {
            return;
        };
        let mut targets = targets_from(loaded.last_seq, loaded.pending);
        self.subs = loaded
            .subscriptions
            .into_iter()
            .map(|s| (s.id.clone(), s))
            .collect();
        for (t, old) in std::mem::take(&mut self.targets) {
            let ts = targets.entry(t).or_default();
            ts.health = old.health;
        }
        self.targets = targets;
        self.cursors = loaded.cursors;
        self.running.abort_all();
    }

    fn storage_error(&mut self, what: &str, e: &StoreError) {
        self.metrics.storage_errors.inc();
        if !self.storage_failing {
            tracing::error!(error = %e, "outbox: could not {what}; retrying");
            self.storage_failing = true;
        }
    }

    fn gauges(&self) {
        let now = now_millis();
        for (t, ts) in &self.targets {
            let label = t.label();
            self.metrics
                .pending
                .with_label_values(&[&label])
                .set(ts.queue.len() as i64);
            let age = ts
                .queue
                .oldest()
                .map(|q| now.saturating_sub(q) / 1000)
                .unwrap_or(0);
            self.metrics
                .oldest
                .with_label_values(&[&label])
                .set(age as i64);
        }
    }

    /// Which site each cabinet is at (for presence events and site managers' scopes).
    async fn refresh_sites(&mut self) {
        let Some(p) = &self.parcels else {
            return;
        };
        let op = Caller {
            client: "outbound".into(),
            scope: Scope::Operator,
        };
        if let Ok(sites) = p.sites(op).await {
            self.site_of = sites
                .into_iter()
                .flat_map(|s| {
                    let id = s.id.clone();
                    s.cabinets.into_iter().map(move |c| (c, id.clone()))
                })
                .collect();
        }
    }

    /// A target's health now.
    pub(super) fn health(&self, t: &Target) -> Health {
        let now = now_millis();
        match self.targets.get(t) {
            Some(ts) => Health {
                pending: ts.queue.len(),
                in_flight: ts.queue.in_flight(),
                oldest_pending_ms: ts.queue.oldest().map(|q| now.saturating_sub(q)),
                ..ts.health.clone()
            },
            None => Health::default(),
        }
    }
}

/// Every target's queue as the store holds it (loaded at start, or again after a failed
/// commit): each waiting delivery due now, seqs going on after the highest used.
fn targets_from(
    last_seq: std::collections::HashMap<Target, u64>,
    pending: Vec<(Target, Entry)>,
) -> BTreeMap<Target, TargetState> {
    let now = now_millis();
    let mut targets: BTreeMap<Target, TargetState> = BTreeMap::new();
    for (t, last) in last_seq {
        targets.entry(t).or_default().next_seq = last + 1;
    }
    for (t, e) in pending {
        let meta = Meta {
            key: e.key.clone(),
            at: e.at,
            queued_at: e.queued_at,
            attempts: e.attempts,
        };
        targets.entry(t).or_default().queue.push(e.seq, meta, now);
    }
    targets
}

#[cfg(test)]
mod tests {
    use super::*;

    fn carrier(toml_text: &str) -> WebhooksConfig {
        let mut cfg = WebhooksConfig::default();
        cfg.carriers.insert(
            "dhl".into(),
            toml::from_str(toml_text).expect("carrier table"),
        );
        cfg
    }

    #[test]
    fn carrier_tables_are_checked_at_start_with_the_key_named() {
        let ok = r#"url = "https://t.example/x"
                    statuses = { ready = "DELIVERED" }"#;
        assert!(check_carriers(&carrier(ok)).is_ok());
        for (bad, key) in [
            (
                r#"url = "http://t.example/x"
                statuses = { ready = "D" }"#,
                "webhooks.carriers.dhl.url",
            ),
            (
                r#"url = "https://t.example/x"
                statuses = { delivered = "D" }"#,
                "webhooks.carriers.dhl.statuses",
            ),
            (
                r#"url = "https://t.example/x"
                statuses = {}"#,
                "webhooks.carriers.dhl.statuses",
            ),
            (
                r#"url = "https://t.example/x"
                statuses = { ready = "D" }
                secret = "plain""#,
                "webhooks.carriers.dhl.secret",
            ),
        ] {
            let e = check_carriers(&carrier(bad)).expect_err(bad).to_string();
            assert!(e.contains(key), "{e}");
        }
    }
}
