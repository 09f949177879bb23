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
//! In cluster mode the domain's actors (dispatcher, parcels, rules, outbound: [`domain`]) run
//! only on the node holding the domain lease ([`crate::cluster::role`]); the other nodes forward
//! the API to it.
//!
//! `shutdown_grace_ms` bounds the whole sequence: whatever is still running then is aborted,
//! with a log line naming it, and the store is flushed anyway.

mod domain;
mod presence;

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
use crate::commands::CommandsHandle;
use crate::config::GatewayConfig;
use crate::edge::{Edge, EdgeHandle, PresenceEvent};
use crate::fleet::{Fleet, FleetHandle};
use crate::ingest::{retention, Ingest};
use crate::metrics::{Metrics, MetricsError};
use crate::outbound::OutboundHandle;
use crate::parcels::ParcelsHandle;
use crate::rules::{RulesConfigError, RulesHandle};
use crate::store::{self, Store, StoreError};
use domain::DomainActors;

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
    /// Feeds of actors kept idle on this node (the rules engine switched off).
    _idle_feeds: Vec<mpsc::Sender<crate::ingest::Committed>>,
    /// Cluster mode: cancelled when this node must restart in its other domain role.
    role_change: Option<CancellationToken>,
    /// Whether the domain's actors run here (always on a single node).
    pub domain_here: bool,
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
        let phases = Phases::new();
        let tracker = TaskTracker::new();
        let mut tasks = Vec::new();

        // The API's listener is bound first: in cluster mode, its address goes into the domain
        // lease (the other nodes forward the domain's routes to it).
        let bound = async {
            let listener = tokio::net::TcpListener::bind(cfg.api.listen).await?;
            let addr = listener.local_addr()?;
            Ok::<_, std::io::Error>((listener, addr))
        };
        let (listener, api_addr) = bound.await.map_err(|source| StartError::Api {
            addr: cfg.api.listen,
            source,
        })?;
        // Cluster mode: the domain's role (the leader writes through the replicated stores).
        let (role, store) = match &cluster {
            Some(c) => {
                let url = crate::cluster::role::api_url(
                    &cfg.cluster.api_url,
                    cfg.api.tls.is_some(),
                    api_addr,
                );
                let started = c.take_role(store, url, &tracker, &phases.root).await;
                match started {
                    Ok((mut role, store)) => {
                        tasks.extend(role.take_tasks());
                        (Some(role), store)
                    }
                    Err(e) => {
                        phases.root.cancel();
                        return Err(e.into());
                    }
                }
            }
            None => (None, store),
        };
        let domain_here = role.as_ref().is_none_or(|r| r.leader);
        let st = store.clone();
        let loaded = store::blocking(move || {
            let cabinets = st.load_cabinets()?;
            // only the node running the domain dispatches (and recovers) commands
            let pending = match domain_here {
                true => crate::commands::recover(&st)?,
                false => Default::default(),
            };
            Ok((cabinets, pending))
        })
        .await;
        let (cabinets, pending) = match loaded {
            Ok(x) => x,
            Err(source) => return Err(half_started(&phases, &db_path, source)),
        };
        let snapshots: Vec<_> = cabinets.into_iter().map(|(s, _)| s).collect();
        tracing::info!(
            cabinets = snapshots.len(),
            pending_commands = pending.len(),
            "store opened"
        );

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
        let mut domain = match domain_here {
            true => {
                let started = DomainActors::start(
                    &cfg,
                    compiled,
                    &store,
                    &publisher,
                    &metrics,
                    pending,
                    &phases.actors,
                    &tracker,
                    &db_path,
                )
                .await;
                match started {
                    Ok(d) => d,
                    Err(e) => {
                        phases.root.cancel();
                        return Err(e);
                    }
                }
            }
            false => DomainActors::detached(),
        };
        tasks.append(&mut domain.tasks);
        // ingest feeds the dispatcher first, then the fleet, then the rest of the domain
        let mut feeds = std::mem::take(&mut domain.consumers).into_iter();
        let mut consumers: Vec<_> = feeds.next().into_iter().collect();
        consumers.push(fleet_commits);
        consumers.extend(feeds);
        let (commands, parcels, rules, outbound) = (
            domain.commands.clone(),
            domain.parcels.clone(),
            domain.rules.clone(),
            domain.outbound.clone(),
        );
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
            (BROKER_LINK, link_task),
        ]);

        // The live feed: its own broker link, subscribers' streams end when the API drains.
        let live = crate::live::LiveHandle::new(
            cfg.console.live_buffer,
            cfg.console.live_max_clients,
            metrics.live.clone(),
            phases.api.clone(),
        );
        // the live feed follows the domain's actors: a node without them forwards it
        if domain_here {
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
        }

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
        let presence_task = tracker.spawn(presence::forward_presence(
            presence_rx,
            fleet.clone(),
            domain_here.then(|| (commands.clone(), parcels.clone(), outbound.clone())),
            domain.feed_rules.clone(),
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
        let forward = match (&role, domain_here) {
            (Some(r), false) => {
                // an API over TLS: the other nodes' certificates are the fleet CA's
                let ca = match &cfg.api.tls {
                    Some(_) => {
                        let path = cfg.edge.ca_cert.clone();
                        tokio::task::spawn_blocking(move || std::fs::read(path))
                            .await
                            .ok()
                            .and_then(Result::ok)
                    }
                    None => None,
                };
                match api::forward::Forwarder::new(r.holder.clone(), ca.as_deref()) {
                    Ok(f) => Some(f),
                    Err(e) => {
                        edge.shutdown().await;
                        phases.root.cancel();
                        return Err(StartError::Task(format!("API forwarding client: {e}")));
                    }
                }
            }
            _ => None,
        };
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
            forward,
            node: cluster.as_ref().map(|c| c.node().to_owned()),
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
            _idle_feeds: domain.idle,
            role_change: role.map(|r| r.change),
            domain_here,
        })
    }

    /// Resolves when this cluster node must restart in its other domain role (it took the
    /// domain lease, or lost it); never on a single node. The gateway's process then shuts
    /// this gateway down and starts it again ([`Gateway::start`] takes the new role).
    pub async fn role_changed(&self) {
        match &self.role_change {
            Some(t) => t.cancelled().await,
            None => std::future::pending().await,
        }
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
