//! One lock per box, held while an operation on the box runs, so that operations
//! of one box that would conflict in storage (acknowledgements of its devices all
//! write the box's `low` key) run one after another in this gateway instead of
//! conflicting and retrying. With box ownership every such operation of a box
//! runs in its owner, so they never conflict in normal operation.
//!
//! Only boxes with an operation in progress have an entry; the map is cleaned
//! of released boxes as it is used, so it never holds more entries than there
//! are operations in flight (plus the ones released since the last cleanup).

use rossby_keyspace::BoxId;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use tokio::sync::OwnedMutexGuard;

/// Cleanup runs when the map has grown past this many entries since the last.
const CLEANUP_EVERY: usize = 1024;

/// Locks by box.
#[derive(Default)]
pub(crate) struct BoxLocks {
    locks: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    by_box: HashMap<BoxId, Weak<tokio::sync::Mutex<()>>>,
    cleanup_at: usize,
}

impl BoxLocks {
    /// Waits for the box's lock; the guard releases it.
    pub(crate) async fn lock(&self, box_id: BoxId) -> OwnedMutexGuard<()> {
        let lock = {
            let mut inner = self
                .locks
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if inner.by_box.len() >= inner.cleanup_at {
                inner.by_box.retain(|_, weak| weak.strong_count() > 0);
                inner.cleanup_at = inner.by_box.len() + CLEANUP_EVERY;
            }
            match inner.by_box.get(&box_id).and_then(Weak::upgrade) {
                Some(lock) => lock,
                None => {
                    let lock = Arc::new(tokio::sync::Mutex::new(()));
                    inner.by_box.insert(box_id, Arc::downgrade(&lock));
                    lock
                }
            }
        };
        lock.lock_owned().await
    }

    /// Boxes with an entry (tests).
    #[cfg(test)]
    fn entries(&self) -> usize {
        self.locks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .by_box
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rossby_keyspace::RegionId;
    use std::time::Duration;

    #[tokio::test]
    async fn one_holder_per_box_and_other_boxes_are_free() {
        let locks = Arc::new(BoxLocks::default());
        let (a, b) = (BoxId::new(RegionId(1)), BoxId::new(RegionId(1)));
        let held = locks.lock(a).await;
        // Another box is not blocked.
        let _other = tokio::time::timeout(Duration::from_secs(1), locks.lock(b))
            .await
            .expect("another box's lock is free");
        // The same box waits until the holder releases.
        let waiter = {
            let locks = locks.clone();
            tokio::spawn(async move { drop(locks.lock(a).await) })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "a second holder of one box");
        drop(held);
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("released")
            .unwrap();
    }

    #[tokio::test]
    async fn released_boxes_are_cleaned_up() {
        let locks = BoxLocks::default();
        for _ in 0..3 * CLEANUP_EVERY {
            drop(locks.lock(BoxId::new(RegionId(1))).await);
        }
        assert!(locks.entries() <= CLEANUP_EVERY + 1, "{}", locks.entries());
    }
}
