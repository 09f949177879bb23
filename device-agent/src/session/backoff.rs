//! Reconnect backoff: exponential with FULL jitter, `sleep = random(0, min(max, base * 2^n))`
//! after the n-th failure in a row. Full jitter spreads a fleet's reconnect storm evenly over
//! the window instead of synchronising it.

use std::time::Duration;

use rand::Rng;

/// Exponential backoff with full jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The largest sleep after `failures` failures in a row (`failures` >= 0).
    pub fn ceiling(&self, failures: u32) -> Duration {
        let factor = 1u32.checked_shl(failures.min(31)).unwrap_or(u32::MAX);
        self.base
            .checked_mul(factor)
            .unwrap_or(self.max)
            .min(self.max)
    }

    /// A random sleep in `[0, ceiling(failures)]`.
    pub fn delay<R: Rng + ?Sized>(&self, failures: u32, rng: &mut R) -> Duration {
        let cap = self.ceiling(failures).as_millis() as u64;
        Duration::from_millis(rng.gen_range(0..=cap))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ceiling_doubles_then_caps() {
        let b = Backoff {
            base: Duration::from_millis(500),
            max: Duration::from_secs(60),
        };
        assert_eq!(b.ceiling(0), Duration::from_millis(500));
        assert_eq!(b.ceiling(1), Duration::from_millis(1000));
        assert_eq!(b.ceiling(3), Duration::from_millis(4000));
        assert_eq!(b.ceiling(7), Duration::from_secs(60));
        assert_eq!(b.ceiling(1000), Duration::from_secs(60));
    }

    proptest! {
        #[test]
        fn delay_is_within_full_jitter_bounds(base in 1u64..10_000, extra in 0u64..1_000_000, n in 0u32..200, seed in any::<u64>()) {
            use rand::SeedableRng;
            let b = Backoff { base: Duration::from_millis(base), max: Duration::from_millis(base + extra) };
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let d = b.delay(n, &mut rng);
            prop_assert!(d <= b.ceiling(n));
            prop_assert!(b.ceiling(n) <= b.max);
            prop_assert!(b.ceiling(n) >= b.base.min(b.max));
        }

        #[test]
        fn jitter_actually_spreads(seed in any::<u64>()) {
            use rand::SeedableRng;
            let b = Backoff { base: Duration::from_millis(1000), max: Duration::from_secs(60) };
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let ds: Vec<_> = (0..64).map(|_| b.delay(4, &mut rng)).collect();
            let lo = ds.iter().filter(|d| **d < Duration::from_secs(8)).count();
            prop_assert!(lo > 8 && lo < 56, "{lo} of 64 below half the ceiling");
        }
    }
}
