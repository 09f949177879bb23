//! The fleet registry: one actor owns what the gateway knows of every cabinet (online state
//! from the edge's presence, firmware and compartments from hellos, door states, power,
//! network and active alarms from stored events). The API reads it through [`FleetHandle`];
//! snapshots are saved to sled in the background so a restarted gateway starts informed.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use bytes::Bytes;
use locker_schemas::codec::encode_stream;
use locker_schemas::{now_millis, CabinetId, Millis, Presence, StreamKind, StreamMessage, Topic};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::broker::Publisher;
use crate::ingest::Committed;
use crate::metrics::StoreMetrics;
use crate::model::CabinetSnapshot;
use crate::store::{self, Store};

/// A change of a cabinet's connection, as the edge sees it.
#[derive(Debug, Clone)]
pub struct PresenceChange {
    pub cabinet: CabinetId,
    pub online: bool,
    pub at: Millis,
}

enum Msg {
    Presence(PresenceChange),
    Get(CabinetId, oneshot::Sender<Option<CabinetSnapshot>>),
    List(oneshot::Sender<Vec<CabinetSnapshot>>),
}

/// Cloneable handle to the fleet registry.
#[derive(Clone)]
pub struct FleetHandle {
    tx: mpsc::Sender<Msg>,
}

impl FleetHandle {
    /// Reports a presence change (from the edge).
    pub async fn presence(&self, p: PresenceChange) {
        let _ = self.tx.send(Msg::Presence(p)).await;
    }

    /// One cabinet's snapshot.
    pub async fn get(&self, id: CabinetId) -> Option<CabinetSnapshot> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Msg::Get(id, tx)).await.ok()?;
        rx.await.ok().flatten()
    }

    /// Every cabinet, sorted by id.
    pub async fn list(&self) -> Vec<CabinetSnapshot> {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::List(tx)).await.is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }
}

/// The registry actor.
pub struct Fleet {
    cabinets: HashMap<CabinetId, CabinetSnapshot>,
    dirty: HashSet<CabinetId>,
    store: Store,
    publisher: Publisher,
    metrics: StoreMetrics,
}

impl Fleet {
    /// Starts the actor with the snapshots loaded at startup (all marked offline until the
    /// edge says otherwise). Returns its handle and the sender ingest uses for commits.
    ///
    /// On `cancel` it applies the commits and presence changes already queued, saves its final
    /// snapshot and returns (the task is spawned on `tracker`).
    pub fn spawn(
        loaded: Vec<CabinetSnapshot>,
        store: Store,
        publisher: Publisher,
        metrics: StoreMetrics,
        cancel: CancellationToken,
        tracker: &TaskTracker,
    ) -> (
        FleetHandle,
        mpsc::Sender<Committed>,
        tokio::task::JoinHandle<()>,
    ) {
        let (tx, rx) = mpsc::channel(1024);
        let (ctx, crx) = mpsc::channel(256);
        let cabinets: HashMap<_, _> = loaded
            .into_iter()
            .map(|mut s| {
                s.online = false;
                (s.id.clone(), s)
            })
            .collect();
        metrics.cabinets_known.set(cabinets.len() as i64);
        metrics.cabinets_online.set(0);
        let fleet = Fleet {
            cabinets,
            dirty: HashSet::new(),
            store,
            publisher,
            metrics,
        };
        let task = tracker.spawn(fleet.run(rx, crx, cancel));
        (FleetHandle { tx }, ctx, task)
    }

    fn entry(&mut self, id: &CabinetId) -> &mut CabinetSnapshot {
        if !self.cabinets.contains_key(id) {
            self.cabinets
                .insert(id.clone(), CabinetSnapshot::new(id.clone()));
            self.metrics.cabinets_known.set(self.cabinets.len() as i64);
        }
        self.dirty.insert(id.clone());
        // just inserted above if it was missing
        self.cabinets
            .entry(id.clone())
            .or_insert_with(|| CabinetSnapshot::new(id.clone()))
    }

    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Msg>,
        mut commits: mpsc::Receiver<Committed>,
        cancel: CancellationToken,
    ) {
        let mut save = tokio::time::interval(Duration::from_secs(2));
        save.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ingest_open = true;
        loop {
            tokio::select! {
                m = rx.recv() => match m {
                    Some(Msg::Presence(p)) => self.on_presence(p).await,
                    Some(Msg::Get(id, reply)) => { let _ = reply.send(self.cabinets.get(&id).cloned()); }
                    Some(Msg::List(reply)) => {
                        let mut all: Vec<_> = self.cabinets.values().cloned().collect();
                        all.sort_by(|a, b| a.id.cmp(&b.id));
                        let _ = reply.send(all);
                    }
                    None => break,
                },
                // Ingest gone (it stops first at shutdown): keep serving until cancelled.
                c = commits.recv(), if ingest_open => match c {
                    Some(events) => self.on_committed(&events),
                    None => ingest_open = false,
                },
                _ = save.tick() => self.save().await,
                _ = cancel.cancelled() => {
                    // Shutdown: ingest and the presence forwarder have stopped; take in what
                    // they handed over last before the final save.
                    while let Ok(events) = commits.try_recv() {
                        self.on_committed(&events);
                    }
                    while let Ok(m) = rx.try_recv() {
                        if let Msg::Presence(p) = m {
                            self.on_presence(p).await;
                        }
                    }
                    break;
                }
            }
        }
        self.save().await;
    }

    fn on_committed(&mut self, events: &Committed) {
        let now = now_millis();
        for u in events.iter() {
            self.entry(&u.cabinet).apply(u, now);
        }
    }

    async fn on_presence(&mut self, p: PresenceChange) {
        let snap = self.entry(&p.cabinet);
        if snap.online == p.online {
            return;
        }
        snap.online = p.online;
        snap.last_seen = p.at;
        let online = self.cabinets.values().filter(|c| c.online).count();
        self.metrics.cabinets_online.set(online as i64);
        let msg = StreamMessage::Presence(Presence {
            online: p.online,
            ts: p.at,
        });
        if let Ok(bytes) = encode_stream(&msg) {
            let topic = Topic::Stream(p.cabinet.clone(), StreamKind::Presence);
            self.publisher.publish(topic, Bytes::from(bytes)).await;
        }
    }

    async fn save(&mut self) {
        if self.dirty.is_empty() {
            return;
        }
        let snaps: Vec<_> = self
            .dirty
            .drain()
            .filter_map(|id| self.cabinets.get(&id).cloned())
            .collect();
        let store = self.store.clone();
        let saved = store::blocking(move || {
            store.save_snapshots(&snaps)?;
            Ok(store.size_on_disk())
        })
        .await;
        match saved {
            Ok(size) => self.metrics.size_bytes.set(size as i64),
            Err(e) => tracing::warn!(error = %e, "cannot save fleet snapshots"),
        }
    }
}
