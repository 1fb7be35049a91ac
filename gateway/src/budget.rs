//! Budgets of bytes in flight: what bounds the memory one connection or one
//! device can make the gateway hold.
//!
//! A [`ByteBudget`] is a counter of reserved bytes with a limit. Request bodies
//! are reserved (at their declared length) before they are read, a reply's
//! expected size before its handler runs, and the encoded reply until the peer
//! acknowledged it or its stream was reset. Each connection has one budget; each
//! device one more, shared by all its connections (charged once the request is
//! authenticated). A [`Reservation`] gives its bytes back when dropped, so no
//! error path can leak budget.
//!
//! A reservation larger than the limit is clamped to the limit: it waits until
//! the budget is entirely free and then takes all of it. That keeps a request
//! within the frame limit always servable, one at a time, whatever the budget.

use rossby_keyspace::{BoxId, DeviceId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Notify;

/// Reserved bytes against a limit. Shared through `Arc`.
#[derive(Debug)]
pub struct ByteBudget {
    limit: usize,
    used: Mutex<usize>,
    freed: Notify,
    /// The process-wide sum of bytes reserved in budgets of this kind.
    gauge: Option<prometheus::IntGauge>,
}

fn lock(m: &Mutex<usize>) -> MutexGuard<'_, usize> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn gauge_delta(gauge: Option<&prometheus::IntGauge>, bytes: usize, add: bool) {
    if let Some(g) = gauge {
        let v = i64::try_from(bytes).unwrap_or(i64::MAX);
        if add { g.add(v) } else { g.sub(v) }
    }
}

impl ByteBudget {
    /// A budget of `limit` bytes (at least 1), adding its reservations to `gauge`.
    pub fn new(limit: usize, gauge: Option<prometheus::IntGauge>) -> Arc<ByteBudget> {
        Arc::new(ByteBudget {
            limit: limit.max(1),
            used: Mutex::new(0),
            freed: Notify::new(),
            gauge,
        })
    }

    /// The limit in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes reserved now.
    pub fn used(&self) -> usize {
        *lock(&self.used)
    }

    /// Takes `bytes` more if they fit; never waits.
    fn take(&self, bytes: usize) -> bool {
        let mut used = lock(&self.used);
        if *used + bytes > self.limit {
            return false;
        }
        *used += bytes;
        drop(used);
        gauge_delta(self.gauge.as_ref(), bytes, true);
        true
    }

    fn give_back(&self, bytes: usize) {
        if bytes == 0 {
            return;
        }
        let mut used = lock(&self.used);
        *used = used.saturating_sub(bytes);
        drop(used);
        gauge_delta(self.gauge.as_ref(), bytes, false);
        self.freed.notify_waiters();
    }

    /// Reserves `bytes` (clamped to the limit) if they fit now.
    pub fn try_reserve(self: &Arc<Self>, bytes: usize) -> Option<Reservation> {
        let bytes = bytes.min(self.limit);
        self.take(bytes).then(|| Reservation {
            budget: self.clone(),
            bytes,
        })
    }

    /// Reserves `bytes` (clamped to the limit), waiting at most `wait` for other
    /// reservations to be given back. `None` when the wait ran out.
    pub async fn reserve(self: &Arc<Self>, bytes: usize, wait: Duration) -> Option<Reservation> {
        let bytes = bytes.min(self.limit);
        let attempt = async {
            loop {
                let freed = self.freed.notified();
                let mut freed = std::pin::pin!(freed);
                // Registered before the check, so a release in between wakes us.
                freed.as_mut().enable();
                if self.take(bytes) {
                    return Reservation {
                        budget: self.clone(),
                        bytes,
                    };
                }
                freed.await;
            }
        };
        tokio::time::timeout(wait, attempt).await.ok()
    }
}

/// Bytes held in a [`ByteBudget`] until dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<ByteBudget>,
    bytes: usize,
}

impl Reservation {
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Changes the held bytes to `bytes` (clamped to the limit): gives back the
    /// excess at once, or waits at most `wait` for the difference. On `false`
    /// the reservation is unchanged.
    pub async fn resize(&mut self, bytes: usize, wait: Duration) -> bool {
        let bytes = bytes.min(self.budget.limit);
        if bytes <= self.bytes {
            self.budget.give_back(self.bytes - bytes);
            self.bytes = bytes;
            return true;
        }
        match self.budget.reserve(bytes - self.bytes, wait).await {
            Some(mut more) => {
                self.bytes += more.bytes;
                more.bytes = 0;
                true
            }
            None => false,
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.give_back(self.bytes);
    }
}

/// A request's claim on its device's budget: the reply's expected size, taken
/// once the request is authenticated (before that the device is unknown) and
/// held until the reply is acknowledged or abandoned.
#[derive(Debug, Default)]
pub struct ReplySlot {
    estimate: usize,
    device: Mutex<Option<Reservation>>,
}

impl ReplySlot {
    /// A slot for a reply expected to take `estimate` bytes.
    pub fn new(estimate: usize) -> ReplySlot {
        ReplySlot {
            estimate,
            device: Mutex::new(None),
        }
    }

    /// The reply's expected size in bytes.
    pub fn estimate(&self) -> usize {
        self.estimate
    }

    /// Holds the device's reservation.
    pub fn put(&self, reservation: Reservation) {
        *self
            .device
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(reservation);
    }

    /// The device's reservation, if one was taken.
    pub fn take(&self) -> Option<Reservation> {
        self.device
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }
}

/// Budgets sized past this many entries are swept of unused ones.
const SWEEP_FLOOR: usize = 1024;

/// One budget per device, created on first use and forgotten once no
/// reservation holds it (so memory follows the devices with requests in flight).
#[derive(Debug)]
pub struct DeviceBudgets {
    limit: usize,
    gauge: Option<prometheus::IntGauge>,
    inner: Mutex<DeviceMap>,
}

#[derive(Debug, Default)]
struct DeviceMap {
    budgets: HashMap<(BoxId, DeviceId), Arc<ByteBudget>>,
    /// Entries after the last sweep: the next sweep runs when this doubled.
    swept_at: usize,
}

impl DeviceBudgets {
    /// Budgets of `limit` bytes per device.
    pub fn new(limit: usize, gauge: Option<prometheus::IntGauge>) -> DeviceBudgets {
        DeviceBudgets {
            limit,
            gauge,
            inner: Mutex::new(DeviceMap::default()),
        }
    }

    /// The limit per device in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Reserves `bytes` of the device's budget if they fit now.
    pub fn try_reserve(
        &self,
        box_id: BoxId,
        device: DeviceId,
        bytes: usize,
    ) -> Option<Reservation> {
        let budget = {
            let mut map = self
                .inner
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if map.budgets.len() >= SWEEP_FLOOR.max(map.swept_at * 2) {
                // Only the map holds an unused budget; a reservation holds another
                // reference to its budget.
                map.budgets.retain(|_, b| Arc::strong_count(b) > 1);
                map.swept_at = map.budgets.len();
            }
            map.budgets
                .entry((box_id, device))
                .or_insert_with(|| ByteBudget::new(self.limit, self.gauge.clone()))
                .clone()
        };
        budget.try_reserve(bytes)
    }

    /// Devices with a budget in memory (for tests).
    pub fn tracked(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .budgets
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rossby_keyspace::RegionId;

    #[test]
    fn reservations_are_bounded_and_given_back_on_drop() {
        let gauge = prometheus::IntGauge::new("t", "t").unwrap();
        let budget = ByteBudget::new(100, Some(gauge.clone()));
        let a = budget.try_reserve(60).unwrap();
        assert!(budget.try_reserve(41).is_none(), "over the limit");
        let b = budget.try_reserve(40).unwrap();
        assert_eq!((budget.used(), gauge.get()), (100, 100));
        drop(a);
        assert_eq!((budget.used(), gauge.get()), (40, 40));
        drop(b);
        assert_eq!((budget.used(), gauge.get()), (0, 0));
    }

    #[test]
    fn a_reservation_beyond_the_limit_takes_the_whole_budget() {
        let budget = ByteBudget::new(100, None);
        let all = budget.try_reserve(1_000_000).unwrap();
        assert_eq!(all.bytes(), 100);
        assert!(budget.try_reserve(1).is_none());
        drop(all);
        assert_eq!(budget.used(), 0);
    }

    #[tokio::test]
    async fn waiters_get_budget_when_it_is_given_back_or_time_out() {
        let budget = ByteBudget::new(100, None);
        let held = budget.try_reserve(80).unwrap();
        assert!(
            budget
                .reserve(30, Duration::from_millis(20))
                .await
                .is_none(),
            "no budget came back in time"
        );
        let waiter = {
            let budget = budget.clone();
            tokio::spawn(async move { budget.reserve(30, Duration::from_secs(5)).await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        drop(held);
        let got = waiter.await.unwrap().unwrap();
        assert_eq!((got.bytes(), budget.used()), (30, 30));
    }

    #[tokio::test]
    async fn resizing_gives_back_or_takes_more() {
        let budget = ByteBudget::new(100, None);
        let mut r = budget.try_reserve(50).unwrap();
        assert!(r.resize(10, Duration::ZERO).await);
        assert_eq!(budget.used(), 10);
        let other = budget.try_reserve(80).unwrap();
        assert!(!r.resize(30, Duration::from_millis(10)).await);
        assert_eq!((r.bytes(), budget.used()), (10, 90));
        drop(other);
        assert!(r.resize(30, Duration::ZERO).await);
        assert_eq!((r.bytes(), budget.used()), (30, 30));
        drop(r);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn device_budgets_are_per_device_and_forgotten_when_unused() {
        let budgets = DeviceBudgets::new(100, None);
        let b = BoxId::new(RegionId(1));
        let (d1, d2) = (DeviceId::new(), DeviceId::new());
        let r1 = budgets.try_reserve(b, d1, 100).unwrap();
        assert!(budgets.try_reserve(b, d1, 1).is_none());
        assert!(budgets.try_reserve(b, d2, 100).is_some());
        drop(r1);
        assert!(budgets.try_reserve(b, d1, 100).is_some());
        // Many devices, none holding budget: the map is swept as it grows.
        for _ in 0..(3 * SWEEP_FLOOR) {
            let _ = budgets.try_reserve(b, DeviceId::new(), 1);
        }
        assert!(
            budgets.tracked() <= 2 * SWEEP_FLOOR,
            "{}",
            budgets.tracked()
        );
    }
}
