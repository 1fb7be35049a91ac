//! Deterministic simulation testing of Rossby's domain layer, in the spirit of
//! FoundationDB's simulator.
//!
//! # What one seed does
//! A seed fixes one run. The run builds a memory store (TiKV's snapshot
//! isolation, write skew included) wrapped in [`simkv::SimKv`], a small
//! population of accounts, and then lets several simulated gateways issue a few
//! hundred operations against it concurrently: one-to-one sends (batched, with
//! retries and deliberate duplicates), fetches and acknowledgements, device
//! add/authorize/remove, registration, account deletion and purge, expiry sweeps
//! with a clock that sometimes jumps past the retention period, KeyPackage
//! publish and claim, and MLS groups (create, compare-and-set Commits, leaves,
//! outbox delivery and group sends, as the gateway runs them). See
//! [`workload`] for the mix and [`ops`] for how each runs.
//!
//! # Determinism
//! Everything random comes from one seeded generator ([`control::Control`]):
//! which operation starts, which in-flight operation is polled next, every
//! injected fault, every id, every clock step. The run is one future on a
//! current-thread tokio runtime with a paused clock; no task is spawned. The
//! [`scheduler`] polls one ready operation at a time, picked with the
//! generator, and [`simkv::SimKv`] yields before every KV call, so transactions
//! interleave at every read, write and commit in an order the seed fixes. The
//! retry helper's back-off is set to zero (its jitter comes from the thread's
//! generator, which is not ours); the seeded interleaving varies the schedule
//! instead. A digest of every KV call and every trace line tells whether two
//! runs of a seed were identical.
//!
//! # Faults and timing
//! [`simkv::SimKv`] fails reads and commits with `Conflict`, and commits with
//! `Undetermined` either before or after applying them. The [`driver`] crashes
//! gateways: it drops their in-flight operations wherever they stand (the
//! backend rolls back their transactions; a commit may already be applied) and
//! starts the restarted gateway's recovery (resume purges and outboxes). It also
//! stalls gateways for a while and runs some operations slowly, so that one
//! transaction can stay open while others (a whole account deletion and purge,
//! say) run to completion: the races snapshot isolation allows need such
//! windows. Each seed also draws how many operations may be in flight (one to
//! eight) and whether deletes are bounded to three keys per transaction.
//! Operations re-issue what came back unknown, as clients do; the [`model`]
//! keeps what stays unknown as a "maybe" until the [`finale`] resolves it.
//!
//! # Invariants
//! Checked as answers arrive ([`model`]), against the raw store every few
//! operations ([`invariants::structure`]), and at the end, after the faults stop,
//! every maybe is resolved, every device is drained and everything has expired
//! ([`invariants::deliveries`], [`invariants::final_state`]). Each check names
//! the invariant it guards; a failing seed prints it with the trace of its last
//! operations and the command that replays it.
//!
//! # What it found
//! Two bugs of the domain layer that the simulation found are fixed and its
//! checks tolerate neither (docs/testing.md): a KeyPackage publish re-issued
//! after an unknown outcome stored again a package claimed in between, and the
//! groups of a deleted creator lost their ordering while the purge ran.

pub mod control;
pub mod driver;
pub mod finale;
pub mod ids;
pub mod invariants;
pub mod model;
pub mod ops;
pub mod payload;
pub mod scheduler;
pub mod simkv;
pub mod trace;
pub mod workload;
pub mod world;

use control::{Control, FaultRates};
use model::{Model, Violation};
use rossby_keyspace::{LookupHasher, Pepper, RegionId};
use rossby_storage::Kv;
use rossby_storage::kv::memory::MemoryStore;
use rossby_storage::tables::{Limits, Store};
use rossby_storage::{KvStore, RetryPolicy};
use std::cell::RefCell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;
use workload::Workload;
use world::World;

/// The clock at the start of every run (milliseconds since the Unix epoch).
pub const START_MS: u64 = 1_700_000_000_000;

/// Operations a seed runs unless told otherwise.
pub const DEFAULT_OPS: usize = 200;

/// How one run is shaped.
#[derive(Clone, Debug)]
pub struct Config {
    /// Operations started (crash recoveries included).
    pub ops: usize,
    /// Simulated gateways.
    pub gateways: usize,
    /// Most operations in flight at once (each seed draws its own bound up to this).
    pub max_in_flight: usize,
    /// Injected KV faults.
    pub faults: FaultRates,
    /// Chance per scheduling step that a gateway crashes.
    pub crash_rate: f64,
    /// Chance per scheduling step that a gateway stalls (its operations are not
    /// polled for a while, like a long pause or a slow link): what lets one
    /// transaction stay open while others run to completion.
    pub stall_rate: f64,
    /// Share of operations that run slowly (passed over while others can run,
    /// but for one step in twenty).
    pub slow_share: f64,
    /// Run the structural check every this many operations.
    pub check_every: usize,
    /// Trace lines kept for the report.
    pub trace_lines: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            ops: DEFAULT_OPS,
            gateways: 3,
            max_in_flight: 8,
            faults: FaultRates::standard(),
            crash_rate: 0.000_5,
            stall_rate: 0.002,
            slow_share: 0.1,
            check_every: 10,
            trace_lines: trace::KEPT,
        }
    }
}

/// A broken invariant with the trace that led to it.
#[derive(Clone, Debug)]
pub struct Failure {
    /// What broke.
    pub violation: Violation,
    /// The last trace lines, oldest first.
    pub trace: Vec<String>,
}

/// The outcome of one seed.
#[derive(Clone, Debug)]
pub struct SeedReport {
    /// The seed.
    pub seed: u64,
    /// Operations started.
    pub operations: u64,
    /// Digest of every KV call and trace line: equal for two runs of a seed.
    pub digest: u64,
    /// The first broken invariant, if any.
    pub failure: Option<Failure>,
    /// The last trace lines (as many as the config keeps).
    pub trace: Vec<String>,
}

/// The limits the simulation runs with: small, so that quotas, multi-step
/// purges, dedup windows and retention all come into play within a few hundred
/// operations. With `bounded_deletes`, acks, sweeps and purges delete at most
/// three keys per transaction (so they take many steps); without, they delete
/// everything they may at once, which lets the final check demand that
/// everything every device acknowledged is gone.
pub fn sim_limits(bounded_deletes: bool) -> Limits {
    Limits {
        max_devices_per_box: 4,
        max_key_packages_per_device: 4,
        retention_ms: 60_000,
        dedup_window_ms: 20_000,
        max_deletes_per_txn: if bounded_deletes { 3 } else { 1024 },
        ..Limits::default()
    }
}

/// Runs one seed.
pub fn run_seed(seed: u64, config: &Config) -> SeedReport {
    let control = Arc::new(Control::new(seed));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build();
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(err) => return setup_failure(seed, format!("no runtime: {err}")),
    };
    let world = match build_world(&control, config) {
        Ok(world) => Rc::new(world),
        Err(err) => return setup_failure(seed, err),
    };
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        runtime.block_on(simulate(&world, config))
    }));
    let operations = match outcome {
        Ok(ops) => ops,
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "a panic".into());
            world.fail("nothing panics", message);
            0
        }
    };
    let trace = world.trace.borrow().lines();
    let failure = world
        .model
        .borrow()
        .failure()
        .cloned()
        .map(|violation| Failure {
            violation,
            trace: trace.clone(),
        });
    SeedReport {
        seed,
        operations,
        digest: control.digest(),
        failure,
        trace,
    }
}

fn setup_failure(seed: u64, detail: String) -> SeedReport {
    SeedReport {
        seed,
        operations: 0,
        digest: 0,
        failure: Some(Failure {
            violation: Violation {
                invariant: "the simulation can be set up",
                detail,
            },
            trace: Vec::new(),
        }),
        trace: Vec::new(),
    }
}

fn build_world(control: &Arc<Control>, config: &Config) -> Result<World, String> {
    let memory: Kv = Arc::new(MemoryStore::new());
    let sim: Arc<dyn KvStore> =
        Arc::new(simkv::SimKv::new(Arc::clone(&memory), Arc::clone(control)));
    let hasher = LookupHasher::new(
        vec![Pepper {
            version: 1,
            secret: vec![7; 32],
        }],
        1,
    )
    .map_err(|e| format!("lookup hasher: {e}"))?;
    let limits = sim_limits(control.chance(0.5));
    let store = Store {
        kv: sim,
        // No back-off: its jitter would come from the thread's generator. The
        // deadline is out of reach because it is measured on the wall clock.
        retry: RetryPolicy {
            max_attempts: 8,
            base_backoff: Duration::ZERO,
            max_backoff: Duration::ZERO,
            deadline: Duration::from_secs(24 * 3600),
        },
        hasher,
        limits: limits.clone(),
    };
    Ok(World {
        store,
        raw: memory,
        control: Arc::clone(control),
        model: RefCell::new(Model::new(limits, START_MS)),
        trace: RefCell::new(trace::Trace::keeping(config.trace_lines)),
        regions: vec![RegionId(1), RegionId(2)],
    })
}

/// The whole run: setup, the concurrent phase, the final checks. Returns the
/// operations started.
async fn simulate(world: &Rc<World>, config: &Config) -> u64 {
    let mut workload = Workload::new();
    driver::populate(world, &mut workload).await;
    world.control.set_faults(config.faults);
    let started = driver::drive(world, &mut workload, config).await;
    world.control.set_faults(FaultRates::none());
    if !world.failed() {
        finale::finish(world).await;
    }
    started
}
