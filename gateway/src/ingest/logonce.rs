//! Log-once bookkeeping for bad input: the first time a reason is seen fleet-wide it is logged
//! at warn, the first time per (cabinet, reason) at debug, and never again after that (the
//! counters count every occurrence). Memory is bounded: past `MAX` remembered pairs new pairs
//! are no longer logged at all (their counters still say everything).

use std::collections::HashSet;

/// How loudly to log an occurrence, if at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Warn,
    Debug,
    Silent,
}

/// Which (cabinet, reason) pairs and reasons were already logged.
#[derive(Default)]
pub struct LogOnce {
    reasons: HashSet<&'static str>,
    pairs: HashSet<(String, &'static str)>,
}

impl LogOnce {
    /// The most (cabinet, reason) pairs remembered.
    pub const MAX: usize = 10_000;

    /// How to log this occurrence of `reason` from `cabinet`.
    pub fn level(&mut self, cabinet: &str, reason: &'static str) -> LogLevel {
        let pair = (cabinet.to_owned(), reason);
        if self.pairs.contains(&pair) {
            return LogLevel::Silent;
        }
        if self.pairs.len() >= Self::MAX {
            return LogLevel::Silent;
        }
        self.pairs.insert(pair);
        if self.reasons.insert(reason) {
            LogLevel::Warn
        } else {
            LogLevel::Debug
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn once_per_reason_loud_once_per_cabinet_quiet_then_silent_and_bounded() {
        let mut l = LogOnce::default();
        assert_eq!(l.level("A", "malformed"), LogLevel::Warn);
        assert_eq!(l.level("A", "malformed"), LogLevel::Silent);
        assert_eq!(l.level("B", "malformed"), LogLevel::Debug);
        assert_eq!(l.level("B", "version"), LogLevel::Warn);
        for i in 0..LogOnce::MAX * 2 {
            l.level(&format!("C{i}"), "malformed");
        }
        assert!(l.pairs.len() <= LogOnce::MAX);
        assert_eq!(l.level("never-seen", "malformed"), LogLevel::Silent);
    }
}
