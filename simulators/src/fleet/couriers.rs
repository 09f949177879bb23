//! The couriers of the simulation: a deposit by the order's remote unlock or at the cabinet
//! (badge, then the parcel's barcode; also offline), and the collection of a recalled or
//! expired parcel (badge and `key:collect`, also offline, or a remote unlock); before an
//! expired parcel is collected its recipient's old PIN is typed once and must be refused. See
//! [`super::scenario`] for the people.

use std::sync::atomic::Ordering;
use std::sync::PoisonError;
use std::time::Duration;

use locker_agent::{Access, Key, Refusal};
use locker_schemas::{CompartmentId, ScanSource};
use rand::rngs::StdRng;
use rand::Rng;
use serde_json::json;

use super::api::ApiError;
use super::cabinet::SimCabinet;
use super::ledger::{LateTry, SimOrder, Stage};
use super::scenario::{
    api_error, close, creds_current, wait_door, ScenarioCtx, DOOR_WAIT, UNLOCK_TTL_MS,
};

/// A remote unlock of an order by its carrier, with the courier at the door: `at_door` (the
/// courier putting a parcel in or taking it out) runs as soon as the door is seen open, also
/// while the API call is still waiting for the command's outcome (a courier watches the door,
/// not the carrier's app: in a cluster the outcome can reach the issuing node seconds after the
/// door opened, and the door closes by itself meanwhile). `None` if the door did not open.
pub(super) async fn unlock_order<T>(
    idx: usize,
    cab: &SimCabinet,
    ctx: &ScenarioCtx,
    o: &SimOrder,
    reason: &str,
    at_door: impl FnOnce(usize) -> T,
) -> Option<T> {
    let i = usize::from(o.compartment.saturating_sub(1));
    let body = json!({"reason": reason, "ttl_ms": UNLOCK_TTL_MS, "wait_ms": 10_000});
    let path = format!("/v1/orders/{}/unlock", o.id);
    let call = ctx.client(o.carrier).post(&path, &body, None);
    tokio::pin!(call);
    let mut at_door = Some(at_door);
    let mut done = None;
    let mut seen: Option<std::time::Instant> = None;
    let r = loop {
        tokio::select! {
            r = &mut call => break r,
            _ = tokio::time::sleep(Duration::from_millis(10)) => {
                if done.is_none() && cab.board.door_open(i).unwrap_or(false) {
                    seen = Some(std::time::Instant::now());
                    done = at_door.take().map(|f| f(i));
                }
            }
        }
    };
    if let Some(t) = seen {
        let ms = u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX);
        ctx.stats.door_before_answer.fetch_add(1, Ordering::Relaxed);
        ctx.stats
            .answer_after_door_max_ms
            .fetch_max(ms, Ordering::Relaxed);
    }
    let wait = match r {
        Ok(v) => {
            if let Some(id) = v["command"]["id"].as_str() {
                ctx.commands
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push((idx, id.to_owned()));
            }
            match v["command"]["outcome"].as_str() {
                Some("opened") => DOOR_WAIT,
                Some(_) => {
                    ctx.stats
                        .commands_unresolved
                        .fetch_add(1, Ordering::Relaxed);
                    return done;
                }
                None => {
                    ctx.stats
                        .commands_unresolved
                        .fetch_add(1, Ordering::Relaxed);
                    Duration::from_millis(UNLOCK_TTL_MS + 2_000)
                }
            }
        }
        Err(e) => {
            api_error(ctx, "order unlock", &e);
            if matches!(&e, ApiError::Status { status, .. } if *status < 500) {
                return done;
            }
            Duration::from_millis(UNLOCK_TTL_MS + 2_000)
        }
    };
    if done.is_some() {
        return done;
    }
    match at_door {
        Some(f) if wait_door(cab, i, wait).await => Some(f(i)),
        _ => {
            ctx.stats.no_access.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// The courier at the door: the carrier opens the order's compartment remotely, the courier
/// puts the parcel in and closes the door.
pub(super) async fn deposit(idx: usize, cab: &SimCabinet, ctx: &ScenarioCtx, o: &SimOrder) {
    let put = |i: usize| {
        let _ = cab.board.put_parcel(i);
    };
    let Some(()) = unlock_order(idx, cab, ctx, o, "courier at the door", put).await else {
        return;
    };
    let i = usize::from(o.compartment.saturating_sub(1));
    close(cab, i).await;
    ctx.ledger.set(&o.id, Stage::Deposited);
    ctx.stats.deposits_api.fetch_add(1, Ordering::Relaxed);
}

/// A courier of the order's carrier signs in with their badge; `None` if refused.
pub(super) async fn sign_in(
    cab: &SimCabinet,
    ctx: &ScenarioCtx,
    carrier: usize,
    rng: &mut StdRng,
) -> Option<()> {
    let couriers = &ctx.world.carriers.get(carrier)?.couriers;
    let (courier, badge) = couriers.get(rng.gen_range(0..couriers.len().max(1)))?;
    match cab.scan(ScanSource::Rfid, badge.clone()).await {
        Ok(r) if r.access == Access::SignedIn(courier.clone()) => Some(()),
        Ok(r) => {
            tracing::warn!(cabinet = %cab.id, courier, access = ?r.access, "badge refused");
            ctx.stats.no_access.fetch_add(1, Ordering::Relaxed);
            None
        }
        Err(_) => None,
    }
}

/// The courier at the cabinet: badge, then the parcel's barcode; the cabinet opens the
/// order's compartment from its credential set (also offline); the courier puts the parcel in,
/// closes the door and signs out.
pub(super) async fn badge_deposit(
    idx: usize,
    cab: &SimCabinet,
    ctx: &ScenarioCtx,
    o: &SimOrder,
    online: bool,
    rng: &mut StdRng,
) {
    if online && !creds_current(idx, cab, ctx, DOOR_WAIT).await {
        ctx.stats.creds_not_yet.fetch_add(1, Ordering::Relaxed);
        return;
    }
    if sign_in(cab, ctx, o.carrier, rng).await.is_none() {
        return;
    }
    let opened = match cab.scan(ScanSource::Barcode, o.tracking.clone()).await {
        Ok(r) if r.access == Access::DepositInto(CompartmentId(o.compartment)) => true,
        Ok(r) => {
            tracing::warn!(cabinet = %cab.id, order = %o.id, access = ?r.access, "parcel refused");
            ctx.stats.no_access.fetch_add(1, Ordering::Relaxed);
            false
        }
        Err(_) => false,
    };
    let i = usize::from(o.compartment.saturating_sub(1));
    if opened && wait_door(cab, i, DOOR_WAIT).await {
        let _ = cab.board.put_parcel(i);
        close(cab, i).await;
        ctx.ledger.set(&o.id, Stage::Deposited);
        ctx.stats.deposits_badge.fetch_add(1, Ordering::Relaxed);
        if !online {
            ctx.stats.deposits_offline.fetch_add(1, Ordering::Relaxed);
        }
    }
    let _ = cab.key(Key::Logout).await;
}

/// The recipient never came: the carrier recalls the order and a courier collects the parcel
/// by a remote unlock.
pub(super) async fn recall_and_collect(
    idx: usize,
    cab: &SimCabinet,
    ctx: &ScenarioCtx,
    o: &SimOrder,
    rng: &mut StdRng,
) {
    if o.stage == Stage::Ready {
        match ctx
            .client(o.carrier)
            .post(&format!("/v1/orders/{}/return", o.id), &json!({}), None)
            .await
        {
            Ok(_) => {
                ctx.stats.recalls.fetch_add(1, Ordering::Relaxed);
                ctx.ledger.set(&o.id, Stage::Recalled);
            }
            Err(e) => {
                api_error(ctx, "return", &e);
                return;
            }
        }
    }
    collect(idx, cab, ctx, o, true, rng).await;
}

/// The pickup window of an order ended and its recipient never came: the cabinet (holding the
/// set built after the expiry) must refuse the old PIN, then a courier of the carrier collects
/// the parcel, which must still be inside.
pub(super) async fn collect_expired(
    idx: usize,
    cab: &SimCabinet,
    ctx: &ScenarioCtx,
    o: &SimOrder,
    online: bool,
    rng: &mut StdRng,
) {
    if online && !creds_current(idx, cab, ctx, DOOR_WAIT).await {
        ctx.stats.creds_not_yet.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let i = usize::from(o.compartment.saturating_sub(1));
    if let Some(pin) = o
        .pin
        .clone()
        .filter(|_| ctx.ledger.may_try_late_pin(idx, &o.id))
    {
        let before = cab.board.pulse_count(i).unwrap_or(0);
        let access = cab.scan(ScanSource::Keypad, pin).await;
        let after = cab.board.pulse_count(i).unwrap_or(0);
        let (access, refused) = match access {
            Ok(r) => (
                format!("{:?}", r.access),
                matches!(
                    r.access,
                    Access::Refused(Refusal::WrongCode | Refusal::Locked)
                ),
            ),
            // no answer (the agent busy or stopping): nothing to judge
            Err(e) => (format!("no answer: {e}"), true),
        };
        ctx.ledger.late_try(LateTry {
            order: o.id.clone(),
            cabinet: idx,
            access,
            refused,
            pulsed: after != before,
        });
    }
    collect(idx, cab, ctx, o, online, rng).await;
}

/// A courier of the order's carrier collects a recalled or expired parcel: at the cabinet
/// (badge, then `key:collect` opens the next parcel to collect; the only way offline) or by a
/// remote unlock; takes the parcel out and closes the door.
async fn collect(
    idx: usize,
    cab: &SimCabinet,
    ctx: &ScenarioCtx,
    o: &SimOrder,
    online: bool,
    rng: &mut StdRng,
) {
    let collectable = |s: Stage| matches!(s, Stage::Recalled | Stage::Expired);
    let courier = o.carrier < ctx.world.carriers.len() && (!online || rng.gen_bool(0.5));
    let (o, taken) = if courier {
        // at the cabinet: badge, then `key:collect` opens the next parcel to collect
        if online && !creds_current(idx, cab, ctx, DOOR_WAIT).await {
            ctx.stats.creds_not_yet.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if sign_in(cab, ctx, o.carrier, rng).await.is_none() {
            return;
        }
        let r = cab.key(Key::Collect).await;
        let _ = cab.key(Key::Logout).await;
        let c = match r {
            Ok(r) => match r.access {
                Access::Collect(c) => c.0,
                other => {
                    tracing::warn!(cabinet = %cab.id, access = ?other, "nothing collected");
                    ctx.stats.no_access.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            },
            Err(_) => return,
        };
        // the parcel in that compartment, whichever recalled or expired order of the carrier
        let Some(x) = ctx
            .ledger
            .at(idx)
            .into_iter()
            .find(|x| x.compartment == c && collectable(x.stage))
        else {
            tracing::warn!(cabinet = %cab.id, compartment = c, "collected an unknown parcel");
            return;
        };
        if !wait_door(cab, usize::from(c.saturating_sub(1)), DOOR_WAIT).await {
            ctx.stats.no_access.fetch_add(1, Ordering::Relaxed);
            return;
        }
        (x, None)
    } else {
        let reason = if o.stage == Stage::Expired {
            "courier collecting an expired parcel"
        } else {
            "courier collecting a recalled parcel"
        };
        // the courier takes the parcel out as soon as the door is open
        let take = |i: usize| {
            let inside = cab.board.parcel_present(i).unwrap_or(false);
            let _ = cab.board.take_parcel(i);
            inside
        };
        let Some(inside) = unlock_order(idx, cab, ctx, o, reason, take).await else {
            return;
        };
        (o.clone(), Some(inside))
    };
    let i = usize::from(o.compartment.saturating_sub(1));
    // at the cabinet the door is open now: the parcel is taken out here
    let inside = taken.unwrap_or_else(|| {
        let inside = cab.board.parcel_present(i).unwrap_or(false);
        let _ = cab.board.take_parcel(i);
        inside
    });
    if o.stage == Stage::Expired {
        ctx.ledger.collected_expired(&o.id, inside);
        ctx.stats.collected_expired.fetch_add(1, Ordering::Relaxed);
    }
    close(cab, i).await;
    ctx.ledger.set(&o.id, Stage::Returned);
    ctx.stats.collected.fetch_add(1, Ordering::Relaxed);
    if !online {
        ctx.stats.collected_offline.fetch_add(1, Ordering::Relaxed);
    }
}
