//! Send, Fetch, Ack and Subscribe.
//!
//! # Send
//! The message id must be a UUIDv7; recipients are distinct boxes, at most
//! `max_recipients_per_send`, each envelope non-empty and within the payload
//! limit. Each recipient box gets its own transaction, and concurrent sends to
//! the same box are coalesced into one transaction by the [`Enqueuer`] (every
//! enqueue writes the box's `next` key, so separate transactions would conflict
//! and retry). The reply has one [`pb::SendResult`] per recipient in request
//! order: `OK` with the sequence number (also for a retried message id: the
//! original one), `STALE_DEVICES` with the current device list, `NOT_FOUND`
//! (unknown, deleted, blocking or contacts-only recipient), or a storage status
//! (`UNAVAILABLE`, `UNDETERMINED`: retry that recipient with the same message id).
//! After a commit, the recipient box's fetch waiters and subscribed devices are
//! told, here and, when peer notifications are on ([`crate::peer`]), on the other
//! gateways holding presence leases of the box's devices (off the reply path).
//! The sender's own box may be a recipient (a copy for its other devices).
//!
//! An `ephemeral` send stores nothing: the envelope is pushed as `pb::Ephemeral`
//! to the recipient's devices subscribed to this gateway right now (never back to
//! the sending device), after the same checks of visibility and device-list
//! version as a stored send; its `seq` is 0.
//!
//! # Fetch
//! Returns envelopes after the device's pointer, bounded by the request's and the
//! gateway's count and byte limits (0 means the gateway's limit). With `wait_ms`,
//! an empty fetch waits (at most `max_fetch_wait`) until a commit into the box
//! through this gateway, or a peer notification of one through another gateway,
//! wakes it. With peers on, a waiting fetch holds the device's presence lease
//! (claimed before the queue is re-read, so no commit falls in between). As the
//! fallback for lost notifications it re-checks storage every fetch poll interval
//! ([`FETCH_POLL_INTERVAL`] unless configured; it can be switched off).
//!
//! # Subscribe
//! Opens one server-initiated unidirectional stream on the connection for the
//! calling device (a second Subscribe of the device on the same connection is a
//! no-op; one on another connection replaces this one, whose stream then ends:
//! a device has one live subscription per gateway) and writes length-prefixed
//! `pb::Push` frames on it, from a queue bounded in frames and bytes: first a
//! `MessagesAvailable` with the box's current last sequence number, then one per
//! commit into the box and one per ephemeral message. The stream ends when the
//! connection closes or the device is removed. With peers on, the subscription
//! holds the device's presence lease, claimed before the box's head is read.
//! Ephemeral messages reach only devices subscribed to the gateway that got them.

use super::directory::{device_list, visible_by_box};
use super::{Failure, Origin, Shared, decode, now_ms, parse_box_id};
use crate::auth::Authenticated;
use crate::metrics::Metrics;
use crate::peer::Peers;
use crate::peer::leases::LeaseGuard;
use crate::peer::ownership::Owner;
use crate::presence::{PUSH_QUEUE, Presence, PushReceiver, push_frame, push_queue};
use rossby_keyspace::{BoxId, DeviceId, MessageId};
use rossby_protocol::pb::{self, Status};
use rossby_storage::tables::contacts::{self, Relationship};
use rossby_storage::tables::queue::{
    self, ANY_DEVICE_LIST, Enqueued, FetchLimits, Fetched, NewEnvelope, Sender,
};
use rossby_storage::tables::records::AcceptFrom;
use rossby_storage::tables::{Store, Tx, accounts, devices};
use rossby_storage::transact;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;
use tokio::sync::{Notify, oneshot, watch};
use tokio::time::Instant;

/// How often a waiting fetch re-reads storage (for messages committed through
/// other gateways, which do not wake local waiters).
pub const FETCH_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Most envelopes one coalesced enqueue transaction carries.
pub const MAX_BATCH_ENVELOPES: usize = 64;

/// Most payload bytes one coalesced enqueue transaction carries (one envelope is
/// always taken, whatever its size).
pub const MAX_BATCH_BYTES: usize = 1024 * 1024;

/// How long opening a push stream may take.
const OPEN_PUSH_TIMEOUT: Duration = Duration::from_secs(5);

type Reply = oneshot::Sender<Result<Enqueued, Failure>>;

/// How commits made through other gateways reach this one: peer notifications,
/// once attached, and storage polling by waiting fetches.
#[derive(Debug)]
pub(crate) struct Remote {
    peers: OnceLock<Arc<Peers>>,
    /// Milliseconds between storage re-reads of a waiting fetch; 0: never.
    fetch_poll_ms: AtomicU64,
}

impl Default for Remote {
    fn default() -> Self {
        Remote {
            peers: OnceLock::new(),
            fetch_poll_ms: AtomicU64::new(millis(FETCH_POLL_INTERVAL)),
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Remote {
    /// The peer machinery, when attached.
    pub(crate) fn peers(&self) -> Option<&Arc<Peers>> {
        self.peers.get()
    }

    /// Sets the storage poll interval of waiting fetches (`None`: no polling).
    pub(crate) fn set_fetch_poll_interval(&self, interval: Option<Duration>) {
        let ms = interval.map_or(0, |d| millis(d).max(1));
        self.fetch_poll_ms.store(ms, Ordering::Relaxed);
    }

    fn fetch_poll_interval(&self) -> Option<Duration> {
        match self.fetch_poll_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }
}

struct Job {
    envelope: NewEnvelope,
    /// Whether devices that are not connected get a wake-up push.
    wake: pb::Wake,
    reply: Reply,
    /// Transactions this envelope took part in that hit a conflict.
    conflicts: u32,
    /// When it was first submitted (the retry deadline counts from here).
    submitted: Instant,
}

/// A box's envelopes waiting for its worker's next transaction.
struct BoxQueue {
    jobs: Vec<Job>,
    /// Wakes the worker when it waits for work while a commit is running.
    wake: Arc<Notify>,
}

/// Coalesces concurrent enqueues into the same box and pipelines the box's
/// transactions.
///
/// The first envelope for a box starts a worker task that runs one transaction
/// for everything queued for the box (group commit per box), until nothing is
/// left. The next transaction begins as soon as the previous one is committing
/// ([`KvStore::begin_after`](rossby_storage::KvStore::begin_after)): its start
/// timestamp's round trip overlaps the earlier commit, its snapshot includes it,
/// and it takes every envelope that arrived meanwhile. So an envelope waits at
/// most for the start of the next transaction, never for a whole earlier one,
/// and consecutive transactions of a box never conflict (each reads the `next`
/// key the previous one wrote). Commit order is still sequence order: a
/// transaction's snapshot is taken only after the previous commit returned.
///
/// A transaction that conflicts (another gateway wrote the box: ownership was
/// moving) puts its envelopes back at the front of the queue for the next one,
/// within the store's retry policy (attempts and deadline). The worker and each
/// commit are tasks of their own, so a cancelled request cannot strand the others.
///
/// With peers attached, [`Enqueuer::submit`] sends envelopes for boxes another
/// gateway owns to that owner ([`crate::peer::forward`]) and executes them here
/// when it cannot be reached.
pub struct Enqueuer {
    store: Store,
    presence: Presence,
    metrics: Arc<Metrics>,
    /// Boxes with a running worker, and what waits for its next transaction.
    pending: Mutex<HashMap<BoxId, BoxQueue>>,
    /// Other gateways' side of the announcements.
    pub(crate) remote: Remote,
    /// Wake-up pushes for devices that are not connected, once attached.
    pub(crate) pusher: OnceLock<crate::push::Pusher>,
}

impl Enqueuer {
    /// Attaches the peer machinery: from now on writes for boxes other gateways
    /// own go to them. False (and nothing changes) if peers were attached already.
    pub(crate) fn attach(&self, peers: Arc<Peers>) -> bool {
        self.remote.peers.set(peers).is_ok()
    }

    /// An enqueuer over `store` that announces commits to `presence`.
    pub fn new(store: Store, presence: Presence, metrics: Arc<Metrics>) -> Self {
        Enqueuer {
            store,
            presence,
            metrics,
            pending: Mutex::new(HashMap::new()),
            remote: Remote::default(),
            pusher: OnceLock::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<BoxId, BoxQueue>> {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Enqueues one envelope into `recipient`, through the box's owner when that
    /// is another gateway; the receiver yields its outcome. `wake` says whether
    /// the recipient's devices that are not connected get a wake-up push.
    pub fn submit(
        self: &Arc<Self>,
        recipient: BoxId,
        envelope: NewEnvelope,
        wake: pb::Wake,
    ) -> oneshot::Receiver<Result<Enqueued, Failure>> {
        let owner = self
            .remote
            .peers()
            .map(|p| (p.clone(), p.owner_of(recipient)));
        let Some((peers, Owner::Remote(address))) = owner else {
            return self.submit_local(recipient, envelope, wake);
        };
        let (reply, rx) = oneshot::channel();
        let this = self.clone();
        tokio::spawn(async move {
            let forwarded = peers
                .forward(
                    &address,
                    to_peer(recipient, &envelope, wake),
                    recipient.home_region(),
                )
                .await;
            let outcome = match forwarded {
                Ok(result) => from_peer(result),
                Err(why) => {
                    // Idempotent per (sender device, message id): if the owner did
                    // commit it, this answers from its dedup record.
                    tracing::debug!(peer = %address, error = %why, "owner unreachable; enqueueing here");
                    this.submit_local(recipient, envelope, wake)
                        .await
                        .unwrap_or_else(|_| {
                            Err(Failure::unavailable("the enqueue did not complete; retry"))
                        })
                }
            };
            let _ = reply.send(outcome);
        });
        rx
    }

    /// Enqueues one envelope into `recipient` in this gateway, whoever owns it.
    pub fn submit_local(
        self: &Arc<Self>,
        recipient: BoxId,
        envelope: NewEnvelope,
        wake: pb::Wake,
    ) -> oneshot::Receiver<Result<Enqueued, Failure>> {
        let (reply, rx) = oneshot::channel();
        let job = Job {
            envelope,
            wake,
            reply,
            conflicts: 0,
            submitted: Instant::now(),
        };
        let wake = {
            let mut pending = self.lock();
            if let Some(queue) = pending.get_mut(&recipient) {
                queue.jobs.push(job);
                queue.wake.notify_one();
                return rx;
            }
            let wake = Arc::new(Notify::new());
            pending.insert(
                recipient,
                BoxQueue {
                    jobs: vec![job],
                    wake: wake.clone(),
                },
            );
            wake
        };
        let this = self.clone();
        tokio::spawn(async move { this.run(recipient, wake).await });
        rx
    }

    /// The worker of one box (see [`Enqueuer`]).
    async fn run(self: Arc<Self>, recipient: BoxId, wake: Arc<Notify>) {
        let guard = WorkerGuard {
            enqueuer: &self,
            recipient,
        };
        // The commit still running, if any: true once it has returned.
        let mut committing: Option<watch::Receiver<bool>> = None;
        loop {
            // Wait for envelopes; leave when there are none and nothing commits.
            loop {
                let waiting = {
                    let mut pending = self.lock();
                    if pending.get(&recipient).is_some_and(|q| !q.jobs.is_empty()) {
                        break;
                    }
                    match &committing {
                        Some(done) if !*done.borrow() => done.clone(),
                        _ => {
                            pending.remove(&recipient);
                            std::mem::forget(guard);
                            return;
                        }
                    }
                };
                let mut done = waiting;
                tokio::select! {
                    _ = wake.notified() => {}
                    _ = done.wait_for(|d| *d) => {}
                }
            }
            let begun = match committing.take() {
                Some(mut done) => {
                    let prior = Box::pin(async move {
                        let _ = done.wait_for(|d| *d).await;
                    });
                    self.store.kv.begin_after(prior).await
                }
                None => self.store.kv.begin().await,
            };
            // Taken after the begin: everything that arrived meanwhile goes in.
            let batch = {
                let mut pending = self.lock();
                pending
                    .get_mut(&recipient)
                    .map(|q| take_batch(&mut q.jobs))
                    .unwrap_or_default()
            };
            let mut txn = match begun {
                Ok(txn) => txn,
                Err(err) => {
                    fail(batch, &Failure::from(err));
                    continue;
                }
            };
            if batch.is_empty() {
                let _ = txn.rollback().await;
                continue;
            }
            let (envelopes, jobs): (Vec<NewEnvelope>, Vec<Waiting>) =
                batch.into_iter().map(Job::split).unzip();
            let limits = &self.store.limits;
            let enqueued = queue::enqueue(
                &mut Tx::new(&mut *txn),
                limits,
                recipient,
                &envelopes,
                now_ms(),
            )
            .await;
            match enqueued {
                Ok(outcomes) => {
                    let (tx, rx) = watch::channel(false);
                    committing = Some(rx);
                    let this = self.clone();
                    tokio::spawn(async move {
                        match txn.commit().await {
                            Ok(()) => this.delivered(recipient, jobs, outcomes),
                            Err(err) => {
                                this.retry_or_fail(recipient, envelopes, jobs, err.into())
                                    .await
                            }
                        }
                        // Only now may the next transaction take its snapshot.
                        let _ = tx.send(true);
                    });
                }
                Err(err) => {
                    let _ = txn.rollback().await;
                    self.retry_or_fail(recipient, envelopes, jobs, err).await;
                }
            }
        }
    }

    /// Answers the envelopes of a committed transaction and announces it.
    fn delivered(
        &self,
        recipient: BoxId,
        jobs: Vec<Waiting>,
        outcomes: Vec<rossby_storage::Result<Enqueued>>,
    ) {
        let mut stored = 0u64;
        let mut last_seq = 0u64;
        let mut wakes = Wakes::None;
        for (job, outcome) in jobs.into_iter().zip(outcomes) {
            let outcome = match outcome {
                Ok(enqueued) => {
                    if !enqueued.duplicate {
                        stored += 1;
                        last_seq = last_seq.max(enqueued.seq);
                        if job.wake == pb::Wake::High {
                            wakes.add(recipient, job.sender);
                        }
                    }
                    Ok(enqueued)
                }
                Err(err) => Err(Failure::from(err)),
            };
            // The sender may have gone away; its envelope is stored anyway.
            let _ = job.reply.send(outcome);
        }
        if stored > 0 {
            self.metrics.envelopes_enqueued_total.inc_by(stored);
            self.presence.messages_available(recipient, last_seq);
            if let Some(peers) = self.remote.peers() {
                peers.committed(recipient, last_seq);
            }
            if let (Some(pusher), Some(skip)) = (self.pusher.get(), wakes.skip()) {
                pusher.committed(recipient, skip);
            }
        }
    }

    /// After a failed transaction: envelopes that met a conflict go back to the
    /// front of the box's queue (after the policy's back-off) while the retry
    /// policy allows; everything else is answered with the failure.
    async fn retry_or_fail(
        &self,
        recipient: BoxId,
        envelopes: Vec<NewEnvelope>,
        jobs: Vec<Waiting>,
        err: rossby_storage::Error,
    ) {
        let policy = &self.store.retry;
        let conflict = err.is_retryable();
        let failure = Failure::from(err);
        let mut retry = Vec::new();
        for (envelope, job) in envelopes.into_iter().zip(jobs) {
            let conflicts = job.conflicts + 1;
            if conflict
                && conflicts < policy.max_attempts
                && job.submitted.elapsed() < policy.deadline
            {
                retry.push(Job {
                    envelope,
                    wake: job.wake,
                    reply: job.reply,
                    conflicts,
                    submitted: job.submitted,
                });
            } else {
                let failure = if conflict {
                    Failure::unavailable(format!(
                        "the enqueue kept conflicting ({conflicts} attempts); retry"
                    ))
                } else {
                    failure.clone()
                };
                let _ = job.reply.send(Err(failure));
            }
        }
        if retry.is_empty() {
            return;
        }
        self.metrics.storage_retries_total.inc();
        let attempt = retry.iter().map(|j| j.conflicts).max().unwrap_or(1);
        tokio::time::sleep(policy.backoff(attempt)).await;
        let mut pending = self.lock();
        if let Some(queue) = pending.get_mut(&recipient) {
            retry.append(&mut queue.jobs);
            queue.jobs = retry;
            queue.wake.notify_one();
        } else {
            // The worker is gone (it cannot be while this transaction runs, but
            // never strand a sender).
            let failure = Failure::unavailable("the enqueue did not complete; retry");
            fail(retry, &failure);
        }
    }
}

/// What an envelope's sender waits on while its envelope is in a transaction.
struct Waiting {
    reply: Reply,
    wake: pb::Wake,
    /// The sending box and device.
    sender: Sender,
    conflicts: u32,
    submitted: Instant,
}

/// Which devices the envelopes of one commit wake: none, or every device of
/// the box except possibly the one device that sent all of them into its own
/// box (it has them already).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wakes {
    None,
    Skipping(Option<DeviceId>),
}

impl Wakes {
    fn add(&mut self, recipient: BoxId, sender: Sender) {
        // A device never gets a wake-up for its own message.
        let own = match sender {
            Sender::Device {
                box_id, device_id, ..
            } if box_id == recipient => Some(device_id),
            _ => None,
        };
        *self = match *self {
            Wakes::None => Wakes::Skipping(own),
            Wakes::Skipping(skip) if skip == own => Wakes::Skipping(skip),
            Wakes::Skipping(_) => Wakes::Skipping(None),
        };
    }

    /// `None`: nothing to wake; `Some(skip)`: wake every device but `skip`.
    fn skip(self) -> Option<Option<DeviceId>> {
        match self {
            Wakes::None => None,
            Wakes::Skipping(skip) => Some(skip),
        }
    }
}

impl Job {
    fn split(self) -> (NewEnvelope, Waiting) {
        let sender = self.envelope.sender;
        (
            self.envelope,
            Waiting {
                reply: self.reply,
                wake: self.wake,
                sender,
                conflicts: self.conflicts,
                submitted: self.submitted,
            },
        )
    }
}

fn fail(jobs: Vec<Job>, failure: &Failure) {
    for job in jobs {
        let _ = job.reply.send(Err(failure.clone()));
    }
}

/// A forwarded envelope as the peer protocol carries it.
fn to_peer(recipient: BoxId, envelope: &NewEnvelope, wake: pb::Wake) -> pb::PeerEnqueue {
    let (sender_box, sender_device, sender_identity_key, sealed_access_key) = match &envelope.sender
    {
        Sender::Device {
            box_id,
            device_id,
            identity_key,
        } => (
            box_id.as_bytes().to_vec(),
            device_id.as_bytes().to_vec(),
            identity_key.map(|k| k.to_vec()).unwrap_or_default(),
            Vec::new(),
        ),
        Sender::Sealed { access_key } => (Vec::new(), Vec::new(), Vec::new(), access_key.to_vec()),
    };
    pb::PeerEnqueue {
        recipient: recipient.as_bytes().to_vec(),
        sender_box,
        sender_device,
        sender_identity_key,
        sealed_access_key,
        message_id: envelope.message_id.as_bytes().to_vec(),
        device_list_version: envelope.device_list_version,
        payload: envelope.payload.clone(),
        wake: wake as i32,
    }
}

/// The owner's answer as this gateway's outcome.
fn from_peer(result: pb::PeerEnqueueResult) -> Result<Enqueued, Failure> {
    let status = i32::try_from(result.status)
        .ok()
        .and_then(|s| Status::try_from(s).ok())
        .unwrap_or(Status::Internal);
    if status == Status::Ok {
        Ok(Enqueued {
            seq: result.seq,
            duplicate: result.duplicate,
        })
    } else {
        Err(Failure::new(status, result.message))
    }
}

/// An enqueue's outcome as the peer protocol carries it.
fn peer_result(outcome: Result<Enqueued, Failure>) -> pb::PeerEnqueueResult {
    match outcome {
        Ok(e) => pb::PeerEnqueueResult {
            status: Status::Ok as u32,
            message: String::new(),
            seq: e.seq,
            duplicate: e.duplicate,
        },
        Err(f) => pb::PeerEnqueueResult {
            status: u32::try_from(f.status as i32).unwrap_or(Status::Internal as u32),
            message: f.message,
            seq: 0,
            duplicate: false,
        },
    }
}

fn from_wire(e: pb::PeerEnqueue) -> Result<(BoxId, NewEnvelope, pb::Wake), Failure> {
    let bad = |what: &str| Failure::bad_request(format!("forwarded envelope: bad {what}"));
    let wake = pb::Wake::try_from(e.wake).map_err(|_| bad("wake"))?;
    let sender = if e.sealed_access_key.is_empty() {
        Sender::Device {
            box_id: BoxId::try_from_slice(&e.sender_box).map_err(|_| bad("sender box"))?,
            device_id: DeviceId::try_from_slice(&e.sender_device)
                .map_err(|_| bad("sender device"))?,
            identity_key: match e.sender_identity_key.len() {
                0 => None,
                _ => Some(
                    e.sender_identity_key
                        .as_slice()
                        .try_into()
                        .map_err(|_| bad("sender identity key"))?,
                ),
            },
        }
    } else {
        Sender::Sealed {
            access_key: e
                .sealed_access_key
                .as_slice()
                .try_into()
                .map_err(|_| bad("access key"))?,
        }
    };
    Ok((
        BoxId::try_from_slice(&e.recipient).map_err(|_| bad("recipient"))?,
        NewEnvelope {
            sender,
            message_id: MessageId::try_from_slice(&e.message_id).map_err(|_| bad("message id"))?,
            device_list_version: e.device_list_version,
            // The owner reads the wraps from the envelope itself; group
            // envelopes (any list) have none to check.
            wrapped_for: if e.device_list_version == ANY_DEVICE_LIST {
                None
            } else {
                Some(wrapped_devices(&e.payload).map_err(|_| bad("envelope"))?)
            },
            payload: e.payload,
        },
        wake,
    ))
}

impl Enqueuer {
    /// Enqueues envelopes another gateway forwarded here, without forwarding them
    /// again: each coalesces with its box's other pending envelopes. One answer
    /// per envelope, in order.
    pub(crate) async fn execute_forwarded(
        self: &Arc<Self>,
        enqueues: Vec<pb::PeerEnqueue>,
    ) -> Vec<pb::PeerEnqueueResult> {
        let n = enqueues.len();
        let receivers: Vec<_> = enqueues
            .into_iter()
            .map(|e| {
                from_wire(e).map(|(recipient, env, wake)| self.submit_local(recipient, env, wake))
            })
            .collect();
        let mut results = Vec::with_capacity(receivers.len());
        for receiver in receivers {
            let outcome = match receiver {
                Ok(rx) => rx.await.unwrap_or_else(|_| {
                    Err(Failure::unavailable("the enqueue did not complete; retry"))
                }),
                Err(failure) => Err(failure),
            };
            results.push(peer_result(outcome));
        }
        if n > 0 {
            self.metrics.peer_forwards("served", n);
        }
        results
    }
}

/// Takes the next batch off a box's queue, bounded in count and bytes.
fn take_batch(queue: &mut Vec<Job>) -> Vec<Job> {
    let mut bytes = 0usize;
    let mut n = 0usize;
    for job in queue.iter() {
        if n > 0
            && (n >= MAX_BATCH_ENVELOPES || bytes + job.envelope.payload.len() > MAX_BATCH_BYTES)
        {
            break;
        }
        bytes += job.envelope.payload.len();
        n += 1;
    }
    queue.drain(..n).collect()
}

/// Removes a box's worker entry if its worker dies without finishing (a panic), so
/// later sends to the box start a new worker; waiting senders see their reply
/// channel closed.
struct WorkerGuard<'a> {
    enqueuer: &'a Enqueuer,
    recipient: BoxId,
}

impl Drop for WorkerGuard<'_> {
    fn drop(&mut self) {
        self.enqueuer.lock().remove(&self.recipient);
    }
}

/// A validated recipient.
struct Target {
    box_id: BoxId,
    device_list_version: u64,
    envelope: Vec<u8>,
    /// The devices its key wraps are for ([`wrapped_devices`]).
    wrapped_for: Vec<DeviceId>,
}

/// The devices an envelope's key wraps are for: `keys`, or for a sealed-sender
/// envelope `sealed_sender.keys`. What the enqueue checks against the
/// recipient's device list (protocol.md, "What the gateway checks of an
/// envelope"). An error says why the bytes are no per-device envelope.
pub(crate) fn wrapped_devices(envelope: &[u8]) -> Result<Vec<DeviceId>, String> {
    let envelope = <pb::Envelope as prost::Message>::decode(envelope)
        .map_err(|e| format!("the envelope is not a protobuf Envelope ({e})"))?;
    if envelope.group.is_some() {
        return Err("a group envelope goes by GroupSend or GroupCommit, not Send".into());
    }
    let keys = match &envelope.sealed_sender {
        Some(sealed) => &sealed.keys,
        None => &envelope.keys,
    };
    keys.iter()
        .map(|k| {
            DeviceId::try_from_slice(&k.device_id)
                .map_err(|_| "a key wrap's device id is not 16 bytes".to_string())
        })
        .collect()
}

fn validate_send(
    shared: &Shared,
    req: pb::SendRequest,
) -> Result<(MessageId, Vec<Target>, bool), Failure> {
    let message_id = MessageId::try_from_slice(&req.message_id)
        .map_err(|_| Failure::bad_request("message_id must be a UUIDv7 (16 bytes)"))?;
    if req.recipients.is_empty() {
        return Err(Failure::bad_request("a send needs at least one recipient"));
    }
    let max = shared.settings.max_recipients_per_send;
    if req.recipients.len() > max {
        return Err(Failure::new(
            Status::TooLarge,
            format!("at most {max} recipients per send"),
        ));
    }
    let max_payload = shared.store.limits.max_payload_bytes;
    let mut seen = HashSet::with_capacity(req.recipients.len());
    let mut targets = Vec::with_capacity(req.recipients.len());
    for r in req.recipients {
        let box_id = parse_box_id(&r.box_id)?;
        if !seen.insert(box_id) {
            return Err(Failure::bad_request(
                "each recipient box may appear only once",
            ));
        }
        if r.envelope.is_empty() {
            return Err(Failure::bad_request("envelopes must not be empty"));
        }
        if r.device_list_version == ANY_DEVICE_LIST {
            return Err(Failure::bad_request(
                "device_list_version must be the version the envelope was sealed for",
            ));
        }
        if r.envelope.len() > max_payload {
            return Err(Failure::new(
                Status::TooLarge,
                format!("an envelope may have at most {max_payload} bytes"),
            ));
        }
        let wrapped_for = wrapped_devices(&r.envelope).map_err(Failure::bad_request)?;
        targets.push(Target {
            box_id,
            device_list_version: r.device_list_version,
            envelope: r.envelope,
            wrapped_for,
        });
    }
    Ok((message_id, targets, req.ephemeral))
}

/// The per-recipient result of a failure; stale lists are read fresh. A list
/// goes into the reply whole while `list_budget` (bytes, spent by each list
/// included) allows, else with its box and version only: so a reply stays
/// small however many recipients are stale, and the client looks those lists
/// up (an empty list is how it knows to).
pub(super) async fn failed_result(
    shared: &Shared,
    box_id: BoxId,
    failure: Failure,
    list_budget: &mut usize,
) -> pb::SendResult {
    let mut result = pb::SendResult {
        box_id: box_id.as_bytes().to_vec(),
        status: failure.status as i32,
        message: failure.message.clone(),
        ..pb::SendResult::default()
    };
    if failure.status == Status::StaleDevices {
        match device_list(shared, box_id).await {
            Ok(mut list) => {
                let size = prost::Message::encoded_len(&list);
                if size <= *list_budget {
                    *list_budget -= size;
                } else {
                    list.devices = Vec::new();
                }
                result.current = Some(list);
            }
            Err(err) => result.status = err.status as i32,
        }
    }
    result
}

/// Send: enqueues an envelope into each recipient box (or pushes it, ephemeral).
pub(crate) async fn send(
    shared: &Shared,
    caller: &Authenticated,
    body: &[u8],
) -> Result<pb::SendResponse, Failure> {
    let mut req: pb::SendRequest = decode(body, "SendRequest")?;
    let attachments = std::mem::take(&mut req.attachments);
    let wake = pb::Wake::try_from(req.wake)
        .map_err(|_| Failure::bad_request(format!("unknown wake value {}", req.wake)))?;
    let (message_id, targets, ephemeral) = validate_send(shared, req)?;
    super::may_store(shared, caller)?;
    let bytes: u64 = targets.iter().map(|t| t.envelope.len() as u64).sum();
    shared.limits.stored(caller.box_id, bytes);
    super::attachments::keep_referenced(shared, &attachments).await?;
    if ephemeral {
        return send_ephemeral(shared, caller, targets).await;
    }
    let receivers: Vec<_> = targets
        .into_iter()
        .map(|t| {
            let envelope = NewEnvelope {
                sender: Sender::Device {
                    box_id: caller.box_id,
                    device_id: caller.device_id,
                    identity_key: caller.identity_key,
                },
                message_id,
                device_list_version: t.device_list_version,
                payload: t.envelope,
                wrapped_for: Some(t.wrapped_for),
            };
            (t.box_id, shared.enqueuer.submit(t.box_id, envelope, wake))
        })
        .collect();
    let mut results = Vec::with_capacity(receivers.len());
    let mut list_budget = shared.settings.max_stale_list_bytes;
    for (box_id, rx) in receivers {
        let outcome = rx
            .await
            .unwrap_or_else(|_| Err(Failure::unavailable("the enqueue did not complete; retry")));
        results.push(match outcome {
            Ok(enqueued) => pb::SendResult {
                box_id: box_id.as_bytes().to_vec(),
                status: Status::Ok as i32,
                seq: enqueued.seq,
                ..pb::SendResult::default()
            },
            Err(failure) => failed_result(shared, box_id, failure, &mut list_budget).await,
        });
    }
    Ok(pb::SendResponse { results })
}

/// Whether `recipient` accepts messages from `sender` right now (the same rules
/// as a stored send: own box always; not blocked; contacts-only boxes only from
/// contacts; unknown boxes answer `NOT_FOUND`), and whether the sender encrypted
/// for its current device list.
async fn ephemeral_check(
    shared: &Shared,
    recipient: BoxId,
    sender: BoxId,
    version: u64,
) -> Result<(), Failure> {
    let store = &shared.store;
    transact!(store, |txn| async {
        let Some(profile) = accounts::profile(txn, recipient).await? else {
            return Ok(Err(Failure::not_found()));
        };
        if recipient != sender {
            if !visible_by_box(txn, recipient, sender).await? {
                return Ok(Err(Failure::not_found()));
            }
            if profile.accept_from() == AcceptFrom::Contacts
                && !contacts::contains(txn, Relationship::Contact, recipient, sender).await?
            {
                return Ok(Err(Failure::not_found()));
            }
        }
        let (current, _) = devices::recipients(txn, recipient).await?;
        if current != version {
            return Ok(Err(Failure::from(rossby_storage::Error::StaleDeviceList {
                box_id: recipient,
                version: current,
                devices: Vec::new(),
            })));
        }
        Ok(Ok(()))
    }
    .await)?
}

async fn send_ephemeral(
    shared: &Shared,
    caller: &Authenticated,
    targets: Vec<Target>,
) -> Result<pb::SendResponse, Failure> {
    let mut results = Vec::with_capacity(targets.len());
    let mut list_budget = shared.settings.max_stale_list_bytes;
    for t in targets {
        match ephemeral_check(shared, t.box_id, caller.box_id, t.device_list_version).await {
            Ok(()) => {
                let push = pb::Ephemeral {
                    sender_box: caller.box_id.as_bytes().to_vec(),
                    sender_device: caller.device_id.as_bytes().to_vec(),
                    envelope: t.envelope,
                };
                let skip = (t.box_id == caller.box_id).then_some(caller.device_id);
                shared.presence.ephemeral(t.box_id, skip, &push);
                if let Some(peers) = shared.enqueuer.remote.peers() {
                    peers.ephemeral(t.box_id, skip, &push);
                }
                results.push(pb::SendResult {
                    box_id: t.box_id.as_bytes().to_vec(),
                    status: Status::Ok as i32,
                    ..pb::SendResult::default()
                });
            }
            Err(failure) => {
                results.push(failed_result(shared, t.box_id, failure, &mut list_budget).await);
            }
        }
    }
    Ok(pb::SendResponse { results })
}

fn fetch_response(fetched: Fetched) -> pb::FetchResponse {
    let (gap_from, gap_to) = fetched.gap.map_or((0, 0), |g| (g.from, g.to));
    pb::FetchResponse {
        envelopes: fetched
            .envelopes
            .into_iter()
            .map(|d| pb::QueuedEnvelope {
                seq: d.seq,
                sender_box: d.envelope.sender_box,
                sender_device: d.envelope.sender_device,
                message_id: d.envelope.message_id,
                enqueued_at_ms: d.envelope.enqueued_at_ms,
                envelope: d.envelope.payload,
                sender_identity_key: d.envelope.sender_identity_key,
            })
            .collect(),
        last_seq: fetched.last_seq,
        acked: fetched.acked,
        gap_from,
        gap_to,
    }
}

/// Fetch: envelopes after the calling device's pointer, optionally waiting.
pub(crate) async fn fetch(
    shared: &Shared,
    caller: &Authenticated,
    body: &[u8],
) -> Result<pb::FetchResponse, Failure> {
    let req: pb::FetchRequest = decode(body, "FetchRequest")?;
    let settings = &shared.settings;
    let bound = |asked: u32, max: usize| match asked {
        0 => max,
        n => usize::try_from(n).unwrap_or(usize::MAX).min(max),
    };
    let bounds = FetchLimits {
        max_count: bound(req.max_count, settings.max_fetch_count),
        max_bytes: bound(req.max_bytes, settings.max_fetch_bytes),
    };
    let wait = Duration::from_millis(u64::from(req.wait_ms)).min(settings.max_fetch_wait);
    let store = &shared.store;
    let (box_id, device) = (caller.box_id, caller.device_id);
    if wait.is_zero() {
        return Ok(fetch_response(store.fetch(box_id, device, bounds).await?));
    }
    let deadline = Instant::now() + wait;
    let waiter = shared.presence.waiter(box_id);
    let remote = &shared.enqueuer.remote;
    let mut lease: Option<LeaseGuard> = None;
    loop {
        // Armed before reading, so a commit between the read and the wait wakes us.
        let notified = waiter.notify().notified();
        let mut notified = std::pin::pin!(notified);
        notified.as_mut().enable();
        let fetched = store.fetch(box_id, device, bounds).await?;
        let now = Instant::now();
        if !fetched.envelopes.is_empty() || fetched.gap.is_some() || now >= deadline {
            return Ok(fetch_response(fetched));
        }
        // About to wait: make sure other gateways notify this one, then read again
        // (a commit before the lease was visible is in that read).
        if lease.is_none()
            && let Some(peers) = remote.peers()
        {
            lease = Some(peers.hold(box_id, device, false).await);
            continue;
        }
        let left = deadline - now;
        let nap = remote
            .fetch_poll_interval()
            .map_or(left, |poll| left.min(poll));
        tokio::select! {
            () = notified => {}
            () = tokio::time::sleep(nap) => {}
        }
    }
}

/// Ack: advances the calling device's pointer.
pub(crate) async fn ack(
    shared: &Shared,
    caller: &Authenticated,
    body: &[u8],
) -> Result<pb::AckResponse, Failure> {
    let req: pb::AckRequest = decode(body, "AckRequest")?;
    // Acks of one box's devices all write its `low` key: one at a time here
    // rather than conflicting in storage.
    let _box = shared.box_locks.lock(caller.box_id).await;
    let acked = shared
        .store
        .ack(caller.box_id, caller.device_id, req.up_to, now_ms())
        .await?;
    Ok(pb::AckResponse { acked: acked.acked })
}

/// Subscribe: pushes for the calling device on a server-initiated stream.
pub(crate) async fn subscribe(
    shared: &Shared,
    origin: &Origin<'_>,
    caller: &Authenticated,
    body: &[u8],
) -> Result<pb::SubscribeResponse, Failure> {
    let _req: pb::SubscribeRequest = decode(body, "SubscribeRequest")?;
    let Some(connection) = origin.connection else {
        return Err(Failure::unavailable("subscriptions need a QUIC connection"));
    };
    let (box_id, device) = (caller.box_id, caller.device_id);
    let presence = &shared.presence;
    if presence.is_subscribed(origin.conn_id, box_id, device) {
        return Ok(pb::SubscribeResponse {});
    }
    // Claimed before the head is read: a commit through another gateway is either
    // in the head or notified here.
    let lease = match shared.enqueuer.remote.peers() {
        Some(peers) => Some(peers.hold(box_id, device, true).await),
        None => None,
    };
    let head = shared
        .store
        .fetch(
            box_id,
            device,
            FetchLimits {
                max_count: 0,
                max_bytes: 0,
            },
        )
        .await?;
    let stream = match tokio::time::timeout(OPEN_PUSH_TIMEOUT, connection.open_uni()).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(_)) | Err(_) => {
            return Err(Failure::unavailable("could not open the push stream"));
        }
    };
    let (tx, rx) = push_queue(
        PUSH_QUEUE,
        shared.settings.push_queue_bytes,
        Some(shared.metrics.push_queue_bytes.clone()),
    );
    let first = push_frame(&pb::Push {
        event: Some(pb::push::Event::Messages(pb::MessagesAvailable {
            last_seq: head.last_seq,
        })),
    });
    // The queue is new and empty, so this cannot fail.
    let _ = tx.try_send(first);
    let token = presence.subscribe(origin.conn_id, box_id, device, tx);
    tokio::spawn(push_task(PushTask {
        stream,
        rx,
        connection: connection.clone(),
        presence: presence.clone(),
        metrics: shared.metrics.clone(),
        conn_id: origin.conn_id,
        box_id,
        token,
        _lease: lease,
    }));
    Ok(pb::SubscribeResponse {})
}

struct PushTask {
    stream: quinn::SendStream,
    rx: PushReceiver,
    connection: quinn::Connection,
    presence: Presence,
    metrics: Arc<Metrics>,
    conn_id: u64,
    box_id: BoxId,
    token: u64,
    /// The device's presence lease, held while the subscription lives.
    _lease: Option<LeaseGuard>,
}

/// Writes push frames until the subscription or the connection ends.
async fn push_task(mut task: PushTask) {
    loop {
        let push = tokio::select! {
            push = task.rx.recv() => push,
            _ = task.connection.closed() => None,
        };
        let Some(frame) = push else { break };
        // The shared frame itself goes to quinn: no copy per subscription.
        if task.stream.write_chunk(frame).await.is_err() {
            break;
        }
        task.metrics.pushes_total.inc();
    }
    task.presence
        .unsubscribe(task.conn_id, task.box_id, task.token);
    let _ = task.stream.finish();
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{TestEnv, TestSettings};
    use prost::Message as _;
    use rossby_keyspace::{DeviceId, MessageId};
    use rossby_protocol::pb::{self, Method, Status};
    use rossby_protocol::status::status_of;
    use std::time::{Duration, Instant};

    #[tokio::test]
    async fn send_fetch_ack_between_two_users_and_own_devices() {
        let env = TestEnv::new();
        let alice = env.register("alice@example.com").await;
        let alice2 = env.link(&alice, "laptop").await;
        let bob = env.register("bob@example.com").await;
        let to_alice = env.device_list_version(&bob, "alice@example.com").await;
        let own = env.device_list_version(&bob, "bob@example.com").await;

        // Bob sends to Alice and to his own box (a copy for his other devices).
        let message_id = MessageId::new();
        let req = pb::SendRequest {
            message_id: message_id.as_bytes().to_vec(),
            recipients: vec![
                pb::Recipient {
                    box_id: alice.box_id.as_bytes().to_vec(),
                    device_list_version: to_alice,
                    envelope: env.envelope_to(alice.box_id, Some(&bob), b"to alice").await,
                },
                pb::Recipient {
                    box_id: bob.box_id.as_bytes().to_vec(),
                    device_list_version: own,
                    envelope: env.envelope_to(bob.box_id, Some(&bob), b"copy").await,
                },
            ],
            ephemeral: false,
            attachments: Vec::new(),
            wake: pb::Wake::High as i32,
        };
        let resp = env.call_as(&bob, 1, Method::Send, &req).await;
        assert_eq!(status_of(&resp), Status::Ok, "{}", resp.message);
        let sent: pb::SendResponse = TestEnv::body(&resp);
        assert_eq!(sent.results.len(), 2);
        assert!(
            sent.results
                .iter()
                .all(|r| r.status == Status::Ok as i32 && r.seq == 1)
        );
        // A retry with the same message id is answered with the same seqs.
        let again: pb::SendResponse =
            TestEnv::body(&env.call_as(&bob, 1, Method::Send, &req).await);
        assert_eq!(again.results, sent.results);

        // Both of Alice's devices get it once.
        for device in [&alice, &alice2] {
            let fetched = env.fetch(device, 0).await;
            assert_eq!(fetched.envelopes.len(), 1);
            let e = &fetched.envelopes[0];
            assert_eq!(TestEnv::body_of(&e.envelope), b"to alice");
            assert_eq!(e.sender_box, bob.box_id.as_bytes());
            assert_eq!(e.sender_device, bob.device_id.as_bytes());
            assert_eq!(e.message_id, message_id.as_bytes());
            assert_eq!(fetched.last_seq, 1);
        }
        // Ack moves the pointer; acking beyond the last is refused.
        let resp = env
            .call_as(&alice, 1, Method::Ack, &pb::AckRequest { up_to: 1 })
            .await;
        assert_eq!(TestEnv::body::<pb::AckResponse>(&resp).acked, 1);
        assert!(env.fetch(&alice, 0).await.envelopes.is_empty());
        assert_eq!(env.fetch(&alice2, 0).await.envelopes.len(), 1);
        let resp = env
            .call_as(&alice, 1, Method::Ack, &pb::AckRequest { up_to: 5 })
            .await;
        assert_eq!(status_of(&resp), Status::AckBeyondLast);
        // Bob's own box holds the copy.
        let copy = &env.fetch(&bob, 0).await.envelopes[0].envelope;
        assert_eq!(TestEnv::body_of(copy), b"copy");
    }

    #[tokio::test]
    async fn envelopes_must_wrap_the_key_for_exactly_the_current_devices() {
        let env = TestEnv::new();
        let alice = env.register("alice@example.com").await;
        let laptop = env.link(&alice, "laptop").await;
        let bob = env.register("bob@example.com").await;
        let version = env.device_list_version(&bob, "alice@example.com").await;
        let send = async |envelope: Vec<u8>| {
            let req = pb::SendRequest {
                message_id: MessageId::new().as_bytes().to_vec(),
                recipients: vec![pb::Recipient {
                    box_id: alice.box_id.as_bytes().to_vec(),
                    device_list_version: version,
                    envelope,
                }],
                ..pb::SendRequest::default()
            };
            env.call_as(&bob, 1, Method::Send, &req).await
        };
        let wraps = |devices: &[&DeviceId]| {
            pb::Envelope {
                version: 1,
                keys: devices
                    .iter()
                    .map(|d| pb::WrappedKey {
                        device_id: d.as_bytes().to_vec(),
                        sealed: None,
                    })
                    .collect(),
                ..pb::Envelope::default()
            }
            .encode_to_vec()
        };
        // One of Alice's two devices left out, a stranger added, one twice:
        // refused for that recipient, naming what is wrong; nothing stored.
        let stranger = DeviceId::new();
        for (envelope, named) in [
            (wraps(&[&alice.device_id]), laptop.device_id),
            (
                wraps(&[&alice.device_id, &laptop.device_id, &stranger]),
                stranger,
            ),
            (
                wraps(&[&alice.device_id, &laptop.device_id, &laptop.device_id]),
                laptop.device_id,
            ),
        ] {
            let resp = send(envelope).await;
            assert_eq!(status_of(&resp), Status::Ok, "{}", resp.message);
            let result = &TestEnv::body::<pb::SendResponse>(&resp).results[0];
            assert_eq!(result.status, Status::BadRequest as i32, "{result:?}");
            assert!(
                result.message.contains(&named.to_string()),
                "{}",
                result.message
            );
        }
        assert!(env.fetch(&alice, 0).await.envelopes.is_empty());
        // Bytes that are no Envelope, and a group envelope, are refused whole.
        for bad in [
            vec![7u8; 40],
            pb::Envelope {
                group: Some(pb::GroupMessage::default()),
                ..pb::Envelope::default()
            }
            .encode_to_vec(),
        ] {
            let resp = send(bad).await;
            assert_eq!(status_of(&resp), Status::BadRequest, "{}", resp.message);
        }
        // Exactly her devices: stored.
        let resp = send(wraps(&[&laptop.device_id, &alice.device_id])).await;
        let result = &TestEnv::body::<pb::SendResponse>(&resp).results[0];
        assert_eq!(result.status, Status::Ok as i32, "{result:?}");
    }

    #[tokio::test]
    async fn bad_sends_are_rejected_whole() {
        let env = TestEnv::with(TestSettings {
            max_recipients: 2,
            ..TestSettings::default()
        });
        let bob = env.register("bob@example.com").await;
        let recipient = |b: &[u8]| pb::Recipient {
            box_id: b.to_vec(),
            device_list_version: 1,
            envelope: vec![1],
        };
        let b = bob.box_id.as_bytes().to_vec();
        let cases = [
            (vec![0x42; 16], vec![recipient(&b)], Status::BadRequest),
            (
                MessageId::new().as_bytes().to_vec(),
                vec![],
                Status::BadRequest,
            ),
            (
                MessageId::new().as_bytes().to_vec(),
                vec![recipient(&b), recipient(&b)],
                Status::BadRequest,
            ),
            (
                MessageId::new().as_bytes().to_vec(),
                vec![recipient(&[1; 3])],
                Status::BadRequest,
            ),
            (
                MessageId::new().as_bytes().to_vec(),
                vec![pb::Recipient {
                    device_list_version: u64::MAX,
                    ..recipient(&b)
                }],
                Status::BadRequest,
            ),
            (
                MessageId::new().as_bytes().to_vec(),
                vec![
                    recipient(&[1; 16]),
                    recipient(&[2; 16]),
                    recipient(&[3; 16]),
                ],
                Status::TooLarge,
            ),
        ];
        for (message_id, recipients, status) in cases {
            let req = pb::SendRequest {
                message_id,
                recipients,
                ephemeral: false,
                attachments: Vec::new(),
                wake: pb::Wake::High as i32,
            };
            let resp = env.call_as(&bob, 1, Method::Send, &req).await;
            assert_eq!(status_of(&resp), status, "{}", resp.message);
        }
        assert!(env.fetch(&bob, 0).await.envelopes.is_empty());
    }

    #[tokio::test]
    async fn stale_lists_in_a_reply_are_capped_in_bytes() {
        let env = TestEnv::with(TestSettings {
            max_stale_list_bytes: 6000,
            ..TestSettings::default()
        });
        let bob = env.register("bob@example.com").await;
        let mut recipients = Vec::new();
        for i in 0..4 {
            let name = format!("user{i}@example.com");
            let user = env.register(&name).await;
            let version = env.device_list_version(&bob, &name).await;
            let envelope = env.envelope_to(user.box_id, Some(&bob), b"x").await;
            env.link(&user, "laptop").await;
            recipients.push(pb::Recipient {
                box_id: user.box_id.as_bytes().to_vec(),
                device_list_version: version,
                envelope,
            });
        }
        let req = pb::SendRequest {
            message_id: MessageId::new().as_bytes().to_vec(),
            recipients,
            ephemeral: false,
            attachments: Vec::new(),
            wake: pb::Wake::High as i32,
        };
        let resp = env.call_as(&bob, 1, Method::Send, &req).await;
        let sent: pb::SendResponse = TestEnv::body(&resp);
        assert_eq!(sent.results.len(), 4);
        let mut full = 0;
        let mut listed_bytes = 0;
        for r in &sent.results {
            assert_eq!(r.status, Status::StaleDevices as i32);
            let current = r.current.as_ref().unwrap();
            assert_eq!(current.box_id, r.box_id);
            assert!(current.version > 0);
            if current.devices.is_empty() {
                continue;
            }
            assert_eq!(current.devices.len(), 2);
            full += 1;
            listed_bytes += prost::Message::encoded_len(current);
        }
        // Two devices' key bundles take a few KiB: the first list fits, the
        // others come with their version only (the client looks them up).
        assert!((1..4).contains(&full), "{full} full lists");
        assert!(listed_bytes <= 6000, "{listed_bytes}");
    }

    #[tokio::test]
    async fn stale_unknown_and_blocked_recipients() {
        let env = TestEnv::new();
        let alice = env.register("alice@example.com").await;
        let bob = env.register("bob@example.com").await;
        let version = env.device_list_version(&bob, "alice@example.com").await;
        // Alice adds a device: Bob's view is stale and he learns the new list.
        let laptop = env.link(&alice, "laptop").await;
        let stale = env.send(&bob, alice.box_id, version, b"x").await;
        assert_eq!(stale.status, Status::StaleDevices as i32);
        let current = stale.current.unwrap();
        assert!(current.version > version);
        assert_eq!(current.devices.len(), 2);
        assert!(
            current
                .devices
                .iter()
                .any(|d| d.device_id == laptop.device_id.as_bytes())
        );
        // An unknown box.
        let unknown = env
            .send(&bob, rossby_keyspace::BoxId::new(env.region()), 1, b"x")
            .await;
        assert_eq!(unknown.status, Status::NotFound as i32);
        // Alice blocks Bob: he gets exactly what an unknown box gives.
        let resp = env
            .call_as(
                &alice,
                1,
                Method::Block,
                &pb::BlockRequest {
                    box_id: bob.box_id.as_bytes().to_vec(),
                    ..pb::BlockRequest::default()
                },
            )
            .await;
        assert_eq!(status_of(&resp), Status::Ok);
        let blocked = env.send(&bob, alice.box_id, current.version, b"x").await;
        assert_eq!(blocked.status, unknown.status);
        assert_eq!(blocked.current, None);
        assert!(env.fetch(&alice, 0).await.envelopes.is_empty());
        // Unblocked, the message goes through.
        let resp = env
            .call_as(
                &alice,
                1,
                Method::Unblock,
                &pb::BlockRequest {
                    box_id: bob.box_id.as_bytes().to_vec(),
                    ..pb::BlockRequest::default()
                },
            )
            .await;
        assert_eq!(status_of(&resp), Status::Ok);
        let ok = env.send(&bob, alice.box_id, current.version, b"x").await;
        assert_eq!(ok.status, Status::Ok as i32);
    }

    #[tokio::test]
    async fn contacts_only_accepts_contacts() {
        let env = TestEnv::new();
        let alice = env.register("alice@example.com").await;
        let bob = env.register("bob@example.com").await;
        let resp = env
            .call_as(
                &alice,
                1,
                Method::UpdateSettings,
                &pb::UpdateSettingsRequest {
                    contacts_only: Some(true),
                    ..pb::UpdateSettingsRequest::default()
                },
            )
            .await;
        let settings: pb::UpdateSettingsResponse = TestEnv::body(&resp);
        assert!(settings.contacts_only && settings.discoverable);
        let version = env.device_list_version(&bob, "alice@example.com").await;
        let refused = env.send(&bob, alice.box_id, version, b"x").await;
        assert_eq!(refused.status, Status::NotFound as i32);
        // Alice adds Bob as a contact (by looking him up with add_contact).
        let req = pb::RequestKeyRequest {
            identifier: "bob@example.com".into(),
            add_contact: true,
            ..pb::RequestKeyRequest::default()
        };
        assert_eq!(
            status_of(&env.call_as(&alice, 1, Method::RequestKey, &req).await),
            Status::Ok
        );
        let ok = env.send(&bob, alice.box_id, version, b"x").await;
        assert_eq!(ok.status, Status::Ok as i32);
        // Alice takes Bob off her contacts: refused again. Removing a box that
        // is no contact (or no box at all) answers OK all the same.
        for box_id in [
            bob.box_id,
            bob.box_id,
            rossby_keyspace::BoxId::with_random(env.region(), [9; 16]),
        ] {
            let removed = env
                .call_as(
                    &alice,
                    1,
                    Method::RemoveContact,
                    &pb::RemoveContactRequest {
                        box_id: box_id.as_bytes().to_vec(),
                    },
                )
                .await;
            assert_eq!(status_of(&removed), Status::Ok);
        }
        let refused = env.send(&bob, alice.box_id, version, b"x").await;
        assert_eq!(refused.status, Status::NotFound as i32);
        let malformed = env
            .call_as(
                &alice,
                1,
                Method::RemoveContact,
                &pb::RemoveContactRequest { box_id: vec![1; 3] },
            )
            .await;
        assert_eq!(status_of(&malformed), Status::BadRequest);
    }

    #[tokio::test]
    async fn a_waiting_fetch_wakes_on_a_send() {
        let env = TestEnv::new();
        let alice = env.register("alice@example.com").await;
        let bob = env.register("bob@example.com").await;
        let version = env.device_list_version(&bob, "alice@example.com").await;
        // Nothing queued: a short wait returns empty after the wait.
        let started = Instant::now();
        assert!(env.fetch(&alice, 150).await.envelopes.is_empty());
        assert!(started.elapsed() >= Duration::from_millis(150));
        // A long wait returns as soon as Bob's message commits.
        let api = env.clone_handle();
        let waiting = {
            let alice = alice.clone();
            tokio::spawn(async move { api.fetch(&alice, 10_000).await })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        let started = Instant::now();
        assert_eq!(
            env.send(&bob, alice.box_id, version, b"hi").await.status,
            Status::Ok as i32
        );
        let fetched = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(fetched.envelopes.len(), 1);
        assert!(
            started.elapsed() < Duration::from_millis(900),
            "woken, not polled"
        );
        assert_eq!(env.presence_boxes(), 0, "waiters unregister");
    }

    #[tokio::test]
    async fn fetches_are_bounded() {
        let env = TestEnv::with(TestSettings {
            max_fetch_count: 3,
            ..TestSettings::default()
        });
        let alice = env.register("alice@example.com").await;
        let bob = env.register("bob@example.com").await;
        let version = env.device_list_version(&bob, "alice@example.com").await;
        for i in 0..5u8 {
            assert_eq!(
                env.send(&bob, alice.box_id, version, &[i; 10]).await.status,
                Status::Ok as i32
            );
        }
        assert_eq!(env.fetch(&alice, 0).await.envelopes.len(), 3);
        let req = pb::FetchRequest {
            max_count: 2,
            ..pb::FetchRequest::default()
        };
        let resp: pb::FetchResponse =
            TestEnv::body(&env.call_as(&alice, 1, Method::Fetch, &req).await);
        assert_eq!(resp.envelopes.len(), 2);
        assert_eq!(resp.last_seq, 5);
        let req = pb::FetchRequest {
            max_bytes: 15,
            ..pb::FetchRequest::default()
        };
        let resp: pb::FetchResponse =
            TestEnv::body(&env.call_as(&alice, 1, Method::Fetch, &req).await);
        assert_eq!(resp.envelopes.len(), 1);
    }

    #[test]
    fn batches_are_bounded_in_count_and_bytes() {
        let job = |len: usize| {
            let (reply, _rx) = tokio::sync::oneshot::channel();
            super::Job {
                envelope: super::NewEnvelope {
                    sender: rossby_storage::tables::queue::Sender::Device {
                        box_id: rossby_keyspace::BoxId::new(rossby_keyspace::RegionId(1)),
                        device_id: rossby_keyspace::DeviceId::new(),
                        identity_key: None,
                    },
                    message_id: MessageId::new(),
                    device_list_version: 1,
                    payload: vec![0; len],
                    wrapped_for: None,
                },
                wake: pb::Wake::High,
                reply,
                conflicts: 0,
                submitted: super::Instant::now(),
            }
        };
        let mut queue: Vec<super::Job> = (0..100).map(|_| job(10)).collect();
        assert_eq!(
            super::take_batch(&mut queue).len(),
            super::MAX_BATCH_ENVELOPES
        );
        assert_eq!(queue.len(), 100 - super::MAX_BATCH_ENVELOPES);
        let mut queue = vec![job(super::MAX_BATCH_BYTES * 2), job(1)];
        assert_eq!(
            super::take_batch(&mut queue).len(),
            1,
            "one oversized envelope goes alone"
        );
        let mut queue = vec![
            job(super::MAX_BATCH_BYTES / 2),
            job(super::MAX_BATCH_BYTES / 2),
            job(1),
        ];
        assert_eq!(super::take_batch(&mut queue).len(), 2);
        assert_eq!(queue.len(), 1);
    }

    /// Sends `n` one-byte envelopes (0, 1, ...) from `from` to `target` at once,
    /// taking the APIs in turn; each must succeed. Returns the sorted sequence
    /// numbers.
    async fn concurrent_sends(
        apis: &[&TestEnv],
        from: &super::super::testkit::TestDevice,
        target: rossby_keyspace::BoxId,
        version: u64,
        n: u8,
    ) -> Vec<u64> {
        let tasks: Vec<_> = (0..n)
            .map(|i| {
                let api = apis[usize::from(i) % apis.len()].clone_handle();
                let from = from.clone();
                tokio::spawn(async move { api.send(&from, target, version, &[i]).await })
            })
            .collect();
        let mut seqs = Vec::new();
        for t in tasks {
            let r = t.await.unwrap();
            assert_eq!(r.status, Status::Ok as i32);
            seqs.push(r.seq);
        }
        seqs.sort_unstable();
        seqs
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_gateways_writing_one_box_conflict_retry_and_land_everything_once() {
        // Two APIs over one snapshot-isolation store and no ownership: both
        // enqueuers write the same box, conflict on its `next` key, and put the
        // losing envelopes back into their next transaction.
        let env = TestEnv::new();
        let secrets =
            crate::auth::secrets::ServerSecrets::single(super::super::testkit::SECRET.to_vec())
                .unwrap();
        let other = env.with_server_secrets(secrets);
        let alice = env.register("alice@example.com").await;
        let bob = env.register("bob@example.com").await;
        let version = env.device_list_version(&bob, "alice@example.com").await;
        let seqs = concurrent_sends(&[&env, &other], &bob, alice.box_id, version, 60).await;
        assert_eq!(seqs, (1..=60).collect::<Vec<u64>>(), "no gap, no repeat");
        let mut payloads: Vec<u8> = Vec::new();
        loop {
            let fetched = env.fetch(&alice, 0).await;
            if fetched.envelopes.is_empty() {
                break;
            }
            payloads.extend(
                fetched
                    .envelopes
                    .iter()
                    .map(|e| TestEnv::body_of(&e.envelope)[0]),
            );
            let up_to = fetched.envelopes.last().unwrap().seq;
            let resp = env
                .call_as(&alice, 1, Method::Ack, &pb::AckRequest { up_to })
                .await;
            assert_eq!(status_of(&resp), Status::Ok);
        }
        payloads.sort_unstable();
        assert_eq!(
            payloads,
            (0..60u8).collect::<Vec<u8>>(),
            "each exactly once"
        );
    }

    #[tokio::test]
    async fn concurrent_sends_to_one_box_all_land_once() {
        let env = TestEnv::new();
        let alice = env.register("alice@example.com").await;
        let bob = env.register("bob@example.com").await;
        let version = env.device_list_version(&bob, "alice@example.com").await;
        let seqs = concurrent_sends(&[&env], &bob, alice.box_id, version, 40).await;
        assert_eq!(seqs, (1..=40).collect::<Vec<u64>>());
        let req = pb::FetchRequest::default();
        let resp: pb::FetchResponse =
            TestEnv::body(&env.call_as(&alice, 1, Method::Fetch, &req).await);
        assert_eq!(resp.envelopes.len(), 40);
    }

    #[tokio::test]
    async fn an_account_pays_for_every_copy_it_makes_the_gateway_store() {
        let env = TestEnv::with(TestSettings {
            stored_bytes: Some((0.0, 1000.0)),
            ..TestSettings::default()
        });
        let alice = env.register("alice@example.com").await;
        let bob = env.register("bob@example.com").await;
        let carol = env.register("carol@example.com").await;
        let mut envelopes = Vec::new();
        for b in [&bob, &carol] {
            envelopes.push(env.envelope_to(b.box_id, Some(&alice), &[7; 540]).await);
        }
        assert!(
            envelopes.iter().all(|e| e.len() > 540),
            "over 1000 bytes in all"
        );
        let recipient = |b: &super::super::testkit::TestDevice, v: u64| pb::Recipient {
            box_id: b.box_id.as_bytes().to_vec(),
            device_list_version: v,
            envelope: envelopes[usize::from(b.box_id != bob.box_id)].clone(),
        };
        let bv = env.device_list_version(&alice, "bob@example.com").await;
        let cv = env.device_list_version(&alice, "carol@example.com").await;
        let send = pb::SendRequest {
            message_id: MessageId::new().as_bytes().to_vec(),
            recipients: vec![recipient(&bob, bv), recipient(&carol, cv)],
            wake: pb::Wake::High as i32,
            ..pb::SendRequest::default()
        };
        // In credit: stored, 1200 bytes in all, which puts Alice in debt.
        let resp = env.call_as(&alice, 1, Method::Send, &send).await;
        assert_eq!(status_of(&resp), Status::Ok);
        let again = pb::SendRequest {
            message_id: MessageId::new().as_bytes().to_vec(),
            ..send.clone()
        };
        let resp = env.call_as(&alice, 1, Method::Send, &again).await;
        assert_eq!(status_of(&resp), Status::RateLimited);
        assert!(resp.message.contains("stored too much"), "{}", resp.message);
        // A device linked to the account now shares its debt: linking buys no
        // fresh budget.
        let tablet = env.link(&alice, "tablet").await;
        let again = pb::SendRequest {
            message_id: MessageId::new().as_bytes().to_vec(),
            ..send.clone()
        };
        let resp = env.call_as(&tablet, 1, Method::Send, &again).await;
        assert_eq!(status_of(&resp), Status::RateLimited, "{}", resp.message);
        // Another account has its own budget.
        let small = pb::SendRequest {
            message_id: MessageId::new().as_bytes().to_vec(),
            recipients: vec![pb::Recipient {
                box_id: alice.box_id.as_bytes().to_vec(),
                device_list_version: env.device_list_version(&bob, "alice@example.com").await,
                envelope: env.envelope_to(alice.box_id, Some(&bob), &[1; 10]).await,
            }],
            wake: pb::Wake::High as i32,
            ..pb::SendRequest::default()
        };
        let resp = env.call_as(&bob, 1, Method::Send, &small).await;
        assert_eq!(status_of(&resp), Status::Ok);
    }
}
