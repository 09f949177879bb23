//! The k-way merge of the export's sources into one stream ordered by time.
//!
//! Each source yields its records in its own order (a cabinet's log in its sequence order, the
//! parcel trail in commit order, the alert history re-sorted as it is read), which is time
//! order as long as the clock it is stamped with never went back. The merge keeps one head
//! record per source in a min-heap keyed `(at, source index)` and always emits the smallest,
//! so: **if every source is in non-decreasing `at`, the output is in non-decreasing `at`**;
//! equal times come out by source index (parcel trail, alerts, then the cabinets by id) and
//! then in each source's own order. A source never gets reordered: where its own clock stepped
//! back, the output steps back there too. Memory: one head per source.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::record::ExportRecord;
use crate::store::StoreError;

/// A source of records in (close to) time order. Blocking (it reads the stores).
pub trait Source: Send {
    fn next(&mut self) -> Result<Option<ExportRecord>, StoreError>;
}

/// The merge of several sources.
pub struct Merge {
    sources: Vec<Box<dyn Source>>,
    heads: Vec<Option<ExportRecord>>,
    heap: BinaryHeap<Reverse<(u64, usize)>>,
    primed: bool,
}

impl Merge {
    pub fn new(sources: Vec<Box<dyn Source>>) -> Self {
        let n = sources.len();
        Self {
            sources,
            heads: (0..n).map(|_| None).collect(),
            heap: BinaryHeap::with_capacity(n),
            primed: false,
        }
    }

    fn pull(&mut self, i: usize) -> Result<(), StoreError> {
        if let Some(src) = self.sources.get_mut(i) {
            if let Some(r) = src.next()? {
                self.heap.push(Reverse((r.at, i)));
                if let Some(h) = self.heads.get_mut(i) {
                    *h = Some(r);
                }
            }
        }
        Ok(())
    }

    /// The next record in time order, or `None` when every source is done.
    pub fn next(&mut self) -> Result<Option<ExportRecord>, StoreError> {
        if !self.primed {
            self.primed = true;
            for i in 0..self.sources.len() {
                self.pull(i)?;
            }
        }
        let Some(Reverse((_, i))) = self.heap.pop() else {
            return Ok(None);
        };
        let r = self.heads.get_mut(i).and_then(Option::take);
        self.pull(i)?;
        Ok(r)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::api::export::record::Category;

    /// A source over a list.
    pub struct ListSource(pub std::vec::IntoIter<ExportRecord>);

    impl Source for ListSource {
        fn next(&mut self) -> Result<Option<ExportRecord>, StoreError> {
            Ok(self.0.next())
        }
    }

    pub fn rec(at: u64, detail: &str) -> ExportRecord {
        let mut r = ExportRecord::from_parcel(&crate::store::parcels::AuditRecord {
            pos: 0,
            at,
            what: "service".into(),
            order: None,
            carrier: None,
            site: None,
            cabinet: None,
            compartment: None,
            from: None,
            to: None,
            cause: "api".into(),
            actor: "t".into(),
            exception: None,
            detail: String::new(),
            tracking: None,
            reference: None,
        });
        r.detail = detail.into();
        r.category = Category::Admin;
        r
    }

    fn merged(lists: Vec<Vec<(u64, &str)>>) -> Vec<(u64, String)> {
        let sources: Vec<Box<dyn Source>> = lists
            .into_iter()
            .map(|l| {
                let v: Vec<ExportRecord> = l.into_iter().map(|(at, d)| rec(at, d)).collect();
                Box::new(ListSource(v.into_iter())) as Box<dyn Source>
            })
            .collect();
        let mut m = Merge::new(sources);
        let mut out = Vec::new();
        while let Some(r) = m.next().expect("next") {
            out.push((r.at, r.detail));
        }
        out
    }

    #[test]
    fn sorted_sources_merge_into_time_order_ties_by_source_then_source_order() {
        let out = merged(vec![
            vec![(1, "a1"), (5, "a5"), (5, "a5b"), (9, "a9")],
            vec![],
            vec![(0, "c0"), (5, "c5"), (10, "c10")],
            vec![(2, "d2"), (3, "d3")],
        ]);
        let got: Vec<&str> = out.iter().map(|(_, d)| d.as_str()).collect();
        assert_eq!(
            got,
            ["c0", "a1", "d2", "d3", "a5", "a5b", "c5", "a9", "c10"]
        );
        assert!(out.windows(2).all(|w| w[0].0 <= w[1].0));
    }

    #[test]
    fn a_source_whose_clock_stepped_back_keeps_its_own_order() {
        let out = merged(vec![
            vec![(10, "x10"), (2, "x2"), (11, "x11")],
            vec![(5, "y5")],
        ]);
        let got: Vec<&str> = out.iter().map(|(_, d)| d.as_str()).collect();
        // x2 is not moved before x10; everything else stays sorted around it
        assert_eq!(got, ["y5", "x10", "x2", "x11"]);
    }
}
