//! A store confined to the keys under one fixed prefix.
//!
//! [`Namespaced`] wraps any [`Kv`] and prefixes every key it is given, so code
//! written against absolute keys (the domain tables, whose region-wide keys —
//! expiry index, leases, outbox, purge markers — are shared by every box) can
//! share one physical store with other users of it without either seeing the
//! other's data. That is what it is for: isolating concurrently running tests on
//! a shared TiKV cluster (each test under a random prefix), or tenants on one
//! cluster.
//!
//! Inside the namespace everything behaves as on the wrapped store: the same
//! snapshots, conflicts and errors, scans in the same order with the same limits.
//! A scan's range is mapped into the namespace (an unbounded end becomes the end
//! of the namespace), and the keys it returns come back without the prefix.
//!
//! Two namespaces are disjoint as long as neither prefix is a prefix of the
//! other; prefixes of one fixed length (random ones, say) always are.

use crate::{
    CommitDone, Error, Key, KeyRange, Kv, KvPair, KvStore, Result, RetryPolicy, ScanOrder,
    Transaction, Value, prefix_end, transact,
};
use async_trait::async_trait;
use std::fmt;
use std::sync::Arc;

/// A [`KvStore`] that stores every key under a fixed prefix of a wrapped store.
/// See the [module documentation](self).
#[derive(Clone)]
pub struct Namespaced {
    inner: Kv,
    prefix: Arc<[u8]>,
}

impl Namespaced {
    /// The keys of `inner` that start with `prefix`, seen as a store of their own.
    pub fn new(inner: Kv, prefix: impl Into<Vec<u8>>) -> Self {
        Namespaced {
            inner,
            prefix: prefix.into().into(),
        }
    }

    /// The prefix every key is stored under.
    pub fn prefix(&self) -> &[u8] {
        &self.prefix
    }

    /// The wrapped store.
    pub fn inner(&self) -> &Kv {
        &self.inner
    }

    /// Deletes every key of the namespace, at most `batch` keys per transaction
    /// (so a large namespace never makes one huge transaction), and returns how
    /// many were deleted. Conflicting batches are re-run with the default
    /// [`RetryPolicy`]; a write that commits into the namespace meanwhile may
    /// survive.
    pub async fn clear(&self, batch: usize) -> Result<usize> {
        let batch = batch.max(1);
        let everything = KeyRange {
            start: Vec::new(),
            end: None,
        };
        let mut deleted = 0;
        loop {
            let n = transact!(self, &RetryPolicy::default(), |txn| {
                let pairs = txn.scan(&everything, batch, ScanOrder::Forward).await?;
                let n = pairs.len();
                for (key, _) in pairs {
                    txn.delete(key).await?;
                }
                Ok(n)
            })?;
            deleted += n;
            if n < batch {
                return Ok(deleted);
            }
        }
    }

    fn wrap(&self, inner: Box<dyn Transaction>) -> Box<dyn Transaction> {
        Box::new(NamespacedTxn {
            inner,
            prefix: Arc::clone(&self.prefix),
        })
    }
}

impl fmt::Debug for Namespaced {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Namespaced")
            .field("backend", &self.inner.backend())
            .field("prefix", &Hex(&self.prefix))
            .finish()
    }
}

/// Bytes as lower-case hex, for `Debug`.
struct Hex<'a>(&'a [u8]);

impl fmt::Debug for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|byte| write!(f, "{byte:02x}"))
    }
}

#[async_trait]
impl KvStore for Namespaced {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    async fn begin(&self) -> Result<Box<dyn Transaction>> {
        Ok(self.wrap(self.inner.begin().await?))
    }

    async fn begin_after(&self, prior: CommitDone) -> Result<Box<dyn Transaction>> {
        Ok(self.wrap(self.inner.begin_after(prior).await?))
    }

    async fn begin_recent_read(&self) -> Result<Box<dyn Transaction>> {
        Ok(self.wrap(self.inner.begin_recent_read().await?))
    }
}

/// A transaction of the wrapped store, seen through the namespace.
struct NamespacedTxn {
    inner: Box<dyn Transaction>,
    prefix: Arc<[u8]>,
}

impl NamespacedTxn {
    fn key(&self, key: &[u8]) -> Key {
        prefixed(&self.prefix, key)
    }
}

/// `prefix` followed by `key`.
fn prefixed(prefix: &[u8], key: &[u8]) -> Key {
    let mut full = Vec::with_capacity(prefix.len() + key.len());
    full.extend_from_slice(prefix);
    full.extend_from_slice(key);
    full
}

/// `range` of the namespace as a range of the wrapped store. An unbounded end
/// becomes the end of the namespace (unbounded only when the prefix is empty or
/// all `0xff`, where nothing stored after it lies outside the namespace).
fn outer_range(prefix: &[u8], range: &KeyRange) -> KeyRange {
    KeyRange {
        start: prefixed(prefix, &range.start),
        end: match &range.end {
            Some(end) => Some(prefixed(prefix, end)),
            None => prefix_end(prefix),
        },
    }
}

/// A key of the wrapped store as a key of the namespace.
fn strip(prefix: &[u8], mut key: Key) -> Result<Key> {
    if !key.starts_with(prefix) {
        // Only a backend that scanned outside the range it was given gets here.
        return Err(Error::Invalid(format!(
            "the {} byte key {:?} lies outside the namespace {:?}",
            key.len(),
            Hex(&key),
            Hex(prefix)
        )));
    }
    key.drain(..prefix.len());
    Ok(key)
}

#[async_trait]
impl Transaction for NamespacedTxn {
    async fn get(&mut self, key: &[u8]) -> Result<Option<Value>> {
        let key = self.key(key);
        self.inner.get(&key).await
    }

    async fn batch_get(&mut self, keys: &[Key]) -> Result<Vec<Option<Value>>> {
        let keys: Vec<Key> = keys.iter().map(|key| self.key(key)).collect();
        self.inner.batch_get(&keys).await
    }

    async fn scan(
        &mut self,
        range: &KeyRange,
        limit: usize,
        order: ScanOrder,
    ) -> Result<Vec<KvPair>> {
        let outer = outer_range(&self.prefix, range);
        let pairs = self.inner.scan(&outer, limit, order).await?;
        pairs
            .into_iter()
            .map(|(key, value)| Ok((strip(&self.prefix, key)?, value)))
            .collect()
    }

    async fn get_for_update(&mut self, key: &[u8]) -> Result<Option<Value>> {
        let key = self.key(key);
        self.inner.get_for_update(&key).await
    }

    async fn put(&mut self, key: Key, value: Value) -> Result<()> {
        let key = self.key(&key);
        self.inner.put(key, value).await
    }

    async fn delete(&mut self, key: Key) -> Result<()> {
        let key = self.key(&key);
        self.inner.delete(key).await
    }

    async fn commit(self: Box<Self>) -> Result<()> {
        self.inner.commit().await
    }

    async fn rollback(self: Box<Self>) -> Result<()> {
        self.inner.rollback().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemoryStore;

    fn range(start: &[u8], end: Option<&[u8]>) -> KeyRange {
        KeyRange {
            start: start.to_vec(),
            end: end.map(<[u8]>::to_vec),
        }
    }

    #[test]
    fn bounded_ranges_are_prefixed_at_both_ends() {
        assert_eq!(
            outer_range(b"ns", &range(b"a", Some(b"c"))),
            range(b"nsa", Some(b"nsc"))
        );
        // The whole namespace, spelled with an empty start.
        assert_eq!(
            outer_range(b"ns", &range(b"", Some(&[0xff, 0xff]))),
            range(b"ns", Some(b"ns\xff\xff"))
        );
    }

    #[test]
    fn an_unbounded_end_becomes_the_end_of_the_namespace() {
        assert_eq!(
            outer_range(b"ns", &range(b"", None)),
            range(b"ns", Some(b"nt"))
        );
        assert_eq!(
            outer_range(&[1, 0xff], &range(&[7], None)),
            range(&[1, 0xff, 7], Some(&[2]))
        );
        // No key after an all-0xff prefix lies outside it: still unbounded.
        assert_eq!(
            outer_range(&[0xff, 0xff], &range(&[7], None)),
            range(&[0xff, 0xff, 7], None)
        );
        // The empty prefix is the whole store, unchanged.
        assert_eq!(outer_range(b"", &range(b"a", None)), range(b"a", None));
    }

    #[test]
    fn empty_and_inverted_ranges_stay_empty() {
        for inner in [range(b"b", Some(b"b")), range(b"c", Some(b"a"))] {
            for prefix in [&b"ns"[..], b"", &[0xff]] {
                assert!(outer_range(prefix, &inner).is_empty(), "{inner:?}");
            }
        }
        // An empty end excludes everything, in the namespace too.
        assert!(outer_range(b"ns", &range(b"", Some(b""))).is_empty());
    }

    #[test]
    fn mapped_ranges_contain_exactly_the_prefixed_keys() {
        let prefix = [3, 0xff];
        let cases = [range(b"", None), range(&[5], None), range(&[1], Some(&[9]))];
        let probes: [&[u8]; 6] = [&[], &[0], &[1], &[5, 0xff], &[9], &[0xff; 4]];
        for inner in &cases {
            let outer = outer_range(&prefix, inner);
            for probe in probes {
                assert_eq!(
                    outer.contains(&prefixed(&prefix, probe)),
                    inner.contains(probe),
                    "{inner:?} {probe:?}"
                );
            }
            // Neighbours of the namespace on either side are outside.
            assert!(!outer.contains(&[3, 0xfe, 0xff]));
            assert!(!outer.contains(&[4]));
        }
    }

    #[test]
    fn stripping_checks_the_prefix() {
        assert_eq!(strip(b"ns", b"nskey".to_vec()).unwrap(), b"key");
        assert_eq!(strip(b"ns", b"ns".to_vec()).unwrap(), b"");
        let err = strip(b"ns", b"other".to_vec()).unwrap_err();
        assert!(matches!(err, Error::Invalid(_)), "{err:?}");
        assert!(err.to_string().contains("6e73"), "{err}");
    }

    #[tokio::test]
    async fn keys_are_stored_under_the_prefix() {
        let inner: Kv = Arc::new(MemoryStore::new());
        let ns = Namespaced::new(Arc::clone(&inner), b"ns/".to_vec());
        assert_eq!(ns.backend(), "memory");
        assert_eq!(ns.prefix(), b"ns/");
        let mut txn = ns.begin().await.unwrap();
        txn.put(b"k".to_vec(), b"v".to_vec()).await.unwrap();
        txn.commit().await.unwrap();

        let mut raw = inner.begin().await.unwrap();
        assert_eq!(raw.get(b"ns/k").await.unwrap(), Some(b"v".to_vec()));
        assert_eq!(raw.get(b"k").await.unwrap(), None);
        raw.rollback().await.unwrap();
        assert!(format!("{ns:?}").contains("6e732f"), "{ns:?}");
    }

    #[tokio::test]
    async fn clear_deletes_the_namespace_in_batches_and_nothing_else() {
        let inner: Kv = Arc::new(MemoryStore::new());
        let ns = Namespaced::new(Arc::clone(&inner), b"ns".to_vec());
        let mut txn = inner.begin().await.unwrap();
        for key in [&b"nr\xff"[..], b"ns", b"ns\x00", b"nsa", b"nsb", b"nt"] {
            txn.put(key.to_vec(), b"v".to_vec()).await.unwrap();
        }
        txn.commit().await.unwrap();

        assert_eq!(ns.clear(2).await.unwrap(), 4);
        assert_eq!(ns.clear(2).await.unwrap(), 0);
        // A batch of zero still makes progress.
        let mut txn = ns.begin().await.unwrap();
        txn.put(b"again".to_vec(), b"v".to_vec()).await.unwrap();
        txn.commit().await.unwrap();
        assert_eq!(ns.clear(0).await.unwrap(), 1);

        let mut raw = inner.begin().await.unwrap();
        let left = raw
            .scan(&range(b"", None), 100, ScanOrder::Forward)
            .await
            .unwrap();
        let keys: Vec<Key> = left.into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, vec![b"nr\xff".to_vec(), b"nt".to_vec()]);
        raw.rollback().await.unwrap();
    }

    #[tokio::test]
    async fn recent_reads_and_begin_after_read_the_namespace() {
        let inner: Kv = Arc::new(MemoryStore::new());
        let ns = Namespaced::new(Arc::clone(&inner), b"ns".to_vec());
        let mut txn = ns.begin().await.unwrap();
        txn.put(b"k".to_vec(), b"v".to_vec()).await.unwrap();
        txn.commit().await.unwrap();

        let mut recent = ns.begin_recent_read().await.unwrap();
        assert_eq!(recent.get(b"k").await.unwrap(), Some(b"v".to_vec()));
        let refused = recent.put(b"k".to_vec(), b"w".to_vec()).await;
        assert!(matches!(refused, Err(Error::Invalid(_))), "{refused:?}");
        recent.rollback().await.unwrap();

        let mut after = ns.begin_after(Box::pin(async {})).await.unwrap();
        assert_eq!(
            after
                .batch_get(&[b"k".to_vec(), b"x".to_vec()])
                .await
                .unwrap(),
            vec![Some(b"v".to_vec()), None]
        );
        after.rollback().await.unwrap();
    }
}
