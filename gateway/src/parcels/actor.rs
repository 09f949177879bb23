//! The parcel actor: owns the domain's state ([`State`]), applies messages in batches, writes
//! each batch with one flush, then answers, publishes `gw/parcel` events and sends changed
//! credential sets. At start it catches up from the audit log with what ingest committed
//! after its last durable cursor (a kill -9 between ingest's commit and ours loses nothing).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use locker_schemas::codec::{decode_uplink, encode_downlink, encode_stream};
use locker_schemas::{
    now_millis, CabinetId, CarrierId, CommandId, CourierId, DownKind, Downlink, DownlinkBody,
    Millis, OrderId, ParcelEvent, SiteId, StreamKind, StreamMessage, Topic,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::alloc::Table;
use super::codes;
use super::model::{Carrier, Courier, Order, Site};
use super::{Msg, ParcelsConfig, ParcelsHandle};
use crate::broker::Publisher;
use crate::ingest::Committed;
use crate::metrics::ParcelMetrics;
use crate::store::parcels::{Batch, Loaded, ParcelStore};
use crate::store::{self, Store};

/// Messages taken per batch at most.
const BATCH: usize = 512;

/// The state the actor owns.
pub(crate) struct State {
    pub cfg: ParcelsConfig,
    pub sites: BTreeMap<SiteId, Site>,
    pub site_of: HashMap<CabinetId, SiteId>,
    pub carriers: BTreeMap<CarrierId, Carrier>,
    pub couriers: BTreeMap<CourierId, Courier>,
    pub orders: BTreeMap<OrderId, Order>,
    /// (client, idempotency key) -> order.
    pub idem: HashMap<(String, String), OrderId>,
    /// Live orders by cabinet (for credential sets).
    pub at_cabinet: HashMap<CabinetId, BTreeSet<OrderId>>,
    /// Orders waiting for a compartment.
    pub waiting: BTreeSet<OrderId>,
    pub table: Table,
    pub creds_versions: HashMap<CabinetId, u64>,
    pub cursors: HashMap<CabinetId, u64>,
    /// Cursors advanced since they were last written.
    pub cursors_dirty: HashSet<CabinetId>,
    pub dirty_creds: BTreeSet<CabinetId>,
    /// Cabinets that said hello with an old version: the current set is sent again.
    pub send_current: BTreeSet<CabinetId>,
    /// Sets that could not be handed to an online cabinet: retried on the next tick.
    pub resend: BTreeSet<CabinetId>,
    pub online: HashSet<CabinetId>,
    /// Remote unlocks of orders waiting for their result.
    pub pending_cmds: HashMap<CommandId, OrderId>,
    /// A compartment was freed: orders waiting for one try again on the next tick.
    pub retry_waiting: bool,
    /// Sets a cabinet's session did not take are retried (set by the tick).
    pub retry_due: bool,
    pub next_notice: u64,
    pub next_audit: u64,
    pub initialized: bool,
    /// What the current batch writes.
    pub batch: Batch,
    /// `gw/parcel` events to publish once the batch is durable.
    pub events: Vec<(CabinetId, ParcelEvent)>,
    /// Parcel sensor conflicts for the rules engine, sent once the batch is durable.
    pub sensor_notes: Vec<crate::rules::SensorNote>,
    /// The rules engine, told of sensor conflicts.
    pub rules: Option<crate::rules::RulesHandle>,
    pub metrics: ParcelMetrics,
    /// Bumped when a site is created or changed (the live feed re-reads its cabinet -> site
    /// map then).
    pub sites_rev: tokio::sync::watch::Sender<u64>,
    /// The operator's fleet totals and when they were computed (at most once a second).
    pub totals_cache: Option<(std::time::Instant, super::fleet::Totals)>,
}

/// Starts the parcel actor.
pub struct Parcels;

/// Answers deferred until the batch is durable.
pub(crate) type Deferred = Vec<Box<dyn FnOnce() + Send>>;

impl Parcels {
    /// Loads the domain, catches up from the audit log, and spawns the actor. Returns its
    /// handle and the sender ingest hands commits to.
    #[allow(clippy::too_many_arguments)]
    pub async fn spawn(
        cfg: ParcelsConfig,
        store: Store,
        publisher: Publisher,
        metrics: ParcelMetrics,
        rules: Option<crate::rules::RulesHandle>,
        cancel: CancellationToken,
        tracker: &TaskTracker,
    ) -> Result<
        (
            ParcelsHandle,
            mpsc::Sender<Committed>,
            tokio::task::JoinHandle<()>,
        ),
        store::StoreError,
    > {
        let st = store.clone();
        let loaded = store::blocking(move || st.parcels().load()).await?;
        let mut state = State::new(cfg, loaded, metrics);
        state.rules = rules;
        if !state.initialized {
            // First start: what is already in the audit log happened before the parcel domain
            // existed; start every known cabinet's cursor at its end.
            let st = store.clone();
            let known = store::blocking(move || st.load_cabinets()).await?;
            for (snap, hwm) in known {
                state.cursors.insert(snap.id.clone(), hwm);
                state.batch.cursors.push((snap.id, hwm));
            }
            state.batch.initialized = true;
            state.initialized = true;
        } else {
            state.catch_up(&store).await?;
        }
        let (tx, rx) = mpsc::channel(1024);
        let (ctx, crx) = mpsc::channel(1024);
        let sites_rev = state.sites_rev.subscribe();
        let task = tracker.spawn(run(state, store, publisher, rx, crx, cancel));
        Ok((ParcelsHandle { tx, sites_rev }, ctx, task))
    }
}

impl State {
    pub(crate) fn new(cfg: ParcelsConfig, l: Loaded, metrics: ParcelMetrics) -> Self {
        let mut s = State {
            cfg,
            sites: BTreeMap::new(),
            site_of: HashMap::new(),
            carriers: l.carriers.into_iter().map(|c| (c.id.clone(), c)).collect(),
            couriers: l.couriers.into_iter().map(|c| (c.id.clone(), c)).collect(),
            orders: BTreeMap::new(),
            idem: HashMap::new(),
            at_cabinet: HashMap::new(),
            waiting: BTreeSet::new(),
            table: Table::default(),
            creds_versions: l.creds_versions,
            cursors: l.cursors,
            cursors_dirty: HashSet::new(),
            dirty_creds: BTreeSet::new(),
            send_current: BTreeSet::new(),
            resend: BTreeSet::new(),
            online: HashSet::new(),
            pending_cmds: HashMap::new(),
            retry_waiting: true,
            retry_due: false,
            next_notice: l.next_notice.max(1),
            next_audit: l.next_audit.max(1),
            initialized: l.initialized,
            batch: Batch::default(),
            events: Vec::new(),
            sensor_notes: Vec::new(),
            rules: None,
            metrics,
            sites_rev: tokio::sync::watch::channel(0).0,
            totals_cache: None,
        };
        for (id, slots) in l.cabinets {
            s.table.cabinets.insert(id.clone(), slots);
            s.table.touch_cabinet(&id);
        }
        for site in l.sites {
            s.index_site(&site);
            s.sites.insert(site.id.clone(), site);
        }
        for o in l.orders {
            s.index_order(&o);
            s.orders.insert(o.id, o);
        }
        s.count_states();
        s
    }

    /// Indexes a site's cabinets.
    pub fn index_site(&mut self, site: &Site) {
        for c in &site.cabinets {
            self.site_of.insert(c.clone(), site.id.clone());
            self.table.set_site(c, Some(site.id.clone()));
        }
    }

    /// Indexes an order (idempotency key, cabinet, waiting list).
    pub fn index_order(&mut self, o: &Order) {
        if let Some(k) = &o.idempotency_key {
            self.idem.insert((o.created_by.clone(), k.clone()), o.id);
        }
        if let Some(c) = &o.cabinet {
            if !o.state.is_final() {
                self.at_cabinet.entry(c.clone()).or_default().insert(o.id);
            }
        }
        if let Some(p) = &o.pending_unlock {
            self.pending_cmds.insert(p.command, o.id);
        }
        if o.state == super::OrderState::Created
            && o.exception == Some(super::model::Exception::NoCompartment)
        {
            self.waiting.insert(o.id);
        } else {
            self.waiting.remove(&o.id);
        }
    }

    /// Re-counts the orders by state (gauge).
    pub fn count_states(&self) {
        let mut n: HashMap<&'static str, i64> = HashMap::new();
        for o in self.orders.values() {
            *n.entry(o.state.as_str()).or_default() += 1;
        }
        for s in super::OrderState::ALL {
            self.metrics
                .orders
                .with_label_values(&[s.as_str()])
                .set(n.get(s.as_str()).copied().unwrap_or(0));
        }
    }

    /// Applies what ingest committed after each cabinet's durable cursor (a crash between
    /// ingest's commit and ours), reading the audit log.
    async fn catch_up(&mut self, store: &Store) -> Result<(), store::StoreError> {
        let cabinets: Vec<(CabinetId, u64)> = {
            let st = store.clone();
            let known = store::blocking(move || st.load_cabinets()).await?;
            known
                .into_iter()
                .map(|(snap, hwm)| (snap.id, hwm))
                .collect()
        };
        let mut replayed = 0u64;
        for (cab, hwm) in cabinets {
            let mut after = self.cursors.get(&cab).copied().unwrap_or(0);
            while after < hwm {
                let st = store.clone();
                let c = cab.clone();
                let page = store::blocking(move || st.events_page(&c, after, 1000)).await?;
                if page.is_empty() {
                    break;
                }
                for (pos, bytes) in page {
                    after = pos;
                    if let Ok(u) = decode_uplink(&bytes) {
                        self.apply_uplink(pos, &u, now_millis());
                        replayed += 1;
                    }
                }
            }
            if self.cursors.get(&cab) != Some(&after) {
                self.cursors.insert(cab.clone(), after);
                self.cursors_dirty.insert(cab);
            }
        }
        if replayed > 0 {
            tracing::info!(
                events = replayed,
                "parcel domain caught up from the audit log"
            );
        }
        Ok(())
    }

    /// Bumps the versions of the changed credential sets into the batch; returns them to send.
    fn take_creds(&mut self, now: Millis) -> Vec<(CabinetId, Vec<locker_schemas::Credentials>)> {
        let dirty: Vec<CabinetId> = std::mem::take(&mut self.dirty_creds).into_iter().collect();
        let mut out = Vec::new();
        for cab in dirty {
            if !self.site_of.contains_key(&cab) {
                continue;
            }
            let v = self.creds_versions.entry(cab.clone()).or_insert(0);
            *v += 1;
            let v = *v;
            self.batch.creds_versions.push((cab.clone(), v));
            out.push((cab.clone(), self.creds_parts(&cab, v, now)));
        }
        out
    }

    /// The credential set of a cabinet at version `v`, in parts.
    pub fn creds_parts(
        &self,
        cab: &CabinetId,
        v: u64,
        now: Millis,
    ) -> Vec<locker_schemas::Credentials> {
        let site = self.site_of.get(cab);
        let orders = self
            .at_cabinet
            .get(cab)
            .into_iter()
            .flatten()
            .filter_map(|id| self.orders.get(id));
        let couriers = self.couriers.values().filter(|c| {
            self.carriers
                .get(&c.carrier)
                .is_some_and(|k| k.sites.is_empty() || site.is_some_and(|s| k.sites.contains(s)))
        });
        let entries = codes::build_set(cab, orders, couriers, self.table.cabinets.get(cab), now);
        codes::split(v, entries, codes::MAX_PART_BYTES)
    }

    /// Writes cursors that advanced (not needed for correctness, only to keep the catch-up
    /// after a crash short).
    fn flush_cursors(&mut self) {
        for cab in self.cursors_dirty.drain() {
            if let Some(p) = self.cursors.get(&cab) {
                self.batch.cursors.push((cab, *p));
            }
        }
    }
}

async fn run(
    mut st: State,
    store: Store,
    publisher: Publisher,
    mut rx: mpsc::Receiver<Msg>,
    mut commits: mpsc::Receiver<Committed>,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(st.cfg.tick_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut cursor_tick = tokio::time::interval(Duration::from_secs(30));
    cursor_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut api_open, mut ingest_open) = (true, true);
    // the first batch writes the cursors of a first start and of the catch-up
    st.flush_cursors();
    finish(&mut st, &store, &publisher, Vec::new()).await;
    loop {
        let mut deferred: Deferred = Vec::new();
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            c = commits.recv(), if ingest_open => match c {
                Some(c) => {
                    st.on_commit(&c);
                    let mut n = 0;
                    while let Ok(c) = commits.try_recv() {
                        st.on_commit(&c);
                        n += 1;
                        if n >= BATCH { break; }
                    }
                }
                None => ingest_open = false,
            },
            m = rx.recv(), if api_open => match m {
                Some(m) => {
                    st.on_msg(m, &mut deferred);
                    let mut n = 0;
                    while let Ok(m) = rx.try_recv() {
                        st.on_msg(m, &mut deferred);
                        n += 1;
                        if n >= BATCH { break; }
                    }
                }
                None => api_open = false,
            },
            _ = tick.tick() => st.on_tick(now_millis()),
            _ = cursor_tick.tick() => st.flush_cursors(),
        }
        if !api_open && !ingest_open {
            break;
        }
        finish(&mut st, &store, &publisher, deferred).await;
    }
    // what is queued still counts
    while let Ok(c) = commits.try_recv() {
        st.on_commit(&c);
    }
    let mut deferred: Deferred = Vec::new();
    while let Ok(m) = rx.try_recv() {
        st.on_msg(m, &mut deferred);
    }
    st.flush_cursors();
    finish(&mut st, &store, &publisher, deferred).await;
}

/// Ends a batch: credential versions into the batch, one durable write (retried until it
/// succeeds: the state in memory is already ahead), then answers, events and sets.
async fn finish(st: &mut State, store: &Store, publisher: &Publisher, deferred: Deferred) {
    let now = now_millis();
    let sets = st.take_creds(now);
    if !st.batch.is_empty() {
        // the cursors go with the changes they led to: a catch-up after a crash starts after
        // them and never replays an event over a later change (an operator's, say)
        st.flush_cursors();
    }
    let batch = std::mem::take(&mut st.batch);
    if !batch.is_empty() {
        // something changed: the next fleet summary is computed afresh
        st.totals_cache = None;
        let batch = Arc::new(batch);
        let mut wait = Duration::from_millis(50);
        loop {
            let (s, b) = (store.clone(), batch.clone());
            match store::blocking(move || s.writers().parcels.commit(&b)).await {
                Ok(()) => break,
                Err(e) => {
                    st.metrics.storage_errors.inc();
                    tracing::error!(error = %e, retry_ms = wait.as_millis() as u64, "parcel state not stored; retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
            }
        }
        st.metrics.commits.inc();
    }
    for d in deferred {
        d();
    }
    for n in std::mem::take(&mut st.sensor_notes) {
        if let Some(r) = &st.rules {
            if !r.sensor_note(n) {
                st.metrics
                    .unmatched
                    .with_label_values(&["rules_queue_full"])
                    .inc();
            }
        }
    }
    for (cab, ev) in std::mem::take(&mut st.events) {
        st.metrics
            .events
            .with_label_values(&[ev.state.as_str()])
            .inc();
        if let Ok(bytes) = encode_stream(&StreamMessage::Parcel(ev)) {
            publisher
                .publish(Topic::Stream(cab, StreamKind::Parcel), Bytes::from(bytes))
                .await;
        }
    }
    let again: Vec<CabinetId> = std::mem::take(&mut st.send_current).into_iter().collect();
    for (cab, parts) in &sets {
        send_set(st, publisher, cab, parts).await;
    }
    for cab in again {
        if sets.iter().any(|(c, _)| *c == cab) {
            continue; // just sent a newer one
        }
        let v = st.creds_versions.get(&cab).copied().unwrap_or(0);
        if v > 0 {
            let parts = st.creds_parts(&cab, v, now);
            send_set(st, publisher, &cab, &parts).await;
        }
    }
    if !std::mem::take(&mut st.retry_due) {
        return;
    }
    let retry: Vec<CabinetId> = std::mem::take(&mut st.resend).into_iter().collect();
    for cab in retry {
        if st.online.contains(&cab) {
            let v = st.creds_versions.get(&cab).copied().unwrap_or(0);
            let parts = st.creds_parts(&cab, v, now);
            send_set(st, publisher, &cab, &parts).await;
        }
    }
}

/// Sends every part of a set; a part the cabinet's session would not take is retried later
/// while the cabinet is online (offline cabinets get the set on their next hello).
pub(crate) async fn send_set(
    st: &mut State,
    publisher: &Publisher,
    cab: &CabinetId,
    parts: &[locker_schemas::Credentials],
) {
    for p in parts {
        let msg = Downlink {
            body: DownlinkBody::Credentials(p.clone()),
        };
        match encode_downlink(&msg) {
            Ok(bytes) => {
                let topic = Topic::Down(cab.clone(), DownKind::Creds);
                if publisher.publish(topic, Bytes::from(bytes)).await {
                    st.metrics.creds_sent.inc();
                } else {
                    if st.online.contains(cab) {
                        st.resend.insert(cab.clone());
                    }
                    return;
                }
            }
            Err(e) => {
                tracing::error!(cabinet = %cab, error = %e, "credential set not encodable");
                return;
            }
        }
    }
}
