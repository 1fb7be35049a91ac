//! Who is online: an in-process registry of the devices subscribed to pushes on
//! each connection, and of requests waiting for a box's next message.
//!
//! A subscription is a queue of encoded push frames ([`push_queue`]), bounded in
//! entries and in bytes; the task that owns the connection's push stream drains
//! it. A push is encoded once and its frame (`Bytes`) shared by every
//! subscription it goes to, so an ephemeral message to a box costs its bytes once,
//! not once per subscribed device. Pushes never block a sender: when a
//! device's queue is full, a `MessagesAvailable` is dropped (the device fetches
//! everything after its pointer anyway, and a later push or its next fetch catches
//! up) and so is an ephemeral message (they are best effort by definition).
//!
//! A device has at most one live subscription on a gateway: the newest one (a
//! Subscribe on another connection replaces the older, whose push stream ends).
//! So a device cannot multiply the queued bytes by subscribing many times.
//!
//! Fetch waiters register a [`Waiter`] for their box; a commit into the box wakes
//! them all. Entries disappear with the last waiter and subscriber of a box, and
//! [`Presence::connection_closed`] drops every subscription of a connection, so
//! memory follows what is online now.
//!
//! This registry is per process. A message committed through another gateway
//! reaches it through a peer notification ([`crate::peer`]), which calls
//! [`Presence::messages_available`] just like a local commit; without peers, or
//! when a notification is lost, waiting fetches find it by polling storage.

use bytes::Bytes;
use rossby_keyspace::{BoxId, DeviceId};
use rossby_protocol::{framing, pb};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{Notify, mpsc};

/// Push frames buffered per subscription before new ones are dropped.
pub const PUSH_QUEUE: usize = 64;

/// The sending half of a subscription's queue (see [`push_queue`]).
#[derive(Clone, Debug)]
pub struct PushSender {
    tx: mpsc::Sender<Bytes>,
    queued: Arc<AtomicUsize>,
    limit: usize,
    gauge: Option<prometheus::IntGauge>,
}

/// The receiving half of a subscription's queue (see [`push_queue`]).
#[derive(Debug)]
pub struct PushReceiver {
    rx: mpsc::Receiver<Bytes>,
    queued: Arc<AtomicUsize>,
    gauge: Option<prometheus::IntGauge>,
}

/// A queue of encoded push frames holding at most `entries` frames and
/// `limit_bytes` bytes (one frame is always accepted into an empty queue, so a
/// frame larger than the limit still goes out), adding its queued bytes to
/// `gauge`.
pub fn push_queue(
    entries: usize,
    limit_bytes: usize,
    gauge: Option<prometheus::IntGauge>,
) -> (PushSender, PushReceiver) {
    let (tx, rx) = mpsc::channel(entries.max(1));
    let queued = Arc::new(AtomicUsize::new(0));
    (
        PushSender {
            tx,
            queued: queued.clone(),
            limit: limit_bytes,
            gauge: gauge.clone(),
        },
        PushReceiver { rx, queued, gauge },
    )
}

fn gauge_add(gauge: Option<&prometheus::IntGauge>, bytes: usize, add: bool) {
    if let Some(g) = gauge {
        let v = i64::try_from(bytes).unwrap_or(i64::MAX);
        if add { g.add(v) } else { g.sub(v) }
    }
}

impl PushSender {
    /// Queues `frame` unless the queue is full (in entries or bytes) or closed.
    pub fn try_send(&self, frame: Bytes) -> bool {
        let len = frame.len();
        let admitted = self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                (q == 0 || q + len <= self.limit).then_some(q + len)
            })
            .is_ok();
        if !admitted {
            return false;
        }
        if self.tx.try_send(frame).is_err() {
            self.queued.fetch_sub(len, Ordering::AcqRel);
            return false;
        }
        gauge_add(self.gauge.as_ref(), len, true);
        true
    }

    /// Whether the receiving side is gone.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

impl PushReceiver {
    fn taken(&self, frame: &Bytes) {
        self.queued.fetch_sub(frame.len(), Ordering::AcqRel);
        gauge_add(self.gauge.as_ref(), frame.len(), false);
    }

    /// The next frame; `None` once every sender is gone.
    pub async fn recv(&mut self) -> Option<Bytes> {
        let frame = self.rx.recv().await?;
        self.taken(&frame);
        Some(frame)
    }

    /// The next frame if one is queued.
    pub fn try_recv(&mut self) -> Option<Bytes> {
        let frame = self.rx.try_recv().ok()?;
        self.taken(&frame);
        Some(frame)
    }

    /// Bytes queued now.
    pub fn queued_bytes(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }
}

impl Drop for PushReceiver {
    fn drop(&mut self) {
        // Closed first, so nothing is queued after the drain below.
        self.rx.close();
        while let Ok(frame) = self.rx.try_recv() {
            self.taken(&frame);
        }
    }
}

/// The wire frame of a push, encoded once for every queue it goes to.
pub fn push_frame(push: &pb::Push) -> Bytes {
    Bytes::from(framing::encode(push))
}

struct Subscriber {
    token: u64,
    conn_id: u64,
    device: DeviceId,
    tx: PushSender,
}

#[derive(Default)]
struct BoxEntry {
    notify: Arc<Notify>,
    waiters: usize,
    subscribers: Vec<Subscriber>,
}

impl BoxEntry {
    fn is_empty(&self) -> bool {
        self.waiters == 0 && self.subscribers.is_empty()
    }
}

#[derive(Default)]
struct Inner {
    next_token: u64,
    boxes: HashMap<BoxId, BoxEntry>,
    /// Boxes each connection has subscriptions in.
    conns: HashMap<u64, Vec<BoxId>>,
}

impl Inner {
    fn prune(&mut self, box_id: BoxId) {
        if self.boxes.get(&box_id).is_some_and(BoxEntry::is_empty) {
            self.boxes.remove(&box_id);
        }
    }

    fn forget_conn_box(&mut self, conn_id: u64, box_id: BoxId) {
        let still = self
            .boxes
            .get(&box_id)
            .is_some_and(|e| e.subscribers.iter().any(|s| s.conn_id == conn_id));
        if !still && let Some(list) = self.conns.get_mut(&conn_id) {
            list.retain(|b| *b != box_id);
            if list.is_empty() {
                self.conns.remove(&conn_id);
            }
        }
    }
}

/// The registry. Cloning shares it.
#[derive(Clone, Default)]
pub struct Presence {
    inner: Arc<Mutex<Inner>>,
}

impl Presence {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether `device` of `box_id` has a live subscription on connection `conn_id`.
    pub fn is_subscribed(&self, conn_id: u64, box_id: BoxId, device: DeviceId) -> bool {
        self.lock().boxes.get(&box_id).is_some_and(|e| {
            e.subscribers
                .iter()
                .any(|s| s.conn_id == conn_id && s.device == device && !s.tx.is_closed())
        })
    }

    /// Registers a subscription, replacing any other of the same device (on
    /// this connection or another: a device has one live subscription, the
    /// newest; the replaced one's queue closes, which ends its push stream).
    /// Returns the subscription's token for [`Presence::unsubscribe`].
    pub fn subscribe(&self, conn_id: u64, box_id: BoxId, device: DeviceId, tx: PushSender) -> u64 {
        let mut inner = self.lock();
        inner.next_token += 1;
        let token = inner.next_token;
        let entry = inner.boxes.entry(box_id).or_default();
        let mut replaced = Vec::new();
        entry.subscribers.retain(|s| {
            let same = s.device == device;
            if same && s.conn_id != conn_id {
                replaced.push(s.conn_id);
            }
            !same
        });
        entry.subscribers.push(Subscriber {
            token,
            conn_id,
            device,
            tx,
        });
        let list = inner.conns.entry(conn_id).or_default();
        if !list.contains(&box_id) {
            list.push(box_id);
        }
        for other in replaced {
            inner.forget_conn_box(other, box_id);
        }
        token
    }

    /// Removes the subscription with this token (called by the push task when its
    /// stream ends; a no-op if it was replaced or dropped already).
    pub fn unsubscribe(&self, conn_id: u64, box_id: BoxId, token: u64) {
        let mut inner = self.lock();
        if let Some(entry) = inner.boxes.get_mut(&box_id) {
            entry.subscribers.retain(|s| s.token != token);
        }
        inner.forget_conn_box(conn_id, box_id);
        inner.prune(box_id);
    }

    /// Drops every subscription of a connection.
    pub fn connection_closed(&self, conn_id: u64) {
        let mut inner = self.lock();
        let Some(boxes) = inner.conns.remove(&conn_id) else {
            return;
        };
        for box_id in boxes {
            if let Some(entry) = inner.boxes.get_mut(&box_id) {
                entry.subscribers.retain(|s| s.conn_id != conn_id);
            }
            inner.prune(box_id);
        }
    }

    /// Drops the subscriptions of a removed device.
    pub fn remove_device(&self, box_id: BoxId, device: DeviceId) {
        let mut inner = self.lock();
        let conns: Vec<u64> = match inner.boxes.get_mut(&box_id) {
            Some(entry) => {
                let conns = entry
                    .subscribers
                    .iter()
                    .filter(|s| s.device == device)
                    .map(|s| s.conn_id)
                    .collect();
                entry.subscribers.retain(|s| s.device != device);
                conns
            }
            None => return,
        };
        for conn_id in conns {
            inner.forget_conn_box(conn_id, box_id);
        }
        inner.prune(box_id);
    }

    /// Drops every subscription into a deleted box (waiters are woken).
    pub fn remove_box(&self, box_id: BoxId) {
        let mut inner = self.lock();
        let conns: Vec<u64> = match inner.boxes.get_mut(&box_id) {
            Some(entry) => {
                entry.notify.notify_waiters();
                entry.subscribers.drain(..).map(|s| s.conn_id).collect()
            }
            None => return,
        };
        for conn_id in conns {
            inner.forget_conn_box(conn_id, box_id);
        }
        inner.prune(box_id);
    }

    /// Announces that envelopes up to `last_seq` are stored in `box_id`: wakes its
    /// fetch waiters and queues a `MessagesAvailable` push to its subscribed
    /// devices. Returns how many pushes were queued.
    pub fn messages_available(&self, box_id: BoxId, last_seq: u64) -> usize {
        let inner = self.lock();
        let Some(entry) = inner.boxes.get(&box_id) else {
            return 0;
        };
        entry.notify.notify_waiters();
        if entry.subscribers.is_empty() {
            return 0;
        }
        let frame = push_frame(&pb::Push {
            event: Some(pb::push::Event::Messages(pb::MessagesAvailable {
                last_seq,
            })),
        });
        entry
            .subscribers
            .iter()
            .filter(|s| s.tx.try_send(frame.clone()))
            .count()
    }

    /// Queues an ephemeral push to every subscribed device of `box_id` except
    /// `skip` (the sending device). Returns how many pushes were queued.
    pub fn ephemeral(
        &self,
        box_id: BoxId,
        skip: Option<DeviceId>,
        ephemeral: &pb::Ephemeral,
    ) -> usize {
        let inner = self.lock();
        let Some(entry) = inner.boxes.get(&box_id) else {
            return 0;
        };
        if entry.subscribers.iter().all(|s| Some(s.device) == skip) {
            return 0;
        }
        // One frame for all: each queue holds a reference, not a copy.
        let frame = push_frame(&pb::Push {
            event: Some(pb::push::Event::Ephemeral(ephemeral.clone())),
        });
        entry
            .subscribers
            .iter()
            .filter(|s| Some(s.device) != skip)
            .filter(|s| s.tx.try_send(frame.clone()))
            .count()
    }

    /// Subscribed devices of a box.
    pub fn online(&self, box_id: BoxId) -> usize {
        self.lock()
            .boxes
            .get(&box_id)
            .map_or(0, |e| e.subscribers.len())
    }

    /// Whether `device` of `box_id` holds a live subscription on any connection
    /// of this gateway (it hears of new messages without a wake-up push).
    pub fn device_online(&self, box_id: BoxId, device: DeviceId) -> bool {
        self.lock().boxes.get(&box_id).is_some_and(|e| {
            e.subscribers
                .iter()
                .any(|s| s.device == device && !s.tx.is_closed())
        })
    }

    /// Registers a waiter for the next message into `box_id`.
    pub fn waiter(&self, box_id: BoxId) -> Waiter {
        let mut inner = self.lock();
        let entry = inner.boxes.entry(box_id).or_default();
        entry.waiters += 1;
        Waiter {
            presence: self.clone(),
            box_id,
            notify: entry.notify.clone(),
        }
    }

    /// Boxes with waiters or subscribers (for tests and debugging).
    pub fn tracked_boxes(&self) -> usize {
        self.lock().boxes.len()
    }
}

/// A registered fetch waiter; unregisters itself when dropped.
pub struct Waiter {
    presence: Presence,
    box_id: BoxId,
    notify: Arc<Notify>,
}

impl Waiter {
    /// The notification to wait on. Create it (and `enable` it) before checking
    /// the queue, so a commit in between is not missed.
    pub fn notify(&self) -> &Notify {
        &self.notify
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let mut inner = self.presence.lock();
        if let Some(entry) = inner.boxes.get_mut(&self.box_id) {
            entry.waiters = entry.waiters.saturating_sub(1);
        }
        inner.prune(self.box_id);
    }
}

#[cfg(test)]
impl PushReceiver {
    /// The next push, decoded.
    pub(crate) async fn recv_push(&mut self) -> Option<pb::Push> {
        let frame = self.recv().await?;
        framing::decode_one(&frame, usize::MAX, "push").ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rossby_keyspace::RegionId;
    use std::time::Duration;

    fn queue(entries: usize) -> (PushSender, PushReceiver) {
        push_queue(entries, 1 << 20, None)
    }

    #[tokio::test]
    async fn pushes_reach_subscribers_and_cleanup_is_complete() {
        let presence = Presence::new();
        let b = BoxId::new(RegionId(1));
        let (d1, d2) = (DeviceId::new(), DeviceId::new());
        let (tx1, mut rx1) = queue(PUSH_QUEUE);
        let (tx2, mut rx2) = queue(PUSH_QUEUE);
        let token = presence.subscribe(1, b, d1, tx1);
        presence.subscribe(2, b, d2, tx2);
        assert!(presence.is_subscribed(1, b, d1));
        assert!(!presence.is_subscribed(2, b, d1));
        assert_eq!(presence.messages_available(b, 7), 2);
        for rx in [&mut rx1, &mut rx2] {
            let push = rx.recv_push().await.unwrap();
            assert_eq!(
                push.event,
                Some(pb::push::Event::Messages(pb::MessagesAvailable {
                    last_seq: 7
                }))
            );
        }
        // Ephemeral messages skip the sending device.
        let eph = pb::Ephemeral {
            envelope: vec![1],
            ..pb::Ephemeral::default()
        };
        assert_eq!(presence.ephemeral(b, Some(d1), &eph), 1);
        assert!(matches!(
            rx2.recv_push().await.unwrap().event,
            Some(pb::push::Event::Ephemeral(_))
        ));
        assert!(rx1.try_recv().is_none());

        presence.connection_closed(2);
        assert_eq!(presence.online(b), 1);
        assert!(
            rx2.recv().await.is_none(),
            "the queue closes with its last sender"
        );
        presence.unsubscribe(1, b, token + 100);
        assert_eq!(presence.online(b), 1);
        presence.unsubscribe(1, b, token);
        assert_eq!(presence.online(b), 0);
        assert_eq!(presence.tracked_boxes(), 0);
        assert!(presence.lock().conns.is_empty());
    }

    #[tokio::test]
    async fn device_and_box_removal_drop_subscriptions() {
        let presence = Presence::new();
        let b = BoxId::new(RegionId(1));
        let (d1, d2) = (DeviceId::new(), DeviceId::new());
        let (tx, _rx) = queue(1);
        presence.subscribe(1, b, d1, tx.clone());
        presence.subscribe(1, b, d2, tx.clone());
        presence.remove_device(b, d1);
        assert_eq!(presence.online(b), 1);
        assert!(!presence.lock().conns.is_empty());
        presence.remove_box(b);
        assert_eq!(presence.tracked_boxes(), 0);
        assert!(presence.lock().conns.is_empty());
    }

    #[tokio::test]
    async fn a_full_channel_drops_pushes_instead_of_blocking() {
        let presence = Presence::new();
        let b = BoxId::new(RegionId(1));
        let (tx, _rx) = queue(1);
        presence.subscribe(1, b, DeviceId::new(), tx);
        assert_eq!(presence.messages_available(b, 1), 1);
        assert_eq!(presence.messages_available(b, 2), 0);
    }

    #[tokio::test]
    async fn queues_are_bounded_in_bytes_and_share_one_frame() {
        let gauge = prometheus::IntGauge::new("q", "q").unwrap();
        let presence = Presence::new();
        let b = BoxId::new(RegionId(1));
        let (d1, d2) = (DeviceId::new(), DeviceId::new());
        let (tx1, mut rx1) = push_queue(PUSH_QUEUE, 10_000, Some(gauge.clone()));
        let (tx2, rx2) = push_queue(PUSH_QUEUE, 10_000, Some(gauge.clone()));
        presence.subscribe(1, b, d1, tx1);
        presence.subscribe(2, b, d2, tx2);
        let eph = pb::Ephemeral {
            envelope: vec![7; 4000],
            ..pb::Ephemeral::default()
        };
        assert_eq!(presence.ephemeral(b, None, &eph), 2);
        assert_eq!(presence.ephemeral(b, None, &eph), 2);
        // A third would pass the byte bound of each queue: dropped.
        assert_eq!(presence.ephemeral(b, None, &eph), 0);
        assert!(rx1.queued_bytes() <= 10_000 && rx2.queued_bytes() <= 10_000);
        assert_eq!(
            usize::try_from(gauge.get()).unwrap(),
            rx1.queued_bytes() + rx2.queued_bytes()
        );
        // Both queues hold the same allocation.
        let a = rx1.try_recv().unwrap();
        let mut rx2 = rx2;
        let c = rx2.try_recv().unwrap();
        assert_eq!(a.as_ptr(), c.as_ptr());
        drop((rx1, rx2));
        assert_eq!(gauge.get(), 0, "dropped queues give their bytes back");
    }

    #[tokio::test]
    async fn a_device_keeps_only_its_newest_subscription() {
        let presence = Presence::new();
        let b = BoxId::new(RegionId(1));
        let d = DeviceId::new();
        let mut old_rxs = Vec::new();
        for conn in 1..=30 {
            let (tx, rx) = queue(PUSH_QUEUE);
            presence.subscribe(conn, b, d, tx);
            old_rxs.push(rx);
        }
        assert_eq!(presence.online(b), 1);
        assert!(presence.is_subscribed(30, b, d));
        assert!(!presence.is_subscribed(1, b, d));
        assert_eq!(
            presence.lock().conns.len(),
            1,
            "replaced connections forgotten"
        );
        let newest = old_rxs.pop().unwrap();
        for mut rx in old_rxs {
            assert!(rx.recv().await.is_none(), "a replaced queue is closed");
        }
        drop(newest);
    }

    #[tokio::test]
    async fn waiters_are_woken_and_unregister_on_drop() {
        let presence = Presence::new();
        let b = BoxId::new(RegionId(1));
        let waiter = presence.waiter(b);
        {
            let notified = waiter.notify().notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            let p = presence.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(10)).await;
                p.messages_available(b, 1);
            });
            tokio::time::timeout(Duration::from_secs(5), notified)
                .await
                .unwrap();
        }
        assert_eq!(presence.tracked_boxes(), 1);
        drop(waiter);
        assert_eq!(presence.tracked_boxes(), 0);
    }
}
