//! Scripted people at a cabinet: couriers depositing (a remote unlock through the API, or their
//! badge at the scanner) and recipients picking up (the PIN on the keypad, or a remote unlock),
//! each opening the door, putting or taking the parcel, and leaving the door to close.
//!
//! Remote paths are used only while the cabinet is connected; offline cabinets are served from
//! their credential cache (the locker keeps working offline). One scenario runs per cabinet at
//! a time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use locker_agent::Access;
use locker_schemas::ScanSource;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::api::Api;
use super::cabinet::{courier_badge, SimCabinet};

/// Counters of what the people did.
#[derive(Debug, Default)]
pub struct ScenarioStats {
    pub deposits_api: AtomicU64,
    pub deposits_badge: AtomicU64,
    pub pickups_api: AtomicU64,
    pub pickups_pin: AtomicU64,
    /// API calls that failed (e.g. during a gateway restart).
    pub api_errors: AtomicU64,
    /// Commands whose outcome was not known when the API call returned.
    pub commands_unresolved: AtomicU64,
    /// Access refused or a door that did not open in time.
    pub no_access: AtomicU64,
    pub creds_syncs: AtomicU64,
}

impl ScenarioStats {
    /// Deposits and pickups done.
    pub fn done(&self) -> (u64, u64) {
        (
            self.deposits_api.load(Ordering::Relaxed) + self.deposits_badge.load(Ordering::Relaxed),
            self.pickups_api.load(Ordering::Relaxed) + self.pickups_pin.load(Ordering::Relaxed),
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
            "{deposits} deposits ({} through the API, {} by courier badge), {pickups} pickups \
             ({} by remote unlock, {} by PIN), {} credential syncs, {} refused or late doors, \
             {} API errors, {} commands without an outcome when the call returned",
            n(&self.deposits_api),
            n(&self.deposits_badge),
            n(&self.pickups_api),
            n(&self.pickups_pin),
            n(&self.creds_syncs),
            n(&self.no_access),
            n(&self.api_errors),
            n(&self.commands_unresolved),
        )
    }
}

/// What scenarios share.
#[derive(Debug)]
pub struct ScenarioCtx {
    pub api: Api,
    pub stats: ScenarioStats,
    /// Every command created through the API: (cabinet index, command id).
    pub commands: Mutex<Vec<(usize, String)>>,
}

async fn wait_door(cab: &SimCabinet, i: usize, limit: Duration) -> bool {
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
async fn close(cab: &SimCabinet, i: usize) {
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = cab.board.close_door(i);
    let c = locker_schemas::CompartmentId(u16::try_from(i + 1).unwrap_or(1));
    let deadline = tokio::time::Instant::now() + DOOR_WAIT;
    while tokio::time::Instant::now() < deadline {
        if cab.status().is_some_and(|s| !s.open_doors.contains(&c)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const DOOR_WAIT: Duration = Duration::from_secs(5);

/// Runs one scenario at cabinet `idx` (which the caller claimed) and releases it.
pub async fn run(idx: usize, cab: Arc<SimCabinet>, ctx: Arc<ScenarioCtx>) {
    let mut rng = StdRng::from_entropy();
    let online = cab.brief().is_some_and(|b| b.0) && !cab.link.is_down();
    let (empty, full) = cab.slots();
    let pickup = !full.is_empty() && (empty.is_empty() || rng.gen_bool(0.5));
    let remote = online && rng.gen_bool(0.5);
    if pickup {
        let (i, pin) = full[rng.gen_range(0..full.len())].clone();
        pick_up(idx, &cab, &ctx, i, &pin, remote).await;
    } else if !empty.is_empty() {
        let i = empty[rng.gen_range(0..empty.len())];
        deposit(idx, &cab, &ctx, i, remote, &mut rng).await;
    }
    cab.release();
}

async fn remote_unlock(idx: usize, cab: &SimCabinet, ctx: &ScenarioCtx, i: usize) -> bool {
    let compartment = u16::try_from(i + 1).unwrap_or(1);
    match ctx
        .api
        .unlock(cab.id.as_str(), compartment, 120_000, 10_000)
        .await
    {
        Ok(rec) => {
            if let Some(id) = rec["id"].as_str() {
                ctx.commands
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push((idx, id.to_owned()));
            }
            if rec["outcome"].as_str() == Some("opened") {
                true
            } else {
                ctx.stats
                    .commands_unresolved
                    .fetch_add(1, Ordering::Relaxed);
                false
            }
        }
        Err(e) => {
            tracing::debug!(cabinet = %cab.id, error = %e, "unlock call failed");
            ctx.stats.api_errors.fetch_add(1, Ordering::Relaxed);
            false
        }
    }
}

async fn sync(cab: &SimCabinet, ctx: &ScenarioCtx) {
    if cab
        .sync_credentials(locker_schemas::now_millis())
        .await
        .is_ok()
    {
        ctx.stats.creds_syncs.fetch_add(1, Ordering::Relaxed);
    }
}

async fn deposit(
    idx: usize,
    cab: &SimCabinet,
    ctx: &ScenarioCtx,
    i: usize,
    remote: bool,
    rng: &mut StdRng,
) {
    let slot = if remote {
        if !remote_unlock(idx, cab, ctx, i).await || !wait_door(cab, i, DOOR_WAIT).await {
            return;
        }
        ctx.stats.deposits_api.fetch_add(1, Ordering::Relaxed);
        i
    } else {
        match cab.scan(ScanSource::Rfid, courier_badge(&cab.id)).await {
            Ok(r) if r.access == Access::Deposit => {}
            _ => {
                ctx.stats.no_access.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        // The agent chose an empty compartment: find the door that opened.
        let deadline = tokio::time::Instant::now() + DOOR_WAIT;
        let (empty, _) = cab.slots();
        let opened = loop {
            if let Some(&j) = empty
                .iter()
                .find(|&&j| cab.board.door_open(j).unwrap_or(false))
            {
                break Some(j);
            }
            if tokio::time::Instant::now() > deadline {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let Some(j) = opened else {
            ctx.stats.no_access.fetch_add(1, Ordering::Relaxed);
            return;
        };
        ctx.stats.deposits_badge.fetch_add(1, Ordering::Relaxed);
        j
    };
    let _ = cab.board.put_parcel(slot);
    cab.add_parcel(slot, rng);
    close(cab, slot).await;
    sync(cab, ctx).await;
}

async fn pick_up(
    idx: usize,
    cab: &SimCabinet,
    ctx: &ScenarioCtx,
    i: usize,
    pin: &str,
    remote: bool,
) {
    if remote {
        if !remote_unlock(idx, cab, ctx, i).await {
            return;
        }
        ctx.stats.pickups_api.fetch_add(1, Ordering::Relaxed);
    } else {
        match cab.scan(ScanSource::Keypad, pin.to_owned()).await {
            Ok(r)
                if r.access
                    == Access::Pickup(locker_schemas::CompartmentId(
                        u16::try_from(i + 1).unwrap_or(1),
                    )) => {}
            _ => {
                ctx.stats.no_access.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        ctx.stats.pickups_pin.fetch_add(1, Ordering::Relaxed);
    }
    if !wait_door(cab, i, DOOR_WAIT).await {
        ctx.stats.no_access.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let _ = cab.board.take_parcel(i);
    cab.clear_slot(i);
    close(cab, i).await;
    sync(cab, ctx).await;
}
