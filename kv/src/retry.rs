//! Re-running whole transactions on conflict.
//!
//! [`transact!`](crate::transact) begins a transaction, runs a body, commits, and on
//! [`Error::Conflict`] (from the body or from the commit) backs off with full jitter
//! and runs everything again, until the attempts or the deadline run out. Any other error ends the loop at once:
//! in particular [`Error::Undetermined`] is never retried blindly, because the first
//! commit may have been applied.

use crate::{Error, Transaction, TxnError};
use rand::Rng;
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

/// How hard [`transact!`](crate::transact) tries before giving up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Most runs of the body (at least one).
    pub max_attempts: u32,
    /// Upper bound of the first back-off; it doubles with each further attempt.
    pub base_backoff: Duration,
    /// Upper bound of any single back-off.
    pub max_backoff: Duration,
    /// No new attempt starts after this much time since the first one began.
    pub deadline: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 16,
            base_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(100),
            deadline: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// A policy that runs the body exactly once.
    pub fn once() -> Self {
        RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        }
    }

    /// The back-off ceiling before attempt `attempt + 1` (attempt counts from 1):
    /// `min(max_backoff, base_backoff * 2^(attempt-1))`.
    pub fn backoff_ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32
            .checked_shl(attempt.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.base_backoff
            .checked_mul(factor)
            .unwrap_or(self.max_backoff)
            .min(self.max_backoff)
    }

    /// A random back-off in `[0, backoff_ceiling(attempt)]` ("full jitter"), so
    /// transactions that conflicted with each other do not collide again in lockstep.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let ceiling = self.backoff_ceiling(attempt);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rand::rng().random_range(0..=nanos))
    }
}

/// Counters describing one transaction's attempts, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Attempts {
    /// Times the body ran.
    pub runs: u32,
    /// Conflicts seen (each one caused a retry or the final failure).
    pub conflicts: u32,
}

/// The retry loop's state: [`transact!`](crate::transact) runs a transaction body,
/// then hands the transaction and the body's result to [`Retry::finish`], which
/// commits or rolls back and says whether to run the body again.
///
/// The loop lives in a macro rather than a function taking a closure so that the
/// body is an ordinary `async` block of the caller: its future stays `Send`
/// whenever the caller's is, which higher-ranked async closures cannot promise.
#[derive(Debug)]
pub struct Retry<'p> {
    policy: &'p RetryPolicy,
    started: Instant,
    attempts: Attempts,
}

impl<'p> Retry<'p> {
    /// Starts counting attempts under `policy`.
    pub fn new(policy: &'p RetryPolicy) -> Self {
        Retry {
            policy,
            started: Instant::now(),
            attempts: Attempts::default(),
        }
    }

    /// Attempts so far.
    pub fn attempts(&self) -> Attempts {
        self.attempts
    }

    /// Ends one attempt: commits `txn` if the body succeeded, rolls it back
    /// otherwise. Returns `Break` with the final result, or `Continue` after the
    /// back-off when the attempt conflicted and the policy allows another one.
    pub async fn finish<T, E: TxnError>(
        &mut self,
        txn: Box<dyn Transaction>,
        result: Result<T, E>,
    ) -> ControlFlow<Result<T, E>> {
        self.attempts.runs += 1;
        let err: E = match result {
            Ok(value) => match txn.commit().await {
                Ok(()) => return ControlFlow::Break(Ok(value)),
                Err(err) => err.into(),
            },
            Err(err) => match txn.rollback().await {
                Ok(()) => err,
                // The body's error may carry what it read, which may not be
                // durable: report the rollback's failure instead.
                Err(rollback_err) => {
                    tracing::debug!(error = %err, "transaction body failed, then its rollback");
                    rollback_err.into()
                }
            },
        };
        let conflict = match err.into_retryable() {
            Ok(conflict) => conflict,
            Err(err) => return ControlFlow::Break(Err(err)),
        };
        self.attempts.conflicts += 1;
        let backoff = self.policy.backoff(self.attempts.runs);
        let out_of_attempts = self.attempts.runs >= self.policy.max_attempts.max(1);
        let out_of_time = self.started.elapsed() + backoff >= self.policy.deadline;
        if out_of_attempts || out_of_time {
            return ControlFlow::Break(Err(E::from(Error::RetriesExhausted {
                attempts: self.attempts.runs,
                last: Box::new(conflict),
            })));
        }
        tokio::time::sleep(backoff).await;
        ControlFlow::Continue(())
    }
}

/// Runs a transaction body, committing when it returns `Ok` and re-running the
/// whole transaction on [`Error::Conflict`] as the retry policy allows.
///
/// ```ignore
/// let seq = transact!(kv, &policy, |txn| {
///     let head = txn.get(b"next").await?;
///     txn.put(b"next".to_vec(), bump(head)).await?;
///     Ok(head)
/// })?;
/// let profile = transact!(@as DomainError, kv, &policy, |txn| load(txn).await)?;
/// ```
/// Both forms take a `&dyn KvStore` (or `Kv`) and a `&RetryPolicy`. The body of
/// the first ends in [`Error`]; the `@as` form names the error type of a layer
/// above (any [`TxnError`]). Inside the body `txn` is a `&mut dyn Transaction`,
/// `?` ends the attempt (rolling back), and the body may borrow anything from the
/// surrounding code. Evaluates to `Result<T, E>`.
#[macro_export]
macro_rules! transact {
    (@as $err:ty, $kv:expr, $policy:expr, |$txn:ident| $body:expr) => {
        // `match` keeps a temporary policy (`&RetryPolicy::default()`) alive.
        match $policy {
            policy => {
                let mut retry = $crate::retry::Retry::new(policy);
                loop {
                    let mut txn_box = match $crate::KvStore::begin(&*$kv).await {
                        Ok(txn) => txn,
                        Err(err) => break Err(<$err as ::std::convert::From<$crate::Error>>::from(err)),
                    };
                    let result: ::std::result::Result<_, $err> = async {
                        let $txn: &mut dyn $crate::Transaction = &mut *txn_box;
                        $body
                    }
                    .await;
                    match retry.finish(txn_box, result).await {
                        ::std::ops::ControlFlow::Break(result) => break result,
                        ::std::ops::ControlFlow::Continue(()) => {}
                    }
                }
            }
        }
    };
    ($kv:expr, $policy:expr, |$txn:ident| $body:expr) => {
        $crate::transact!(@as $crate::Error, $kv, $policy, |$txn| $body)
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemoryStore;
    use crate::{Kv, KvStore};
    use std::sync::Arc;

    #[test]
    fn backoff_ceiling_doubles_and_is_capped() {
        let p = RetryPolicy {
            base_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(10),
            ..RetryPolicy::default()
        };
        assert_eq!(p.backoff_ceiling(1), Duration::from_millis(1));
        assert_eq!(p.backoff_ceiling(2), Duration::from_millis(2));
        assert_eq!(p.backoff_ceiling(4), Duration::from_millis(8));
        assert_eq!(p.backoff_ceiling(5), Duration::from_millis(10));
        assert_eq!(p.backoff_ceiling(200), Duration::from_millis(10));
        for attempt in 1..50 {
            assert!(p.backoff(attempt) <= p.backoff_ceiling(attempt));
        }
    }

    #[tokio::test]
    async fn conflicts_are_retried_until_attempts_run_out() {
        let kv = MemoryStore::new();
        let policy = RetryPolicy {
            max_attempts: 3,
            ..RetryPolicy::default()
        };
        let mut runs = 0;
        let result: crate::Result<()> = crate::transact!(&kv, &policy, |_txn| {
            runs += 1;
            Err(Error::Conflict("forced".into()))
        });
        assert!(matches!(
            result,
            Err(Error::RetriesExhausted { attempts: 3, .. })
        ));
        assert_eq!(runs, 3);
    }

    #[tokio::test]
    async fn other_errors_end_the_loop_at_once() {
        let kv = MemoryStore::new();
        let mut runs = 0;
        let result: crate::Result<()> = crate::transact!(&kv, &RetryPolicy::default(), |_txn| {
            runs += 1;
            Err(Error::Undetermined("forced".into()))
        });
        assert!(matches!(result, Err(Error::Undetermined(_))));
        assert_eq!(runs, 1);
    }

    #[tokio::test]
    async fn a_body_that_succeeds_after_a_conflict_commits_once() {
        let kv = MemoryStore::new();
        let mut calls = 0u8;
        let value = crate::transact!(&kv, &RetryPolicy::default(), |txn| {
            calls += 1;
            txn.put(b"k".to_vec(), vec![calls]).await?;
            if calls < 2 {
                return Err(Error::Conflict("first run loses".into()));
            }
            Ok(calls)
        })
        .unwrap();
        assert_eq!(value, 2);
        let mut txn = kv.begin().await.unwrap();
        assert_eq!(txn.get(b"k").await.unwrap(), Some(vec![2]));
        txn.rollback().await.unwrap();
    }

    #[tokio::test]
    async fn retry_counts_attempts() {
        let policy = RetryPolicy::default();
        let kv = MemoryStore::new();
        let mut retry = Retry::new(&policy);
        let txn = kv.begin().await.unwrap();
        let step = retry
            .finish::<(), Error>(txn, Err(Error::Conflict("x".into())))
            .await;
        assert!(matches!(step, ControlFlow::Continue(())));
        let txn = kv.begin().await.unwrap();
        assert!(matches!(
            retry.finish::<_, Error>(txn, Ok(7)).await,
            ControlFlow::Break(Ok(7))
        ));
        assert_eq!(
            retry.attempts(),
            Attempts {
                runs: 2,
                conflicts: 1
            }
        );
    }

    #[tokio::test]
    async fn bodies_borrowing_locals_can_be_spawned() {
        let kv: Kv = Arc::new(MemoryStore::new());
        let handle = tokio::spawn(async move {
            let key = b"spawned".to_vec();
            let policy = RetryPolicy::default();
            crate::transact!(kv, &policy, |txn| txn.put(key.clone(), b"v".to_vec()).await)
        });
        handle.await.unwrap().unwrap();
    }
}
