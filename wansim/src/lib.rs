//! A WAN **simulation**: a [`KvStore`] wrapper that delays every transaction by
//! the round trips a multi-region TiKV deployment would make it pay.
//!
//! With the embedded store everything sits on one machine, so a load test across
//! regions would show loopback latencies. [`WanSimulation`] wraps any store and,
//! given the topology's [`LatencyModel`] seen from the gateway's region, sleeps
//! before each operation for as long as TiKV would take:
//!
//! - [`KvStore::begin`]: the start timestamp, one round trip to the primary region
//!   (where PD's timestamp oracle lives); [`KvStore::begin_after`] overlaps that
//!   round trip with the earlier commit it follows, and takes its snapshot after
//!   that commit; [`KvStore::begin_recent_read`] pays none (its timestamp is one
//!   fetched in the background);
//! - every read (`get`, `get_for_update`, each key of `batch_get`, `scan`): the
//!   round trip to the leader of the key's data, `model.read(home)`. A scan is
//!   charged by the home of its range's start key; a `batch_get` as TiKV sends it,
//!   in parallel, so it costs its slowest key;
//! - [`Transaction::commit`] of a transaction that wrote (or locked) keys:
//!   `model.commit(homes)`, the two-phase commit (prewrite, commit timestamp,
//!   commit of the primary key) with the first written key as the primary, and
//!   under region survival the quorum round trip of the voters. Read-only
//!   commits and rollbacks cost nothing: TiKV sends nothing for them.
//!
//! A key whose home region cannot be read from its bytes (anything outside the
//! box, expiry and purge ranges) is charged as global data, whose leaders live in
//! the primary region.
//!
//! Only the latencies are simulated: the wrapped store's semantics are unchanged,
//! and so is its durability. Reads served by tikv-client from its transaction
//! buffer (a key read or written earlier in the same transaction) are charged
//! again here, so the simulated latency is an upper bound in that case.
//!
//! The delays use [`tokio::time::sleep`], so under a paused tokio clock they are
//! exact and cost no real time.

use async_trait::async_trait;
use rossby_kv::{
    CommitDone, Key, KeyRange, Kv, KvPair, KvStore, ReadOnly, Result, ScanOrder, Transaction, Value,
};
use rossby_replication::{Home, LatencyModel, home_of_key};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// A store whose transactions are delayed by simulated WAN round trips (see the
/// [module documentation](self)). Not a real deployment: the data stays in the
/// wrapped store, on this machine.
#[derive(Clone)]
pub struct WanSimulation {
    inner: Kv,
    model: Arc<LatencyModel>,
}

impl WanSimulation {
    /// Wraps `inner` so that its transactions pay the latencies of `model`.
    pub fn new(inner: Kv, model: LatencyModel) -> Self {
        tracing::info!(
            backend = inner.backend(),
            gateway_region = %model.gateway_region(),
            primary_region = %model.topology().primary().name,
            timestamp_ms = model.timestamp().as_secs_f64() * 1e3,
            "WAN simulation enabled: storage latencies are simulated, not measured"
        );
        WanSimulation {
            inner,
            model: Arc::new(model),
        }
    }

    /// [`WanSimulation::new`] as a shared store handle.
    pub fn wrap(inner: Kv, model: LatencyModel) -> Kv {
        Arc::new(WanSimulation::new(inner, model))
    }

    /// The latency model the simulation charges.
    pub fn model(&self) -> &LatencyModel {
        &self.model
    }
}

impl fmt::Debug for WanSimulation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WanSimulation")
            .field("backend", &self.inner.backend())
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl KvStore for WanSimulation {
    /// The wrapped backend's name: the simulation changes latencies, not the
    /// engine that stores the data.
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    async fn begin(&self) -> Result<Box<dyn Transaction>> {
        simulate(self.model.timestamp()).await;
        Ok(self.simulated(self.inner.begin().await?))
    }

    /// The start timestamp's round trip overlaps the earlier commit (asked for
    /// after its commit timestamp, so PD answers it with a larger one); the
    /// snapshot is taken once both are done, as TiKV's reads would wait for the
    /// earlier commit's locks.
    async fn begin_after(&self, prior: CommitDone) -> Result<Box<dyn Transaction>> {
        tokio::join!(simulate(self.model.timestamp()), prior);
        Ok(self.simulated(self.inner.begin().await?))
    }

    /// No timestamp round trip: the timestamp comes from a background refresh
    /// (at most [`RECENT_READ_STALENESS`](crate::kv::RECENT_READ_STALENESS) old).
    /// Reads are charged as usual.
    async fn begin_recent_read(&self) -> Result<Box<dyn Transaction>> {
        let inner = self.simulated(self.inner.begin().await?);
        Ok(Box::new(ReadOnly(inner)))
    }
}

impl WanSimulation {
    fn simulated(&self, inner: Box<dyn Transaction>) -> Box<dyn Transaction> {
        Box::new(SimulatedTransaction {
            inner,
            model: Arc::clone(&self.model),
            written: Vec::new(),
        })
    }
}

/// A transaction of the [`WanSimulation`]: the wrapped one plus the homes of the
/// keys it wrote, which decide what its commit costs.
struct SimulatedTransaction {
    inner: Box<dyn Transaction>,
    model: Arc<LatencyModel>,
    /// Distinct homes of the written or locked keys, in the order they were
    /// first written: the first one holds the primary key of the commit.
    written: Vec<Home>,
}

impl SimulatedTransaction {
    fn wrote(&mut self, key: &[u8]) {
        let home = home_or_global(key);
        if !self.written.contains(&home) {
            self.written.push(home);
        }
    }
}

#[async_trait]
impl Transaction for SimulatedTransaction {
    async fn get(&mut self, key: &[u8]) -> Result<Option<Value>> {
        simulate(self.model.read(home_or_global(key))).await;
        self.inner.get(key).await
    }

    async fn batch_get(&mut self, keys: &[Key]) -> Result<Vec<Option<Value>>> {
        let slowest = keys
            .iter()
            .map(|key| self.model.read(home_or_global(key)))
            .max()
            .unwrap_or(Duration::ZERO);
        simulate(slowest).await;
        self.inner.batch_get(keys).await
    }

    async fn scan(
        &mut self,
        range: &KeyRange,
        limit: usize,
        order: ScanOrder,
    ) -> Result<Vec<KvPair>> {
        simulate(self.model.read(home_or_global(&range.start))).await;
        self.inner.scan(range, limit, order).await
    }

    async fn get_for_update(&mut self, key: &[u8]) -> Result<Option<Value>> {
        simulate(self.model.read(home_or_global(key))).await;
        // The lock is a mutation of the commit, like a write.
        self.wrote(key);
        self.inner.get_for_update(key).await
    }

    async fn put(&mut self, key: Key, value: Value) -> Result<()> {
        self.wrote(&key);
        self.inner.put(key, value).await
    }

    async fn delete(&mut self, key: Key) -> Result<()> {
        self.wrote(&key);
        self.inner.delete(key).await
    }

    async fn commit(self: Box<Self>) -> Result<()> {
        // The model charges nothing when nothing was written.
        simulate(self.model.commit(&self.written)).await;
        self.inner.commit().await
    }

    async fn rollback(self: Box<Self>) -> Result<()> {
        self.inner.rollback().await
    }
}

/// The home of a key's data; keys with no region of their own are global.
fn home_or_global(key: &[u8]) -> Home {
    home_of_key(key).unwrap_or(Home::Global)
}

/// Waits for a simulated delay (nothing at all for a zero one, so a zero-latency
/// model adds no scheduling point).
async fn simulate(delay: Duration) {
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
}
