//! The live feed: what changed where, as it happens, for the console and `GET /v1/live`.
//!
//! One task (`live`) owns a local link to the embedded broker (client id `gw:live`, which no
//! certificate identity can take: ':' is not allowed in ids) subscribed to the streams
//! integrators get: the gateway-made `lk/v1/+/gw/#` (parcel, alert, presence) and the door,
//! alarm, result, access, hello and scan uplinks (not the power and network telemetry, which
//! no page redraws on). Each publish becomes a small [`LiveEvent`] (which stream, which cabinet
//! and site, which order, the new state) broadcast to every subscriber. The task also owns the
//! cabinet -> site map it stamps events with, read again from the parcel domain whenever a
//! site changes.
//!
//! Who sees what is decided per subscriber by [`LiveEvent::visible_to`]: an operator
//! everything; a site manager its sites' cabinets; a carrier its own orders' parcel events and
//! cabinets' presence (never doors, alarms or command results, which may be another carrier's).
//!
//! The feed says what changed, not the data: a page refetches what it shows from the API,
//! where scopes are enforced. So it is QoS 0 and in memory by design: a subscriber that falls
//! behind (a full broadcast buffer) is told `resync` and refetches; nothing is lost but a
//! redraw.
//!
//! It costs nothing while nobody watches: the link is made when the first subscriber comes
//! (who is then told `resync`, for what changed before the link was up) and closed when none
//! has been left for 30 to 60 s, so the router copies no uplink to it meanwhile.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use locker_schemas::codec::{decode_stream, decode_uplink};
use locker_schemas::{
    now_millis, CabinetId, Filter, SiteId, StreamKind, StreamMessage, Topic, UpKind, UplinkBody,
};
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use serde::Serialize;
use tokio::sync::{broadcast, Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::broker::{Link, LinkFactory};
use crate::parcels::{Caller, ParcelsHandle, Scope};

/// The broker client id of the live feed's link.
pub const LIVE_CLIENT_ID: &str = "gw:live";

/// The uplink kinds the feed follows (telemetry is left out).
const UPLINKS: [UpKind; 6] = [
    UpKind::Door,
    UpKind::Alarm,
    UpKind::Result,
    UpKind::Access,
    UpKind::Hello,
    UpKind::Scan,
];

/// How often the cabinet -> site map is refreshed.
const SITES_EVERY: Duration = Duration::from_secs(30);

/// Why the live feed refused or stopped.
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    #[error("too many live subscribers (console.live_max_clients = {0})")]
    Busy(usize),
    #[error("the broker refused the live feed's link: {0}")]
    Broker(String),
}

/// One change: what stream, where, and the new state if the stream has one.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct LiveEvent {
    /// `parcel`, `alert`, `presence`, `door`, `result`, `access`, `alarm`, `hello` or `scan`.
    pub stream: &'static str,
    #[schema(value_type = crate::api::openapi::CabinetIdDoc)]
    pub cabinet: CabinetId,
    /// The cabinet's site, if it belongs to one.
    #[schema(value_type = Option<crate::api::openapi::SiteIdDoc>)]
    pub site: Option<SiteId>,
    /// The order (parcel events).
    pub order: Option<String>,
    /// The compartment (parcel, door and access events).
    pub compartment: Option<u16>,
    /// The new state: an order state, `online`/`offline`, door `open`/`closed`, alert
    /// `raised`/`cleared`, a command outcome.
    pub state: Option<String>,
    /// When the gateway saw it (RFC 3339).
    pub at: String,
    /// The order's carrier (for scoping; not sent).
    #[serde(skip)]
    pub carrier: Option<String>,
}

impl LiveEvent {
    /// Whether a caller of this scope may see the event.
    pub fn visible_to(&self, scope: &Scope) -> bool {
        match scope {
            Scope::Operator => true,
            Scope::Carrier { carrier } => match self.stream {
                "parcel" => self.carrier.as_deref() == Some(carrier.as_str()),
                "presence" => true,
                _ => false,
            },
            Scope::SiteManager { sites } => self.site.as_ref().is_some_and(|s| sites.contains(s)),
        }
    }

    /// Decodes a publish of the streams the feed follows; `None` for anything else.
    pub fn decode(topic: &[u8], payload: &[u8]) -> Option<LiveEvent> {
        let topic: Topic = std::str::from_utf8(topic).ok()?.parse().ok()?;
        let mut ev = LiveEvent {
            stream: "",
            cabinet: topic.cabinet().clone(),
            site: None,
            order: None,
            compartment: None,
            state: None,
            at: crate::json::utc(now_millis()),
            carrier: None,
        };
        match topic {
            Topic::Stream(_, kind) => match (kind, decode_stream(payload).ok()?) {
                (StreamKind::Presence, StreamMessage::Presence(p)) => {
                    ev.stream = "presence";
                    ev.state = Some(if p.online { "online" } else { "offline" }.into());
                }
                (StreamKind::Alert, StreamMessage::Alert(a)) => {
                    ev.stream = "alert";
                    ev.state = Some(if a.active { "raised" } else { "cleared" }.into());
                }
                (StreamKind::Parcel, StreamMessage::Parcel(p)) => {
                    ev.stream = "parcel";
                    ev.order = Some(p.order);
                    ev.state = Some(p.state);
                    ev.compartment = p.compartment.map(|c| c.0);
                    ev.carrier = Some(p.carrier);
                }
                _ => return None,
            },
            Topic::Up(_, kind) if UPLINKS.contains(&kind) => {
                let up = decode_uplink(payload).ok()?;
                ev.stream = kind.as_str();
                match up.body {
                    UplinkBody::Door(d) => {
                        ev.compartment = Some(d.compartment.0);
                        ev.state = Some(if d.open { "open" } else { "closed" }.into());
                    }
                    UplinkBody::Result(r) => ev.state = Some(r.outcome.as_str().into()),
                    UplinkBody::Access(a) => ev.compartment = Some(a.compartment.0),
                    _ => {}
                }
            }
            _ => return None,
        }
        Some(ev)
    }
}

/// The live feed's metrics.
#[derive(Clone)]
pub struct LiveMetrics {
    /// Subscribers connected now.
    pub clients: IntGauge,
    /// Events broadcast, by stream.
    pub events: IntCounterVec,
    /// Subscribers told to resync because they fell behind.
    pub resyncs: IntCounter,
    /// Subscriptions refused at `console.live_max_clients`.
    pub refused: IntCounter,
    /// 1 while the feed's broker link is up (someone is watching).
    pub linked: IntGauge,
}

impl LiveMetrics {
    /// Creates and registers the feed's metrics.
    pub fn new(r: &Registry) -> Result<Self, prometheus::Error> {
        let clients = IntGauge::new(
            "locker_live_clients",
            "Live feed subscribers (console pages, /v1/live)",
        )?;
        let events = IntCounterVec::new(
            Opts::new(
                "locker_live_events_total",
                "Changes the live feed broadcast, by stream",
            ),
            &["stream"],
        )?;
        let resyncs = IntCounter::new(
            "locker_live_resyncs_total",
            "Live subscribers that fell behind and were told to refetch",
        )?;
        let refused = IntCounter::new(
            "locker_live_refused_total",
            "Live subscriptions refused at console.live_max_clients",
        )?;
        r.register(Box::new(clients.clone()))?;
        r.register(Box::new(events.clone()))?;
        r.register(Box::new(resyncs.clone()))?;
        let linked = IntGauge::new(
            "locker_live_linked",
            "1 while the live feed's broker link is up (it is made for the first subscriber)",
        )?;
        r.register(Box::new(refused.clone()))?;
        r.register(Box::new(linked.clone()))?;
        Ok(Self {
            linked,
            clients,
            events,
            resyncs,
            refused,
        })
    }
}

/// What a subscriber receives: a change, or "refetch everything" (the feed's link just came
/// up; changes before it were not seen).
#[derive(Debug, Clone)]
pub enum Change {
    Event(Arc<LiveEvent>),
    Resync,
}

/// Cloneable handle to the feed: subscribe to it.
#[derive(Clone)]
pub struct LiveHandle {
    tx: broadcast::Sender<Change>,
    /// Woken by a subscription, so an idle feed makes its link.
    wanted: Arc<Notify>,
    clients: Arc<Semaphore>,
    max_clients: usize,
    metrics: LiveMetrics,
    stop: CancellationToken,
}

/// One subscriber: its receiver and its place among `live_max_clients`.
pub struct Subscriber {
    pub rx: broadcast::Receiver<Change>,
    /// Cancelled when the gateway stops: the subscriber's stream ends.
    pub stop: CancellationToken,
    metrics: LiveMetrics,
    _permit: OwnedSemaphorePermit,
}

impl Subscriber {
    /// Counts a resync.
    pub fn resynced(&self) {
        self.metrics.resyncs.inc();
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.metrics.clients.dec();
    }
}

impl LiveHandle {
    /// A feed with room for `buffer` events per subscriber and `max_clients` subscribers;
    /// subscribers' streams end when `stop` is cancelled.
    pub fn new(
        buffer: usize,
        max_clients: usize,
        metrics: LiveMetrics,
        stop: CancellationToken,
    ) -> Self {
        let (tx, _) = broadcast::channel(buffer.max(16));
        Self {
            tx,
            wanted: Arc::new(Notify::new()),
            clients: Arc::new(Semaphore::new(max_clients)),
            max_clients,
            metrics,
            stop,
        }
    }

    /// Subscribes, unless `live_max_clients` are connected already.
    pub fn subscribe(&self) -> Result<Subscriber, LiveError> {
        let permit = self.clients.clone().try_acquire_owned().map_err(|_| {
            self.metrics.refused.inc();
            LiveError::Busy(self.max_clients)
        })?;
        self.metrics.clients.inc();
        let rx = self.tx.subscribe();
        self.wanted.notify_one();
        Ok(Subscriber {
            rx,
            stop: self.stop.clone(),
            metrics: self.metrics.clone(),
            _permit: permit,
        })
    }

    /// Broadcasts an event (nobody listening is fine).
    pub fn send(&self, ev: LiveEvent) {
        self.metrics.events.with_label_values(&[ev.stream]).inc();
        let _ = self.tx.send(Change::Event(Arc::new(ev)));
    }

    /// Runs the feed's task until `cancel`: while someone subscribes, a broker link whose
    /// publishes become events (see the module doc).
    pub async fn run(
        self,
        links: LinkFactory,
        parcels: ParcelsHandle,
        cancel: CancellationToken,
    ) -> Result<(), LiveError> {
        let mut sites = Sites {
            of: HashMap::new(),
            changed: parcels.sites_changed(),
            parcels,
        };
        loop {
            while self.tx.receiver_count() == 0 {
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(()),
                    _ = self.wanted.notified() => {}
                }
            }
            let link = tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                l = connect(&links) => l?,
            };
            self.metrics.linked.set(1);
            sites.refresh().await;
            let _ = self.tx.send(Change::Resync);
            let ended = self.pump(link, &mut sites, &cancel).await;
            self.metrics.linked.set(0);
            if ended {
                return Ok(());
            }
        }
    }

    /// Forwards the link's publishes until nobody has been subscribed for two ticks of 30 s
    /// (false) or the gateway stops (true).
    async fn pump(&self, mut link: Link, sites: &mut Sites, cancel: &CancellationToken) -> bool {
        let mut every = tokio::time::interval(SITES_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        every.reset();
        let mut idle_ticks = 0;
        let ended = loop {
            tokio::select! {
                _ = cancel.cancelled() => break true,
                _ = every.tick() => {
                    sites.refresh().await;
                    idle_ticks = if self.tx.receiver_count() == 0 { idle_ticks + 1 } else { 0 };
                    if idle_ticks >= 2 {
                        break false;
                    }
                }
                p = link.next_publish() => match p {
                    Ok(p) => self.publish(sites, p.topic, p.payload).await,
                    Err(_) => break true,
                },
            }
        };
        link.close(true).await;
        ended
    }

    async fn publish(&self, sites: &mut Sites, topic: Bytes, payload: Bytes) {
        if let Some(mut ev) = LiveEvent::decode(&topic, &payload) {
            ev.site = sites.of(&ev.cabinet).await;
            self.send(ev);
        }
    }
}

/// The cabinet -> site map, from the parcel domain: read again when a site changes (and
/// every 30 s).
struct Sites {
    of: HashMap<CabinetId, SiteId>,
    changed: tokio::sync::watch::Receiver<u64>,
    parcels: ParcelsHandle,
}

impl Sites {
    async fn of(&mut self, cabinet: &CabinetId) -> Option<SiteId> {
        if self.changed.has_changed().unwrap_or(false) {
            self.refresh().await;
        }
        self.of.get(cabinet).cloned()
    }

    async fn refresh(&mut self) {
        self.changed.borrow_and_update();
        if let Some(m) = site_map(&self.parcels).await {
            self.of = m;
        }
    }
}

/// The feed's broker link, subscribed to what it follows.
async fn connect(links: &LinkFactory) -> Result<Link, LiveError> {
    let link = links
        .connect(LIVE_CLIENT_ID.into(), true, None)
        .await
        .map_err(|e| LiveError::Broker(e.to_string()))?;
    let mut filters = vec![Filter::all_streams()];
    filters.extend(UPLINKS.into_iter().map(Filter::uplinks_of_kind));
    for f in filters {
        link.subscribe(f.as_str().to_owned())
            .await
            .map_err(|e| LiveError::Broker(e.to_string()))?;
    }
    Ok(link)
}

/// Every cabinet's site, from the parcel domain.
async fn site_map(parcels: &ParcelsHandle) -> Option<HashMap<CabinetId, SiteId>> {
    let op = Caller {
        client: "live".into(),
        scope: Scope::Operator,
    };
    let sites = parcels.sites(op).await.ok()?;
    Some(
        sites
            .into_iter()
            .flat_map(|s| {
                let id = s.id.clone();
                s.cabinets.into_iter().map(move |c| (c, id.clone()))
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use locker_schemas::codec::{encode_stream, encode_uplink};
    use locker_schemas::{CarrierId, ParcelEvent, Presence, Uplink};

    fn cab() -> CabinetId {
        CabinetId::new("cab-1").expect("id")
    }

    fn parcel(carrier: &str) -> LiveEvent {
        let m = StreamMessage::Parcel(ParcelEvent {
            order: "ORD-1".into(),
            state: "deposited".into(),
            ts: 1,
            compartment: None,
            cause: "local_access".into(),
            actor: "courier".into(),
            exception: None,
            carrier: carrier.into(),
        });
        let topic = Topic::Stream(cab(), StreamKind::Parcel).to_string();
        LiveEvent::decode(topic.as_bytes(), &encode_stream(&m).expect("cbor")).expect("event")
    }

    #[test]
    fn parcel_events_reach_their_carrier_only() {
        let ev = parcel("dhl");
        assert_eq!(ev.stream, "parcel");
        assert_eq!(ev.state.as_deref(), Some("deposited"));
        let dhl = Scope::Carrier {
            carrier: CarrierId::new("dhl").expect("id"),
        };
        let ups = Scope::Carrier {
            carrier: CarrierId::new("ups").expect("id"),
        };
        assert!(ev.visible_to(&dhl));
        assert!(!ev.visible_to(&ups));
        assert!(ev.visible_to(&Scope::Operator));
        // the carrier is never sent
        let json = serde_json::to_value(&ev).expect("json");
        assert!(json.get("carrier").is_none(), "{json}");
    }

    #[test]
    fn site_managers_see_their_sites_only() {
        let mut ev = parcel("dhl");
        let hbf = SiteId::new("berlin-hbf").expect("id");
        let mgr = Scope::SiteManager {
            sites: [hbf.clone()].into_iter().collect(),
        };
        assert!(!ev.visible_to(&mgr), "no site known: not shown");
        ev.site = Some(hbf);
        assert!(ev.visible_to(&mgr));
        ev.site = Some(SiteId::new("elsewhere").expect("id"));
        assert!(!ev.visible_to(&mgr));
    }

    #[test]
    fn doors_and_presence_decode_and_telemetry_is_ignored() {
        let door = Uplink {
            cabinet: cab(),
            boot: 1,
            seq: 1,
            ts: 1,
            body: UplinkBody::Door(locker_schemas::Door {
                compartment: locker_schemas::CompartmentId(3),
                open: true,
                cause: locker_schemas::DoorCause::LocalAccess,
                parcel: None,
            }),
        };
        let topic = Topic::Up(cab(), UpKind::Door).to_string();
        let ev = LiveEvent::decode(topic.as_bytes(), &encode_uplink(&door).expect("cbor"))
            .expect("door");
        assert_eq!(
            (ev.stream, ev.compartment, ev.state.as_deref()),
            ("door", Some(3), Some("open"))
        );
        let carrier = Scope::Carrier {
            carrier: CarrierId::new("dhl").expect("id"),
        };
        assert!(!ev.visible_to(&carrier), "doors may be another carrier's");

        let p = StreamMessage::Presence(Presence {
            online: false,
            ts: 1,
        });
        let topic = Topic::Stream(cab(), StreamKind::Presence).to_string();
        let ev = LiveEvent::decode(topic.as_bytes(), &encode_stream(&p).expect("cbor"))
            .expect("presence");
        assert_eq!(ev.state.as_deref(), Some("offline"));

        let topic = Topic::Up(cab(), UpKind::Power).to_string();
        assert!(LiveEvent::decode(topic.as_bytes(), b"\x80").is_none());
        assert!(LiveEvent::decode(b"not/a/topic", b"").is_none());
        let topic = Topic::Up(cab(), UpKind::Door).to_string();
        assert!(LiveEvent::decode(topic.as_bytes(), b"\xff garbage").is_none());
    }

    #[tokio::test]
    async fn subscribers_are_bounded_and_counted() {
        let m = LiveMetrics::new(&Registry::new()).expect("metrics");
        let h = LiveHandle::new(16, 1, m.clone(), CancellationToken::new());
        let a = h.subscribe().expect("first");
        assert!(matches!(h.subscribe(), Err(LiveError::Busy(1))));
        assert_eq!(m.clients.get(), 1);
        drop(a);
        assert_eq!(m.clients.get(), 0);
        let mut b = h.subscribe().expect("room again");
        h.send(parcel("dhl"));
        match b.rx.recv().await.expect("event") {
            Change::Event(ev) => assert_eq!(ev.order.as_deref(), Some("ORD-1")),
            Change::Resync => panic!("no link in this test: no resync"),
        }
    }
}
