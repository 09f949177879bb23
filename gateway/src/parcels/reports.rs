//! Reports from cabinets applied to orders: committed uplinks (hellos and their layouts,
//! access reports, command results, alarms), live or replayed from the audit log after a
//! crash; each is applied exactly once (the state machine treats a repeat as already done),
//! and the physical world wins over what the API decided meanwhile.

use locker_schemas::{
    AccessAction, AlarmKind, CabinetId, CompartmentId, Millis, OrderId, Outcome as CmdOutcome,
    Uplink, UplinkBody,
};

use super::actor::State;
use super::alloc::OutOfService;
use super::apply::Why;
use super::machine::Step;
use super::model::{Exception, OrderKind, OrderState};
use crate::ingest::Commit;
use crate::store::parcels::AuditRecord;

impl State {
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
                    self.table.touch_cabinet(&u.cabinet);
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
            UplinkBody::Door(d) if !d.open => {
                if let Some(present) = d.parcel {
                    self.on_parcel_sensor(&u.cabinet, d.compartment, present, now);
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
                AlarmKind::KeypadLocked if a.active => {
                    self.metrics.keypad_lockouts.inc();
                    tracing::warn!(cabinet = %u.cabinet, detail = %a.detail, "keypad locked after wrong codes");
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
            if matches!(
                e,
                Exception::ParcelStillPresent | Exception::PickupWithoutParcel
            ) {
                if let (Some(cabinet), Some(compartment)) = (o.cabinet.clone(), o.compartment) {
                    self.sensor_notes.push(crate::rules::SensorNote {
                        cabinet,
                        compartment,
                        order: id.to_string(),
                        exception: e.as_str().to_string(),
                        at: why.at,
                    });
                }
            }
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

    /// A door closed and its parcel sensor was read. A parcel nobody accounts for keeps the
    /// compartment out of allocation, and the order that held it last (a pickup or a
    /// collection that left the parcel inside) gets `parcel_still_present`.
    fn on_parcel_sensor(&mut self, cab: &CabinetId, c: CompartmentId, present: bool, now: Millis) {
        let Some(slot) = self.table.set_parcel(cab, c, Some(present)) else {
            return;
        };
        if !present || slot.holder.is_some() || slot.out_of_service.is_some() {
            return;
        }
        self.table
            .set_service(cab, c, Some(OutOfService::UnknownParcel));
        self.cabinet_changed(cab);
        let why = Why::new("door", "cabinet", now).detail(format!(
            "compartment {c}: the parcel sensor reads a parcel after the door closed"
        ));
        let last = slot.last_holder.filter(|id| {
            self.orders
                .get(id)
                .is_some_and(|o| matches!(o.state, OrderState::PickedUp | OrderState::Returned))
        });
        match last {
            Some(id) => self.exception(id, Exception::ParcelStillPresent, &why),
            None => {
                self.sensor_notes.push(crate::rules::SensorNote {
                    cabinet: cab.clone(),
                    compartment: c,
                    order: "none".into(),
                    exception: "parcel_without_order".into(),
                    at: now,
                });
                self.metrics.unmatched.with_label_values(&["parcel"]).inc();
                tracing::warn!(cabinet = %cab, compartment = %c, "a parcel no order accounts for: compartment out of service");
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
                tracking: None,
                reference: None,
            });
            return;
        };
        match a.action {
            AccessAction::Deposit => {
                // not known until the door closes again
                self.table.set_parcel(&u.cabinet, a.compartment, None);
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
                // the sensor said empty when the door last closed on this parcel
                let empty = self
                    .table
                    .slot(&u.cabinet, a.compartment)
                    .and_then(|s| s.parcel)
                    == Some(false);
                if let Ok(true) = self.step(id, Step::PickedUp, &why) {
                    if empty {
                        self.exception(id, Exception::PickupWithoutParcel, &why);
                    }
                }
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
}
