//! The conformance suite every KV backend runs (memory, fjall, TiKV).
//!
//! Each case is a plain `pub async fn case_xxx(kv: Kv)` so it can be read and
//! debugged like any other code; [`conformance_suite!`] only stamps out one tokio
//! test per case. A backend's test file does:
//!
//! ```ignore
//! mod conformance;
//! async fn make_store() -> Option<Kv> { /* None (after printing why) skips */ }
//! conformance::conformance_suite!(make_store, write_skew = conformance::WriteSkew::Allowed);
//! ```
//!
//! Every case works under its own random 16-byte key prefix and deletes what it
//! wrote when it passes, because the TiKV cluster is shared between runs (and
//! between concurrently running cases). Consequently no case assumes the store is
//! empty: scans are always confined to the case's prefix, except the one that
//! checks unbounded ranges, which only asserts what the prefix guarantees.

use rossby_kv::{Error, Key, KvPair, RetryPolicy, Transaction, Value, transact};
use rossby_kv::{KeyRange, Kv, MAX_VALUE_BYTES, ScanOrder, prefix_end};
use std::time::Duration;

/// What a backend does when two transactions each read `x` and `y` and write a
/// different one of them (write skew).
// Each backend's test binary constructs only the variant it needs.
#[allow(dead_code)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteSkew {
    /// Snapshot isolation (TiKV, memory): only write-write conflicts abort, so both
    /// commit.
    Allowed,
    /// The backend also aborts on read-write conflicts (fjall): exactly one commits.
    Prevented,
}

/// Stamps out one `#[tokio::test]` per conformance case.
///
/// `$make` is an `async fn() -> Option<rossby_kv::Kv>`; `None` skips the case
/// (the function should print why, e.g. "no TiKV cluster configured"). Expects the
/// suite to be declared as `mod conformance;` at the root of the test crate.
#[macro_export]
macro_rules! conformance_suite {
    (@cases $make:path; $($test:ident => $case:ident,)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                let Some(kv) = $make().await else { return };
                $crate::conformance::$case(kv).await;
            }
        )*
    };
    ($make:path, write_skew = $ws:expr) => {
        $crate::conformance_suite!(@cases $make;
            snapshot_reads => case_snapshot_reads,
            read_your_writes => case_read_your_writes,
            write_write_conflict => case_write_write_conflict,
            blind_write_conflict => case_blind_write_conflict,
            sequential_writes_do_not_conflict => case_sequential_writes_do_not_conflict,
            get_for_update_conflict => case_get_for_update_conflict,
            no_lost_updates => case_no_lost_updates,
            scans => case_scans,
            unbounded_scans => case_unbounded_scans,
            rollback_discards_writes => case_rollback_discards_writes,
            dropped_transaction_discards_writes => case_dropped_transaction_discards_writes,
            batch_get => case_batch_get,
            large_values => case_large_values,
            many_keys => case_many_keys,
        );

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn write_skew() {
            let Some(kv) = $make().await else { return };
            $crate::conformance::case_write_skew(kv, $ws).await;
        }
    };
}
pub use conformance_suite;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// A fresh prefix for one case: a readable tag (to spot leftovers in a shared
/// cluster) followed by 16 random bytes.
pub fn unique_prefix() -> Vec<u8> {
    let mut prefix = b"conformance\0".to_vec();
    prefix.extend_from_slice(&rand::random::<[u8; 16]>());
    prefix
}

/// `prefix` followed by `suffix`.
pub fn key(prefix: &[u8], suffix: &[u8]) -> Key {
    let mut key = prefix.to_vec();
    key.extend_from_slice(suffix);
    key
}

/// Every key under `prefix`.
fn all(prefix: &[u8]) -> KeyRange {
    KeyRange::prefix(prefix)
}

async fn begin(kv: &Kv) -> Box<dyn Transaction> {
    kv.begin().await.expect("begin")
}

/// Commits `pairs` in one transaction.
async fn put_all(kv: &Kv, pairs: &[(Key, Value)]) {
    let mut txn = begin(kv).await;
    for (k, v) in pairs {
        txn.put(k.clone(), v.clone()).await.expect("put");
    }
    txn.commit().await.expect("commit");
}

/// Reads `key` in a fresh transaction.
async fn read(kv: &Kv, key: &[u8]) -> Option<Value> {
    let mut txn = begin(kv).await;
    let value = txn.get(key).await.expect("get");
    txn.rollback().await.expect("rollback");
    value
}

/// Scans in a fresh transaction.
async fn scan(kv: &Kv, range: &KeyRange, limit: usize, order: ScanOrder) -> Vec<KvPair> {
    let mut txn = begin(kv).await;
    let pairs = txn.scan(range, limit, order).await.expect("scan");
    txn.rollback().await.expect("rollback");
    pairs
}

/// Deletes everything under `prefix` so a shared cluster does not accumulate test
/// data. Only runs when the case passed (a failed case leaves its keys for
/// inspection).
async fn cleanup(kv: &Kv, prefix: &[u8]) {
    loop {
        let mut txn = begin(kv).await;
        let pairs = txn
            .scan(&all(prefix), 1_000, ScanOrder::Forward)
            .await
            .expect("cleanup scan");
        if pairs.is_empty() {
            txn.rollback().await.expect("cleanup rollback");
            return;
        }
        for (k, _) in pairs {
            txn.delete(k).await.expect("cleanup delete");
        }
        txn.commit().await.expect("cleanup commit");
    }
}

fn assert_conflict(result: rossby_kv::Result<()>, what: &str) {
    match result {
        Err(Error::Conflict(_)) => {}
        other => panic!("{what}: expected Error::Conflict, got {other:?}"),
    }
}

/// Asserts exactly one of two commit results is `Ok` and the other a conflict;
/// returns whether the first one won.
fn exactly_one_commits(
    first: rossby_kv::Result<()>,
    second: rossby_kv::Result<()>,
    what: &str,
) -> bool {
    match (first, second) {
        (Ok(()), Err(Error::Conflict(_))) => true,
        (Err(Error::Conflict(_)), Ok(())) => false,
        (a, b) => panic!("{what}: expected exactly one commit to conflict, got {a:?} and {b:?}"),
    }
}

fn pairs(prefix: &[u8], entries: &[(&[u8], &[u8])]) -> Vec<KvPair> {
    entries
        .iter()
        .map(|(k, v)| (key(prefix, k), v.to_vec()))
        .collect()
}

fn reversed(mut pairs: Vec<KvPair>) -> Vec<KvPair> {
    pairs.reverse();
    pairs
}

// ---------------------------------------------------------------------------
// Cases
// ---------------------------------------------------------------------------

/// A transaction begun before another commits does not see that commit (get and
/// scan, in both orders); one begun afterwards does.
pub async fn case_snapshot_reads(kv: Kv) {
    let p = unique_prefix();
    let (a, b, c) = (key(&p, b"a"), key(&p, b"b"), key(&p, b"c"));
    put_all(
        &kv,
        &[(a.clone(), b"a1".to_vec()), (c.clone(), b"c1".to_vec())],
    )
    .await;

    let mut old = begin(&kv).await;
    // Read before the concurrent commit too: a snapshot must not move after use.
    assert_eq!(old.get(&a).await.unwrap(), Some(b"a1".to_vec()));

    let mut writer = begin(&kv).await;
    writer.put(a.clone(), b"a2".to_vec()).await.unwrap();
    writer.put(b.clone(), b"b2".to_vec()).await.unwrap();
    writer.delete(c.clone()).await.unwrap();
    writer.commit().await.expect("writer commit");

    let before = pairs(&p, &[(b"a", b"a1"), (b"c", b"c1")]);
    assert_eq!(old.get(&a).await.unwrap(), Some(b"a1".to_vec()));
    assert_eq!(old.get(&b).await.unwrap(), None);
    assert_eq!(old.get(&c).await.unwrap(), Some(b"c1".to_vec()));
    assert_eq!(
        old.batch_get(&[a.clone(), b.clone(), c.clone()])
            .await
            .unwrap(),
        vec![Some(b"a1".to_vec()), None, Some(b"c1".to_vec())]
    );
    assert_eq!(
        old.scan(&all(&p), 10, ScanOrder::Forward).await.unwrap(),
        before
    );
    assert_eq!(
        old.scan(&all(&p), 10, ScanOrder::Reverse).await.unwrap(),
        reversed(before)
    );
    old.rollback().await.unwrap();

    let after = pairs(&p, &[(b"a", b"a2"), (b"b", b"b2")]);
    let mut new = begin(&kv).await;
    assert_eq!(new.get(&a).await.unwrap(), Some(b"a2".to_vec()));
    assert_eq!(new.get(&b).await.unwrap(), Some(b"b2".to_vec()));
    assert_eq!(new.get(&c).await.unwrap(), None);
    assert_eq!(
        new.scan(&all(&p), 10, ScanOrder::Forward).await.unwrap(),
        after
    );
    assert_eq!(
        new.scan(&all(&p), 10, ScanOrder::Reverse).await.unwrap(),
        reversed(after)
    );
    new.rollback().await.unwrap();
    cleanup(&kv, &p).await;
}

/// A transaction sees its own puts and deletes in get, batch_get and scans in both
/// orders, merged with committed data, with the scan limit applied after merging.
pub async fn case_read_your_writes(kv: Kv) {
    let p = unique_prefix();
    put_all(
        &kv,
        &pairs(
            &p,
            &[(b"a", b"a0"), (b"c", b"c0"), (b"e", b"e0"), (b"g", b"g0")],
        ),
    )
    .await;

    let mut txn = begin(&kv).await;
    txn.put(key(&p, b"b"), b"b1".to_vec()).await.unwrap(); // new key
    txn.put(key(&p, b"c"), b"c1".to_vec()).await.unwrap(); // overwrite
    txn.delete(key(&p, b"e")).await.unwrap(); // delete committed
    txn.delete(key(&p, b"x")).await.unwrap(); // delete missing
    txn.put(key(&p, b"d"), b"d1".to_vec()).await.unwrap();
    txn.delete(key(&p, b"d")).await.unwrap(); // put then delete
    txn.delete(key(&p, b"g")).await.unwrap();
    txn.put(key(&p, b"g"), b"g1".to_vec()).await.unwrap(); // delete then put
    txn.put(key(&p, b"h"), b"h1".to_vec()).await.unwrap();
    txn.put(key(&p, b"h"), b"h2".to_vec()).await.unwrap(); // put twice

    assert_eq!(txn.get(&key(&p, b"a")).await.unwrap(), Some(b"a0".to_vec()));
    assert_eq!(txn.get(&key(&p, b"b")).await.unwrap(), Some(b"b1".to_vec()));
    assert_eq!(txn.get(&key(&p, b"c")).await.unwrap(), Some(b"c1".to_vec()));
    assert_eq!(txn.get(&key(&p, b"d")).await.unwrap(), None);
    assert_eq!(txn.get(&key(&p, b"e")).await.unwrap(), None);
    assert_eq!(txn.get(&key(&p, b"g")).await.unwrap(), Some(b"g1".to_vec()));
    assert_eq!(txn.get(&key(&p, b"h")).await.unwrap(), Some(b"h2".to_vec()));
    assert_eq!(txn.get(&key(&p, b"x")).await.unwrap(), None);

    let expected = pairs(
        &p,
        &[
            (b"a", b"a0"),
            (b"b", b"b1"),
            (b"c", b"c1"),
            (b"g", b"g1"),
            (b"h", b"h2"),
        ],
    );
    assert_eq!(
        txn.scan(&all(&p), 100, ScanOrder::Forward).await.unwrap(),
        expected
    );
    assert_eq!(
        txn.scan(&all(&p), 100, ScanOrder::Reverse).await.unwrap(),
        reversed(expected.clone())
    );
    // Limits count merged results: the deleted "d" and "e" must not use up slots,
    // and the buffered "b" must take one.
    let range = KeyRange::new(key(&p, b"b"), key(&p, b"h"));
    assert_eq!(
        txn.scan(&range, 2, ScanOrder::Forward).await.unwrap(),
        pairs(&p, &[(b"b", b"b1"), (b"c", b"c1")])
    );
    assert_eq!(
        txn.scan(&range, 2, ScanOrder::Reverse).await.unwrap(),
        pairs(&p, &[(b"g", b"g1"), (b"c", b"c1")])
    );
    let range = KeyRange::new(key(&p, b"c"), key(&p, b"z"));
    assert_eq!(
        txn.scan(&range, 2, ScanOrder::Forward).await.unwrap(),
        pairs(&p, &[(b"c", b"c1"), (b"g", b"g1")])
    );
    txn.commit().await.expect("commit");

    // Committed exactly as seen from inside.
    assert_eq!(scan(&kv, &all(&p), 100, ScanOrder::Forward).await, expected);
    assert_eq!(read(&kv, &key(&p, b"e")).await, None);
    cleanup(&kv, &p).await;
}

/// Two concurrent transactions read then write the same key: exactly one commits,
/// the other fails with `Conflict` and leaves nothing behind; the winner's value
/// is stored.
pub async fn case_write_write_conflict(kv: Kv) {
    let p = unique_prefix();
    let (k, side_a, side_b) = (key(&p, b"k"), key(&p, b"side-a"), key(&p, b"side-b"));
    put_all(&kv, &[(k.clone(), b"0".to_vec())]).await;

    let mut a = begin(&kv).await;
    let mut b = begin(&kv).await;
    assert_eq!(a.get(&k).await.unwrap(), Some(b"0".to_vec()));
    assert_eq!(b.get(&k).await.unwrap(), Some(b"0".to_vec()));
    a.put(k.clone(), b"a".to_vec()).await.unwrap();
    a.put(side_a.clone(), b"a".to_vec()).await.unwrap();
    b.put(k.clone(), b"b".to_vec()).await.unwrap();
    b.put(side_b.clone(), b"b".to_vec()).await.unwrap();
    let first = a.commit().await;
    let second = b.commit().await;
    let a_won = exactly_one_commits(first, second, "read-then-write");

    let (winner, loser_side, winner_side) = if a_won {
        (b"a".to_vec(), &side_b, &side_a)
    } else {
        (b"b".to_vec(), &side_a, &side_b)
    };
    assert_eq!(read(&kv, &k).await, Some(winner.clone()));
    assert_eq!(read(&kv, winner_side).await, Some(winner));
    assert_eq!(read(&kv, loser_side).await, None, "the loser wrote nothing");
    cleanup(&kv, &p).await;
}

/// Two concurrent blind writes (no reads) of the same key, one of them a delete,
/// still conflict.
pub async fn case_blind_write_conflict(kv: Kv) {
    let p = unique_prefix();
    let k = key(&p, b"k");

    let mut a = begin(&kv).await;
    let mut b = begin(&kv).await;
    a.put(k.clone(), b"a".to_vec()).await.unwrap();
    b.put(k.clone(), b"b".to_vec()).await.unwrap();
    let first = a.commit().await;
    let second = b.commit().await;
    let a_won = exactly_one_commits(first, second, "blind puts");
    let winner = if a_won { b"a".to_vec() } else { b"b".to_vec() };
    assert_eq!(read(&kv, &k).await, Some(winner.clone()));

    // A delete is a write too, even of a key the deleter never saw.
    let mut a = begin(&kv).await;
    let mut b = begin(&kv).await;
    a.delete(k.clone()).await.unwrap();
    b.put(k.clone(), b"c".to_vec()).await.unwrap();
    let first = a.commit().await;
    let second = b.commit().await;
    let a_won = exactly_one_commits(first, second, "delete vs put");
    let expected = if a_won { None } else { Some(b"c".to_vec()) };
    assert_eq!(read(&kv, &k).await, expected);
    cleanup(&kv, &p).await;
}

/// Writes of the same key by transactions that do not overlap never conflict, and
/// concurrent transactions writing disjoint keys both commit.
pub async fn case_sequential_writes_do_not_conflict(kv: Kv) {
    let p = unique_prefix();
    let k = key(&p, b"k");
    for i in 0..5u8 {
        let mut txn = begin(&kv).await;
        let seen = txn.get(&k).await.unwrap();
        assert_eq!(seen, i.checked_sub(1).map(|prev| vec![prev]));
        txn.put(k.clone(), vec![i]).await.unwrap();
        txn.commit().await.expect("sequential commit");
    }

    let mut a = begin(&kv).await;
    let mut b = begin(&kv).await;
    a.put(key(&p, b"x"), b"a".to_vec()).await.unwrap();
    b.put(key(&p, b"y"), b"b".to_vec()).await.unwrap();
    a.commit().await.expect("disjoint commit a");
    b.commit().await.expect("disjoint commit b");
    assert_eq!(read(&kv, &key(&p, b"x")).await, Some(b"a".to_vec()));
    assert_eq!(read(&kv, &key(&p, b"y")).await, Some(b"b".to_vec()));
    cleanup(&kv, &p).await;
}

/// A locks `k` with `get_for_update` and writes another key; B writes `k` and
/// commits; A's commit then fails with `Conflict` and writes nothing, and `k`
/// holds B's value.
pub async fn case_get_for_update_conflict(kv: Kv) {
    let p = unique_prefix();
    let (k, other) = (key(&p, b"k"), key(&p, b"other"));
    put_all(&kv, &[(k.clone(), b"0".to_vec())]).await;

    let mut a = begin(&kv).await;
    assert_eq!(a.get_for_update(&k).await.unwrap(), Some(b"0".to_vec()));
    a.put(other.clone(), b"a".to_vec()).await.unwrap();

    let mut b = begin(&kv).await;
    b.put(k.clone(), b"b".to_vec()).await.unwrap();
    b.commit().await.expect("b commits first");

    // get_for_update did not write: A still sees its snapshot.
    assert_eq!(a.get(&k).await.unwrap(), Some(b"0".to_vec()));
    assert_conflict(a.commit().await, "get_for_update then concurrent write");
    assert_eq!(read(&kv, &k).await, Some(b"b".to_vec()));
    assert_eq!(read(&kv, &other).await, None);

    // Without the concurrent writer, get_for_update commits and writes no value.
    let mut c = begin(&kv).await;
    assert_eq!(c.get_for_update(&k).await.unwrap(), Some(b"b".to_vec()));
    assert_eq!(c.get_for_update(&key(&p, b"missing")).await.unwrap(), None);
    c.put(other.clone(), b"c".to_vec()).await.unwrap();
    c.commit()
        .await
        .expect("uncontended get_for_update commits");
    assert_eq!(read(&kv, &k).await, Some(b"b".to_vec()));
    assert_eq!(read(&kv, &key(&p, b"missing")).await, None);
    assert_eq!(read(&kv, &other).await, Some(b"c".to_vec()));
    cleanup(&kv, &p).await;
}

/// Concurrent read-modify-write increments through `transact` lose nothing.
pub async fn case_no_lost_updates(kv: Kv) {
    const TASKS: u64 = 8;
    const INCREMENTS: u64 = 25;
    let p = unique_prefix();
    let counter = key(&p, b"counter");
    let policy = RetryPolicy {
        max_attempts: 1_000,
        deadline: Duration::from_secs(120),
        ..RetryPolicy::default()
    };

    // Start all tasks at once so their transactions overlap.
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(TASKS as usize));
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let kv = kv.clone();
        let counter = counter.clone();
        let policy = policy.clone();
        let start = start.clone();
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            for _ in 0..INCREMENTS {
                transact!(kv, &policy, |txn| {
                    let current = match txn.get(&counter).await? {
                        Some(bytes) => {
                            u64::from_be_bytes(bytes.as_slice().try_into().expect("8-byte counter"))
                        }
                        None => 0,
                    };
                    // Hold the snapshot a little so the other tasks read the
                    // same value: every backend then has to resolve conflicts.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    txn.put(counter.clone(), (current + 1).to_be_bytes().to_vec())
                        .await
                })
                .expect("increment");
            }
        }));
    }
    for task in tasks {
        task.await.expect("increment task");
    }
    assert_eq!(
        read(&kv, &counter).await,
        Some((TASKS * INCREMENTS).to_be_bytes().to_vec())
    );
    cleanup(&kv, &p).await;
}

/// x = y = 0; two concurrent transactions each read x and y, then one writes x and
/// the other y. Snapshot isolation lets both commit; a backend that prevents write
/// skew aborts exactly one with `Conflict`.
pub async fn case_write_skew(kv: Kv, write_skew: WriteSkew) {
    let p = unique_prefix();
    let (x, y) = (key(&p, b"x"), key(&p, b"y"));
    put_all(
        &kv,
        &[(x.clone(), b"0".to_vec()), (y.clone(), b"0".to_vec())],
    )
    .await;

    let mut a = begin(&kv).await;
    let mut b = begin(&kv).await;
    for txn in [&mut a, &mut b] {
        assert_eq!(txn.get(&x).await.unwrap(), Some(b"0".to_vec()));
        assert_eq!(txn.get(&y).await.unwrap(), Some(b"0".to_vec()));
    }
    a.put(x.clone(), b"1".to_vec()).await.unwrap();
    b.put(y.clone(), b"1".to_vec()).await.unwrap();
    let first = a.commit().await;
    let second = b.commit().await;

    match write_skew {
        WriteSkew::Allowed => {
            first.expect("a commits under snapshot isolation");
            second.expect("b commits under snapshot isolation (write skew allowed)");
            assert_eq!(read(&kv, &x).await, Some(b"1".to_vec()));
            assert_eq!(read(&kv, &y).await, Some(b"1".to_vec()));
        }
        WriteSkew::Prevented => {
            let a_won = exactly_one_commits(first, second, "write skew");
            let (x_value, y_value) = if a_won { (b"1", b"0") } else { (b"0", b"1") };
            assert_eq!(read(&kv, &x).await, Some(x_value.to_vec()));
            assert_eq!(read(&kv, &y).await, Some(y_value.to_vec()));
        }
    }
    cleanup(&kv, &p).await;
}

/// Forward and reverse scans, limits, half-open boundaries with neighbours just
/// outside both ends, empty and inverted ranges.
pub async fn case_scans(kv: Kv) {
    let p = unique_prefix();
    let suffixes: [&[u8]; 10] = [
        &[0x00],
        &[0x00, 0xff], // just below the start
        &[0x01],       // the start itself: included
        &[0x01, 0x00],
        &[0x05],
        &[0x0f, 0xff], // just below the end: included
        &[0x10],       // the end itself: excluded
        &[0x10, 0x00],
        &[0xff],
        &[0xff, 0xff],
    ];
    let stored: Vec<KvPair> = suffixes
        .iter()
        .enumerate()
        .map(|(i, s)| (key(&p, s), vec![i as u8]))
        .collect();
    put_all(&kv, &stored).await;

    let mut txn = begin(&kv).await;
    // The whole prefix, both ways, with and without room to spare.
    for limit in [stored.len(), 1_000] {
        assert_eq!(
            txn.scan(&all(&p), limit, ScanOrder::Forward).await.unwrap(),
            stored
        );
        assert_eq!(
            txn.scan(&all(&p), limit, ScanOrder::Reverse).await.unwrap(),
            reversed(stored.clone())
        );
    }

    // [p01, p10): start included, end excluded.
    let range = KeyRange::new(key(&p, &[0x01]), key(&p, &[0x10]));
    let inside: Vec<KvPair> = stored[2..6].to_vec();
    for range_key in [&[0x00, 0xff][..], &[0x10]] {
        assert!(!range.contains(&key(&p, range_key)));
    }
    let cases: [(usize, usize); 5] = [(0, 0), (1, 1), (3, 3), (4, 4), (100, 4)];
    for (limit, expected_len) in cases {
        assert_eq!(
            txn.scan(&range, limit, ScanOrder::Forward).await.unwrap(),
            inside[..expected_len].to_vec(),
            "forward, limit {limit}"
        );
        assert_eq!(
            txn.scan(&range, limit, ScanOrder::Reverse).await.unwrap(),
            reversed(inside.clone())[..expected_len].to_vec(),
            "reverse, limit {limit}"
        );
    }

    // A range covering exactly one key, starting at it.
    let single = KeyRange::new(key(&p, &[0x05]), key(&p, &[0x05, 0x00]));
    for order in [ScanOrder::Forward, ScanOrder::Reverse] {
        assert_eq!(
            txn.scan(&single, 10, order).await.unwrap(),
            stored[4..5].to_vec()
        );
    }

    // Empty ranges: start == end (even on a stored key), inverted, and a gap
    // between stored keys.
    let empties = [
        KeyRange::new(key(&p, &[0x05]), key(&p, &[0x05])),
        KeyRange::new(key(&p, &[0x10]), key(&p, &[0x01])),
        KeyRange::new(key(&p, &[0x02]), key(&p, &[0x05])),
    ];
    for range in &empties {
        for order in [ScanOrder::Forward, ScanOrder::Reverse] {
            assert_eq!(
                txn.scan(range, 10, order).await.unwrap(),
                Vec::<KvPair>::new(),
                "{range:?} {order:?}"
            );
        }
    }
    txn.rollback().await.unwrap();
    cleanup(&kv, &p).await;
}

/// Ranges with `end: None`. The store may be shared, so only what the unique
/// prefix guarantees is asserted: forward from inside the prefix, the first
/// results are this case's remaining keys in order; reverse results are in
/// descending order and never below the start.
pub async fn case_unbounded_scans(kv: Kv) {
    let p = unique_prefix();
    let stored: Vec<KvPair> = (0u8..6).map(|i| (key(&p, &[i * 10]), vec![i])).collect();
    put_all(&kv, &stored).await;

    let mut txn = begin(&kv).await;
    let from_third = KeyRange {
        start: key(&p, &[20]),
        end: None,
    };
    assert_eq!(
        txn.scan(&from_third, 4, ScanOrder::Forward).await.unwrap(),
        stored[2..6].to_vec()
    );
    assert_eq!(
        txn.scan(&from_third, 2, ScanOrder::Forward).await.unwrap(),
        stored[2..4].to_vec()
    );
    // Starting between stored keys.
    let between = KeyRange {
        start: key(&p, &[15]),
        end: None,
    };
    assert_eq!(
        txn.scan(&between, 1, ScanOrder::Forward).await.unwrap(),
        stored[2..3].to_vec()
    );
    // Other data may follow this prefix; whatever comes back must be in range and
    // strictly descending.
    let reverse = txn.scan(&from_third, 50, ScanOrder::Reverse).await.unwrap();
    assert!(reverse.len() <= 50);
    assert!(reverse.iter().all(|(k, _)| from_third.contains(k)));
    assert!(reverse.windows(2).all(|w| w[0].0 > w[1].0));
    // A buffered write far past the prefix is found by an unbounded scan too.
    let mut tail = p.clone();
    tail.push(0xff);
    txn.put(tail.clone(), b"tail".to_vec()).await.unwrap();
    let forward = txn.scan(&from_third, 5, ScanOrder::Forward).await.unwrap();
    assert_eq!(forward[..4].to_vec(), stored[2..6].to_vec());
    assert_eq!(forward[4], (tail, b"tail".to_vec()));
    txn.rollback().await.unwrap();
    cleanup(&kv, &p).await;
}

/// Rollback discards every buffered write (including over existing keys) and does
/// not hinder later transactions on those keys.
pub async fn case_rollback_discards_writes(kv: Kv) {
    let p = unique_prefix();
    let (k, existing) = (key(&p, b"k"), key(&p, b"existing"));
    put_all(&kv, &[(existing.clone(), b"kept".to_vec())]).await;

    let mut txn = begin(&kv).await;
    txn.put(k.clone(), b"discarded".to_vec()).await.unwrap();
    txn.delete(existing.clone()).await.unwrap();
    assert_eq!(txn.get(&k).await.unwrap(), Some(b"discarded".to_vec()));
    txn.rollback().await.expect("rollback");

    assert_eq!(read(&kv, &k).await, None);
    assert_eq!(read(&kv, &existing).await, Some(b"kept".to_vec()));
    let mut later = begin(&kv).await;
    later.put(k.clone(), b"later".to_vec()).await.unwrap();
    later.delete(existing.clone()).await.unwrap();
    later.commit().await.expect("write after rollback");
    assert_eq!(read(&kv, &k).await, Some(b"later".to_vec()));
    assert_eq!(read(&kv, &existing).await, None);
    cleanup(&kv, &p).await;
}

/// Dropping a transaction without commit or rollback discards its writes, and
/// later transactions writing (or locking) the same keys commit promptly.
pub async fn case_dropped_transaction_discards_writes(kv: Kv) {
    let p = unique_prefix();
    let (k, locked) = (key(&p, b"k"), key(&p, b"locked"));

    {
        let mut txn = begin(&kv).await;
        txn.put(k.clone(), b"dropped".to_vec()).await.unwrap();
        txn.get_for_update(&locked).await.unwrap();
        assert_eq!(
            txn.scan(&all(&p), 10, ScanOrder::Forward).await.unwrap(),
            vec![(k.clone(), b"dropped".to_vec())]
        );
    }
    assert_eq!(read(&kv, &k).await, None);
    assert!(scan(&kv, &all(&p), 10, ScanOrder::Forward).await.is_empty());

    // A backend that left locks behind would make this wait or conflict.
    let later = async {
        let mut txn = begin(&kv).await;
        txn.put(k.clone(), b"later".to_vec()).await.unwrap();
        txn.put(locked.clone(), b"later".to_vec()).await.unwrap();
        txn.commit().await
    };
    tokio::time::timeout(Duration::from_secs(10), later)
        .await
        .expect("a dropped transaction must not block later ones")
        .expect("write after drop");
    assert_eq!(read(&kv, &k).await, Some(b"later".to_vec()));
    assert_eq!(read(&kv, &locked).await, Some(b"later".to_vec()));
    cleanup(&kv, &p).await;
}

/// batch_get returns one entry per requested key, in request order, `None` for
/// missing keys, duplicates answered each time, pending writes included.
pub async fn case_batch_get(kv: Kv) {
    let p = unique_prefix();
    let (a, b, c, d) = (key(&p, b"a"), key(&p, b"b"), key(&p, b"c"), key(&p, b"d"));
    let missing = key(&p, b"missing");
    put_all(
        &kv,
        &[
            (a.clone(), b"a".to_vec()),
            (b.clone(), b"b".to_vec()),
            (c.clone(), b"c".to_vec()),
        ],
    )
    .await;

    let mut txn = begin(&kv).await;
    assert_eq!(
        txn.batch_get(&[]).await.unwrap(),
        Vec::<Option<Value>>::new()
    );
    assert_eq!(
        txn.batch_get(&[c.clone(), missing.clone(), a.clone(), b.clone(), a.clone()])
            .await
            .unwrap(),
        vec![
            Some(b"c".to_vec()),
            None,
            Some(b"a".to_vec()),
            Some(b"b".to_vec()),
            Some(b"a".to_vec()),
        ]
    );
    txn.delete(b.clone()).await.unwrap();
    txn.put(d.clone(), b"d".to_vec()).await.unwrap();
    txn.put(a.clone(), b"a2".to_vec()).await.unwrap();
    assert_eq!(
        txn.batch_get(&[d.clone(), b.clone(), a.clone(), missing.clone(), c.clone()])
            .await
            .unwrap(),
        vec![
            Some(b"d".to_vec()),
            None,
            Some(b"a2".to_vec()),
            None,
            Some(b"c".to_vec()),
        ]
    );
    txn.rollback().await.unwrap();
    cleanup(&kv, &p).await;
}

/// A 1 MiB value round-trips (pending and committed, via get and scan); a value
/// over `MAX_VALUE_BYTES` is rejected with `Invalid` (at put or at the latest at
/// commit) and nothing of it is written.
pub async fn case_large_values(kv: Kv) {
    let p = unique_prefix();
    let (big, huge) = (key(&p, b"big"), key(&p, b"huge"));
    let value: Value = (0..1024 * 1024).map(|i: u32| (i % 251) as u8).collect();

    let mut txn = begin(&kv).await;
    txn.put(big.clone(), value.clone())
        .await
        .expect("1 MiB put");
    assert_eq!(txn.get(&big).await.unwrap().as_ref(), Some(&value));
    txn.commit().await.expect("1 MiB commit");
    assert_eq!(read(&kv, &big).await.as_ref(), Some(&value));
    assert_eq!(
        scan(&kv, &all(&p), 10, ScanOrder::Forward).await,
        vec![(big.clone(), value.clone())]
    );

    let mut txn = begin(&kv).await;
    match txn.put(huge.clone(), vec![7; MAX_VALUE_BYTES + 1]).await {
        Err(Error::Invalid(_)) => txn.rollback().await.expect("rollback"),
        Ok(()) => match txn.commit().await {
            Err(Error::Invalid(_)) => {}
            other => panic!("oversized value: expected Error::Invalid, got {other:?}"),
        },
        Err(other) => panic!("oversized value: expected Error::Invalid, got {other:?}"),
    }
    assert_eq!(read(&kv, &huge).await, None);
    assert_eq!(read(&kv, &big).await.as_ref(), Some(&value));
    cleanup(&kv, &p).await;
}

/// 10,000 keys written 1,000 per transaction come back exactly once each, in order,
/// when paged through forward (next start = last key + 0x00) and in reverse (next
/// end = last key).
pub async fn case_many_keys(kv: Kv) {
    const KEYS: u32 = 10_000;
    const BATCH: u32 = 1_000;
    const PAGE: usize = 777; // deliberately not a divisor of KEYS
    let p = unique_prefix();
    let entry = |i: u32| (key(&p, &i.to_be_bytes()), i.to_le_bytes().to_vec());

    for batch in 0..KEYS / BATCH {
        let mut txn = begin(&kv).await;
        for i in batch * BATCH..(batch + 1) * BATCH {
            let (k, v) = entry(i);
            txn.put(k, v).await.unwrap();
        }
        txn.commit().await.expect("batch commit");
    }

    let end = prefix_end(&p).expect("the prefix is not all 0xff");
    let mut txn = begin(&kv).await;
    let mut next = 0u32;
    let mut start = p.clone();
    loop {
        let range = KeyRange::new(start.clone(), end.clone());
        let page = txn.scan(&range, PAGE, ScanOrder::Forward).await.unwrap();
        assert!(page.len() <= PAGE);
        for pair in &page {
            assert_eq!(*pair, entry(next), "forward paging");
            next += 1;
        }
        match page.last() {
            Some((last, _)) if page.len() == PAGE => {
                start = last.clone();
                start.push(0x00);
            }
            _ => break,
        }
    }
    assert_eq!(next, KEYS);

    let mut remaining = KEYS;
    let mut page_end = end.clone();
    loop {
        let range = KeyRange::new(p.clone(), page_end.clone());
        let page = txn.scan(&range, PAGE, ScanOrder::Reverse).await.unwrap();
        for pair in &page {
            remaining -= 1;
            assert_eq!(*pair, entry(remaining), "reverse paging");
        }
        match page.last() {
            Some((last, _)) if page.len() == PAGE => page_end = last.clone(),
            _ => break,
        }
    }
    assert_eq!(remaining, 0);
    txn.rollback().await.unwrap();
    cleanup(&kv, &p).await;
}
