//! Local access (invariant 7), a part of the doors: it owns the credential cache and the set
//! being assembled from parts, the courier session ([`session`]), the keypad lock after wrong
//! codes ([`lockout`]), the accesses waiting for a parcel-sensor read (by token), the replies
//! due to scanners, and the access counters. Everything works from the cache, offline.
//!
//! A scan becomes a Scan event, then: a recipient's pickup code or a customer's drop-off code
//! opens its compartment; a courier's badge or PIN signs the courier in; a signed-in courier's
//! parcel barcode opens its reserved compartment (same carrier, sensor empty), and keys
//! (`bigger`, a size, `collect`, `logout`, in [`keys`]) open spares and collections. An entry
//! matching nothing usable is a wrong code; too many lock the keypad (a KeypadLocked alarm,
//! the end persisted). Every local access reads the parcel sensors before its lock fires (a
//! deposit needs an empty compartment; the reading is the access's baseline). The Access event
//! is reported once the door opened, with the credentials it spent removed from the cache in
//! the same write; a door never seen opening is judged by the parcel sensor ([`unseen`]).

mod keys;
mod lockout;
mod session;
mod unseen;

use std::collections::HashMap;

use locker_schemas::{
    AccessAction, AlarmKind, CompartmentId, CredKind, Credential, Credentials, Scan, ScanSource,
    UplinkBody,
};
use tokio::sync::oneshot;

use super::{Cause, Doors, NotFired};
use crate::agent::ctx::Ctx;
use crate::agent::types::{Access, Counters, Refusal, ScanReply};
use crate::agent::uplink::Uplink;
use crate::creds::{secret_hash, Assembly, CredCache, PartOutcome};
use crate::hw::IoRequest;
use crate::storage::{AlarmKey, Durability, Write};
use lockout::{LockRules, Lockout};
use session::Session;

/// Where the answer to a scan or key goes.
pub(crate) type Reply = oneshot::Sender<Result<ScanReply, String>>;

/// A local access whose lock is being fired: reported (and its credentials spent) once the
/// door opens.
#[derive(Debug, Clone)]
pub(crate) struct LocalAccess {
    pub action: AccessAction,
    pub reference: String,
    pub source: ScanSource,
    /// The signed-in courier's reference, empty for a recipient or a customer.
    pub actor: String,
    /// The credentials used up when the door opens.
    pub spent: Vec<Credential>,
    /// The compartment's parcel sensor read just before the lock fired (`None`: not read, a
    /// board without parcel sensors, or a read that failed).
    pub before: Option<bool>,
}

/// A compartment an access may use, with the credentials it spends there.
#[derive(Debug, Clone)]
struct Candidate {
    compartment: CompartmentId,
    spent: Vec<Credential>,
}

/// An access waiting for the parcel sensors: the first candidate that is empty, closed and
/// not busy is fired.
struct PendingRead {
    candidates: Vec<Candidate>,
    la: LocalAccess,
    reply: Option<Reply>,
    seq: Option<u64>,
    /// The refusal when no candidate is usable.
    none: Refusal,
}

/// The credential cache, the courier session, the keypad lock and accesses in progress.
pub(super) struct LocalState {
    creds: CredCache,
    assembly: Assembly,
    session: Option<Session>,
    lockout: Lockout,
    reads: HashMap<u64, PendingRead>,
    /// Accesses whose lock fired but whose door was not seen opening, by compartment.
    unseen: HashMap<CompartmentId, unseen::Unseen>,
    next_token: u64,
    replies: Vec<(Reply, ScanReply)>,
    scans: u64,
    local_accesses: u64,
    wrong_codes: u64,
    lockouts: u64,
    refused: u64,
    bad_parts: u64,
    /// Accesses reported from the parcel sensor, their door never seen opening.
    by_sensor: u64,
    /// Accesses whose door was not seen opening and whose parcel sensor did not change.
    unconfirmed: u64,
}

fn rules(ctx: &Ctx) -> LockRules {
    let a = &ctx.cfg().access;
    LockRules {
        max: a.max_wrong_codes,
        window_ms: a.wrong_code_window_s.saturating_mul(1_000),
        lockout_ms: a.lockout_s.saturating_mul(1_000),
    }
}

fn session_ms(ctx: &Ctx) -> u64 {
    ctx.cfg().access.courier_session_s.saturating_mul(1_000)
}

fn lock_key() -> AlarmKey {
    AlarmKey {
        kind: AlarmKind::KeypadLocked,
        compartment: None,
        board: None,
    }
}

/// The KeypadLocked alarm's detail.
fn lock_detail(r: LockRules) -> String {
    format!(
        "{} wrong codes in {} s; locked for {} s",
        r.max,
        r.window_ms / 1_000,
        r.lockout_ms / 1_000
    )
}

impl LocalState {
    /// The cache, and the keypad lock restored from storage.
    pub fn new(ctx: &Ctx, creds: CredCache, lock_until: Option<u64>) -> Self {
        Self {
            creds,
            assembly: Assembly::default(),
            session: None,
            lockout: Lockout::restored(lock_until, ctx.now_millis(), rules(ctx)),
            reads: HashMap::new(),
            unseen: HashMap::new(),
            next_token: 0,
            replies: Vec::new(),
            scans: 0,
            local_accesses: 0,
            wrong_codes: 0,
            lockouts: 0,
            refused: 0,
            bad_parts: 0,
            by_sensor: 0,
            unconfirmed: 0,
        }
    }

    pub fn fill(&self, c: &mut Counters) {
        c.scans = self.scans;
        c.local_accesses = self.local_accesses;
        c.wrong_codes = self.wrong_codes;
        c.lockouts = self.lockouts;
        c.refused_accesses = self.refused;
        c.bad_cred_parts = self.bad_parts;
        c.accesses_by_sensor = self.by_sensor;
        c.unconfirmed_accesses = self.unconfirmed;
    }

    /// Replies ready to be sent (after the status shows their effect).
    pub fn take_replies(&mut self) -> Vec<(Reply, ScanReply)> {
        std::mem::take(&mut self.replies)
    }

    fn answer(&mut self, reply: Reply, seq: Option<u64>, access: Access) {
        if matches!(access, Access::Refused(_)) {
            self.refused += 1;
        }
        self.replies.push((reply, ScanReply { seq, access }));
    }

    /// The wall-clock end of the keypad lock, if one is held.
    pub fn lock_until(&self) -> Option<u64> {
        self.lockout.until()
    }

    /// The signed-in courier at `now` (an expired session ends here).
    fn courier(&mut self, now: u64) -> Option<&mut Session> {
        if self.session.as_ref().is_some_and(|s| !s.active(now)) {
            self.session = None;
        }
        self.session.as_mut()
    }
}

impl Doors {
    /// The version of the complete credential set held.
    pub fn creds_version(&self) -> u64 {
        self.access.creds.version()
    }

    /// Replies to scans and keys that are due.
    pub fn take_scan_replies(&mut self) -> Vec<(Reply, ScanReply)> {
        self.access.take_replies()
    }

    /// A credential set, or one part of it, from the gateway: once every part of a version
    /// arrived, the set is stored (flushed), then replaces the cache.
    pub async fn on_credentials(&mut self, ctx: &Ctx, up: &mut Uplink, c: Credentials) {
        let (version, part, parts) = (c.version, c.part, c.parts);
        let set = match self.access.assembly.offer(c) {
            PartOutcome::Complete(set) => set,
            PartOutcome::Waiting { have, of } => {
                return tracing::debug!(cabinet = %ctx.cabinet(), version, part, have, of, "credential set part held")
            }
            PartOutcome::Stale => {
                return tracing::debug!(cabinet = %ctx.cabinet(), version, part, "part of an older credential set ignored")
            }
            PartOutcome::Refused(why) => {
                self.access.bad_parts += 1;
                if self.access.bad_parts.is_power_of_two() {
                    tracing::warn!(cabinet = %ctx.cabinet(), version, part, parts, count = self.access.bad_parts, "credential set part refused: {why}");
                }
                return;
            }
        };
        let held = self.access.creds.version();
        if held != 0 && set.version == held {
            // The set held, redelivered: replacing it would bring back credentials used since.
            return tracing::debug!(cabinet = %ctx.cabinet(), version, "credential set already held");
        }
        if set.version < held {
            tracing::warn!(
                held,
                got = set.version,
                "older credential set received; replacing anyway (the gateway is the authority)"
            );
        }
        let w = match crate::storage::creds_write(&set) {
            Ok(w) => w,
            Err(e) => return tracing::error!(error = %e, "credentials not stored"),
        };
        match up
            .store()
            .with_tree(Durability::Flush, move |t| crate::storage::write(t, &[w]))
            .await
        {
            Ok(()) => {
                tracing::info!(cabinet = %ctx.cabinet(), version = set.version, entries = set.entries.len(), "credential cache replaced");
                self.access.creds.replace(set);
            }
            Err(e) => {
                up.storage_error();
                tracing::error!(error = %e, "credentials not stored");
            }
        }
    }

    /// A scan or keypad entry: a Scan event, then what the cached credentials allow. The
    /// answer is queued for [`Doors::take_scan_replies`] (after a parcel-sensor read for
    /// deposits).
    pub async fn on_scan(
        &mut self,
        ctx: &Ctx,
        up: &mut Uplink,
        source: ScanSource,
        value: String,
        reply: Reply,
    ) {
        self.access.scans += 1;
        let hash = secret_hash(&value, ctx.cabinet());
        let body = UplinkBody::Scan(Scan {
            source,
            value: value.clone(),
        });
        let seq = up.emit(ctx, body, Vec::new()).await;
        self.check_lock(ctx, up).await;
        let now = ctx.now_millis();
        let judge = ctx.clock_sane().then_some(now);
        let locked = self.access.lockout.is_locked(now);
        let ttl = session_ms(ctx);
        let cred = self.access.creds.find(&hash, judge).cloned();
        let in_session = self.access.courier(now).is_some();
        let kind = cred.as_ref().map(|c| c.kind);
        if locked {
            // Only a courier's badge, and a signed-in courier's barcodes, get through.
            let badge = kind == Some(CredKind::Deposit) && source == ScanSource::Rfid;
            let courier_barcode = in_session && source == ScanSource::Barcode;
            if !badge && !courier_barcode {
                return self
                    .access
                    .answer(reply, seq, Access::Refused(Refusal::Locked));
            }
        }
        let Some(cred) = cred else {
            return self.unmatched(ctx, up, source, value, reply, seq).await;
        };
        match cred.kind {
            CredKind::Deposit => {
                tracing::debug!(cabinet = %ctx.cabinet(), courier = %cred.reference, "courier signed in");
                let s = Session::sign_in(&cred, now, ttl);
                let access = Access::SignedIn(s.courier.clone());
                self.access.session = Some(s);
                self.access.answer(reply, seq, access);
            }
            CredKind::Pickup | CredKind::DropOff => {
                let Some(c) = cred.compartment else {
                    return self.access.answer(reply, seq, Access::None);
                };
                let la = LocalAccess {
                    action: if cred.kind == CredKind::Pickup {
                        AccessAction::Pickup
                    } else {
                        AccessAction::Deposit
                    },
                    reference: cred.reference.clone(),
                    source,
                    actor: String::new(),
                    spent: vec![cred.clone()],
                    before: None,
                };
                let cand = vec![Candidate {
                    compartment: c,
                    spent: la.spent.clone(),
                }];
                let none = if cred.kind == CredKind::Pickup {
                    Refusal::Busy
                } else {
                    Refusal::Full
                };
                self.read_then_fire(cand, la, reply, seq, none);
            }
            CredKind::Parcel => self.parcel_scanned(ctx, cred, source, reply, seq),
            // Collect and Spare credentials carry no secret: nothing can match them.
            CredKind::Collect | CredKind::Spare => self.access.answer(reply, seq, Access::None),
        }
    }

    /// A scan matching no usable credential: an unknown barcode is noted for a signed-in
    /// courier (or is nothing); any other entry is a wrong code.
    async fn unmatched(
        &mut self,
        ctx: &Ctx,
        up: &mut Uplink,
        source: ScanSource,
        value: String,
        reply: Reply,
        seq: Option<u64>,
    ) {
        let now = ctx.now_millis();
        let ttl = session_ms(ctx);
        if source == ScanSource::Barcode {
            let access = match self.access.courier(now) {
                Some(s) => {
                    s.scanned_unknown(value, source);
                    s.touch(now, ttl);
                    Access::ParcelNoted
                }
                None => Access::None,
            };
            return self.access.answer(reply, seq, access);
        }
        self.access.wrong_codes += 1;
        let r = rules(ctx);
        if let Some(until) = self.access.lockout.wrong(now, r) {
            self.access.lockouts += 1;
            let w = crate::storage::lock_write(Some(until));
            if let Err(e) = up
                .store()
                .with_tree(Durability::Flush, move |t| crate::storage::write(t, &[w]))
                .await
            {
                up.storage_error();
                tracing::error!(error = %e, "keypad lock not stored");
            }
            up.set_alarm(ctx, lock_key(), true, lock_detail(r)).await;
        }
        self.access
            .answer(reply, seq, Access::Refused(Refusal::WrongCode));
    }

    /// A parcel's barcode: a signed-in courier of its carrier deposits it into its reserved
    /// compartment (closed, not busy, sensor empty).
    fn parcel_scanned(
        &mut self,
        ctx: &Ctx,
        cred: Credential,
        source: ScanSource,
        reply: Reply,
        seq: Option<u64>,
    ) {
        let now = ctx.now_millis();
        let ttl = session_ms(ctx);
        let Some(s) = self.access.courier(now) else {
            return self
                .access
                .answer(reply, seq, Access::Refused(Refusal::NoCourier));
        };
        if s.carrier != cred.carrier {
            return self
                .access
                .answer(reply, seq, Access::Refused(Refusal::WrongCarrier));
        }
        s.scanned_parcel(cred.clone(), source);
        s.touch(now, ttl);
        let actor = s.courier.clone();
        let Some(c) = cred.compartment else {
            return self
                .access
                .answer(reply, seq, Access::Refused(Refusal::Busy));
        };
        if !self.usable(c) {
            return self
                .access
                .answer(reply, seq, Access::Refused(Refusal::Busy));
        }
        let la = LocalAccess {
            action: AccessAction::Deposit,
            reference: cred.reference.clone(),
            source,
            actor,
            spent: vec![cred.clone()],
            before: None,
        };
        let cand = vec![Candidate {
            compartment: c,
            spent: vec![cred],
        }];
        self.read_then_fire(cand, la, reply, seq, Refusal::Full);
    }

    /// Whether a compartment's door is known closed and no unlock of it is in progress.
    fn usable(&self, c: CompartmentId) -> bool {
        self.doors.get(&c).is_some_and(|d| d.open == Some(false)) && !self.pending.contains_key(&c)
    }

    /// Reads the parcel sensors, then fires the first usable candidate (see
    /// [`Doors::fire_with`]).
    fn read_then_fire(
        &mut self,
        candidates: Vec<Candidate>,
        la: LocalAccess,
        reply: Reply,
        seq: Option<u64>,
        none: Refusal,
    ) {
        if candidates.is_empty() {
            return self.access.answer(reply, seq, Access::Refused(none));
        }
        self.access.next_token += 1;
        let token = self.access.next_token;
        match self.io_tx.try_send(IoRequest::ReadParcels { token }) {
            Ok(()) => {
                self.access.reads.insert(
                    token,
                    PendingRead {
                        candidates,
                        la,
                        reply: Some(reply),
                        seq,
                        none,
                    },
                );
            }
            Err(_) => self
                .access
                .answer(reply, seq, Access::Refused(Refusal::Unavailable)),
        }
    }

    /// Fires a compartment's lock for a local access.
    fn fire_local(&mut self, ctx: &Ctx, c: CompartmentId, la: LocalAccess) -> Result<(), Refusal> {
        let closed = self.doors.get(&c).is_some_and(|d| d.open != Some(true));
        if !closed || self.pending.contains_key(&c) {
            tracing::debug!(cabinet = %ctx.cabinet(), compartment = %c, "local access: compartment open or busy");
            return Err(Refusal::Busy);
        }
        self.fire(c, Cause::Local(la)).map_err(|e| match e {
            NotFired::Busy => Refusal::Busy,
            NotFired::QueueFull => Refusal::Unavailable,
        })
    }

    /// The parcel sensors were read: for an access waiting to fire ([`Doors::fire_with`]), or
    /// for one whose door was not seen opening ([`Doors::judge_unseen`]).
    pub(in crate::agent) fn on_parcels(
        &mut self,
        ctx: &Ctx,
        up: &mut Uplink,
        token: u64,
        present: Vec<(CompartmentId, bool)>,
    ) {
        if self.access.reads.contains_key(&token) {
            self.fire_with(ctx, token, &present);
        } else {
            self.judge_unseen(ctx, up, token, &present);
        }
    }

    /// The parcel sensors were read for an access: fire its first candidate that is closed,
    /// not busy and (for a deposit) empty; the reading is the access's baseline.
    fn fire_with(&mut self, ctx: &Ctx, token: u64, present: &[(CompartmentId, bool)]) {
        let Some(mut pr) = self.access.reads.remove(&token) else {
            return;
        };
        let reading = |c: CompartmentId| present.iter().find(|(p, _)| *p == c).map(|(_, f)| *f);
        let deposit = pr.la.action == AccessAction::Deposit;
        let choice = pr
            .candidates
            .iter()
            .find(|k| {
                if deposit {
                    reading(k.compartment) == Some(false) && self.usable(k.compartment)
                } else {
                    // a pickup or a collection: as before the read (door not known open)
                    true
                }
            })
            .cloned();
        let access = match choice {
            Some(k) => {
                let mut la = pr.la.clone();
                la.spent = k.spent;
                la.before = reading(k.compartment);
                match (self.fire_local(ctx, k.compartment, la), pr.la.action) {
                    (Ok(()), AccessAction::Collect) => Access::Collect(k.compartment),
                    (Ok(()), AccessAction::Pickup) => Access::Pickup(k.compartment),
                    (Ok(()), AccessAction::Deposit) => Access::DepositInto(k.compartment),
                    (Err(r), _) => Access::Refused(r),
                }
            }
            None => {
                let full = pr
                    .candidates
                    .iter()
                    .any(|k| present.iter().any(|(p, f)| *p == k.compartment && *f));
                let r = match pr.none {
                    Refusal::Full if !full => Refusal::Busy,
                    r => r,
                };
                Access::Refused(r)
            }
        };
        if let Some(reply) = pr.reply.take() {
            self.access.answer(reply, pr.seq, access);
        }
    }

    /// A local access's door opened: its Access event is staged with the removal of the
    /// credentials it spent (one write), and the courier's session goes on.
    pub(super) fn local_opened(
        &mut self,
        ctx: &Ctx,
        up: &mut Uplink,
        c: CompartmentId,
        la: LocalAccess,
    ) {
        self.access.local_accesses += 1;
        let mut removed = false;
        for cred in &la.spent {
            removed |= self.access.creds.remove_entry(cred);
        }
        let mut extra = Vec::new();
        if removed {
            match self.access.creds.set().map(crate::storage::creds_write) {
                Some(Ok(w)) => extra.push(w),
                Some(Err(e)) => tracing::error!(error = %e, "credentials not stored"),
                None => {}
            }
        }
        if !la.actor.is_empty() {
            let (now, ttl) = (ctx.now_millis(), session_ms(ctx));
            if let Some(s) = self.access.courier(now) {
                if s.courier == la.actor {
                    s.touch(now, ttl);
                }
            }
        }
        let body = UplinkBody::Access(locker_schemas::LocalAccess {
            compartment: c,
            action: la.action,
            reference: la.reference,
            source: la.source,
            actor: la.actor,
        });
        up.stage(ctx, body, extra);
    }

    /// Lifts the keypad lock once its end has come (clearing the alarm and the stored end);
    /// keeps the KeypadLocked alarm in step with the lock (a crash between storing the lock
    /// and raising its alarm, or an alarm left with no lock).
    pub async fn check_lock(&mut self, ctx: &Ctx, up: &mut Uplink) {
        let now = ctx.now_millis();
        let ended = self.access.lockout.end_if_due(now);
        if ended {
            let w: Write = crate::storage::lock_write(None);
            if let Err(e) = up
                .store()
                .with_tree(Durability::Group, move |t| crate::storage::write(t, &[w]))
                .await
            {
                up.storage_error();
                tracing::error!(error = %e, "keypad lock end not stored");
            }
        }
        let locked = self.access.lockout.is_locked(now);
        if locked != up.alarm_active(&lock_key()) {
            let detail = if locked {
                lock_detail(rules(ctx))
            } else {
                "keypad unlocked".into()
            };
            up.set_alarm(ctx, lock_key(), locked, detail).await;
        }
    }
}
