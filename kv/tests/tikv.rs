//! Runs the backend conformance suite, plus TiKV-specific checks, against a real
//! TiKV cluster named by `ROSSBY_TEST_PD` (comma-separated `host:port` placement
//! driver endpoints). Without it every cluster test prints
//! `skipped: set ROSSBY_TEST_PD` and passes.
//!
//! The cluster is shared between runs and between concurrently running tests, so
//! every test works under its own random key prefix and deletes what it wrote.

mod conformance;

use rossby_kv::tikv::{TikvConfig, TikvStore};
use rossby_kv::{Error, Key, Kv, KvStore, Transaction};
use std::sync::Arc;
use std::time::Duration;

/// A store on the test cluster, or `None` when no cluster is configured.
async fn connect() -> Option<TikvStore> {
    let Some(endpoints) = rossby_kv::tikv::test_endpoints_from_env() else {
        // Both streams: libtest captures stdout of passing tests, CI logs stderr.
        eprintln!("skipped: set ROSSBY_TEST_PD");
        println!("skipped: set ROSSBY_TEST_PD");
        return None;
    };
    let cfg = TikvConfig::new(endpoints);
    match TikvStore::connect(cfg).await {
        Ok(store) => Some(store),
        // A configured but unreachable cluster is a failure, not a skip.
        Err(err) => panic!("ROSSBY_TEST_PD is set but TiKV is unreachable: {err}"),
    }
}

/// The conformance suite's store factory.
async fn make_store() -> Option<Kv> {
    Some(Arc::new(connect().await?))
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

/// Optimistic `get_for_update` locks the key: a concurrent commit to it makes our
/// commit fail with `Error::Conflict` even though we never wrote the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optimistic_get_for_update_conflicts_at_commit() {
    let Some(kv) = connect().await else {
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

/// A transaction dropped without commit or rollback (a cancelled request) leaves
/// nothing on TiKV: its write is invisible and the next writer of the key commits
/// without waiting for a lock or conflicting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_transaction_writes_nothing_and_blocks_nobody() {
    let Some(kv) = connect().await else {
        return;
    };
    let k = test_key("dropped");
    let mut dropped = begin(&kv).await;
    dropped.put(k.clone(), b"never".to_vec()).await.unwrap();
    drop(dropped);

    let mut next = begin(&kv).await;
    assert_eq!(
        next.get(&k).await.unwrap(),
        None,
        "the dropped write is invisible"
    );
    next.put(k.clone(), b"next".to_vec()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), next.commit())
        .await
        .expect("nothing should hold a lock on the key")
        .unwrap();
    cleanup(&kv, &[k]).await;
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
