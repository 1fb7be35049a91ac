//! The seeded scheduler: a set of in-flight operation futures, each polled with
//! a waker of its own, so the driver knows which ones can make progress and
//! picks among them with the seeded generator.
//!
//! No tokio task is ever spawned (the order in which tokio runs spawned tasks is
//! not ours to choose). The whole run is one future: the driver loop, which
//! starts operations, polls one ready operation at a time, and crashes gateways
//! by dropping their futures. When nothing is ready (every operation waits on a
//! back-off sleep) the driver waits; the paused tokio clock then jumps to the
//! next timer, whose waker marks its operation ready.

use std::collections::{BTreeMap, BTreeSet};
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

/// An operation in flight.
pub type OpFuture = Pin<Box<dyn Future<Output = ()>>>;

#[derive(Default)]
struct ReadyInner {
    ids: BTreeSet<u64>,
    driver: Option<Waker>,
}

/// Which slots were woken since they were last polled.
#[derive(Default)]
struct ReadySet {
    inner: Mutex<ReadyInner>,
}

impl ReadySet {
    fn lock(&self) -> MutexGuard<'_, ReadyInner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The waker handed to one slot's future: marks the slot ready and wakes the
/// driver if it is waiting.
struct SlotWaker {
    id: u64,
    ready: Arc<ReadySet>,
}

impl Wake for SlotWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let driver = {
            let mut inner = self.ready.lock();
            inner.ids.insert(self.id);
            inner.driver.take()
        };
        if let Some(driver) = driver {
            driver.wake();
        }
    }
}

struct Slot {
    gateway: usize,
    slow: bool,
    future: OpFuture,
    waker: Waker,
}

/// The in-flight operations of a run.
#[derive(Default)]
pub struct Scheduler {
    slots: BTreeMap<u64, Slot>,
    ready: Arc<ReadySet>,
    next_id: u64,
}

impl Scheduler {
    /// An empty scheduler.
    pub fn new() -> Self {
        Scheduler::default()
    }

    /// Adds an operation run by `gateway`; it is ready to be polled at once. A
    /// `slow` operation is one the driver rarely picks (see [`Scheduler::is_slow`]).
    pub fn start(&mut self, gateway: usize, slow: bool, future: OpFuture) {
        let id = self.next_id;
        self.next_id += 1;
        let waker = Waker::from(Arc::new(SlotWaker {
            id,
            ready: Arc::clone(&self.ready),
        }));
        self.slots.insert(
            id,
            Slot {
                gateway,
                slow,
                future,
                waker,
            },
        );
        self.ready.lock().ids.insert(id);
    }

    /// Operations in flight.
    pub fn in_flight(&self) -> usize {
        self.slots.len()
    }

    /// Operations in flight on `gateway`.
    pub fn in_flight_on(&self, gateway: usize) -> usize {
        self.slots.values().filter(|s| s.gateway == gateway).count()
    }

    /// The slots that can make progress, in id order (the caller picks one with
    /// the seeded generator, so the order must not depend on anything else).
    pub fn ready(&self) -> Vec<u64> {
        let inner = self.ready.lock();
        inner
            .ids
            .iter()
            .copied()
            .filter(|id| self.slots.contains_key(id))
            .collect()
    }

    /// Whether slot `id` runs a slow operation: one whose transactions stay open
    /// while many others run, which is what exposes races that need a long
    /// window.
    pub fn is_slow(&self, id: u64) -> bool {
        self.slots.get(&id).is_some_and(|s| s.slow)
    }

    /// The gateway running slot `id`.
    pub fn gateway_of(&self, id: u64) -> Option<usize> {
        self.slots.get(&id).map(|s| s.gateway)
    }

    /// Polls slot `id` once. Returns true when the operation finished.
    pub fn poll(&mut self, id: u64) -> bool {
        self.ready.lock().ids.remove(&id);
        let Some(slot) = self.slots.get_mut(&id) else {
            return false;
        };
        let mut cx = Context::from_waker(&slot.waker);
        if slot.future.as_mut().poll(&mut cx).is_ready() {
            self.slots.remove(&id);
            true
        } else {
            false
        }
    }

    /// Drops every operation of `gateway` where it stands (at a yield point or
    /// in a back-off): what a crash of that gateway does. Returns how many.
    pub fn crash(&mut self, gateway: usize) -> usize {
        let doomed: Vec<u64> = self
            .slots
            .iter()
            .filter(|(_, s)| s.gateway == gateway)
            .map(|(id, _)| *id)
            .collect();
        let mut inner = self.ready.lock();
        for id in &doomed {
            inner.ids.remove(id);
        }
        drop(inner);
        for id in &doomed {
            // Dropping the future drops its transaction, which the backend rolls back.
            self.slots.remove(id);
        }
        doomed.len()
    }

    /// Waits until some slot is ready.
    pub async fn wait_ready(&self) {
        poll_fn(|cx| {
            let mut inner = self.ready.lock();
            if inner.ids.iter().any(|id| self.slots.contains_key(id)) {
                Poll::Ready(())
            } else {
                inner.driver = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simkv::YieldPoint;
    use std::cell::RefCell;
    use std::rc::Rc;

    fn op(log: &Rc<RefCell<Vec<(u8, u8)>>>, name: u8, steps: u8) -> OpFuture {
        let log = Rc::clone(log);
        Box::pin(async move {
            for step in 0..steps {
                log.borrow_mut().push((name, step));
                YieldPoint::default().await;
            }
        })
    }

    #[test]
    fn slots_run_in_the_order_they_are_polled() {
        let log = Rc::new(RefCell::new(Vec::new()));
        let mut sched = Scheduler::new();
        sched.start(0, false, op(&log, 1, 2));
        sched.start(1, false, op(&log, 2, 2));
        assert_eq!(sched.ready(), vec![0, 1]);
        assert!(!sched.poll(1));
        assert!(!sched.poll(0));
        assert!(!sched.poll(1));
        assert!(sched.poll(1));
        assert_eq!(*log.borrow(), vec![(2, 0), (1, 0), (2, 1)]);
        assert_eq!(sched.in_flight(), 1);
        assert_eq!(sched.ready(), vec![0]);
    }

    #[test]
    fn a_crash_drops_only_that_gateways_operations() {
        let log = Rc::new(RefCell::new(Vec::new()));
        let mut sched = Scheduler::new();
        sched.start(0, false, op(&log, 1, 3));
        sched.start(1, true, op(&log, 2, 3));
        sched.start(0, false, op(&log, 3, 3));
        assert!(sched.is_slow(1));
        assert_eq!(sched.crash(0), 2);
        assert_eq!(sched.in_flight(), 1);
        assert_eq!(sched.in_flight_on(1), 1);
        assert_eq!(sched.ready(), vec![1]);
    }
}
