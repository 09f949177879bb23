//! Hands the edge's presence changes (cabinets connecting and going away; in cluster mode the
//! whole fleet's, from the presence bucket) to the actors that follow them: the fleet, and
//! where the domain runs the dispatcher, the parcel domain, the rules engine and the outbox.

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::commands::CommandsHandle;
use crate::edge::PresenceEvent;
use crate::fleet::{FleetHandle, PresenceChange};
use crate::outbound::OutboundHandle;
use crate::parcels::ParcelsHandle;
use crate::rules::RulesHandle;

/// Hands the edge's presence changes to the dispatcher and the fleet. On `stop` it hands on
/// what is already queued (the connections the edge closed last) and returns.
pub(super) async fn forward_presence(
    mut rx: mpsc::Receiver<PresenceEvent>,
    fleet: FleetHandle,
    domain: Option<(CommandsHandle, ParcelsHandle, OutboundHandle)>,
    rules: Option<RulesHandle>,
    stop: CancellationToken,
) {
    let forward = |p: PresenceEvent| {
        let (f, d, r) = (&fleet, &domain, &rules);
        async move {
            if let (false, Some((c, _, _))) = (p.online, d) {
                c.offline(p.cabinet.clone()).await;
            }
            if let Some((_, k, _)) = d {
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
            if let Some((_, _, o)) = d {
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
