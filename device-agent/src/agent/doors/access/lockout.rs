//! The keypad lock after wrong codes (pure, wall-clock milliseconds in, decisions out): it owns
//! the times of the recent wrong codes and the end of the lock. `max` wrong codes within
//! `window` lock the keypad for `lockout`; the end is what gets persisted, and a restored end
//! is capped at `now + lockout` so a clock that jumped back cannot lock the keypad for longer.

use std::collections::VecDeque;

/// The lock's settings, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockRules {
    pub max: u32,
    pub window_ms: u64,
    pub lockout_ms: u64,
}

/// Recent wrong codes and the lock in force, if any.
#[derive(Debug, Clone, Default)]
pub struct Lockout {
    wrong: VecDeque<u64>,
    until: Option<u64>,
}

impl Lockout {
    /// The lock restored from storage (`until`), capped at `now + lockout`.
    pub fn restored(until: Option<u64>, now: u64, rules: LockRules) -> Self {
        Self {
            wrong: VecDeque::new(),
            until: until.map(|u| u.min(now.saturating_add(rules.lockout_ms))),
        }
    }

    /// The end of the lock held (in force or due to be lifted).
    pub fn until(&self) -> Option<u64> {
        self.until
    }

    /// Whether the keypad is locked at `now`.
    pub fn is_locked(&self, now: u64) -> bool {
        self.until.is_some_and(|u| now < u)
    }

    /// Records a wrong code at `now`; returns the end of the lock if this one locks the keypad.
    pub fn wrong(&mut self, now: u64, rules: LockRules) -> Option<u64> {
        if self.is_locked(now) {
            return None;
        }
        self.wrong
            .retain(|&t| t <= now && now - t < rules.window_ms);
        self.wrong.push_back(now);
        if self.wrong.len() >= rules.max as usize {
            self.wrong.clear();
            let until = now.saturating_add(rules.lockout_ms);
            self.until = Some(until);
            return Some(until);
        }
        None
    }

    /// Lifts a lock whose end has come; true if one was lifted.
    pub fn end_if_due(&mut self, now: u64) -> bool {
        match self.until {
            Some(u) if now >= u => {
                self.until = None;
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const R: LockRules = LockRules {
        max: 3,
        window_ms: 1_000,
        lockout_ms: 5_000,
    };

    #[test]
    fn max_wrong_codes_in_the_window_lock_until_the_end() {
        let mut l = Lockout::default();
        assert_eq!(l.wrong(0, R), None);
        assert_eq!(l.wrong(500, R), None);
        // the first one left the window
        assert_eq!(l.wrong(1_200, R), None);
        assert_eq!(l.wrong(1_400, R), Some(6_400));
        assert!(l.is_locked(6_399));
        assert_eq!(l.wrong(2_000, R), None, "no new lock while locked");
        assert!(!l.end_if_due(6_399));
        assert!(l.end_if_due(6_400));
        assert!(!l.is_locked(6_400));
        assert_eq!(l.wrong(6_500, R), None, "the count started over");
    }

    #[test]
    fn a_restored_lock_is_capped() {
        let l = Lockout::restored(Some(1_000_000), 10_000, R);
        assert_eq!(l.until(), Some(15_000));
        let l = Lockout::restored(Some(12_000), 10_000, R);
        assert_eq!(l.until(), Some(12_000));
        assert!(!Lockout::restored(None, 10_000, R).is_locked(10_000));
    }

    proptest! {
        /// A lock starts exactly when `max` wrong codes fall within one window since the last
        /// lock, and lasts exactly `lockout`.
        #[test]
        fn locks_exactly_on_the_max_th_code_in_a_window(
            gaps in proptest::collection::vec(0u64..1_500, 1..60),
        ) {
            let mut l = Lockout::default();
            let mut now = 0u64;
            let mut recent: Vec<u64> = Vec::new();
            for g in gaps {
                now += g;
                l.end_if_due(now);
                let locked = l.is_locked(now);
                let got = l.wrong(now, R);
                if locked {
                    prop_assert_eq!(got, None);
                    continue;
                }
                recent.retain(|&t| now - t < R.window_ms);
                recent.push(now);
                if recent.len() >= R.max as usize {
                    recent.clear();
                    prop_assert_eq!(got, Some(now + R.lockout_ms));
                } else {
                    prop_assert_eq!(got, None);
                }
            }
        }
    }
}
