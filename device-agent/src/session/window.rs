//! The uplink window: a pure go-back-N state machine over sequence numbers.
//!
//! The gateway stores only `seq == last_stored + 1` (it drops gaps and duplicates and re-acks
//! its last stored seq) and acks "everything <= seq". So the agent publishes in seq order with at
//! most `size` events unacknowledged, and goes back to the first unacknowledged event after every
//! (re)connect and whenever no ack progress arrived for `timeout` while events were in flight.

use std::ops::RangeInclusive;
use std::time::Duration;

use tokio::time::Instant;

/// Go-back-N sender state.
#[derive(Debug, Clone)]
pub struct Window {
    acked: u64,
    last: u64,
    next_send: u64,
    size: u64,
    timeout: Duration,
    last_progress: Instant,
    connected: bool,
    rewinds: u64,
}

impl Window {
    /// A window whose gateway acknowledged `acked` and whose outbox ends at `last`.
    pub fn new(acked: u64, last: u64, size: u16, timeout: Duration, now: Instant) -> Self {
        Self {
            acked,
            last: last.max(acked),
            next_send: acked + 1,
            size: u64::from(size.max(1)),
            timeout,
            last_progress: now,
            connected: false,
            rewinds: 0,
        }
    }

    /// The last acknowledged seq.
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// The last stored seq.
    pub fn last(&self) -> u64 {
        self.last
    }

    /// The next seq to publish.
    pub fn next_send(&self) -> u64 {
        self.next_send
    }

    /// Whether the session is up.
    pub fn connected(&self) -> bool {
        self.connected
    }

    /// How many times the window went back (timeouts only; connects not counted).
    pub fn rewinds(&self) -> u64 {
        self.rewinds
    }

    /// Events published and not acknowledged.
    pub fn in_flight(&self) -> u64 {
        self.next_send - 1 - self.acked
    }

    /// The session came up: everything unacknowledged is sent again from the first.
    pub fn on_connect(&mut self, now: Instant) {
        self.connected = true;
        self.next_send = self.acked + 1;
        self.last_progress = now;
    }

    /// The session went down.
    pub fn on_disconnect(&mut self) {
        self.connected = false;
    }

    /// A new event was stored under `seq`.
    pub fn on_stored(&mut self, seq: u64) {
        self.last = self.last.max(seq);
    }

    /// The gateway acknowledged everything up to `seq`; returns whether that was progress.
    pub fn on_ack(&mut self, seq: u64, now: Instant) -> bool {
        if seq <= self.acked {
            return false;
        }
        self.acked = seq;
        self.last = self.last.max(seq);
        self.next_send = self.next_send.max(seq + 1);
        self.last_progress = now;
        true
    }

    /// The seqs that may be published now, if any.
    pub fn to_send(&self) -> Option<RangeInclusive<u64>> {
        if !self.connected {
            return None;
        }
        let hi = self.last.min(self.acked + self.size);
        (self.next_send <= hi).then_some(self.next_send..=hi)
    }

    /// Everything up to `upto` was handed to the MQTT client.
    pub fn mark_sent(&mut self, upto: u64, now: Instant) {
        if upto < self.next_send {
            return;
        }
        if self.in_flight() == 0 {
            self.last_progress = now;
        }
        self.next_send = upto + 1;
    }

    /// When the ack timeout fires, if events are in flight.
    pub fn deadline(&self) -> Option<Instant> {
        (self.connected && self.in_flight() > 0).then_some(self.last_progress + self.timeout)
    }

    /// Goes back to the first unacknowledged event if the ack timeout passed; returns whether it
    /// did.
    pub fn on_tick(&mut self, now: Instant) -> bool {
        match self.deadline() {
            Some(d) if now >= d => {
                self.next_send = self.acked + 1;
                self.last_progress = now;
                self.rewinds += 1;
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

    /// The gateway's rule: store only last+1, ack the last stored.
    struct Gateway {
        stored: u64,
    }

    impl Gateway {
        fn receive(&mut self, seq: u64) -> u64 {
            if seq == self.stored + 1 {
                self.stored = seq;
            }
            self.stored
        }
    }

    #[derive(Debug, Clone)]
    enum Step {
        Store(u8),
        Pump { lose_every: u8, acks_lost: bool },
        Disconnect,
        Connect,
        Wait,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (1u8..10).prop_map(Step::Store),
            (0u8..5, any::<bool>()).prop_map(|(l, a)| Step::Pump {
                lose_every: l,
                acks_lost: a
            }),
            Just(Step::Disconnect),
            Just(Step::Connect),
            Just(Step::Wait),
        ]
    }

    proptest! {
        #[test]
        fn any_loss_pattern_delivers_everything_in_order(steps in proptest::collection::vec(step(), 1..80), size in 1u16..16) {
            let mut now = Instant::now();
            let timeout = Duration::from_secs(5);
            let mut w = Window::new(0, 0, size, timeout, now);
            let mut gw = Gateway { stored: 0 };
            let mut stored = 0u64;
            for s in steps {
                match s {
                    Step::Store(n) => for _ in 0..n { stored += 1; w.on_stored(stored); },
                    Step::Pump { lose_every, acks_lost } => {
                        if let Some(r) = w.to_send() {
                            let hi = *r.end();
                            prop_assert!(hi <= w.acked() + u64::from(size), "window respected");
                            let mut acks = Vec::new();
                            for seq in r {
                                let lost = lose_every > 0 && seq % u64::from(lose_every) == 0;
                                if !lost { acks.push(gw.receive(seq)); }
                            }
                            w.mark_sent(hi, now);
                            if !acks_lost { for a in acks { w.on_ack(a, now); } }
                        }
                    }
                    Step::Disconnect => w.on_disconnect(),
                    Step::Connect => w.on_connect(now),
                    Step::Wait => { now += timeout; w.on_tick(now); }
                }
                prop_assert!(w.acked() <= gw.stored);
                prop_assert!(w.acked() < w.next_send());
                prop_assert!(w.next_send() <= w.last() + 1);
            }
            // Heal the link: connect and pump with timeouts until all is acknowledged.
            w.on_connect(now);
            for _ in 0..(stored + 4) * 2 {
                if let Some(r) = w.to_send() {
                    let hi = *r.end();
                    let mut acks = Vec::new();
                    for seq in r { acks.push(gw.receive(seq)); }
                    w.mark_sent(hi, now);
                    for a in acks { w.on_ack(a, now); }
                } else {
                    now += timeout;
                    w.on_tick(now);
                }
            }
            prop_assert_eq!(gw.stored, stored, "gateway has every event");
            prop_assert_eq!(w.acked(), stored);
        }
    }

    #[test]
    fn timeout_rewinds_only_with_events_in_flight() {
        let t0 = Instant::now();
        let mut w = Window::new(0, 0, 4, Duration::from_secs(5), t0);
        w.on_connect(t0);
        assert_eq!(w.deadline(), None);
        for s in 1..=6 {
            w.on_stored(s);
        }
        assert_eq!(w.to_send(), Some(1..=4));
        w.mark_sent(4, t0);
        assert_eq!(w.to_send(), None);
        assert!(!w.on_tick(t0 + Duration::from_secs(4)));
        assert!(w.on_ack(2, t0 + Duration::from_secs(4)));
        assert_eq!(w.to_send(), Some(5..=6));
        w.mark_sent(6, t0 + Duration::from_secs(4));
        assert!(!w.on_tick(t0 + Duration::from_secs(8)));
        assert!(w.on_tick(t0 + Duration::from_secs(9)));
        assert_eq!(w.to_send(), Some(3..=6));
        w.on_disconnect();
        assert_eq!(w.to_send(), None);
        assert_eq!(w.deadline(), None);
    }
}
