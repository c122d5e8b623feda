//! Callers waiting for something the store hands out to the exporters
//! (bandwidth, upload slots): served by priority (1 first; exports without
//! one come last, as [`PRIORITY_NONE`]), then in arrival order, each until
//! its deadline. Bounded: a queue refuses a caller beyond its size.

use std::time::Instant;

use bus::PeerId;

/// Priority of exports without one (below the lowest settable, 10).
pub const PRIORITY_NONE: i64 = 11;

pub struct Waiter<T> {
    pub peer: PeerId,
    pub id: u64,
    pub deadline: Instant,
    /// What it asks for (bandwidth: bytes).
    pub item: T,
    priority: i64,
    arrival: u64,
}

pub struct Waiters<T> {
    max: usize,
    /// What is waited for, in the refusal message.
    what: &'static str,
    arrivals: u64,
    waiting: Vec<Waiter<T>>,
}

impl<T> Waiters<T> {
    pub fn new(max: usize, what: &'static str) -> Self {
        Self {
            max,
            what,
            arrivals: 0,
            waiting: Vec::new(),
        }
    }

    /// Queues a caller; refused when `max` are waiting already.
    pub fn push(
        &mut self,
        peer: PeerId,
        id: u64,
        priority: i64,
        deadline: Instant,
        item: T,
    ) -> Result<(), String> {
        if self.waiting.len() >= self.max {
            return Err(format!(
                "{} uploads are already waiting for {}",
                self.max, self.what
            ));
        }
        self.arrivals += 1;
        self.waiting.push(Waiter {
            peer,
            id,
            deadline,
            item,
            priority: priority.clamp(1, PRIORITY_NONE),
            arrival: self.arrivals,
        });
        Ok(())
    }

    /// Removes and returns the best waiter.
    pub fn pop_best(&mut self) -> Option<Waiter<T>> {
        let best = self
            .waiting
            .iter()
            .enumerate()
            .min_by_key(|(_, w)| (w.priority, w.arrival))
            .map(|(i, _)| i)?;
        Some(self.waiting.swap_remove(best))
    }

    /// Removes and returns the waiters whose deadline has come.
    pub fn expired(&mut self, due: Instant) -> Vec<Waiter<T>> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < self.waiting.len() {
            if self.waiting[i].deadline <= due {
                out.push(self.waiting.swap_remove(i));
            } else {
                i += 1;
            }
        }
        out
    }

    /// Every waiter, for answering at shutdown.
    pub fn drain(&mut self) -> Vec<Waiter<T>> {
        std::mem::take(&mut self.waiting)
    }

    pub fn earliest_deadline(&self) -> Option<Instant> {
        self.waiting.iter().map(|w| w.deadline).min()
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }
}
