//! One target's queue in memory: which deliveries wait, which may go now. Deliveries with the
//! same key (a cabinet) go strictly one after the other, in queue order; different keys go in
//! parallel up to the target's concurrency. Pure (no I/O, time passed in), so the ordering and
//! retry rules are tested directly.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use locker_schemas::Millis;
use rand::Rng;

/// What the queue keeps of a delivery (the payload stays in the store).
#[derive(Debug, Clone, PartialEq)]
pub struct Meta {
    pub key: String,
    pub at: Millis,
    pub queued_at: Millis,
    pub attempts: u32,
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    /// Try again at this time.
    Retry(Millis),
    /// Too old (or refused for good): to the dead letters.
    Dead,
}

/// Backoff and age limits.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub base_ms: u64,
    pub max_ms: u64,
    pub max_age_ms: u64,
}

impl RetryPolicy {
    /// Exponential backoff with full jitter over the upper half: attempt 1 waits 0.5-1x base,
    /// attempt 2 1-2x base, ... capped at `max_ms`.
    pub fn delay(&self, attempts: u32, rng: &mut impl Rng) -> u64 {
        let exp = attempts.saturating_sub(1).min(30);
        let full = self
            .base_ms
            .saturating_mul(1u64 << exp)
            .min(self.max_ms)
            .max(1);
        rng.gen_range(full / 2..=full)
    }
}

/// The queue of one target.
#[derive(Debug, Default)]
pub struct Queue {
    /// By seq: seqs are given in queue order, so the first is the oldest.
    metas: BTreeMap<u64, Meta>,
    /// Pending seqs per key, in order.
    keys: HashMap<String, VecDeque<u64>>,
    /// Heads of keys that may go (not in flight), by when.
    due: BTreeSet<(Millis, u64)>,
    in_flight: usize,
}

impl Queue {
    /// Deliveries waiting (in flight included).
    pub fn len(&self) -> usize {
        self.metas.len()
    }

    pub fn is_empty(&self) -> bool {
        self.metas.is_empty()
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// When the oldest waiting delivery was queued (the lowest seq: O(log n), read every
    /// second by the gauges).
    pub fn oldest(&self) -> Option<Millis> {
        self.metas.values().next().map(|m| m.queued_at)
    }

    /// A delivery's record.
    pub fn meta(&self, seq: u64) -> Option<&Meta> {
        self.metas.get(&seq)
    }

    /// Adds a delivery (seqs rise within a target); it may go at `not_before`.
    pub fn push(&mut self, seq: u64, meta: Meta, not_before: Millis) {
        let q = self.keys.entry(meta.key.clone()).or_default();
        q.push_back(seq);
        if q.len() == 1 {
            self.due.insert((not_before, seq));
        }
        self.metas.insert(seq, meta);
    }

    /// The next delivery that may go at `now`, marked in flight; `None` when the concurrency
    /// is used up or nothing is due.
    pub fn take(&mut self, now: Millis, concurrency: usize) -> Option<u64> {
        if self.in_flight >= concurrency {
            return None;
        }
        let &(at, seq) = self.due.iter().next()?;
        if at > now {
            return None;
        }
        self.due.remove(&(at, seq));
        self.in_flight += 1;
        if let Some(m) = self.metas.get_mut(&seq) {
            m.attempts += 1;
        }
        Some(seq)
    }

    /// When the next delivery becomes due (if the concurrency allows).
    pub fn next_due(&self) -> Option<Millis> {
        self.due.iter().next().map(|&(at, _)| at)
    }

    /// An in-flight delivery is done (delivered, or dead): its key's next one may go.
    pub fn finish(&mut self, seq: u64, now: Millis) -> Option<Meta> {
        let meta = self.metas.remove(&seq)?;
        self.in_flight = self.in_flight.saturating_sub(1);
        if let Some(q) = self.keys.get_mut(&meta.key) {
            if q.front() == Some(&seq) {
                q.pop_front();
            } else {
                q.retain(|s| *s != seq);
            }
            match q.front() {
                Some(&next) => {
                    self.due.insert((now, next));
                }
                None => {
                    self.keys.remove(&meta.key);
                }
            }
        }
        Some(meta)
    }

    /// An in-flight delivery failed: retry later, or give up when it is too old.
    /// `at_least_ms` holds the retry back further (a receiver's `Retry-After`).
    pub fn fail(
        &mut self,
        seq: u64,
        now: Millis,
        policy: &RetryPolicy,
        permanent: bool,
        at_least_ms: u64,
        rng: &mut impl Rng,
    ) -> AfterFailure {
        let Some(meta) = self.metas.get(&seq) else {
            return AfterFailure::Dead;
        };
        if permanent || now.saturating_sub(meta.queued_at) >= policy.max_age_ms {
            return AfterFailure::Dead;
        }
        let wait = policy
            .delay(meta.attempts, rng)
            .max(at_least_ms.min(policy.max_ms));
        let at = now + wait;
        self.in_flight = self.in_flight.saturating_sub(1);
        self.due.insert((at, seq));
        AfterFailure::Retry(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn meta(key: &str) -> Meta {
        Meta {
            key: key.into(),
            at: 0,
            queued_at: 0,
            attempts: 0,
        }
    }

    const POLICY: RetryPolicy = RetryPolicy {
        base_ms: 1_000,
        max_ms: 60_000,
        max_age_ms: 3_600_000,
    };

    #[test]
    fn one_key_goes_in_order_and_waits_for_its_head() {
        let mut q = Queue::default();
        q.push(1, meta("a"), 0);
        q.push(2, meta("a"), 0);
        q.push(3, meta("b"), 0);
        assert_eq!(q.take(0, 8), Some(1));
        assert_eq!(q.take(0, 8), Some(3), "b goes beside a; a's second waits");
        assert_eq!(q.take(0, 8), None);
        let mut rng = StdRng::seed_from_u64(1);
        let AfterFailure::Retry(at) = q.fail(1, 10, &POLICY, false, 0, &mut rng) else {
            panic!("retry")
        };
        assert!((510..=1_010).contains(&at), "{at}");
        assert_eq!(
            q.take(100, 8),
            None,
            "a's head waits for its retry; 2 stays behind it"
        );
        assert_eq!(q.take(at, 8), Some(1));
        q.finish(1, at);
        assert_eq!(q.take(at, 8), Some(2));
    }

    #[test]
    fn concurrency_bounds_in_flight() {
        let mut q = Queue::default();
        for s in 1..=5 {
            q.push(s, meta(&format!("k{s}")), 0);
        }
        assert!(q.take(0, 2).is_some());
        assert!(q.take(0, 2).is_some());
        assert_eq!(q.take(0, 2), None);
    }

    #[test]
    fn too_old_or_permanent_is_dead() {
        let mut q = Queue::default();
        q.push(1, meta("a"), 0);
        let mut rng = StdRng::seed_from_u64(1);
        q.take(0, 1);
        assert_eq!(
            q.fail(1, POLICY.max_age_ms, &POLICY, false, 0, &mut rng),
            AfterFailure::Dead
        );
        let mut q = Queue::default();
        q.push(1, meta("a"), 0);
        q.take(0, 1);
        assert_eq!(q.fail(1, 1, &POLICY, true, 0, &mut rng), AfterFailure::Dead);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let mut rng = StdRng::seed_from_u64(7);
        for attempts in 1..40 {
            let d = POLICY.delay(attempts, &mut rng);
            let full = (1_000u64 << (attempts - 1).min(30)).min(60_000);
            assert!(d >= full / 2 && d <= full, "{attempts}: {d}");
        }
    }

    proptest! {
        /// Whatever fails and succeeds, each key's deliveries finish in queue order, and
        /// every delivery finishes once.
        #[test]
        fn per_key_order_holds(keys in proptest::collection::vec(0u8..4, 1..60),
                               fails in proptest::collection::vec(any::<bool>(), 200)) {
            let mut q = Queue::default();
            for (i, k) in keys.iter().enumerate() {
                q.push(i as u64 + 1, meta(&k.to_string()), 0);
            }
            let mut rng = StdRng::seed_from_u64(3);
            let mut done: Vec<(String, u64)> = Vec::new();
            let mut now = 0;
            let mut f = fails.iter().cycle();
            let mut guard = 0;
            while !q.is_empty() && guard < 100_000 {
                guard += 1;
                let mut batch = Vec::new();
                while let Some(s) = q.take(now, 3) {
                    batch.push(s);
                }
                for s in batch {
                    if *f.next().unwrap_or(&false) {
                        q.fail(s, now, &POLICY, false, 0, &mut rng);
                    } else {
                        let m = q.finish(s, now).expect("meta");
                        done.push((m.key, s));
                    }
                }
                now = q.next_due().unwrap_or(now).max(now + 1);
            }
            prop_assert!(q.is_empty());
            prop_assert_eq!(done.len(), keys.len());
            for k in 0u8..4 {
                let seqs: Vec<u64> = done.iter().filter(|(kk, _)| *kk == k.to_string()).map(|(_, s)| *s).collect();
                let mut sorted = seqs.clone();
                sorted.sort_unstable();
                prop_assert_eq!(seqs, sorted);
            }
        }
    }
}
