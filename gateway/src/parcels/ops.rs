//! The API's messages to the parcel state and the operations on sites, carriers and couriers
//! (orders are in [`super::orders`], compartments in [`super::cabinets`]), with the scope checks: a carrier sees and changes
//! only its own orders, couriers and partitions (anything else is "not found", so ids cannot be
//! probed), a site manager only its sites, an operator everything. Answers are deferred until
//! the batch they changed is durable.

use locker_schemas::CabinetId;

use super::actor::{Deferred, State};
use super::model::{Courier, Site};
use super::views::{CabinetOccupancy, CourierView, OrderView, SiteOccupancy};
use super::{Caller, Msg, ParcelError, Scope};

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
                if r.is_ok() {
                    self.sites_rev.send_modify(|v| *v += 1);
                }
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
            Msg::Audit(r, tx) => {
                self.audit(r);
                defer(d, tx, Ok(()))
            }
            Msg::FleetSites(q, c, tx) => {
                let r = self.fleet_sites(&q, &c);
                defer(d, tx, Ok(r))
            }
            Msg::FleetTotals(c, tx) => {
                let r = self.fleet_totals_cached(&c);
                defer(d, tx, Ok(r))
            }
            Msg::FleetSite(site, c, tx) => {
                let r = self.fleet_site(&site, &c);
                defer(d, tx, r)
            }
            Msg::CabinetSite(cab, c, tx) => {
                let r = self.cabinet_site(&cab, &c);
                defer(d, tx, Ok(r))
            }
            Msg::Search(q, c, tx) => {
                let r = self.search(&q, &c);
                defer(d, tx, Ok(r))
            }
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
}
