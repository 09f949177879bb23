//! Answers split between the edge and the router: a SUBSCRIBE (or UNSUBSCRIBE) whose items
//! the edge decides in part (refused filters, shared subscriptions) and the router in part.
//! The edge's codes are kept by packet id until the router's acknowledgement comes, and the
//! two are merged in the order of the client's items.

use std::collections::HashMap;

/// Pending split answers, by packet id.
pub(crate) struct Split<C> {
    pending: HashMap<u16, Vec<Option<C>>>,
}

impl<C> Default for Split<C> {
    fn default() -> Self {
        Self {
            pending: HashMap::new(),
        }
    }
}

impl<C> Split<C> {
    /// Records the edge's decisions for the items of packet `pkid` (`None`: the router's).
    /// Returns the whole answer when the edge decided every item (nothing goes to the router).
    pub fn record(&mut self, pkid: u16, decided: Vec<Option<C>>) -> Option<Vec<C>> {
        if decided.iter().all(Option::is_some) {
            return Some(decided.into_iter().flatten().collect());
        }
        if decided.iter().any(Option::is_some) {
            self.pending.insert(pkid, decided);
        }
        None
    }

    /// The answer to the client for the router's answer to `pkid`: the edge's codes with the
    /// router's in their places (`missing` if the router gave fewer than expected).
    pub fn merge(&mut self, pkid: u16, router: Vec<C>, missing: C) -> Vec<C>
    where
        C: Clone,
    {
        let Some(decided) = self.pending.remove(&pkid) else {
            return router;
        };
        let mut router = router.into_iter();
        decided
            .into_iter()
            .map(|c| {
                c.or_else(|| router.next())
                    .unwrap_or_else(|| missing.clone())
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_edges_codes_and_the_routers_are_merged_in_order() {
        let mut s = Split::default();
        assert_eq!(s.record(1, vec![Some(9), Some(8)]), Some(vec![9, 8]));
        assert_eq!(s.record(2, vec![None, Some(7), None]), None);
        assert_eq!(s.merge(2, vec![1, 2], 0), vec![1, 7, 2]);
        assert_eq!(s.record(3, vec![None]), None);
        assert_eq!(
            s.merge(3, vec![5], 0),
            vec![5],
            "nothing recorded: the router's"
        );
        assert_eq!(s.record(4, vec![None, Some(7)]), None);
        assert_eq!(s.merge(4, vec![], 0), vec![0, 7]);
    }
}
