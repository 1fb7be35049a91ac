//! Storage benchmark: enqueue, fetch and acknowledge throughput of the domain tables
//! on the embedded fjall backend.
//!
//! Run with `cargo bench -p rossby-storage --bench storage-bench`. Phases:
//! 1. setup: boxes with two authorized devices each (not measured);
//! 2. durable enqueue (group commit): many tasks enqueue 1 KiB envelopes to random
//!    boxes through `Store::enqueue`;
//! 3. the same on a store opened with `Durability::NoSync`;
//! 4. fetch + ack: the durable store's queues are drained device by device;
//! 5. hot box: every task enqueues into one box, conflicts counted.
//!
//! Settings come from `ROSSBY_BENCH_SECS` (measured seconds per enqueue phase,
//! default 10), `ROSSBY_BENCH_BOXES` (default 10000) and `ROSSBY_BENCH_TASKS`
//! (concurrent enqueue tasks, default 64). The last line of stdout is
//! `storage-bench enqueue_durable_per_s=<N> enqueue_nosync_per_s=<M> ratio=<N/M>`.
//!
//! A last phase adds a figure that does not depend on the load of the machine:
//! the CPU instructions per durable enqueue, counted by Valgrind's callgrind over
//! a fixed workload (`ROSSBY_BENCH_INSTRUCTIONS`: `1` by default, `0` skips it,
//! `only` skips the timed phases). The benchmark
//! runs itself again under `valgrind --tool=callgrind` with instrumentation off;
//! that child sets up a store, warms up, and switches instrumentation on (a client
//! request, as `CALLGRIND_START_INSTRUMENTATION` does) only around
//! [`INSTR_ENQUEUES`] enqueues, so the count covers every thread of the process
//! during exactly that work. It is printed on its own line before the last one:
//! `storage-bench instructions_per_enqueue=<N> enqueues=<n> instructions=<total>`.
//! `ROSSBY_BENCH_CALLGRIND_OUT=<file>` keeps the callgrind profile there.

use async_trait::async_trait;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rossby_keyspace::{BoxId, DeviceId, LookupHasher, MessageId, Pepper, RegionId};
use rossby_storage::kv::fjall::{Durability, FjallConfig, FjallStats, FjallStore};
use rossby_storage::kv::retry::Retry;
use rossby_storage::tables::queue::{self, FetchLimits, NewEnvelope};
use rossby_storage::tables::records::Device;
use rossby_storage::tables::{Store, Tx, accounts, devices};
use rossby_storage::{
    Error, Key, KeyRange, Kv, KvPair, KvStore, ScanOrder, Transaction, Value, transact,
};
use std::collections::BTreeMap;
use std::io::Write;
use std::ops::ControlFlow;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tempfile::TempDir;

const REGION: RegionId = RegionId(1);
/// Payload size of every envelope.
const PAYLOAD_BYTES: usize = 1024;
/// Unmeasured time at the start of each enqueue phase.
const WARMUP: Duration = Duration::from_secs(1);
/// Boxes created per setup transaction.
const SETUP_BOXES_PER_TXN: usize = 250;
/// Concurrent setup transactions.
const SETUP_TASKS: usize = 8;
/// Concurrent tasks draining queues in the fetch + ack phase.
const FETCH_TASKS: usize = 16;
/// Names of the fjall backend's commit pipeline threads (see `kv/src/fjall/`).
const PIPELINE_THREADS: [&str; 4] = [
    "rossby-commit",
    "rossby-sync",
    "rossby-apply",
    "rossby-ckpt",
];

/// Instruction count: boxes set up in the child (not counted).
const INSTR_BOXES: usize = 1_000;
/// Instruction count: enqueues run before instrumentation starts (not counted).
const INSTR_WARMUP: usize = 200;
/// Instruction count: enqueues counted.
const INSTR_ENQUEUES: usize = 2_000;
/// Instruction count: concurrent enqueue tasks (fixed, whatever `ROSSBY_BENCH_TASKS`).
const INSTR_TASKS: usize = 64;
/// Set in the environment of the benchmark's own child run under callgrind.
const INSTR_CHILD_ENV: &str = "ROSSBY_BENCH_INSTRUCTIONS_CHILD";

/// Whether to count instructions (`ROSSBY_BENCH_INSTRUCTIONS`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Instructions {
    /// `0`: timed phases only.
    Off,
    /// `1` (default): timed phases, then the instruction count.
    Also,
    /// `only`: the instruction count only (the last line then shows zero rates).
    Only,
}

struct Config {
    secs: u64,
    boxes: usize,
    tasks: usize,
    instructions: Instructions,
}

fn env_or<T: FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(raw) => raw
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={raw:?} is not a valid number")),
        Err(_) => default,
    }
}

impl Config {
    fn from_env() -> Self {
        Config {
            secs: env_or("ROSSBY_BENCH_SECS", 10u64).max(1),
            boxes: env_or("ROSSBY_BENCH_BOXES", 10_000usize).max(1),
            tasks: env_or("ROSSBY_BENCH_TASKS", 64usize).max(1),
            instructions: match std::env::var("ROSSBY_BENCH_INSTRUCTIONS")
                .unwrap_or_default()
                .trim()
            {
                "0" => Instructions::Off,
                "" | "1" => Instructions::Also,
                "only" => Instructions::Only,
                other => panic!("ROSSBY_BENCH_INSTRUCTIONS={other:?}: expected 0, 1 or only"),
            },
        }
    }

    fn measure(&self) -> Duration {
        Duration::from_secs(self.secs)
    }

    /// The hot-box phase runs half as long as the other enqueue phases.
    fn hot_measure(&self) -> Duration {
        Duration::from_secs((self.secs / 2).max(1))
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A fresh envelope of [`PAYLOAD_BYTES`] random bytes from `sender`'s first
/// device, for `recipient`'s current device list.
fn random_envelope(rng: &mut impl Rng, sender: Target, recipient: Target) -> NewEnvelope {
    let mut payload = vec![0u8; PAYLOAD_BYTES];
    rng.fill(&mut payload[..]);
    NewEnvelope {
        sender: rossby_storage::tables::queue::Sender::Device {
            box_id: sender.id,
            device_id: sender.devices[0],
            identity_key: Some([7; 32]),
        },
        message_id: MessageId::new(),
        device_list_version: recipient.version,
        payload,
        wrapped_for: None,
    }
}

/// A recipient box of the benchmark.
#[derive(Clone, Copy)]
struct Target {
    id: BoxId,
    devices: [DeviceId; 2],
    /// The device-list version after both devices were added and authorized.
    version: u64,
}

/// A fjall-backed store in a temporary directory. Fields drop in order, so the
/// store (and its commit pipeline) is closed before the directory is removed.
struct BenchStore {
    fjall: Arc<FjallStore>,
    timing: Arc<Timing>,
    store: Store,
    _dir: TempDir,
}

/// Where transactions spend their time, summed over all transactions (nanoseconds).
/// Filled by [`Timed`], a pass-through wrapper around the fjall store.
#[derive(Default)]
struct Timing {
    begins: AtomicU64,
    begin_ns: AtomicU64,
    /// The first read of a transaction (where a backend that makes reads wait for a
    /// durable snapshot spends that wait).
    first_reads: AtomicU64,
    first_read_ns: AtomicU64,
    /// Commits of transactions that wrote (they wait for the group sync).
    write_commits: AtomicU64,
    write_commit_ns: AtomicU64,
}

#[derive(Clone, Copy, Default)]
struct TimingSnapshot {
    begins: u64,
    begin_ns: u64,
    first_reads: u64,
    first_read_ns: u64,
    write_commits: u64,
    write_commit_ns: u64,
}

impl Timing {
    fn snapshot(&self) -> TimingSnapshot {
        TimingSnapshot {
            begins: self.begins.load(Ordering::Relaxed),
            begin_ns: self.begin_ns.load(Ordering::Relaxed),
            first_reads: self.first_reads.load(Ordering::Relaxed),
            first_read_ns: self.first_read_ns.load(Ordering::Relaxed),
            write_commits: self.write_commits.load(Ordering::Relaxed),
            write_commit_ns: self.write_commit_ns.load(Ordering::Relaxed),
        }
    }
}

fn add_elapsed(count: &AtomicU64, sum: &AtomicU64, since: Instant) {
    count.fetch_add(1, Ordering::Relaxed);
    sum.fetch_add(since.elapsed().as_nanos() as u64, Ordering::Relaxed);
}

/// A pass-through store that times `begin`, the first read and write commits.
struct Timed {
    inner: Arc<FjallStore>,
    timing: Arc<Timing>,
}

#[async_trait]
impl KvStore for Timed {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    async fn begin(&self) -> rossby_storage::kv::Result<Box<dyn Transaction>> {
        let started = Instant::now();
        let inner = self.inner.begin().await?;
        add_elapsed(&self.timing.begins, &self.timing.begin_ns, started);
        Ok(Box::new(TimedTxn {
            inner,
            timing: Arc::clone(&self.timing),
            read: false,
            wrote: false,
        }))
    }
}

struct TimedTxn {
    inner: Box<dyn Transaction>,
    timing: Arc<Timing>,
    read: bool,
    wrote: bool,
}

impl TimedTxn {
    fn first_read_done(&mut self, started: Instant) {
        if !self.read {
            self.read = true;
            add_elapsed(
                &self.timing.first_reads,
                &self.timing.first_read_ns,
                started,
            );
        }
    }
}

#[async_trait]
impl Transaction for TimedTxn {
    async fn get(&mut self, key: &[u8]) -> rossby_storage::kv::Result<Option<Value>> {
        let started = Instant::now();
        let value = self.inner.get(key).await;
        self.first_read_done(started);
        value
    }

    async fn scan(
        &mut self,
        range: &KeyRange,
        limit: usize,
        order: ScanOrder,
    ) -> rossby_storage::kv::Result<Vec<KvPair>> {
        let started = Instant::now();
        let pairs = self.inner.scan(range, limit, order).await;
        self.first_read_done(started);
        pairs
    }

    async fn get_for_update(&mut self, key: &[u8]) -> rossby_storage::kv::Result<Option<Value>> {
        let started = Instant::now();
        let value = self.inner.get_for_update(key).await;
        self.first_read_done(started);
        value
    }

    async fn put(&mut self, key: Key, value: Value) -> rossby_storage::kv::Result<()> {
        self.wrote = true;
        self.inner.put(key, value).await
    }

    async fn delete(&mut self, key: Key) -> rossby_storage::kv::Result<()> {
        self.wrote = true;
        self.inner.delete(key).await
    }

    async fn commit(self: Box<Self>) -> rossby_storage::kv::Result<()> {
        let started = Instant::now();
        let result = self.inner.commit().await;
        if self.wrote {
            add_elapsed(
                &self.timing.write_commits,
                &self.timing.write_commit_ns,
                started,
            );
        }
        result
    }

    async fn rollback(self: Box<Self>) -> rossby_storage::kv::Result<()> {
        self.inner.rollback().await
    }
}

/// A store in a fresh temporary directory; `timed` puts the [`Timed`] wrapper
/// between the domain code and fjall (the timed phases report what it measures).
fn open_store(durability: Durability, timed: bool) -> BenchStore {
    let dir = TempDir::new().expect("create temp dir");
    let mut config = FjallConfig::new(dir.path());
    config.durability = durability;
    let fjall = Arc::new(FjallStore::open(config).expect("open fjall store"));
    let timing = Arc::new(Timing::default());
    let kv: Kv = if timed {
        Arc::new(Timed {
            inner: Arc::clone(&fjall),
            timing: Arc::clone(&timing),
        })
    } else {
        Arc::clone(&fjall) as Kv
    };
    let hasher = LookupHasher::new(
        vec![Pepper {
            version: 1,
            secret: vec![7; 32],
        }],
        1,
    )
    .expect("lookup hasher");
    BenchStore {
        fjall,
        timing,
        store: Store::new(kv, hasher),
        _dir: dir,
    }
}

fn device_record() -> Device {
    Device {
        identity_key: vec![1; 32],
        // X25519 (32 bytes) + ML-KEM-768 (1184 bytes) public keys.
        encryption_key: vec![2; 32 + 1184],
        credential_version: 1,
        label: "bench".into(),
        ..Device::default()
    }
}

/// Creates `n` boxes with two authorized devices each, in batched transactions.
async fn setup(store: &Store, n: usize) -> Arc<Vec<Target>> {
    let mut targets: Vec<Target> = (0..n)
        .map(|_| Target {
            id: BoxId::new(REGION),
            devices: [DeviceId::new(), DeviceId::new()],
            version: 0,
        })
        .collect();
    let chunks: Arc<Vec<Vec<Target>>> = Arc::new(
        targets
            .chunks(SETUP_BOXES_PER_TXN)
            .map(<[Target]>::to_vec)
            .collect(),
    );
    let next = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::new();
    for _ in 0..SETUP_TASKS {
        let (store, chunks, next) = (store.clone(), Arc::clone(&chunks), Arc::clone(&next));
        handles.push(tokio::spawn(async move {
            let mut done = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(chunk) = chunks.get(i) else {
                    return done;
                };
                let now = now_ms();
                let record = device_record();
                let versions = transact!(store, |txn| {
                    let mut versions = Vec::with_capacity(chunk.len());
                    for target in chunk {
                        accounts::create_box(txn, target.id, now).await?;
                        let mut version = 0;
                        for device in target.devices {
                            devices::add(txn, &store.limits, target.id, device, &record, now)
                                .await?;
                            version = devices::authorize(txn, target.id, device, now).await?;
                        }
                        versions.push(version);
                    }
                    Ok(versions)
                })
                .expect("setup transaction");
                done.push((i, versions));
            }
        }));
    }
    for handle in handles {
        for (chunk, versions) in handle.await.expect("setup task") {
            for (j, version) in versions.into_iter().enumerate() {
                targets[chunk * SETUP_BOXES_PER_TXN + j].version = version;
            }
        }
    }
    // Sanity check: what a sender would read is what we recorded.
    let probe = targets[n / 2];
    let (version, list) =
        transact!(store, |txn| devices::recipients(txn, probe.id).await).expect("read recipients");
    assert_eq!(
        version, probe.version,
        "device-list version of the probe box"
    );
    assert_eq!(list.len(), 2, "authorized devices of the probe box");
    Arc::new(targets)
}

/// CPU time of this process (user + system), from `/proc/self/stat`.
fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14, 15.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // USER_HZ is 100 on every mainstream Linux configuration.
    Some(Duration::from_millis((utime + stime) * 10))
}

/// Machine-wide CPU time from `/proc/stat`: (busy, iowait, steal), so a report can
/// show how much of the machine other processes and the hypervisor took.
fn machine_cpu() -> Option<(Duration, Duration, Duration)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    let tick = |t: u64| Duration::from_millis(t * 10);
    // user nice system idle iowait irq softirq steal
    let busy = v.first()? + v.get(1)? + v.get(2)? + v.get(5)? + v.get(6)?;
    Some((tick(busy), tick(*v.get(4)?), tick(*v.get(7)?)))
}

/// CPU time and voluntary context switches of one thread.
#[derive(Clone, Copy, Debug, Default)]
struct ThreadStats {
    cpu: Duration,
    voluntary_switches: u64,
}

/// The stats of each commit pipeline thread, in [`PIPELINE_THREADS`] order.
fn pipeline_stats() -> Option<[ThreadStats; 4]> {
    let mut out = [ThreadStats::default(); 4];
    for entry in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let path = entry.path();
        let Ok(comm) = std::fs::read_to_string(path.join("comm")) else {
            continue;
        };
        let Some(slot) = PIPELINE_THREADS.iter().position(|n| *n == comm.trim()) else {
            continue;
        };
        let schedstat = std::fs::read_to_string(path.join("schedstat")).ok()?;
        let cpu_ns: u64 = schedstat.split_whitespace().next()?.parse().ok()?;
        let status = std::fs::read_to_string(path.join("status")).ok()?;
        let voluntary_switches = status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))?
            .trim()
            .parse()
            .ok()?;
        out[slot] = ThreadStats {
            cpu: Duration::from_nanos(cpu_ns),
            voluntary_switches,
        };
    }
    Some(out)
}

/// Resource use over an interval of a phase.
struct Usage {
    wall: Instant,
    cpu: Option<Duration>,
    machine: Option<(Duration, Duration, Duration)>,
    threads: Option<[ThreadStats; 4]>,
    pipeline: FjallStats,
    timing: TimingSnapshot,
}

impl Usage {
    fn now(bench: &BenchStore) -> Self {
        Usage {
            wall: Instant::now(),
            cpu: process_cpu(),
            machine: machine_cpu(),
            threads: pipeline_stats(),
            pipeline: bench.fjall.stats(),
            timing: bench.timing.snapshot(),
        }
    }

    /// What happened since `self`, as indented report lines.
    fn report(&self, bench: &BenchStore) -> String {
        let end = Usage::now(bench);
        let wall = end.wall - self.wall;
        let mut lines = Vec::new();
        if let (Some(a), Some(b)) = (self.cpu, end.cpu) {
            let cpu = b.saturating_sub(a);
            lines.push(format!(
                "process CPU {:.1} s in {:.1} s wall ({:.2} of {} cores)",
                cpu.as_secs_f64(),
                wall.as_secs_f64(),
                cpu.as_secs_f64() / wall.as_secs_f64(),
                std::thread::available_parallelism().map_or(0, |n| n.get())
            ));
            if let (Some(ma), Some(mb)) = (self.machine, end.machine) {
                let per_s = |d: Duration| d.as_secs_f64() / wall.as_secs_f64();
                lines.push(format!(
                    "machine: other processes {:.2} cores, iowait {:.2}, hypervisor steal {:.2}",
                    per_s(mb.0.saturating_sub(ma.0).saturating_sub(cpu)),
                    per_s(mb.1.saturating_sub(ma.1)),
                    per_s(mb.2.saturating_sub(ma.2)),
                ));
            }
        }
        let (a, b) = (self.timing, end.timing);
        let avg = |n: u64, ns: u64| {
            if n == 0 {
                0.0
            } else {
                ns as f64 / n as f64 / 1e6
            }
        };
        lines.push(format!(
            "transactions: {} begun (avg begin {:.3} ms), first read avg {:.3} ms, {} write \
             commits (avg commit {:.3} ms, including the wait for durability)",
            b.begins - a.begins,
            avg(b.begins - a.begins, b.begin_ns - a.begin_ns),
            avg(
                b.first_reads - a.first_reads,
                b.first_read_ns - a.first_read_ns
            ),
            b.write_commits - a.write_commits,
            avg(
                b.write_commits - a.write_commits,
                b.write_commit_ns - a.write_commit_ns
            ),
        ));
        let (p, q) = (self.pipeline, end.pipeline);
        let (commits, syncs) = (q.commits - p.commits, q.syncs - p.syncs);
        lines.push(format!(
            "commit pipeline: {commits} commits made durable in {} groups with {syncs} \
             fdatasyncs ({:.1} commits per sync), {} conflicts",
            q.groups - p.groups,
            commits as f64 / syncs.max(1) as f64,
            q.conflicts - p.conflicts,
        ));
        if let (Some(a), Some(b)) = (self.threads, end.threads) {
            let per_thread: Vec<String> = PIPELINE_THREADS
                .iter()
                .zip(a.iter().zip(b.iter()))
                .map(|(name, (a, b))| {
                    format!(
                        "{name} {:.2} s / {} waits",
                        b.cpu.saturating_sub(a.cpu).as_secs_f64(),
                        b.voluntary_switches - a.voluntary_switches
                    )
                })
                .collect();
            lines.push(format!(
                "pipeline threads (CPU / voluntary context switches): {}",
                per_thread.join(", ")
            ));
        }
        lines
            .iter()
            .map(|l| format!("  {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Recipients {
    /// A uniformly random box per envelope, through `Store::enqueue`.
    Uniform,
    /// Always this box, through the retry loop spelled out so conflicts are visible.
    Hot(usize),
}

#[derive(Default)]
struct EnqueueStats {
    /// Successful enqueues completed inside the measured window.
    ok: u64,
    /// Successful enqueues over the whole phase (warm-up and stragglers included).
    ok_total: u64,
    /// Per-envelope errors (stale device list, recipient unavailable, ...).
    outcome_errors: BTreeMap<String, u64>,
    /// Transaction errors (after retries).
    txn_errors: BTreeMap<String, u64>,
    /// Transaction runs and conflicts (hot-box phase only).
    runs: u64,
    conflicts: u64,
    latencies: Vec<Duration>,
    measured: Duration,
}

impl EnqueueStats {
    fn merge(&mut self, other: EnqueueStats) {
        self.ok += other.ok;
        self.ok_total += other.ok_total;
        for (k, v) in other.outcome_errors {
            *self.outcome_errors.entry(k).or_default() += v;
        }
        for (k, v) in other.txn_errors {
            *self.txn_errors.entry(k).or_default() += v;
        }
        self.runs += other.runs;
        self.conflicts += other.conflicts;
        self.latencies.extend(other.latencies);
    }

    fn per_s(&self) -> f64 {
        self.ok as f64 / self.measured.as_secs_f64()
    }

    fn latency_summary(&mut self) -> String {
        if self.latencies.is_empty() {
            return "no completed operations".into();
        }
        self.latencies.sort_unstable();
        let n = self.latencies.len();
        let pct = |p: f64| self.latencies[((n as f64 * p) as usize).min(n - 1)];
        let mean = self.latencies.iter().sum::<Duration>() / n as u32;
        format!(
            "latency mean {:.2} ms, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            ms(mean),
            ms(pct(0.50)),
            ms(pct(0.99)),
            ms(self.latencies[n - 1])
        )
    }

    fn errors_summary(&self) -> String {
        let fmt = |m: &BTreeMap<String, u64>| {
            if m.is_empty() {
                "none".to_string()
            } else {
                m.iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        format!(
            "transaction errors: {}; envelope errors: {}",
            fmt(&self.txn_errors),
            fmt(&self.outcome_errors)
        )
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn error_kind(err: &Error) -> String {
    match err {
        Error::Kv(rossby_storage::kv::Error::RetriesExhausted { attempts, last }) => {
            format!("RetriesExhausted({attempts} attempts, last {last})")
        }
        other => {
            let debug = format!("{other:?}");
            debug
                .split(|c: char| !c.is_alphanumeric())
                .next()
                .unwrap_or("?")
                .to_string()
        }
    }
}

/// Runs `tasks` concurrent enqueue loops for `WARMUP + measure`; counts operations
/// that complete inside the measured window.
async fn enqueue_phase(
    store: &Store,
    targets: &Arc<Vec<Target>>,
    tasks: usize,
    measure: Duration,
    recipients: Recipients,
) -> EnqueueStats {
    let start = Instant::now();
    let measure_from = start + WARMUP;
    let end = measure_from + measure;
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let (store, targets) = (store.clone(), Arc::clone(targets));
        handles.push(tokio::spawn(async move {
            let mut rng = SmallRng::from_rng(&mut rand::rng());
            let mut stats = EnqueueStats::default();
            let n = targets.len();
            while Instant::now() < end {
                let recipient = match recipients {
                    Recipients::Uniform => targets[rng.random_range(0..n)],
                    Recipients::Hot(i) => targets[i],
                };
                let sender = targets[rng.random_range(0..n)];
                let envelopes = [random_envelope(&mut rng, sender, recipient)];
                let now = now_ms();
                let began = Instant::now();
                let result = match recipients {
                    Recipients::Uniform => store.enqueue(recipient.id, &envelopes, now).await,
                    Recipients::Hot(_) => {
                        // The retry loop of `transact!`, spelled out to read its
                        // attempt counters (`Store::enqueue` hides them).
                        let mut retry = Retry::new(&store.retry);
                        let result = loop {
                            let mut txn = match store.kv.begin().await {
                                Ok(txn) => txn,
                                Err(err) => break Err(err.into()),
                            };
                            let result = queue::enqueue(
                                &mut Tx::new(&mut *txn),
                                &store.limits,
                                recipient.id,
                                &envelopes,
                                now,
                            )
                            .await;
                            match retry.finish(txn, result).await {
                                ControlFlow::Break(result) => break result,
                                ControlFlow::Continue(()) => {}
                            }
                        };
                        let attempts = retry.attempts();
                        let done = Instant::now();
                        if done >= measure_from && done <= end {
                            stats.runs += u64::from(attempts.runs);
                            stats.conflicts += u64::from(attempts.conflicts);
                        }
                        result
                    }
                };
                let done = Instant::now();
                let counted = done >= measure_from && done <= end;
                let ok = match result {
                    Ok(outcomes) => match outcomes.into_iter().next() {
                        Some(Ok(_)) => true,
                        Some(Err(e)) => {
                            if counted {
                                *stats.outcome_errors.entry(error_kind(&e)).or_default() += 1;
                            }
                            false
                        }
                        None => false,
                    },
                    Err(e) => {
                        if counted {
                            *stats.txn_errors.entry(error_kind(&e)).or_default() += 1;
                        }
                        false
                    }
                };
                if ok {
                    stats.ok_total += 1;
                }
                if counted {
                    stats.latencies.push(done - began);
                    if ok {
                        stats.ok += 1;
                    }
                }
            }
            stats
        }));
    }
    let mut total = EnqueueStats {
        measured: measure,
        ..EnqueueStats::default()
    };
    for handle in handles {
        total.merge(handle.await.expect("enqueue task"));
    }
    total
}

#[derive(Default)]
struct DrainStats {
    delivered: u64,
    fetches: u64,
    acks: u64,
    gaps: u64,
    errors: BTreeMap<String, u64>,
}

/// Drains every device's queue: fetch a batch, ack its last envelope, repeat.
async fn drain_phase(store: &Store, targets: &Arc<Vec<Target>>, tasks: usize) -> DrainStats {
    let next = Arc::new(AtomicUsize::new(0));
    let bounds = FetchLimits {
        max_count: 100,
        max_bytes: 1024 * 1024,
    };
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let (store, targets, next) = (store.clone(), Arc::clone(targets), Arc::clone(&next));
        handles.push(tokio::spawn(async move {
            let mut stats = DrainStats::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(target) = targets.get(i) else {
                    return stats;
                };
                for device in target.devices {
                    loop {
                        stats.fetches += 1;
                        let fetched = match store.fetch(target.id, device, bounds).await {
                            Ok(f) => f,
                            Err(e) => {
                                *stats.errors.entry(error_kind(&e)).or_default() += 1;
                                break;
                            }
                        };
                        if fetched.gap.is_some() {
                            stats.gaps += 1;
                        }
                        let Some(last) = fetched.envelopes.last() else {
                            break;
                        };
                        stats.delivered += fetched.envelopes.len() as u64;
                        stats.acks += 1;
                        if let Err(e) = store.ack(target.id, device, last.seq, now_ms()).await {
                            *stats.errors.entry(error_kind(&e)).or_default() += 1;
                            break;
                        }
                        if !fetched.more() {
                            break;
                        }
                    }
                }
            }
        }));
    }
    let mut total = DrainStats::default();
    for handle in handles {
        let s = handle.await.expect("drain task");
        total.delivered += s.delivered;
        total.fetches += s.fetches;
        total.acks += s.acks;
        total.gaps += s.gaps;
        for (k, v) in s.errors {
            *total.errors.entry(k).or_default() += v;
        }
    }
    total
}

fn print_enqueue(label: &str, stats: &mut EnqueueStats, usage: String) {
    let latency = stats.latency_summary();
    println!(
        "{label}: {} enqueues/s ({} ok in {:.1} s); {latency}",
        stats.per_s().round() as u64,
        stats.ok,
        stats.measured.as_secs_f64(),
    );
    println!("  {}", stats.errors_summary());
    println!("{usage}");
}

async fn run(config: &Config) -> (f64, f64) {
    // --- Durable store: setup, enqueue, fetch + ack, hot box ---
    let durable = open_store(Durability::GroupCommit, true);
    let started = Instant::now();
    let targets = setup(&durable.store, config.boxes).await;
    println!(
        "[1] setup (durable, group commit): {} boxes with 2 authorized devices each in {:.1} s \
         (not measured)",
        config.boxes,
        started.elapsed().as_secs_f64()
    );

    let usage = Usage::now(&durable);
    let mut enq_durable = enqueue_phase(
        &durable.store,
        &targets,
        config.tasks,
        config.measure(),
        Recipients::Uniform,
    )
    .await;
    print_enqueue(
        &format!(
            "[2] durable enqueue ({} tasks, uniform over {} boxes, {} B payload)",
            config.tasks, config.boxes, PAYLOAD_BYTES
        ),
        &mut enq_durable,
        usage.report(&durable),
    );

    let usage = Usage::now(&durable);
    let started = Instant::now();
    let drained = drain_phase(&durable.store, &targets, FETCH_TASKS).await;
    let elapsed = started.elapsed();
    println!(
        "[4] fetch + ack (durable, {FETCH_TASKS} tasks, batches of 100): {:.0} envelopes/s \
         delivered per device ({} deliveries of {} enqueued envelopes x 2 devices, {} fetches, \
         {} acks, {} gaps) in {:.1} s; errors: {}",
        drained.delivered as f64 / elapsed.as_secs_f64(),
        drained.delivered,
        enq_durable.ok_total,
        drained.fetches,
        drained.acks,
        drained.gaps,
        elapsed.as_secs_f64(),
        if drained.errors.is_empty() {
            "none".to_string()
        } else {
            format!("{:?}", drained.errors)
        }
    );
    println!("{}", usage.report(&durable));
    if drained.delivered != 2 * enq_durable.ok_total {
        println!(
            "  WARNING: expected {} deliveries, got {}",
            2 * enq_durable.ok_total,
            drained.delivered
        );
    }

    let usage = Usage::now(&durable);
    let mut hot = enqueue_phase(
        &durable.store,
        &targets,
        config.tasks,
        config.hot_measure(),
        Recipients::Hot(0),
    )
    .await;
    print_enqueue(
        &format!("[5] hot box (durable, {} tasks, one box)", config.tasks),
        &mut hot,
        usage.report(&durable),
    );
    println!(
        "  {} transaction runs, {} conflicts ({:.2} conflicts per successful enqueue)",
        hot.runs,
        hot.conflicts,
        hot.conflicts as f64 / hot.ok.max(1) as f64
    );
    drop(durable);

    // --- No-sync store: same setup, enqueue ---
    let nosync = open_store(Durability::NoSync, true);
    let started = Instant::now();
    let targets = setup(&nosync.store, config.boxes).await;
    println!(
        "[1] setup (no sync): {} boxes in {:.1} s (not measured)",
        config.boxes,
        started.elapsed().as_secs_f64()
    );
    let usage = Usage::now(&nosync);
    let mut enq_nosync = enqueue_phase(
        &nosync.store,
        &targets,
        config.tasks,
        config.measure(),
        Recipients::Uniform,
    )
    .await;
    print_enqueue(
        &format!("[3] no-sync enqueue ({} tasks, uniform)", config.tasks),
        &mut enq_nosync,
        usage.report(&nosync),
    );
    drop(nosync);

    (enq_durable.per_s(), enq_nosync.per_s())
}

#[path = "support/valgrind.rs"]
mod valgrind;

/// Outcome of a fixed number of enqueues.
#[derive(Default)]
struct FixedRun {
    ok: u64,
    errors: BTreeMap<String, u64>,
}

/// Enqueues exactly `total` 1 KiB envelopes into random boxes with `tasks`
/// concurrent tasks, through `Store::enqueue`. The recipients, senders and
/// payloads come from seeded generators, so every run does the same work.
async fn fixed_enqueues(
    store: &Store,
    targets: &Arc<Vec<Target>>,
    total: usize,
    tasks: usize,
    seed: u64,
) -> FixedRun {
    let next = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::new();
    for task in 0..tasks {
        let (store, targets, next) = (store.clone(), Arc::clone(targets), Arc::clone(&next));
        handles.push(tokio::spawn(async move {
            let mut rng = SmallRng::seed_from_u64(seed.wrapping_mul(1_000_003) + task as u64);
            let mut run = FixedRun::default();
            let n = targets.len();
            while next.fetch_add(1, Ordering::Relaxed) < total {
                let recipient = targets[rng.random_range(0..n)];
                let sender = targets[rng.random_range(0..n)];
                let envelopes = [random_envelope(&mut rng, sender, recipient)];
                let error = match store.enqueue(recipient.id, &envelopes, now_ms()).await {
                    Ok(outcomes) => match outcomes.into_iter().next() {
                        Some(Ok(_)) => None,
                        Some(Err(e)) => Some(error_kind(&e)),
                        None => Some("no outcome".into()),
                    },
                    Err(e) => Some(error_kind(&e)),
                };
                match error {
                    None => run.ok += 1,
                    Some(kind) => *run.errors.entry(kind).or_default() += 1,
                }
            }
            run
        }));
    }
    let mut total_run = FixedRun::default();
    for handle in handles {
        let run = handle.await.expect("enqueue task");
        total_run.ok += run.ok;
        for (k, v) in run.errors {
            *total_run.errors.entry(k).or_default() += v;
        }
    }
    total_run
}

/// The child run under callgrind: setup and warm-up uninstrumented, then exactly
/// [`INSTR_ENQUEUES`] durable enqueues with instrumentation on. Prints one line
/// for the parent: `enqueues_ok=<n> errors=<e>`.
fn instructions_child() {
    if valgrind::running_on_valgrind() == 0 {
        eprintln!(
            "storage-bench: {INSTR_CHILD_ENV} is set but this process does not run under \
             Valgrind (instruction counts need x86-64 Linux and valgrind --tool=callgrind)"
        );
        std::process::exit(2);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let bench = open_store(Durability::GroupCommit, false);
        let targets = setup(&bench.store, INSTR_BOXES).await;
        let warm = fixed_enqueues(&bench.store, &targets, INSTR_WARMUP, INSTR_TASKS, 1).await;
        valgrind::start_instrumentation();
        let run = fixed_enqueues(&bench.store, &targets, INSTR_ENQUEUES, INSTR_TASKS, 2).await;
        valgrind::stop_instrumentation();
        let errors: u64 = run.errors.values().sum::<u64>() + warm.errors.values().sum::<u64>();
        if errors > 0 {
            eprintln!(
                "storage-bench: enqueue errors while counting: {:?}, warm-up: {:?}",
                run.errors, warm.errors
            );
        }
        println!("enqueues_ok={} errors={errors}", run.ok);
    });
    drop(runtime);
    std::io::stdout().flush().ok();
}

/// Runs this benchmark again under `valgrind --tool=callgrind` in child mode and
/// returns (instructions, enqueues counted).
fn count_instructions() -> Result<(u64, u64), String> {
    let dir = TempDir::new().map_err(|e| format!("temp dir: {e}"))?;
    let out = match std::env::var_os("ROSSBY_BENCH_CALLGRIND_OUT") {
        Some(path) => std::path::PathBuf::from(path),
        None => dir.path().join("callgrind.out"),
    };
    let log = dir.path().join("valgrind.log");
    let exe = std::env::current_exe().map_err(|e| format!("current exe: {e}"))?;
    let started = Instant::now();
    let command = valgrind::callgrind_command(&out, &log);
    let output = std::process::Command::new(&command[0])
        .args(&command[1..])
        .arg(&exe)
        .args(std::env::args_os().skip(1))
        .env(INSTR_CHILD_ENV, "1")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run valgrind (is it installed?): {e}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        let log = std::fs::read_to_string(&log).unwrap_or_default();
        return Err(format!(
            "the callgrind run failed ({}); its output:\n{stdout}\nvalgrind's log:\n{log}",
            output.status
        ));
    }
    let ok: u64 = stdout
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("enqueues_ok="))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("no result line in the callgrind run's output:\n{stdout}"))?;
    let instructions = valgrind::callgrind_total(&out)?;
    println!(
        "[6] instructions (callgrind, {INSTR_TASKS} tasks, {INSTR_ENQUEUES} durable enqueues \
         after {INSTR_WARMUP} uncounted, {INSTR_BOXES} boxes, all threads): {instructions} \
         instructions for {ok} enqueues in {:.1} s{}",
        started.elapsed().as_secs_f64(),
        if std::env::var_os("ROSSBY_BENCH_CALLGRIND_OUT").is_some() {
            format!("; profile in {}", out.display())
        } else {
            String::new()
        }
    );
    Ok((instructions, ok))
}

fn main() {
    if std::env::var_os(INSTR_CHILD_ENV).is_some() {
        instructions_child();
        return;
    }
    let config = Config::from_env();
    println!(
        "storage-bench: ROSSBY_BENCH_SECS={} ROSSBY_BENCH_BOXES={} ROSSBY_BENCH_TASKS={} \
         ROSSBY_BENCH_INSTRUCTIONS={} (warm-up {} s, hot box {} s, {} fetch tasks, {} B \
         payloads, temp dir {})",
        config.secs,
        config.boxes,
        config.tasks,
        match config.instructions {
            Instructions::Off => "0",
            Instructions::Also => "1",
            Instructions::Only => "only",
        },
        WARMUP.as_secs(),
        config.hot_measure().as_secs(),
        FETCH_TASKS,
        PAYLOAD_BYTES,
        std::env::temp_dir().display()
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let (durable, nosync) = if config.instructions == Instructions::Only {
        (0.0, 0.0)
    } else {
        runtime.block_on(run(&config))
    };
    drop(runtime);
    if config.instructions != Instructions::Off {
        match count_instructions() {
            Ok((instructions, ok)) => println!(
                "storage-bench instructions_per_enqueue={} enqueues={ok} \
                 instructions={instructions}",
                instructions / ok.max(1)
            ),
            Err(e) => {
                eprintln!("storage-bench: instruction count failed: {e}");
                println!("storage-bench instructions_per_enqueue=0 enqueues=0 instructions=0");
            }
        }
    }
    let ratio = if nosync > 0.0 { durable / nosync } else { 0.0 };
    println!(
        "storage-bench enqueue_durable_per_s={} enqueue_nosync_per_s={} ratio={ratio:.2}",
        durable.round() as u64,
        nosync.round() as u64
    );
    std::io::stdout().flush().ok();
}
