//! The transactional key-value abstraction every backend implements.
//!
//! Semantics follow TiKV's percolator transactions: reads see a snapshot taken when
//! the transaction began, a transaction sees its own writes, and a commit fails with
//! [`Error::Conflict`] when another transaction committed a write to a key this one
//! writes (or locks) after this one began. Backends may be stricter (fjall also
//! rejects read-write conflicts), never looser. Domain code is written against these
//! traits only and must be correct under snapshot isolation.

use async_trait::async_trait;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

pub mod error;
pub mod fjall;
pub mod memory;
pub mod namespaced;
mod overlay;
pub mod retry;
pub mod tikv;

pub use error::{Error, Result, TxnError};
pub use namespaced::Namespaced;
pub use retry::RetryPolicy;

/// A key: arbitrary bytes, compared lexicographically.
pub type Key = Vec<u8>;
/// A value: arbitrary bytes.
pub type Value = Vec<u8>;
/// One key-value pair returned by a scan.
pub type KvPair = (Key, Value);

pub use rossby_keyspace::KeyRange;
pub use rossby_keyspace::range::prefix_end;

/// Direction of a scan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScanOrder {
    /// Ascending key order, starting at the range's start.
    Forward,
    /// Descending key order, starting just below the range's end.
    Reverse,
}

/// A transactional key-value store: the only thing domain code talks to.
#[async_trait]
pub trait KvStore: Send + Sync + 'static {
    /// Short name of the backend (`memory`, `fjall`, `tikv`), for logs and metrics.
    fn backend(&self) -> &'static str;

    /// Starts a transaction whose reads see a snapshot of the store as of now.
    async fn begin(&self) -> Result<Box<dyn Transaction>>;

    /// Starts a transaction whose snapshot includes the outcome of a commit that
    /// is still running: `prior` resolves once that commit has returned. The caller
    /// calls this only after the earlier commit was issued, which is what lets a
    /// backend overlap the new start timestamp with the earlier commit timestamp
    /// (PD hands out timestamps in the order they are asked for, so a start
    /// timestamp asked for after a commit timestamp is larger and its reads wait
    /// for that commit). The default waits for `prior`, then begins: no overlap.
    async fn begin_after(&self, prior: CommitDone) -> Result<Box<dyn Transaction>> {
        prior.await;
        self.begin().await
    }

    /// Starts a read-only transaction whose snapshot may be up to
    /// [`RECENT_READ_STALENESS`] old, so a backend can serve it from a timestamp it
    /// fetched in the background instead of asking for a new one. For checks where
    /// a slightly old answer is safe (a positive answer that may have been revoked
    /// a moment ago) and a negative one is confirmed with [`KvStore::begin`].
    /// Writes and locks fail with [`Error::Invalid`]. The default begins a fresh
    /// transaction (staleness zero).
    async fn begin_recent_read(&self) -> Result<Box<dyn Transaction>> {
        Ok(Box::new(ReadOnly(self.begin().await?)))
    }
}

/// The completion of an earlier commit that [`KvStore::begin_after`] waits for.
pub type CommitDone = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The oldest snapshot [`KvStore::begin_recent_read`] may serve.
pub const RECENT_READ_STALENESS: Duration = Duration::from_secs(1);

/// A transaction that refuses writes: what [`KvStore::begin_recent_read`] returns.
pub struct ReadOnly(pub Box<dyn Transaction>);

impl ReadOnly {
    fn refuse<T>() -> Result<T> {
        Err(Error::Invalid(
            "a recent-read transaction is read-only".to_string(),
        ))
    }
}

#[async_trait]
impl Transaction for ReadOnly {
    async fn get(&mut self, key: &[u8]) -> Result<Option<Value>> {
        self.0.get(key).await
    }

    async fn batch_get(&mut self, keys: &[Key]) -> Result<Vec<Option<Value>>> {
        self.0.batch_get(keys).await
    }

    async fn scan(
        &mut self,
        range: &KeyRange,
        limit: usize,
        order: ScanOrder,
    ) -> Result<Vec<KvPair>> {
        self.0.scan(range, limit, order).await
    }

    async fn get_for_update(&mut self, _key: &[u8]) -> Result<Option<Value>> {
        Self::refuse()
    }

    async fn put(&mut self, _key: Key, _value: Value) -> Result<()> {
        Self::refuse()
    }

    async fn delete(&mut self, _key: Key) -> Result<()> {
        Self::refuse()
    }

    async fn commit(self: Box<Self>) -> Result<()> {
        self.0.commit().await
    }

    async fn rollback(self: Box<Self>) -> Result<()> {
        self.0.rollback().await
    }
}

/// A running transaction. Every transaction must end in [`Transaction::commit`] or
/// [`Transaction::rollback`]; backends roll back a transaction that is dropped
/// (for example because the request that owned it was cancelled).
///
/// Reads may return data whose commit is not yet durable (the embedded store syncs
/// in groups); the transaction's end waits until it is. So what a transaction read
/// must not leave it (into a reply, a push, another system) before `commit` or
/// `rollback` returned `Ok` — [`transact!`](crate::transact) guarantees that.
#[async_trait]
pub trait Transaction: Send {
    /// Reads one key at the transaction's snapshot (or its own pending write).
    async fn get(&mut self, key: &[u8]) -> Result<Option<Value>>;

    /// Reads several keys; the result has one entry per key, in the same order.
    async fn batch_get(&mut self, keys: &[Key]) -> Result<Vec<Option<Value>>> {
        let mut values = Vec::with_capacity(keys.len());
        for key in keys {
            values.push(self.get(key).await?);
        }
        Ok(values)
    }

    /// Returns at most `limit` pairs inside `range`, in key order (`Forward`) or
    /// reverse key order (`Reverse`), including this transaction's pending writes.
    async fn scan(
        &mut self,
        range: &KeyRange,
        limit: usize,
        order: ScanOrder,
    ) -> Result<Vec<KvPair>>;

    /// Reads a key and makes it part of the transaction's write set, so the commit
    /// conflicts with any other transaction that writes it concurrently (TiKV's
    /// `get_for_update` / `lock_keys`).
    async fn get_for_update(&mut self, key: &[u8]) -> Result<Option<Value>>;

    /// Buffers a write of `value` under `key`.
    async fn put(&mut self, key: Key, value: Value) -> Result<()>;

    /// Buffers a deletion of `key` (a no-op if it does not exist).
    async fn delete(&mut self, key: Key) -> Result<()>;

    /// Commits. `Ok` means the writes are durable (on the embedded store: synced to
    /// disk) and visible to transactions that begin afterwards, and that everything
    /// this transaction read is durable too.
    async fn commit(self: Box<Self>) -> Result<()>;

    /// Discards every buffered write. `Ok` means everything this transaction read
    /// is durable; an error means it may not be, and nothing read may be used.
    async fn rollback(self: Box<Self>) -> Result<()>;
}

/// A shared handle to a store.
pub type Kv = Arc<dyn KvStore>;

/// Which backend to open, with its settings.
#[derive(Clone, Debug)]
pub enum BackendConfig {
    /// In-memory MVCC store (tests and benchmarks; nothing survives the process).
    Memory,
    /// Persistent embedded store in a directory.
    Fjall(fjall::FjallConfig),
    /// A TiKV cluster reached through its placement drivers.
    Tikv(tikv::TikvConfig),
}

/// Opens the configured backend.
pub async fn open(config: &BackendConfig) -> Result<Kv> {
    Ok(match config {
        BackendConfig::Memory => Arc::new(memory::MemoryStore::new()),
        BackendConfig::Fjall(cfg) => Arc::new(fjall::FjallStore::open(cfg.clone())?),
        BackendConfig::Tikv(cfg) => Arc::new(tikv::TikvStore::connect(cfg.clone()).await?),
    })
}

/// Checks a value against the largest size any backend accepts for one entry.
pub(crate) fn check_value_size(value: &[u8]) -> Result<()> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(Error::Invalid(format!(
            "value of {} bytes exceeds the limit of {MAX_VALUE_BYTES} bytes",
            value.len()
        )));
    }
    Ok(())
}

/// Largest value accepted by the KV layer (TiKV's default raft entry limit is 8 MiB;
/// staying well below it leaves room for the transaction's other mutations).
pub const MAX_VALUE_BYTES: usize = 4 * 1024 * 1024;
