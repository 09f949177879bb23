//! How the parcel state changes: one transition path for every cause (API, cabinet reports
//! in [`super::reports`], timers in [`super::timers`]) that runs the state machine, then its
//! effects (compartment held or freed, codes issued or revoked, notices queued, the credential
//! set marked changed, the history, the audit trail and the `gw/parcel` event), and best-fit
//! reservation.

use locker_schemas::{CabinetId, Millis, OrderId, ParcelEvent};

use super::actor::State;
use super::codes;
use super::machine::{self, Outcome, Step};
use super::model::{Exception, HistoryEntry, Notice, NoticeKind, Order, OrderKind, OrderState};
use super::{ParcelError, HOUR_MS};
use crate::store::parcels::AuditRecord;

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
                        o.pickup_deadline = Some(machine::deadline(why.at, o.window_ms()));
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
            tracking: Some(o.tracking.clone()),
            reference: o.reference.clone(),
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
        self.table.touch_cabinet(cab);
        if let Some(slots) = self.table.cabinets.get(cab) {
            self.batch.cabinets.retain(|(c, _)| c != cab);
            self.batch.cabinets.push((cab.clone(), slots.clone()));
        }
        self.dirty_creds.insert(cab.clone());
    }

    /// Issues a new PIN (unique among the cabinet's live codes) and, for deliveries, a QR
    /// token, and queues the notice carrying them. The codes themselves are only in the
    /// notice; the order keeps their hashes.
    pub(crate) fn issue_codes(&mut self, o: &mut Order, kind: NoticeKind, at: Millis) {
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
}
