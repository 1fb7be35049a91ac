//! Property tests of the message queue under concurrency.
//!
//! Each case creates a recipient box with a few "stable" devices and then runs, at
//! the same time on a two-worker runtime: several senders (each from its own box
//! and device) enqueueing into the box, a task that adds, authorizes and removes
//! "temporary" devices, and one fetch/ack loop per stable device. Afterwards it
//! checks the queue's guarantees:
//!
//! 1. every stable device received exactly the sequence numbers `1..=last`, in
//!    order, each once, and every sent message got exactly one sequence number;
//! 2. pointers never move backwards, and acknowledging at or below the pointer
//!    returns the pointer and deletes nothing;
//! 3. a temporary device received exactly the sequence numbers after its starting
//!    pointer, each encrypted for a device list at least as new as the one its
//!    add (and authorization) produced;
//! 4. once every device acknowledged everything, the box's queue range is empty;
//! 5. no fetch reports a gap (nothing expires here).
//!
//! The proptest cases and the fixed schedule run on the memory backend (snapshot
//! isolation, like TiKV), usually through [`JitterKv`], which yields inside
//! transactions so that transactions of different tasks overlap often; one fixed
//! schedule also runs on fjall (serializable). Two deterministic tests pin down
//! the interleaving in which snapshot isolation allows write skew between acks
//! (and between an ack and a device removal). No assertion depends on timing:
//! pauses and yields only vary the interleavings.
//!
//! When `ROSSBY_TEST_PD` names a TiKV cluster, the fixed schedule, a few proptest
//! cases and both deterministic tests also run there (the `_on_tikv` tests), each
//! in a namespace of its own (see `backends::namespace`); without it they print
//! `skipped: set ROSSBY_TEST_PD to run <test> on TiKV` and pass.

// Only the shared-backend helpers (`backends::namespace`) are used here.
#[allow(dead_code, unused_imports)]
mod backends;
mod support;

use async_trait::async_trait;
use proptest::prelude::*;
use rossby_keyspace::{BoxId, DeviceId, Key, LookupHasher, MessageId, Pepper, RegionId, Table};
use rossby_storage::kv::fjall::{FjallConfig, FjallStore};
use rossby_storage::kv::memory::MemoryStore;
use rossby_storage::kv::{Error as KvError, Result as KvResult};
use rossby_storage::tables::queue::{Acked, Delivered, FetchLimits, Fetched, NewEnvelope};
use rossby_storage::tables::records::{Device, Pointer, QueueHead, StoredEnvelope};
use rossby_storage::tables::{Store, Tx, accounts, devices, lifecycle, queue};
use rossby_storage::{
    Error, Key as RawKey, KeyRange, Kv, KvPair, KvStore, Result, ScanOrder, Transaction, Value,
};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// The clock every operation uses: nothing expires during a test.
const NOW_MS: u64 = 1_700_000_000_000;

/// Most temporary devices one schedule adds.
const MAX_TEMP_DEVICES: usize = 3;

/// How often an operation that keeps failing with a conflict is re-issued before
/// the test gives up (each attempt already retries internally).
const MAX_REISSUES: usize = 200;

// ---------------------------------------------------------------------------
// Schedules
// ---------------------------------------------------------------------------

/// A pause between two operations of a task.
#[derive(Clone, Copy, Debug)]
enum Pause {
    /// Yield to the scheduler this many times.
    Yield(u8),
    /// Sleep this many milliseconds.
    Sleep(u8),
}

/// How a sender re-sends a message whose send succeeded.
#[derive(Clone, Copy, Debug)]
enum Resend {
    /// Not at all.
    No,
    /// Once more after the send succeeded (as after a lost reply).
    Later,
    /// Twice in the same enqueue batch.
    SameBatch,
}

#[derive(Clone, Copy, Debug)]
struct MessagePlan {
    pause: Pause,
    /// Re-read the recipient's device list before sending (else reuse the last
    /// version known, which may be stale).
    refresh: bool,
    resend: Resend,
}

#[derive(Clone, Debug)]
struct SenderPlan {
    messages: Vec<MessagePlan>,
}

/// What a fetch loop does with a fetched batch (cycled through).
#[derive(Clone, Copy, Debug)]
enum AckAction {
    /// Acknowledge the batch's last sequence number.
    Ack,
    /// Do not acknowledge (the batch is fetched again); never twice in a row.
    Skip,
    /// Acknowledge, then acknowledge the same sequence number again.
    Repeat,
    /// Acknowledge, then acknowledge this far below the new pointer.
    Older(u8),
}

#[derive(Clone, Debug)]
struct FetcherPlan {
    max_count: usize,
    actions: Vec<AckAction>,
}

/// How a temporary device is added.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AddMode {
    /// One `add` of a record that is already authorized.
    Authorized,
    /// `add` and `authorize` in one transaction.
    SameTxn,
    /// `add`, then `authorize` in a second transaction.
    Separate,
}

#[derive(Clone, Copy, Debug)]
enum ChurnOp {
    /// Add a temporary device (ignored once `MAX_TEMP_DEVICES` were added).
    Add(AddMode),
    /// Remove the n-th (modulo) temporary device still present, if any.
    Remove(u8),
}

#[derive(Clone, Copy, Debug)]
struct ChurnStep {
    pause: Pause,
    op: ChurnOp,
}

#[derive(Clone, Debug)]
struct Plan {
    /// One fetch loop per stable device.
    stable: Vec<FetcherPlan>,
    senders: Vec<SenderPlan>,
    churn: Vec<ChurnStep>,
    /// Yield inside transactions (seed, most yields per operation), to widen the
    /// windows in which transactions overlap.
    jitter: Option<(u64, u8)>,
}

fn pause_strategy(max_yields: u8, max_sleep_ms: u8) -> impl Strategy<Value = Pause> {
    prop_oneof![
        4 => (0..=max_yields).prop_map(Pause::Yield),
        1 => (1..=max_sleep_ms).prop_map(Pause::Sleep),
    ]
}

fn message_strategy() -> impl Strategy<Value = MessagePlan> {
    let resend = prop_oneof![
        6 => Just(Resend::No),
        1 => Just(Resend::Later),
        1 => Just(Resend::SameBatch),
    ];
    (pause_strategy(4, 1), any::<bool>(), resend).prop_map(|(pause, refresh, resend)| MessagePlan {
        pause,
        refresh,
        resend,
    })
}

fn fetcher_strategy() -> impl Strategy<Value = FetcherPlan> {
    let action = prop_oneof![
        3 => Just(AckAction::Ack),
        1 => Just(AckAction::Skip),
        1 => Just(AckAction::Repeat),
        1 => (0u8..4).prop_map(AckAction::Older),
    ];
    (1usize..=3, prop::collection::vec(action, 1..=6))
        .prop_map(|(max_count, actions)| FetcherPlan { max_count, actions })
}

fn churn_strategy() -> impl Strategy<Value = ChurnStep> {
    let mode = prop_oneof![
        Just(AddMode::Authorized),
        Just(AddMode::SameTxn),
        Just(AddMode::Separate),
    ];
    let op = prop_oneof![
        3 => mode.prop_map(ChurnOp::Add),
        2 => any::<u8>().prop_map(ChurnOp::Remove),
    ];
    (pause_strategy(16, 3), op).prop_map(|(pause, op)| ChurnStep { pause, op })
}

fn plan_strategy() -> impl Strategy<Value = Plan> {
    (
        prop::collection::vec(fetcher_strategy(), 1..=3),
        prop::collection::vec(
            prop::collection::vec(message_strategy(), 1..=12)
                .prop_map(|messages| SenderPlan { messages }),
            1..=4,
        ),
        prop::collection::vec(churn_strategy(), 0..=6),
        prop_oneof![
            1 => Just(None),
            3 => (any::<u64>(), 1u8..=4).prop_map(Some),
        ],
    )
        .prop_map(|(stable, senders, churn, jitter)| Plan {
            stable,
            senders,
            churn,
            jitter,
        })
}

/// A fixed, larger schedule: three stable devices, four senders with
/// `messages_per_sender` messages each, and churn that adds three devices (one
/// way each) and removes two.
fn fixed_plan(messages_per_sender: usize) -> Plan {
    let actions = [
        AckAction::Ack,
        AckAction::Skip,
        AckAction::Repeat,
        AckAction::Older(2),
        AckAction::Ack,
        AckAction::Older(0),
    ];
    let stable = (0..3)
        .map(|i| FetcherPlan {
            max_count: i + 1,
            actions: actions.iter().copied().cycle().skip(i).take(5).collect(),
        })
        .collect();
    let senders = (0..4)
        .map(|s| SenderPlan {
            messages: (0..messages_per_sender)
                .map(|m| MessagePlan {
                    pause: if (m + s) % 5 == 0 {
                        Pause::Sleep(1)
                    } else {
                        Pause::Yield(((m * 7 + s) % 4) as u8)
                    },
                    refresh: (m + s) % 3 != 0,
                    resend: match (m + 2 * s) % 7 {
                        0 => Resend::Later,
                        3 => Resend::SameBatch,
                        _ => Resend::No,
                    },
                })
                .collect(),
        })
        .collect();
    let churn = vec![
        ChurnStep {
            pause: Pause::Sleep(2),
            op: ChurnOp::Add(AddMode::Authorized),
        },
        ChurnStep {
            pause: Pause::Yield(10),
            op: ChurnOp::Add(AddMode::Separate),
        },
        ChurnStep {
            pause: Pause::Sleep(3),
            op: ChurnOp::Remove(0),
        },
        ChurnStep {
            pause: Pause::Yield(3),
            op: ChurnOp::Add(AddMode::SameTxn),
        },
        ChurnStep {
            pause: Pause::Sleep(2),
            op: ChurnOp::Remove(1),
        },
    ];
    Plan {
        stable,
        senders,
        churn,
        jitter: Some((0x5eed, 2)),
    }
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Runs `$body` in a transaction on `$store.kv` with a retry policy patient
/// enough for the contention these tests create on purpose.
macro_rules! txn {
    ($store:expr, |$txn:ident| $body:expr) => {
        rossby_storage::transact!($store.kv, &patient(), |$txn| $body)
    };
}

/// Retries long enough that only a real livelock fails a test.
fn patient() -> rossby_storage::RetryPolicy {
    rossby_storage::RetryPolicy {
        max_attempts: MAX_REISSUES as u32,
        deadline: Duration::from_secs(60),
        ..rossby_storage::RetryPolicy::default()
    }
}

/// A store that yields to the scheduler a pseudo-random number of times before
/// every operation of its transactions, so that transactions of different tasks
/// overlap far more often than they would on the (fast) memory backend.
struct JitterKv {
    inner: Kv,
    max_yields: u8,
    seed: AtomicU64,
}

impl JitterKv {
    fn wrap(inner: Kv, seed: u64, max_yields: u8) -> Kv {
        Arc::new(JitterKv {
            inner,
            max_yields,
            seed: AtomicU64::new(seed),
        })
    }
}

#[async_trait]
impl KvStore for JitterKv {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    async fn begin(&self) -> KvResult<Box<dyn Transaction>> {
        let state = self
            .seed
            .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
            | 1;
        let inner = self.inner.begin().await?;
        Ok(Box::new(JitterTxn {
            inner,
            state,
            max_yields: self.max_yields,
        }))
    }
}

struct JitterTxn {
    inner: Box<dyn Transaction>,
    state: u64,
    max_yields: u8,
}

impl JitterTxn {
    async fn jitter(&mut self) {
        // xorshift64
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        for _ in 0..self.state % (u64::from(self.max_yields) + 1) {
            tokio::task::yield_now().await;
        }
    }
}

#[async_trait]
impl Transaction for JitterTxn {
    async fn get(&mut self, key: &[u8]) -> KvResult<Option<Value>> {
        self.jitter().await;
        self.inner.get(key).await
    }

    async fn scan(
        &mut self,
        range: &KeyRange,
        limit: usize,
        order: ScanOrder,
    ) -> KvResult<Vec<KvPair>> {
        self.jitter().await;
        self.inner.scan(range, limit, order).await
    }

    async fn get_for_update(&mut self, key: &[u8]) -> KvResult<Option<Value>> {
        self.jitter().await;
        self.inner.get_for_update(key).await
    }

    async fn put(&mut self, key: RawKey, value: Value) -> KvResult<()> {
        self.jitter().await;
        self.inner.put(key, value).await
    }

    async fn delete(&mut self, key: RawKey) -> KvResult<()> {
        self.jitter().await;
        self.inner.delete(key).await
    }

    async fn commit(mut self: Box<Self>) -> KvResult<()> {
        self.jitter().await;
        self.inner.commit().await
    }

    async fn rollback(self: Box<Self>) -> KvResult<()> {
        self.inner.rollback().await
    }
}

async fn pause(p: Pause) {
    match p {
        Pause::Yield(n) => {
            for _ in 0..n {
                tokio::task::yield_now().await;
            }
        }
        Pause::Sleep(ms) => tokio::time::sleep(Duration::from_millis(u64::from(ms))).await,
    }
}

/// Re-issues `op` while it fails with a conflict (the store's own retries ran out).
/// On every backend such a failure means nothing was committed (TiKV reports a
/// commit of unknown outcome as `Undetermined`, which is not re-issued).
async fn reissue<T, F, Fut>(what: &str, mut op: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    for _ in 0..MAX_REISSUES {
        match op().await {
            Err(Error::Kv(KvError::RetriesExhausted { .. } | KvError::Conflict(_))) => {
                tokio::task::yield_now().await;
            }
            other => return other,
        }
    }
    panic!("{what} kept conflicting {MAX_REISSUES} times");
}

fn store_on(kv: Kv) -> Store {
    let hasher = LookupHasher::new(
        vec![Pepper {
            version: 1,
            secret: vec![7; 32],
        }],
        1,
    )
    .expect("hasher");
    Store::new(kv, hasher)
}

fn device_record(authorized: bool) -> Device {
    Device {
        identity_key: vec![1; 32],
        encryption_key: vec![2; 32],
        authorized,
        label: "test".into(),
        ..Device::default()
    }
}

/// Creates a box with `devices` authorized devices; returns their ids and
/// starting pointers.
async fn create_box_with_devices(
    store: &Store,
    box_id: BoxId,
    devices: usize,
) -> Vec<(DeviceId, u64)> {
    txn!(store, |txn| accounts::create_box(txn, box_id, NOW_MS).await).expect("create box");
    let mut out = Vec::new();
    for _ in 0..devices {
        let id = DeviceId::new();
        let (_, start) = add_device(store, box_id, id, AddMode::SameTxn).await;
        out.push((id, start.pointer));
    }
    out
}

/// Where a device added by [`add_device`] starts.
#[derive(Clone, Copy, Debug)]
struct AddedDevice {
    /// Device-list version after the `add` transaction.
    add_version: u64,
    /// The device's pointer right after `add`.
    pointer: u64,
    /// Device-list version after authorization (equal to `add_version` unless
    /// authorized in a second transaction).
    auth_version: u64,
    /// The first sequence number enqueued after authorization committed.
    first_seq_after_auth: u64,
}

/// Adds (and authorizes) a device; returns the device-list versions of the
/// transactions in order, and where the device starts.
async fn add_device(
    store: &Store,
    box_id: BoxId,
    id: DeviceId,
    mode: AddMode,
) -> (Vec<u64>, AddedDevice) {
    let limits = &store.limits;
    let (add_version, pointer, auth_version) = txn!(store, |txn| {
        {
            let record = device_record(matches!(mode, AddMode::Authorized));
            let add_version = devices::add(txn, limits, box_id, id, &record, NOW_MS).await?;
            let pointer: Pointer = txn
                .get(&Key::Pointer(box_id, id))
                .await?
                .expect("pointer written by add");
            let head: QueueHead = txn.get(&Key::Next(box_id)).await?.expect("queue head");
            assert_eq!(head.device_list_version, add_version);
            assert_eq!(
                pointer.acked,
                head.next_seq - 1,
                "a new pointer starts at last_seq"
            );
            let auth_version = match mode {
                AddMode::SameTxn => devices::authorize(txn, box_id, id, NOW_MS).await?,
                AddMode::Authorized | AddMode::Separate => add_version,
            };
            Ok((add_version, pointer.acked, auth_version))
        }
    })
    .expect("add device");
    if mode == AddMode::SameTxn {
        assert_eq!(auth_version, add_version + 1);
    }
    let mut versions = vec![add_version];
    let mut added = AddedDevice {
        add_version,
        pointer,
        auth_version,
        first_seq_after_auth: pointer + 1,
    };
    if let AddMode::Separate = mode {
        let (auth_version, next_seq) = txn!(store, |txn| {
            {
                // `authorize` writes `next`, so no enqueue commits between this
                // snapshot and the commit: later envelopes see the new version.
                let head: QueueHead = txn.get(&Key::Next(box_id)).await?.expect("queue head");
                let v = devices::authorize(txn, box_id, id, NOW_MS).await?;
                assert_eq!(v, head.device_list_version + 1);
                Ok((v, head.next_seq))
            }
        })
        .expect("authorize device");
        versions.push(auth_version);
        added.auth_version = auth_version;
        added.first_seq_after_auth = next_seq;
    }
    (versions, added)
}

async fn current_version(store: &Store, box_id: BoxId) -> u64 {
    txn!(store, |txn| devices::recipients(txn, box_id).await)
        .expect("recipients")
        .0
}

async fn fetch(store: &Store, box_id: BoxId, device: DeviceId, max_count: usize) -> Fetched {
    let bounds = FetchLimits {
        max_count,
        max_bytes: 1024,
    };
    reissue("fetch", || store.fetch(box_id, device, bounds))
        .await
        .expect("fetch")
}

async fn ack(store: &Store, box_id: BoxId, device: DeviceId, upto: u64) -> Acked {
    reissue("ack", || store.ack(box_id, device, upto, NOW_MS))
        .await
        .expect("ack")
}

async fn queue_entries(store: &Store, box_id: BoxId) -> Vec<u64> {
    let raw = txn!(store, |txn| {
        txn.scan(
            &Key::table_range(box_id, Table::Queue),
            100_000,
            ScanOrder::Forward,
        )
        .await
    })
    .expect("scan queue");
    raw.iter()
        .map(|(k, _)| match Key::decode(k).expect("queue key") {
            Key::Queue(_, seq) => seq,
            other => panic!("unexpected key {other:?} in the queue range"),
        })
        .collect()
}

/// Re-raises the panic of a task that panicked, so proptest sees its message.
async fn join<T>(handle: tokio::task::JoinHandle<T>) -> T {
    match handle.await {
        Ok(value) => value,
        Err(err) => match err.try_into_panic() {
            Ok(payload) => std::panic::resume_unwind(payload),
            Err(err) => panic!("task failed: {err}"),
        },
    }
}

// ---------------------------------------------------------------------------
// Tasks
// ---------------------------------------------------------------------------

/// One message a sender got a sequence number for.
#[derive(Clone, Debug)]
struct Sent {
    sender_box: BoxId,
    sender_device: DeviceId,
    message_id: MessageId,
    payload: Vec<u8>,
    seq: u64,
}

/// Sends one envelope (possibly twice in one batch) until it gets a sequence
/// number; returns it. Stale device lists are refreshed from the error.
async fn send_until_enqueued(
    store: &Store,
    recipient: BoxId,
    env: &mut NewEnvelope,
    same_batch: bool,
) -> (u64, bool) {
    for _ in 0..MAX_REISSUES {
        let batch: Vec<NewEnvelope> = if same_batch {
            vec![env.clone(), env.clone()]
        } else {
            vec![env.clone()]
        };
        let outcomes = match store.enqueue(recipient, &batch, NOW_MS).await {
            Ok(outcomes) => outcomes,
            Err(Error::Kv(KvError::RetriesExhausted { .. } | KvError::Conflict(_))) => {
                tokio::task::yield_now().await;
                continue;
            }
            Err(err) => panic!("enqueue failed: {err:?}"),
        };
        assert_eq!(outcomes.len(), batch.len());
        let mut outcomes = outcomes.into_iter();
        match outcomes.next().expect("one outcome") {
            Ok(first) => {
                if let Some(second) = outcomes.next() {
                    let second = second.expect("in-batch repeat of an enqueued envelope");
                    assert_eq!(second.seq, first.seq, "in-batch repeat got another seq");
                    assert!(second.duplicate, "in-batch repeat was enqueued twice");
                }
                return (first.seq, first.duplicate);
            }
            Err(Error::StaleDeviceList {
                box_id, version, ..
            }) => {
                assert_eq!(box_id, recipient);
                assert!(
                    version > env.device_list_version,
                    "device-list versions only grow: sent {}, told {version}",
                    env.device_list_version
                );
                if let Some(second) = outcomes.next() {
                    assert!(
                        matches!(second, Err(Error::StaleDeviceList { version: v, .. }) if v == version),
                        "in-batch repeat of a stale envelope: {second:?}"
                    );
                }
                env.device_list_version = version;
            }
            Err(err) => panic!("unexpected enqueue outcome {err:?}"),
        }
    }
    panic!("send kept failing {MAX_REISSUES} times");
}

async fn run_sender(store: Store, recipient: BoxId, index: usize, plan: SenderPlan) -> Vec<Sent> {
    let sender_box = BoxId::new(RegionId(1));
    let sender_device = create_box_with_devices(&store, sender_box, 1).await[0].0;
    let mut version = current_version(&store, recipient).await;
    let mut sent = Vec::new();
    for (m, msg) in plan.messages.iter().enumerate() {
        pause(msg.pause).await;
        if msg.refresh {
            version = current_version(&store, recipient).await;
        }
        let mut env = NewEnvelope {
            sender: rossby_storage::tables::queue::Sender::Device {
                box_id: sender_box,
                device_id: sender_device,
                identity_key: Some([7; 32]),
            },
            message_id: MessageId::new(),
            device_list_version: version,
            payload: format!("sender {index} message {m}").into_bytes(),
            wrapped_for: None,
        };
        let same_batch = matches!(msg.resend, Resend::SameBatch);
        let (seq, duplicate) = send_until_enqueued(&store, recipient, &mut env, same_batch).await;
        // Nothing is committed by a failed attempt on these backends, so the first
        // success is the one that enqueued.
        assert!(
            !duplicate,
            "first successful send of {:?} was a duplicate",
            env.message_id
        );
        version = env.device_list_version;
        if let Resend::Later = msg.resend {
            // As after a lost reply: the same message again, with the version it
            // was sent with (which may be stale by now).
            let (again, duplicate) =
                send_until_enqueued(&store, recipient, &mut env.clone(), false).await;
            assert_eq!(again, seq, "a re-sent message got a different seq");
            assert!(
                duplicate,
                "a re-sent message was not reported as a duplicate"
            );
        }
        sent.push(Sent {
            sender_box,
            sender_device,
            message_id: env.message_id,
            payload: env.payload,
            seq,
        });
    }
    sent
}

/// What a temporary device went through.
#[derive(Clone, Debug)]
struct TempDevice {
    id: DeviceId,
    added: AddedDevice,
    removed_at_version: Option<u64>,
}

/// Runs the churn schedule; returns the temporary devices and every device-list
/// version the churn transactions produced, in order.
async fn run_churn(
    store: Store,
    box_id: BoxId,
    steps: Vec<ChurnStep>,
) -> (Vec<TempDevice>, Vec<u64>) {
    let mut temps: Vec<TempDevice> = Vec::new();
    let mut versions = Vec::new();
    for step in steps {
        pause(step.pause).await;
        match step.op {
            ChurnOp::Add(mode) => {
                if temps.len() >= MAX_TEMP_DEVICES {
                    continue;
                }
                let id = DeviceId::new();
                let (vs, added) = add_device(&store, box_id, id, mode).await;
                versions.extend(vs);
                temps.push(TempDevice {
                    id,
                    added,
                    removed_at_version: None,
                });
            }
            ChurnOp::Remove(n) => {
                let present: Vec<usize> = (0..temps.len())
                    .filter(|&i| temps[i].removed_at_version.is_none())
                    .collect();
                if present.is_empty() {
                    continue;
                }
                let i = present[usize::from(n) % present.len()];
                let id = temps[i].id;
                let limits = &store.limits;
                let v = txn!(store, |txn| lifecycle::remove_device(
                    txn, limits, box_id, id
                )
                .await)
                .expect("remove device");
                versions.push(v);
                temps[i].removed_at_version = Some(v);
            }
        }
    }
    (temps, versions)
}

/// What one fetch loop saw.
#[derive(Debug, Default)]
struct FetchLog {
    /// Envelopes in the order first received.
    received: Vec<Delivered>,
    /// Every pointer value observed (from fetches and acks), in order.
    pointers: Vec<u64>,
}

impl FetchLog {
    fn observe_pointer(&mut self, acked: u64) {
        if let Some(&prev) = self.pointers.last() {
            assert!(
                acked >= prev,
                "pointer moved backwards from {prev} to {acked}"
            );
        }
        self.pointers.push(acked);
    }

    /// Checks a fetched batch (contiguous after the pointer, no gap, redeliveries
    /// identical to the first delivery) and records the new envelopes.
    fn observe_fetch(&mut self, start: u64, pointer: u64, fetched: &Fetched) {
        assert_eq!(fetched.gap, None, "a fetch reported a gap");
        assert_eq!(
            fetched.acked, pointer,
            "the pointer changed behind the device's back"
        );
        self.observe_pointer(fetched.acked);
        let mut highest = start + self.received.len() as u64;
        for (i, d) in fetched.envelopes.iter().enumerate() {
            assert_eq!(
                d.seq,
                fetched.acked + 1 + i as u64,
                "fetch after pointer {} skipped a seq: got {:?}",
                fetched.acked,
                fetched.envelopes.iter().map(|d| d.seq).collect::<Vec<_>>()
            );
            if d.seq <= highest {
                let first = &self.received[(d.seq - start - 1) as usize];
                assert_eq!(first, d, "seq {} changed between deliveries", d.seq);
            } else {
                assert_eq!(d.seq, highest + 1);
                highest = d.seq;
                self.received.push(d.clone());
            }
        }
        assert!(
            highest <= fetched.last_seq,
            "received seq {highest} beyond last_seq {}",
            fetched.last_seq
        );
    }
}

/// Acknowledges `upto` below or at the pointer: must change and delete nothing.
async fn noop_ack(
    store: &Store,
    box_id: BoxId,
    device: DeviceId,
    upto: u64,
    pointer: u64,
    log: &mut FetchLog,
) {
    assert!(upto <= pointer);
    let acked = ack(store, box_id, device, upto).await;
    assert_eq!(
        acked,
        Acked {
            acked: pointer,
            deleted: 0
        },
        "ack of {upto} at pointer {pointer}"
    );
    log.observe_pointer(acked.acked);
}

/// Fetches and acknowledges everything up to `last` (no more messages come).
async fn drain(store: Store, box_id: BoxId, device: DeviceId, start: u64, last: u64) -> FetchLog {
    let mut log = FetchLog::default();
    let mut pointer = start;
    loop {
        let fetched = fetch(&store, box_id, device, 3).await;
        log.observe_fetch(start, pointer, &fetched);
        assert_eq!(fetched.last_seq, last);
        let Some(target) = fetched.envelopes.last().map(|d| d.seq) else {
            break;
        };
        let acked = ack(&store, box_id, device, target).await;
        assert_eq!(acked.acked, target);
        log.observe_pointer(acked.acked);
        pointer = target;
        noop_ack(&store, box_id, device, target, pointer, &mut log).await;
    }
    assert_eq!(pointer, last, "device {device:?} did not get to the end");
    log
}

/// Fetches and acknowledges until the senders are done and everything is acked.
async fn run_fetcher(
    store: Store,
    box_id: BoxId,
    device: DeviceId,
    start: u64,
    plan: FetcherPlan,
    senders_done: Arc<AtomicBool>,
) -> FetchLog {
    let mut log = FetchLog::default();
    let mut pointer = start;
    let mut step = 0usize;
    let mut skipped = false;
    loop {
        let done = senders_done.load(Ordering::SeqCst);
        let fetched = fetch(&store, box_id, device, plan.max_count).await;
        log.observe_fetch(start, pointer, &fetched);
        let Some(target) = fetched.envelopes.last().map(|d| d.seq) else {
            if done && pointer == fetched.last_seq {
                return log;
            }
            tokio::task::yield_now().await;
            continue;
        };
        let action = plan.actions[step % plan.actions.len()];
        step += 1;
        if matches!(action, AckAction::Skip) && !skipped {
            skipped = true;
            tokio::task::yield_now().await;
            continue;
        }
        skipped = false;
        let acked = ack(&store, box_id, device, target).await;
        assert_eq!(
            acked.acked, target,
            "ack of {target} from pointer {pointer}"
        );
        log.observe_pointer(acked.acked);
        pointer = target;
        match action {
            AckAction::Repeat => noop_ack(&store, box_id, device, target, pointer, &mut log).await,
            AckAction::Older(k) => {
                let upto = pointer.saturating_sub(u64::from(k));
                noop_ack(&store, box_id, device, upto, pointer, &mut log).await;
            }
            AckAction::Ack | AckAction::Skip => {}
        }
    }
}

// ---------------------------------------------------------------------------
// The scenario
// ---------------------------------------------------------------------------

async fn run_scenario(kv: Kv, plan: Plan) {
    let kv = match plan.jitter {
        Some((seed, max_yields)) => JitterKv::wrap(kv, seed, max_yields),
        None => kv,
    };
    let store = store_on(kv);
    let b = BoxId::new(RegionId(1));
    let stable = create_box_with_devices(&store, b, plan.stable.len()).await;
    for &(_, start) in &stable {
        assert_eq!(start, 0, "stable devices are added before any traffic");
    }
    let setup_version = current_version(&store, b).await;

    let senders_done = Arc::new(AtomicBool::new(false));
    let fetchers: Vec<_> = stable
        .iter()
        .zip(&plan.stable)
        .map(|(&(id, start), fp)| {
            tokio::spawn(run_fetcher(
                store.clone(),
                b,
                id,
                start,
                fp.clone(),
                senders_done.clone(),
            ))
        })
        .collect();
    let churn = tokio::spawn(run_churn(store.clone(), b, plan.churn.clone()));
    let senders: Vec<_> = plan
        .senders
        .iter()
        .enumerate()
        .map(|(i, sp)| tokio::spawn(run_sender(store.clone(), b, i, sp.clone())))
        .collect();

    let mut sent: Vec<Sent> = Vec::new();
    for handle in senders {
        sent.extend(join(handle).await);
    }
    senders_done.store(true, Ordering::SeqCst);
    let (temps, churn_versions) = join(churn).await;
    let mut logs = Vec::new();
    for handle in fetchers {
        logs.push(join(handle).await);
    }

    // Every message got exactly one seq, and the seqs are exactly 1..=last.
    let last = sent.len() as u64;
    let by_seq: BTreeMap<u64, &Sent> = sent.iter().map(|s| (s.seq, s)).collect();
    assert_eq!(by_seq.len(), sent.len(), "two messages got the same seq");
    assert_eq!(
        by_seq.keys().copied().collect::<Vec<_>>(),
        (1..=last).collect::<Vec<_>>(),
        "the seqs handed to senders are not 1..=last"
    );
    let ids: BTreeSet<(DeviceId, MessageId)> = sent
        .iter()
        .map(|s| (s.sender_device, s.message_id))
        .collect();
    assert_eq!(ids.len(), sent.len(), "a message id was reused");

    // Device-list versions only grow over the churn.
    let mut prev = setup_version;
    for &v in &churn_versions {
        assert!(
            v > prev,
            "churn versions {churn_versions:?} after setup {setup_version}"
        );
        prev = v;
    }

    let check_envelope = |d: &Delivered| {
        let s = by_seq
            .get(&d.seq)
            .unwrap_or_else(|| panic!("seq {} was never handed out", d.seq));
        let e: &StoredEnvelope = &d.envelope;
        assert_eq!(
            e.sender_box,
            s.sender_box.as_bytes().to_vec(),
            "seq {}",
            d.seq
        );
        assert_eq!(
            e.sender_device,
            s.sender_device.as_bytes().to_vec(),
            "seq {}",
            d.seq
        );
        assert_eq!(
            e.message_id,
            s.message_id.as_bytes().to_vec(),
            "seq {}",
            d.seq
        );
        assert_eq!(e.payload, s.payload, "seq {}", d.seq);
        assert!(e.device_list_version >= setup_version);
    };

    // 1. Stable devices received 1..=last, in order, once each; and each one's
    // final ack (already at last) is a no-op.
    for (log, &(id, _)) in logs.iter_mut().zip(&stable) {
        let seqs: Vec<u64> = log.received.iter().map(|d| d.seq).collect();
        assert_eq!(seqs, (1..=last).collect::<Vec<_>>(), "stable device {id:?}");
        let mut prev_version = 0;
        for d in &log.received {
            check_envelope(d);
            // Enqueues commit in seq order and the version in `next` only grows.
            assert!(
                d.envelope.device_list_version >= prev_version,
                "versions out of order at seq {}",
                d.seq
            );
            prev_version = d.envelope.device_list_version;
        }
        noop_ack(&store, b, id, last, last, log).await;
    }

    // 3. Temporary devices still present receive exactly what came after their
    // starting pointer, encrypted for a list that included them. They fetch and
    // acknowledge everything at the same time, so their final acks overlap too.
    let drains: Vec<_> = temps
        .iter()
        .filter(|t| t.removed_at_version.is_none())
        .map(|t| {
            let handle = tokio::spawn(drain(store.clone(), b, t.id, t.added.pointer, last));
            (t.id, handle)
        })
        .collect();
    let mut drained = BTreeMap::new();
    for (id, handle) in drains {
        drained.insert(id, join(handle).await);
    }
    for t in &temps {
        if t.removed_at_version.is_some() {
            let err = store
                .fetch(b, t.id, FetchLimits::default())
                .await
                .expect_err("fetch by a removed device");
            assert!(matches!(err, Error::DeviceNotFound), "{err:?}");
            continue;
        }
        let log = &drained[&t.id];
        let start = t.added.pointer;
        let seqs: Vec<u64> = log.received.iter().map(|d| d.seq).collect();
        assert_eq!(
            seqs,
            (start + 1..=last).collect::<Vec<_>>(),
            "temporary device {t:?}"
        );
        for d in &log.received {
            check_envelope(d);
            assert!(
                d.envelope.device_list_version >= t.added.add_version,
                "seq {} was committed for device-list version {}, older than the add of {t:?}",
                d.seq,
                d.envelope.device_list_version,
            );
            if d.seq >= t.added.first_seq_after_auth {
                assert!(
                    d.envelope.device_list_version >= t.added.auth_version,
                    "seq {} was committed for device-list version {}, older than the authorization of {t:?}",
                    d.seq,
                    d.envelope.device_list_version,
                );
            }
        }
    }

    // 4. Everything was acknowledged by every device: nothing remains queued.
    let remaining = queue_entries(&store, b).await;
    assert!(
        remaining.is_empty(),
        "seqs {remaining:?} remain after every device acknowledged {last}"
    );
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .expect("runtime")
}

fn run_on_memory(plan: Plan) {
    runtime().block_on(run_scenario(Arc::new(MemoryStore::new()), plan));
}

/// Runs `scenario` on a fresh memory store.
fn on_memory<F: Future<Output = ()>>(scenario: impl FnOnce(Kv) -> F) {
    runtime().block_on(scenario(Arc::new(MemoryStore::new())));
}

/// Runs `scenario` for `test` in a namespace of its own on the TiKV cluster named
/// by `ROSSBY_TEST_PD`; without a cluster, says so and returns.
fn on_tikv<F: Future<Output = ()>>(test: &str, scenario: impl FnOnce(Kv) -> F) {
    runtime().block_on(async {
        let Some(cluster) = backends::namespace::tikv(test).await else {
            return;
        };
        in_namespace(cluster, test, scenario).await;
    });
}

/// Runs `scenario` for `test` in a fresh namespace of the shared store `inner`,
/// and deletes the namespace when it passed.
async fn in_namespace<F: Future<Output = ()>>(
    inner: Kv,
    test: &str,
    scenario: impl FnOnce(Kv) -> F,
) {
    let namespace = backends::namespace::namespace(inner, test);
    scenario(namespace.clone()).await;
    backends::namespace::clear(&namespace).await;
}

/// Proptest cases run on TiKV, where every operation is a network round trip.
const TIKV_CASES: u32 = 4;

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 24,
        failure_persistence: None,
        max_shrink_iters: 256,
        ..ProptestConfig::default()
    })]

    #[test]
    fn concurrent_sends_churn_and_acks_keep_the_queue_consistent(plan in plan_strategy()) {
        run_on_memory(plan);
    }
}

#[test]
fn fixed_schedule_on_memory() {
    run_on_memory(fixed_plan(30));
}

#[test]
fn fixed_schedule_on_fjall() {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let store = FjallStore::open(FjallConfig::new(dir.path())).expect("open fjall");
    runtime().block_on(run_scenario(Arc::new(store), fixed_plan(10)));
}

/// What the TiKV runners do, on the memory store this binary shares.
#[test]
fn fixed_schedule_in_a_namespace_on_shared_memory() {
    let shared = backends::namespace::shared_memory();
    runtime().block_on(in_namespace(
        shared,
        "fixed_schedule_in_a_namespace_on_shared_memory",
        |kv| run_scenario(kv, fixed_plan(10)),
    ));
}

#[test]
fn fixed_schedule_on_tikv() {
    on_tikv("fixed_schedule_on_tikv", |kv| {
        run_scenario(kv, fixed_plan(10))
    });
}

/// A few of the proptest cases on TiKV, over one connection, each case in a
/// namespace of its own.
#[test]
fn concurrent_sends_churn_and_acks_keep_the_queue_consistent_on_tikv() {
    const TEST: &str = "concurrent_sends_churn_and_acks_keep_the_queue_consistent_on_tikv";
    let runtime = runtime();
    let Some(cluster) = runtime.block_on(backends::namespace::tikv(TEST)) else {
        return;
    };
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: TIKV_CASES,
        failure_persistence: None,
        max_shrink_iters: 16,
        ..ProptestConfig::default()
    });
    let outcome = runner.run(&plan_strategy(), |plan| {
        runtime.block_on(in_namespace(cluster.clone(), TEST, |kv| {
            run_scenario(kv, plan)
        }));
        Ok(())
    });
    if let Err(err) = outcome {
        panic!("{err}");
    }
}

/// Sends `n` messages to `box_id` one after the other; returns the last seq.
async fn send_sequentially(store: &Store, box_id: BoxId, n: usize) -> u64 {
    let sender_box = BoxId::new(RegionId(1));
    let sender_device = create_box_with_devices(store, sender_box, 1).await[0].0;
    let mut last = 0;
    for i in 0..n {
        let mut env = NewEnvelope {
            sender: rossby_storage::tables::queue::Sender::Device {
                box_id: sender_box,
                device_id: sender_device,
                identity_key: Some([7; 32]),
            },
            message_id: MessageId::new(),
            device_list_version: current_version(store, box_id).await,
            payload: format!("message {i}").into_bytes(),
            wrapped_for: None,
        };
        last = send_until_enqueued(store, box_id, &mut env, false).await.0;
    }
    last
}

/// Runs two table operations in transactions that overlap (both begin before
/// either commits), commits the first and then the second; if the second
/// conflicts, re-runs it alone. This is the interleaving in which snapshot
/// isolation allows write skew.
async fn overlapping<A, B>(store: &Store, first: A, second: B)
where
    A: AsyncFnOnce(&mut Tx<'_>) -> Result<()>,
    B: AsyncFn(&mut Tx<'_>) -> Result<()>,
{
    let mut t1 = store.kv.begin().await.expect("begin");
    let mut t2 = store.kv.begin().await.expect("begin");
    first(&mut Tx::new(t1.as_mut()))
        .await
        .expect("first operation");
    second(&mut Tx::new(t2.as_mut()))
        .await
        .expect("second operation");
    t1.commit().await.expect("first commit");
    match t2.commit().await {
        Ok(()) => {}
        Err(KvError::Conflict(_)) => {
            txn!(store, |txn| second(txn).await).expect("second operation, re-run");
        }
        Err(err) => panic!("second commit: {err:?}"),
    }
}

/// Two devices acknowledge the last message in overlapping transactions, after
/// everything below their pointers was already deleted. Each sees the other's old
/// pointer; unless the two conflict, neither deletes anything and envelopes every
/// device acknowledged stay until they expire.
#[test]
fn overlapping_final_acks_of_two_devices_leave_nothing_behind() {
    on_memory(final_acks_of_two_devices_overlap);
}

#[test]
fn overlapping_final_acks_of_two_devices_leave_nothing_behind_on_tikv() {
    on_tikv(
        "overlapping_final_acks_of_two_devices_leave_nothing_behind_on_tikv",
        final_acks_of_two_devices_overlap,
    );
}

/// A box with two devices, ten envelopes, both devices acknowledged up to 5 (so
/// 1..=5 are deleted). Returns the box, the devices and the last sequence number.
async fn two_devices_acknowledged_halfway(store: &Store) -> (BoxId, DeviceId, DeviceId, u64) {
    let b = BoxId::new(RegionId(1));
    let devs = create_box_with_devices(store, b, 2).await;
    let (d1, d2) = (devs[0].0, devs[1].0);
    let last = send_sequentially(store, b, 10).await;
    assert_eq!(ack(store, b, d1, 5).await.acked, 5);
    assert_eq!(
        ack(store, b, d2, 5).await,
        Acked {
            acked: 5,
            deleted: 5
        }
    );
    assert_eq!(
        queue_entries(store, b).await,
        (6..=last).collect::<Vec<_>>()
    );
    (b, d1, d2, last)
}

async fn final_acks_of_two_devices_overlap(kv: Kv) {
    let store = store_on(kv);
    let limits = &store.limits;
    let (b, d1, d2, last) = two_devices_acknowledged_halfway(&store).await;

    overlapping(
        &store,
        async |txn| queue::ack(txn, limits, b, d1, last, NOW_MS).await.map(drop),
        async |txn| queue::ack(txn, limits, b, d2, last, NOW_MS).await.map(drop),
    )
    .await;
    let remaining = queue_entries(&store, b).await;
    assert!(
        remaining.is_empty(),
        "seqs {remaining:?} remain after both devices acknowledged {last}"
    );
}

/// The same with a device acknowledging everything while the only other device is
/// removed: each transaction sees the other device's old pointer.
#[test]
fn ack_overlapping_a_removal_leaves_nothing_behind() {
    on_memory(an_ack_overlaps_a_removal);
}

#[test]
fn ack_overlapping_a_removal_leaves_nothing_behind_on_tikv() {
    on_tikv(
        "ack_overlapping_a_removal_leaves_nothing_behind_on_tikv",
        an_ack_overlaps_a_removal,
    );
}

async fn an_ack_overlaps_a_removal(kv: Kv) {
    let store = store_on(kv);
    let limits = &store.limits;
    let (b, d1, d2, last) = two_devices_acknowledged_halfway(&store).await;

    overlapping(
        &store,
        async |txn| queue::ack(txn, limits, b, d1, last, NOW_MS).await.map(drop),
        async |txn| lifecycle::remove_device(txn, limits, b, d2).await.map(drop),
    )
    .await;
    let remaining = queue_entries(&store, b).await;
    assert!(
        remaining.is_empty(),
        "seqs {remaining:?} remain after the only remaining device acknowledged {last}"
    );
}
