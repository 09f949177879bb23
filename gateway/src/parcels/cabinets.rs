//! The API's cabinet operations on the parcel state: partitions (a held compartment changes
//! hands only once it is empty), service state, and the compartment list a caller may see
//! (a carrier sees the shared pool and its own partition, never another carrier's order).

use locker_schemas::{now_millis, CabinetId, CompartmentId};

use super::actor::State;
use super::alloc::OutOfService;
use super::model::OrderState;
use super::views::CompartmentView;
use super::{Caller, ParcelError, Scope};
use crate::store::parcels::AuditRecord;

impl State {
    pub(super) fn partition(
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
            tracking: None,
            reference: None,
        });
        Ok(r)
    }

    pub(super) fn service(
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
            tracking: None,
            reference: None,
        });
        self.compartments(&cab, c)?
            .into_iter()
            .find(|v| v.id == comp)
            .ok_or_else(|| ParcelError::NotFound(format!("compartment {comp} of {cab}")))
    }

    pub(super) fn compartments(
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
