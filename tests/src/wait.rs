//! Polling with a deadline instead of fixed sleeps.

use std::future::Future;
use std::time::{Duration, Instant};

/// The default deadline for conditions in tests: generous, because CI machines are slow;
/// tests pass as soon as the condition holds.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Polls `cond` every few milliseconds until it is true; panics with `what` after `DEADLINE`.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Polls an async condition until it returns `Some`; panics with `what` after `DEADLINE`.
pub async fn eventually_async<T, F, Fut>(what: &str, mut cond: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = cond().await {
            return v;
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
