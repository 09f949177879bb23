//! `GET /v1/live`: the live feed ([`crate::live`]) as server-sent events, scoped to the
//! caller: what changed where, for pages and integrators that redraw instead of polling.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::Extension;
use futures::Stream;
use futures::StreamExt;
use locker_schemas::{CabinetId, SiteId};
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::openapi::ErrorBody;
use super::{ApiError, ApiState};
use crate::live::{Change, LiveError, Subscriber};
use crate::parcels::Caller;

pub(super) fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new().routes(routes!(live))
}

/// Filters of `GET /v1/live`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct LiveQuery {
    /// Only this cabinet's changes.
    #[param(value_type = Option<super::openapi::CabinetIdDoc>)]
    cabinet: Option<String>,
    /// Only this site's changes.
    #[param(value_type = Option<super::openapi::SiteIdDoc>)]
    site: Option<String>,
}

/// Live changes as server-sent events.
///
/// Each change is `event: change` with a JSON `LiveEvent` (which stream, cabinet, site,
/// order, compartment, new state): it says what changed where; refetch what you show from the
/// other routes. `event: resync` means changes were dropped because this client fell behind:
/// refetch everything shown. A comment line every 15 s keeps proxies from closing the stream.
/// In-memory and at most once: not a replacement for webhooks or MQTT streams.
///
/// Scopes: operator (everything), site manager (its sites' cabinets), carrier (its own
/// orders' parcel events and cabinets' presence).
#[utoipa::path(get, path = "/v1/live", tag = "live", params(LiveQuery),
    responses((status = 200, description = "The event stream (`text/event-stream`); `data` of `change` events is a LiveEvent.",
            content_type = "text/event-stream", body = crate::live::LiveEvent),
        (status = 400, description = "`bad_request`: a malformed cabinet or site id.", body = ErrorBody),
        (status = 503, description = "`busy`: `console.live_max_clients` subscribers already.", body = ErrorBody)))]
async fn live(
    State(st): State<ApiState>,
    Extension(caller): Extension<Caller>,
    q: Result<Query<LiveQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let Query(q) =
        q.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.to_string()))?;
    let bad = |e: String| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e);
    let cabinet = q
        .cabinet
        .map(CabinetId::new)
        .transpose()
        .map_err(|e| bad(e.to_string()))?;
    let site = q
        .site
        .map(SiteId::new)
        .transpose()
        .map_err(|e| bad(e.to_string()))?;
    let sub = st.live.subscribe().map_err(|e| match e {
        LiveError::Busy(_) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "busy", e.to_string()),
        LiveError::Broker(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            e.to_string(),
        ),
    })?;
    let stop = sub.stop.clone();
    let feed = Feed {
        sub,
        caller,
        cabinet,
        site,
    };
    let stream = futures::stream::unfold(feed, |mut f| async move {
        let ev = f.next().await?;
        Some((Ok(ev), f))
    })
    .take_until(stop.cancelled_owned());
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// One subscriber's filtered view of the feed.
struct Feed {
    sub: Subscriber,
    caller: Caller,
    cabinet: Option<CabinetId>,
    site: Option<SiteId>,
}

impl Feed {
    /// The next event this caller may see; `None` when the feed has closed.
    async fn next(&mut self) -> Option<Event> {
        loop {
            match self.sub.rx.recv().await {
                Ok(Change::Resync) => return Some(Event::default().event("resync").data("")),
                Ok(Change::Event(ev)) => {
                    let wanted = ev.visible_to(&self.caller.scope)
                        && self.cabinet.as_ref().is_none_or(|c| *c == ev.cabinet)
                        && self
                            .site
                            .as_ref()
                            .is_none_or(|s| ev.site.as_ref() == Some(s));
                    if !wanted {
                        continue;
                    }
                    return match Event::default().event("change").json_data(&*ev) {
                        Ok(e) => Some(e),
                        Err(_) => continue,
                    };
                }
                Err(RecvError::Lagged(_)) => {
                    self.sub.resynced();
                    return Some(Event::default().event("resync").data(""));
                }
                Err(RecvError::Closed) => return None,
            }
        }
    }
}
