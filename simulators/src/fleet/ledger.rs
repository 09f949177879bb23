//! What the simulated people know about their orders: every order a carrier created (its id,
//! carrier, cabinet and compartment), where it stands as the people saw it, and the codes its
//! recipient was sent. The recipients' phones are played by one poller of the gateway's
//! notification outbox ([`Ledger::poll_notices`]): a `ready` (or `resend`) notice hands the
//! recipient the PIN and QR token. Every pickup the people made is recorded, so the report can
//! check that the cabinets only released parcels to codes their recipients held.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use serde_json::Value;

use super::api::Api;

/// Where an order stands, as the people saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// A compartment is held for it; the courier has not come yet.
    Reserved,
    /// The courier put the parcel in and closed the door; the recipient waits for the notice.
    Deposited,
    /// The recipient holds the codes.
    Ready,
    /// The recipient took the parcel.
    PickedUp,
    /// The carrier cancelled it before the deposit.
    Cancelled,
    /// The carrier recalled it (the recipient never came); its courier comes to collect.
    Recalled,
    /// Its pickup window ended (an `expired` notice); its courier comes to collect.
    Expired,
    /// The carrier's courier took it back.
    Returned,
}

impl Stage {
    /// The API states this stage agrees with.
    pub fn api_states(self) -> &'static [&'static str] {
        match self {
            Stage::Reserved => &["reserved"],
            // a pickup window can end during a long run
            Stage::Deposited | Stage::Ready => &["deposited", "ready", "expired"],
            Stage::PickedUp => &["picked_up"],
            Stage::Cancelled => &["cancelled"],
            Stage::Recalled => &["return_requested"],
            Stage::Expired => &["expired"],
            Stage::Returned => &["returned"],
        }
    }
}

/// One order as the people know it.
#[derive(Debug, Clone)]
pub struct SimOrder {
    pub id: String,
    pub carrier: usize,
    /// The parcel barcode a courier scans.
    pub tracking: String,
    pub cabinet: usize,
    pub compartment: u16,
    pub stage: Stage,
    pub pin: Option<String>,
    pub qr: Option<String>,
    /// The recipient never comes.
    pub no_show: bool,
    /// When the people saw it ready.
    pub ready_at: Option<Instant>,
    /// Left over from an earlier run on a reused state directory.
    pub leftover: bool,
    /// The cabinet was seen holding a credential set with this order's code (for an expired
    /// order: a set built after it expired, with its collect credential and without its code).
    pub creds_ok: bool,
    /// Created with a short pickup window (`pickup_window_min`): the recipient never comes and
    /// the parcel expires.
    pub short_window: bool,
    /// The people saw it expire (its `expired` notice).
    pub expired: bool,
    /// The old PIN was tried at the cabinet after the order expired.
    pub late_pin_tried: bool,
}

/// The old PIN typed at the cabinet once its order expired: the cabinet must refuse it.
#[derive(Debug, Clone)]
pub struct LateTry {
    pub order: String,
    pub cabinet: usize,
    /// The cabinet's answer (`Debug` of the access).
    pub access: String,
    /// Refused as a wrong code (or the keypad was locked).
    pub refused: bool,
    /// The compartment's lock pulsed during the try.
    pub pulsed: bool,
}

/// What the couriers found when they came for an expired parcel.
#[derive(Debug, Clone, Default)]
pub struct ExpiryFacts {
    pub tries: Vec<LateTry>,
    /// Tries left out so the keypad's wrong-code lock is not reached (per cabinet).
    pub tries_skipped: u64,
    /// Expired orders collected, and those whose compartment was empty when the courier came.
    pub collected: u64,
    pub empty_at_collection: Vec<String>,
}

/// A pickup the people made: the order, its cabinet and compartment, and whether the cabinet
/// was offline.
#[derive(Debug, Clone)]
pub struct Pickup {
    pub order: String,
    pub cabinet: usize,
    pub compartment: u16,
    pub offline: bool,
}

#[derive(Debug, Default)]
struct Inner {
    orders: HashMap<String, SimOrder>,
    /// Order ids per cabinet index (live and done).
    by_cabinet: HashMap<usize, Vec<String>>,
    /// Every order created in this run, in creation order.
    created: Vec<String>,
    pickups: Vec<Pickup>,
    notices_after: u64,
    expiry: ExpiryFacts,
    /// Old PINs typed per cabinet (when), to stay under the keypad's wrong-code lock.
    late_tries_at: HashMap<usize, Vec<Instant>>,
}

/// Old PINs typed at one cabinet within [`LATE_TRY_WINDOW`] at most (the agent locks its keypad
/// at 5 wrong codes within 300 s by default; recipients' typos must not lock it).
const LATE_TRIES_MAX: usize = 2;
const LATE_TRY_WINDOW: std::time::Duration = std::time::Duration::from_secs(300);

/// The people's knowledge, shared by every scenario.
#[derive(Debug, Default)]
pub struct Ledger {
    inner: Mutex<Inner>,
}

impl Ledger {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records an order (created in this run unless `leftover`).
    pub fn add(&self, o: SimOrder) {
        let mut g = self.lock();
        if !o.leftover {
            g.created.push(o.id.clone());
        }
        g.by_cabinet
            .entry(o.cabinet)
            .or_default()
            .push(o.id.clone());
        g.orders.insert(o.id.clone(), o);
    }

    /// The orders at cabinet `i`.
    pub fn at(&self, i: usize) -> Vec<SimOrder> {
        let g = self.lock();
        g.by_cabinet
            .get(&i)
            .into_iter()
            .flatten()
            .filter_map(|id| g.orders.get(id).cloned())
            .collect()
    }

    /// Orders at cabinet `i` that hold a compartment (not yet picked up, cancelled or returned).
    pub fn live_at(&self, i: usize) -> usize {
        self.at(i)
            .iter()
            .filter(|o| {
                !matches!(
                    o.stage,
                    Stage::PickedUp | Stage::Cancelled | Stage::Returned
                )
            })
            .count()
    }

    /// Moves an order to `stage` (a notice that came first is kept: a deposited order whose
    /// recipient already holds the codes stays ready).
    pub fn set(&self, id: &str, stage: Stage) {
        if let Some(o) = self.lock().orders.get_mut(id) {
            if !(o.stage == Stage::Ready && stage == Stage::Deposited) {
                o.stage = stage;
            }
        }
    }

    /// The cabinet `i` holds its current credential set: every parcel its couriers will bring
    /// and every code its recipients hold is in.
    pub fn creds_held(&self, i: usize) {
        let mut g = self.lock();
        let ids = g.by_cabinet.get(&i).cloned().unwrap_or_default();
        for id in ids {
            if let Some(o) = g.orders.get_mut(&id) {
                if o.stage == Stage::Reserved
                    || o.stage == Stage::Expired
                    || (o.stage == Stage::Ready && o.pin.is_some())
                {
                    o.creds_ok = true;
                }
            }
        }
    }

    /// Records a pickup (and the order as picked up).
    pub fn picked_up(&self, p: Pickup) {
        let mut g = self.lock();
        if let Some(o) = g.orders.get_mut(&p.order) {
            o.stage = Stage::PickedUp;
        }
        g.pickups.push(p);
    }

    /// Whether the old PIN of an expired order may be tried at cabinet `i` now (counted as
    /// skipped otherwise); marks the order as tried either way.
    pub fn may_try_late_pin(&self, i: usize, order: &str) -> bool {
        let mut g = self.lock();
        match g.orders.get_mut(order) {
            Some(o) if !o.late_pin_tried => o.late_pin_tried = true,
            _ => return false,
        }
        let tries = g.late_tries_at.entry(i).or_default();
        tries.retain(|t| t.elapsed() < LATE_TRY_WINDOW);
        if tries.len() >= LATE_TRIES_MAX {
            g.expiry.tries_skipped += 1;
            return false;
        }
        tries.push(Instant::now());
        true
    }

    /// Records an old PIN typed after its order expired.
    pub fn late_try(&self, t: LateTry) {
        self.lock().expiry.tries.push(t);
    }

    /// Records an expired order collected by its courier (whether its parcel was still inside).
    pub fn collected_expired(&self, order: &str, parcel_inside: bool) {
        let mut g = self.lock();
        g.expiry.collected += 1;
        if !parcel_inside {
            g.expiry.empty_at_collection.push(order.to_owned());
        }
    }

    /// What the couriers found at expired parcels.
    pub fn expiry(&self) -> ExpiryFacts {
        self.lock().expiry.clone()
    }

    /// Every order known, every order created in this run, every pickup.
    pub fn dump(&self) -> (HashMap<String, SimOrder>, Vec<String>, Vec<Pickup>) {
        let g = self.lock();
        (g.orders.clone(), g.created.clone(), g.pickups.clone())
    }

    /// Reads the notification outbox from where it stopped and hands each recipient their
    /// codes; returns how many notices were new.
    pub async fn poll_notices(&self, op: &Api) -> usize {
        let after = self.lock().notices_after;
        let Ok((items, next)) = op.notifications(after).await else {
            return 0;
        };
        let mut g = self.lock();
        g.notices_after = g.notices_after.max(next);
        for n in &items {
            notice(&mut g, n);
        }
        items.len()
    }
}

fn notice(g: &mut Inner, n: &Value) {
    let kind = n["kind"].as_str().unwrap_or("");
    let Some(o) = n["order"].as_str().and_then(|id| g.orders.get_mut(id)) else {
        return;
    };
    if kind == "expired" {
        // the window ended: the code leaves the cabinet, a collect credential comes in
        if matches!(o.stage, Stage::Deposited | Stage::Ready) {
            o.stage = Stage::Expired;
            o.expired = true;
            o.creds_ok = false;
        }
        return;
    }
    if kind != "ready" && kind != "resend" {
        return;
    }
    o.pin = n["pin"].as_str().map(str::to_owned);
    // a new code: the cabinet must get it first
    o.creds_ok = false;
    o.qr = n["qr"].as_str().map(str::to_owned);
    if matches!(o.stage, Stage::Reserved | Stage::Deposited) {
        o.stage = Stage::Ready;
        o.ready_at = Some(Instant::now());
    }
}
