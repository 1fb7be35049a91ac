//! This gateway's view of box ownership: its own ownership lease, renewed in
//! storage, and the live leases of every region of the topology, from which each
//! box's owner is chosen ([`rossby_replication::ownership`]).
//!
//! Every `renew` interval one task renews this gateway's lease (a transaction in
//! its own region) and re-reads the live leases of every region (from a recent
//! snapshot, at most a second old). A gateway that
//! dies stops renewing; its lease lapses after `lease`, and every other gateway
//! sees that at its next refresh, so a dead owner's boxes move within
//! `lease + renew`. A draining gateway deletes its lease first, so its boxes move
//! within one refresh. This gateway always counts itself among the live gateways
//! of its own region while it runs, so its first requests do not wait for a read.
//!
//! A region whose leases could not be read (storage unavailable) keeps its last
//! view; a region with no live gateway has no owner, and writes to its boxes are
//! executed by whichever gateway received them (the path without ownership).

use rossby_keyspace::{BoxId, RegionId};
use rossby_replication::ownership;
use rossby_storage::tables::{Store, Tx, gateways};
use rossby_storage::transact;
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Default lifetime of an ownership lease.
pub const DEFAULT_OWNER_LEASE: Duration = Duration::from_secs(5);

/// Default interval between renewals (and refreshes of the view).
pub const DEFAULT_OWNER_RENEW: Duration = Duration::from_secs(1);

/// Who executes writes to a box.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Owner {
    /// This gateway.
    Local,
    /// Another gateway, reached at this peer address.
    Remote(String),
    /// No live gateway is known in the box's home region.
    Unknown,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Member {
    id: [u8; 16],
    peer_address: String,
}

/// The ownership view of one gateway.
pub struct Ownership {
    store: Store,
    region: RegionId,
    regions: Vec<RegionId>,
    /// This gateway, as it appears among a region's live gateways.
    me: Member,
    lease: Duration,
    view: RwLock<BTreeMap<RegionId, Vec<Member>>>,
}

impl std::fmt::Debug for Ownership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ownership")
            .field("region", &self.region)
            .field("peer_address", &self.me.peer_address)
            .finish_non_exhaustive()
    }
}

impl Ownership {
    /// The view of gateway `id` (advertised at `peer_address`) in `region`, over
    /// the `regions` of the topology.
    pub fn new(
        store: Store,
        region: RegionId,
        regions: Vec<RegionId>,
        id: [u8; 16],
        peer_address: String,
        lease: Duration,
    ) -> Ownership {
        let me = Member { id, peer_address };
        let view = BTreeMap::from([(region, vec![me.clone()])]);
        Ownership {
            store,
            region,
            regions,
            me,
            lease,
            view: RwLock::new(view),
        }
    }

    /// The owner of `box_id` in the current view.
    pub fn owner_of(&self, box_id: BoxId) -> Owner {
        let view = self
            .view
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(members) = view.get(&box_id.home_region()) else {
            return Owner::Unknown;
        };
        match ownership::owner(box_id, members, |m| m.id.as_slice()) {
            Some(m) if m.id == self.me.id => Owner::Local,
            Some(m) => Owner::Remote(m.peer_address.clone()),
            None => Owner::Unknown,
        }
    }

    /// This gateway run's id, as its ownership lease names it.
    pub fn id(&self) -> [u8; 16] {
        self.me.id
    }

    /// The ids of the live gateways the view has in `region` (this gateway
    /// included while it runs and has not released its lease).
    pub fn live_ids(&self, region: RegionId) -> Vec<[u8; 16]> {
        self.view
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&region)
            .map_or_else(Vec::new, |members| members.iter().map(|m| m.id).collect())
    }

    /// How many live gateways the view has in `region`.
    pub fn live_in(&self, region: RegionId) -> usize {
        self.view
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&region)
            .map_or(0, Vec::len)
    }

    /// Renews this gateway's lease and re-reads every region's live leases;
    /// whether the lease was renewed.
    pub async fn refresh(&self, now_ms: u64) -> bool {
        let expires = now_ms.saturating_add(millis(self.lease));
        let renewed = transact!(self.store, |txn| gateways::renew(
            txn,
            self.region,
            self.me.id,
            &self.me.peer_address,
            expires,
            now_ms,
        )
        .await);
        if let Err(err) = &renewed {
            tracing::warn!(error = %err, "cannot renew the ownership lease");
        }
        for &region in &self.regions {
            match self.live(region, now_ms).await {
                Ok(leases) => {
                    let mut members: Vec<Member> = leases
                        .into_iter()
                        .map(|l| Member {
                            id: l.id,
                            peer_address: l.peer_address,
                        })
                        .collect();
                    if region == self.region && !members.iter().any(|m| m.id == self.me.id) {
                        members.push(self.me.clone());
                    }
                    self.view
                        .write()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .insert(region, members);
                }
                Err(err) => {
                    tracing::warn!(%region, error = %err, "cannot read the ownership leases")
                }
            }
        }
        renewed.is_ok()
    }

    /// The live leases of `region`, read from a recent snapshot: the view may be
    /// up to a second old anyway, and this way a refresh pays no timestamp round
    /// trip per region.
    async fn live(
        &self,
        region: RegionId,
        now_ms: u64,
    ) -> rossby_storage::Result<Vec<gateways::GatewayLease>> {
        let mut txn = self.store.kv.begin_recent_read().await?;
        let live = gateways::live(&mut Tx::new(&mut *txn), region, now_ms).await;
        txn.rollback().await?;
        live
    }

    /// Deletes this gateway's lease and stops counting itself: its boxes move to
    /// the other gateways of the region (a draining gateway).
    pub async fn release(&self) {
        self.view
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(self.region)
            .or_default()
            .retain(|m| m.id != self.me.id);
        let released = transact!(self.store, |txn| gateways::release(
            txn,
            self.region,
            self.me.id
        )
        .await);
        if let Err(err) = released {
            tracing::debug!(error = %err, "cannot release the ownership lease; it lapses");
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Renews and refreshes every `interval` until aborted, and shows the result
/// in `rossby_ownership_lease_held` and `rossby_ownership_live_gateways`
/// (what `rossby-admin fleet status` reports as the share of boxes owned).
pub(crate) async fn run(
    ownership: Arc<Ownership>,
    interval: Duration,
    metrics: Arc<crate::metrics::Metrics>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let renewed = ownership.refresh(crate::server::now_ms()).await;
        metrics.ownership_lease_held.set(i64::from(renewed));
        let live = ownership.live_in(ownership.region);
        metrics
            .ownership_live_gateways
            .set(i64::try_from(live).unwrap_or(i64::MAX));
    }
}
