//! Wiring: starts every gateway component in order (store, broker, fleet, dispatcher, ingest,
//! edge, API) and stops them in reverse, flushing the store last.

use std::net::SocketAddr;
use std::sync::Arc;

use locker_schemas::Filter;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::{self, ApiState};
use crate::broker::{BrokerError, EmbeddedBroker};
use crate::commands::{CommandsHandle, Dispatcher};
use crate::config::GatewayConfig;
use crate::edge::{Edge, EdgeHandle, PresenceEvent};
use crate::fleet::{Fleet, FleetHandle, PresenceChange};
use crate::ingest::{retention, Ingest};
use crate::metrics::{Metrics, MetricsError};
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
    pub edge: EdgeHandle,
    store: Store,
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    ingest: JoinHandle<()>,
}

impl Gateway {
    /// Starts every component. Listening addresses may use port 0.
    pub async fn start(cfg: GatewayConfig) -> Result<Self, StartError> {
        let metrics = Metrics::new()?;
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

        let (inbound_tx, inbound_rx) = mpsc::channel(16 * 1024);
        let broker = EmbeddedBroker::start(
            &cfg.broker,
            &[Filter::all_uplinks().as_str().to_owned()],
            inbound_tx,
        )
        .await?;
        let publisher = broker.publisher.clone();

        let (fleet, fleet_commits, fleet_task) = Fleet::spawn(
            snapshots,
            store.clone(),
            publisher.clone(),
            metrics.store.clone(),
        );
        let (commands, command_commits, dispatch_task) = Dispatcher::spawn(
            cfg.commands.clone(),
            store.clone(),
            publisher.clone(),
            metrics.commands.clone(),
            pending,
        );
        let cancel = CancellationToken::new();
        let ingest = Ingest::new(
            cfg.ingest.clone(),
            store.clone(),
            publisher.clone(),
            metrics.ingest.clone(),
            vec![fleet_commits, command_commits],
        );
        let ingest_health = ingest.handle();
        let ingest_task = tokio::spawn(ingest.run(inbound_rx, cancel.clone()));
        let retention_task = tokio::spawn(retention::run(
            cfg.ingest.clone(),
            store.clone(),
            metrics.ingest.clone(),
            cancel.clone(),
        ));

        let (presence_tx, mut presence_rx) = mpsc::channel::<PresenceEvent>(4096);
        let (edge, edge_addr) = Edge::start(
            cfg.edge.clone(),
            broker.links.clone(),
            &metrics.registry,
            presence_tx,
        )
        .await
        .map_err(|e| StartError::Edge(e.to_string()))?;

        let (f, c) = (fleet.clone(), commands.clone());
        let presence_task = tokio::spawn(async move {
            while let Some(p) = presence_rx.recv().await {
                if !p.online {
                    c.offline(p.cabinet.clone()).await;
                }
                f.presence(PresenceChange {
                    cabinet: p.cabinet,
                    online: p.online,
                    at: p.at,
                })
                .await;
            }
        });

        let api_tls = match cfg.api.tls.clone() {
            Some(t) => Some(
                tokio::task::spawn_blocking(move || api::serve::load_tls(&t))
                    .await
                    .map_err(|e| api::serve::ServeError::Join(e.to_string()))??,
            ),
            None => None,
        };
        let listener = tokio::net::TcpListener::bind(cfg.api.listen)
            .await
            .map_err(|source| StartError::Api {
                addr: cfg.api.listen,
                source,
            })?;
        let api_addr = listener.local_addr().map_err(|source| StartError::Api {
            addr: cfg.api.listen,
            source,
        })?;
        let app = api::router(ApiState {
            cfg: Arc::new(cfg.api.clone()),
            fleet: fleet.clone(),
            commands: commands.clone(),
            store: store.clone(),
            metrics: metrics.clone(),
            ingest: ingest_health,
        });
        let api_cancel = cancel.clone();
        let api_limits = api::serve::Limits {
            max_connections: cfg.api.max_connections,
            header_read_timeout: std::time::Duration::from_millis(cfg.api.header_read_timeout_ms),
        };
        let api_task = tokio::spawn(api::serve::serve(
            listener,
            app,
            api_limits,
            api_tls,
            metrics.api.clone(),
            api_cancel,
        ));

        Ok(Self {
            edge_addr,
            api_addr,
            metrics,
            fleet,
            commands,
            edge,
            store,
            cancel,
            tasks: vec![
                api_task,
                presence_task,
                dispatch_task,
                fleet_task,
                retention_task,
            ],
            ingest: ingest_task,
        })
    }

    /// The gateway's storage (tests reach the fault-injection seam of the audit log through
    /// it: `store().audit().set_write_fault(true)`).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Stops accepting, closes connections, lets ingest finish what it has, and flushes.
    pub async fn shutdown(self) {
        self.edge.shutdown().await;
        self.cancel.cancel();
        let _ = self.ingest.await;
        // the API shuts down gracefully (its connection tasks hold the store): give it a
        // moment, then abort whatever is left
        let mut tasks = self.tasks;
        if !tasks.is_empty() {
            let mut api = tasks.remove(0);
            if tokio::time::timeout(std::time::Duration::from_secs(5), &mut api)
                .await
                .is_err()
            {
                api.abort();
                let _ = api.await;
            }
        }
        // the fleet ends by itself once ingest's commit stream has closed, after saving its
        // last snapshots (the last task in the list)
        if let Some(mut fleet) = tasks.pop() {
            if tokio::time::timeout(std::time::Duration::from_secs(5), &mut fleet)
                .await
                .is_err()
            {
                fleet.abort();
                let _ = fleet.await;
            }
        }
        for t in &tasks {
            t.abort();
        }
        // wait until every task is gone, so nothing holds the database any more
        for t in tasks {
            let _ = t.await;
        }
        let store = self.store;
        if let Err(e) = store::blocking(move || store.flush()).await {
            tracing::error!(error = %e, "final flush failed");
        }
    }
}
