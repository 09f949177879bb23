//! The fleet registry: one actor owns what the gateway knows of every cabinet (online state
//! from the edge's presence, firmware and compartments from hellos, door states, power,
//! network and active alarms from stored events). The API reads it through [`FleetHandle`].
//!
//! Bounded: each cabinet's snapshot is held to its declared layout and to the caps of
//! [`bounds::Limits`]; what is refused is counted in `locker_fleet_rejected_total{reason}` and
//! logged once per cabinet and reason. Never stalls ingest: handling a commit is O(events)
//! with no storage call in the loop; dirty snapshots are saved by a background saver
//! ([`store`]) so a restarted gateway starts informed.

pub mod bounds;
pub mod store;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
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

pub use bounds::{Limits, Rejected};
pub use store::SnapshotStore;

/// How often dirty snapshots are handed to the saver.
const SAVE_EVERY: Duration = Duration::from_secs(2);

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
    PresenceOf(Vec<CabinetId>, bool, oneshot::Sender<PresenceReport>),
}

/// One cabinet's presence as the console's fleet pages show it (no snapshot is cloned).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CabinetPresence {
    /// False for a cabinet the gateway has never heard from.
    pub known: bool,
    pub online: bool,
    /// Gateway clock when last heard from, ms (0 = never).
    pub last_seen: Millis,
    /// State of charge from the last power report.
    pub battery_pct: Option<u8>,
}

/// The presence of the cabinets asked about, in the order asked, and (when asked) how many
/// other cabinets the fleet knows and how many of those are online.
#[derive(Debug, Clone, Default)]
pub struct PresenceReport {
    pub cabinets: Vec<CabinetPresence>,
    pub others: usize,
    pub others_online: usize,
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

    /// The presence of `cabinets` (in that order), computed inside the actor; with `others`,
    /// also the count of known cabinets not in the list and how many of them are online.
    pub async fn presence_of(&self, cabinets: Vec<CabinetId>, others: bool) -> PresenceReport {
        let (tx, rx) = oneshot::channel();
        if self
            .tx
            .send(Msg::PresenceOf(cabinets, others, tx))
            .await
            .is_err()
        {
            return PresenceReport::default();
        }
        rx.await.unwrap_or_default()
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
    online: usize,
    limits: Limits,
    /// Per cabinet, the rejection reasons already logged (a bit per [`Rejected`]).
    logged: HashMap<CabinetId, u8>,
    saver: mpsc::Sender<Vec<CabinetSnapshot>>,
    publisher: Publisher,
    metrics: StoreMetrics,
}

/// The fleet's bounds and how often it saves its snapshots.
#[derive(Debug, Clone, Copy)]
pub struct Tuning {
    pub limits: Limits,
    pub save_every: Duration,
}

impl Fleet {
    /// Starts the actor with the snapshots loaded at startup (all marked offline until the
    /// edge says otherwise). Returns its handle and the sender ingest uses for commits.
    ///
    /// On `cancel` it applies the commits and presence changes already queued, saves its final
    /// snapshot and returns (the task is spawned on `tracker`).
    pub fn spawn(
        loaded: Vec<CabinetSnapshot>,
        store: impl SnapshotStore,
        publisher: Publisher,
        metrics: StoreMetrics,
        cancel: CancellationToken,
        tracker: &TaskTracker,
    ) -> (
        FleetHandle,
        mpsc::Sender<Committed>,
        tokio::task::JoinHandle<()>,
    ) {
        Self::spawn_with(
            loaded,
            Arc::new(store),
            publisher,
            metrics,
            Tuning {
                limits: Limits::default(),
                save_every: SAVE_EVERY,
            },
            cancel,
            tracker,
        )
    }

    /// [`Fleet::spawn`] with explicit limits and save interval.
    pub fn spawn_with(
        loaded: Vec<CabinetSnapshot>,
        store: Arc<dyn SnapshotStore>,
        publisher: Publisher,
        metrics: StoreMetrics,
        tuning: Tuning,
        cancel: CancellationToken,
        tracker: &TaskTracker,
    ) -> (
        FleetHandle,
        mpsc::Sender<Committed>,
        tokio::task::JoinHandle<()>,
    ) {
        let Tuning { limits, save_every } = tuning;
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
        for r in Rejected::ALL {
            metrics.fleet_rejected.with_label_values(&[r.as_str()]);
        }
        let (saver, saver_task) = store::spawn_saver(store, metrics.clone());
        let fleet = Fleet {
            cabinets,
            dirty: HashSet::new(),
            online: 0,
            limits,
            logged: HashMap::new(),
            saver,
            publisher,
            metrics,
        };
        let task = tracker.spawn(async move {
            fleet.run(rx, crx, save_every, cancel).await;
            // the actor's sender is gone: the saver finishes the batch in hand and ends
            let _ = saver_task.await;
        });
        (FleetHandle { tx }, ctx, task)
    }

    fn entry(&mut self, id: &CabinetId) -> &mut CabinetSnapshot {
        if !self.cabinets.contains_key(id) {
            self.metrics
                .cabinets_known
                .set(self.cabinets.len() as i64 + 1);
        }
        self.dirty.insert(id.clone());
        self.cabinets
            .entry(id.clone())
            .or_insert_with(|| CabinetSnapshot::new(id.clone()))
    }

    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Msg>,
        mut commits: mpsc::Receiver<Committed>,
        save_every: Duration,
        cancel: CancellationToken,
    ) {
        let mut save = tokio::time::interval(save_every);
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
                    Some(Msg::PresenceOf(ids, others, reply)) => {
                        let _ = reply.send(self.presence_of(&ids, others));
                    }
                    None => break,
                },
                // Ingest gone (it stops first at shutdown): keep serving until cancelled.
                c = commits.recv(), if ingest_open => match c {
                    Some(events) => self.on_commit(&events),
                    None => ingest_open = false,
                },
                _ = save.tick() => self.hand_to_saver(),
                _ = cancel.cancelled() => {
                    // Shutdown: ingest and the presence forwarder have stopped; take in what
                    // they handed over last before the final save.
                    while let Ok(events) = commits.try_recv() {
                        self.on_commit(&events);
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
        // last batch: waiting for the saver is fine now, nothing else is served
        if !self.dirty.is_empty() {
            let snaps = self.take_dirty();
            let _ = self.saver.send(snaps).await;
        }
    }

    fn on_commit(&mut self, events: &Committed) {
        let now = now_millis();
        let limits = self.limits;
        for u in events.iter() {
            let mut rejected: Vec<Rejected> = Vec::new();
            bounds::apply(self.entry(&u.cabinet), u, now, &limits, &mut |r| {
                rejected.push(r)
            });
            for r in rejected {
                self.reject(&u.cabinet, u.seq, r);
            }
        }
    }

    fn presence_of(&self, ids: &[CabinetId], others: bool) -> PresenceReport {
        let cabinets = ids
            .iter()
            .map(|id| match self.cabinets.get(id) {
                Some(s) => CabinetPresence {
                    known: true,
                    online: s.online,
                    last_seen: s.last_seen,
                    battery_pct: s.power.as_ref().map(|p| p.soc_pct),
                },
                None => CabinetPresence::default(),
            })
            .collect::<Vec<_>>();
        let mut r = PresenceReport {
            cabinets,
            ..PresenceReport::default()
        };
        if others {
            let listed: HashSet<&CabinetId> = ids.iter().collect();
            let listed_online = listed
                .iter()
                .filter(|id| self.cabinets.get(**id).is_some_and(|s| s.online))
                .count();
            let listed_known = listed
                .iter()
                .filter(|id| self.cabinets.contains_key(**id))
                .count();
            r.others = self.cabinets.len() - listed_known;
            r.others_online = self.online.saturating_sub(listed_online);
        }
        r
    }

    fn reject(&mut self, cabinet: &CabinetId, seq: u64, r: Rejected) {
        self.metrics
            .fleet_rejected
            .with_label_values(&[r.as_str()])
            .inc();
        let logged = self.logged.entry(cabinet.clone()).or_default();
        if *logged & r.bit() == 0 {
            *logged |= r.bit();
            tracing::warn!(
                %cabinet, seq, reason = r.as_str(),
                "fleet state refused part of an event (logged once per cabinet and reason; counted in locker_fleet_rejected_total)"
            );
        }
    }

    fn take_dirty(&mut self) -> Vec<CabinetSnapshot> {
        take_dirty(&mut self.dirty, &self.cabinets)
    }

    /// Hands the dirty snapshots to the saver if it is free; never waits.
    fn hand_to_saver(&mut self) {
        if self.dirty.is_empty() {
            return;
        }
        if let Ok(permit) = self.saver.try_reserve() {
            permit.send(take_dirty(&mut self.dirty, &self.cabinets));
        }
    }

    async fn on_presence(&mut self, p: PresenceChange) {
        let snap = self.entry(&p.cabinet);
        if snap.online == p.online {
            return;
        }
        snap.online = p.online;
        snap.last_seen = p.at;
        if p.online {
            self.online += 1;
        } else {
            self.online = self.online.saturating_sub(1);
        }
        self.metrics.cabinets_online.set(self.online as i64);
        let msg = StreamMessage::Presence(Presence {
            online: p.online,
            ts: p.at,
        });
        if let Ok(bytes) = encode_stream(&msg) {
            let topic = Topic::Stream(p.cabinet.clone(), StreamKind::Presence);
            self.publisher.publish(topic, Bytes::from(bytes)).await;
        }
    }
}

fn take_dirty(
    dirty: &mut HashSet<CabinetId>,
    cabinets: &HashMap<CabinetId, CabinetSnapshot>,
) -> Vec<CabinetSnapshot> {
    dirty
        .drain()
        .filter_map(|id| cabinets.get(&id).cloned())
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Condvar, Mutex};

    use locker_schemas::{CompartmentId, CompartmentInfo, Door, DoorCause, Hello, NetworkKind};
    use locker_schemas::{Size, Uplink, UplinkBody};

    use super::*;
    use crate::broker::{BrokerConfig, EmbeddedBroker};
    use crate::metrics::Metrics;
    use crate::store::StoreError;

    /// A snapshot store whose saves block until the test opens the gate.
    #[derive(Default)]
    struct Gate {
        saves: AtomicUsize,
        open: Mutex<bool>,
        cv: Condvar,
    }

    impl SnapshotStore for Gate {
        fn save(&self, _: &[CabinetSnapshot]) -> Result<u64, StoreError> {
            self.saves.fetch_add(1, Ordering::SeqCst);
            let mut open = self
                .open
                .lock()
                .map_err(|e| StoreError::Join(e.to_string()))?;
            while !*open {
                open = self
                    .cv
                    .wait(open)
                    .map_err(|e| StoreError::Join(e.to_string()))?;
            }
            Ok(0)
        }
    }

    impl Gate {
        fn release(&self) {
            if let Ok(mut o) = self.open.lock() {
                *o = true;
            }
            self.cv.notify_all();
        }
    }

    fn uplink(seq: u64, body: UplinkBody) -> Committed {
        crate::ingest::Commit::of(vec![Uplink {
            cabinet: CabinetId::new("CAB-1").expect("id"),
            boot: 1,
            seq,
            ts: 0,
            body,
        }])
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stalled_snapshot_save_never_stalls_commits_or_reads() {
        let (inbound, _keep) = mpsc::channel(16);
        let broker = EmbeddedBroker::start(&BrokerConfig::default(), &[], inbound)
            .await
            .expect("broker");
        let metrics = Metrics::new().expect("metrics");
        let gate = Arc::new(Gate::default());
        let (fleet, commits, _task) = Fleet::spawn_with(
            Vec::new(),
            gate.clone(),
            broker.publisher.clone(),
            metrics.store.clone(),
            Tuning {
                limits: Limits::default(),
                save_every: Duration::from_millis(10),
            },
            CancellationToken::new(),
            &TaskTracker::new(),
        );
        let hello = UplinkBody::Hello(Hello {
            firmware: "f".into(),
            hardware: "h".into(),
            compartments: vec![CompartmentInfo {
                id: CompartmentId(1),
                size: Size::M,
            }],
            network: NetworkKind::Lan,
            creds_version: 0,
        });
        commits.send(uplink(1, hello)).await.expect("commit");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while gate.saves.load(Ordering::SeqCst) == 0 {
            assert!(std::time::Instant::now() < deadline, "no save started");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // the save is stuck; commits (more than the channel holds) and reads go on, paced
        // so that many save intervals pass meanwhile
        let served = tokio::time::timeout(Duration::from_secs(30), async {
            for seq in 2..2_000 {
                let door = UplinkBody::Door(Door {
                    compartment: CompartmentId(1),
                    open: seq % 2 == 0,
                    cause: DoorCause::Unknown,
                    parcel: None,
                });
                commits.send(uplink(seq, door)).await.expect("commit");
                if seq % 10 == 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            // commits and reads are separate queues: read until the last commit is in
            loop {
                let snap = fleet.get(CabinetId::new("CAB-1").expect("id")).await;
                if snap.as_ref().is_none_or(|s| s.last_seq == 1_999) {
                    break snap;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        gate.release();
        let snap = served
            .expect("the fleet kept serving while a save was stuck")
            .expect("cabinet known");
        assert_eq!(snap.last_seq, 1_999);
        assert_eq!(snap.compartments[0].open, Some(false));
    }
}
