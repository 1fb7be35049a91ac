//! From a local commit to notifications of the other gateways.
//!
//! After a commit into a box, the enqueuer calls [`Fanout::committed`], which
//! only puts (box, last sequence number) on a bounded queue: the send path never
//! waits for storage reads or the network on this account. One worker takes
//! everything queued at once, reads the live presence leases of those boxes in
//! one transaction (expired leases are skipped, and deleted), and hands each
//! other gateway named there its updates ([`Notifier::notify`]). Leases naming
//! this gateway (its run id or its advertised address) are skipped: local
//! subscribers were told by the commit itself.
//!
//! Ephemeral messages (typing indicators) take the same way
//! ([`Fanout::ephemeral`]): the gateways holding leases of the recipient box get
//! the message itself and push it to their subscribed devices. The bytes of
//! ephemeral messages waiting here are bounded ([`FANOUT_EPHEMERAL_BYTES`]);
//! beyond that they are dropped, which only means a typing indicator is not
//! shown.

use super::notifier::{Notifier, PeerUpdate};
use crate::metrics::Metrics;
use crate::server::now_ms;
use rossby_keyspace::{BoxId, DeviceId};
use rossby_protocol::pb;
use rossby_storage::tables::Store;
use rossby_storage::tables::presence::Holder;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::mpsc;

/// Commits waiting for the worker before new ones are dropped (their devices
/// then learn of the messages by fetching).
pub const FANOUT_QUEUE: usize = 8192;

/// Most boxes whose leases one worker transaction reads.
pub const FANOUT_BATCH: usize = 256;

/// Most bytes of ephemeral messages waiting for the worker.
pub const FANOUT_EPHEMERAL_BYTES: usize = 4 * 1024 * 1024;

/// What the worker hands on.
#[derive(Debug)]
enum Event {
    /// A commit into a box up to a sequence number.
    Committed(BoxId, u64),
    /// An ephemeral message for a box's devices, with the bytes it holds.
    Ephemeral(BoxId, Arc<pb::PeerEphemeral>, usize),
}

/// The queue in front of the fan-out worker.
#[derive(Clone, Debug)]
pub struct Fanout {
    tx: mpsc::Sender<Event>,
    ephemeral_bytes: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
}

impl Fanout {
    /// The queue and the worker to spawn.
    pub fn new(
        store: Store,
        me: Holder,
        notifier: Notifier,
        metrics: Arc<Metrics>,
    ) -> (Fanout, impl Future<Output = ()> + Send + 'static) {
        let (tx, rx) = mpsc::channel(FANOUT_QUEUE);
        let ephemeral_bytes = Arc::new(AtomicUsize::new(0));
        let worker = worker(
            rx,
            ephemeral_bytes.clone(),
            store,
            me,
            notifier,
            metrics.clone(),
        );
        let fanout = Fanout {
            tx,
            ephemeral_bytes,
            metrics,
        };
        (fanout, worker)
    }

    /// Announces a commit into `box_id` up to `last_seq`. Never waits.
    pub fn committed(&self, box_id: BoxId, last_seq: u64) {
        if self
            .tx
            .try_send(Event::Committed(box_id, last_seq))
            .is_err()
        {
            self.metrics.peer_notifications("dropped", 1);
        }
    }

    /// Hands an ephemeral message to the other gateways with subscribed devices
    /// of `box_id` (except `skip`). Never waits; dropped when too much is
    /// waiting.
    pub fn ephemeral(&self, box_id: BoxId, skip: Option<DeviceId>, push: &pb::Ephemeral) {
        let bytes = ephemeral_size(push);
        let admitted = self
            .ephemeral_bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| {
                (queued + bytes <= FANOUT_EPHEMERAL_BYTES).then_some(queued + bytes)
            })
            .is_ok();
        if !admitted {
            self.metrics.peer_notifications("dropped", 1);
            return;
        }
        let message = Arc::new(pb::PeerEphemeral {
            box_id: box_id.as_bytes().to_vec(),
            skip_device: skip.map(|d| d.as_bytes().to_vec()).unwrap_or_default(),
            push: Some(push.clone()),
        });
        if self
            .tx
            .try_send(Event::Ephemeral(box_id, message, bytes))
            .is_err()
        {
            self.ephemeral_bytes.fetch_sub(bytes, Ordering::AcqRel);
            self.metrics.peer_notifications("dropped", 1);
        }
    }
}

/// The bytes an ephemeral message holds while it waits (its envelope and ids).
pub(crate) fn ephemeral_size(push: &pb::Ephemeral) -> usize {
    push.envelope.len() + push.sender_box.len() + push.sender_device.len() + 64
}

async fn worker(
    mut rx: mpsc::Receiver<Event>,
    ephemeral_bytes: Arc<AtomicUsize>,
    store: Store,
    me: Holder,
    notifier: Notifier,
    metrics: Arc<Metrics>,
) {
    while let Some(first) = rx.recv().await {
        let mut commits: BTreeMap<BoxId, u64> = BTreeMap::new();
        let mut ephemerals: Vec<(BoxId, Arc<pb::PeerEphemeral>)> = Vec::new();
        let mut boxes: BTreeSet<BoxId> = BTreeSet::new();
        let mut next = Some(first);
        while let Some(event) = next.take() {
            match event {
                Event::Committed(b, s) => {
                    let entry = commits.entry(b).or_insert(s);
                    *entry = (*entry).max(s);
                    boxes.insert(b);
                }
                Event::Ephemeral(b, message, bytes) => {
                    ephemeral_bytes.fetch_sub(bytes, Ordering::AcqRel);
                    ephemerals.push((b, message));
                    boxes.insert(b);
                }
            }
            if boxes.len() < FANOUT_BATCH {
                next = rx.try_recv().ok();
            }
        }
        let boxes: Vec<BoxId> = boxes.into_iter().collect();
        let leases = match store.live_presence(&boxes, now_ms()).await {
            Ok(leases) => leases,
            Err(err) => {
                tracing::warn!(error = %err, boxes = boxes.len(), "reading presence leases failed");
                metrics.peer_notifications("failed", commits.len() + ephemerals.len());
                continue;
            }
        };
        // The peers (by address) holding leases of each box, other than this
        // gateway; several devices of a box on one gateway need one update.
        let mut holders: HashMap<BoxId, BTreeSet<String>> = HashMap::new();
        for (box_id, leases) in boxes.iter().zip(leases) {
            let peers: BTreeSet<String> = leases
                .into_iter()
                .map(|lease| lease.holder)
                .filter(|h| h.gateway_id != me.gateway_id && h.peer_address != me.peer_address)
                .map(|h| h.peer_address)
                .collect();
            if !peers.is_empty() {
                holders.insert(*box_id, peers);
            }
        }
        let mut by_peer: HashMap<&str, Vec<PeerUpdate>> = HashMap::new();
        for (box_id, last_seq) in &commits {
            for address in holders.get(box_id).into_iter().flatten() {
                by_peer
                    .entry(address)
                    .or_default()
                    .push(PeerUpdate::Committed(*box_id, *last_seq));
            }
        }
        for (box_id, message) in &ephemerals {
            for address in holders.get(box_id).into_iter().flatten() {
                by_peer
                    .entry(address)
                    .or_default()
                    .push(PeerUpdate::Ephemeral(message.clone()));
            }
        }
        for (address, updates) in by_peer {
            notifier.notify(address, updates);
        }
    }
}
