//! The wall clock, injectable so tests and the fleet simulator can give a cabinet a wrong clock.
//! Monotonic time always comes from `tokio::time::Instant`.

use locker_schemas::Millis;

/// A wall clock.
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_millis(&self) -> Millis;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_millis(&self) -> Millis {
        locker_schemas::now_millis()
    }
}

/// A clock that is off by a fixed amount (negative: behind).
#[derive(Debug, Clone, Copy)]
pub struct OffsetClock(pub i64);

impl Clock for OffsetClock {
    fn now_millis(&self) -> Millis {
        locker_schemas::now_millis().saturating_add_signed(self.0)
    }
}

/// A wall clock that only moves when told to (tests and simulations: lockouts, sessions and
/// expiry without waiting). Clones share the same time.
#[derive(Debug, Clone)]
pub struct ManualClock(std::sync::Arc<std::sync::atomic::AtomicU64>);

impl ManualClock {
    /// A clock reading `now` (ms since the epoch).
    pub fn new(now: Millis) -> Self {
        Self(std::sync::Arc::new(std::sync::atomic::AtomicU64::new(now)))
    }

    /// Moves the clock forward by `ms`.
    pub fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, std::sync::atomic::Ordering::SeqCst);
    }

    /// Sets the clock.
    pub fn set(&self, now: Millis) {
        self.0.store(now, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_millis(&self) -> Millis {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}
