//! The exporters' shared upload budget (`STREAM_MANAGER_EXPORTER_MAX_BANDWIDTH`).
//! Exporters are separate processes, so the one budget lives here, in the
//! process they all talk to. A token bucket that may go into debt: a grant is
//! given while the bucket is not in debt and takes its whole size, so one
//! large batch waits for the budget it used rather than being split. Over any
//! window of T seconds at most `rate × T + BURST + one grant` bytes are
//! granted. Waiting callers are served by priority, then in arrival order.

use std::time::{Duration, Instant};

use bus::PeerId;

use crate::waiters::Waiters;

/// Most callers waiting for a grant at once (each exporter waits with at
/// most its pool size of uploads).
pub const BANDWIDTH_WAITERS_MAX: usize = 1024;

/// Budget that may be saved up while nobody uploads, in seconds of the rate.
pub const BURST_SECONDS: f64 = 1.0;

pub use crate::waiters::PRIORITY_NONE;

/// A caller waiting for bandwidth; its `item` is the bytes asked for.
pub type Waiter = crate::waiters::Waiter<f64>;

pub struct Budget {
    /// Bytes per second; `None` is unlimited.
    rate: Option<f64>,
    tokens: f64,
    last: Instant,
    waiting: Waiters<f64>,
}

impl Budget {
    pub fn new(rate_bytes_per_s: Option<u64>, now: Instant) -> Self {
        Self {
            rate: rate_bytes_per_s.map(|r| r as f64),
            tokens: 0.0,
            last: now,
            waiting: Waiters::new(BANDWIDTH_WAITERS_MAX, "bandwidth"),
        }
    }

    fn refill(&mut self, now: Instant) {
        if let Some(rate) = self.rate {
            let dt = now.saturating_duration_since(self.last).as_secs_f64();
            self.tokens = (self.tokens + dt * rate).min(rate * BURST_SECONDS);
        }
        self.last = now;
    }

    /// Queues a request; the caller then calls `grant_ready`. Refused when
    /// too many are waiting.
    pub fn push(
        &mut self,
        peer: PeerId,
        id: u64,
        bytes: i64,
        priority: i64,
        deadline: Instant,
    ) -> Result<(), String> {
        self.waiting
            .push(peer, id, priority, deadline, bytes.max(0) as f64)
    }

    /// Removes and returns the waiters that may upload now, best first.
    pub fn grant_ready(&mut self, now: Instant) -> Vec<Waiter> {
        self.refill(now);
        let mut granted = Vec::new();
        while !self.waiting.is_empty() {
            if self.rate.is_some() && self.tokens < 0.0 {
                break;
            }
            let Some(w) = self.waiting.pop_best() else {
                break;
            };
            if self.rate.is_some() {
                self.tokens -= w.item;
            }
            granted.push(w);
        }
        granted
    }

    /// Removes and returns the waiters whose deadline has come.
    pub fn expired(&mut self, due: Instant) -> Vec<Waiter> {
        self.waiting.expired(due)
    }

    /// Every waiter, for answering at shutdown.
    pub fn drain(&mut self) -> Vec<Waiter> {
        self.waiting.drain()
    }

    /// When the next waiter can be granted or must be answered, if any waits.
    pub fn next_wake(&self) -> Option<Instant> {
        let earliest_deadline = self.waiting.earliest_deadline()?;
        let budget_back = match self.rate {
            Some(rate) if self.tokens < 0.0 => {
                self.last + Duration::from_secs_f64(-self.tokens / rate)
            }
            _ => self.last,
        };
        Some(earliest_deadline.min(budget_back))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> PeerId {
        PeerId::from(vec![1u8])
    }

    #[test]
    fn unlimited_grants_everything_at_once() {
        let now = Instant::now();
        let mut b = Budget::new(None, now);
        for i in 0..3 {
            b.push(peer(), i, 1 << 30, 5, now + Duration::from_secs(1))
                .unwrap();
        }
        assert_eq!(b.grant_ready(now).len(), 3);
    }

    #[test]
    fn grants_follow_the_rate_and_priority() {
        let t0 = Instant::now();
        let mut b = Budget::new(Some(1000), t0);
        let far = t0 + Duration::from_secs(3600);
        b.push(peer(), 1, 1000, PRIORITY_NONE, far).unwrap();
        b.push(peer(), 2, 1000, 1, far).unwrap();
        b.push(peer(), 3, 1000, 1, far).unwrap();
        // The bucket starts empty but not in debt: the best waiter goes.
        let g: Vec<u64> = b.grant_ready(t0).iter().map(|w| w.id).collect();
        assert_eq!(g, vec![2]);
        // 1000 bytes of debt at 1000 B/s: nothing for a second.
        assert!(b.grant_ready(t0 + Duration::from_millis(900)).is_empty());
        let wake = b.next_wake().unwrap();
        assert!(
            wake <= t0 + Duration::from_millis(1001) && wake >= t0 + Duration::from_millis(999)
        );
        let g: Vec<u64> = b
            .grant_ready(t0 + Duration::from_millis(1000))
            .iter()
            .map(|w| w.id)
            .collect();
        assert_eq!(g, vec![3], "same priority: arrival order");
        let g: Vec<u64> = b
            .grant_ready(t0 + Duration::from_millis(2000))
            .iter()
            .map(|w| w.id)
            .collect();
        assert_eq!(g, vec![1]);
    }

    #[test]
    fn granted_bytes_stay_within_rate_over_a_window() {
        let t0 = Instant::now();
        let rate = 10_000u64;
        let mut b = Budget::new(Some(rate), t0);
        let mut granted = 0f64;
        let far = t0 + Duration::from_secs(3600);
        // Always one waiter of 700 bytes; step time by 10 ms for 60 s.
        for step in 0..6000u64 {
            let now = t0 + Duration::from_millis(step * 10);
            if b.waiting.is_empty() {
                b.push(peer(), step, 700, 1, far).unwrap();
            }
            granted += b.grant_ready(now).iter().map(|w| w.item).sum::<f64>();
        }
        let expected = rate as f64 * 60.0;
        assert!(
            granted <= expected + 700.0 + rate as f64 * BURST_SECONDS && granted >= expected * 0.95,
            "granted {granted} bytes, expected about {expected}"
        );
    }

    #[test]
    fn deadlines_expire_and_the_queue_is_bounded() {
        let t0 = Instant::now();
        let mut b = Budget::new(Some(1), t0);
        b.push(peer(), 1, 10, 1, t0).unwrap();
        b.grant_ready(t0);
        b.push(peer(), 2, 10, 1, t0 + Duration::from_millis(5))
            .unwrap();
        assert!(b.grant_ready(t0).is_empty(), "in debt");
        let e = b.expired(t0 + Duration::from_millis(5));
        assert_eq!(e.len(), 1);
        for i in 0..BANDWIDTH_WAITERS_MAX as u64 {
            b.push(peer(), i, 1, 1, t0).unwrap();
        }
        assert!(b.push(peer(), 0, 1, 1, t0).is_err());
    }
}
