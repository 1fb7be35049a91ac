//! This gateway's presence leases: which (box, device) pairs have a push
//! subscription or a waiting fetch here, kept in storage so other gateways know
//! to notify this one.
//!
//! A subscription or a waiting fetch holds a [`LeaseGuard`]. The first holder of a
//! pair claims the lease in storage before it reads the queue, so a message
//! committed through another gateway afterwards is always notified here (the
//! committing gateway reads the leases after its commit). A Subscribe always
//! claims (the newest subscription of a device wins); a waiting fetch claims only
//! when the lease this gateway last wrote would lapse before the next renewal, so
//! a device that long-polls does not write on every poll.
//!
//! Every `renew_interval`, [`Leases::tick`] renews the leases of pairs that still
//! have holders (in one transaction per batch of pairs of one region) and
//! releases those whose holders are gone, so a lease disappears at most one
//! interval after its last holder. A renewal that finds the device gone ends its
//! subscriptions here; one that finds another gateway holding a live lease leaves
//! it alone (the device moved there). Storage failures are logged and retried at
//! the next tick; a lapsed lease only means polling until it is written again.

use crate::presence::Presence;
use rossby_keyspace::{BoxId, DeviceId, RegionId};
use rossby_storage::tables::Store;
use rossby_storage::tables::presence::{Holder, Renewal};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Leases renewed or released per transaction.
pub const LEASE_BATCH: usize = 128;

type Pair = (BoxId, DeviceId);

#[derive(Debug, Default)]
struct Entry {
    /// Subscriptions and waiting fetches of the pair on this gateway.
    holders: usize,
    /// Until when the lease this gateway last wrote is valid (0: not known to be
    /// ours).
    valid_until_ms: u64,
}

/// The lease table of one gateway.
pub struct Leases {
    store: Store,
    holder: Holder,
    presence: Presence,
    lease_ms: u64,
    renew_ms: u64,
    entries: Mutex<HashMap<Pair, Entry>>,
}

impl std::fmt::Debug for Leases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leases")
            .field("holder", &self.holder)
            .field("pairs", &self.lock().len())
            .finish_non_exhaustive()
    }
}

/// Keeps a (box, device) lease held while alive.
#[derive(Debug)]
pub struct LeaseGuard {
    leases: Arc<Leases>,
    pair: Pair,
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        let mut entries = self.leases.lock();
        if let Some(entry) = entries.get_mut(&self.pair) {
            entry.holders = entry.holders.saturating_sub(1);
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Leases {
    /// A lease table writing leases that name `holder` for `lease`, renewed every
    /// `renew_interval` by [`Leases::tick`].
    pub fn new(
        store: Store,
        holder: Holder,
        presence: Presence,
        lease: Duration,
        renew_interval: Duration,
    ) -> Self {
        Leases {
            store,
            holder,
            presence,
            lease_ms: millis(lease),
            renew_ms: millis(renew_interval),
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Pair, Entry>> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Holds the lease of `device` of `box_id` until the guard is dropped,
    /// claiming it in storage first when `always_claim` is set or this gateway's
    /// lease would lapse before the next renewal. A failed claim is logged, not
    /// returned: the subscription or fetch still works, and remote messages reach
    /// it by polling until the next renewal writes the lease.
    pub async fn hold(
        self: &Arc<Self>,
        box_id: BoxId,
        device: DeviceId,
        always_claim: bool,
        now_ms: u64,
    ) -> LeaseGuard {
        let pair = (box_id, device);
        let claim = {
            let mut entries = self.lock();
            let entry = entries.entry(pair).or_default();
            entry.holders += 1;
            always_claim || entry.valid_until_ms < now_ms.saturating_add(self.renew_ms)
        };
        let guard = LeaseGuard {
            leases: self.clone(),
            pair,
        };
        if claim {
            let expires = now_ms.saturating_add(self.lease_ms);
            match self
                .store
                .claim_presence(box_id, device, &self.holder, expires)
                .await
            {
                Ok(()) => {
                    if let Some(entry) = self.lock().get_mut(&pair) {
                        entry.valid_until_ms = entry.valid_until_ms.max(expires);
                    }
                }
                Err(err) => {
                    tracing::warn!(error = %err, "recording a presence lease failed");
                }
            }
        }
        guard
    }

    /// Pairs with a holder or a lease not yet released (tests and debugging).
    pub fn pairs(&self) -> usize {
        self.lock().len()
    }

    /// Renews the leases of pairs with holders and releases the others.
    pub async fn tick(&self, now_ms: u64) {
        let (idle, active): (Vec<Pair>, Vec<Pair>) = {
            let mut entries = self.lock();
            let idle: Vec<Pair> = entries
                .iter()
                .filter(|(_, e)| e.holders == 0)
                .map(|(p, _)| *p)
                .collect();
            for pair in &idle {
                entries.remove(pair);
            }
            (idle, entries.keys().copied().collect())
        };
        for batch in batches(idle) {
            self.release(&batch).await;
        }
        let expires = now_ms.saturating_add(self.lease_ms);
        for batch in batches(active) {
            let outcomes = match self
                .store
                .renew_presence(&batch, &self.holder, now_ms, expires)
                .await
            {
                Ok(outcomes) => outcomes,
                Err(err) => {
                    tracing::warn!(error = %err, leases = batch.len(), "renewing presence leases failed");
                    continue;
                }
            };
            let mut gone = Vec::new();
            {
                let mut entries = self.lock();
                for (pair, outcome) in batch.iter().zip(outcomes) {
                    let Some(entry) = entries.get_mut(pair) else {
                        continue;
                    };
                    match outcome {
                        Renewal::Renewed => entry.valid_until_ms = expires,
                        Renewal::HeldElsewhere => entry.valid_until_ms = 0,
                        Renewal::DeviceGone => {
                            entry.valid_until_ms = 0;
                            gone.push(*pair);
                        }
                    }
                }
            }
            for (box_id, device) in gone {
                self.presence.remove_device(box_id, device);
            }
        }
    }

    /// Releases every lease this gateway holds (at shutdown), whatever its holders.
    pub async fn release_all(&self) {
        let all: Vec<Pair> = self.lock().drain().map(|(p, _)| p).collect();
        for batch in batches(all) {
            self.release(&batch).await;
        }
    }

    async fn release(&self, batch: &[Pair]) {
        // A pair held again since it was taken out of the table keeps its lease.
        let keep = |b: BoxId, d: DeviceId| self.lock().contains_key(&(b, d));
        if let Err(err) = self
            .store
            .release_presence(batch, &self.holder.gateway_id, &keep)
            .await
        {
            tracing::debug!(error = %err, leases = batch.len(), "releasing presence leases failed; they lapse");
        }
    }
}

/// Splits pairs into batches of at most [`LEASE_BATCH`], each within one region
/// (so no transaction spans the key ranges of two regions).
fn batches(mut pairs: Vec<Pair>) -> Vec<Vec<Pair>> {
    pairs.sort_unstable();
    let mut by_region: BTreeMap<RegionId, Vec<Pair>> = BTreeMap::new();
    for pair in pairs {
        by_region
            .entry(pair.0.home_region())
            .or_default()
            .push(pair);
    }
    by_region
        .into_values()
        .flat_map(|pairs| {
            pairs
                .chunks(LEASE_BATCH)
                .map(<[Pair]>::to_vec)
                .collect::<Vec<_>>()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_stay_within_one_region_and_the_size_limit() {
        let mut pairs = Vec::new();
        for region in [1u16, 2, 1, 3] {
            for _ in 0..LEASE_BATCH + 5 {
                pairs.push((BoxId::new(RegionId(region)), DeviceId::new()));
            }
        }
        let out = batches(pairs);
        assert_eq!(
            out.iter().map(Vec::len).sum::<usize>(),
            4 * (LEASE_BATCH + 5)
        );
        for batch in &out {
            assert!(!batch.is_empty() && batch.len() <= LEASE_BATCH);
            let region = batch[0].0.home_region();
            assert!(batch.iter().all(|(b, _)| b.home_region() == region));
        }
        assert!(batches(Vec::new()).is_empty());
    }
}
