//! Concurrent uploads of one exporter process, bounded by
//! `STREAM_MANAGER_EXPORTER_THREAD_POOL_SIZE`, handed out by priority (1
//! highest; exports without one last), then in arrival order.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

pub struct PriorityGate {
    inner: Mutex<Inner>,
}

struct Inner {
    free: usize,
    tickets: u64,
    waiting: BTreeMap<(i64, u64), oneshot::Sender<()>>,
}

/// One upload slot; given back (to the best waiter) when dropped.
pub struct GatePermit {
    gate: Arc<PriorityGate>,
}

impl PriorityGate {
    pub fn new(slots: usize) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(Inner {
                free: slots,
                tickets: 0,
                waiting: BTreeMap::new(),
            }),
        })
    }

    /// Waits for a slot. Cancel-safe: a slot handed to a waiter that has
    /// gone is passed on.
    pub async fn acquire(self: &Arc<Self>, priority: i64) -> GatePermit {
        let (key, rx) = {
            let mut g = self.inner.lock().expect("gate lock");
            if g.free > 0 && g.waiting.is_empty() {
                g.free -= 1;
                return GatePermit { gate: self.clone() };
            }
            g.tickets += 1;
            let key = (priority, g.tickets);
            let (tx, rx) = oneshot::channel();
            g.waiting.insert(key, tx);
            (key, rx)
        };
        let mut waiter = Waiter {
            gate: self.clone(),
            key,
            rx: Some(rx),
        };
        let rx = waiter.rx.as_mut().expect("receiver");
        // The sender lives in the map until it is used: it cannot be dropped
        // unanswered while we wait.
        let _ = rx.await;
        waiter.rx = None;
        GatePermit { gate: self.clone() }
    }

    fn release(&self) {
        let mut g = self.inner.lock().expect("gate lock");
        while let Some((_, tx)) = g.waiting.pop_first() {
            if tx.send(()).is_ok() {
                return;
            }
        }
        g.free += 1;
    }

    /// Slots free now (for tests).
    pub fn free(&self) -> usize {
        self.inner.lock().expect("gate lock").free
    }
}

impl Drop for GatePermit {
    fn drop(&mut self) {
        self.gate.release();
    }
}

struct Waiter {
    gate: Arc<PriorityGate>,
    key: (i64, u64),
    rx: Option<oneshot::Receiver<()>>,
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let Some(mut rx) = self.rx.take() else {
            return;
        };
        let removed = self
            .gate
            .inner
            .lock()
            .expect("gate lock")
            .waiting
            .remove(&self.key)
            .is_some();
        // Not in the map any more and a slot arrived: pass it on.
        if !removed && rx.try_recv().is_ok() {
            self.gate.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(flavor = "current_thread")]
    async fn slots_go_to_the_highest_priority_first() {
        let gate = PriorityGate::new(1);
        let first = gate.acquire(5).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (name, prio) in [("low", 11), ("high", 1), ("mid", 5)] {
            let (gate, order) = (gate.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let _p = gate.acquire(prio).await;
                order.lock().unwrap().push(name);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }));
            tokio::task::yield_now().await;
        }
        drop(first);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec!["high", "mid", "low"]);
        assert_eq!(gate.free(), 1);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_cancelled_waiter_does_not_keep_a_slot() {
        let gate = PriorityGate::new(1);
        let held = gate.acquire(1).await;
        let g2 = gate.clone();
        let waiting = tokio::spawn(async move { g2.acquire(1).await });
        tokio::task::yield_now().await;
        waiting.abort();
        let _ = waiting.await;
        drop(held);
        assert_eq!(gate.free(), 1);
        let _again = tokio::time::timeout(Duration::from_secs(1), gate.acquire(1))
            .await
            .expect("slot free again");
    }
}
