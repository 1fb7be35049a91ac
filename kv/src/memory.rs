//! In-memory MVCC backend with TiKV's optimistic (percolator) semantics.
//!
//! Every committed write becomes a version of its key stamped with a commit
//! timestamp from a monotonic oracle. A transaction reads the newest version whose
//! commit timestamp is not after its start timestamp, buffers its own writes, and
//! at commit fails with [`Error::Conflict`] when any key it writes or locked (via
//! [`Transaction::get_for_update`]) got a newer committed write since it began.
//! Only write-write conflicts are detected, exactly like TiKV in optimistic mode, so
//! write skew is possible: domain code that runs its tests here therefore runs
//! under the weakest isolation any production backend offers.
//!
//! All state sits behind one mutex. Nothing awaits while holding it, each
//! operation is short, and a single lock makes the commit's check-then-apply
//! trivially atomic — which is the whole point of a reference backend.
//!
//! Old versions are garbage-collected as soon as no running transaction (and no
//! future one) can see them, so the store does not grow under overwrites and
//! deletes.

use crate::overlay::{Pending, bounds, escape, merge};
use crate::{Error, Result};
use crate::{Key, KeyRange, KvPair, KvStore, ScanOrder, Transaction, Value};
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// An in-memory transactional store with snapshot isolation (nothing survives the
/// process). Used by tests, benchmarks and single-process development setups.
pub struct MemoryStore {
    shared: Arc<Mutex<Inner>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        MemoryStore {
            shared: Arc::new(Mutex::new(Inner::default())),
        }
    }

    /// Number of stored versions plus stored keys: what garbage collection keeps
    /// bounded. Only tests look at it.
    #[cfg(test)]
    fn footprint(&self) -> (usize, usize) {
        let inner = lock(&self.shared);
        let versions = inner.data.values().map(|entry| entry.versions.len()).sum();
        (inner.data.len(), versions)
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new()
    }
}

impl fmt::Debug for MemoryStore {
    // Values may be large and private; the key count is all a log line needs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = lock(&self.shared);
        f.debug_struct("MemoryStore")
            .field("keys", &inner.data.len())
            .field("last_ts", &inner.last_ts)
            .field("active_txns", &inner.active.values().sum::<usize>())
            .finish()
    }
}

#[async_trait]
impl KvStore for MemoryStore {
    fn backend(&self) -> &'static str {
        "memory"
    }

    async fn begin(&self) -> Result<Box<dyn Transaction>> {
        let mut inner = lock(&self.shared);
        // Every commit so far has commit_ts <= last_ts, so a snapshot at last_ts
        // sees all of them and none that commit later (those get a larger ts).
        let start_ts = inner.last_ts;
        *inner.active.entry(start_ts).or_insert(0) += 1;
        drop(inner);
        Ok(Box::new(MemoryTransaction {
            shared: Arc::clone(&self.shared),
            start_ts,
            registered: true,
            pending: Pending::default(),
        }))
    }
}

/// Locks the shared state. A poisoned mutex is recovered rather than propagated:
/// no code path can panic between two mutations that must happen together (the
/// commit checks every conflict before it mutates anything), so the state behind
/// a poisoned lock is still consistent, and `Drop` has no way to report an error.
fn lock(shared: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One committed version of a key: a value, or `None` for a deletion (tombstone).
#[derive(Clone, Debug)]
struct Version {
    commit_ts: u64,
    value: Option<Value>,
}

/// Everything stored for one key.
#[derive(Debug, Default)]
struct Entry {
    /// Committed versions, oldest first. May be empty when the key was only locked.
    versions: Vec<Version>,
    /// Commit timestamp of the newest write of any kind, including a lock taken by
    /// `get_for_update` that wrote no version: TiKV records such locks in its write
    /// column too, so they also make concurrent writers of the key conflict.
    latest_ts: u64,
}

impl Entry {
    /// The value a snapshot at `start_ts` sees.
    fn visible(&self, start_ts: u64) -> Option<&Value> {
        self.versions
            .iter()
            .rev()
            .find(|version| version.commit_ts <= start_ts)
            .and_then(|version| version.value.as_ref())
    }

    /// Drops every version no running transaction can see. Version `i` is visible
    /// exactly to snapshots in `[commit_ts(i), commit_ts(i + 1))`; the newest one is
    /// always kept because every future snapshot sees it (and because its timestamp
    /// is what conflict detection compares against).
    fn prune(&mut self, active: &BTreeMap<u64, usize>) {
        if self.versions.len() <= 1 {
            return;
        }
        // Windows see each version with its successor; the newest has none.
        let keep: Vec<bool> = self
            .versions
            .windows(2)
            .map(|pair| {
                active
                    .range(pair[0].commit_ts..pair[1].commit_ts)
                    .next()
                    .is_some()
            })
            .chain(std::iter::once(true))
            .collect();
        let mut keep = keep.into_iter();
        self.versions.retain(|_| keep.next().unwrap_or(true));
    }

    /// True when the entry can be removed without changing any read or conflict
    /// check: nothing but a tombstone (or a bare lock) is left, and no running
    /// transaction started before that last write, so none could conflict with it.
    fn is_removable(&self, active: &BTreeMap<u64, usize>) -> bool {
        let only_tombstone = match self.versions.as_slice() {
            [] => true,
            [version] => version.value.is_none(),
            _ => false,
        };
        only_tombstone && active.range(..self.latest_ts).next().is_none()
    }

    /// True while the entry still holds something garbage collection may later
    /// drop (old versions, a tombstone, or a bare lock).
    fn has_garbage(&self) -> bool {
        match self.versions.as_slice() {
            [] => true,
            [version] => version.value.is_none(),
            _ => true,
        }
    }
}

/// The shared state behind the mutex.
#[derive(Debug, Default)]
struct Inner {
    /// The timestamp oracle: the commit timestamp of the most recent commit.
    last_ts: u64,
    /// Start timestamps of running transactions, with how many share each one.
    active: BTreeMap<u64, usize>,
    /// Every key with its versions.
    data: BTreeMap<Key, Entry>,
    /// Keys that still hold garbage, by the `latest_ts` they had when queued: once
    /// no running transaction started before that timestamp, the key can be reduced
    /// to its newest version (or removed). Keeps collection proportional to writes
    /// instead of sweeping the whole map.
    gc_queue: BTreeMap<u64, Vec<Key>>,
}

impl Inner {
    /// Prunes one key and removes or queues it as needed.
    fn collect_key(&mut self, key: &[u8]) {
        let Some(entry) = self.data.get_mut(key) else {
            return;
        };
        entry.prune(&self.active);
        if entry.is_removable(&self.active) {
            self.data.remove(key);
        } else if entry.has_garbage() {
            let latest_ts = entry.latest_ts;
            self.gc_queue
                .entry(latest_ts)
                .or_default()
                .push(key.to_vec());
        }
    }

    /// Collects every queued key whose garbage became invisible to all running
    /// transactions. Called whenever the oldest running snapshot may have moved.
    fn collect_queued(&mut self) {
        // Queued keys with latest_ts <= the oldest running snapshot are fully
        // collectable; with no running transaction, all of them are.
        let horizon = self.active.keys().next().copied().unwrap_or(u64::MAX);
        while let Some(entry) = self.gc_queue.first_entry() {
            if *entry.key() > horizon {
                break;
            }
            for key in entry.remove() {
                // Collecting a key that was overwritten since it was queued is
                // harmless: pruning is idempotent.
                self.collect_key(&key);
            }
        }
    }

    /// Removes one registration of `start_ts` from the running set, without
    /// collecting (the commit collects after applying its writes).
    fn leave(&mut self, start_ts: u64) {
        if let Some(count) = self.active.get_mut(&start_ts) {
            *count -= 1;
            if *count == 0 {
                self.active.remove(&start_ts);
            }
        }
    }

    /// Removes one registration of `start_ts` and collects what it kept alive.
    fn unregister(&mut self, start_ts: u64) {
        self.leave(start_ts);
        self.collect_queued();
    }
}

/// A transaction on a [`MemoryStore`]. Writes are buffered until commit.
struct MemoryTransaction {
    shared: Arc<Mutex<Inner>>,
    start_ts: u64,
    /// False once the transaction left the running set (on commit, rollback or drop).
    registered: bool,
    /// Buffered writes and locks.
    pending: Pending,
}

impl MemoryTransaction {
    /// What this transaction sees under `key`: its own pending write if any, else
    /// the snapshot. The caller holds the lock.
    fn read(&self, inner: &Inner, key: &[u8]) -> Option<Value> {
        match self.pending.writes.get(key) {
            Some(pending) => pending.clone(),
            None => inner
                .data
                .get(key)
                .and_then(|entry| entry.visible(self.start_ts))
                .cloned(),
        }
    }

    fn finish(&mut self, inner: &mut Inner) {
        if self.registered {
            self.registered = false;
            inner.unregister(self.start_ts);
        }
    }
}

impl Drop for MemoryTransaction {
    // A transaction dropped without commit or rollback (a cancelled request) must
    // leave the running set, or garbage collection would keep its snapshot alive
    // forever.
    fn drop(&mut self) {
        if self.registered {
            let shared = Arc::clone(&self.shared);
            let mut inner = lock(&shared);
            self.finish(&mut inner);
        }
    }
}

#[async_trait]
impl Transaction for MemoryTransaction {
    async fn get(&mut self, key: &[u8]) -> Result<Option<Value>> {
        let inner = lock(&self.shared);
        Ok(self.read(&inner, key))
    }

    async fn batch_get(&mut self, keys: &[Key]) -> Result<Vec<Option<Value>>> {
        // One lock for the whole batch, so the reads cannot interleave with GC.
        let inner = lock(&self.shared);
        Ok(keys.iter().map(|key| self.read(&inner, key)).collect())
    }

    async fn scan(
        &mut self,
        range: &KeyRange,
        limit: usize,
        order: ScanOrder,
    ) -> Result<Vec<KvPair>> {
        // BTreeMap::range panics on an inverted range; an empty one has no keys.
        if range.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        let inner = lock(&self.shared);
        let start_ts = self.start_ts;
        let committed = inner
            .data
            .range::<[u8], _>(bounds(range))
            .filter_map(move |(key, entry)| entry.visible(start_ts).map(|value| (key, value)));
        let pending = self.pending.writes.range::<[u8], _>(bounds(range));
        let merged = match order {
            ScanOrder::Forward => merge(committed.map(Ok), pending, order, limit),
            ScanOrder::Reverse => merge(committed.rev().map(Ok), pending.rev(), order, limit),
        };
        Ok(merged.unwrap_or_else(|never: std::convert::Infallible| match never {}))
    }

    async fn get_for_update(&mut self, key: &[u8]) -> Result<Option<Value>> {
        // Like TiKV's optimistic get_for_update: lock_keys + get. The lock only
        // matters at commit, where the key is conflict-checked like a write.
        self.pending.lock(key);
        let inner = lock(&self.shared);
        Ok(self.read(&inner, key))
    }

    async fn put(&mut self, key: Key, value: Value) -> Result<()> {
        self.pending.put(key, value)
    }

    async fn delete(&mut self, key: Key) -> Result<()> {
        self.pending.delete(key);
        Ok(())
    }

    async fn commit(mut self: Box<Self>) -> Result<()> {
        let shared = Arc::clone(&self.shared);
        let mut inner = lock(&shared);

        // A read-only transaction saw a consistent snapshot; there is nothing to
        // check or write.
        if self.pending.is_empty() {
            self.finish(&mut inner);
            return Ok(());
        }

        // Check every key before mutating anything, so a conflict leaves no trace.
        // The message names the key, never a value.
        let conflict = self.pending.conflict_keys().find_map(|key| {
            let entry = inner.data.get(key.as_slice())?;
            (entry.latest_ts > self.start_ts).then(|| {
                format!(
                    "key {} was written at ts {} after this transaction began at ts {}",
                    escape(key),
                    entry.latest_ts,
                    self.start_ts
                )
            })
        });
        if let Some(message) = conflict {
            self.finish(&mut inner);
            return Err(Error::Conflict(message));
        }

        let Some(commit_ts) = inner.last_ts.checked_add(1) else {
            self.finish(&mut inner);
            return Err(Error::Unavailable(
                "memory store timestamps exhausted".into(),
            ));
        };
        inner.last_ts = commit_ts;
        // Leave the running set first: this snapshot no longer needs old versions.
        self.registered = false;
        inner.leave(self.start_ts);

        let Pending { writes, locked } = std::mem::take(&mut self.pending);
        for key in locked {
            if writes.contains_key(&key) {
                continue;
            }
            let entry = inner.data.entry(key.clone()).or_default();
            entry.latest_ts = commit_ts;
            inner.collect_key(&key);
        }
        for (key, value) in writes {
            let entry = inner.data.entry(key.clone()).or_default();
            entry.versions.push(Version { commit_ts, value });
            entry.latest_ts = commit_ts;
            inner.collect_key(&key);
        }
        inner.collect_queued();
        Ok(())
    }

    async fn rollback(mut self: Box<Self>) -> Result<()> {
        // Writes were only buffered; dropping them is the whole rollback.
        let shared = Arc::clone(&self.shared);
        let mut inner = lock(&shared);
        self.finish(&mut inner);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MAX_VALUE_BYTES;

    fn store() -> MemoryStore {
        MemoryStore::new()
    }

    async fn put(kv: &MemoryStore, key: &[u8], value: &[u8]) {
        let mut txn = kv.begin().await.unwrap();
        txn.put(key.to_vec(), value.to_vec()).await.unwrap();
        txn.commit().await.unwrap();
    }

    async fn delete(kv: &MemoryStore, key: &[u8]) {
        let mut txn = kv.begin().await.unwrap();
        txn.delete(key.to_vec()).await.unwrap();
        txn.commit().await.unwrap();
    }

    async fn read(kv: &MemoryStore, key: &[u8]) -> Option<Value> {
        let mut txn = kv.begin().await.unwrap();
        let value = txn.get(key).await.unwrap();
        txn.rollback().await.unwrap();
        value
    }

    fn keys(pairs: &[KvPair]) -> Vec<&[u8]> {
        pairs.iter().map(|(k, _)| k.as_slice()).collect()
    }

    #[tokio::test]
    async fn backend_name_is_memory() {
        assert_eq!(store().backend(), "memory");
    }

    #[tokio::test]
    async fn snapshot_does_not_see_later_commits_or_deletes() {
        let kv = store();
        put(&kv, b"a", b"1").await;
        let mut old = kv.begin().await.unwrap();
        put(&kv, b"a", b"2").await;
        put(&kv, b"b", b"x").await;
        delete(&kv, b"a").await;
        assert_eq!(old.get(b"a").await.unwrap(), Some(b"1".to_vec()));
        assert_eq!(old.get(b"b").await.unwrap(), None);
        let all = old
            .scan(&KeyRange::prefix(b""), 10, ScanOrder::Forward)
            .await
            .unwrap();
        assert_eq!(all, vec![(b"a".to_vec(), b"1".to_vec())]);
        old.rollback().await.unwrap();
        assert_eq!(read(&kv, b"a").await, None);
        assert_eq!(read(&kv, b"b").await, Some(b"x".to_vec()));
    }

    #[tokio::test]
    async fn own_writes_shadow_the_snapshot_in_scans_both_ways() {
        let kv = store();
        for k in [b"a", b"c", b"e", b"g"] {
            put(&kv, k, b"old").await;
        }
        let mut txn = kv.begin().await.unwrap();
        txn.put(b"b".to_vec(), b"new".to_vec()).await.unwrap();
        txn.put(b"c".to_vec(), b"new".to_vec()).await.unwrap();
        txn.delete(b"e".to_vec()).await.unwrap();
        txn.delete(b"z".to_vec()).await.unwrap();
        let range = KeyRange::new(b"a".to_vec(), b"g".to_vec());
        let fwd = txn.scan(&range, 10, ScanOrder::Forward).await.unwrap();
        assert_eq!(
            fwd,
            vec![
                (b"a".to_vec(), b"old".to_vec()),
                (b"b".to_vec(), b"new".to_vec()),
                (b"c".to_vec(), b"new".to_vec()),
            ]
        );
        let rev = txn.scan(&range, 10, ScanOrder::Reverse).await.unwrap();
        assert_eq!(keys(&rev), vec![b"c" as &[u8], b"b", b"a"]);
        assert_eq!(rev[0].1, b"new");
        // The limit counts merged results, not raw entries: the deleted "e" does
        // not use up a slot.
        let rev2 = txn
            .scan(&KeyRange::prefix(b""), 2, ScanOrder::Reverse)
            .await
            .unwrap();
        assert_eq!(keys(&rev2), vec![b"g" as &[u8], b"c"]);
        let fwd2 = txn
            .scan(
                &KeyRange::new(b"c".to_vec(), b"h".to_vec()),
                2,
                ScanOrder::Forward,
            )
            .await
            .unwrap();
        assert_eq!(keys(&fwd2), vec![b"c" as &[u8], b"g"]);
        assert_eq!(txn.get(b"e").await.unwrap(), None);
        assert_eq!(
            txn.batch_get(&[b"a".to_vec(), b"e".to_vec(), b"b".to_vec(), b"q".to_vec()])
                .await
                .unwrap(),
            vec![Some(b"old".to_vec()), None, Some(b"new".to_vec()), None]
        );
        txn.commit().await.unwrap();
        assert_eq!(read(&kv, b"e").await, None);
        assert_eq!(read(&kv, b"c").await, Some(b"new".to_vec()));
    }

    #[tokio::test]
    async fn inverted_empty_and_zero_limit_scans_return_nothing() {
        let kv = store();
        put(&kv, b"m", b"1").await;
        let mut txn = kv.begin().await.unwrap();
        for order in [ScanOrder::Forward, ScanOrder::Reverse] {
            let inverted = KeyRange::new(b"z".to_vec(), b"a".to_vec());
            assert!(txn.scan(&inverted, 10, order).await.unwrap().is_empty());
            let empty = KeyRange::new(b"m".to_vec(), b"m".to_vec());
            assert!(txn.scan(&empty, 10, order).await.unwrap().is_empty());
            let all = KeyRange::prefix(b"");
            assert!(txn.scan(&all, 0, order).await.unwrap().is_empty());
            assert_eq!(txn.scan(&all, 5, order).await.unwrap().len(), 1);
        }
        txn.rollback().await.unwrap();
    }

    #[tokio::test]
    async fn write_write_conflict_fails_the_second_committer_without_writing() {
        let kv = store();
        let mut a = kv.begin().await.unwrap();
        let mut b = kv.begin().await.unwrap();
        a.put(b"k".to_vec(), b"a".to_vec()).await.unwrap();
        b.put(b"k".to_vec(), b"secret".to_vec()).await.unwrap();
        b.put(b"other".to_vec(), b"secret".to_vec()).await.unwrap();
        a.commit().await.unwrap();
        let err = b.commit().await.unwrap_err();
        assert!(matches!(err, Error::Conflict(_)), "{err}");
        assert!(!err.to_string().contains("secret"));
        assert_eq!(read(&kv, b"k").await, Some(b"a".to_vec()));
        assert_eq!(read(&kv, b"other").await, None);
    }

    #[tokio::test]
    async fn deletes_conflict_too_even_of_missing_keys() {
        let kv = store();
        let mut a = kv.begin().await.unwrap();
        let mut b = kv.begin().await.unwrap();
        a.delete(b"ghost".to_vec()).await.unwrap();
        b.put(b"ghost".to_vec(), b"b".to_vec()).await.unwrap();
        a.commit().await.unwrap();
        assert!(matches!(b.commit().await, Err(Error::Conflict(_))));
    }

    #[tokio::test]
    async fn write_skew_is_allowed() {
        let kv = store();
        put(&kv, b"x", b"0").await;
        put(&kv, b"y", b"0").await;
        let mut a = kv.begin().await.unwrap();
        let mut b = kv.begin().await.unwrap();
        for txn in [&mut a, &mut b] {
            txn.get(b"x").await.unwrap();
            txn.get(b"y").await.unwrap();
        }
        a.put(b"x".to_vec(), b"1".to_vec()).await.unwrap();
        b.put(b"y".to_vec(), b"1".to_vec()).await.unwrap();
        a.commit().await.unwrap();
        b.commit().await.unwrap();
    }

    #[tokio::test]
    async fn get_for_update_conflicts_in_both_orders() {
        let kv = store();
        put(&kv, b"k", b"0").await;
        // The locker commits last: it fails.
        let mut locker = kv.begin().await.unwrap();
        assert_eq!(
            locker.get_for_update(b"k").await.unwrap(),
            Some(b"0".to_vec())
        );
        locker
            .put(b"elsewhere".to_vec(), b"1".to_vec())
            .await
            .unwrap();
        put(&kv, b"k", b"1").await;
        assert!(matches!(locker.commit().await, Err(Error::Conflict(_))));
        assert_eq!(read(&kv, b"elsewhere").await, None);

        // The locker commits first: its lock is a write record, so the writer that
        // began before it fails, as on TiKV.
        let mut writer = kv.begin().await.unwrap();
        let mut locker = kv.begin().await.unwrap();
        locker.get_for_update(b"k").await.unwrap();
        locker.commit().await.unwrap();
        writer.put(b"k".to_vec(), b"2".to_vec()).await.unwrap();
        assert!(matches!(writer.commit().await, Err(Error::Conflict(_))));
        // The lock wrote no value.
        assert_eq!(read(&kv, b"k").await, Some(b"1".to_vec()));
    }

    #[tokio::test]
    async fn get_for_update_sees_own_pending_write() {
        let kv = store();
        let mut txn = kv.begin().await.unwrap();
        txn.put(b"k".to_vec(), b"mine".to_vec()).await.unwrap();
        assert_eq!(
            txn.get_for_update(b"k").await.unwrap(),
            Some(b"mine".to_vec())
        );
        txn.commit().await.unwrap();
        assert_eq!(read(&kv, b"k").await, Some(b"mine".to_vec()));
    }

    #[tokio::test]
    async fn read_only_transactions_always_commit() {
        let kv = store();
        let mut reader = kv.begin().await.unwrap();
        reader.get(b"k").await.unwrap();
        put(&kv, b"k", b"1").await;
        reader.get(b"k").await.unwrap();
        reader.commit().await.unwrap();
    }

    #[tokio::test]
    async fn rollback_and_drop_discard_writes_and_unregister() {
        let kv = store();
        let mut txn = kv.begin().await.unwrap();
        txn.put(b"k".to_vec(), b"rolled back".to_vec())
            .await
            .unwrap();
        txn.rollback().await.unwrap();
        {
            let mut txn = kv.begin().await.unwrap();
            txn.put(b"k".to_vec(), b"dropped".to_vec()).await.unwrap();
        }
        assert_eq!(read(&kv, b"k").await, None);
        assert!(lock(&kv.shared).active.is_empty());
        put(&kv, b"k", b"later").await;
        assert_eq!(read(&kv, b"k").await, Some(b"later".to_vec()));
    }

    #[tokio::test]
    async fn oversized_values_are_rejected_at_put() {
        let kv = store();
        let mut txn = kv.begin().await.unwrap();
        let err = txn
            .put(b"big".to_vec(), vec![0; MAX_VALUE_BYTES + 1])
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Invalid(_)));
        txn.put(b"ok".to_vec(), vec![0; MAX_VALUE_BYTES])
            .await
            .unwrap();
        txn.commit().await.unwrap();
        assert_eq!(read(&kv, b"big").await, None);
        assert_eq!(
            read(&kv, b"ok").await.map(|v| v.len()),
            Some(MAX_VALUE_BYTES)
        );
    }

    #[tokio::test]
    async fn overwrites_and_deletes_without_readers_keep_one_version() {
        let kv = store();
        for i in 0..1_000u32 {
            put(&kv, b"hot", &i.to_be_bytes()).await;
        }
        assert_eq!(kv.footprint(), (1, 1));
        for i in 0..1_000u32 {
            let key = i.to_be_bytes();
            put(&kv, &key, b"v").await;
            put(&kv, &key, b"w").await;
            delete(&kv, &key).await;
        }
        // Only "hot" survives; every deleted key is gone entirely.
        assert_eq!(kv.footprint(), (1, 1));
        assert_eq!(read(&kv, b"hot").await, Some(999u32.to_be_bytes().to_vec()));
        let inner = lock(&kv.shared);
        assert!(inner.gc_queue.is_empty());
        assert!(inner.active.is_empty());
    }

    #[tokio::test]
    async fn an_open_snapshot_keeps_only_the_version_it_needs() {
        let kv = store();
        put(&kv, b"k", b"seen").await;
        let mut old = kv.begin().await.unwrap();
        for i in 0..100u32 {
            put(&kv, b"k", &i.to_be_bytes()).await;
        }
        // The old snapshot's version and the newest one; nothing in between.
        assert_eq!(kv.footprint(), (1, 2));
        assert_eq!(old.get(b"k").await.unwrap(), Some(b"seen".to_vec()));
        delete(&kv, b"k").await;
        assert_eq!(old.get(b"k").await.unwrap(), Some(b"seen".to_vec()));
        // The tombstone stays while the old transaction could still conflict on it.
        old.put(b"k".to_vec(), b"late".to_vec()).await.unwrap();
        assert!(matches!(old.commit().await, Err(Error::Conflict(_))));
        // Dropping the failed transaction released its snapshot: all gone.
        assert_eq!(kv.footprint(), (0, 0));
    }

    #[tokio::test]
    async fn a_bare_lock_is_collected_once_no_older_snapshot_runs() {
        let kv = store();
        let mut old = kv.begin().await.unwrap();
        let mut locker = kv.begin().await.unwrap();
        locker.get_for_update(b"k").await.unwrap();
        locker.commit().await.unwrap();
        // Still needed: "old" began before the lock and must conflict on it.
        assert_eq!(kv.footprint(), (1, 0));
        assert_eq!(old.get(b"k").await.unwrap(), None);
        old.rollback().await.unwrap();
        assert_eq!(kv.footprint(), (0, 0));
    }

    #[tokio::test]
    async fn dropped_transaction_releases_versions() {
        let kv = store();
        put(&kv, b"k", b"0").await;
        let reader = kv.begin().await.unwrap();
        put(&kv, b"k", b"1").await;
        put(&kv, b"k", b"2").await;
        assert_eq!(kv.footprint(), (1, 2));
        drop(reader);
        assert_eq!(kv.footprint(), (1, 1));
        assert_eq!(read(&kv, b"k").await, Some(b"2".to_vec()));
    }

    #[tokio::test]
    async fn concurrent_snapshots_at_distinct_timestamps_each_keep_their_version() {
        let kv = store();
        let mut snapshots = Vec::new();
        for i in 0..5u8 {
            put(&kv, b"k", &[i]).await;
            snapshots.push(kv.begin().await.unwrap());
            put(&kv, b"k", b"between").await;
            put(&kv, b"k", b"between again").await;
        }
        for (i, txn) in snapshots.iter_mut().enumerate() {
            assert_eq!(txn.get(b"k").await.unwrap(), Some(vec![i as u8]));
        }
        // Five snapshot versions plus the newest.
        assert_eq!(kv.footprint(), (1, 6));
        // Releasing the oldest snapshot does not disturb the others.
        let first = snapshots.remove(0);
        drop(first);
        for (i, txn) in snapshots.iter_mut().enumerate() {
            assert_eq!(txn.get(b"k").await.unwrap(), Some(vec![i as u8 + 1]));
        }
        drop(snapshots);
        // A new write prunes the rest.
        put(&kv, b"k", b"last").await;
        assert_eq!(kv.footprint(), (1, 1));
    }

    #[tokio::test]
    async fn poisoned_lock_is_recovered() {
        let kv = store();
        put(&kv, b"k", b"v").await;
        let shared = Arc::clone(&kv.shared);
        let _ = std::thread::spawn(move || {
            let _guard = shared.lock();
            panic!("poison the store's mutex");
        })
        .join();
        assert!(kv.shared.is_poisoned());
        assert_eq!(read(&kv, b"k").await, Some(b"v".to_vec()));
        put(&kv, b"k", b"w").await;
        assert_eq!(read(&kv, b"k").await, Some(b"w".to_vec()));
    }
}
