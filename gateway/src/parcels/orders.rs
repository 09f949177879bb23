//! The API's order operations on the parcel state: create (idempotent, best-fit reserved at
//! once), read and list within the caller's scope, cancel, extend, resend the code, request a
//! return, out for delivery, and preparing a remote unlock (the order records the command id
//! before the command exists).

use locker_schemas::{now_millis, OrderId};

use super::actor::State;
use super::apply::Why;
use super::machine::{self, Step};
use super::model::{NoticeKind, Order, OrderKind, OrderState, PendingUnlock};
use super::views::{NewOrder, OrderFilter, OrderView};
use super::{Caller, OrderAction, ParcelError, Scope, UnlockTarget, HOUR_MS};

impl State {
    /// Creates one order (or returns the one its idempotency key created).
    pub(super) fn create(
        &mut self,
        n: NewOrder,
        c: &Caller,
    ) -> Result<(OrderView, bool), ParcelError> {
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
        if n.pickup_window_min
            .is_some_and(|m| m == 0 || m > 60 * 24 * 30)
        {
            return Err(ParcelError::Invalid(
                "pickup_window_min: 1 to 43200 minutes".into(),
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
            pickup_window_min: n.pickup_window_min,
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
    pub(super) fn visible(&self, id: OrderId, c: &Caller) -> Result<&Order, ParcelError> {
        self.orders
            .get(&id)
            .filter(|o| c.scope.sees(&o.carrier, &o.site))
            .ok_or_else(|| ParcelError::NotFound(format!("order {id}")))
    }

    pub(super) fn list(&self, f: &OrderFilter, c: &Caller) -> Vec<OrderView> {
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

    pub(super) fn act(
        &mut self,
        id: OrderId,
        a: OrderAction,
        c: &Caller,
    ) -> Result<OrderView, ParcelError> {
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
                    // a new code; the old one stops working at the next credential sync
                    x.updated_at = now;
                    self.issue_codes(&mut x, kind, now);
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

    pub(super) fn prepare_unlock(
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
}
