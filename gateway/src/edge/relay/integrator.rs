//! An integrator's connection after its CONNECT: its client id at the broker (identity and
//! client id, so one certificate may hold several sessions), its session's life at the router
//! (MQTT 5 session expiry, a 3.1.1 persistent session kept for `max_session_expiry_s`, removed
//! when it expires unless a connection of it came since), its broker link, and its session
//! ([`session`](super::super::session)).

use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

use super::super::metrics::Reason;
use super::super::proto::{self, Version};
use super::super::session::{self, End};
use super::{Established, Shared};
use crate::broker::Link;

/// An integrator's session over its own broker link.
pub(super) async fn run(shared: &Shared, est: &mut Established, cancel: &CancellationToken) -> End {
    // MQTT 5 session expiry: 0 ends the session with the connection; otherwise the router
    // keeps it (a persistent session) until the interval after the connection ends.
    let granted = est
        .session
        .session_expiry
        .min(shared.cfg.max_session_expiry_s);
    let client_id = router_client_id(est.acl.identity(), &est.session.client_id);
    let generation = {
        let mut gens = shared.session_gens.lock().await;
        let g = gens.entry(client_id.clone()).or_insert(0);
        *g += 1;
        *g
    };
    let (clean, wipe_first) = match est.session.version {
        Version::V4 => (est.session.clean_session, false),
        Version::V5 => (granted == 0, granted > 0 && est.session.clean_session),
    };
    if wipe_first {
        remove_session(shared, &client_id).await;
    }
    match Box::pin(open_link(shared, est, clean, cancel)).await {
        Ok(link) => est.link = Some(link),
        Err(end) => return end,
    }
    let connack = (est.session.version == Version::V5).then(|| {
        let mut p = super::connack_properties(shared, &est.session);
        if granted != est.session.session_expiry {
            p.session_expiry_interval = Some(granted);
        }
        p
    });
    let cert_end = est.cert_deadline();
    let pending = std::mem::take(&mut est.pending);
    let Some(link) = est.link.as_mut() else {
        return End::BrokerClosed;
    };
    let outcome = session::run(
        shared,
        &mut est.tls,
        &est.acl,
        link,
        &est.session,
        connack,
        pending,
        cert_end,
        cancel,
    )
    .await;
    if outcome.router_gone {
        link.router_closed();
    }
    let cut_off = est.cut_off(shared, &outcome.end);
    if let Some(link) = est.link.take() {
        Box::pin(link.close(outcome.clean || cut_off)).await;
    }
    // A 3.1.1 persistent session has no expiry of its own: it gets the longest one granted.
    let keep_for = match est.session.version {
        Version::V5 => granted,
        Version::V4 if est.session.clean_session => 0,
        Version::V4 => shared.cfg.max_session_expiry_s,
    };
    if keep_for > 0 {
        expire_later(
            shared,
            client_id,
            generation,
            Duration::from_secs(keep_for.into()),
        );
    }
    outcome.end
}

/// The client id an integrator's session has at the broker: its identity and the client id it
/// sent, so one certificate may hold several sessions (a client id is unique per identity,
/// never across identities).
fn router_client_id(identity: &crate::edge::Identity, client_id: &str) -> String {
    format!("{}:{client_id}", identity.client_id())
}

/// Removes the router's session of `client_id` (connects it as a clean session and closes).
async fn remove_session(shared: &Shared, client_id: &str) {
    match shared.links.connect(client_id.to_owned(), true, None).await {
        Ok(link) => link.close(true).await,
        Err(e) => {
            tracing::warn!(client_id, error = %e, "edge: could not remove an expired session")
        }
    }
}

/// Removes `client_id`'s session after `after`, unless another connection of it came since
/// (its `generation` moved on).
fn expire_later(shared: &Shared, client_id: String, generation: u64, after: Duration) {
    let links = shared.links.clone();
    let gens = shared.session_gens.clone();
    let stop = shared.cancel.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(after) => {}
        }
        let mut map = gens.lock().await;
        if map.get(&client_id) != Some(&generation) {
            return;
        }
        map.remove(&client_id);
        match links.connect(client_id.clone(), true, None).await {
            Ok(link) => link.close(true).await,
            Err(e) => {
                tracing::warn!(client_id, error = %e, "edge: could not remove an expired session")
            }
        }
        drop(map);
        tracing::debug!(client_id, "edge: MQTT 5 session expired and removed");
    });
}

/// Opens the broker link (after any takeover); on failure answers the client with CONNACK
/// "server unavailable".
async fn open_link(
    shared: &Shared,
    est: &mut Established,
    clean: bool,
    cancel: &CancellationToken,
) -> Result<Link, End> {
    let Established {
        tls, acl, session, ..
    } = est;
    let window = shared.cfg.handshake_timeout();
    let connect = shared.links.connect(
        router_client_id(acl.identity(), &session.client_id),
        clean,
        session.will.clone(),
    );
    let link = tokio::select! {
        biased;
        _ = cancel.cancelled() => return Err(End::Cancelled),
        r = tokio::time::timeout(window, connect) => r,
    };
    match link {
        Ok(Ok(link)) => {
            link.trim();
            Ok(link)
        }
        failed => {
            let why = match failed {
                Ok(Err(e)) => e.to_string(),
                _ => "no link to the broker within the deadline".into(),
            };
            let answer = proto::connack_refusal(session.version, Reason::UpstreamUnavailable, &why);
            let refuse = async {
                tls.write_all(&answer).await?;
                tls.flush().await
            };
            let _ = tokio::time::timeout(window, refuse).await;
            Err(End::Refused((Reason::UpstreamUnavailable, why)))
        }
    }
}
