//! The parcel domain's durable state, behind [`ParcelStore`] (sled here; JetStream in cluster
//! mode later): sites, carriers, couriers, orders, each cabinet's compartment table, the
//! credential-set versions, the per-cabinet cursor into the audit log of what the domain has
//! applied, the notification outbox and the parcel audit trail.
//!
//! Trees (values are JSON): `parcel_sites`, `parcel_carriers`, `parcel_couriers` (by id),
//! `parcel_orders` (live and recently finished orders, by id), `parcel_archive` (finished
//! orders out of memory, by id), `parcel_cabinets` (by cabinet), `parcel_meta`
//! (`v/<cabinet>` credential version, `c/<cabinet>` applied audit position, `init`),
//! `parcel_notices` and `parcel_audit` (by big-endian position), `parcel_notices_by_order`
//! (`<order>\0<notice id BE>` -> empty: an order's notices without a scan of the outbox;
//! built once from the outbox for a database older than it, `nidx` in `parcel_meta`).
//!
//! Blocking; the parcel actor calls it through `spawn_blocking`, one flush per batch.

use std::collections::HashMap;

use locker_schemas::{CabinetId, CarrierId, CompartmentId, CourierId, Millis, OrderId, SiteId};
use serde::{Deserialize, Serialize};

use super::{decode, encode, StoreError};
use crate::parcels::alloc::CabinetSlots;
use crate::parcels::model::{Carrier, Courier, Exception, Notice, Order, Site};

/// One line of the parcel audit trail: an order's transition, an override, a partition or
/// service change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditRecord {
    pub pos: u64,
    pub at: Millis,
    /// `order`, `override_open`, `partition`, `service`, `unlock`.
    pub what: String,
    #[serde(default)]
    #[schema(value_type = Option<crate::api::openapi::OrderIdDoc>)]
    pub order: Option<OrderId>,
    #[serde(default)]
    #[schema(value_type = Option<crate::api::openapi::CarrierIdDoc>)]
    pub carrier: Option<CarrierId>,
    #[serde(default)]
    #[schema(value_type = Option<crate::api::openapi::SiteIdDoc>)]
    pub site: Option<SiteId>,
    #[serde(default)]
    #[schema(value_type = Option<crate::api::openapi::CabinetIdDoc>)]
    pub cabinet: Option<CabinetId>,
    #[serde(default)]
    #[schema(value_type = Option<u16>)]
    pub compartment: Option<CompartmentId>,
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub to: Option<String>,
    pub cause: String,
    pub actor: String,
    #[serde(default)]
    pub exception: Option<Exception>,
    #[serde(default)]
    pub detail: String,
    /// The order's tracking number and the integrator's reference (order records), so the
    /// trail's readers (webhooks, carriers' tracking, the export) need not look the order up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracking: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
}

/// Everything the parcel actor starts from.
#[derive(Debug, Default)]
pub struct Loaded {
    pub sites: Vec<Site>,
    pub carriers: Vec<Carrier>,
    pub couriers: Vec<Courier>,
    pub orders: Vec<Order>,
    pub cabinets: Vec<(CabinetId, CabinetSlots)>,
    pub creds_versions: HashMap<CabinetId, u64>,
    pub cursors: HashMap<CabinetId, u64>,
    /// Whether the domain has started before (cursors were initialised).
    pub initialized: bool,
    pub next_notice: u64,
    pub next_audit: u64,
}

/// What one group commit of the parcel actor writes.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Batch {
    pub sites: Vec<Site>,
    pub carriers: Vec<Carrier>,
    pub couriers: Vec<Courier>,
    pub removed_couriers: Vec<CourierId>,
    pub orders: Vec<Order>,
    /// Finished orders moved out of memory (and out of the live tree) into the archive.
    pub archived: Vec<Order>,
    pub cabinets: Vec<(CabinetId, CabinetSlots)>,
    pub creds_versions: Vec<(CabinetId, u64)>,
    pub cursors: Vec<(CabinetId, u64)>,
    pub notices: Vec<Notice>,
    pub audit: Vec<AuditRecord>,
    pub initialized: bool,
}

impl Batch {
    /// Nothing to write.
    pub fn is_empty(&self) -> bool {
        self.sites.is_empty()
            && self.carriers.is_empty()
            && self.couriers.is_empty()
            && self.removed_couriers.is_empty()
            && self.orders.is_empty()
            && self.archived.is_empty()
            && self.cabinets.is_empty()
            && self.creds_versions.is_empty()
            && self.cursors.is_empty()
            && self.notices.is_empty()
            && self.audit.is_empty()
            && !self.initialized
    }
}

/// The parcel domain's storage.
pub trait ParcelStore: Send + Sync + 'static {
    /// Everything, at start.
    fn load(&self) -> Result<Loaded, StoreError>;
    /// Writes a batch and makes it durable before returning.
    fn commit(&self, batch: &Batch) -> Result<(), StoreError>;
    /// Notification requests with `id > after`, oldest first.
    fn notices(&self, after: u64, limit: usize) -> Result<Vec<Notice>, StoreError>;
    /// The notices of one order, oldest first (by the per-order index).
    fn notices_of(&self, order: &OrderId) -> Result<Vec<Notice>, StoreError>;
    /// Audit records with `pos > after`, oldest first.
    fn audit(&self, after: u64, limit: usize) -> Result<Vec<AuditRecord>, StoreError>;
    /// An archived (finished, out of memory) order.
    fn archived(&self, id: OrderId) -> Result<Option<Order>, StoreError>;
    /// The last notice id and the last audit position written (0 when none).
    fn heads(&self) -> Result<(u64, u64), StoreError>;
    /// The cursor (`after`, for [`ParcelStore::audit`]) of the first audit record at or after
    /// `at`, by a binary search over positions (records are appended in time order); never a
    /// scan of the trail (read-only; the audit export).
    fn audit_seek(&self, at: Millis) -> Result<u64, StoreError>;
    /// An order as stored, live or archived (read-only; the audit export).
    fn stored_order(&self, id: OrderId) -> Result<Option<Order>, StoreError>;
}

/// The parcel domain's trees (a snapshot of the domain's `parcels` part copies them).
pub const TREES: &[&str] = &[
    "parcel_sites",
    "parcel_carriers",
    "parcel_couriers",
    "parcel_orders",
    "parcel_archive",
    "parcel_cabinets",
    "parcel_meta",
    "parcel_notices",
    "parcel_audit",
    "parcel_notices_by_order",
];

/// [`ParcelStore`] on the gateway's sled database.
#[derive(Clone)]
pub struct SledParcels {
    db: sled::Db,
    sites: sled::Tree,
    carriers: sled::Tree,
    couriers: sled::Tree,
    orders: sled::Tree,
    archive: sled::Tree,
    cabinets: sled::Tree,
    meta: sled::Tree,
    notices: sled::Tree,
    audit: sled::Tree,
    notices_by_order: sled::Tree,
}

/// The per-order index key of a notice.
fn notice_key(order: &OrderId, id: u64) -> Vec<u8> {
    let mut k = order.to_string().into_bytes();
    k.push(0);
    k.extend_from_slice(&id.to_be_bytes());
    k
}

impl SledParcels {
    /// Opens the trees (and builds the per-order notice index once for an older database).
    pub fn open(db: &sled::Db) -> Result<Self, StoreError> {
        let s = Self::trees(db)?;
        if s.meta.get("nidx")?.is_none() {
            for kv in s.notices.iter() {
                let (_, v) = kv?;
                let n: Notice = decode("parcel_notices", &v)?;
                s.notices_by_order.insert(notice_key(&n.order, n.id), &[])?;
            }
            s.meta.insert("nidx", &[1u8])?;
            s.db.flush()?;
        } else {
            // a crash in the middle of a commit keeps a prefix of its writes: the newest
            // notices may be there without their index entries; add them (newest first, until
            // one is indexed)
            let mut repaired = false;
            for kv in s.notices.iter().rev() {
                let (_, v) = kv?;
                let n: Notice = decode("parcel_notices", &v)?;
                let k = notice_key(&n.order, n.id);
                if s.notices_by_order.contains_key(&k)? {
                    break;
                }
                s.notices_by_order.insert(k, &[])?;
                repaired = true;
            }
            if repaired {
                s.db.flush()?;
            }
        }
        Ok(s)
    }

    fn trees(db: &sled::Db) -> Result<Self, StoreError> {
        Ok(Self {
            notices_by_order: db.open_tree("parcel_notices_by_order")?,
            sites: db.open_tree("parcel_sites")?,
            carriers: db.open_tree("parcel_carriers")?,
            couriers: db.open_tree("parcel_couriers")?,
            orders: db.open_tree("parcel_orders")?,
            archive: db.open_tree("parcel_archive")?,
            cabinets: db.open_tree("parcel_cabinets")?,
            meta: db.open_tree("parcel_meta")?,
            notices: db.open_tree("parcel_notices")?,
            audit: db.open_tree("parcel_audit")?,
            db: db.clone(),
        })
    }
}

fn all<T: serde::de::DeserializeOwned>(
    tree: &sled::Tree,
    name: &'static str,
) -> Result<Vec<T>, StoreError> {
    tree.iter()
        .map(|kv| {
            let (_, v) = kv?;
            decode(name, &v)
        })
        .collect()
}

fn last_key(tree: &sled::Tree) -> Result<u64, StoreError> {
    Ok(match tree.last()? {
        Some((k, _)) => k
            .as_ref()
            .try_into()
            .map(u64::from_be_bytes)
            .unwrap_or_default(),
        None => 0,
    })
}

fn page<T: serde::de::DeserializeOwned>(
    tree: &sled::Tree,
    name: &'static str,
    after: u64,
    limit: usize,
) -> Result<Vec<T>, StoreError> {
    tree.range(after.saturating_add(1).to_be_bytes()..)
        .take(limit)
        .map(|kv| {
            let (_, v) = kv?;
            decode(name, &v)
        })
        .collect()
}

impl ParcelStore for SledParcels {
    fn load(&self) -> Result<Loaded, StoreError> {
        let mut out = Loaded {
            sites: all(&self.sites, "parcel_sites")?,
            carriers: all(&self.carriers, "parcel_carriers")?,
            couriers: all(&self.couriers, "parcel_couriers")?,
            orders: all(&self.orders, "parcel_orders")?,
            next_notice: last_key(&self.notices)? + 1,
            next_audit: last_key(&self.audit)? + 1,
            ..Loaded::default()
        };
        for kv in self.cabinets.iter() {
            let (k, v) = kv?;
            let id = CabinetId::new(String::from_utf8_lossy(&k).into_owned()).map_err(|e| {
                StoreError::Corrupt {
                    tree: "parcel_cabinets",
                    detail: e.to_string(),
                }
            })?;
            out.cabinets.push((id, decode("parcel_cabinets", &v)?));
        }
        for kv in self.meta.iter() {
            let (k, v) = kv?;
            let key = String::from_utf8_lossy(&k);
            let num = || -> Result<u64, StoreError> {
                v.as_ref()
                    .try_into()
                    .map(u64::from_be_bytes)
                    .map_err(|_| StoreError::Corrupt {
                        tree: "parcel_meta",
                        detail: format!("{key}: not a u64"),
                    })
            };
            let cab = |s: &str| {
                CabinetId::new(s).map_err(|e| StoreError::Corrupt {
                    tree: "parcel_meta",
                    detail: e.to_string(),
                })
            };
            if let Some(c) = key.strip_prefix("v/") {
                out.creds_versions.insert(cab(c)?, num()?);
            } else if let Some(c) = key.strip_prefix("c/") {
                out.cursors.insert(cab(c)?, num()?);
            } else if key == "init" {
                out.initialized = true;
            }
        }
        Ok(out)
    }

    fn commit(&self, b: &Batch) -> Result<(), StoreError> {
        for s in &b.sites {
            self.sites.insert(s.id.as_str(), encode(s)?)?;
        }
        for c in &b.carriers {
            self.carriers.insert(c.id.as_str(), encode(c)?)?;
        }
        for c in &b.couriers {
            self.couriers.insert(c.id.as_str(), encode(c)?)?;
        }
        for c in &b.removed_couriers {
            self.couriers.remove(c.as_str())?;
        }
        for o in &b.orders {
            self.orders.insert(o.id.to_string(), encode(o)?)?;
        }
        for o in &b.archived {
            self.archive.insert(o.id.to_string(), encode(o)?)?;
            self.orders.remove(o.id.to_string())?;
        }
        for (id, slots) in &b.cabinets {
            self.cabinets.insert(id.as_str(), encode(slots)?)?;
        }
        for (id, v) in &b.creds_versions {
            self.meta
                .insert(format!("v/{id}"), v.to_be_bytes().as_slice())?;
        }
        for (id, p) in &b.cursors {
            self.meta
                .insert(format!("c/{id}"), p.to_be_bytes().as_slice())?;
        }
        if b.initialized {
            self.meta.insert("init", &[1u8])?;
        }
        for n in &b.notices {
            self.notices.insert(n.id.to_be_bytes(), encode(n)?)?;
            self.notices_by_order
                .insert(notice_key(&n.order, n.id), &[])?;
        }
        for a in &b.audit {
            self.audit.insert(a.pos.to_be_bytes(), encode(a)?)?;
        }
        self.db.flush()?;
        Ok(())
    }

    fn heads(&self) -> Result<(u64, u64), StoreError> {
        Ok((last_key(&self.notices)?, last_key(&self.audit)?))
    }

    fn notices(&self, after: u64, limit: usize) -> Result<Vec<Notice>, StoreError> {
        page(&self.notices, "parcel_notices", after, limit)
    }

    fn notices_of(&self, order: &OrderId) -> Result<Vec<Notice>, StoreError> {
        let mut prefix = order.to_string().into_bytes();
        prefix.push(0);
        let mut out = Vec::new();
        for kv in self.notices_by_order.scan_prefix(&prefix) {
            let (k, _) = kv?;
            let id = &k[prefix.len()..];
            if let Some(v) = self.notices.get(id)? {
                out.push(decode("parcel_notices", &v)?);
            }
        }
        Ok(out)
    }

    fn audit(&self, after: u64, limit: usize) -> Result<Vec<AuditRecord>, StoreError> {
        page(&self.audit, "parcel_audit", after, limit)
    }

    fn archived(&self, id: OrderId) -> Result<Option<Order>, StoreError> {
        match self.archive.get(id.to_string())? {
            Some(v) => Ok(Some(decode("parcel_archive", &v)?)),
            None => Ok(None),
        }
    }

    fn audit_seek(&self, at: Millis) -> Result<u64, StoreError> {
        let first = |from: u64| -> Result<Option<(u64, Millis)>, StoreError> {
            match self.audit.range(from.to_be_bytes()..).next() {
                None => Ok(None),
                Some(kv) => {
                    let (k, v) = kv?;
                    let pos = k.as_ref().try_into().map(u64::from_be_bytes).map_err(|_| {
                        StoreError::Corrupt {
                            tree: "parcel_audit",
                            detail: "key is not a u64".into(),
                        }
                    })?;
                    let r: AuditRecord = decode("parcel_audit", &v)?;
                    Ok(Some((pos, r.at)))
                }
            }
        };
        let Some((lo0, _)) = first(0)? else {
            return Ok(0);
        };
        let (mut lo, mut hi) = (lo0, last_key(&self.audit)?.saturating_add(1));
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match first(mid)? {
                Some((_, t)) if t >= at => hi = mid,
                Some((p, _)) if p < hi => lo = p + 1,
                _ => hi = mid,
            }
        }
        Ok(lo.saturating_sub(1))
    }

    fn stored_order(&self, id: OrderId) -> Result<Option<Order>, StoreError> {
        match self.orders.get(id.to_string())? {
            Some(v) => Ok(Some(decode("parcel_orders", &v)?)),
            None => self.archived(id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parcels::model::{NoticeKind, Recipient};

    fn notice(id: u64, order: OrderId) -> Notice {
        Notice {
            id,
            order,
            kind: NoticeKind::Ready,
            carrier: CarrierId::new("dhl").expect("id"),
            site: SiteId::new("hbf").expect("id"),
            cabinet: None,
            compartment: None,
            recipient: Recipient::default(),
            pin: None,
            qr: None,
            site_name: String::new(),
            address: String::new(),
            expires_at: None,
            expires_local: None,
            created_at: id,
        }
    }

    #[test]
    fn an_orders_notices_come_by_its_index_which_is_repaired_after_a_torn_write() {
        let dir = tempfile::tempdir().expect("dir");
        let db = sled::open(dir.path()).expect("db");
        let s = SledParcels::open(&db).expect("open");
        let (a, b) = (OrderId::generate(), OrderId::generate());
        let batch = Batch {
            notices: vec![notice(1, a), notice(2, b), notice(3, a)],
            ..Default::default()
        };
        s.commit(&batch).expect("commit");
        let of = |s: &SledParcels, o: &OrderId| -> Vec<u64> {
            s.notices_of(o)
                .expect("read")
                .iter()
                .map(|n| n.id)
                .collect()
        };
        assert_eq!(of(&s, &a), [1, 3]);
        assert_eq!(of(&s, &b), [2]);
        // the crash kept the newest notice but not its index entry: repaired when reopened
        s.notices_by_order
            .remove(notice_key(&a, 3))
            .expect("remove");
        assert_eq!(of(&s, &a), [1]);
        let s = SledParcels::open(&db).expect("reopen");
        assert_eq!(of(&s, &a), [1, 3]);
    }
}
