//! How the parcel state changes: one transition path for every cause (API, cabinet reports,
//! command results, timers) that runs the state machine, then its effects (compartment held
//! or freed, codes issued or revoked, notices queued, the credential set marked changed, the
//! history, the audit trail and the `gw/parcel` event); and the application of committed
//! uplinks and of the timers.

use locker_schemas::{
    AccessAction, AlarmKind, CabinetId, CompartmentId, Millis, OrderId, Outcome as CmdOutcome,
    ParcelEvent, Uplink, UplinkBody,
};

use super::actor::State;
use super::alloc::OutOfService;
use super::codes;
use super::machine::{self, Outcome, Step};
use super::model::{Exception, HistoryEntry, Notice, NoticeKind, Order, OrderKind, OrderState};
use super::{ParcelError, HOUR_MS};
use crate::ingest::Commit;
use crate::store::parcels::AuditRecord;

/// A prepared remote unlock with no result after this long is forgotten (its command either
/// never came to be, or ended without an answer: the dispatcher gives up well before).
const STALE_UNLOCK_MS: Millis = 6 * HOUR_MS;

/// Who and what caused a change.
#[derive(Debug, Clone)]
pub(crate) struct Why {
    pub cause: &'static str,
    pub actor: String,
    pub detail: String,
    pub at: Millis,
}

impl Why {
    pub fn new(cause: &'static str, actor: impl Into<String>, at: Millis) -> Self {
        Self {
            cause,
            actor: actor.into(),
            detail: String::new(),
            at,
        }
    }

    pub fn detail(mut self, d: impl Into<String>) -> Self {
        self.detail = d.into();
        self
    }
}

impl State {
    /// Stores a changed order: the batch, the indexes, the credential set of its cabinet.
    pub(crate) fn put_order(&mut self, o: Order) {
        let before = self.orders.get(&o.id).map(|x| x.state);
        if before != Some(o.state) {
            let g = &self.metrics.orders;
            if let Some(b) = before {
                g.with_label_values(&[b.as_str()]).dec();
            }
            g.with_label_values(&[o.state.as_str()]).inc();
        }
        if let Some(c) = &o.cabinet {
            self.dirty_creds.insert(c.clone());
            if o.state.is_final() {
                if let Some(set) = self.at_cabinet.get_mut(c) {
                    set.remove(&o.id);
                }
            }
        }
        self.index_order(&o);
        self.batch.orders.push(o.clone());
        self.orders.insert(o.id, o);
    }

    /// Runs `step` on an order with its effects. `Ok(false)` when it was already applied.
    pub(crate) fn step(&mut self, id: OrderId, step: Step, why: &Why) -> Result<bool, ParcelError> {
        let Some(mut o) = self.orders.get(&id).cloned() else {
            return Err(ParcelError::NotFound(format!("order {id}")));
        };
        let (to, exception) = match machine::next(o.kind, o.state, step)? {
            Outcome::Same => return Ok(false),
            Outcome::Next(to, e) => (to, e),
        };
        let from = o.state;
        o.state = to;
        o.updated_at = why.at;
        if exception.is_some() {
            o.exception = exception;
        }
        // effects of the new state
        match to {
            OrderState::Created => {
                self.free(&mut o);
                o.compartment = None;
                o.reserved_until = None;
            }
            OrderState::Reserved => {
                o.reserved_until = Some(why.at + u64::from(self.cfg.reservation_h) * HOUR_MS);
                if o.kind == OrderKind::Return {
                    self.issue_codes(&mut o, NoticeKind::ReturnCode, why.at);
                }
            }
            OrderState::Ready => {
                if step == Step::Extend && from == OrderState::Ready {
                    // the deadline was moved by the caller; the code stays
                } else {
                    if step != Step::Extend {
                        o.pickup_deadline = Some(machine::deadline(why.at, o.pickup_window_h));
                    }
                    o.reminded = false;
                    let kind = if step == Step::Extend {
                        NoticeKind::Resend
                    } else {
                        NoticeKind::Ready
                    };
                    self.issue_codes(&mut o, kind, why.at);
                }
            }
            OrderState::Expired => {
                o.pin_hash = None;
                o.qr_hash = None;
                self.notice(&o, NoticeKind::Expired, None, None, why.at);
            }
            OrderState::ReturnRequested => {
                o.pin_hash = None;
                o.qr_hash = None;
            }
            OrderState::PickedUp | OrderState::Returned | OrderState::Cancelled => {
                o.pin_hash = None;
                o.qr_hash = None;
                o.reserved_until = None;
                self.free(&mut o);
            }
            OrderState::Deposited => {
                o.reserved_until = None;
                o.pin_hash = None;
            }
        }
        if let Some(e) = exception {
            self.metrics
                .exceptions
                .with_label_values(&[e.as_str()])
                .inc();
        }
        self.record(&mut o, from, why, exception);
        self.put_order(o);
        Ok(true)
    }

    /// Appends the history entry, the audit record and the `gw/parcel` event of a change.
    pub(crate) fn record(
        &mut self,
        o: &mut Order,
        from: OrderState,
        why: &Why,
        exception: Option<Exception>,
    ) {
        o.history.push(HistoryEntry {
            at: why.at,
            from,
            to: o.state,
            cause: why.cause.into(),
            actor: why.actor.clone(),
            cabinet: o.cabinet.clone(),
            compartment: o.compartment,
            exception,
            detail: why.detail.clone(),
        });
        let pos = self.next_audit;
        self.next_audit += 1;
        self.batch.audit.push(AuditRecord {
            pos,
            at: why.at,
            what: "order".into(),
            order: Some(o.id),
            carrier: Some(o.carrier.clone()),
            site: Some(o.site.clone()),
            cabinet: o.cabinet.clone(),
            compartment: o.compartment,
            from: Some(from.as_str().into()),
            to: Some(o.state.as_str().into()),
            cause: why.cause.into(),
            actor: why.actor.clone(),
            exception,
            detail: why.detail.clone(),
        });
        if let Some(cab) = &o.cabinet {
            self.events.push((
                cab.clone(),
                ParcelEvent {
                    order: o.id.to_string(),
                    state: o.state.as_str().into(),
                    ts: why.at,
                    compartment: o.compartment,
                    cause: why.cause.into(),
                    actor: why.actor.clone(),
                    exception: o.exception.map(|e| e.as_str().to_owned()),
                    carrier: o.carrier.to_string(),
                },
            ));
        }
    }

    /// Appends a non-order audit record.
    pub(crate) fn audit(&mut self, mut r: AuditRecord) {
        if r.site.is_none() {
            r.site = r
                .cabinet
                .as_ref()
                .and_then(|c| self.site_of.get(c).cloned());
        }
        r.pos = self.next_audit;
        self.next_audit += 1;
        self.batch.audit.push(r);
    }

    /// Frees the order's compartment in the table (a finished order still names the
    /// compartment it was in).
    fn free(&mut self, o: &mut Order) {
        if let (Some(cab), Some(c)) = (o.cabinet.clone(), o.compartment) {
            self.table.release(&cab, c, o.id);
            self.cabinet_changed(&cab);
            self.retry_waiting = true;
        }
    }

    /// The compartment table of a cabinet changed: it is written and its set is resent.
    pub(crate) fn cabinet_changed(&mut self, cab: &CabinetId) {
        if let Some(slots) = self.table.cabinets.get(cab) {
            self.batch.cabinets.retain(|(c, _)| c != cab);
            self.batch.cabinets.push((cab.clone(), slots.clone()));
        }
        self.dirty_creds.insert(cab.clone());
    }

    /// Issues a new PIN (unique among the cabinet's live codes) and, for deliveries, a QR
    /// token, and queues the notice carrying them. The codes themselves are only in the
    /// notice; the order keeps their hashes.
    fn issue_codes(&mut self, o: &mut Order, kind: NoticeKind, at: Millis) {
        let Some(cab) = o.cabinet.clone() else {
            return;
        };
        let live: std::collections::HashSet<[u8; 32]> = self
            .at_cabinet
            .get(&cab)
            .into_iter()
            .flatten()
            .filter(|id| **id != o.id)
            .filter_map(|id| self.orders.get(id))
            .flat_map(|x| [x.pin_hash, x.qr_hash])
            .flatten()
            .collect();
        let (pin, pin_hash) = codes::new_pin(self.cfg.pin_digits, &cab, &live);
        o.pin_hash = Some(pin_hash);
        let qr = if o.kind == OrderKind::Delivery {
            let (qr, h) = codes::new_qr(&cab);
            o.qr_hash = Some(h);
            Some(qr)
        } else {
            None
        };
        self.notice(o, kind, Some(pin), qr, at);
    }

    /// Puts a notification request in the outbox.
    pub(crate) fn notice(
        &mut self,
        o: &Order,
        kind: NoticeKind,
        pin: Option<String>,
        qr: Option<String>,
        at: Millis,
    ) {
        let site = self.sites.get(&o.site);
        let expires_at = match kind {
            NoticeKind::ReturnCode => o.reserved_until,
            NoticeKind::Expired => None,
            _ => o.pickup_deadline,
        };
        let tz = site.map(|s| s.time_zone.as_str()).unwrap_or("UTC");
        let n = Notice {
            id: self.next_notice,
            order: o.id,
            kind,
            carrier: o.carrier.clone(),
            site: o.site.clone(),
            cabinet: o.cabinet.clone(),
            compartment: o.compartment,
            recipient: o.recipient.clone(),
            pin,
            qr,
            site_name: site.map(|s| s.name.clone()).unwrap_or_default(),
            address: site.map(|s| s.address.clone()).unwrap_or_default(),
            expires_at,
            expires_local: expires_at.and_then(|t| super::tz::local_time(t, tz)),
            created_at: at,
        };
        self.next_notice += 1;
        let name = serde_json::to_value(kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        self.metrics.notices.with_label_values(&[&name]).inc();
        self.batch.notices.push(n);
    }

    /// Holds a compartment for an order (best fit) and moves it to reserved; an order that
    /// finds none stays created with the `no_compartment` exception and waits.
    pub(crate) fn reserve(&mut self, id: OrderId, why: &Why) -> Result<(), ParcelError> {
        let Some(o) = self.orders.get(&id) else {
            return Err(ParcelError::NotFound(format!("order {id}")));
        };
        if o.state != OrderState::Created {
            return Err(machine::next(o.kind, o.state, Step::Reserve)
                .err()
                .map(ParcelError::from)
                .unwrap_or_else(|| ParcelError::Invalid("not reservable".into())));
        }
        let (site, want, carrier, size) = (
            o.site.clone(),
            o.requested_cabinet.clone(),
            o.carrier.clone(),
            o.size,
        );
        let candidates = self
            .sites
            .get(&site)
            .map(|s| s.cabinets.clone())
            .unwrap_or_default();
        match self
            .table
            .allocate(&site, &candidates, want.as_ref(), &carrier, size, id)
        {
            Ok((cab, c)) => {
                if let Some(o) = self.orders.get_mut(&id) {
                    o.cabinet = Some(cab.clone());
                    o.compartment = Some(c);
                    if o.exception == Some(Exception::NoCompartment) {
                        o.exception = None;
                    }
                }
                self.at_cabinet.entry(cab.clone()).or_default().insert(id);
                self.cabinet_changed(&cab);
                self.step(id, Step::Reserve, why)?;
                Ok(())
            }
            Err(e) => {
                self.metrics.allocation_failures.inc();
                if let Some(mut o) = self.orders.get(&id).cloned() {
                    if o.exception != Some(Exception::NoCompartment) {
                        o.exception = Some(Exception::NoCompartment);
                        self.metrics
                            .exceptions
                            .with_label_values(&[Exception::NoCompartment.as_str()])
                            .inc();
                        let from = o.state;
                        let why = why.clone().detail(e.to_string());
                        self.record(&mut o, from, &why, Some(Exception::NoCompartment));
                        self.put_order(o);
                    }
                }
                Err(ParcelError::NoCompartment(e.to_string()))
            }
        }
    }

    /// A batch of committed uplinks.
    pub(crate) fn on_commit(&mut self, c: &Commit) {
        let now = locker_schemas::now_millis();
        for (u, pos) in c.events.iter().zip(&c.positions) {
            if *pos != 0 && self.cursors.get(&u.cabinet).is_some_and(|p| *pos <= *p) {
                continue; // applied by the catch-up already
            }
            self.apply_uplink(*pos, u, now);
        }
    }

    /// One committed uplink (live or replayed from the audit log).
    pub(crate) fn apply_uplink(&mut self, pos: u64, u: &Uplink, now: Millis) {
        if pos != 0 {
            self.cursors.insert(u.cabinet.clone(), pos);
            self.cursors_dirty.insert(u.cabinet.clone());
        }
        match &u.body {
            UplinkBody::Hello(h) => {
                let comps: Vec<_> = h
                    .compartments
                    .iter()
                    .map(|c| (c.id, c.size.into()))
                    .collect();
                let (changed, orphaned) = self.table.layout(&u.cabinet, &comps);
                if let Some(site) = self.site_of.get(&u.cabinet).cloned() {
                    if let Some(k) = self.table.cabinets.get_mut(&u.cabinet) {
                        k.site = Some(site);
                    }
                }
                for id in orphaned {
                    self.exception(
                        id,
                        Exception::CompartmentRemoved,
                        &Why::new("layout", "cabinet", now),
                    );
                }
                let held = self.creds_versions.get(&u.cabinet).copied().unwrap_or(0);
                if h.creds_version > held {
                    // the cabinet is ahead of us (our storage was replaced): the next version
                    // goes past it
                    self.creds_versions
                        .insert(u.cabinet.clone(), h.creds_version);
                }
                if changed
                    || h.creds_version > held
                    || (held == 0 && self.site_of.contains_key(&u.cabinet))
                {
                    // a new layout (or a version to move past) is a new set
                    self.cabinet_changed(&u.cabinet);
                    self.retry_waiting = true;
                } else if h.creds_version != held {
                    // the cabinet missed the current set (it was offline): send it again
                    self.send_current.insert(u.cabinet.clone());
                }
            }
            UplinkBody::Access(a) => self.on_access(u, a, now),
            UplinkBody::Result(r) => self.on_result(r.clone(), now),
            UplinkBody::Alarm(a) => match a.kind {
                AlarmKind::ForcedOpen if a.active => {
                    if let Some(c) = a.compartment {
                        self.out_of_service(
                            &u.cabinet,
                            c,
                            OutOfService::Forced,
                            Exception::DoorForced,
                            now,
                        );
                    }
                }
                AlarmKind::LockBoardOffline => {
                    if let Some(k) = self.table.cabinets.get_mut(&u.cabinet) {
                        let b = a.board.unwrap_or(0);
                        if a.active {
                            k.boards_offline.insert(b);
                        } else {
                            k.boards_offline.remove(&b);
                        }
                        self.cabinet_changed(&u.cabinet);
                    }
                }
                _ => {}
            },
            _ => {}
        }
    }

    /// Puts an exception on an order without changing its state.
    pub(crate) fn exception(&mut self, id: OrderId, e: Exception, why: &Why) {
        if let Some(mut o) = self.orders.get(&id).cloned() {
            o.exception = Some(e);
            o.updated_at = why.at;
            self.metrics
                .exceptions
                .with_label_values(&[e.as_str()])
                .inc();
            let from = o.state;
            self.record(&mut o, from, why, Some(e));
            self.put_order(o);
        }
    }

    /// A compartment failed: out of service; its order gets the exception and, if it was
    /// only reserved, a new compartment.
    fn out_of_service(
        &mut self,
        cab: &CabinetId,
        c: CompartmentId,
        oos: OutOfService,
        e: Exception,
        now: Millis,
    ) {
        self.table.set_service(cab, c, Some(oos));
        self.cabinet_changed(cab);
        let holder = self.table.slot(cab, c).and_then(|s| s.holder);
        if let Some(id) = holder {
            let why = Why::new("alarm", "cabinet", now)
                .detail(format!("compartment {c}: {}", e.as_str()));
            self.exception(id, e, &why);
            if self
                .orders
                .get(&id)
                .is_some_and(|o| o.state == OrderState::Reserved)
            {
                let _ = self.step(id, Step::Release, &why);
                let _ = self.reserve(id, &why);
            }
        }
    }

    fn on_access(&mut self, u: &Uplink, a: &locker_schemas::LocalAccess, now: Millis) {
        let actor = if a.actor.is_empty() {
            match a.action {
                AccessAction::Pickup => "recipient".to_owned(),
                _ => "customer".to_owned(),
            }
        } else {
            a.actor.clone()
        };
        let why =
            Why::new("local_access", actor, now).detail(format!("compartment {}", a.compartment));
        let id = match a.reference.strip_prefix("tracking:") {
            Some(tracking) => self.order_by_tracking(&u.cabinet, &a.actor, tracking),
            None => a
                .reference
                .parse::<OrderId>()
                .ok()
                .filter(|id| self.orders.contains_key(id)),
        };
        let Some(id) = id else {
            self.metrics.unmatched.with_label_values(&["access"]).inc();
            tracing::warn!(cabinet = %u.cabinet, reference = %a.reference, "access for an unknown order");
            if a.action == AccessAction::Deposit {
                // a parcel nobody accounts for is inside: keep the compartment out of allocation
                self.table.set_service(
                    &u.cabinet,
                    a.compartment,
                    Some(OutOfService::UnknownParcel),
                );
                self.cabinet_changed(&u.cabinet);
            }
            self.audit(AuditRecord {
                pos: 0,
                at: now,
                what: "unknown_access".into(),
                order: None,
                carrier: None,
                site: self.site_of.get(&u.cabinet).cloned(),
                cabinet: Some(u.cabinet.clone()),
                compartment: Some(a.compartment),
                from: None,
                to: None,
                cause: "local_access".into(),
                actor: why.actor.clone(),
                exception: None,
                detail: format!("reference {:?}", a.reference),
            });
            return;
        };
        match a.action {
            AccessAction::Deposit => {
                self.move_to(id, &u.cabinet, a.compartment, &why);
                if let Ok(true) = self.step(id, Step::Deposited, &why) {
                    if self.orders.get(&id).is_some_and(|o| {
                        o.kind == OrderKind::Delivery && o.state == OrderState::Deposited
                    }) {
                        let _ = self.step(id, Step::Ready, &Why::new("gateway", "gateway", now));
                    }
                }
            }
            AccessAction::Pickup => {
                let _ = self.step(id, Step::PickedUp, &why);
            }
            AccessAction::Collect => {
                let _ = self.step(id, Step::Collected, &why);
            }
        }
    }

    /// A live order of the courier's carrier with this tracking number at the cabinet's site.
    fn order_by_tracking(&self, cab: &CabinetId, courier: &str, tracking: &str) -> Option<OrderId> {
        let carrier = courier
            .parse::<locker_schemas::CourierId>()
            .ok()
            .and_then(|c| self.couriers.get(&c))
            .map(|c| c.carrier.clone())?;
        let site = self.site_of.get(cab)?;
        self.orders
            .values()
            .rev()
            .find(|o| {
                o.carrier == carrier
                    && &o.site == site
                    && o.tracking == tracking
                    && !o.state.is_final()
            })
            .map(|o| o.id)
    }

    /// The parcel went into `c` of `cab`: if that is not the order's compartment, the order
    /// moves there (the physical world wins); another order holding it only as a reservation
    /// is moved elsewhere.
    fn move_to(&mut self, id: OrderId, cab: &CabinetId, c: CompartmentId, why: &Why) {
        let Some(o) = self.orders.get(&id) else {
            return;
        };
        if o.cabinet.as_ref() == Some(cab) && o.compartment == Some(c) {
            return;
        }
        let (old_cab, old_c, old_size) = (o.cabinet.clone(), o.compartment, o.size);
        if let (Some(k), Some(oc)) = (old_cab, old_c) {
            self.table.release(&k, oc, id);
            self.cabinet_changed(&k);
        }
        if let Some(other) = self.table.hold(cab, c, id) {
            self.exception(other, Exception::CompartmentTaken, why);
            if self
                .orders
                .get(&other)
                .is_some_and(|o| o.state == OrderState::Reserved)
            {
                if let Some(o) = self.orders.get_mut(&other) {
                    o.compartment = None;
                }
                let _ = self.step(other, Step::Release, why);
                let _ = self.reserve(other, why);
            }
        }
        self.cabinet_changed(cab);
        let bigger = self.table.slot(cab, c).is_some_and(|s| s.size > old_size);
        if let Some(o) = self.orders.get_mut(&id) {
            o.cabinet = Some(cab.clone());
            o.compartment = Some(c);
            if bigger {
                o.size = self.table.slot(cab, c).map_or(o.size, |s| s.size);
            }
        }
        self.at_cabinet.entry(cab.clone()).or_default().insert(id);
        if bigger && old_c.is_some() {
            self.exception(id, Exception::TooSmall, why);
        }
    }

    /// A command result: the end of a remote unlock of an order, if it was one.
    pub(crate) fn on_result(&mut self, r: locker_schemas::CommandResult, now: Millis) {
        let Some(id) = self.pending_cmds.remove(&r.command) else {
            return; // not a remote unlock of an order
        };
        let Some(mut o) = self.orders.get(&id).cloned() else {
            return;
        };
        let Some(p) = o.pending_unlock.take() else {
            return;
        };
        self.orders.insert(id, o.clone());
        self.batch.orders.push(o.clone());
        let why = Why::new("command", p.actor.clone(), now)
            .detail(format!("{} ({}): {}", r.outcome, p.reason, r.detail));
        match r.outcome {
            CmdOutcome::Opened | CmdOutcome::AlreadyOpen => {
                let step = match p.purpose.as_str() {
                    "deposit" => Step::Deposited,
                    "pickup" => Step::PickedUp,
                    _ => Step::Collected,
                };
                if let (Some(cab), true) = (o.cabinet.clone(), step == Step::Deposited) {
                    self.move_to(id, &cab, p.compartment, &why);
                }
                if let Ok(true) = self.step(id, step, &why) {
                    if step == Step::Deposited
                        && self
                            .orders
                            .get(&id)
                            .is_some_and(|o| o.kind == OrderKind::Delivery)
                    {
                        let _ = self.step(id, Step::Ready, &Why::new("gateway", "gateway", now));
                    }
                }
                if let Some(cab) = o.cabinet.take() {
                    if self
                        .table
                        .slot(&cab, p.compartment)
                        .and_then(|s| s.out_of_service)
                        == Some(OutOfService::Jammed)
                    {
                        self.table.set_service(&cab, p.compartment, None);
                        self.cabinet_changed(&cab);
                    }
                }
            }
            CmdOutcome::Jammed => {
                if let Some(cab) = o.cabinet.clone() {
                    self.out_of_service(
                        &cab,
                        p.compartment,
                        OutOfService::Jammed,
                        Exception::DoorJammed,
                        now,
                    );
                }
            }
            _ => {
                // expired, rejected, cancelled, no answer: the order stays as it is
                let from = o.state;
                self.record(&mut o, from, &why, None);
                self.put_order(o);
            }
        }
    }

    /// Timers: lapsed reservations, reminders, ended pickup windows, waiting orders.
    pub(crate) fn on_tick(&mut self, now: Millis) {
        let timer = Why::new("timer", "gateway", now);
        let mut lapsed = Vec::new();
        let mut remind = Vec::new();
        let mut expire = Vec::new();
        let before = u64::from(self.cfg.reminder_before_h) * HOUR_MS;
        for o in self.orders.values() {
            match o.state {
                OrderState::Reserved if o.reserved_until.is_some_and(|t| now >= t) => {
                    lapsed.push(o.id)
                }
                OrderState::Ready => match o.pickup_deadline {
                    Some(t) if now >= t => expire.push(o.id),
                    Some(t) if before > 0 && !o.reminded && now + before >= t => remind.push(o.id),
                    _ => {}
                },
                _ => {}
            }
        }
        for id in lapsed {
            let _ = self.step(
                id,
                Step::Release,
                &timer.clone().detail("reservation lapsed"),
            );
        }
        for id in expire {
            let _ = self.step(id, Step::Expire, &timer);
        }
        for id in remind {
            if let Some(mut o) = self.orders.get(&id).cloned() {
                o.reminded = true;
                self.notice(&o, NoticeKind::Reminder, None, None, now);
                self.batch.orders.push(o.clone());
                self.orders.insert(id, o);
            }
        }
        // a prepared unlock whose command never came to be (a crash between the two)
        let stale: Vec<OrderId> = self
            .orders
            .values()
            .filter(|o| {
                o.pending_unlock
                    .as_ref()
                    .is_some_and(|p| now > p.issued_at + STALE_UNLOCK_MS)
            })
            .map(|o| o.id)
            .collect();
        for id in stale {
            if let Some(mut o) = self.orders.get(&id).cloned() {
                if let Some(p) = o.pending_unlock.take() {
                    self.pending_cmds.remove(&p.command);
                    let from = o.state;
                    let why = timer.clone().detail(format!(
                        "remote unlock {} ended without an outcome",
                        p.command
                    ));
                    self.record(&mut o, from, &why, None);
                    self.put_order(o);
                }
            }
        }
        if std::mem::take(&mut self.retry_waiting) {
            let waiting: Vec<OrderId> = self.waiting.iter().copied().collect();
            for id in waiting {
                let _ = self.reserve(id, &timer);
            }
        }
        self.retry_due = true;
    }
}
