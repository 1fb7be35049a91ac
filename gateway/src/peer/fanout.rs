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

use super::notifier::Notifier;
use crate::metrics::Metrics;
use crate::server::now_ms;
use rossby_keyspace::BoxId;
use rossby_storage::tables::Store;
use rossby_storage::tables::presence::Holder;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use tokio::sync::mpsc;

/// Commits waiting for the worker before new ones are dropped (their devices
/// then learn of the messages by fetching).
pub const FANOUT_QUEUE: usize = 8192;

/// Most boxes whose leases one worker transaction reads.
pub const FANOUT_BATCH: usize = 256;

/// The queue in front of the fan-out worker.
#[derive(Clone, Debug)]
pub struct Fanout {
    tx: mpsc::Sender<(BoxId, u64)>,
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
        let worker = worker(rx, store, me, notifier, metrics.clone());
        (Fanout { tx, metrics }, worker)
    }

    /// Announces a commit into `box_id` up to `last_seq`. Never waits.
    pub fn committed(&self, box_id: BoxId, last_seq: u64) {
        if self.tx.try_send((box_id, last_seq)).is_err() {
            self.metrics.peer_notifications("dropped", 1);
        }
    }
}

async fn worker(
    mut rx: mpsc::Receiver<(BoxId, u64)>,
    store: Store,
    me: Holder,
    notifier: Notifier,
    metrics: Arc<Metrics>,
) {
    while let Some((box_id, seq)) = rx.recv().await {
        let mut batch: BTreeMap<BoxId, u64> = BTreeMap::new();
        batch.insert(box_id, seq);
        while batch.len() < FANOUT_BATCH {
            match rx.try_recv() {
                Ok((b, s)) => {
                    let entry = batch.entry(b).or_insert(s);
                    *entry = (*entry).max(s);
                }
                Err(_) => break,
            }
        }
        let boxes: Vec<BoxId> = batch.keys().copied().collect();
        let leases = match store.live_presence(&boxes, now_ms()).await {
            Ok(leases) => leases,
            Err(err) => {
                tracing::warn!(error = %err, boxes = boxes.len(), "reading presence leases failed");
                metrics.peer_notifications("failed", boxes.len());
                continue;
            }
        };
        let mut by_peer: HashMap<String, Vec<(BoxId, u64)>> = HashMap::new();
        for ((box_id, last_seq), leases) in batch.into_iter().zip(leases) {
            for lease in leases {
                let h = lease.holder;
                if h.gateway_id == me.gateway_id || h.peer_address == me.peer_address {
                    continue;
                }
                let updates = by_peer.entry(h.peer_address).or_default();
                // Several devices of a box on one gateway need one update.
                if !updates.iter().any(|(b, _)| *b == box_id) {
                    updates.push((box_id, last_seq));
                }
            }
        }
        for (address, updates) in by_peer {
            notifier.notify(&address, &updates);
        }
    }
}
