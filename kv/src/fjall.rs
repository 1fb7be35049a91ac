//! The embedded default backend: fjall's optimistic (serializable) transactions with
//! group commit.
//!
//! # Durability
//! A commit is applied to fjall's journal without a sync, given a ticket (a counter
//! that increases with every write commit), and then waits until a background syncer
//! has `fdatasync`ed the journal past that ticket. The syncer syncs once for every
//! commit that arrived while the previous sync ran, so one sync covers many commits.
//!
//! Committed but unsynced data is already visible inside fjall, so reads must wait
//! too: a transaction records the last ticket issued when it began (`visible`), and
//! neither its commit nor its rollback returns before everything up to `visible` is
//! synced. What a transaction read therefore cannot leave it (the KV contract: a
//! body acts on its reads only after the transaction ended) before it is durable, so
//! no reply can expose data a crash could still take away (for example a dedup hit
//! for a send that then vanishes). A write commit waits for its own, later ticket,
//! which covers its snapshot too, so it pays for one sync, not two. If a sync fails
//! the store stops: commits waiting on it report `Undetermined`, everything after
//! reports `Unavailable`.
//!
//! # Isolation
//! fjall validates reads at commit, which is stricter than TiKV's snapshot isolation
//! (write skew is impossible here). To also detect TiKV's write-write conflicts for
//! blind writes, every `put` and `delete` registers the key as read first.
//!
//! fjall locks its directory: one process per store.

use crate::{Error, Result};
use crate::{KeyRange, KvPair, KvStore, ScanOrder, Transaction, Value, check_value_size};
use async_trait::async_trait;
use fjall::{
    KeyspaceCreateOptions, OptimisticTxDatabase, OptimisticTxKeyspace, OptimisticWriteTx,
    PersistMode, Readable,
};
use std::ops::Bound;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use tokio::sync::watch;

/// Whether commits wait for the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Commits are acknowledged only after a (shared) `fdatasync` covers them. The
    /// only mode for real deployments.
    GroupCommit,
    /// Commits are acknowledged once handed to the OS (page cache): they survive a
    /// crash of the process but not of the machine. For benchmarks measuring the
    /// cost of durability, never for deployments.
    NoSync,
}

/// Settings of the fjall backend.
#[derive(Clone, Debug)]
pub struct FjallConfig {
    /// Directory of the store (created if missing).
    pub path: PathBuf,
    /// Commit durability.
    pub durability: Durability,
    /// Block cache size in bytes.
    pub cache_bytes: u64,
}

impl FjallConfig {
    /// A durable store in `path` with default cache size.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FjallConfig {
            path: path.into(),
            durability: Durability::GroupCommit,
            cache_bytes: 64 * 1024 * 1024,
        }
    }
}

/// The name of the single fjall keyspace holding every Rossby table (tables are
/// distinguished by key prefix, as on TiKV).
const KEYSPACE: &str = "rossby";

/// Progress of the syncer, published to waiting commits and reads.
#[derive(Clone, Debug, Default)]
struct SyncState {
    /// Every ticket up to this one is on disk.
    durable: u64,
    /// Set once a sync failed; the store serves nothing afterwards.
    failed: Option<Arc<str>>,
}

struct Shared {
    db: OptimisticTxDatabase,
    keyspace: OptimisticTxKeyspace,
    durability: Durability,
    /// Held while committing to fjall and issuing the ticket, and while beginning a
    /// transaction, so a snapshot never contains a commit whose ticket it has not seen.
    commit_lock: Mutex<()>,
    /// Last ticket issued.
    committed: AtomicU64,
    /// Wakes the syncer; the flag says work may be pending.
    wake: Mutex<bool>,
    wake_cv: Condvar,
    state: watch::Sender<SyncState>,
    shutdown: AtomicBool,
}

/// A durable embedded store backed by fjall. Cloning shares the store.
pub struct FjallStore {
    shared: Arc<Shared>,
    syncer: Mutex<Option<JoinHandle<()>>>,
}

impl FjallStore {
    /// Opens (or creates) the store at `config.path` and starts its syncer.
    pub fn open(config: FjallConfig) -> Result<Self> {
        std::fs::create_dir_all(&config.path).map_err(|e| {
            Error::Unavailable(format!("cannot create {}: {e}", config.path.display()))
        })?;
        let db = OptimisticTxDatabase::builder(&config.path)
            .manual_journal_persist(true)
            .cache_size(config.cache_bytes)
            .open()
            .map_err(|e| open_error(&config, e))?;
        let keyspace = db
            .keyspace(KEYSPACE, KeyspaceCreateOptions::default)
            .map_err(|e| open_error(&config, e))?;
        let (state, _) = watch::channel(SyncState::default());
        let shared = Arc::new(Shared {
            db,
            keyspace,
            durability: config.durability,
            commit_lock: Mutex::new(()),
            committed: AtomicU64::new(0),
            wake: Mutex::new(false),
            wake_cv: Condvar::new(),
            state,
            shutdown: AtomicBool::new(false),
        });
        let syncer = match config.durability {
            Durability::GroupCommit => {
                let shared = Arc::clone(&shared);
                let handle = std::thread::Builder::new()
                    .name("rossby-fjall-sync".into())
                    .spawn(move || shared.run_syncer())
                    .map_err(|e| Error::Unavailable(format!("cannot start syncer: {e}")))?;
                Some(handle)
            }
            Durability::NoSync => None,
        };
        Ok(FjallStore {
            shared,
            syncer: Mutex::new(syncer),
        })
    }

    /// The highest commit ticket known to be on disk (every write commit takes the
    /// next ticket); tests use it to observe group commit.
    pub fn durable_ticket(&self) -> u64 {
        self.shared.state.borrow().durable
    }
}

fn open_error(config: &FjallConfig, err: fjall::Error) -> Error {
    match err {
        fjall::Error::Locked => Error::Unavailable(format!(
            "store {} is in use by another process (fjall allows one process per store)",
            config.path.display()
        )),
        other => Error::Unavailable(format!("cannot open {}: {other}", config.path.display())),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks cannot leave the guarded data inconsistent
    // (they guard a flag or nothing), so poisoning is ignored.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    fn run_syncer(&self) {
        let mut synced = 0u64;
        loop {
            {
                let mut pending = lock(&self.wake);
                while !*pending && !self.shutdown.load(Ordering::Acquire) {
                    pending = self
                        .wake_cv
                        .wait(pending)
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                }
                *pending = false;
            }
            // Every ticket up to `target` was fully written to the journal buffer
            // before it was issued, so this sync covers all of them.
            let target = self.committed.load(Ordering::Acquire);
            let stopping = self.shutdown.load(Ordering::Acquire);
            if target > synced {
                match self.db.persist(PersistMode::SyncData) {
                    Ok(()) => {
                        synced = target;
                        self.state.send_modify(|s| s.durable = target);
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "journal sync failed; the store stops serving");
                        let msg: Arc<str> = format!("journal sync failed: {e}").into();
                        self.state.send_modify(|s| s.failed = Some(msg));
                        return;
                    }
                }
            }
            if stopping {
                return;
            }
        }
    }

    fn wake_syncer(&self) {
        *lock(&self.wake) = true;
        self.wake_cv.notify_one();
    }

    fn check_failed(&self) -> Result<()> {
        match &self.state.borrow().failed {
            Some(msg) => Err(Error::Unavailable(msg.to_string())),
            None => Ok(()),
        }
    }

    /// Waits until every ticket up to `ticket` is durable.
    async fn wait_durable(&self, ticket: u64) -> std::result::Result<(), Arc<str>> {
        if self.durability == Durability::NoSync {
            return Ok(());
        }
        let mut rx = self.state.subscribe();
        let state = rx
            .wait_for(|s| s.durable >= ticket || s.failed.is_some())
            .await
            .map_err(|_| Arc::<str>::from("store closed"))?;
        match &state.failed {
            Some(msg) if state.durable < ticket => Err(Arc::clone(msg)),
            _ => Ok(()),
        }
    }
}

impl Drop for FjallStore {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::Release);
        self.shared.wake_syncer();
        if let Some(handle) = lock(&self.syncer).take() {
            // The syncer finishes its last sync and exits; a panic there has already
            // been reported by the thread itself.
            let _ = handle.join();
        }
    }
}

#[async_trait]
impl KvStore for FjallStore {
    fn backend(&self) -> &'static str {
        "fjall"
    }

    async fn begin(&self) -> Result<Box<dyn Transaction>> {
        self.shared.check_failed()?;
        let (tx, visible) = {
            let _guard = lock(&self.shared.commit_lock);
            let mut tx = self.shared.db.write_tx().map_err(backend_error)?;
            if self.shared.durability == Durability::NoSync {
                // Hand each commit to the OS so it survives a process crash.
                tx = tx.durability(Some(PersistMode::Buffer));
            }
            (tx, self.shared.committed.load(Ordering::Acquire))
        };
        Ok(Box::new(FjallTxn {
            shared: Arc::clone(&self.shared),
            tx: Some(tx),
            visible,
            wrote: false,
        }))
    }
}

fn backend_error(err: fjall::Error) -> Error {
    Error::Unavailable(format!("fjall: {err}"))
}

/// A transaction on the fjall store.
struct FjallTxn {
    shared: Arc<Shared>,
    /// `None` once committed or rolled back.
    tx: Option<OptimisticWriteTx>,
    /// Last ticket issued when the transaction began: its snapshot may contain
    /// everything up to here.
    visible: u64,
    wrote: bool,
}

impl FjallTxn {
    /// Waits until everything this transaction's snapshot may contain is durable.
    /// Called when the transaction ends, before anything it read can leave it.
    async fn settle_reads(&self) -> Result<()> {
        self.shared
            .wait_durable(self.visible)
            .await
            .map_err(|msg| Error::Unavailable(msg.to_string()))
    }

    fn live(&mut self) -> Result<&mut OptimisticWriteTx> {
        self.tx
            .as_mut()
            .ok_or_else(|| Error::Invalid("transaction already finished".into()))
    }

    /// Registers `key` in the read set so a concurrent writer of it makes this
    /// transaction's commit fail, as a write-write conflict does on TiKV.
    fn mark_written(&mut self, key: &[u8]) -> Result<()> {
        let keyspace = self.shared.keyspace.clone();
        let tx = self.live()?;
        tx.contains_key(&keyspace, key).map_err(backend_error)?;
        self.wrote = true;
        Ok(())
    }
}

#[async_trait]
impl Transaction for FjallTxn {
    async fn get(&mut self, key: &[u8]) -> Result<Option<Value>> {
        let keyspace = self.shared.keyspace.clone();
        let tx = self.live()?;
        let value = tx.get(&keyspace, key).map_err(backend_error)?;
        Ok(value.map(|v| v.to_vec()))
    }

    async fn scan(
        &mut self,
        range: &KeyRange,
        limit: usize,
        order: ScanOrder,
    ) -> Result<Vec<KvPair>> {
        if limit == 0 || range.is_empty() {
            return Ok(Vec::new());
        }
        let keyspace = self.shared.keyspace.clone();
        let tx = self.live()?;
        let bounds: (Bound<&[u8]>, Bound<&[u8]>) = (
            Bound::Included(range.start.as_slice()),
            match &range.end {
                Some(end) => Bound::Excluded(end.as_slice()),
                None => Bound::Unbounded,
            },
        );
        let iter = tx.range::<&[u8], _>(&keyspace, bounds);
        let mut out = Vec::with_capacity(limit.min(1024));
        let mut push = |guard: fjall::Guard| -> Result<bool> {
            let (k, v) = guard.into_inner().map_err(backend_error)?;
            out.push((k.to_vec(), v.to_vec()));
            Ok(out.len() < limit)
        };
        match order {
            ScanOrder::Forward => {
                for guard in iter {
                    if !push(guard)? {
                        break;
                    }
                }
            }
            ScanOrder::Reverse => {
                for guard in iter.rev() {
                    if !push(guard)? {
                        break;
                    }
                }
            }
        }
        Ok(out)
    }

    async fn get_for_update(&mut self, key: &[u8]) -> Result<Option<Value>> {
        // A read already makes the commit fail if anyone writes the key meanwhile.
        self.get(key).await
    }

    async fn put(&mut self, key: Vec<u8>, value: Vec<u8>) -> Result<()> {
        check_value_size(&value)?;
        self.mark_written(&key)?;
        let keyspace = self.shared.keyspace.clone();
        self.live()?.insert(&keyspace, key, value);
        Ok(())
    }

    async fn delete(&mut self, key: Vec<u8>) -> Result<()> {
        self.mark_written(&key)?;
        let keyspace = self.shared.keyspace.clone();
        self.live()?.remove(&keyspace, key);
        Ok(())
    }

    async fn commit(mut self: Box<Self>) -> Result<()> {
        let tx = self
            .tx
            .take()
            .ok_or_else(|| Error::Invalid("transaction already finished".into()))?;
        if !self.wrote {
            tx.rollback();
            return self.settle_reads().await;
        }
        self.shared.check_failed()?;
        let ticket = {
            let _guard = lock(&self.shared.commit_lock);
            match tx.commit() {
                Ok(Ok(())) => self.shared.committed.fetch_add(1, Ordering::AcqRel) + 1,
                Ok(Err(fjall::Conflict)) => {
                    return Err(Error::Conflict(
                        "a key read or written by this transaction was written concurrently".into(),
                    ));
                }
                Err(e) => return Err(Error::Undetermined(format!("fjall commit: {e}"))),
            }
        };
        if self.shared.durability == Durability::GroupCommit {
            self.shared.wake_syncer();
        }
        self.shared
            .wait_durable(ticket)
            .await
            .map_err(|msg| Error::Undetermined(msg.to_string()))
    }

    async fn rollback(mut self: Box<Self>) -> Result<()> {
        if let Some(tx) = self.tx.take() {
            tx.rollback();
        }
        self.settle_reads().await
    }
}

impl Drop for FjallTxn {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            tx.rollback();
        }
    }
}
