//! The API's operations on the parcel state, with the scope checks: a carrier sees and changes
//! only its own orders, couriers and partitions (anything else is "not found", so ids cannot be
//! probed), a site manager only its sites, an operator everything. Answers are deferred until
//! the batch they changed is durable.

use locker_schemas::{now_millis, CabinetId, CompartmentId, OrderId};

use super::actor::{Deferred, State};
use super::alloc::OutOfService;
use super::apply::Why;
use super::machine::{self, Step};
use super::model::{Courier, NoticeKind, Order, OrderKind, OrderState, PendingUnlock, Site};
use super::views::{CabinetOccupancy, CompartmentView, CourierView, NewOrder, OrderFilter};
use super::views::{OrderView, SiteOccupancy};
use super::{Caller, Msg, OrderAction, ParcelError, Scope, UnlockTarget, HOUR_MS};
use crate::store::parcels::AuditRecord;

fn defer<T: Send + 'static>(d: &mut Deferred, tx: tokio::sync::oneshot::Sender<T>, v: T) {
    d.push(Box::new(move || {
        let _ = tx.send(v);
    }));
}

fn operator_only(c: &Caller, what: &str) -> Result<(), ParcelError> {
    match c.scope {
        Scope::Operator => Ok(()),
        _ => Err(ParcelError::Forbidden(format!(
            "{what} needs an operator token (this token's scope is {})",
            c.scope.name()
        ))),
    }
}

impl State {
    pub(crate) fn on_msg(&mut self, m: Msg, d: &mut Deferred) {
        match m {
            Msg::PutSite(s, c, tx) => {
                let r = self.put_site(s, &c);
                defer(d, tx, r)
            }
            Msg::Sites(c, tx) => {
                let v = self.sites.values().filter(|s| c.scope.sees_site(&s.id) || matches!(&c.scope, Scope::Carrier { carrier } if self.carriers.get(carrier).is_some_and(|k| k.sites.is_empty() || k.sites.contains(&s.id)))).cloned().collect();
                defer(d, tx, Ok(v))
            }
            Msg::PutCarrier(k, c, tx) => {
                let r = operator_only(&c, "creating a carrier").map(|()| {
                    self.batch.carriers.push(k.clone());
                    self.carriers.insert(k.id.clone(), k.clone());
                    self.all_creds_dirty();
                    k
                });
                defer(d, tx, r)
            }
            Msg::Carriers(c, tx) => {
                let v = self
                    .carriers
                    .values()
                    .filter(|k| match &c.scope {
                        Scope::Carrier { carrier } => carrier == &k.id,
                        _ => true,
                    })
                    .cloned()
                    .collect();
                defer(d, tx, Ok(v))
            }
            Msg::PutCourier(k, c, tx) => {
                let r = self.put_courier(k, &c);
                defer(d, tx, r)
            }
            Msg::RemoveCourier(id, c, tx) => {
                let r = match self.couriers.get(&id) {
                    Some(k)
                        if c.scope == Scope::Operator
                            || matches!(&c.scope, Scope::Carrier { carrier } if *carrier == k.carrier) =>
                    {
                        self.couriers.remove(&id);
                        self.batch.removed_couriers.push(id);
                        self.all_creds_dirty();
                        Ok(())
                    }
                    _ => Err(ParcelError::NotFound(format!("courier {id}"))),
                };
                defer(d, tx, r)
            }
            Msg::Couriers(carrier, c, tx) => {
                let v = self
                    .couriers
                    .values()
                    .filter(|k| carrier.as_ref().is_none_or(|x| *x == k.carrier))
                    .filter(|k| match &c.scope {
                        Scope::Carrier { carrier } => *carrier == k.carrier,
                        Scope::Operator => true,
                        Scope::SiteManager { .. } => false,
                    })
                    .map(CourierView::from)
                    .collect();
                defer(d, tx, Ok(v))
            }
            Msg::Create(orders, c, tx) => {
                let v = if orders.len() > self.cfg.max_batch {
                    vec![Err(ParcelError::Invalid(format!(
                        "{} orders in one batch; at most {} (parcels.max_batch)",
                        orders.len(),
                        self.cfg.max_batch
                    )))]
                } else {
                    orders.into_iter().map(|o| self.create(o, &c)).collect()
                };
                defer(d, tx, v)
            }
            Msg::Get(id, c, tx) => {
                let r = self.visible(id, &c).map(OrderView::from);
                defer(d, tx, r)
            }
            Msg::List(f, c, tx) => {
                let v = self.list(&f, &c);
                defer(d, tx, Ok(v))
            }
            Msg::Act(id, a, c, tx) => {
                let r = self.act(id, a, &c);
                defer(d, tx, r)
            }
            Msg::PrepareUnlock(id, reason, c, tx) => {
                let r = self.prepare_unlock(id, reason, &c);
                defer(d, tx, r)
            }
            Msg::UnlockFailed(id, command) => {
                if let Some(mut o) = self.orders.get(&id).cloned() {
                    if o.pending_unlock
                        .as_ref()
                        .is_some_and(|p| p.command == command)
                    {
                        o.pending_unlock = None;
                        self.pending_cmds.remove(&command);
                        self.put_order(o);
                    }
                }
            }
            Msg::Partition(cab, comps, carrier, c, tx) => {
                let r = self.partition(cab, comps, carrier, &c);
                defer(d, tx, r)
            }
            Msg::Service(cab, comp, out, reason, c, tx) => {
                let r = self.service(cab, comp, out, reason, &c);
                defer(d, tx, r)
            }
            Msg::Compartments(cab, c, tx) => {
                let v = self.creds_versions.get(&cab).copied().unwrap_or(0);
                let r = self.compartments(&cab, &c).map(|x| (x, v));
                defer(d, tx, r)
            }
            Msg::Occupancy(site, c, tx) => {
                let r = if c.scope.sees_site(&site) && self.sites.contains_key(&site) {
                    let cabinets = self
                        .sites
                        .get(&site)
                        .map(|s| s.cabinets.clone())
                        .unwrap_or_default();
                    Ok(SiteOccupancy {
                        site,
                        cabinets: cabinets
                            .into_iter()
                            .map(|k| CabinetOccupancy {
                                online: self.online.contains(&k),
                                by_size: self.table.occupancy(&k),
                                cabinet: k,
                            })
                            .collect(),
                    })
                } else {
                    Err(ParcelError::NotFound(format!("site {site}")))
                };
                defer(d, tx, r)
            }
            Msg::CheckOverride(cab, comp, c, tx) => {
                let site = self.site_of.get(&cab);
                let r = match (&c.scope, site) {
                    (Scope::Operator, _) => Ok(()),
                    (Scope::SiteManager { sites }, Some(s)) if sites.contains(s) => Ok(()),
                    _ => Err(ParcelError::NotFound(format!("cabinet {cab}"))),
                }
                .and_then(|()| {
                    let known = self.table.slot(&cab, comp).is_some()
                        || !self.table.cabinets.contains_key(&cab);
                    if known {
                        Ok(())
                    } else {
                        Err(ParcelError::NotFound(format!(
                            "compartment {comp} of {cab}"
                        )))
                    }
                });
                defer(d, tx, r)
            }
            Msg::Audit(r) => self.audit(r),
            Msg::Presence(cab, online) => {
                if online {
                    self.online.insert(cab);
                } else {
                    self.online.remove(&cab);
                    self.resend.remove(&cab);
                }
            }
        }
    }

    fn all_creds_dirty(&mut self) {
        let all: Vec<CabinetId> = self.site_of.keys().cloned().collect();
        self.dirty_creds.extend(all);
    }

    fn put_site(&mut self, s: Site, c: &Caller) -> Result<Site, ParcelError> {
        operator_only(c, "creating a site")?;
        if !super::tz::valid(&s.time_zone) {
            return Err(ParcelError::Invalid(format!(
                "time_zone {:?} is not an IANA time zone (for example Europe/Berlin)",
                s.time_zone
            )));
        }
        for cab in &s.cabinets {
            if let Some(other) = self.site_of.get(cab).filter(|o| **o != s.id) {
                return Err(ParcelError::Invalid(format!(
                    "cabinet {cab} already belongs to site {other}"
                )));
            }
        }
        if let Some(old) = self.sites.get(&s.id) {
            let removed: Vec<CabinetId> = old
                .cabinets
                .iter()
                .filter(|k| !s.cabinets.contains(k))
                .cloned()
                .collect();
            for k in removed {
                if self.at_cabinet.get(&k).is_some_and(|o| !o.is_empty()) {
                    return Err(ParcelError::Invalid(format!(
                        "cabinet {k} still holds orders; it cannot leave the site"
                    )));
                }
                self.site_of.remove(&k);
                if let Some(slots) = self.table.cabinets.get_mut(&k) {
                    slots.site = None;
                }
                self.cabinet_changed(&k);
            }
        }
        self.index_site(&s);
        for k in &s.cabinets {
            self.cabinet_changed(k);
        }
        self.batch.sites.push(s.clone());
        self.sites.insert(s.id.clone(), s.clone());
        self.retry_waiting = true;
        Ok(s)
    }

    fn put_courier(&mut self, k: Courier, c: &Caller) -> Result<CourierView, ParcelError> {
        match &c.scope {
            Scope::Operator => {}
            Scope::Carrier { carrier } if *carrier == k.carrier => {}
            _ => {
                return Err(ParcelError::Forbidden(
                    "couriers are managed by their carrier or an operator".into(),
                ))
            }
        }
        if !self.carriers.contains_key(&k.carrier) {
            return Err(ParcelError::NotFound(format!("carrier {}", k.carrier)));
        }
        if let Some(old) = self.couriers.get(&k.id).filter(|o| o.carrier != k.carrier) {
            return Err(ParcelError::Invalid(format!(
                "courier {} belongs to carrier {}",
                k.id, old.carrier
            )));
        }
        for code in [&k.badge, &k.pin].into_iter().flatten() {
            if code.len() < 4 || code.len() > 64 {
                return Err(ParcelError::Invalid(
                    "a badge or courier PIN has 4 to 64 characters".into(),
                ));
            }
            let clash = self.couriers.values().any(|o| {
                o.id != k.id && (o.badge.as_ref() == Some(code) || o.pin.as_ref() == Some(code))
            });
            if clash {
                return Err(ParcelError::Invalid(
                    "another courier already uses this badge or PIN".into(),
                ));
            }
        }
        self.batch.couriers.push(k.clone());
        let v = CourierView::from(&k);
        self.couriers.insert(k.id.clone(), k);
        self.all_creds_dirty();
        Ok(v)
    }

    /// Creates one order (or returns the one its idempotency key created).
    fn create(&mut self, n: NewOrder, c: &Caller) -> Result<(OrderView, bool), ParcelError> {
        if let Some(k) = &n.idempotency_key {
            if let Some(id) = self.idem.get(&(c.client.clone(), k.clone())) {
                if let Some(o) = self.orders.get(id) {
                    return Ok((OrderView::from(o), false));
                }
            }
        }
        let carrier = match (&c.scope, &n.carrier) {
            (Scope::Carrier { carrier }, None) => carrier.clone(),
            (Scope::Carrier { carrier }, Some(x)) if x == carrier => carrier.clone(),
            (Scope::Carrier { .. }, Some(_)) => {
                return Err(ParcelError::Forbidden(
                    "a carrier token creates orders of its own carrier only".into(),
                ))
            }
            (_, Some(x)) => x.clone(),
            (_, None) => {
                return Err(ParcelError::Invalid(
                    "carrier is required (this token is not a carrier's)".into(),
                ))
            }
        };
        let Some(k) = self.carriers.get(&carrier) else {
            return Err(ParcelError::NotFound(format!("carrier {carrier}")));
        };
        let Some(site) = self.sites.get(&n.site) else {
            return Err(ParcelError::NotFound(format!("site {}", n.site)));
        };
        if let Scope::SiteManager { sites } = &c.scope {
            if !sites.contains(&n.site) {
                return Err(ParcelError::NotFound(format!("site {}", n.site)));
            }
        }
        if !k.sites.is_empty() && !k.sites.contains(&n.site) {
            return Err(ParcelError::Invalid(format!(
                "carrier {carrier} does not serve site {}",
                n.site
            )));
        }
        if let Some(cab) = &n.cabinet {
            if !site.cabinets.contains(cab) {
                return Err(ParcelError::Invalid(format!(
                    "cabinet {cab} is not at site {}",
                    n.site
                )));
            }
        }
        if n.tracking.is_empty()
            || n.tracking.len() > 64
            || n.tracking.chars().any(char::is_control)
        {
            return Err(ParcelError::Invalid(
                "tracking: 1 to 64 printable characters (the parcel barcode)".into(),
            ));
        }
        if n.pickup_window_h == Some(0) {
            return Err(ParcelError::Invalid(
                "pickup_window_h must be above 0".into(),
            ));
        }
        let window = n
            .pickup_window_h
            .or(k.pickup_window_h)
            .or(site.pickup_window_h)
            .unwrap_or(self.cfg.pickup_window_h);
        let now = now_millis();
        let id = OrderId::generate();
        let o = Order {
            id,
            kind: n.kind,
            carrier,
            site: n.site,
            cabinet: n.cabinet.clone(),
            requested_cabinet: n.cabinet,
            compartment: None,
            size: n.size,
            tracking: n.tracking,
            reference: n.reference,
            recipient: n.recipient,
            state: OrderState::Created,
            exception: None,
            created_at: now,
            created_by: c.client.clone(),
            updated_at: now,
            reserved_until: None,
            pickup_deadline: None,
            pickup_window_h: window,
            reminded: false,
            pin_hash: None,
            qr_hash: None,
            idempotency_key: n.idempotency_key,
            pending_unlock: None,
            history: Vec::new(),
        };
        let why = Why::new("api", c.client.clone(), now);
        let mut o = o;
        self.record(&mut o, OrderState::Created, &why, None);
        self.put_order(o);
        if n.reserve {
            // no compartment free: the order is kept (created, no_compartment) and waits
            let _ = self.reserve(id, &why);
        }
        let o = self
            .orders
            .get(&id)
            .ok_or_else(|| ParcelError::NotFound(format!("order {id}")))?;
        Ok((OrderView::from(o), true))
    }

    /// An order the caller may see.
    fn visible(&self, id: OrderId, c: &Caller) -> Result<&Order, ParcelError> {
        self.orders
            .get(&id)
            .filter(|o| c.scope.sees(&o.carrier, &o.site))
            .ok_or_else(|| ParcelError::NotFound(format!("order {id}")))
    }

    fn list(&self, f: &OrderFilter, c: &Caller) -> Vec<OrderView> {
        let limit = f.limit.unwrap_or(100).clamp(1, 1000);
        let start = match f.after {
            Some(a) => std::ops::Bound::Excluded(a),
            None => std::ops::Bound::Unbounded,
        };
        self.orders
            .range((start, std::ops::Bound::Unbounded))
            .map(|(_, o)| o)
            .filter(|o| c.scope.sees(&o.carrier, &o.site))
            .filter(|o| f.site.as_ref().is_none_or(|s| *s == o.site))
            .filter(|o| f.status.is_none_or(|s| s == o.state))
            .filter(|o| f.carrier.as_ref().is_none_or(|k| *k == o.carrier))
            .filter(|o| f.cabinet.is_none() || f.cabinet == o.cabinet)
            .filter(|o| f.tracking.as_ref().is_none_or(|t| *t == o.tracking))
            .filter(|o| f.exception.is_none_or(|e| e == o.exception.is_some()))
            .take(limit)
            .map(OrderView::from)
            .collect()
    }

    fn act(&mut self, id: OrderId, a: OrderAction, c: &Caller) -> Result<OrderView, ParcelError> {
        let o = self.visible(id, c)?.clone();
        let now = now_millis();
        let why = Why::new("api", c.client.clone(), now);
        match a {
            OrderAction::Cancel => {
                self.step(id, Step::Cancel, &why)?;
            }
            OrderAction::RequestReturn => {
                self.step(id, Step::RequestReturn, &why)?;
            }
            OrderAction::Extend { hours } => {
                if hours == 0 || hours > 24 * 30 {
                    return Err(ParcelError::Invalid("hours: 1 to 720".into()));
                }
                machine::next(o.kind, o.state, Step::Extend)?;
                let base =
                    o.pickup_deadline
                        .unwrap_or(now)
                        .max(if o.state == OrderState::Expired {
                            now
                        } else {
                            0
                        });
                if let Some(x) = self.orders.get_mut(&id) {
                    x.pickup_deadline = Some(base + u64::from(hours) * HOUR_MS);
                    x.reminded = false;
                }
                let why = why.detail(format!("+{hours} h"));
                self.step(id, Step::Extend, &why)?;
            }
            OrderAction::ResendCode => match (o.kind, o.state) {
                (OrderKind::Delivery, OrderState::Ready)
                | (OrderKind::Return, OrderState::Reserved) => {
                    let mut x = o.clone();
                    let kind = if o.kind == OrderKind::Return {
                        NoticeKind::ReturnCode
                    } else {
                        NoticeKind::Resend
                    };
                    self.reissue(&mut x, kind, now);
                    let from = x.state;
                    self.record(
                        &mut x,
                        from,
                        &why.detail("code resent (the old code no longer works)"),
                        None,
                    );
                    self.put_order(x);
                }
                _ => {
                    return Err(machine::Refusal {
                        state: o.state.as_str(),
                        what: "resending the code",
                        needs: "ready (a return: reserved)",
                    }
                    .into())
                }
            },
            OrderAction::OutForDelivery => {
                if o.state != OrderState::Created {
                    return Err(machine::Refusal {
                        state: o.state.as_str(),
                        what: "out for delivery",
                        needs: "created",
                    }
                    .into());
                }
                self.reserve(id, &why)?;
            }
        }
        Ok(OrderView::from(self.visible(id, c)?))
    }

    /// A new code for an order (the old one stops working at the next credential sync).
    fn reissue(&mut self, o: &mut Order, kind: NoticeKind, now: u64) {
        let Some(cab) = o.cabinet.clone() else { return };
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
        let (pin, h) = super::codes::new_pin(self.cfg.pin_digits, &cab, &live);
        o.pin_hash = Some(h);
        let qr = (o.kind == OrderKind::Delivery).then(|| {
            let (qr, h) = super::codes::new_qr(&cab);
            o.qr_hash = Some(h);
            qr
        });
        o.updated_at = now;
        self.notice(o, kind, Some(pin), qr, now);
    }

    fn prepare_unlock(
        &mut self,
        id: OrderId,
        reason: String,
        c: &Caller,
    ) -> Result<UnlockTarget, ParcelError> {
        let o = self.visible(id, c)?;
        let (Some(cab), Some(comp)) = (o.cabinet.clone(), o.compartment) else {
            return Err(ParcelError::Invalid(format!(
                "order {id} holds no compartment (it is {})",
                o.state.as_str()
            )));
        };
        let purpose = match (o.kind, o.state) {
            (_, OrderState::Reserved) => "deposit",
            (OrderKind::Delivery, OrderState::Ready | OrderState::Deposited) => "pickup",
            (_, OrderState::Expired | OrderState::ReturnRequested) => "collect",
            (OrderKind::Return, OrderState::Deposited) => "collect",
            _ => {
                return Err(machine::Refusal {
                    state: o.state.as_str(),
                    what: "a remote unlock",
                    needs: "reserved, deposited, ready, expired or return_requested",
                }
                .into())
            }
        };
        if o.pending_unlock.is_some() {
            return Err(ParcelError::Invalid(format!(
                "order {id} already has a remote unlock waiting for its outcome"
            )));
        }
        let command = locker_schemas::CommandId::generate();
        let now = now_millis();
        let mut o = o.clone();
        o.pending_unlock = Some(PendingUnlock {
            command,
            compartment: comp,
            actor: c.client.clone(),
            reason: reason.clone(),
            purpose: purpose.into(),
            issued_at: now,
        });
        let from = o.state;
        let why = Why::new("api", c.client.clone(), now)
            .detail(format!("remote unlock {command} for {purpose}: {reason}"));
        self.record(&mut o, from, &why, None);
        self.put_order(o);
        Ok(UnlockTarget {
            cabinet: cab,
            compartment: comp,
            purpose,
            command,
        })
    }

    fn partition(
        &mut self,
        cab: CabinetId,
        comps: Vec<CompartmentId>,
        carrier: Option<locker_schemas::CarrierId>,
        c: &Caller,
    ) -> Result<super::PartitionReport, ParcelError> {
        let site = self.site_of.get(&cab).cloned();
        match (&c.scope, &site) {
            (Scope::Operator, _) => {}
            (Scope::SiteManager { sites }, Some(s)) if sites.contains(s) => {}
            _ => return Err(ParcelError::NotFound(format!("cabinet {cab}"))),
        }
        if let Some(k) = &carrier {
            if !self.carriers.contains_key(k) {
                return Err(ParcelError::NotFound(format!("carrier {k}")));
            }
        }
        let r = self.table.partition(&cab, &comps, carrier.clone());
        self.cabinet_changed(&cab);
        self.retry_waiting = true;
        self.audit(AuditRecord {
            pos: 0,
            at: now_millis(),
            what: "partition".into(),
            order: None,
            carrier: carrier.clone(),
            site,
            cabinet: Some(cab),
            compartment: None,
            from: None,
            to: None,
            cause: "api".into(),
            actor: c.client.clone(),
            exception: None,
            detail: format!(
                "to {}: applied {:?}, pending {:?}",
                carrier
                    .as_ref()
                    .map_or("shared pool".into(), |k| k.to_string()),
                r.applied.iter().map(|c| c.0).collect::<Vec<_>>(),
                r.pending.iter().map(|c| c.0).collect::<Vec<_>>()
            ),
        });
        Ok(r)
    }

    fn service(
        &mut self,
        cab: CabinetId,
        comp: CompartmentId,
        out: Option<OutOfService>,
        reason: String,
        c: &Caller,
    ) -> Result<CompartmentView, ParcelError> {
        let site = self.site_of.get(&cab).cloned();
        match (&c.scope, &site) {
            (Scope::Operator, _) => {}
            (Scope::SiteManager { sites }, Some(s)) if sites.contains(s) => {}
            _ => return Err(ParcelError::NotFound(format!("cabinet {cab}"))),
        }
        if !self.table.set_service(&cab, comp, out) {
            return Err(ParcelError::NotFound(format!(
                "compartment {comp} of {cab}"
            )));
        }
        self.cabinet_changed(&cab);
        self.retry_waiting = true;
        self.audit(AuditRecord {
            pos: 0,
            at: now_millis(),
            what: "service".into(),
            order: None,
            carrier: None,
            site,
            cabinet: Some(cab.clone()),
            compartment: Some(comp),
            from: None,
            to: Some(
                if out.is_some() {
                    "out_of_service"
                } else {
                    "in_service"
                }
                .into(),
            ),
            cause: "api".into(),
            actor: c.client.clone(),
            exception: None,
            detail: reason,
        });
        self.compartments(&cab, c)?
            .into_iter()
            .find(|v| v.id == comp)
            .ok_or_else(|| ParcelError::NotFound(format!("compartment {comp} of {cab}")))
    }

    fn compartments(
        &self,
        cab: &CabinetId,
        c: &Caller,
    ) -> Result<Vec<CompartmentView>, ParcelError> {
        let site = self.site_of.get(cab);
        let carrier = match (&c.scope, site) {
            (Scope::Operator, _) => None,
            (Scope::SiteManager { sites }, Some(s)) if sites.contains(s) => None,
            (Scope::Carrier { carrier }, Some(s))
                if self
                    .carriers
                    .get(carrier)
                    .is_some_and(|k| k.sites.is_empty() || k.sites.contains(s)) =>
            {
                Some(carrier)
            }
            _ => return Err(ParcelError::NotFound(format!("cabinet {cab}"))),
        };
        let Some(slots) = self.table.cabinets.get(cab) else {
            return Ok(Vec::new());
        };
        Ok(slots
            .slots
            .iter()
            // a carrier sees the shared pool and its own partition, never another's
            .filter(|(_, s)| {
                carrier.is_none() || s.partition.is_none() || s.partition.as_ref() == carrier
            })
            .map(|(id, s)| {
                let order = s.holder.and_then(|h| self.orders.get(&h));
                let status = if s.out_of_service.is_some() {
                    "out_of_service"
                } else {
                    match order.map(|o| o.state) {
                        None => "free",
                        Some(OrderState::Reserved) | Some(OrderState::Created) => "reserved",
                        Some(_) => "occupied",
                    }
                };
                CompartmentView {
                    id: *id,
                    size: s.size,
                    status,
                    out_of_service: s.out_of_service,
                    partition: s.partition.clone(),
                    pending_partition: s.pending_partition.clone(),
                    order: order
                        .filter(|o| c.scope.sees(&o.carrier, &o.site))
                        .map(|o| o.id),
                }
            })
            .collect())
    }
}
