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
    /// The cabinet was seen holding a credential set with this order's code.
    pub creds_ok: bool,
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
}

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
                if o.stage == Stage::Reserved || (o.stage == Stage::Ready && o.pin.is_some()) {
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
    if kind != "ready" && kind != "resend" {
        return;
    }
    let Some(o) = n["order"].as_str().and_then(|id| g.orders.get_mut(id)) else {
        return;
    };
    o.pin = n["pin"].as_str().map(str::to_owned);
    // a new code: the cabinet must get it first
    o.creds_ok = false;
    o.qr = n["qr"].as_str().map(str::to_owned);
    if matches!(o.stage, Stage::Reserved | Stage::Deposited) {
        o.stage = Stage::Ready;
        o.ready_at = Some(Instant::now());
    }
}
