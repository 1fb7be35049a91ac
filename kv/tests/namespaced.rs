//! Runs the backend conformance suite through [`Namespaced`] on the in-memory
//! store, the way the domain suites use it on a shared TiKV cluster: every case
//! gets a namespace of its own over one store shared by the whole test binary,
//! while the other cases run next to it. Then checks what only the wrapper can
//! get wrong: namespaces over one store are disjoint, and scans (reverse ones,
//! unbounded ones, ranges ending at the namespace's edge) stop at the namespace.

mod conformance;

use rossby_kv::memory::MemoryStore;
use rossby_kv::{Key, KeyRange, Kv, KvPair, KvStore, Namespaced, ScanOrder, Value};
use std::sync::{Arc, LazyLock};

/// The store every conformance case shares (each in its own namespace).
static SHARED: LazyLock<Kv> = LazyLock::new(|| Arc::new(MemoryStore::new()));

/// A namespace under a random prefix of the shared store.
async fn make_store() -> Option<Kv> {
    let prefix = rand::random::<[u8; 8]>().to_vec();
    Some(Arc::new(Namespaced::new(Arc::clone(&SHARED), prefix)))
}

conformance::conformance_suite!(make_store, write_skew = conformance::WriteSkew::Allowed);

fn range(start: &[u8], end: Option<&[u8]>) -> KeyRange {
    KeyRange {
        start: start.to_vec(),
        end: end.map(<[u8]>::to_vec),
    }
}

/// Every key, from the namespace's point of view.
fn everything() -> KeyRange {
    range(b"", None)
}

async fn put_all(kv: &dyn KvStore, pairs: &[(&[u8], &[u8])]) {
    let mut txn = kv.begin().await.unwrap();
    for (key, value) in pairs {
        txn.put(key.to_vec(), value.to_vec()).await.unwrap();
    }
    txn.commit().await.unwrap();
}

async fn scan(kv: &dyn KvStore, range: &KeyRange, limit: usize, order: ScanOrder) -> Vec<Key> {
    let mut txn = kv.begin().await.unwrap();
    let pairs = txn.scan(range, limit, order).await.unwrap();
    txn.rollback().await.unwrap();
    pairs.into_iter().map(|(key, _)| key).collect()
}

fn keys(list: &[&[u8]]) -> Vec<Key> {
    list.iter().map(|key| key.to_vec()).collect()
}

/// Two namespaces over one store hold the same keys without seeing (or
/// conflicting with) each other; the raw store holds both under their prefixes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_namespaces_over_one_store_do_not_see_each_other() {
    let raw: Kv = Arc::new(MemoryStore::new());
    let a = Namespaced::new(Arc::clone(&raw), b"a/".to_vec());
    let b = Namespaced::new(Arc::clone(&raw), b"b/".to_vec());
    put_all(&a, &[(b"k1", b"a1"), (b"k2", b"a2")]).await;
    put_all(&b, &[(b"k2", b"b2"), (b"k3", b"b3")]).await;

    let lookup = [b"k1".to_vec(), b"k2".to_vec(), b"k3".to_vec()];
    for (ns, expected) in [
        (&a, [Some(&b"a1"[..]), Some(b"a2"), None]),
        (&b, [None, Some(b"b2"), Some(b"b3")]),
    ] {
        let mut txn = ns.begin().await.unwrap();
        let values = txn.batch_get(&lookup).await.unwrap();
        let expected: Vec<Option<Value>> = expected.iter().map(|v| v.map(<[u8]>::to_vec)).collect();
        assert_eq!(values, expected);
        assert_eq!(txn.get(b"k2").await.unwrap(), expected[1]);
        let stored: Vec<KvPair> = lookup
            .iter()
            .zip(&expected)
            .filter_map(|(k, v)| Some((k.clone(), v.clone()?)))
            .collect();
        for order in [ScanOrder::Forward, ScanOrder::Reverse] {
            let mut want = stored.clone();
            if order == ScanOrder::Reverse {
                want.reverse();
            }
            assert_eq!(txn.scan(&everything(), 10, order).await.unwrap(), want);
        }
        txn.rollback().await.unwrap();
    }

    // The same logical key in two namespaces is two keys: no conflict.
    let mut in_a = a.begin().await.unwrap();
    let mut in_b = b.begin().await.unwrap();
    in_a.get_for_update(b"k2").await.unwrap();
    in_a.put(b"k2".to_vec(), b"a2'".to_vec()).await.unwrap();
    in_b.put(b"k2".to_vec(), b"b2'".to_vec()).await.unwrap();
    in_a.commit().await.unwrap();
    in_b.commit().await.unwrap();

    assert_eq!(
        scan(&*raw, &everything(), 10, ScanOrder::Forward).await,
        keys(&[b"a/k1", b"a/k2", b"b/k2", b"b/k3"])
    );
    assert_eq!(a.clear(1).await.unwrap(), 2);
    assert_eq!(
        scan(&*raw, &everything(), 10, ScanOrder::Forward).await,
        keys(&[b"b/k2", b"b/k3"])
    );
}

/// Scans stop at the namespace's edges, with raw keys just outside both of them:
/// forward and reverse, unbounded, with limits, and with ranges whose end lies at
/// or beyond the namespace's last key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scans_stop_at_the_edges_of_the_namespace() {
    let raw: Kv = Arc::new(MemoryStore::new());
    // A prefix ending in 0xff: its range ends at [0x11], not at prefix + 1.
    let prefix = [0x10, 0xff];
    let ns = Namespaced::new(Arc::clone(&raw), prefix.to_vec());
    let outside: [&[u8]; 5] = [
        &[0x10],
        &[0x10, 0xfe, 0xff, 0xff],
        &[0x11],
        &[0x11, 0x00],
        &[0xff, 0xff],
    ];
    let inside: [&[u8]; 5] = [
        &[0x10, 0xff],
        &[0x10, 0xff, 0x00],
        &[0x10, 0xff, 0x05],
        &[0x10, 0xff, 0xff],
        &[0x10, 0xff, 0xff, 0xff],
    ];
    let raw_pairs: Vec<(&[u8], &[u8])> = outside
        .iter()
        .chain(&inside)
        .map(|k| (*k, &b"v"[..]))
        .collect();
    put_all(&*raw, &raw_pairs).await;
    // The namespace's own names of its keys.
    let own: Vec<Key> = inside.iter().map(|k| k[prefix.len()..].to_vec()).collect();
    let reversed = |keys: &[Key]| keys.iter().rev().cloned().collect::<Vec<_>>();

    assert_eq!(scan(&ns, &everything(), 100, ScanOrder::Forward).await, own);
    assert_eq!(
        scan(&ns, &everything(), 100, ScanOrder::Reverse).await,
        reversed(&own)
    );
    // Reverse from the namespace's end, one key: its last key, not [0x11].
    assert_eq!(
        scan(&ns, &everything(), 1, ScanOrder::Reverse).await,
        own[4..].to_vec()
    );
    // Unbounded from inside, both ways.
    let from_05 = range(&[0x05], None);
    assert_eq!(
        scan(&ns, &from_05, 100, ScanOrder::Forward).await,
        own[2..].to_vec()
    );
    assert_eq!(
        scan(&ns, &from_05, 2, ScanOrder::Reverse).await,
        reversed(&own[3..])
    );
    // Ends at the last key (excluded) and past every key of the namespace.
    let to_last = range(b"", Some(&[0xff, 0xff]));
    assert_eq!(
        scan(&ns, &to_last, 100, ScanOrder::Reverse).await,
        reversed(&own[..4])
    );
    let past_all = range(&[0x01], Some(&[0xff; 8]));
    assert_eq!(
        scan(&ns, &past_all, 100, ScanOrder::Forward).await,
        own[2..].to_vec()
    );
    // Empty and inverted ranges find nothing, even on stored keys.
    for empty in [range(&[0x05], Some(&[0x05])), range(&[0xff], Some(&[0x00]))] {
        for order in [ScanOrder::Forward, ScanOrder::Reverse] {
            assert!(scan(&ns, &empty, 100, order).await.is_empty());
        }
    }

    // An all-0xff prefix has no end: everything after it is inside.
    let last = Namespaced::new(Arc::clone(&raw), vec![0xff, 0xff]);
    assert_eq!(
        scan(&last, &everything(), 100, ScanOrder::Reverse).await,
        vec![Vec::<u8>::new()]
    );
    put_all(&last, &[(&[0xff], b"v"), (&[0x00], b"v")]).await;
    assert_eq!(
        scan(&last, &everything(), 100, ScanOrder::Reverse).await,
        keys(&[&[0xff], &[0x00], &[]])
    );

    // Clearing the namespace leaves the neighbours (and the all-0xff one) alone.
    assert_eq!(ns.clear(2).await.unwrap(), inside.len());
    assert!(
        scan(&ns, &everything(), 100, ScanOrder::Forward)
            .await
            .is_empty()
    );
    let mut left = keys(&outside);
    left.extend(keys(&[&[0xff, 0xff, 0x00], &[0xff, 0xff, 0xff]]));
    left.sort();
    assert_eq!(
        scan(&*raw, &everything(), 100, ScanOrder::Forward).await,
        left
    );
}
