//! The token bucket behind a cabinet's uplink rate limit (`edge.uplink_rate_per_s`,
//! `edge.uplink_burst`): owned by the cabinet's session, which stops reading the socket for
//! as long as [`Bucket::take`] says (backpressure, never a drop).

use std::time::Duration;

use tokio::time::Instant;

/// A token bucket: `rate` tokens per second, at most `burst` stored.
pub(crate) struct Bucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    at: Instant,
}

impl Bucket {
    pub fn new(rate: u32, burst: u32) -> Self {
        Self {
            tokens: f64::from(burst),
            rate: f64::from(rate),
            burst: f64::from(burst),
            at: Instant::now(),
        }
    }

    /// Takes a token, or says how long until one is there.
    pub fn take(&mut self, now: Instant) -> Option<Duration> {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            None
        } else {
            Some(Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(10, 3);
        b.at = t0;
        for _ in 0..3 {
            assert_eq!(b.take(t0), None);
        }
        let wait = b.take(t0).expect("empty after the burst");
        assert!(wait > Duration::from_millis(99) && wait <= Duration::from_millis(100));
        // 250 ms later: two tokens back (and the refill never exceeds the burst).
        let t1 = t0 + Duration::from_millis(250);
        assert_eq!(b.take(t1), None);
        assert_eq!(b.take(t1), None);
        assert!(b.take(t1).is_some());
        let t2 = t1 + Duration::from_secs(60);
        for _ in 0..3 {
            assert_eq!(b.take(t2), None);
        }
        assert!(b.take(t2).is_some());
    }
}
