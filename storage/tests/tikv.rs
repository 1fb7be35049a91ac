//! Runs the backend conformance suite, plus TiKV-specific checks, against a real
//! TiKV cluster named by `ROSSBY_TEST_PD` (comma-separated `host:port` placement
//! driver endpoints). Without it every cluster test prints
//! `skipped: set ROSSBY_TEST_PD` and passes.
//!
//! The cluster is shared between runs and between concurrently running tests, so
//! every test works under its own random key prefix and deletes what it wrote.
//! The conformance suite runs in optimistic mode, the one that provides the
//! snapshot-isolation contract of `KvStore`; pessimistic mode gets its own tests.

mod conformance;

use rossby_storage::kv::tikv::{TikvConfig, TikvStore, TikvTxnMode};
use rossby_storage::{Error, Key, Kv, KvStore, Transaction};
use std::sync::Arc;
use std::time::Duration;

/// The placement drivers of the test cluster, or `None` (after saying so) to skip.
fn pd_endpoints() -> Option<Vec<String>> {
    let endpoints: Vec<String> = std::env::var("ROSSBY_TEST_PD")
        .ok()?
        .split(',')
        .map(str::trim)
        .filter(|endpoint| !endpoint.is_empty())
        .map(str::to_owned)
        .collect();
    (!endpoints.is_empty()).then_some(endpoints)
}

/// A store in `mode` on the test cluster, or `None` when no cluster is configured.
async fn connect(mode: TikvTxnMode) -> Option<TikvStore> {
    let Some(endpoints) = pd_endpoints() else {
        // Both streams: libtest captures stdout of passing tests, CI logs stderr.
        eprintln!("skipped: set ROSSBY_TEST_PD");
        println!("skipped: set ROSSBY_TEST_PD");
        return None;
    };
    let cfg = TikvConfig::new(endpoints).with_mode(mode);
    match TikvStore::connect(cfg).await {
        Ok(store) => Some(store),
        // A configured but unreachable cluster is a failure, not a skip.
        Err(err) => panic!("ROSSBY_TEST_PD is set but TiKV is unreachable: {err}"),
    }
}

/// The conformance suite's store factory: optimistic transactions.
async fn make_store() -> Option<Kv> {
    Some(Arc::new(connect(TikvTxnMode::Optimistic).await?))
}

conformance::conformance_suite!(make_store, write_skew = conformance::WriteSkew::Allowed);

/// A key unique to this run and test.
fn test_key(name: &str) -> Key {
    let mut key = format!("tikv-test\0{name}\0").into_bytes();
    key.extend_from_slice(&rand::random::<[u8; 16]>());
    key
}

async fn begin(kv: &TikvStore) -> Box<dyn Transaction> {
    kv.begin().await.expect("begin")
}

/// Deletes `keys` so the shared cluster does not accumulate test data.
async fn cleanup(kv: &TikvStore, keys: &[Key]) {
    let mut txn = begin(kv).await;
    for key in keys {
        txn.delete(key.clone()).await.expect("delete");
    }
    txn.commit().await.expect("cleanup commit");
}

/// A pessimistic `get_for_update` that had to wait for another transaction's lock
/// fails with `Error::Conflict` once that transaction commits a write to the key
/// (TiKV wakes the waiter with a `PessimisticRetry` write conflict).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pessimistic_get_for_update_conflict_is_a_conflict() {
    let Some(kv) = connect(TikvTxnMode::Pessimistic).await else {
        return;
    };
    let kv = Arc::new(kv);
    let k = test_key("pessimistic-conflict");

    let mut holder = begin(&kv).await;
    assert_eq!(holder.get_for_update(&k).await.unwrap(), None);

    let waiter = tokio::spawn({
        let (kv, k) = (Arc::clone(&kv), k.clone());
        async move {
            let mut txn = begin(&kv).await;
            let result = txn.get_for_update(&k).await;
            txn.rollback().await.unwrap();
            result
        }
    });
    // Give the waiter time to reach TiKV and queue behind the holder's lock.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !waiter.is_finished(),
        "the waiter should be blocked on the lock"
    );

    holder.put(k.clone(), b"holder".to_vec()).await.unwrap();
    holder.commit().await.unwrap();

    let result = waiter.await.unwrap();
    assert!(
        matches!(result, Err(Error::Conflict(_))),
        "expected a conflict, got {result:?}"
    );
    cleanup(&kv, &[k]).await;
}

/// Optimistic `get_for_update` locks the key: a concurrent commit to it makes our
/// commit fail with `Error::Conflict` even though we never wrote the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optimistic_get_for_update_conflicts_at_commit() {
    let Some(kv) = connect(TikvTxnMode::Optimistic).await else {
        return;
    };
    let (locked, other) = (test_key("lock-only"), test_key("lock-only-other"));

    let mut reader = begin(&kv).await;
    assert_eq!(reader.get_for_update(&locked).await.unwrap(), None);

    let mut writer = begin(&kv).await;
    writer.put(locked.clone(), b"w".to_vec()).await.unwrap();
    writer.commit().await.unwrap();

    reader.put(other.clone(), b"r".to_vec()).await.unwrap();
    let result = reader.commit().await;
    assert!(
        matches!(result, Err(Error::Conflict(_))),
        "expected a conflict, got {result:?}"
    );

    let mut check = begin(&kv).await;
    assert_eq!(
        check.get(&other).await.unwrap(),
        None,
        "nothing was written"
    );
    check.rollback().await.unwrap();
    cleanup(&kv, &[locked, other]).await;
}

/// In pessimistic mode `get_for_update` sees this transaction's own pending write
/// (the client alone would return the value stored on TiKV).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pessimistic_get_for_update_sees_own_writes() {
    let Some(kv) = connect(TikvTxnMode::Pessimistic).await else {
        return;
    };
    let k = test_key("pessimistic-own-write");
    let mut txn = begin(&kv).await;
    txn.put(k.clone(), b"mine".to_vec()).await.unwrap();
    assert_eq!(
        txn.get_for_update(&k).await.unwrap(),
        Some(b"mine".to_vec())
    );
    txn.delete(k.clone()).await.unwrap();
    assert_eq!(txn.get_for_update(&k).await.unwrap(), None);
    txn.rollback().await.unwrap();
}

/// Dropping a transaction that holds pessimistic locks rolls it back in the
/// background, so the next transaction gets the lock at once instead of waiting
/// out the lock's TTL (20 s) and failing with a conflict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_pessimistic_transaction_releases_its_locks() {
    let Some(kv) = connect(TikvTxnMode::Pessimistic).await else {
        return;
    };
    let k = test_key("dropped-lock");
    let mut dropped = begin(&kv).await;
    dropped.put(k.clone(), b"never".to_vec()).await.unwrap();
    drop(dropped);
    // Let the background rollback land first: a lock request queued behind the
    // lock would be woken with a write conflict (TiKV's legacy wake-up mode).
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut next = begin(&kv).await;
    let read = tokio::time::timeout(Duration::from_secs(5), next.get_for_update(&k))
        .await
        .expect("the dropped transaction's lock should be released promptly");
    assert_eq!(read.unwrap(), None, "the dropped write must not be visible");
    next.rollback().await.unwrap();
}

/// Without a reachable placement driver, `connect` fails with `Unavailable` and
/// names the endpoints. Needs no cluster: nothing listens on port 1.
#[tokio::test]
async fn unreachable_placement_driver_is_unavailable() {
    let cfg = TikvConfig::new(["127.0.0.1:1"]).with_request_timeout(Duration::from_millis(500));
    let err = TikvStore::connect(cfg).await.unwrap_err();
    assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
    assert!(err.to_string().contains("127.0.0.1:1"), "{err}");
}
