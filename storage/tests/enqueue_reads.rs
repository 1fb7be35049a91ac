//! How many read rounds an enqueue costs, and how many keys it writes.
//!
//! In a multi-region deployment every sequential read is a WAN round trip, so an
//! enqueue must read everything it needs (profile, `next`, each sender's block
//! and contact entries, each envelope's dedup record) with one `batch_get`.
//! Every key written costs encoding, a prewrite and a commit entry, so an
//! enqueue writes two keys per envelope (the envelope and its dedup record) plus
//! two per transaction (`next` and one expiry index entry).
//! [`CountingKv`] wraps a store and records the reads and writes of every
//! transaction.

// Only the box fixtures of the shared support module are used here.
#[allow(dead_code, unused_imports)]
mod backends;
mod support;

use backends::T0;

use async_trait::async_trait;
use rossby_keyspace::{BoxId, DeviceId, ExpiryEntry, Key, MessageId, RegionId};
use rossby_storage::kv::Result;
use rossby_storage::kv::memory::MemoryStore;
use rossby_storage::tables::accounts::{self, SettingsUpdate};
use rossby_storage::tables::contacts::{self, Relationship};
use rossby_storage::tables::queue::{self, ANY_DEVICE_LIST, Enqueued, FetchLimits, NewEnvelope};
use rossby_storage::tables::records::AcceptFrom;
use rossby_storage::tables::{Store, devices, lifecycle};
use rossby_storage::{
    Error, Key as RawKey, KeyRange, Kv, KvPair, KvStore, ScanOrder, Transaction, Value, transact,
};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

const REGION: RegionId = RegionId(1);

/// The reads one transaction made, and the keys it wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Reads {
    get: usize,
    batch_get: usize,
    /// Keys asked for across all `batch_get` calls.
    batch_keys: usize,
    scan: usize,
    get_for_update: usize,
    /// Every `put`, in order (a key put twice counts twice).
    puts: Vec<Key>,
    deletes: usize,
}

impl Reads {
    /// The reads only, to compare with an expected count.
    fn rounds(&self) -> (usize, usize, usize, usize) {
        (self.get, self.batch_get, self.scan, self.get_for_update)
    }

    /// How many keys of each kind were put.
    fn put_kinds(&self) -> BTreeMap<&'static str, usize> {
        let mut out = BTreeMap::new();
        for key in &self.puts {
            *out.entry(kind(key)).or_default() += 1;
        }
        out
    }
}

fn kind(key: &Key) -> &'static str {
    match key {
        Key::Queue(..) => "envelope",
        Key::Dedup(..) => "dedup",
        Key::Next(..) => "next",
        Key::Expiry {
            entry: ExpiryEntry::Batch(_),
            ..
        } => "expiry batch",
        Key::Expiry { .. } => "expiry (other)",
        _ => "other",
    }
}

/// A store that records, per transaction (in `begin` order), which reads it made.
struct CountingKv {
    inner: MemoryStore,
    log: Arc<Mutex<Vec<Reads>>>,
}

struct CountingTxn {
    inner: Box<dyn Transaction>,
    log: Arc<Mutex<Vec<Reads>>>,
    index: usize,
}

impl CountingTxn {
    fn count(&self, f: impl FnOnce(&mut Reads)) {
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut log[self.index]);
    }
}

#[async_trait]
impl KvStore for CountingKv {
    fn backend(&self) -> &'static str {
        "counting"
    }

    async fn begin(&self) -> Result<Box<dyn Transaction>> {
        let inner = self.inner.begin().await?;
        let index = {
            let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
            log.push(Reads::default());
            log.len() - 1
        };
        Ok(Box::new(CountingTxn {
            inner,
            log: self.log.clone(),
            index,
        }))
    }
}

#[async_trait]
impl Transaction for CountingTxn {
    async fn get(&mut self, key: &[u8]) -> Result<Option<Value>> {
        self.count(|r| r.get += 1);
        self.inner.get(key).await
    }

    async fn batch_get(&mut self, keys: &[RawKey]) -> Result<Vec<Option<Value>>> {
        self.count(|r| {
            r.batch_get += 1;
            r.batch_keys += keys.len();
        });
        // The inner store's own batch_get may fall back to `get`s of its own; they
        // are not counted here, since TiKV sends them as one request.
        self.inner.batch_get(keys).await
    }

    async fn scan(
        &mut self,
        range: &KeyRange,
        limit: usize,
        order: ScanOrder,
    ) -> Result<Vec<KvPair>> {
        self.count(|r| r.scan += 1);
        self.inner.scan(range, limit, order).await
    }

    async fn get_for_update(&mut self, key: &[u8]) -> Result<Option<Value>> {
        self.count(|r| r.get_for_update += 1);
        self.inner.get_for_update(key).await
    }

    async fn put(&mut self, key: RawKey, value: Value) -> Result<()> {
        // Every key the domain writes decodes; one that does not is a failure here.
        let decoded = Key::decode(&key).expect("a written key decodes");
        self.count(|r| r.puts.push(decoded));
        self.inner.put(key, value).await
    }

    async fn delete(&mut self, key: RawKey) -> Result<()> {
        self.count(|r| r.deletes += 1);
        self.inner.delete(key).await
    }

    async fn commit(self: Box<Self>) -> Result<()> {
        self.inner.commit().await
    }

    async fn rollback(self: Box<Self>) -> Result<()> {
        self.inner.rollback().await
    }
}

/// A store over a counting memory backend, and its log.
fn counting_store() -> (Store, Arc<Mutex<Vec<Reads>>>) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let kv: Kv = Arc::new(CountingKv {
        inner: MemoryStore::new(),
        log: log.clone(),
    });
    (Store::new(kv, support::hasher()), log)
}

/// The reads of the transactions begun while `run` ran.
async fn reads_of<T>(log: &Mutex<Vec<Reads>>, run: impl AsyncFnOnce() -> T) -> (T, Vec<Reads>) {
    let before = log.lock().unwrap().len();
    let out = run().await;
    let after = log.lock().unwrap()[before..].to_vec();
    (out, after)
}

fn envelope(from: (BoxId, DeviceId), version: u64, payload: &[u8]) -> NewEnvelope {
    NewEnvelope {
        sender: rossby_storage::tables::queue::Sender::Device {
            box_id: from.0,
            device_id: from.1,
            identity_key: Some([7; 32]),
        },
        message_id: MessageId::new(),
        device_list_version: version,
        payload: payload.to_vec(),
        wrapped_for: None,
    }
}

async fn version(store: &Store, b: BoxId) -> u64 {
    transact!(store, |txn| Ok(devices::recipients(txn, b).await?.0)).unwrap()
}

fn fresh(seq: u64) -> Enqueued {
    Enqueued {
        seq,
        duplicate: false,
    }
}

fn repeat(seq: u64) -> Enqueued {
    Enqueued {
        seq,
        duplicate: true,
    }
}

#[tokio::test]
async fn an_enqueue_from_two_senders_reads_in_one_round() {
    let (store, log) = counting_store();
    let (recipient, _) = backends::new_box(&store, REGION, 2).await;
    let (alice, ad) = backends::new_box(&store, REGION, 1).await;
    let (bob, bd) = backends::new_box(&store, REGION, 2).await;
    let v = version(&store, recipient).await;
    let retried = envelope((alice, ad[0]), v, b"sent before");
    let first = store
        .enqueue(recipient, std::slice::from_ref(&retried), T0)
        .await
        .unwrap();
    assert_eq!(first[0].as_ref().unwrap(), &fresh(1));

    let twice = envelope((bob, bd[1]), v, b"twice in the batch");
    let batch = vec![
        envelope((alice, ad[0]), v, b"a1"),
        envelope((bob, bd[0]), v, b"b1"),
        retried.clone(),
        twice.clone(),
        envelope((alice, ad[0]), v, b"a2"),
        twice,
        envelope(
            (bob, bd[0]),
            v,
            &vec![0; store.limits.max_payload_bytes + 1],
        ),
    ];
    let (out, reads) = reads_of(&log, async || {
        store.enqueue(recipient, &batch, T0 + 1).await.unwrap()
    })
    .await;

    let seqs: Vec<Enqueued> = out[..6].iter().map(|r| *r.as_ref().unwrap()).collect();
    assert_eq!(
        seqs,
        vec![fresh(2), fresh(3), repeat(1), fresh(4), fresh(5), repeat(4)]
    );
    assert!(matches!(out[6], Err(Error::Invalid(_))), "{:?}", out[6]);
    assert_eq!(reads.len(), 1, "one transaction: {reads:?}");
    assert_eq!(reads[0].rounds(), (0, 1, 0, 0), "{:?}", reads[0]);
    // profile, next, low (the queue's room), block and contact of two
    // senders, six distinct dedup keys (the in-batch duplicate shares one).
    assert_eq!(reads[0].batch_keys, 3 + 2 * 2 + 6);
    // Four new envelopes: each with its dedup record, plus `next` and one
    // expiry entry for the whole transaction.
    assert_eq!(
        reads[0].put_kinds(),
        BTreeMap::from([
            ("envelope", 4),
            ("dedup", 4),
            ("next", 1),
            ("expiry batch", 1)
        ]),
        "{:?}",
        reads[0].puts
    );
    assert_eq!(reads[0].deletes, 0);
}

#[tokio::test]
async fn a_single_envelope_writes_four_keys_and_a_batch_two_per_envelope_more() {
    let (store, log) = counting_store();
    let (recipient, _) = backends::new_box(&store, REGION, 2).await;
    let (sender, sd) = backends::new_box(&store, REGION, 1).await;
    let v = version(&store, recipient).await;
    for n in [1usize, 2, 10] {
        let batch: Vec<NewEnvelope> = (0..n)
            .map(|i| envelope((sender, sd[0]), v, &[i as u8; 64]))
            .collect();
        let (out, reads) = reads_of(&log, async || {
            store.enqueue(recipient, &batch, T0).await.unwrap()
        })
        .await;
        assert!(out.iter().all(|o| o.as_ref().is_ok_and(|e| !e.duplicate)));
        assert_one_read_round(&reads);
        assert_eq!(reads[0].puts.len(), 2 * n + 2, "{n}: {:?}", reads[0].puts);
        assert_eq!(
            reads[0].put_kinds(),
            BTreeMap::from([
                ("envelope", n),
                ("dedup", n),
                ("next", 1),
                ("expiry batch", 1)
            ])
        );
    }
    // A retry of something already stored reads once and writes nothing.
    let sent = envelope((sender, sd[0]), v, b"once");
    store
        .enqueue(recipient, std::slice::from_ref(&sent), T0)
        .await
        .unwrap();
    let (out, reads) = reads_of(&log, async || {
        store.enqueue(recipient, &[sent], T0 + 1).await.unwrap()
    })
    .await;
    assert!(out[0].as_ref().is_ok_and(|e| e.duplicate), "{out:?}");
    assert_one_read_round(&reads);
    assert_eq!(reads[0].puts, vec![]);
}

#[tokio::test]
async fn a_fetch_reads_its_pointer_head_and_low_in_one_round() {
    let (store, log) = counting_store();
    let (recipient, rd) = backends::new_box(&store, REGION, 1).await;
    let (sender, sd) = backends::new_box(&store, REGION, 1).await;
    let v = version(&store, recipient).await;
    let batch = [
        envelope((sender, sd[0]), v, b"one"),
        envelope((sender, sd[0]), v, b"two"),
    ];
    store.enqueue(recipient, &batch, T0).await.unwrap();
    let (fetched, reads) = reads_of(&log, async || {
        store
            .fetch(recipient, rd[0], FetchLimits::default())
            .await
            .unwrap()
    })
    .await;
    assert_eq!(fetched.envelopes.len(), 2);
    assert_eq!(fetched.envelopes[1].envelope.payload, b"two");
    assert_eq!(reads.len(), 1, "{reads:?}");
    // One batch for the point reads, one scan for the envelopes, no writes.
    assert_eq!(reads[0].rounds(), (0, 1, 1, 0), "{:?}", reads[0]);
    assert_eq!(reads[0].batch_keys, 3);
    assert!(reads[0].puts.is_empty() && reads[0].deletes == 0);
}

#[tokio::test]
async fn refusals_are_decided_from_the_same_single_read() {
    let (store, log) = counting_store();
    let (recipient, rd) = backends::new_box(&store, REGION, 1).await;
    let (friend, fd) = backends::new_box(&store, REGION, 1).await;
    let (stranger, sd) = backends::new_box(&store, REGION, 1).await;
    let (blocked, bd) = backends::new_box(&store, REGION, 1).await;
    let contacts_only = SettingsUpdate {
        accept_from: Some(AcceptFrom::Contacts),
        ..SettingsUpdate::default()
    };
    transact!(store, |txn| {
        accounts::update_settings(txn, recipient, &contacts_only, T0).await?;
        contacts::add(
            txn,
            &store.limits,
            Relationship::Contact,
            recipient,
            friend,
            T0,
        )
        .await?;
        contacts::add(
            txn,
            &store.limits,
            Relationship::Contact,
            recipient,
            blocked,
            T0,
        )
        .await?;
        contacts::add(
            txn,
            &store.limits,
            Relationship::Block,
            recipient,
            blocked,
            T0,
        )
        .await
    })
    .unwrap();
    let v = version(&store, recipient).await;
    let batch = [
        envelope((stranger, sd[0]), v, b"not a contact"),
        envelope((friend, fd[0]), v, b"a contact"),
        envelope((blocked, bd[0]), v, b"a blocked contact"),
        envelope((recipient, rd[0]), v, b"note to self"),
    ];
    let (out, reads) = reads_of(&log, async || {
        store.enqueue(recipient, &batch, T0).await.unwrap()
    })
    .await;
    assert!(matches!(out[0], Err(Error::RecipientUnavailable)));
    assert_eq!(out[1].as_ref().unwrap(), &fresh(1));
    assert!(matches!(out[2], Err(Error::RecipientUnavailable)));
    assert_eq!(out[3].as_ref().unwrap(), &fresh(2));
    assert_one_read_round(&reads);
}

#[tokio::test]
async fn an_unknown_or_deleted_recipient_costs_one_read_too() {
    let (store, log) = counting_store();
    let (sender, sd) = backends::new_box(&store, REGION, 1).await;
    let (doomed, _) = backends::new_box(&store, REGION, 1).await;
    let v = version(&store, doomed).await;
    transact!(store, |txn| lifecycle::delete_account(
        txn,
        &store.limits,
        doomed,
        T0
    )
    .await)
    .unwrap();
    for recipient in [BoxId::new(REGION), doomed] {
        let batch = [envelope((sender, sd[0]), v, b"x")];
        let (out, reads) = reads_of(&log, async || {
            store.enqueue(recipient, &batch, T0).await.unwrap()
        })
        .await;
        assert!(matches!(out[0], Err(Error::RecipientUnavailable)));
        assert_one_read_round(&reads);
    }
}

#[tokio::test]
async fn only_a_stale_device_list_reads_again() {
    let (store, log) = counting_store();
    let (recipient, rd) = backends::new_box(&store, REGION, 1).await;
    let (sender, sd) = backends::new_box(&store, REGION, 1).await;
    let old = version(&store, recipient).await;
    let added = DeviceId::new();
    transact!(store, |txn| {
        devices::add(
            txn,
            &store.limits,
            recipient,
            added,
            &backends::device_record(),
            T0,
        )
        .await?;
        devices::authorize(txn, recipient, added, T0).await
    })
    .unwrap();
    let batch = [
        envelope((sender, sd[0]), old, b"stale"),
        envelope((sender, sd[0]), old, b"stale too"),
    ];
    let (out, reads) = reads_of(&log, async || {
        store.enqueue(recipient, &batch, T0).await.unwrap()
    })
    .await;
    for outcome in &out {
        match outcome {
            Err(Error::StaleDeviceList { devices, .. }) => {
                let got: BTreeSet<DeviceId> = devices.iter().copied().collect();
                assert_eq!(got, BTreeSet::from([rd[0], added]));
            }
            other => panic!("expected StaleDeviceList, got {other:?}"),
        }
    }
    assert_eq!(reads.len(), 1, "{reads:?}");
    assert_eq!(reads[0].batch_get, 1);
    // The device list is read once for both envelopes, after the batch.
    assert_eq!(reads[0].scan, 1, "{:?}", reads[0]);
}

#[tokio::test]
async fn an_envelope_for_any_device_list_is_never_stale_and_reads_once() {
    let (store, log) = counting_store();
    let (recipient, _) = backends::new_box(&store, REGION, 1).await;
    let (sender, sd) = backends::new_box(&store, REGION, 1).await;
    let added = DeviceId::new();
    transact!(store, |txn| {
        devices::add(
            txn,
            &store.limits,
            recipient,
            added,
            &backends::device_record(),
            T0,
        )
        .await
    })
    .unwrap();
    let current = version(&store, recipient).await;
    let batch = [envelope((sender, sd[0]), ANY_DEVICE_LIST, b"group")];
    let (out, reads) = reads_of(&log, async || {
        store.enqueue(recipient, &batch, T0).await.unwrap()
    })
    .await;
    assert!(
        matches!(
            out[0],
            Ok(Enqueued {
                seq: 1,
                duplicate: false
            })
        ),
        "{out:?}"
    );
    assert_one_read_round(&reads);
    // Stored with the list it was accepted against.
    let fetched = transact!(store, |txn| queue::fetch(
        txn,
        recipient,
        added,
        FetchLimits::default()
    )
    .await)
    .unwrap();
    assert_eq!(fetched.envelopes[0].envelope.device_list_version, current);
}

/// One transaction that read with exactly one `batch_get` and nothing else.
fn assert_one_read_round(reads: &[Reads]) {
    assert_eq!(reads.len(), 1, "{reads:?}");
    assert_eq!(reads[0].rounds(), (0, 1, 0, 0), "{:?}", reads[0]);
}
