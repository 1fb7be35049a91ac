//! The embedded default backend: fjall as the storage engine, with Rossby's own
//! snapshot-isolation transactions and a group-commit pipeline in front of it.
//!
//! # Transactions
//! A transaction reads a fjall snapshot and buffers its writes. Its commit goes to
//! a single commit thread, which checks it for write-write conflicts exactly as
//! TiKV does (a key it writes or locked was written by a commit it did not see) and
//! accepts or refuses it. Isolation is therefore TiKV's snapshot isolation, not
//! stricter: write skew is possible here too.
//!
//! # The commit pipeline
//! 1. The **commit thread** takes every commit waiting in its queue, checks each,
//!    and writes the accepted ones as one *group* to the commit log
//!    ([`commit_log`]): one record, one `write`.
//! 2. The **sync thread** takes every group written meanwhile and makes them
//!    durable with one `fdatasync` of the log. While it syncs, the commit thread
//!    forms the next group, so one sync covers everything that arrived during the
//!    previous one.
//! 3. The **apply thread** applies each synced group to fjall as one write batch
//!    and only then acknowledges its commits, while the next sync already runs.
//! 4. The **checkpointer** syncs fjall's own journal in the background (a few
//!    times a second) and then deletes log segments fjall now covers.
//!
//! A group becomes visible (is applied) only after its sync, so a snapshot never
//! contains data a crash could take away: reads never wait, and a read-only
//! transaction ends at once. Blocking work (syncs, fjall's journal lock and write
//! stalls) happens on these threads, never on the async runtime's workers.
//!
//! On open, the log is replayed into fjall (groups are sets of whole-value writes,
//! so applying a group fjall already has changes nothing), fjall's journal is
//! synced, and the log starts afresh. If the log cannot be written or synced the
//! store stops: commits in flight report `Undetermined`, everything after reports
//! `Unavailable`.
//!
//! fjall locks its directory: one process per store.

mod commit_log;
mod pipeline;

use crate::overlay::{Pending, bounds, merge};
use crate::{Error, Result};
use crate::{Key, KeyRange, KvPair, KvStore, ScanOrder, Transaction, Value};
use async_trait::async_trait;
use commit_log::{CommitLog, SealedQueue};
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode, Readable, Snapshot};
use pipeline::CommitRequest;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, mpsc};
use std::thread::JoinHandle;
use tokio::sync::oneshot;

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

/// Counters of the commit pipeline since the store was opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FjallStats {
    /// Write commits acknowledged (durable and visible).
    pub commits: u64,
    /// Groups written to the commit log.
    pub groups: u64,
    /// `fdatasync` calls on the commit log.
    pub syncs: u64,
    /// Commits refused for a write-write conflict.
    pub conflicts: u64,
}

/// The name of the single fjall keyspace holding every Rossby table (tables are
/// distinguished by key prefix, as on TiKV).
const KEYSPACE: &str = "rossby";

/// A log segment is closed once it holds this many bytes.
const SEGMENT_BYTES: u64 = 32 * 1024 * 1024;

struct Shared {
    db: Database,
    keyspace: Keyspace,
    /// The last group applied to fjall: new snapshots contain every group up to it.
    applied: AtomicU64,
    /// Start points (the `applied` value they began at) of running transactions,
    /// with how many began there. The commit thread forgets a key's last writer
    /// only once no running transaction could conflict with it.
    running: Mutex<BTreeMap<u64, usize>>,
    /// The commit thread's queue; `None` once the store is closing.
    submit: Mutex<Option<mpsc::Sender<CommitRequest>>>,
    /// Set once the log or fjall failed; the store serves nothing afterwards.
    failed: OnceLock<Arc<str>>,
    commits: AtomicU64,
    groups: AtomicU64,
    syncs: AtomicU64,
    conflicts: AtomicU64,
}

impl Shared {
    fn check_failed(&self) -> Result<()> {
        match self.failed.get() {
            Some(msg) => Err(Error::Unavailable(msg.to_string())),
            None => Ok(()),
        }
    }

    /// Stops the store for good.
    fn fail(&self, msg: String) -> Arc<str> {
        let msg: Arc<str> = msg.into();
        if self.failed.set(Arc::clone(&msg)).is_ok() {
            tracing::error!(error = %msg, "the embedded store stops serving");
        }
        self.failed.get().cloned().unwrap_or(msg)
    }

    /// Registers a new transaction and returns its start point.
    fn enter(&self) -> u64 {
        let mut running = lock(&self.running);
        // Read under the lock so the commit thread's prune point, computed under
        // the same lock, never passes a start point about to be registered.
        let start = self.applied.load(Ordering::Acquire);
        *running.entry(start).or_default() += 1;
        start
    }

    fn leave(&self, start: u64) {
        let mut running = lock(&self.running);
        if let Some(count) = running.get_mut(&start) {
            *count -= 1;
            if *count == 0 {
                running.remove(&start);
            }
        }
    }

    /// The highest group no running or future transaction can conflict with.
    fn prune_point(&self) -> u64 {
        let running = lock(&self.running);
        let applied = self.applied.load(Ordering::Acquire);
        running
            .first_key_value()
            .map_or(applied, |(start, _)| (*start).min(applied))
    }
}

/// A durable embedded store backed by fjall.
pub struct FjallStore {
    shared: Arc<Shared>,
    /// The commit, sync and apply threads.
    threads: Vec<JoinHandle<()>>,
    /// The checkpointer thread and the sender whose drop stops it.
    checkpointer: Option<(mpsc::Sender<()>, JoinHandle<()>)>,
}

impl FjallStore {
    /// Opens (or creates) the store at `config.path`, replays its commit log and
    /// starts the commit pipeline.
    pub fn open(config: FjallConfig) -> Result<Self> {
        std::fs::create_dir_all(&config.path).map_err(|e| {
            Error::Unavailable(format!("cannot create {}: {e}", config.path.display()))
        })?;
        let db = Database::builder(&config.path)
            .manual_journal_persist(true)
            .cache_size(config.cache_bytes)
            .open()
            .map_err(|e| open_error(&config, e))?;
        let keyspace = db
            .keyspace(KEYSPACE, KeyspaceCreateOptions::default)
            .map_err(|e| open_error(&config, e))?;
        lower_background_priority();
        let log_dir = config.path.join(commit_log::DIR);
        let next_seq = recover(&db, &keyspace, &log_dir)?;

        let shared = Arc::new(Shared {
            db,
            keyspace,
            applied: AtomicU64::new(0),
            running: Mutex::new(BTreeMap::new()),
            submit: Mutex::new(None),
            failed: OnceLock::new(),
            commits: AtomicU64::new(0),
            groups: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
            conflicts: AtomicU64::new(0),
        });
        let sealed = SealedQueue::default();
        let log = CommitLog::create(&log_dir, next_seq, SEGMENT_BYTES, Arc::clone(&sealed))?;
        let running =
            pipeline::start(Arc::clone(&shared), log, sealed, log_dir, config.durability)?;
        *lock(&shared.submit) = Some(running.submit);
        Ok(FjallStore {
            shared,
            threads: running.threads,
            checkpointer: Some(running.checkpointer),
        })
    }

    /// Counters of the commit pipeline.
    pub fn stats(&self) -> FjallStats {
        FjallStats {
            commits: self.shared.commits.load(Ordering::Acquire),
            groups: self.shared.groups.load(Ordering::Acquire),
            syncs: self.shared.syncs.load(Ordering::Acquire),
            conflicts: self.shared.conflicts.load(Ordering::Acquire),
        }
    }
}

/// Replays the commit log into fjall, makes fjall's journal durable, and deletes
/// the replayed segments. Returns the number for the next segment.
fn recover(db: &Database, keyspace: &Keyspace, log_dir: &std::path::Path) -> Result<u64> {
    std::fs::create_dir_all(log_dir)
        .map_err(|e| commit_log::io_error("cannot create", log_dir, e))?;
    let replayed = commit_log::replay(log_dir, |_, writes| {
        pipeline::apply(db, keyspace, writes).map_err(backend_error)
    })?;
    if replayed.discarded_bytes > 0 {
        tracing::warn!(
            bytes = replayed.discarded_bytes,
            "discarded the unacknowledged tail of the commit log"
        );
    }
    if replayed.groups > 0 {
        tracing::info!(groups = replayed.groups, "replayed the commit log");
        db.persist(PersistMode::SyncAll).map_err(backend_error)?;
    }
    // Oldest first, so a crash in between leaves a suffix of the log, which replays
    // correctly over a store that already contains it.
    for segment in &replayed.segments {
        std::fs::remove_file(segment)
            .map_err(|e| commit_log::io_error("cannot remove", segment, e))?;
    }
    if !replayed.segments.is_empty() {
        commit_log::sync_dir(log_dir)?;
    }
    Ok(replayed.next_seq)
}

/// fjall's flush and compaction threads ("fjall:worker", started when the database
/// opens) get a lower CPU priority than request handling and the commit pipeline:
/// a compaction burst on a machine with few cores otherwise starves the async
/// workers for a second at a time. They catch up when requests leave room, and
/// fjall's own write stalls still hold writers back if they fall far behind.
/// Best effort: only on Linux, where a thread's nice value is its own.
fn lower_background_priority() {
    #[cfg(target_os = "linux")]
    {
        const NICE: libc::c_int = 10;
        let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
            return;
        };
        for task in tasks.flatten() {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if !comm.starts_with("fjall") {
                continue;
            }
            let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else {
                continue;
            };
            // SAFETY: setpriority only reads its integer arguments; a thread that
            // has exited meanwhile makes it fail with ESRCH, which is ignored.
            let _ = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, NICE) };
        }
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

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks cannot leave the guarded data inconsistent
    // (each critical section is a single update), so poisoning is ignored.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Drop for FjallStore {
    fn drop(&mut self) {
        // Closing the queue ends the commit thread once it has drained it, which
        // ends the sync and apply threads likewise; then the checkpointer takes a
        // last checkpoint.
        lock(&self.shared.submit).take();
        for handle in self.threads.drain(..) {
            // A panic there has already been reported by the thread itself.
            let _ = handle.join();
        }
        if let Some((stop, handle)) = self.checkpointer.take() {
            drop(stop);
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
        let start = self.shared.enter();
        // Taken after reading `applied`, so it contains at least every group up to
        // `start` (it may contain later ones: that only makes conflicts stricter).
        let snapshot = self.shared.db.snapshot();
        Ok(Box::new(FjallTxn {
            shared: Arc::clone(&self.shared),
            snapshot,
            start,
            registered: true,
            pending: Pending::default(),
        }))
    }
}

fn backend_error(err: fjall::Error) -> Error {
    Error::Unavailable(format!("fjall: {err}"))
}

/// A transaction on the fjall store.
struct FjallTxn {
    shared: Arc<Shared>,
    snapshot: Snapshot,
    /// The last group applied when it began.
    start: u64,
    /// False once it left the running set (or handed that to the commit thread).
    registered: bool,
    /// Buffered writes and locks.
    pending: Pending,
}

impl FjallTxn {
    fn read(&self, key: &[u8]) -> Result<Option<Value>> {
        if let Some(pending) = self.pending.writes.get(key) {
            return Ok(pending.clone());
        }
        let value = self
            .snapshot
            .get(&self.shared.keyspace, key)
            .map_err(backend_error)?;
        Ok(value.map(|v| v.to_vec()))
    }

    fn finish(&mut self) {
        if self.registered {
            self.registered = false;
            self.shared.leave(self.start);
        }
    }
}

#[async_trait]
impl Transaction for FjallTxn {
    async fn get(&mut self, key: &[u8]) -> Result<Option<Value>> {
        self.read(key)
    }

    async fn batch_get(&mut self, keys: &[Key]) -> Result<Vec<Option<Value>>> {
        keys.iter().map(|key| self.read(key)).collect()
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
        let iter = self
            .snapshot
            .range::<&[u8], _>(&self.shared.keyspace, bounds(range));
        let pending = self.pending.writes.range::<[u8], _>(bounds(range));
        let merged = match order {
            ScanOrder::Forward => merge(iter.map(|g| g.into_inner()), pending, order, limit),
            ScanOrder::Reverse => merge(
                iter.rev().map(|g| g.into_inner()),
                pending.rev(),
                order,
                limit,
            ),
        };
        merged.map_err(backend_error)
    }

    async fn get_for_update(&mut self, key: &[u8]) -> Result<Option<Value>> {
        self.pending.lock(key);
        self.read(key)
    }

    async fn put(&mut self, key: Key, value: Value) -> Result<()> {
        self.pending.put(key, value)
    }

    async fn delete(&mut self, key: Key) -> Result<()> {
        self.pending.delete(key);
        Ok(())
    }

    async fn commit(mut self: Box<Self>) -> Result<()> {
        if self.pending.is_empty() {
            // Everything visible is already durable: nothing to wait for.
            self.finish();
            return Ok(());
        }
        if let Err(err) = self.shared.check_failed() {
            self.finish();
            return Err(err);
        }
        let (reply, answer) = oneshot::channel();
        let request = CommitRequest {
            start: self.start,
            pending: std::mem::take(&mut self.pending),
            reply,
        };
        // From here the commit thread leaves the running set for this transaction,
        // after its conflict check.
        self.registered = false;
        let refused = match lock(&self.shared.submit).as_ref() {
            Some(queue) => queue.send(request).err().map(|e| e.0),
            None => Some(request),
        };
        if refused.is_some() {
            self.shared.leave(self.start);
            return Err(Error::Unavailable("the store is closing".into()));
        }
        answer
            .await
            .map_err(|_| Error::Undetermined("the store closed during the commit".into()))?
    }

    async fn rollback(mut self: Box<Self>) -> Result<()> {
        // Writes were only buffered, and everything read was durable.
        self.finish();
        Ok(())
    }
}

impl Drop for FjallTxn {
    // A transaction dropped without commit or rollback (a cancelled request) must
    // leave the running set, or the commit thread would keep its conflict history.
    fn drop(&mut self) {
        self.finish();
    }
}
