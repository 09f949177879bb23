//! The compartments of every cabinet the parcel domain knows and who holds them: layout (from
//! hellos), holder (an order), partition (a carrier, or the shared pool), service state
//! (jammed, forced, board offline, taken out by an operator), and best-fit allocation.
//!
//! One table, owned by the parcel actor: a compartment has at most one holder by construction,
//! so two orders never get one compartment however the API calls interleave.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use locker_schemas::{CabinetId, CarrierId, CompartmentId, OrderId, SiteId};
use serde::{Deserialize, Serialize};

use crate::json::SizeName;

/// Why a compartment may not be allocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OutOfService {
    /// Its lock fired and the door did not open.
    Jammed,
    /// Its door was forced open.
    Forced,
    /// Taken out by an operator.
    Operator,
    /// A parcel no order accounts for is inside (an unknown deposit).
    UnknownParcel,
}

/// One compartment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Slot {
    pub size: SizeName,
    /// The order holding it (reserved, or a parcel inside).
    pub holder: Option<OrderId>,
    /// The carrier it is reserved for; `None` = the shared pool.
    pub partition: Option<CarrierId>,
    /// A partition change waiting for the compartment to empty.
    #[serde(default)]
    pub pending_partition: Option<Option<CarrierId>>,
    #[serde(default)]
    pub out_of_service: Option<OutOfService>,
    /// The parcel sensor at the last door close (`None`: not known since the last deposit).
    #[serde(default)]
    pub parcel: Option<bool>,
    /// The order that held it last (a parcel left inside is that order's exception).
    #[serde(default)]
    pub last_holder: Option<OrderId>,
}

/// A cabinet's compartments and whether its lock boards answer.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct CabinetSlots {
    pub site: Option<SiteId>,
    pub slots: BTreeMap<CompartmentId, Slot>,
    /// Lock boards (Modbus unit ids; 0 = unknown) reported offline: the whole cabinet is kept
    /// out of allocation while any is, since the gateway does not know which compartments a
    /// board drives.
    #[serde(default)]
    pub boards_offline: BTreeSet<u8>,
}

impl CabinetSlots {
    fn usable(&self, c: CompartmentId, carrier: &CarrierId, min: SizeName) -> Option<&Slot> {
        let s = self.slots.get(&c)?;
        let ok = self.boards_offline.is_empty()
            && s.holder.is_none()
            && s.out_of_service.is_none()
            && s.size >= min
            && s.partition.as_ref().is_none_or(|p| p == carrier);
        ok.then_some(s)
    }
}

/// Why nothing was allocated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    #[error("no compartment of size {0:?} or larger is free for this carrier at the site")]
    NoneFree(SizeName),
    #[error("cabinet {0} is not part of the order's site")]
    NotAtSite(CabinetId),
}

/// What a partition change did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct PartitionReport {
    /// Compartments that changed hands now.
    #[schema(value_type = Vec<u16>)]
    pub applied: Vec<CompartmentId>,
    /// Compartments holding a parcel or a reservation: they change when they empty.
    #[schema(value_type = Vec<u16>)]
    pub pending: Vec<CompartmentId>,
    /// Compartments the cabinet does not have.
    #[schema(value_type = Vec<u16>)]
    pub unknown: Vec<CompartmentId>,
}

/// Free and total compartments by size.
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Occupancy {
    pub size: Option<SizeName>,
    pub total: u32,
    pub free: u32,
    pub reserved_or_occupied: u32,
    pub out_of_service: u32,
}

/// A group of the free-compartment index: site, size, whether it is the shared pool, and the
/// partition's carrier. Within a group, compartments are ordered by cabinet and number.
type Group = (SiteId, SizeName, bool, Option<CarrierId>);

/// Every cabinet's compartments, and an index of the free usable ones so allocation does not
/// scan a site (a 1,000-cabinet site has 24,000 compartments).
///
/// Mutations through the methods keep the index; code that changes a [`CabinetSlots`]
/// directly (its site, its offline boards) calls [`Table::touch_cabinet`] afterwards.
#[derive(Debug, Clone, Default)]
pub struct Table {
    pub cabinets: HashMap<CabinetId, CabinetSlots>,
    free: HashMap<Group, BTreeSet<(CabinetId, CompartmentId)>>,
    indexed: HashMap<(CabinetId, CompartmentId), Group>,
}

impl Table {
    /// Re-indexes one compartment after a change.
    fn touch(&mut self, cabinet: &CabinetId, c: CompartmentId) {
        if let Some(old) = self.indexed.remove(&(cabinet.clone(), c)) {
            if let Some(set) = self.free.get_mut(&old) {
                set.remove(&(cabinet.clone(), c));
                if set.is_empty() {
                    self.free.remove(&old);
                }
            }
        }
        let Some(cab) = self.cabinets.get(cabinet) else {
            return;
        };
        let (Some(site), Some(s)) = (cab.site.as_ref(), cab.slots.get(&c)) else {
            return;
        };
        if s.holder.is_none() && s.out_of_service.is_none() && cab.boards_offline.is_empty() {
            let group = (
                site.clone(),
                s.size,
                s.partition.is_none(),
                s.partition.clone(),
            );
            self.free
                .entry(group.clone())
                .or_default()
                .insert((cabinet.clone(), c));
            self.indexed.insert((cabinet.clone(), c), group);
        }
    }

    /// Puts a cabinet at a site (or at none), keeping the index.
    pub fn set_site(&mut self, cabinet: &CabinetId, site: Option<SiteId>) {
        self.cabinets.entry(cabinet.clone()).or_default().site = site;
        self.touch_cabinet(cabinet);
    }

    /// Re-indexes every compartment of a cabinet (after its site, layout or boards changed).
    pub fn touch_cabinet(&mut self, cabinet: &CabinetId) {
        let now: Vec<CompartmentId> = self
            .cabinets
            .get(cabinet)
            .map(|k| k.slots.keys().copied().collect())
            .unwrap_or_default();
        for c in now {
            self.touch(cabinet, c);
        }
    }

    /// The best free compartment of `size` exactly for `carrier` at `site` (in `cabinet` if
    /// given): its partition first, then the shared pool.
    fn best_of_size(
        &self,
        site: &SiteId,
        cabinet: Option<&CabinetId>,
        carrier: &CarrierId,
        size: SizeName,
    ) -> Option<(CabinetId, CompartmentId)> {
        for (shared, part) in [(false, Some(carrier.clone())), (true, None)] {
            let Some(set) = self.free.get(&(site.clone(), size, shared, part)) else {
                continue;
            };
            let found = match cabinet {
                None => set.first(),
                Some(k) => set
                    .range((k.clone(), CompartmentId(0))..)
                    .next()
                    .filter(|(x, _)| x == k),
            };
            if let Some((k, c)) = found {
                return Some((k.clone(), *c));
            }
        }
        None
    }

    /// Applies a layout from a hello: new compartments are added, sizes refreshed; returns
    /// whether anything changed and the holders of compartments that disappeared (their
    /// orders need attention).
    pub fn layout(
        &mut self,
        cabinet: &CabinetId,
        comps: &[(CompartmentId, SizeName)],
    ) -> (bool, Vec<OrderId>) {
        let cab = self.cabinets.entry(cabinet.clone()).or_default();
        let same = cab.slots.len() == comps.len()
            && comps
                .iter()
                .all(|(c, size)| cab.slots.get(c).is_some_and(|s| s.size == *size));
        if same {
            return (false, Vec::new());
        }
        let keep: BTreeSet<CompartmentId> = comps.iter().map(|(c, _)| *c).collect();
        let mut orphaned = Vec::new();
        let mut removed = Vec::new();
        cab.slots.retain(|c, s| {
            let stays = keep.contains(c);
            if !stays {
                orphaned.extend(s.holder);
                removed.push(*c);
            }
            stays
        });
        for (c, size) in comps {
            cab.slots
                .entry(*c)
                .and_modify(|s| s.size = *size)
                .or_insert(Slot {
                    size: *size,
                    holder: None,
                    partition: None,
                    pending_partition: None,
                    out_of_service: None,
                    parcel: None,
                    last_holder: None,
                });
        }
        for c in removed {
            self.touch(cabinet, c); // drops its index entry: the slot is gone
        }
        self.touch_cabinet(cabinet);
        (true, orphaned)
    }

    /// Best fit for an order of `carrier` needing `size` at `site` (in `cabinet` if given):
    /// the smallest usable compartment, the carrier's partition before the shared pool, then
    /// the lowest cabinet id and number. Marks it held by `order`.
    pub fn allocate(
        &mut self,
        site: &SiteId,
        candidates: &[CabinetId],
        cabinet: Option<&CabinetId>,
        carrier: &CarrierId,
        size: SizeName,
        order: OrderId,
    ) -> Result<(CabinetId, CompartmentId), AllocError> {
        if let Some(c) = cabinet {
            if self.cabinets.get(c).and_then(|k| k.site.as_ref()) != Some(site) {
                return Err(AllocError::NotAtSite(c.clone()));
            }
        }
        let best = SizeName::ALL
            .iter()
            .filter(|s| **s >= size)
            .find_map(|s| self.best_of_size(site, cabinet, carrier, *s));
        debug_assert_eq!(
            best,
            self.best_by_scan(site, candidates, cabinet, carrier, size)
        );
        let Some((id, c)) = best else {
            return Err(AllocError::NoneFree(size));
        };
        self.hold(&id, c, order);
        Ok((id, c))
    }

    /// Best fit by scanning every compartment of the candidates: the definition the index
    /// must agree with (checked in debug builds and by the property tests).
    fn best_by_scan(
        &self,
        site: &SiteId,
        candidates: &[CabinetId],
        cabinet: Option<&CabinetId>,
        carrier: &CarrierId,
        size: SizeName,
    ) -> Option<(CabinetId, CompartmentId)> {
        // (size, in the shared pool, cabinet, number): the smallest key wins
        type Key<'a> = (SizeName, bool, &'a CabinetId, CompartmentId);
        let mut best: Option<Key> = None;
        for id in candidates {
            let Some(cab) = self.cabinets.get(id) else {
                continue;
            };
            if cab.site.as_ref() != Some(site) || cabinet.is_some_and(|c| c != id) {
                continue;
            }
            for c in cab.slots.keys() {
                if let Some(s) = cab.usable(*c, carrier, size) {
                    let key = (s.size, s.partition.is_none(), id, *c);
                    if best.as_ref().is_none_or(|b| key < *b) {
                        best = Some(key);
                    }
                }
            }
        }
        best.map(|(_, _, id, c)| (id.clone(), c))
    }

    /// Marks a compartment held by `order` (whatever held it before is returned).
    pub fn hold(
        &mut self,
        cabinet: &CabinetId,
        c: CompartmentId,
        order: OrderId,
    ) -> Option<OrderId> {
        let slot = self.cabinets.get_mut(cabinet)?.slots.get_mut(&c)?;
        let before = slot.holder.replace(order);
        self.touch(cabinet, c);
        before.filter(|b| *b != order)
    }

    /// Frees a compartment if `order` holds it; a waiting partition change applies now.
    pub fn release(&mut self, cabinet: &CabinetId, c: CompartmentId, order: OrderId) {
        if let Some(slot) = self
            .cabinets
            .get_mut(cabinet)
            .and_then(|k| k.slots.get_mut(&c))
        {
            if slot.holder == Some(order) {
                slot.holder = None;
                slot.last_holder = Some(order);
                if let Some(p) = slot.pending_partition.take() {
                    slot.partition = p;
                }
                self.touch(cabinet, c);
            }
        }
    }

    /// Records what the parcel sensor says (`None`: unknown, after a deposit opened the door);
    /// returns the slot as it was.
    pub fn set_parcel(
        &mut self,
        cabinet: &CabinetId,
        c: CompartmentId,
        parcel: Option<bool>,
    ) -> Option<Slot> {
        let slot = self.cabinets.get_mut(cabinet)?.slots.get_mut(&c)?;
        let before = slot.clone();
        slot.parcel = parcel;
        Some(before)
    }

    /// The slot of a compartment.
    pub fn slot(&self, cabinet: &CabinetId, c: CompartmentId) -> Option<&Slot> {
        self.cabinets.get(cabinet)?.slots.get(&c)
    }

    /// Reserves `comps` of a cabinet for `carrier` (or gives them back to the shared pool
    /// with `None`): empty ones now, the others when they empty.
    pub fn partition(
        &mut self,
        cabinet: &CabinetId,
        comps: &[CompartmentId],
        carrier: Option<CarrierId>,
    ) -> PartitionReport {
        let mut r = PartitionReport::default();
        let Some(cab) = self.cabinets.get_mut(cabinet) else {
            r.unknown = comps.to_vec();
            return r;
        };
        for c in comps {
            match cab.slots.get_mut(c) {
                None => r.unknown.push(*c),
                Some(s) if s.holder.is_none() => {
                    s.partition = carrier.clone();
                    s.pending_partition = None;
                    r.applied.push(*c);
                }
                Some(s) => {
                    s.pending_partition = Some(carrier.clone());
                    r.pending.push(*c);
                }
            }
        }
        for c in &r.applied {
            self.touch(cabinet, *c);
        }
        r
    }

    /// Sets or clears a compartment's service state.
    pub fn set_service(
        &mut self,
        cabinet: &CabinetId,
        c: CompartmentId,
        state: Option<OutOfService>,
    ) -> bool {
        match self
            .cabinets
            .get_mut(cabinet)
            .and_then(|k| k.slots.get_mut(&c))
        {
            Some(s) => {
                s.out_of_service = state;
                self.touch(cabinet, c);
                true
            }
            None => false,
        }
    }

    /// Occupancy of a cabinet by size, then the total (`size: None`).
    pub fn occupancy(&self, cabinet: &CabinetId) -> Vec<Occupancy> {
        let mut by: BTreeMap<SizeName, Occupancy> = BTreeMap::new();
        let mut all = Occupancy::default();
        if let Some(cab) = self.cabinets.get(cabinet) {
            for s in cab.slots.values() {
                let o = by.entry(s.size).or_insert_with(|| Occupancy {
                    size: Some(s.size),
                    ..Occupancy::default()
                });
                for o in [o, &mut all] {
                    o.total += 1;
                    if s.out_of_service.is_some() {
                        o.out_of_service += 1;
                    } else if s.holder.is_some() {
                        o.reserved_or_occupied += 1;
                    } else {
                        o.free += 1;
                    }
                }
            }
        }
        by.into_values().chain([all]).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cab(n: u32) -> CabinetId {
        CabinetId::new(format!("CAB-{n}")).expect("id")
    }

    fn table(site: &SiteId, cabinets: u32, sizes: &[SizeName]) -> Table {
        let mut t = Table::default();
        for k in 0..cabinets {
            let comps: Vec<_> = sizes
                .iter()
                .enumerate()
                .map(|(i, s)| (CompartmentId(i as u16 + 1), *s))
                .collect();
            t.layout(&cab(k), &comps);
            if let Some(c) = t.cabinets.get_mut(&cab(k)) {
                c.site = Some(site.clone());
            }
            t.touch_cabinet(&cab(k));
        }
        t
    }

    #[test]
    fn best_fit_prefers_the_smallest_then_the_partition_and_skips_what_is_out_of_service() {
        let site = SiteId::new("s").expect("site");
        let dhl = CarrierId::new("dhl").expect("c");
        let ups = CarrierId::new("ups").expect("c");
        use SizeName::*;
        let mut t = table(&site, 1, &[L, M, M, S, Xl]);
        let k = cab(0);
        let all = vec![k.clone()];
        // S is out of service, one M belongs to UPS
        t.set_service(&k, CompartmentId(4), Some(OutOfService::Jammed));
        t.partition(&k, &[CompartmentId(2)], Some(ups.clone()));
        let o1 = OrderId::generate();
        assert_eq!(
            t.allocate(&site, &all, None, &dhl, S, o1),
            Ok((k.clone(), CompartmentId(3)))
        );
        // UPS gets its own M before anything shared
        t.partition(&k, &[CompartmentId(1)], Some(ups.clone()));
        let o2 = OrderId::generate();
        assert_eq!(
            t.allocate(&site, &all, None, &ups, S, o2),
            Ok((k.clone(), CompartmentId(2)))
        );
        // DHL: no M left for it; the L belongs to UPS; XL is shared
        let o3 = OrderId::generate();
        assert_eq!(
            t.allocate(&site, &all, None, &dhl, M, o3),
            Ok((k.clone(), CompartmentId(5)))
        );
        assert_eq!(
            t.allocate(&site, &all, None, &dhl, S, OrderId::generate()),
            Err(AllocError::NoneFree(S))
        );
        // a partition change on a held compartment waits for it to empty
        let r = t.partition(&k, &[CompartmentId(5)], Some(ups.clone()));
        assert_eq!(r.pending, vec![CompartmentId(5)]);
        assert_eq!(
            t.slot(&k, CompartmentId(5))
                .and_then(|s| s.partition.clone()),
            None
        );
        t.release(&k, CompartmentId(5), o3);
        assert_eq!(
            t.slot(&k, CompartmentId(5))
                .and_then(|s| s.partition.clone()),
            Some(ups)
        );
        // a board offline keeps the whole cabinet out
        t.cabinets
            .get_mut(&k)
            .expect("cab")
            .boards_offline
            .insert(1);
        t.touch_cabinet(&k);
        assert!(t
            .allocate(&site, &all, None, &dhl, S, OrderId::generate())
            .is_err());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Alloc(u8, u8),
        Release(usize),
        Partition(u8, u8, Option<u8>),
        Service(u8, u8, bool),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..4, 0u8..2).prop_map(|(s, c)| Op::Alloc(s, c)),
            (0usize..64).prop_map(Op::Release),
            (0u8..3, 1u8..9, proptest::option::of(0u8..2))
                .prop_map(|(k, c, p)| Op::Partition(k, c, p)),
            (0u8..3, 1u8..9, any::<bool>()).prop_map(|(k, c, b)| Op::Service(k, c, b)),
        ]
    }

    proptest! {
        /// Whatever the sequence of allocations, releases, partition and service changes:
        /// no compartment is ever held by two live orders, no order holds two compartments,
        /// and nothing is allocated out of service or in another carrier's partition.
        #[test]
        fn no_compartment_is_ever_double_booked(ops in proptest::collection::vec(op(), 1..200)) {
            use SizeName::*;
            let site = SiteId::new("s").expect("site");
            let carriers = [CarrierId::new("a").expect("c"), CarrierId::new("b").expect("c")];
            let mut t = table(&site, 3, &[S, S, M, M, L, L, Xl, M]);
            let all: Vec<CabinetId> = (0..3).map(cab).collect();
            let mut live: Vec<(OrderId, CabinetId, CompartmentId)> = Vec::new();
            for op in ops {
                match op {
                    Op::Alloc(s, c) => {
                        let size = SizeName::ALL[s as usize];
                        let carrier = &carriers[c as usize];
                        let o = OrderId::generate();
                        if let Ok((k, comp)) = t.allocate(&site, &all, None, carrier, size, o) {
                            let slot = t.slot(&k, comp).expect("slot");
                            prop_assert!(slot.size >= size);
                            prop_assert!(slot.out_of_service.is_none());
                            prop_assert!(slot.partition.as_ref().is_none_or(|p| p == carrier));
                            prop_assert!(!live.iter().any(|(_, lk, lc)| *lk == k && *lc == comp));
                            live.push((o, k, comp));
                        }
                    }
                    Op::Release(i) => {
                        if !live.is_empty() {
                            let (o, k, c) = live.remove(i % live.len());
                            t.release(&k, c, o);
                        }
                    }
                    Op::Partition(k, c, p) => {
                        t.partition(&cab(k as u32), &[CompartmentId(c as u16)], p.map(|p| carriers[p as usize].clone()));
                    }
                    Op::Service(k, c, out) => {
                        t.set_service(&cab(k as u32), CompartmentId(c as u16), out.then_some(OutOfService::Operator));
                    }
                }
                for (o, k, c) in &live {
                    prop_assert_eq!(t.slot(k, *c).and_then(|s| s.holder), Some(*o));
                }
            }
        }
    }
}
