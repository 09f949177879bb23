//! The domain's actors as the gateway starts them: the command dispatcher, the parcel domain,
//! the rules engine and the outbox (webhooks, carriers' tracking, notifications). A single node
//! runs them all; in cluster mode only the node holding the domain lease does
//! ([`crate::cluster::role`]), and the others have handles to no actor (their API forwards the
//! domain's routes to the leader).

use std::path::Path;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{StartError, DISPATCHER, OUTBOUND, PARCELS, RULES};
use crate::broker::Publisher;
use crate::commands::{CommandsHandle, Dispatcher, Recovered};
use crate::config::GatewayConfig;
use crate::ingest::Committed;
use crate::metrics::Metrics;
use crate::outbound::{Outbound, OutboundHandle};
use crate::parcels::{Parcels, ParcelsHandle};
use crate::rules::config::Compiled;
use crate::rules::{Rules, RulesClock, RulesHandle};
use crate::store::Store;

/// The domain's actors (or handles to none).
pub(super) struct DomainActors {
    pub commands: CommandsHandle,
    pub parcels: ParcelsHandle,
    pub rules: RulesHandle,
    pub outbound: OutboundHandle,
    /// The rules engine, when it runs and is fed (the dispatcher and the parcel domain tell it).
    pub feed_rules: Option<RulesHandle>,
    /// What ingest feeds.
    pub consumers: Vec<mpsc::Sender<Committed>>,
    /// Feeds kept open and never sent to (the rules engine switched off still serves the API).
    pub idle: Vec<mpsc::Sender<Committed>>,
    pub tasks: Vec<(&'static str, tokio::task::JoinHandle<()>)>,
}

impl DomainActors {
    /// Handles to no actor: a cluster node that does not run the domain.
    pub fn detached() -> Self {
        Self {
            commands: CommandsHandle::detached(),
            parcels: ParcelsHandle::detached(),
            rules: RulesHandle::channel().0,
            outbound: OutboundHandle::channel().0,
            feed_rules: None,
            consumers: Vec::new(),
            idle: Vec::new(),
            tasks: Vec::new(),
        }
    }

    /// Starts the actors, each loading its state from `store` (which they also write through).
    #[allow(clippy::too_many_arguments)]
    pub async fn start(
        cfg: &GatewayConfig,
        compiled: Compiled,
        store: &Store,
        publisher: &Publisher,
        metrics: &Metrics,
        pending: Recovered,
        stop: &CancellationToken,
        tracker: &TaskTracker,
        db_path: &Path,
    ) -> Result<Self, StartError> {
        let store_err = |source| StartError::Store {
            path: db_path.display().to_string(),
            source,
        };
        let (rules, rules_inbox) = RulesHandle::channel();
        // rules off: nothing feeds the engine (the API still lists the alert history)
        let feed_rules = cfg.rules.enabled.then(|| rules.clone());
        let (commands, command_commits, dispatch_task) = Dispatcher::spawn(
            cfg.commands.clone(),
            store.clone(),
            publisher.clone(),
            metrics.commands.clone(),
            pending,
            feed_rules.clone(),
            stop.clone(),
            tracker,
        );
        let (parcels, parcel_commits, parcels_task) = Parcels::spawn(
            cfg.parcels.clone(),
            store.clone(),
            publisher.clone(),
            metrics.parcels.clone(),
            feed_rules.clone(),
            stop.clone(),
            tracker,
        )
        .await
        .map_err(store_err)?;
        let rules_parts = crate::rules::Parts {
            cfg: cfg.rules.clone(),
            compiled,
            store: store.writers().alerts.clone(),
            publisher: publisher.clone(),
            commands: commands.clone(),
            parcels: Some(parcels.clone()),
            metrics: metrics.rules.clone(),
            clock: RulesClock::System,
            audit: Some(store.clone()),
        };
        let (rules_commits, rules_task) =
            Rules::spawn(rules_parts, rules_inbox, stop.clone(), tracker)
                .await
                .map_err(store_err)?;
        let notifier = if cfg.notifications.enabled {
            let ncfg = cfg.notifications.clone();
            let built =
                tokio::task::spawn_blocking(move || crate::outbound::notify::Notifier::new(&ncfg))
                    .await
                    .map_err(|e| StartError::Task(format!("notifications: {e}")))?;
            Some(built?)
        } else {
            None
        };
        let (outbound, outbound_inbox) = OutboundHandle::channel();
        let outbound_parts = crate::outbound::Parts {
            cfg: cfg.webhooks.clone(),
            store: store.writers().outbound.clone(),
            parcel_log: Arc::new(store.parcels().clone()),
            alert_log: Arc::new(store.alerts().clone()),
            parcels: Some(parcels.clone()),
            notifier,
            metrics: metrics.outbound.clone(),
        };
        let outbound_task =
            Outbound::spawn(outbound_parts, outbound_inbox, stop.clone(), tracker).await?;
        let mut consumers = vec![command_commits, parcel_commits];
        let mut idle = Vec::new();
        if cfg.rules.enabled {
            consumers.push(rules_commits);
        } else {
            idle.push(rules_commits);
        }
        Ok(Self {
            commands,
            parcels,
            rules,
            outbound,
            feed_rules,
            consumers,
            idle,
            tasks: vec![
                (DISPATCHER, dispatch_task),
                (PARCELS, parcels_task),
                (RULES, rules_task),
                (OUTBOUND, outbound_task),
            ],
        })
    }
}
