//! The exporters' upload slots: at most
//! `STREAM_MANAGER_EXPORTER_THREAD_POOL_SIZE` uploads in flight across all
//! exporter processes, handed out by priority (1 first, then arrival), as
//! the AWS stream manager's one exporter thread pool does. A slot is a
//! lease: its holder renews it while the upload goes on (every 10 s,
//! `export_runtime::SLOT_LEASE_RENEW`) and releases it when done; a lease
//! not renewed for [`SLOT_LEASE`] (its exporter was killed) is taken back.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bus::PeerId;

use crate::waiters::Waiters;

/// Uploads waiting for a slot at once; more are refused with Busy.
pub const SLOT_WAITERS_MAX: usize = 1024;
/// A lease not renewed for this long is taken back.
pub const SLOT_LEASE: Duration = Duration::from_secs(30);
pub use crate::waiters::PRIORITY_NONE;

/// A caller waiting for a slot.
pub type SlotWaiter = crate::waiters::Waiter<()>;

pub struct Slots {
    size: usize,
    /// Lease id → when it lapses unless renewed.
    held: HashMap<u64, Instant>,
    next_lease: u64,
    waiting: Waiters<()>,
}

impl Slots {
    pub fn new(size: usize) -> Self {
        Self {
            size: size.max(1),
            held: HashMap::new(),
            next_lease: 1,
            waiting: Waiters::new(SLOT_WAITERS_MAX, "an upload slot"),
        }
    }

    pub fn push(
        &mut self,
        peer: PeerId,
        id: u64,
        priority: i64,
        deadline: Instant,
    ) -> Result<(), String> {
        self.waiting.push(peer, id, priority, deadline, ())
    }

    /// Takes back lapsed leases, then hands free slots to the best waiters:
    /// each with its lease id.
    pub fn grant_ready(&mut self, now: Instant) -> Vec<(SlotWaiter, u64)> {
        self.held.retain(|_, lapses| *lapses > now);
        let mut granted = Vec::new();
        while self.held.len() < self.size {
            let Some(w) = self.waiting.pop_best() else {
                break;
            };
            let lease = self.next_lease;
            self.next_lease += 1;
            self.held.insert(lease, now + SLOT_LEASE);
            granted.push((w, lease));
        }
        granted
    }

    /// Ends a lease; `false` when it was not held (lapsed, or from a store
    /// that restarted since).
    pub fn release(&mut self, lease: u64) -> bool {
        self.held.remove(&lease).is_some()
    }

    /// Extends a lease; `false` when it is not held.
    pub fn renew(&mut self, lease: u64, now: Instant) -> bool {
        match self.held.get_mut(&lease) {
            Some(lapses) => {
                *lapses = now + SLOT_LEASE;
                true
            }
            None => false,
        }
    }

    /// Waiters whose deadline is at or before `due`, removed.
    pub fn expired(&mut self, due: Instant) -> Vec<SlotWaiter> {
        self.waiting.expired(due)
    }

    pub fn drain(&mut self) -> Vec<SlotWaiter> {
        self.waiting.drain()
    }

    /// When something may change: a waiter's deadline, or (with waiters) a
    /// lease lapsing.
    pub fn next_wake(&self) -> Option<Instant> {
        let deadline = self.waiting.earliest_deadline()?;
        Some(self.held.values().copied().fold(deadline, Instant::min))
    }

    pub fn in_use(&self) -> usize {
        self.held.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> PeerId {
        PeerId::from(vec![1u8])
    }

    #[test]
    fn slots_go_by_priority_then_arrival_and_come_back() {
        let t0 = Instant::now();
        let far = t0 + Duration::from_secs(3600);
        let mut s = Slots::new(1);
        s.push(peer(), 1, PRIORITY_NONE, far).unwrap();
        s.push(peer(), 2, 10, far).unwrap();
        s.push(peer(), 3, 1, far).unwrap();
        s.push(peer(), 4, 1, far).unwrap();
        let g = s.grant_ready(t0);
        assert_eq!(g.len(), 1);
        assert_eq!(g[0].0.id, 3, "priority 1 first");
        assert!(s.grant_ready(t0).is_empty(), "one slot");
        assert!(s.release(g[0].1));
        assert!(!s.release(g[0].1), "released once");
        let g: Vec<u64> = s.grant_ready(t0).iter().map(|(w, _)| w.id).collect();
        assert_eq!(g, vec![4], "same priority: arrival order");
    }

    #[test]
    fn a_lease_not_renewed_lapses() {
        let t0 = Instant::now();
        let far = t0 + Duration::from_secs(3600);
        let mut s = Slots::new(1);
        s.push(peer(), 1, 5, far).unwrap();
        let (_, lease) = s.grant_ready(t0).pop().unwrap();
        s.push(peer(), 2, 5, far).unwrap();
        // Renewed: still held past the first lease time.
        assert!(s.renew(lease, t0 + SLOT_LEASE / 2));
        assert!(s.grant_ready(t0 + SLOT_LEASE).is_empty());
        assert!(s.next_wake().unwrap() <= t0 + SLOT_LEASE / 2 + SLOT_LEASE);
        // Not renewed again: taken back.
        let g = s.grant_ready(t0 + SLOT_LEASE * 2);
        assert_eq!(g.len(), 1);
        assert!(!s.renew(lease, t0 + SLOT_LEASE * 2));
    }
}
