//! The one seeded random number generator of a run, the fault rates it draws
//! against, and the running digest of everything that happened.
//!
//! The generator sits behind a mutex because the KV wrapper that injects faults
//! must be `Send + Sync` like every [`KvStore`](rossby_storage::KvStore); the
//! simulation itself runs on one thread, so the lock is never contended. Every
//! random decision of a run (which operation starts, which one is polled, which
//! fault strikes, every id) is drawn from this one generator, in an order fixed
//! by the seed, which is what makes a seed replayable.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// How often each injected fault strikes (probabilities per KV call).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FaultRates {
    /// A read (`get`, `batch_get`, `scan`, `get_for_update`) fails with `Conflict`.
    pub read_conflict: f64,
    /// A commit fails with `Conflict` without applying anything.
    pub commit_conflict: f64,
    /// A commit fails with `Undetermined` without applying anything.
    pub undetermined_before: f64,
    /// A commit is applied, then reported `Undetermined`.
    pub undetermined_after: f64,
}

impl FaultRates {
    /// The rates a normal run uses: rare enough that most transactions succeed,
    /// frequent enough that every operation meets each fault many times over a
    /// few thousand seeds.
    pub fn standard() -> Self {
        FaultRates {
            read_conflict: 0.01,
            commit_conflict: 0.03,
            undetermined_before: 0.01,
            undetermined_after: 0.01,
        }
    }

    /// No faults at all (setup and the final checks).
    pub fn none() -> Self {
        FaultRates {
            read_conflict: 0.0,
            commit_conflict: 0.0,
            undetermined_before: 0.0,
            undetermined_after: 0.0,
        }
    }
}

/// What an injected commit fault does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommitFault {
    /// Commit normally.
    None,
    /// Roll back and report `Conflict`.
    Conflict,
    /// Roll back and report `Undetermined`.
    UndeterminedBefore,
    /// Apply the commit, then report `Undetermined`.
    UndeterminedAfter,
}

struct Inner {
    rng: StdRng,
    faults: FaultRates,
    digest: u64,
}

/// Shared by the scheduler, the operations and the KV wrapper of one run.
pub struct Control {
    inner: Mutex<Inner>,
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

impl Control {
    /// A control seeded with `seed`, with faults off.
    pub fn new(seed: u64) -> Self {
        Control {
            inner: Mutex::new(Inner {
                rng: StdRng::seed_from_u64(seed),
                faults: FaultRates::none(),
                digest: FNV_OFFSET,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing panics while the lock is held, and a poisoned generator is still
        // a generator.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` with the generator.
    pub fn with_rng<T>(&self, f: impl FnOnce(&mut StdRng) -> T) -> T {
        f(&mut self.lock().rng)
    }

    /// True with probability `p`.
    pub fn chance(&self, p: f64) -> bool {
        p > 0.0 && self.lock().rng.random_bool(p.min(1.0))
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            self.lock().rng.random_range(0..n)
        }
    }

    /// Replaces the fault rates.
    pub fn set_faults(&self, faults: FaultRates) {
        self.lock().faults = faults;
    }

    /// Whether this read fails with an injected conflict.
    pub fn read_fault(&self) -> bool {
        let mut inner = self.lock();
        let p = inner.faults.read_conflict;
        p > 0.0 && inner.rng.random_bool(p)
    }

    /// The fault, if any, this commit suffers.
    pub fn commit_fault(&self) -> CommitFault {
        let mut inner = self.lock();
        let f = inner.faults;
        let total = f.commit_conflict + f.undetermined_before + f.undetermined_after;
        if total <= 0.0 {
            return CommitFault::None;
        }
        let r: f64 = inner.rng.random();
        if r < f.commit_conflict {
            CommitFault::Conflict
        } else if r < f.commit_conflict + f.undetermined_before {
            CommitFault::UndeterminedBefore
        } else if r < total {
            CommitFault::UndeterminedAfter
        } else {
            CommitFault::None
        }
    }

    /// Folds `bytes` into the run's digest (FNV-1a): two runs of a seed must
    /// fold exactly the same events in the same order.
    pub fn record(&self, bytes: &[u8]) {
        let mut inner = self.lock();
        let mut h = inner.digest;
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(FNV_PRIME);
        }
        // A separator, so ("ab","c") and ("a","bc") differ.
        h ^= 0xff;
        inner.digest = h.wrapping_mul(FNV_PRIME);
    }

    /// The digest of everything recorded so far.
    pub fn digest(&self) -> u64 {
        self.lock().digest
    }
}
