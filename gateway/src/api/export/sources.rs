//! The export's three sources, each read page by page from its store (blocking; the producer
//! runs on `spawn_blocking`) and each finding the start of the period without a scan:
//! - [`CabinetLog`]: one cabinet's audit log, from a binary search over its positions by the
//!   cabinet's clock ([`AuditLog::seek_time`]), in sequence order, until the first entry at or
//!   after the end of the period;
//! - [`ParcelTrail`]: the parcel audit trail, from a binary search over its positions by time
//!   ([`ParcelStore::audit_seek`]), in commit order;
//! - [`AlertHistory`]: the alert history in raise order (its keys are time-ordered ids), each
//!   alert's raise, acknowledgement and clear re-sorted into time order as they are read.
//!   An alert raised before the period can be acknowledged or cleared inside it and nothing
//!   indexes alerts by those times, so this one source reads the kept history from its oldest
//!   alert (bounded by `rules.history_keep_days`, and alerts are few next to events).

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeSet, BinaryHeap, VecDeque};

use locker_schemas::{CabinetId, Millis};

use super::merge::Source;
use super::record::{Category, ExportRecord};
use crate::ingest::head::read_head;
use crate::rules::Alert;
use crate::store::alerts::{AlertStore, SledAlerts};
use crate::store::parcels::{AuditRecord, ParcelStore, SledParcels};
use crate::store::{AuditLog, StoreError};

/// The period, `[from, to)`, and the record groups wanted.
#[derive(Debug, Clone)]
pub struct Window {
    pub from: Millis,
    pub to: Millis,
    pub kinds: BTreeSet<Category>,
}

impl Window {
    fn wants(&self, r: &ExportRecord) -> bool {
        r.at >= self.from && r.at < self.to && self.kinds.contains(&r.category)
    }
}

/// One cabinet's audit log.
pub struct CabinetLog {
    log: AuditLog,
    cabinet: CabinetId,
    site: Option<String>,
    window: Window,
    page_size: usize,
    /// `None` until the start of the period was looked up (on the first read).
    after: Option<u64>,
    page: VecDeque<(u64, Vec<u8>)>,
    done: bool,
}

impl CabinetLog {
    /// `page_size` entries are read at a time (the producer divides a fixed budget among the
    /// cabinets, so memory does not grow with the fleet).
    pub fn new(
        log: AuditLog,
        cabinet: CabinetId,
        site: Option<String>,
        window: Window,
        page_size: usize,
    ) -> Self {
        Self {
            log,
            cabinet,
            site,
            window,
            page_size: page_size.max(1),
            after: None,
            page: VecDeque::new(),
            done: false,
        }
    }
}

impl Source for CabinetLog {
    fn next(&mut self) -> Result<Option<ExportRecord>, StoreError> {
        loop {
            if self.done {
                return Ok(None);
            }
            let after = match self.after {
                Some(a) => a,
                None => {
                    let a = self.log.seek_time(&self.cabinet, self.window.from)?;
                    self.after = Some(a);
                    a
                }
            };
            if self.page.is_empty() {
                self.page = self
                    .log
                    .events_page(&self.cabinet, after, self.page_size)?
                    .into();
                if self.page.is_empty() {
                    self.done = true;
                    return Ok(None);
                }
            }
            let Some((pos, raw)) = self.page.pop_front() else {
                continue;
            };
            self.after = Some(pos);
            let ts = read_head(&raw).and_then(|h| h.ts).unwrap_or(0);
            if ts >= self.window.to {
                // stored in the cabinet's sequence order: the rest is later still
                self.done = true;
                self.page.clear();
                return Ok(None);
            }
            if ts < self.window.from {
                continue;
            }
            // ingest stored only what decodes; an entry that does not is skipped
            let Ok(u) = locker_schemas::codec::decode_uplink(&raw) else {
                continue;
            };
            let Some(mut r) = ExportRecord::from_uplink(&u) else {
                continue;
            };
            if !self.window.wants(&r) {
                continue;
            }
            r.site.clone_from(&self.site);
            return Ok(Some(r));
        }
    }
}

/// Which parcel-trail records a caller may see (its scope and the `site=`/`cabinet=` filters).
pub type ParcelFilter = Box<dyn Fn(&AuditRecord) -> bool + Send>;

/// The parcel audit trail.
pub struct ParcelTrail {
    store: SledParcels,
    window: Window,
    filter: ParcelFilter,
    after: Option<u64>,
    page: VecDeque<AuditRecord>,
    done: bool,
}

/// Records are stamped by the gateway's clock before the parcel actor numbers them, so two
/// can swap places by a few ms: the trail is read this far past the end of the period.
const TRAIL_SLACK_MS: u64 = 60_000;
const TRAIL_PAGE: usize = 512;

impl ParcelTrail {
    pub fn new(store: SledParcels, window: Window, filter: ParcelFilter) -> Self {
        Self {
            store,
            window,
            filter,
            after: None,
            page: VecDeque::new(),
            done: false,
        }
    }
}

impl Source for ParcelTrail {
    fn next(&mut self) -> Result<Option<ExportRecord>, StoreError> {
        loop {
            if self.done {
                return Ok(None);
            }
            let after = match self.after {
                Some(a) => a,
                None => {
                    let from = self.window.from.saturating_sub(TRAIL_SLACK_MS);
                    let a = self.store.audit_seek(from)?;
                    self.after = Some(a);
                    a
                }
            };
            if self.page.is_empty() {
                self.page = self.store.audit(after, TRAIL_PAGE)?.into();
                if self.page.is_empty() {
                    self.done = true;
                    return Ok(None);
                }
            }
            let Some(a) = self.page.pop_front() else {
                continue;
            };
            self.after = Some(a.pos);
            if a.at >= self.window.to.saturating_add(TRAIL_SLACK_MS) {
                self.done = true;
                self.page.clear();
                return Ok(None);
            }
            if a.at < self.window.from || a.at >= self.window.to || !(self.filter)(&a) {
                continue;
            }
            let r = ExportRecord::from_parcel(&a);
            if self.window.wants(&r) {
                return Ok(Some(r));
            }
        }
    }
}

/// Which alerts a caller may see.
pub type AlertFilter = Box<dyn Fn(&Alert) -> bool + Send>;

/// A record waiting in the alert source's re-sort heap, ordered by `(at, arrival)`.
struct Pending(u64, u64, ExportRecord);

impl PartialEq for Pending {
    fn eq(&self, o: &Self) -> bool {
        (self.0, self.1) == (o.0, o.1)
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Pending {
    fn cmp(&self, o: &Self) -> Ordering {
        (self.0, self.1).cmp(&(o.0, o.1))
    }
}

const ALERT_PAGE: usize = 256;

/// The alert history: raised, acknowledged and cleared records in time order.
///
/// Alerts are read in raise order. Every record of an alert is at or after its raise, so once
/// the next unread alert was raised at `t`, every record before `t` is known: the heap hands
/// those out and holds only the acknowledgements and clears still ahead (as many as alerts
/// overlap in time, not the history).
pub struct AlertHistory {
    store: SledAlerts,
    window: Window,
    filter: AlertFilter,
    after: Option<String>,
    page: VecDeque<Alert>,
    exhausted: bool,
    heap: BinaryHeap<Reverse<Pending>>,
    arrivals: u64,
}

impl AlertHistory {
    pub fn new(store: SledAlerts, window: Window, filter: AlertFilter) -> Self {
        Self {
            store,
            window,
            filter,
            after: None,
            page: VecDeque::new(),
            exhausted: false,
            heap: BinaryHeap::new(),
            arrivals: 0,
        }
    }

    fn fill(&mut self) -> Result<(), StoreError> {
        if self.page.is_empty() && !self.exhausted {
            self.page = self
                .store
                .history_page(self.after.as_deref(), ALERT_PAGE)?
                .into();
            if self.page.is_empty() {
                self.exhausted = true;
            }
        }
        Ok(())
    }
}

impl Source for AlertHistory {
    fn next(&mut self) -> Result<Option<ExportRecord>, StoreError> {
        loop {
            self.fill()?;
            // every record not after the next unread raise is final
            let watermark = self.page.front().map(|a| a.raised_at);
            if let Some(Reverse(top)) = self.heap.peek() {
                if watermark.is_none_or(|w| top.0 <= w) {
                    return Ok(self.heap.pop().map(|Reverse(p)| p.2));
                }
            }
            let Some(a) = self.page.pop_front() else {
                return Ok(None);
            };
            self.after = Some(a.id.clone());
            if a.raised_at >= self.window.to {
                // raised after the period, and so is everything after it
                self.exhausted = true;
                self.page.clear();
                continue;
            }
            if !(self.filter)(&a) {
                continue;
            }
            for r in ExportRecord::from_alert(&a) {
                if self.window.wants(&r) {
                    self.arrivals += 1;
                    self.heap.push(Reverse(Pending(r.at, self.arrivals, r)));
                }
            }
        }
    }
}
