//! The simulated people, following real orders of the gateway's parcel domain:
//! - carriers create orders through the API with their own tokens (one at a time, or a batch
//!   for a courier's route through a site), in random sizes, and cancel a few;
//! - a courier deposits at the cabinet (badge, then the parcel's barcode: the cabinet opens the
//!   order's compartment from its credential set, also while offline) or, with the gateway
//!   reachable, by a remote unlock of the order (`POST /v1/orders/{id}/unlock`, reason "courier
//!   at the door"); then puts the parcel in (the board's parcel sensor) and closes the door;
//! - recipients learn their PIN and QR token from the notification outbox (see
//!   [`super::ledger`]), type the PIN at the keypad or show the QR token once the cabinet holds
//!   the credential set with their code, take the parcel out and close the door; some do so
//!   while their cabinet is offline (the cabinet's credential cache), and the pickup reaches the
//!   gateway when the link returns;
//! - some recipients never come: most of those orders are created with a short pickup window
//!   (`pickup_window_min`), expire (the `expired` notice), and a courier of the carrier collects
//!   the parcel (badge and `key:collect`, also offline, or a remote unlock) after typing the
//!   recipient's old PIN once to see the cabinet refuse it; for the others the carrier recalls
//!   the order (`/return`) after a while and a courier collects it the same way; a few
//!   recipients get their window extended.
//!
//! Couriers and recipients act at the cabinet only once it holds the gateway's current
//! credential set (offline: one it was seen holding), so no wrong code counts against the
//! keypad lockout.
//!
//! One scenario runs per cabinet at a time (the caller claims the cabinet).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use locker_agent::Access;
use locker_schemas::{CompartmentId, ScanSource};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use super::api::{Api, ApiError};
use super::cabinet::SimCabinet;
use super::couriers::{badge_deposit, collect_expired, deposit, recall_and_collect};
use super::ledger::{Ledger, Pickup, SimOrder, Stage};
use super::world::World;

/// Counters of what the people did.
#[derive(Debug, Default)]
pub struct ScenarioStats {
    pub orders_created: AtomicU64,
    pub batches: AtomicU64,
    /// Orders created without a compartment free (cancelled right away by their carrier).
    pub no_room: AtomicU64,
    pub cancels: AtomicU64,
    pub deposits_api: AtomicU64,
    pub deposits_badge: AtomicU64,
    /// Deposits while the cabinet was offline (included in the badge ones).
    pub deposits_offline: AtomicU64,
    pub pickups_pin: AtomicU64,
    pub pickups_qr: AtomicU64,
    /// Pickups while the cabinet was offline (included in the two above).
    pub pickups_offline: AtomicU64,
    pub extends: AtomicU64,
    pub recalls: AtomicU64,
    pub collected: AtomicU64,
    /// Orders created with a short pickup window, and those collected after they expired
    /// (included in `collected`).
    pub short_windows: AtomicU64,
    pub collected_expired: AtomicU64,
    /// Collections by a courier at a cabinet that was offline (badge and `key:collect` from
    /// the cached credential set; included in `collected`).
    pub collected_offline: AtomicU64,
    /// A recipient who came before the cabinet held their code (they come back later).
    pub creds_not_yet: AtomicU64,
    /// API calls that failed (e.g. during a gateway restart).
    pub api_errors: AtomicU64,
    /// Remote unlocks whose outcome was not `opened` (or not known) when the call returned.
    pub commands_unresolved: AtomicU64,
    /// A code refused at the cabinet, or a door that did not open in time.
    pub no_access: AtomicU64,
    /// Remote unlocks whose door the courier saw open before the API call returned, and the
    /// longest time from seeing it open to the call's answer, ms.
    pub door_before_answer: AtomicU64,
    pub answer_after_door_max_ms: AtomicU64,
}

impl ScenarioStats {
    /// Deposits and pickups done.
    pub fn done(&self) -> (u64, u64) {
        (
            self.deposits_api.load(Ordering::Relaxed) + self.deposits_badge.load(Ordering::Relaxed),
            self.pickups_pin.load(Ordering::Relaxed) + self.pickups_qr.load(Ordering::Relaxed),
        )
    }
}

/// One plain line: what the people did.
impl std::fmt::Display for ScenarioStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let (deposits, pickups) = self.done();
        write!(
            f,
            "{} orders created ({} batches), {} cancelled ({} for want of room), {deposits} \
             deposits ({} by remote unlock, {} by badge and barcode, {} offline), {pickups} \
             pickups ({} by PIN, {} by QR, {} offline), \
             {} windows extended, {} short windows, {} recalled and {} collected by couriers ({} \
             after expiry, {} offline), {} recipients early \
             for their code, {} refused or late doors, {} API errors, {} unlocks without \
             `opened` when the call returned, {} remote unlocks whose door opened before the \
             call returned (its answer up to {} ms after the door)",
            n(&self.orders_created),
            n(&self.batches),
            n(&self.cancels),
            n(&self.no_room),
            n(&self.deposits_api),
            n(&self.deposits_badge),
            n(&self.deposits_offline),
            n(&self.pickups_pin),
            n(&self.pickups_qr),
            n(&self.pickups_offline),
            n(&self.extends),
            n(&self.short_windows),
            n(&self.recalls),
            n(&self.collected),
            n(&self.collected_expired),
            n(&self.collected_offline),
            n(&self.creds_not_yet),
            n(&self.no_access),
            n(&self.api_errors),
            n(&self.commands_unresolved),
            n(&self.door_before_answer),
            n(&self.answer_after_door_max_ms),
        )
    }
}

/// What scenarios share.
#[derive(Debug)]
pub struct ScenarioCtx {
    /// The operator's client (the notification channel and the simulator's own reads).
    pub api: Api,
    pub world: World,
    /// Each carrier's client.
    pub carriers: Vec<Api>,
    pub ledger: Ledger,
    pub stats: ScenarioStats,
    /// Every command created through the API: (cabinet index, command id).
    pub commands: Mutex<Vec<(usize, String)>>,
    /// Every cabinet of the fleet (for a courier's route through a site).
    pub cabinets: Vec<Arc<SimCabinet>>,
    /// Locks per cabinet.
    pub locks: u16,
    /// A no-show's order is recalled this long after it became ready.
    pub recall_after: Duration,
    /// Share of orders whose recipient never comes and whose parcel expires (created with
    /// `pickup_window_min` = `expire_window_min`), and share recalled by the carrier instead.
    pub expire_share: f64,
    pub expire_window_min: u32,
    pub recall_share: f64,
    /// Tracking numbers and idempotency keys: `{run}-{n}`.
    pub run: u32,
    pub next: AtomicU64,
}

impl ScenarioCtx {
    /// A carrier's client (the operator's for an order of a carrier the simulation does not
    /// play, left over from an earlier run).
    pub fn client(&self, carrier: usize) -> &Api {
        self.carriers.get(carrier).unwrap_or(&self.api)
    }
}

pub(super) async fn wait_door(cab: &SimCabinet, i: usize, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if cab.board.door_open(i).unwrap_or(false) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

/// The person closes the door after a moment, and the cabinet sees it closed.
///
/// A person takes seconds at an open door; the simulated one waits until the cabinet has seen
/// the door open (its status) before closing it, so a door is never opened and shut between two
/// polls of the board (the agent reports a local access when it sees the door open).
pub(super) async fn close(cab: &SimCabinet, i: usize) {
    let c = CompartmentId(u16::try_from(i + 1).unwrap_or(1));
    let deadline = tokio::time::Instant::now() + DOOR_WAIT;
    while tokio::time::Instant::now() < deadline
        && !cab.status().is_some_and(|s| s.open_doors.contains(&c))
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = cab.board.close_door(i);
    let deadline = tokio::time::Instant::now() + DOOR_WAIT;
    while tokio::time::Instant::now() < deadline {
        if cab.status().is_some_and(|s| !s.open_doors.contains(&c)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub(super) const DOOR_WAIT: Duration = Duration::from_secs(5);
/// A recipient comes at the earliest this long after the notice.
const RECIPIENT_DELAY: Duration = Duration::from_secs(3);
/// After a failed unlock call (the gateway restarting) the command may still run within its
/// time to live: the courier waits that long at the door.
pub(super) const UNLOCK_TTL_MS: u64 = 10_000;
const SIZES: [(&str, f64); 4] = [("S", 0.5), ("M", 0.3), ("L", 0.15), ("XL", 0.05)];

/// Runs one scenario at cabinet `idx` (which the caller claimed) and releases it.
pub async fn run(idx: usize, cab: Arc<SimCabinet>, ctx: Arc<ScenarioCtx>) {
    let mut rng = StdRng::from_entropy();
    let online = cab.brief().is_some_and(|b| b.0) && !cab.link.is_down();
    let orders = ctx.ledger.at(idx);
    // recipients come a while after their notice (any time while the cabinet is offline)
    let ready: Vec<&SimOrder> = orders
        .iter()
        .filter(|o| o.stage == Stage::Ready && !o.no_show && o.pin.is_some())
        .filter(|o| online || o.creds_ok)
        .filter(|o| !online || o.ready_at.is_some_and(|t| t.elapsed() >= RECIPIENT_DELAY))
        .collect();
    let reserved: Vec<&SimOrder> = orders
        .iter()
        .filter(|o| o.stage == Stage::Reserved && (online || o.creds_ok))
        .collect();
    let recall: Vec<&SimOrder> = orders
        .iter()
        .filter(|o| {
            o.stage == Stage::Recalled
                || (o.stage == Stage::Ready
                    && (o.leftover
                        || (o.no_show
                            && !o.short_window
                            && o.ready_at.is_some_and(|t| t.elapsed() >= ctx.recall_after))))
        })
        .collect();
    // expired parcels wait for a courier (offline too, once the cabinet holds their collect
    // credential)
    let expired: Vec<&SimOrder> = orders
        .iter()
        .filter(|o| o.stage == Stage::Expired && (online || o.creds_ok))
        .collect();
    if !ready.is_empty() && (!online || rng.gen_bool(0.6)) {
        let o = ready[rng.gen_range(0..ready.len())].clone();
        pick_up(idx, &cab, &ctx, &o, online, &mut rng).await;
    } else if !reserved.is_empty() && (!online || rng.gen_bool(0.8)) {
        let o = reserved[rng.gen_range(0..reserved.len())].clone();
        if !online || rng.gen_bool(0.5) {
            badge_deposit(idx, &cab, &ctx, &o, online, &mut rng).await;
        } else {
            deposit(idx, &cab, &ctx, &o).await;
        }
    } else if !expired.is_empty() && (!online || rng.gen_bool(0.7)) {
        let o = expired[rng.gen_range(0..expired.len())].clone();
        collect_expired(idx, &cab, &ctx, &o, online, &mut rng).await;
    } else if !online {
        // nothing else happens at an offline cabinet
    } else if let Some(o) = recall.first() {
        let o = (*o).clone();
        recall_and_collect(idx, &cab, &ctx, &o, &mut rng).await;
    } else if ctx.ledger.live_at(idx) + 2 < usize::from(ctx.locks) {
        create(idx, &ctx, &mut rng).await;
    }
    cab.release();
}

pub(super) fn api_error(ctx: &ScenarioCtx, what: &str, e: &ApiError) {
    tracing::debug!(error = %e, "{what} failed");
    ctx.stats.api_errors.fetch_add(1, Ordering::Relaxed);
}

/// A new order's JSON for cabinet `i` (its idempotency key makes a retry safe), with a short
/// pickup window if `short`.
fn new_order(ctx: &ScenarioCtx, i: usize, short: bool, rng: &mut StdRng) -> Value {
    let n = ctx.next.fetch_add(1, Ordering::Relaxed);
    let site = &ctx.world.sites[ctx.world.site_of[i]];
    let mut pick = rng.gen_range(0.0..1.0);
    let mut size = "S";
    for (s, p) in SIZES {
        size = s;
        if pick < p {
            break;
        }
        pick -= p;
    }
    let mut body = json!({
        "site": site.id,
        "cabinet": ctx.cabinets[i].id.as_str(),
        "size": size,
        "tracking": format!("SIM{:08X}{n:08}", ctx.run),
        "recipient": {"phone": format!("+49151{:07}", n % 10_000_000), "language": "de"},
        "idempotency_key": format!("sim-{:08x}-{n}", ctx.run),
    });
    if short {
        body["pickup_window_min"] = json!(ctx.expire_window_min);
    }
    body
}

/// POST with retries while the gateway is away (the idempotency keys make retries safe).
async fn post_retrying(client: &Api, ctx: &ScenarioCtx, path: &str, body: &Value) -> Option<Value> {
    for attempt in 0..8 {
        match client.post(path, body, None).await {
            Ok(v) => return Some(v),
            Err(e) => {
                api_error(ctx, path, &e);
                if matches!(&e, ApiError::Status { status, .. } if *status < 500) {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(500 << attempt.min(3))).await;
            }
        }
    }
    None
}

/// A carrier creates an order for cabinet `idx`, or (one time in four) a batch for a
/// courier's route through its site; a few are cancelled right away.
async fn create(idx: usize, ctx: &ScenarioCtx, rng: &mut StdRng) {
    let carrier = rng.gen_range(0..ctx.world.carriers.len());
    let client = &ctx.carriers[carrier];
    let mut targets = vec![idx];
    if rng.gen_bool(0.25) {
        let site = &ctx.world.sites[ctx.world.site_of[idx]];
        for _ in 0..3 {
            let j = site.cabinets[rng.gen_range(0..site.cabinets.len())];
            let up = ctx.cabinets[j].brief().is_some_and(|b| b.0);
            if up && !targets.contains(&j) && ctx.ledger.live_at(j) + 2 < usize::from(ctx.locks) {
                targets.push(j);
            }
        }
    }
    // who never comes: a short window that expires, or (fewer) a recall by the carrier
    let fates: Vec<(bool, bool)> = targets
        .iter()
        .map(|_| {
            let x = rng.gen_range(0.0..1.0);
            let short = x < ctx.expire_share;
            (short, short || x < ctx.expire_share + ctx.recall_share)
        })
        .collect();
    let bodies: Vec<Value> = targets
        .iter()
        .zip(&fates)
        .map(|(&j, &(short, _))| new_order(ctx, j, short, rng))
        .collect();
    let views: Vec<Value> = if bodies.len() == 1 {
        match post_retrying(client, ctx, "/v1/orders", &bodies[0]).await {
            Some(v) => vec![v],
            None => return,
        }
    } else {
        let Some(v) = post_retrying(
            client,
            ctx,
            "/v1/orders/batch",
            &json!({ "orders": bodies }),
        )
        .await
        else {
            return;
        };
        ctx.stats.batches.fetch_add(1, Ordering::Relaxed);
        v["results"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r.get("order").cloned())
            .collect()
    };
    for v in views {
        let short = v["pickup_window_min"].as_u64().is_some();
        let no_show = short
            || bodies
                .iter()
                .zip(&fates)
                .any(|(b, f)| f.1 && b["tracking"] == v["tracking"]);
        let Some(id) = v["id"].as_str().map(str::to_owned) else {
            continue;
        };
        let Some(j) = ctx
            .cabinets
            .iter()
            .position(|c| Some(c.id.as_str()) == v["cabinet"].as_str())
        else {
            continue;
        };
        ctx.stats.orders_created.fetch_add(1, Ordering::Relaxed);
        let reserved = v["state"] == "reserved";
        let mut o = SimOrder {
            id: id.clone(),
            carrier,
            tracking: v["tracking"].as_str().unwrap_or_default().to_owned(),
            cabinet: j,
            compartment: v["compartment"]
                .as_u64()
                .and_then(|c| u16::try_from(c).ok())
                .unwrap_or(0),
            stage: Stage::Reserved,
            pin: None,
            qr: None,
            no_show,
            ready_at: None,
            leftover: false,
            creds_ok: false,
            short_window: short,
            expired: false,
            late_pin_tried: false,
        };
        if short {
            ctx.stats.short_windows.fetch_add(1, Ordering::Relaxed);
        }
        let cancel = !reserved || rng.gen_bool(0.08);
        if cancel {
            if !reserved {
                ctx.stats.no_room.fetch_add(1, Ordering::Relaxed);
            }
            match client
                .post(&format!("/v1/orders/{id}/cancel"), &json!({}), None)
                .await
            {
                Ok(_) => {
                    ctx.stats.cancels.fetch_add(1, Ordering::Relaxed);
                    o.stage = Stage::Cancelled;
                }
                Err(e) => api_error(ctx, "cancel", &e),
            }
        }
        ctx.ledger.add(o);
    }
}

/// Whether the cabinet holds the credential set the gateway last built for it (waiting up to
/// `wait` for it); marks the cabinet's ready orders as known to it.
pub async fn creds_current(
    idx: usize,
    cab: &SimCabinet,
    ctx: &ScenarioCtx,
    wait: Duration,
) -> bool {
    let Ok(v) = ctx
        .api
        .get(&format!("/v1/cabinets/{}/compartments", cab.id))
        .await
    else {
        return false;
    };
    let want = v["creds_version"].as_u64().unwrap_or(u64::MAX);
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        if cab.status().is_some_and(|s| s.creds_version >= want) {
            ctx.ledger.creds_held(idx);
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The recipient types the PIN (or shows the QR token), takes the parcel and closes the door.
pub async fn pick_up(
    idx: usize,
    cab: &SimCabinet,
    ctx: &ScenarioCtx,
    o: &SimOrder,
    online: bool,
    rng: &mut StdRng,
) {
    if online {
        if rng.gen_bool(0.1) {
            // the recipient asked the carrier for more time first
            match ctx
                .client(o.carrier)
                .post(
                    &format!("/v1/orders/{}/extend", o.id),
                    &json!({"hours": 24}),
                    None,
                )
                .await
            {
                Ok(_) => {
                    ctx.stats.extends.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => api_error(ctx, "extend", &e),
            }
        }
        // the recipient's code reaches the cabinet with its credential set; a recipient who
        // comes before it does is told to come back (a wrong code would count against the
        // keypad's lockout)
        if !creds_current(idx, cab, ctx, DOOR_WAIT).await {
            ctx.stats.creds_not_yet.fetch_add(1, Ordering::Relaxed);
            return;
        }
    }
    let (source, code) = match (&o.qr, &o.pin) {
        (Some(qr), _) if rng.gen_bool(0.3) => (ScanSource::Qr, qr.clone()),
        (_, Some(pin)) => (ScanSource::Keypad, pin.clone()),
        _ => return,
    };
    let want = Access::Pickup(CompartmentId(o.compartment));
    match cab.scan(source, code).await {
        Ok(r) if r.access == want => {}
        Ok(r) => {
            tracing::warn!(cabinet = %cab.id, order = %o.id, access = ?r.access, "code refused");
            ctx.stats.no_access.fetch_add(1, Ordering::Relaxed);
            return;
        }
        Err(_) => return,
    }
    let i = usize::from(o.compartment.saturating_sub(1));
    if !wait_door(cab, i, DOOR_WAIT).await {
        ctx.stats.no_access.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let _ = cab.board.take_parcel(i);
    close(cab, i).await;
    ctx.ledger.picked_up(Pickup {
        order: o.id.clone(),
        cabinet: idx,
        compartment: o.compartment,
        offline: !online,
    });
    let counter = if source == ScanSource::Qr {
        &ctx.stats.pickups_qr
    } else {
        &ctx.stats.pickups_pin
    };
    counter.fetch_add(1, Ordering::Relaxed);
    if !online {
        ctx.stats.pickups_offline.fetch_add(1, Ordering::Relaxed);
    }
}
