//! The integrator's side of webhooks, for the fleet run and `bench webhooks`: an HTTP receiver
//! on 127.0.0.1 with one or more endpoints (`/hooks/{n}`, one per subscription). Every request
//! is verified with Svix's reference Standard Webhooks library (the `standardwebhooks` crate,
//! an implementation independent of the gateway's), deduplicated by `webhook-id` (delivery is
//! at least once), and its first occurrence recorded: per cabinet the sequence of parcel-trail
//! events (`evt_parcel_<pos>...`) in arrival order, and the time from the event's `at` to its
//! receipt. A bad signature is answered 401 and counted; while [`HookReceiver::set_down`] holds,
//! every request is answered 503 (a receiver being deployed), which the gateway must retry.
//!
//! [`check_webhooks`] compares what an endpoint received with the order transitions the parcel
//! trail recorded (read by [`trail_expectations`]) for the fleet's invariant report.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use serde_json::Value;
use standardwebhooks::Webhook;

use super::alerts::now_ms;
use super::api::{Api, ApiError};

/// Why the receiver could not start or subscribe.
#[derive(Debug, thiserror::Error)]
pub enum HooksError {
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("no endpoint {0}")]
    NoEndpoint(usize),
    #[error("the gateway refused the subscription: {0}")]
    Subscribe(#[from] ApiError),
    #[error("the subscription answer has no {0}")]
    Answer(&'static str),
    #[error("secret: {0}")]
    Secret(String),
}

/// One event as first received.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    pub id: String,
    pub kind: String,
    /// The event's time (ms) and when it was received (ms).
    pub at: u64,
    pub received_ms: u64,
}

/// What one endpoint saw.
#[derive(Default)]
struct Seen {
    ids: HashSet<String>,
    /// Cabinet (`""` when the event has none) -> parcel-trail events in arrival order.
    by_cabinet: HashMap<String, Vec<Received>>,
    /// First occurrences by event id: (type, cabinet).
    events: HashMap<String, (String, String)>,
    latency_ms: Option<hdrhistogram::Histogram<u64>>,
}

/// One endpoint: its verifier (set once the subscription's secret is known) and what it saw.
#[derive(Default)]
struct Endpoint {
    verifier: Mutex<Option<Arc<Webhook>>>,
    seen: Mutex<Seen>,
    requests: AtomicU64,
    unique: AtomicU64,
    duplicates: AtomicU64,
    bad_signatures: AtomicU64,
    bad_bodies: AtomicU64,
    refused_down: AtomicU64,
}

struct Shared {
    endpoints: Vec<Endpoint>,
    down: AtomicBool,
    logged_bad: AtomicBool,
}

/// Counters of one endpoint (or of all, summed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HookCounts {
    /// Requests answered (any status).
    pub requests: u64,
    /// Events received for the first time (after dedup by `webhook-id`).
    pub unique: u64,
    /// Requests for an event already received (redeliveries).
    pub duplicates: u64,
    /// Requests whose signature did not verify (answered 401).
    pub bad_signatures: u64,
    /// Verified requests whose body was not an event, or whose body id was not the header's.
    pub bad_bodies: u64,
    /// Requests refused while the receiver was down (answered 503).
    pub refused_down: u64,
}

impl std::ops::AddAssign for HookCounts {
    fn add_assign(&mut self, o: Self) {
        self.requests += o.requests;
        self.unique += o.unique;
        self.duplicates += o.duplicates;
        self.bad_signatures += o.bad_signatures;
        self.bad_bodies += o.bad_bodies;
        self.refused_down += o.refused_down;
    }
}

/// The receiver: an axum server on 127.0.0.1:0.
pub struct HookReceiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for HookReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HookReceiver({})", self.addr)
    }
}

impl Drop for HookReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl HookReceiver {
    /// Starts a receiver with `endpoints` endpoints (at least one).
    pub async fn start(endpoints: usize) -> Result<Self, HooksError> {
        let shared = Arc::new(Shared {
            endpoints: (0..endpoints.max(1)).map(|_| Endpoint::default()).collect(),
            down: AtomicBool::new(false),
            logged_bad: AtomicBool::new(false),
        });
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let addr = listener.local_addr()?;
        let app = Router::new()
            .route("/hooks/{n}", post(receive))
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::warn!(error = %e, "webhook receiver stopped");
            }
        });
        Ok(Self { addr, shared, task })
    }

    /// The URL of endpoint `n`.
    pub fn url(&self, n: usize) -> String {
        format!("http://{}/hooks/{n}", self.addr)
    }

    /// How many endpoints there are.
    pub fn endpoints(&self) -> usize {
        self.shared.endpoints.len()
    }

    /// Sets the `whsec_...` secret endpoint `n` verifies with.
    pub fn set_secret(&self, n: usize, secret: &str) -> Result<(), HooksError> {
        let ep = self
            .shared
            .endpoints
            .get(n)
            .ok_or(HooksError::NoEndpoint(n))?;
        let w = Webhook::new(secret).map_err(|e| HooksError::Secret(e.to_string()))?;
        *ep.verifier.lock().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(w));
        Ok(())
    }

    /// Refuses every request with 503 while `down` (a receiver being deployed).
    pub fn set_down(&self, down: bool) {
        self.shared.down.store(down, Ordering::Relaxed);
    }

    /// The counters of endpoint `n` (all zero for an unknown one).
    pub fn counts(&self, n: usize) -> HookCounts {
        self.shared
            .endpoints
            .get(n)
            .map(Endpoint::counts)
            .unwrap_or_default()
    }

    /// The counters of all endpoints together.
    pub fn total(&self) -> HookCounts {
        let mut t = HookCounts::default();
        for e in &self.shared.endpoints {
            t += e.counts();
        }
        t
    }

    /// Endpoint `n`'s parcel-trail events per cabinet, in arrival order (first occurrences).
    pub fn sequences(&self, n: usize) -> HashMap<String, Vec<Received>> {
        self.shared
            .endpoints
            .get(n)
            .map(|e| e.seen().by_cabinet.clone())
            .unwrap_or_default()
    }

    /// Endpoint `n`'s first occurrences by event id: (type, cabinet or `""`).
    pub fn received(&self, n: usize) -> HashMap<String, (String, String)> {
        self.shared
            .endpoints
            .get(n)
            .map(|e| e.seen().events.clone())
            .unwrap_or_default()
    }

    /// The time from each event's `at` to its first receipt, ms, over all endpoints.
    pub fn latency_ms(&self) -> Option<hdrhistogram::Histogram<u64>> {
        let mut out: Option<hdrhistogram::Histogram<u64>> = None;
        for e in &self.shared.endpoints {
            if let Some(h) = &e.seen().latency_ms {
                match &mut out {
                    Some(o) => {
                        let _ = o.add(h);
                    }
                    None => out = Some(h.clone()),
                }
            }
        }
        out
    }

    /// Forgets what every endpoint saw (counters included).
    pub fn reset(&self) {
        for e in &self.shared.endpoints {
            *e.seen.lock().unwrap_or_else(PoisonError::into_inner) = Seen::default();
            for c in [
                &e.requests,
                &e.unique,
                &e.duplicates,
                &e.bad_signatures,
                &e.bad_bodies,
                &e.refused_down,
            ] {
                c.store(0, Ordering::Relaxed);
            }
        }
    }

    /// Subscribes endpoint `n` to `events` at the gateway (`POST /v1/webhooks`) and verifies
    /// with the secret the gateway made; returns the subscription id.
    pub async fn subscribe(
        &self,
        api: &Api,
        n: usize,
        events: &[&str],
        description: &str,
    ) -> Result<String, HooksError> {
        let body = serde_json::json!({
            "url": self.url(n),
            "events": events,
            "description": description,
        });
        let v = api.post("/v1/webhooks", &body, None).await?;
        let id = v["id"].as_str().ok_or(HooksError::Answer("id"))?;
        let secret = v["secret"].as_str().ok_or(HooksError::Answer("secret"))?;
        self.set_secret(n, secret)?;
        Ok(id.to_owned())
    }
}

impl Endpoint {
    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn counts(&self) -> HookCounts {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        HookCounts {
            requests: l(&self.requests),
            unique: l(&self.unique),
            duplicates: l(&self.duplicates),
            bad_signatures: l(&self.bad_signatures),
            bad_bodies: l(&self.bad_bodies),
            refused_down: l(&self.refused_down),
        }
    }
}

/// The trail position of a parcel event id (`evt_parcel_<pos>` with an optional `_x`, `_d`).
pub fn parcel_pos(id: &str) -> Option<u64> {
    let rest = id.strip_prefix("evt_parcel_")?;
    rest.split('_').next()?.parse().ok()
}

/// What the handler decided about one request.
#[derive(Debug, PartialEq)]
enum Verdict {
    Down,
    NoSecret,
    BadSignature,
    BadBody,
    Duplicate,
    New,
}

/// Verifies one request against an endpoint and records it.
fn judge(ep: &Endpoint, down: bool, headers: &HeaderMap, body: &[u8]) -> Verdict {
    ep.requests.fetch_add(1, Ordering::Relaxed);
    if down {
        ep.refused_down.fetch_add(1, Ordering::Relaxed);
        return Verdict::Down;
    }
    let Some(w) = ep
        .verifier
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
    else {
        return Verdict::NoSecret;
    };
    if w.verify(body, headers).is_err() {
        ep.bad_signatures.fetch_add(1, Ordering::Relaxed);
        return Verdict::BadSignature;
    }
    let id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let event: Option<Value> = serde_json::from_slice(body).ok();
    let Some(event) = event.filter(|e| e["id"].as_str() == Some(id) && e["type"].is_string())
    else {
        ep.bad_bodies.fetch_add(1, Ordering::Relaxed);
        return Verdict::BadBody;
    };
    let now = now_ms();
    let mut seen = ep.seen();
    if !seen.ids.insert(id.to_owned()) {
        drop(seen);
        ep.duplicates.fetch_add(1, Ordering::Relaxed);
        return Verdict::Duplicate;
    }
    let kind = event["type"].as_str().unwrap_or_default().to_owned();
    let cabinet = event["cabinet"].as_str().unwrap_or_default().to_owned();
    let at = event["at"].as_u64().unwrap_or(0);
    if seen.latency_ms.is_none() {
        seen.latency_ms = hdrhistogram::Histogram::new(3).ok();
    }
    if let Some(h) = seen.latency_ms.as_mut() {
        let _ = h.record(now.saturating_sub(at).max(1));
    }
    if parcel_pos(id).is_some() {
        seen.by_cabinet
            .entry(cabinet.clone())
            .or_default()
            .push(Received {
                id: id.to_owned(),
                kind: kind.clone(),
                at,
                received_ms: now,
            });
    }
    seen.events.insert(id.to_owned(), (kind, cabinet));
    drop(seen);
    ep.unique.fetch_add(1, Ordering::Relaxed);
    Verdict::New
}

async fn receive(
    State(sh): State<Arc<Shared>>,
    Path(n): Path<usize>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let Some(ep) = sh.endpoints.get(n) else {
        return StatusCode::NOT_FOUND;
    };
    match judge(ep, sh.down.load(Ordering::Relaxed), &headers, &body) {
        Verdict::Down | Verdict::NoSecret => StatusCode::SERVICE_UNAVAILABLE,
        Verdict::BadSignature | Verdict::BadBody => {
            if !sh.logged_bad.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    endpoint = n,
                    "webhook refused: bad signature or body (logged once; see the counters)"
                );
            }
            StatusCode::UNAUTHORIZED
        }
        Verdict::Duplicate | Verdict::New => StatusCode::NO_CONTENT,
    }
}

/// The description of the fleet's subscription (earlier runs' are deleted at start).
pub const FLEET_HOOK: &str = "locker-sim fleet: every event";

/// How long [`super::Fleet::verify`] waits for the last webhooks at most.
pub const DRAIN_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// The fleet's webhook subscription: its receiver (one endpoint), its id, and the trail
/// position it was created at (the order events after it must all arrive).
#[derive(Debug)]
pub struct FleetHooks {
    pub receiver: HookReceiver,
    pub id: String,
    pub trail_from: u64,
}

impl FleetHooks {
    /// Starts the receiver and subscribes it to every event (`*`), after deleting the fleet
    /// subscriptions of earlier runs on the same gateway state.
    pub async fn subscribe(api: &Api) -> Result<Self, HooksError> {
        if let Ok(v) = api.get("/v1/webhooks").await {
            for w in v["webhooks"].as_array().into_iter().flatten() {
                if let (Some(id), Some(FLEET_HOOK)) = (w["id"].as_str(), w["description"].as_str())
                {
                    api.delete(&format!("/v1/webhooks/{id}")).await?;
                }
            }
        }
        let (_, trail_from) = trail_expectations(api, 0).await?;
        let receiver = HookReceiver::start(1).await?;
        let id = receiver.subscribe(api, 0, &["*"], FLEET_HOOK).await?;
        Ok(Self {
            receiver,
            id,
            trail_from,
        })
    }

    /// Deliveries waiting at the gateway for this subscription (in flight included).
    pub async fn pending(&self, api: &Api) -> Result<u64, ApiError> {
        let v = api.get(&format!("/v1/webhooks/{}", self.id)).await?;
        let h = &v["health"];
        Ok(h["pending"].as_u64().unwrap_or(0) + h["in_flight"].as_u64().unwrap_or(0))
    }

    /// Waits (at most `limit`) until every order event of the trail arrived and nothing is
    /// pending at the gateway, then checks the webhook invariants ([`check_webhooks`]).
    pub async fn verify(
        &self,
        api: &Api,
        limit: std::time::Duration,
        mut problem: impl FnMut(String),
    ) -> WebhookSummary {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let expected = trail_expectations(api, self.trail_from).await;
            let pending = self.pending(api).await;
            let received = self.receiver.received(0);
            let done = tokio::time::Instant::now() >= deadline;
            match (expected, pending) {
                (Ok((expected, _)), Ok(pending)) => {
                    let all = expected.iter().all(|e| received.contains_key(&e.id));
                    if (all && pending == 0) || done {
                        return check_webhooks(
                            &expected,
                            &received,
                            &self.receiver.sequences(0),
                            self.receiver.counts(0),
                            pending,
                            problem,
                        );
                    }
                }
                (Err(e), _) | (_, Err(e)) if done => {
                    problem(format!("webhooks not checked: {e}"));
                    return WebhookSummary {
                        note: e.to_string(),
                        ..WebhookSummary::default()
                    };
                }
                _ => {}
            }
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
    }
}

/// An event the parcel trail says an integrator must receive.
#[derive(Debug, Clone, PartialEq)]
pub struct Expected {
    pub id: String,
    pub kind: String,
    pub cabinet: String,
}

/// The events the parcel trail's records after position `after` must produce: one
/// `order.<state>` per transition that changed the state, and an `order.exception` per
/// record with an exception (`GET /v1/parcel-audit`, paged). Also returns the last position.
pub async fn trail_expectations(api: &Api, after: u64) -> Result<(Vec<Expected>, u64), ApiError> {
    let mut out = Vec::new();
    let mut cursor = after;
    loop {
        let v = api
            .get(&format!("/v1/parcel-audit?after={cursor}&limit=1000"))
            .await?;
        let records = v["records"].as_array().cloned().unwrap_or_default();
        if records.is_empty() {
            return Ok((out, cursor));
        }
        for r in &records {
            let Some(pos) = r["pos"].as_u64() else {
                continue;
            };
            cursor = cursor.max(pos);
            if r["what"] != "order" {
                continue;
            }
            let Some(to) = r["to"].as_str() else {
                continue;
            };
            let cabinet = r["cabinet"].as_str().unwrap_or_default().to_owned();
            if r["from"].as_str() != Some(to) {
                out.push(Expected {
                    id: format!("evt_parcel_{pos}"),
                    kind: format!("order.{to}"),
                    cabinet: cabinet.clone(),
                });
            }
            if !r["exception"].is_null() {
                out.push(Expected {
                    id: format!("evt_parcel_{pos}_x"),
                    kind: "order.exception".into(),
                    cabinet,
                });
            }
        }
    }
}

/// The webhook invariants' figures, for the report.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WebhookSummary {
    /// Whether the run had a subscription (else nothing was checked, and `note` says why).
    pub checked: bool,
    pub note: String,
    /// Order events the trail recorded, and those received (after dedup).
    pub expected: u64,
    pub received: u64,
    /// Events received in all (any type, after dedup) and by type.
    pub unique: u64,
    pub by_type: BTreeMap<String, u64>,
    pub counts: HookCounts,
    /// Cabinets whose parcel events were checked for order.
    pub cabinets_ordered: u64,
    /// Deliveries still waiting at the gateway when checked.
    pub pending_at_end: u64,
}

/// Checks what an endpoint received against the trail: every expected event received (of
/// its type, for its cabinet), no bad signature or body, per cabinet the parcel events'
/// positions never going back in arrival order, and nothing pending at the gateway.
/// Each violation goes to `problem`.
pub fn check_webhooks(
    expected: &[Expected],
    received: &HashMap<String, (String, String)>,
    sequences: &HashMap<String, Vec<Received>>,
    counts: HookCounts,
    pending: u64,
    mut problem: impl FnMut(String),
) -> WebhookSummary {
    let mut s = WebhookSummary {
        checked: true,
        expected: expected.len() as u64,
        unique: received.len() as u64,
        counts,
        pending_at_end: pending,
        ..WebhookSummary::default()
    };
    for (kind, _) in received.values() {
        *s.by_type.entry(kind.clone()).or_default() += 1;
    }
    let mut missing = 0u64;
    for e in expected {
        match received.get(&e.id) {
            Some((kind, cabinet)) if *kind == e.kind && *cabinet == e.cabinet => s.received += 1,
            Some((kind, cabinet)) => problem(format!(
                "webhook {}: received as {kind} at {cabinet:?}, the trail says {} at {:?}",
                e.id, e.kind, e.cabinet
            )),
            None => {
                missing += 1;
                if missing <= 10 {
                    problem(format!(
                        "webhook {} ({} at {}) never arrived",
                        e.id, e.kind, e.cabinet
                    ));
                }
            }
        }
    }
    if missing > 10 {
        problem(format!(
            "... and {} more webhooks never arrived",
            missing - 10
        ));
    }
    if counts.bad_signatures > 0 || counts.bad_bodies > 0 {
        problem(format!(
            "webhooks: {} requests with a bad signature and {} with a bad body",
            counts.bad_signatures, counts.bad_bodies
        ));
    }
    for (cabinet, seq) in sequences {
        s.cabinets_ordered += 1;
        let mut last: Option<(u64, &str)> = None;
        for r in seq {
            let Some(pos) = parcel_pos(&r.id) else {
                continue;
            };
            if let Some((prev, prev_id)) = last {
                if pos < prev {
                    problem(format!(
                        "webhooks for {cabinet} out of order: {} arrived after {prev_id}",
                        r.id
                    ));
                }
            }
            last = Some((pos, &r.id));
        }
    }
    if pending > 0 {
        problem(format!(
            "webhooks: {pending} deliveries still pending at the gateway"
        ));
    }
    s
}

impl std::fmt::Display for WebhookSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if !self.checked {
            return write!(f, "  webhooks: not checked ({})", self.note);
        }
        let types: Vec<String> = self
            .by_type
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        write!(
            f,
            "  webhooks (signatures verified by the standardwebhooks crate, dedup by webhook-id): {} of {} order events of the trail received, in order per cabinet ({} cabinets); {} events in all ({}); {} requests, {} redeliveries, {} refused while the receiver was down, {} bad signatures, {} bad bodies, {} pending at the gateway",
            self.received,
            self.expected,
            self.cabinets_ordered,
            self.unique,
            types.join(", "),
            self.counts.requests,
            self.counts.duplicates,
            self.counts.refused_down,
            self.counts.bad_signatures,
            self.counts.bad_bodies,
            self.pending_at_end
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use locker_gateway::outbound::sign;

    /// Headers as the gateway's outbox signs them (its own signer, not the verifier's).
    fn signed(secret: &str, id: &str, body: &[u8]) -> HeaderMap {
        let ts = now_ms() / 1000;
        let mut h = HeaderMap::new();
        let v = |s: &str| HeaderValue::from_str(s).expect("header");
        h.insert("webhook-id", v(id));
        h.insert("webhook-timestamp", v(&ts.to_string()));
        h.insert(
            "webhook-signature",
            v(&sign::header(&[secret], id, ts, body)),
        );
        h
    }

    fn endpoint(secret: &str) -> Endpoint {
        let ep = Endpoint::default();
        *ep.verifier.lock().expect("lock") = Some(Arc::new(Webhook::new(secret).expect("secret")));
        ep
    }

    const BODY: &[u8] =
        br#"{"id":"evt_parcel_7","type":"order.ready","at":1,"cabinet":"CAB-000001","data":{}}"#;

    #[test]
    fn a_signed_event_is_taken_once_and_redeliveries_are_dropped() {
        let secret = sign::new_secret();
        let ep = endpoint(&secret);
        let h = signed(&secret, "evt_parcel_7", BODY);
        assert_eq!(judge(&ep, false, &h, BODY), Verdict::New);
        assert_eq!(judge(&ep, false, &h, BODY), Verdict::Duplicate);
        assert_eq!(judge(&ep, true, &h, BODY), Verdict::Down);
        let c = ep.counts();
        assert_eq!((c.unique, c.duplicates, c.refused_down), (1, 1, 1));
        assert_eq!(ep.seen().by_cabinet["CAB-000001"][0].kind, "order.ready");
    }

    #[test]
    fn a_tampered_body_or_a_wrong_secret_fails_verification() {
        let secret = sign::new_secret();
        let ep = endpoint(&secret);
        let h = signed(&secret, "evt_parcel_7", BODY);
        let tampered = String::from_utf8_lossy(BODY).replace("order.ready", "order.picked_up");
        assert_eq!(
            judge(&ep, false, &h, tampered.as_bytes()),
            Verdict::BadSignature
        );
        let other = signed(&sign::new_secret(), "evt_parcel_7", BODY);
        assert_eq!(judge(&ep, false, &other, BODY), Verdict::BadSignature);
        // the id in the headers is signed too
        let mut moved = h.clone();
        moved.insert("webhook-id", HeaderValue::from_static("evt_parcel_8"));
        assert_eq!(judge(&ep, false, &moved, BODY), Verdict::BadSignature);
        assert_eq!(ep.counts().bad_signatures, 3);
        assert_eq!(ep.counts().unique, 0);
        // and the genuine one still passes
        assert_eq!(judge(&ep, false, &h, BODY), Verdict::New);
    }

    #[test]
    fn missing_and_out_of_order_events_are_violations() {
        let rec = |id: &str| Received {
            id: id.into(),
            kind: "order.ready".into(),
            at: 0,
            received_ms: 0,
        };
        let exp = |id: &str| Expected {
            id: id.into(),
            kind: "order.ready".into(),
            cabinet: "C".into(),
        };
        let expected = vec![
            exp("evt_parcel_1"),
            exp("evt_parcel_2"),
            exp("evt_parcel_3"),
        ];
        let received: HashMap<String, (String, String)> = ["evt_parcel_1", "evt_parcel_3"]
            .iter()
            .map(|i| ((*i).to_owned(), ("order.ready".into(), "C".into())))
            .collect();
        let seq = HashMap::from([(
            "C".to_owned(),
            vec![
                rec("evt_parcel_3"),
                rec("evt_parcel_3_x"),
                rec("evt_parcel_1"),
            ],
        )]);
        let mut problems = Vec::new();
        let s = check_webhooks(&expected, &received, &seq, HookCounts::default(), 0, |p| {
            problems.push(p)
        });
        assert_eq!(s.received, 2);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("evt_parcel_2"), "{problems:?}");
        assert!(problems[1].contains("out of order"), "{problems:?}");
        let mut clean = Vec::new();
        let in_order = HashMap::from([(
            "C".to_owned(),
            vec![
                rec("evt_parcel_1"),
                rec("evt_parcel_3"),
                rec("evt_parcel_3_x"),
            ],
        )]);
        check_webhooks(
            &expected[..1],
            &received,
            &in_order,
            HookCounts::default(),
            0,
            |p| clean.push(p),
        );
        assert!(clean.is_empty(), "{clean:?}");
        assert_eq!(parcel_pos("evt_parcel_12_d"), Some(12));
        assert_eq!(parcel_pos("evt_alert_12"), None);
    }
}
