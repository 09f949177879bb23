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
