//! Wiring: starts every gateway component in order (store, broker, fleet, dispatcher, ingest,
//! edge, API) and stops them in reverse, flushing the store last.
//!
//! Every task of the gateway is spawned on one [`TaskTracker`] and stopped through one
//! [`CancellationToken`] (a child token per shutdown phase, so the phases run in order):
//!
//! 1. the edge stops accepting and closes every connection (the edge's own shutdown), and the
//!    cabinets' last presence changes are handed on;
//! 2. ingest commits what it has received and acknowledges it;
//! 3. the actors (fleet, dispatcher, parcels, rules) apply what ingest committed last, save their
//!    state (the fleet's final snapshot; the dispatcher and the parcel domain persist every
//!    change as they make it) and return;
//! 4. the API finishes its in-flight requests; the broker link then closes (its last publisher
//!    is gone);
//! 5. the store is flushed.
//!
//! `shutdown_grace_ms` bounds the whole sequence: whatever is still running then is aborted,
//! with a log line naming it, and the store is flushed anyway.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{self, ApiState};
use crate::broker::{BrokerError, EmbeddedBroker};
use crate::cluster::presence::Directory;
use crate::cluster::{node, Cluster};
use crate::commands::{CommandsHandle, Dispatcher};
use crate::config::GatewayConfig;
use crate::edge::{Edge, EdgeHandle, PresenceEvent};
use crate::fleet::{Fleet, FleetHandle, PresenceChange};
use crate::ingest::{retention, Ingest};
use crate::metrics::{Metrics, MetricsError};
use crate::outbound::{Outbound, OutboundHandle};
use crate::parcels::{Parcels, ParcelsHandle};
use crate::rules::{Rules, RulesClock, RulesConfigError, RulesHandle};
use crate::store::{self, Store, StoreError};

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error("store at {path}: {source}")]
    Store { path: String, source: StoreError },
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("edge: {0}")]
    Edge(String),
    #[error("API listener on {addr}: {source}")]
    Api {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    ApiTls(#[from] api::serve::ServeError),
    #[error("rules: {0}")]
    Rules(#[from] RulesConfigError),
    #[error("webhooks: {0}")]
    Outbound(#[from] crate::outbound::actor::StartError),
    #[error("{0}")]
    Notify(#[from] crate::outbound::notify::NotifyConfigError),
    #[error("start task failed: {0}")]
    Task(String),
    #[error("cluster: {0}")]
    Cluster(#[from] crate::cluster::ClusterError),
}

/// The gateway's tasks by name, in the order they are stopped.
const INGEST: &str = "ingest";
const RETENTION: &str = "retention";
const PRESENCE: &str = "presence";
const FLEET: &str = "fleet";
const DISPATCHER: &str = "dispatcher";
const PARCELS: &str = "parcels";
const RULES: &str = "rules";
const OUTBOUND: &str = "outbound";
const BROKER_LINK: &str = "broker link";
const API: &str = "api";
const LIVE: &str = "live";
const SESSIONS: &str = "console sessions";

/// The cancellation tokens of the shutdown phases (children of one root token).
struct Phases {
    root: CancellationToken,
    /// Ingest commits what it has; the presence forwarder hands on the last changes.
    ingest: CancellationToken,
    /// The fleet and the dispatcher finish, save and return.
    actors: CancellationToken,
    /// The API finishes its in-flight requests.
    api: CancellationToken,
}

impl Phases {
    fn new() -> Self {
        let root = CancellationToken::new();
        Self {
            ingest: root.child_token(),
            actors: root.child_token(),
            api: root.child_token(),
            root,
        }
    }
}

/// A running gateway.
pub struct Gateway {
    /// Where cabinets and integrators connect (mTLS MQTT).
    pub edge_addr: SocketAddr,
    /// The HTTP API and /metrics.
    pub api_addr: SocketAddr,
    pub metrics: Metrics,
    pub fleet: FleetHandle,
    pub commands: CommandsHandle,
    pub parcels: ParcelsHandle,
    pub rules: RulesHandle,
    pub outbound: OutboundHandle,
    pub edge: EdgeHandle,
    /// Cluster mode: the node's cluster connection.
    pub cluster: Option<Cluster>,
    store: Store,
    phases: Phases,
    tracker: TaskTracker,
    tasks: Vec<(&'static str, JoinHandle<()>)>,
    grace: Duration,
    /// Feeds of actors kept idle on this node (cluster mode, not the domain node).
    _idle_feeds: Vec<mpsc::Sender<crate::ingest::Committed>>,
}

impl Gateway {
    /// Starts every component. Listening addresses may use port 0.
    pub async fn start(cfg: GatewayConfig) -> Result<Self, StartError> {
        let metrics = Metrics::new()?;
        let compiled = cfg.rules.compile()?;
        let cluster = match cfg.cluster.enabled {
            true => Some(Cluster::connect(&cfg.cluster, &metrics.registry).await?),
            false => None,
        };
        let db_path = cfg.data_dir.join("gateway.sled");
        let store_err = |source| StartError::Store {
            path: db_path.display().to_string(),
            source,
        };
        let path = db_path.clone();
        let store = store::blocking(move || {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| StoreError::Sled(sled::Error::Io(e)))?;
            }
            Store::open(&path)
        })
        .await
        .map_err(store_err)?;
        let st = store.clone();
        let (cabinets, pending) =
            store::blocking(move || Ok((st.load_cabinets()?, crate::commands::recover(&st)?)))
                .await
                .map_err(|source| StartError::Store {
                    path: db_path.display().to_string(),
                    source,
                })?;
        let snapshots: Vec<_> = cabinets.into_iter().map(|(s, _)| s).collect();
        tracing::info!(
            cabinets = snapshots.len(),
            pending_commands = pending.len(),
            "store opened"
        );

        let phases = Phases::new();
        let tracker = TaskTracker::new();
        let mut tasks = Vec::new();

        let (inbound_tx, inbound_rx) = mpsc::channel(16 * 1024);
        // Cluster mode: the edge's uplinks go to the journal (the replicated stream) first, and
        // ingest reads every node's from the stream.
        let (edge_inbound, journal) = match &cluster {
            Some(_) => {
                let (tx, rx) = mpsc::channel(16 * 1024);
                (tx, Some((rx, inbound_tx)))
            }
            None => (inbound_tx, None),
        };
        let broker = EmbeddedBroker::start_tracked(
            &cfg.broker,
            // Cabinet uplinks reach ingest straight from the edge (broker::Direct); the
            // gateway's link subscribes to nothing.
            &[],
            edge_inbound,
            &tracker,
        )
        .await?;
        let directory = Directory::default();
        let publisher = match &cluster {
            Some(c) => broker.publisher.clone().with_remote(c.router(&directory)),
            None => broker.publisher.clone(),
        };

        let (fleet, fleet_commits, fleet_task) = Fleet::spawn(
            snapshots,
            store.clone(),
            publisher.clone(),
            metrics.store.clone(),
            phases.actors.clone(),
            &tracker,
        );
        let (rules, rules_inbox) = RulesHandle::channel();
        // Cluster mode: the parcel domain, the rules engine and webhooks run on the domain node
        // only (their state is still node-local); the other nodes keep them idle.
        let domain_here = cluster.as_ref().is_none_or(|c| c.cfg.domain);
        // rules off: nothing feeds the engine (the API still lists the alert history)
        let feed_rules = (cfg.rules.enabled && domain_here).then(|| rules.clone());
        let (commands, command_commits, dispatch_task) = Dispatcher::spawn(
            cfg.commands.clone(),
            store.clone(),
            publisher.clone(),
            metrics.commands.clone(),
            pending,
            feed_rules.clone(),
            phases.actors.clone(),
            &tracker,
        );
        let (parcels, parcel_commits, parcels_task) = match Parcels::spawn(
            cfg.parcels.clone(),
            store.clone(),
            publisher.clone(),
            metrics.parcels.clone(),
            feed_rules.clone(),
            phases.actors.clone(),
            &tracker,
        )
        .await
        {
            Ok(x) => x,
            Err(source) => return Err(half_started(&phases, &db_path, source)),
        };
        let rules_parts = crate::rules::Parts {
            cfg: cfg.rules.clone(),
            compiled,
            store: Arc::new(store.alerts().clone()),
            publisher: publisher.clone(),
            commands: commands.clone(),
            parcels: Some(parcels.clone()),
            metrics: metrics.rules.clone(),
            clock: RulesClock::System,
            audit: Some(store.clone()),
        };
        let (rules_commits, rules_task) =
            match Rules::spawn(rules_parts, rules_inbox, phases.actors.clone(), &tracker).await {
                Ok(x) => x,
                Err(source) => return Err(half_started(&phases, &db_path, source)),
            };
        let notifier = if cfg.notifications.enabled {
            let ncfg = cfg.notifications.clone();
            let built =
                tokio::task::spawn_blocking(move || crate::outbound::notify::Notifier::new(&ncfg))
                    .await;
            match built {
                Ok(Ok(n)) => Some(n),
                Ok(Err(e)) => {
                    phases.root.cancel();
                    return Err(e.into());
                }
                Err(e) => {
                    phases.root.cancel();
                    return Err(StartError::Task(format!("notifications: {e}")));
                }
            }
        } else {
            None
        };
        let (outbound, outbound_inbox) = OutboundHandle::channel();
        let outbound_parts = crate::outbound::Parts {
            cfg: cfg.webhooks.clone(),
            store: Arc::new(store.outbound().clone()),
            parcel_log: Arc::new(store.parcels().clone()),
            alert_log: Arc::new(store.alerts().clone()),
            parcels: Some(parcels.clone()),
            notifier,
            metrics: metrics.outbound.clone(),
        };
        let outbound_task = match Outbound::spawn(
            outbound_parts,
            outbound_inbox,
            phases.actors.clone(),
            &tracker,
        )
        .await
        {
            Ok(t) => t,
            Err(e) => {
                phases.root.cancel();
                return Err(e.into());
            }
        };
        let mut consumers = vec![command_commits, fleet_commits];
        // an idle actor's feed is kept open (and never sent to) so the actor keeps serving
        let mut idle_feeds = Vec::new();
        if domain_here {
            consumers.push(parcel_commits);
        } else {
            idle_feeds.push(parcel_commits);
        }
        if cfg.rules.enabled && domain_here {
            consumers.push(rules_commits);
        } else {
            idle_feeds.push(rules_commits);
        }
        let mut ingest = Ingest::new(
            cfg.ingest.clone(),
            store.clone(),
            publisher,
            metrics.ingest.clone(),
            consumers,
        );
        if let (Some(c), Some((journal_rx, ingest_tx))) = (&cluster, journal) {
            let (progress, started) =
                c.spawn_uplinks(journal_rx, ingest_tx, &tracker, &phases.ingest);
            ingest = ingest.with_progress(progress);
            tasks.extend(started);
        }
        let ingest_health = ingest.handle();
        // Only the actors and ingest publish from here on: when they have returned, the
        // broker link's queue closes and its task ends.
        let EmbeddedBroker {
            links, link_task, ..
        } = broker;
        let ingest_cancel = phases.ingest.clone();
        let ingest_task = tracker.spawn(ingest.run(inbound_rx, ingest_cancel));
        let retention_task = tracker.spawn(retention::run(
            cfg.ingest.clone(),
            store.clone(),
            metrics.ingest.clone(),
            phases.ingest.clone(),
        ));
        tasks.extend([
            (INGEST, ingest_task),
            (RETENTION, retention_task),
            (FLEET, fleet_task),
            (DISPATCHER, dispatch_task),
            (PARCELS, parcels_task),
            (RULES, rules_task),
            (OUTBOUND, outbound_task),
            (BROKER_LINK, link_task),
        ]);

        // The live feed: its own broker link, subscribers' streams end when the API drains.
        let live = crate::live::LiveHandle::new(
            cfg.console.live_buffer,
            cfg.console.live_max_clients,
            metrics.live.clone(),
            phases.api.clone(),
        );
        let live_task = tracker.spawn({
            let (live, links, parcels, cancel) = (
                live.clone(),
                links.clone(),
                parcels.clone(),
                phases.api.clone(),
            );
            async move {
                if let Err(e) = live.run(links, parcels, cancel).await {
                    tracing::error!(error = %e, "the live feed stopped");
                }
            }
        });
        tasks.push((LIVE, live_task));

        if let (Some(c), Some(direct)) = (&cluster, links.direct()) {
            tasks.push(c.spawn_downlinks(direct.clone(), &tracker, &phases.api));
        }
        let (presence_tx, presence_rx) = mpsc::channel::<PresenceEvent>(4096);
        // Cluster mode: this node's presence changes go to the bucket, and the actors hear the
        // whole fleet's from it.
        let presence_rx = match &cluster {
            Some(c) => {
                let (rx, started) = c
                    .spawn_presence(
                        presence_rx,
                        &directory,
                        links.direct().cloned(),
                        &tracker,
                        &phases.ingest,
                    )
                    .await;
                tasks.extend(started);
                rx
            }
            None => presence_rx,
        };
        let (edge, edge_addr) =
            match Edge::start(edge_config(&cfg), links, &metrics.registry, presence_tx).await {
                Ok(x) => x,
                Err(e) => {
                    // A start that fails half way stops what it already started.
                    phases.root.cancel();
                    return Err(StartError::Edge(e.to_string()));
                }
            };
        let presence_task = tracker.spawn(forward_presence(
            presence_rx,
            fleet.clone(),
            commands.clone(),
            domain_here.then(|| (parcels.clone(), outbound.clone())),
            feed_rules,
            phases.ingest.clone(),
        ));
        tasks.push((PRESENCE, presence_task));

        let api_tls = match cfg.api.tls.clone() {
            Some(t) => {
                let loaded = tokio::task::spawn_blocking(move || api::serve::load_tls(&t))
                    .await
                    .map_err(|e| api::serve::ServeError::Join(e.to_string()))
                    .and_then(|r| r);
                match loaded {
                    Ok(tls) => Some(tls),
                    Err(e) => {
                        edge.shutdown().await;
                        phases.root.cancel();
                        return Err(e.into());
                    }
                }
            }
            None => None,
        };
        let bound = async {
            let listener = tokio::net::TcpListener::bind(cfg.api.listen).await?;
            let addr = listener.local_addr()?;
            Ok::<_, std::io::Error>((listener, addr))
        };
        let (listener, api_addr) = match bound.await {
            Ok(x) => x,
            Err(source) => {
                edge.shutdown().await;
                phases.root.cancel();
                return Err(StartError::Api {
                    addr: cfg.api.listen,
                    source,
                });
            }
        };
        let sessions = cfg.console.enabled.then(|| {
            crate::console::Sessions::new(
                store.sessions().clone(),
                &cfg.api.tokens,
                cfg.console.clone(),
                cfg.api.tls.is_some(),
                metrics.console.clone(),
            )
        });
        if let Some(s) = &sessions {
            let task = tracker.spawn(s.clone().run_pruner(phases.api.clone()));
            tasks.push((SESSIONS, task));
        }
        let app = api::router(ApiState {
            live,
            sessions,
            cfg: Arc::new(cfg.api.clone()),
            fleet: fleet.clone(),
            commands: commands.clone(),
            store: store.clone(),
            metrics: metrics.clone(),
            ingest: ingest_health,
            parcels: parcels.clone(),
            rules: rules.clone(),
            outbound: outbound.clone(),
            domain_elsewhere: !domain_here,
            cluster: cluster.as_ref().map(|c| c.metrics.clone()),
        });
        let api_limits = api::serve::Limits {
            max_connections: cfg.api.max_connections,
            header_read_timeout: Duration::from_millis(cfg.api.header_read_timeout_ms),
        };
        let api_task = tracker.spawn(api::serve::serve(
            listener,
            app,
            api_limits,
            api_tls,
            metrics.api.clone(),
            phases.api.clone(),
        ));
        tasks.push((API, api_task));

        Ok(Self {
            edge_addr,
            api_addr,
            metrics,
            fleet,
            commands,
            parcels,
            rules,
            outbound,
            edge,
            cluster,
            store,
            phases,
            tracker,
            tasks,
            grace: Duration::from_millis(cfg.shutdown_grace_ms),
            _idle_feeds: idle_feeds,
        })
    }

    /// The gateway's storage (tests reach the fault-injection seam of the audit log through
    /// it: `store().audit().set_write_fault(true)`).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Stops the gateway in order (see the module doc): the edge, ingest, the actors (which
    /// save their state), the API, then flushes the store. Whatever has not returned within
    /// the grace period is aborted, with a log line naming it.
    pub async fn shutdown(mut self) {
        let deadline = Instant::now() + self.grace;
        if tokio::time::timeout_at(deadline, self.edge.shutdown())
            .await
            .is_err()
        {
            tracing::warn!(
                grace_ms = self.grace.as_millis() as u64,
                "edge connections still closing after the grace period"
            );
        }
        // The registry answers in order: once it has listed the connections, the presence
        // changes of every connection the edge closed are in the presence channel.
        let _ = tokio::time::timeout_at(deadline, self.edge.connected()).await;

        self.phases.ingest.cancel();
        self.wait(node::INGEST_PHASE, deadline).await;
        self.wait(&[PRESENCE, INGEST, RETENTION], deadline).await;
        self.phases.actors.cancel();
        self.wait(&[FLEET, DISPATCHER, PARCELS, RULES, OUTBOUND], deadline)
            .await;
        self.phases.api.cancel();
        self.wait(&[API, LIVE, SESSIONS, node::DOWNLINKS], deadline)
            .await;
        // the API's readiness check holds a publisher: the link ends after the API
        self.wait(&[BROKER_LINK], deadline).await;
        self.phases.root.cancel();
        self.tracker.close();
        if tokio::time::timeout_at(deadline, self.tracker.wait())
            .await
            .is_err()
        {
            for (name, task) in &self.tasks {
                if !task.is_finished() {
                    tracing::warn!(
                        task = name,
                        grace_ms = self.grace.as_millis() as u64,
                        "still running after the shutdown grace period: aborted"
                    );
                    task.abort();
                }
            }
            // Aborted tasks end at their next await (a blocking storage call they started
            // still completes on its own thread).
            self.tracker.wait().await;
        }
        let store = self.store.clone();
        if let Err(e) = store::blocking(move || store.flush()).await {
            tracing::error!(error = %e, "final flush failed");
        }
    }

    /// Waits (until `deadline`) for the named tasks to return.
    async fn wait(&mut self, names: &[&str], deadline: Instant) {
        for (name, task) in self.tasks.iter_mut() {
            if names.contains(name) && !task.is_finished() {
                match tokio::time::timeout_at(deadline, &mut *task).await {
                    Ok(Err(e)) if e.is_panic() => {
                        tracing::error!(task = *name, error = %e, "task panicked")
                    }
                    _ => {}
                }
            }
        }
    }
}

/// A start that failed half way on its store: stops what it already started.
fn half_started(phases: &Phases, db_path: &std::path::Path, source: StoreError) -> StartError {
    phases.root.cancel();
    StartError::Store {
        path: db_path.display().to_string(),
        source,
    }
}

/// The edge's settings, with the defaults that depend on the gateway's (the ticket key file
/// lives in the data directory unless configured elsewhere).
fn edge_config(cfg: &GatewayConfig) -> crate::edge::EdgeConfig {
    let mut edge = cfg.edge.clone();
    if edge.tls_ticket_key_file.is_none() {
        edge.tls_ticket_key_file = Some(cfg.data_dir.join("tls-ticket-keys"));
    }
    edge
}

/// Hands the edge's presence changes to the dispatcher and the fleet. On `stop` it hands on
/// what is already queued (the connections the edge closed last) and returns.
async fn forward_presence(
    mut rx: mpsc::Receiver<PresenceEvent>,
    fleet: FleetHandle,
    commands: CommandsHandle,
    domain: Option<(ParcelsHandle, OutboundHandle)>,
    rules: Option<RulesHandle>,
    stop: CancellationToken,
) {
    let forward = |p: PresenceEvent| {
        let (f, c, d, r) = (&fleet, &commands, &domain, &rules);
        async move {
            if !p.online {
                c.offline(p.cabinet.clone()).await;
            }
            if let Some((k, _)) = d {
                k.presence(p.cabinet.clone(), p.online).await;
            }
            if let Some(r) = r {
                r.presence(p.cabinet.clone(), p.online, p.at).await;
            }
            f.presence(PresenceChange {
                cabinet: p.cabinet.clone(),
                online: p.online,
                at: p.at,
            })
            .await;
            // last: the webhooks' presence events never hold back the fleet and the queue
            if let Some((_, o)) = d {
                o.presence(p.cabinet, p.online, p.at).await;
            }
        }
    };
    loop {
        tokio::select! {
            biased;
            p = rx.recv() => match p {
                Some(p) => forward(p).await,
                None => return,
            },
            _ = stop.cancelled() => break,
        }
    }
    while let Ok(p) = rx.try_recv() {
        forward(p).await;
    }
}
