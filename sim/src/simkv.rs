//! `SimKv`: the store every simulated gateway talks to. It wraps the memory
//! backend (TiKV's snapshot isolation, write skew included) and adds, before
//! every KV call, a yield point and a seeded chance of a fault.
//!
//! The yield point returns `Pending` once and wakes its task at once: the
//! operation goes back to the scheduler, which picks the next operation to poll
//! with the seeded generator. So transactions of different operations interleave
//! at every read, write and commit, in an order the seed fixes.
//!
//! Faults, drawn from the same generator:
//! - reads fail with `Conflict` (the retry helper re-runs the transaction);
//! - a commit fails with `Conflict`, or with `Undetermined` either before it is
//!   applied or after: the caller cannot tell which, and must treat the outcome
//!   as unknown (re-issue idempotently, or record a "maybe").
//!
//! After a commit the transaction yields once more, so a crash of its gateway can
//! also land between a commit that was applied and the reply to it. A
//! transaction dropped mid-way (its gateway crashed) is rolled back by the memory
//! backend.

use crate::control::{CommitFault, Control};
use async_trait::async_trait;
use rossby_storage::kv::{Error as KvError, Result as KvResult};
use rossby_storage::{Key, KeyRange, Kv, KvPair, KvStore, ScanOrder, Transaction, Value};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// Returns `Pending` once (waking its task immediately), then `Ready`.
#[derive(Default)]
pub struct YieldPoint {
    yielded: bool,
}

impl Future for YieldPoint {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.yielded {
            Poll::Ready(())
        } else {
            self.yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

/// The simulated store: a wrapped store plus yield points and seeded faults.
pub struct SimKv {
    inner: Kv,
    control: Arc<Control>,
}

impl SimKv {
    /// Wraps `inner`; faults are drawn from `control`.
    pub fn new(inner: Kv, control: Arc<Control>) -> Self {
        SimKv { inner, control }
    }
}

#[async_trait]
impl KvStore for SimKv {
    fn backend(&self) -> &'static str {
        "sim"
    }

    async fn begin(&self) -> KvResult<Box<dyn Transaction>> {
        YieldPoint::default().await;
        let inner = self.inner.begin().await?;
        Ok(Box::new(SimTxn {
            inner,
            control: Arc::clone(&self.control),
        }))
    }
}

struct SimTxn {
    inner: Box<dyn Transaction>,
    control: Arc<Control>,
}

/// Tags folded into the run digest for each KV call.
#[derive(Clone, Copy)]
enum Call {
    Get = 1,
    BatchGet,
    Scan,
    GetForUpdate,
    Put,
    Delete,
    Commit,
    Rollback,
}

/// The yield point before a call, recorded in the digest. (A free function on
/// the control, not a method: a shared borrow of the whole transaction would
/// make the futures `!Send`.)
async fn point(control: &Control, call: Call, key: &[u8]) {
    YieldPoint::default().await;
    let mut event = Vec::with_capacity(key.len() + 1);
    event.push(call as u8);
    event.extend_from_slice(key);
    control.record(&event);
}

/// The yield point before a read, which may fail with an injected conflict.
async fn read_point(control: &Control, call: Call, key: &[u8]) -> KvResult<()> {
    point(control, call, key).await;
    if control.read_fault() {
        return Err(KvError::Conflict("injected read conflict".into()));
    }
    Ok(())
}

#[async_trait]
impl Transaction for SimTxn {
    async fn get(&mut self, key: &[u8]) -> KvResult<Option<Value>> {
        read_point(&self.control, Call::Get, key).await?;
        self.inner.get(key).await
    }

    async fn batch_get(&mut self, keys: &[Key]) -> KvResult<Vec<Option<Value>>> {
        let first = keys.first().map_or(&[][..], Vec::as_slice);
        read_point(&self.control, Call::BatchGet, first).await?;
        self.inner.batch_get(keys).await
    }

    async fn scan(
        &mut self,
        range: &KeyRange,
        limit: usize,
        order: ScanOrder,
    ) -> KvResult<Vec<KvPair>> {
        read_point(&self.control, Call::Scan, &range.start).await?;
        self.inner.scan(range, limit, order).await
    }

    async fn get_for_update(&mut self, key: &[u8]) -> KvResult<Option<Value>> {
        read_point(&self.control, Call::GetForUpdate, key).await?;
        self.inner.get_for_update(key).await
    }

    async fn put(&mut self, key: Key, value: Value) -> KvResult<()> {
        point(&self.control, Call::Put, &key).await;
        self.inner.put(key, value).await
    }

    async fn delete(&mut self, key: Key) -> KvResult<()> {
        point(&self.control, Call::Delete, &key).await;
        self.inner.delete(key).await
    }

    async fn commit(self: Box<Self>) -> KvResult<()> {
        point(&self.control, Call::Commit, &[]).await;
        let SimTxn { inner, control } = *self;
        let fault = control.commit_fault();
        control.record(&[Call::Commit as u8, fault as u8]);
        let result = match fault {
            CommitFault::None => inner.commit().await,
            CommitFault::Conflict => {
                inner.rollback().await?;
                Err(KvError::Conflict("injected commit conflict".into()))
            }
            CommitFault::UndeterminedBefore => {
                inner.rollback().await?;
                Err(KvError::Undetermined("injected: commit not applied".into()))
            }
            CommitFault::UndeterminedAfter => {
                // Whatever the store answered, the caller only learns "unknown".
                let applied = inner.commit().await.is_ok();
                Err(KvError::Undetermined(format!(
                    "injected after the commit (applied: {applied})"
                )))
            }
        };
        // A crash may strike between the commit and its reply.
        YieldPoint::default().await;
        result
    }

    async fn rollback(self: Box<Self>) -> KvResult<()> {
        point(&self.control, Call::Rollback, &[]).await;
        self.inner.rollback().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::FaultRates;
    use rossby_storage::kv::memory::MemoryStore;

    fn kv(faults: FaultRates) -> (SimKv, Kv) {
        let memory: Kv = Arc::new(MemoryStore::new());
        let control = Arc::new(Control::new(1));
        control.set_faults(faults);
        (SimKv::new(Arc::clone(&memory), control), memory)
    }

    async fn read(kv: &Kv, key: &[u8]) -> Option<Value> {
        let mut txn = kv.begin().await.unwrap();
        let value = txn.get(key).await.unwrap();
        txn.rollback().await.unwrap();
        value
    }

    #[tokio::test]
    async fn without_faults_calls_pass_through() {
        let (sim, memory) = kv(FaultRates::none());
        let mut txn = sim.begin().await.unwrap();
        txn.put(b"k".to_vec(), b"v".to_vec()).await.unwrap();
        assert_eq!(txn.get(b"k").await.unwrap(), Some(b"v".to_vec()));
        txn.commit().await.unwrap();
        assert_eq!(read(&memory, b"k").await, Some(b"v".to_vec()));
    }

    #[tokio::test]
    async fn undetermined_after_applies_the_commit() {
        let (sim, memory) = kv(FaultRates {
            undetermined_after: 1.0,
            ..FaultRates::none()
        });
        let mut txn = sim.begin().await.unwrap();
        txn.put(b"k".to_vec(), b"v".to_vec()).await.unwrap();
        let err = txn.commit().await.unwrap_err();
        assert!(matches!(err, KvError::Undetermined(_)), "{err}");
        assert_eq!(read(&memory, b"k").await, Some(b"v".to_vec()));
    }

    #[tokio::test]
    async fn undetermined_before_and_conflicts_apply_nothing() {
        for faults in [
            FaultRates {
                undetermined_before: 1.0,
                ..FaultRates::none()
            },
            FaultRates {
                commit_conflict: 1.0,
                ..FaultRates::none()
            },
        ] {
            let (sim, memory) = kv(faults);
            let mut txn = sim.begin().await.unwrap();
            txn.put(b"k".to_vec(), b"v".to_vec()).await.unwrap();
            assert!(txn.commit().await.is_err());
            assert_eq!(read(&memory, b"k").await, None);
        }
    }

    #[tokio::test]
    async fn reads_fail_with_injected_conflicts() {
        let (sim, _) = kv(FaultRates {
            read_conflict: 1.0,
            ..FaultRates::none()
        });
        let mut txn = sim.begin().await.unwrap();
        assert!(matches!(txn.get(b"k").await, Err(KvError::Conflict(_))));
    }
}
