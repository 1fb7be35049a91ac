//! Maintenance leases: which gateway of a region runs each of its background jobs.
//!
//! A region's background work is split into jobs ([`MaintenanceJob`]): sweeping
//! each shard of the expiry index, and draining the purge queue of deleted
//! accounts. A gateway runs a job only while it holds the job's lease, a
//! [`PresenceRecord`] under `0x02 <region> 0x06 <job>` (in the region's key
//! range, so acquiring it is a transaction in the region) naming the gateway run
//! and the time the lease lapses unless renewed.
//!
//! [`acquire`] reads the lease with `get_for_update` and writes it when it is
//! absent, lapsed, or already the caller's; a live lease of another gateway is
//! left alone. Two gateways acquiring one lease at once both write its key, so
//! under snapshot isolation one of them conflicts, and on its retry finds the
//! other's live lease: a lease has one holder at a time. A draining gateway
//! [`release`]s its leases; one that dies stops renewing and others take its
//! jobs once the leases lapse.
//!
//! Leases decide who does the work, never whether the work is correct: a holder
//! that stalls past its lease while another takes over runs the same idempotent,
//! conflict-checked transactions (expiry and purge steps both write the box's
//! `low` key), exactly as every gateway sweeping everything once did.
//!
//! Which gateway *tries* to take a free lease (spreading jobs over a region's
//! gateways) is the gateway's policy; this module only keeps the holder unique.

use super::presence::Holder;
use super::queue;
use super::records::{Marker, PresenceRecord};
use super::tx::{SharedKey, Tx};
use super::{Record, decode_key};
use crate::error::{Error, Result};
use crate::kv::ScanOrder;
use rossby_keyspace::{BoxId, Key, MaintenanceJob, RegionId};

/// A maintenance lease as read from storage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MaintenanceLease {
    /// The job.
    pub job: MaintenanceJob,
    /// The gateway run holding it.
    pub holder: Holder,
    /// When the lease lapses unless renewed.
    pub expires_at_ms: u64,
}

impl MaintenanceLease {
    /// Whether the lease still holds at `now_ms`.
    pub fn is_live(&self, now_ms: u64) -> bool {
        self.expires_at_ms > now_ms
    }
}

/// What [`acquire`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Acquired {
    /// The lease names the caller until the new expiry (taken or renewed).
    Held,
    /// Another gateway holds a live lease; nothing was written.
    Elsewhere(MaintenanceLease),
}

fn lease_of(job: MaintenanceJob, record: PresenceRecord) -> MaintenanceLease {
    MaintenanceLease {
        job,
        holder: Holder {
            peer_address: record.peer_address,
            gateway_id: record.gateway_id,
        },
        expires_at_ms: record.lease_expires_at_ms,
    }
}

/// Takes or renews the lease of `job` in `region` for `holder` until
/// `expires_at_ms`: written when there is no lease, when the lease lapsed (its
/// expiry is not after `now_ms`) or when it already names `holder`'s gateway
/// run. A live lease of another gateway is returned unchanged.
pub async fn acquire(
    txn: &mut Tx<'_>,
    region: RegionId,
    job: MaintenanceJob,
    holder: &Holder,
    now_ms: u64,
    expires_at_ms: u64,
) -> Result<Acquired> {
    holder.check()?;
    if expires_at_ms <= now_ms {
        return Err(Error::Invalid(
            "a maintenance lease must expire after now".into(),
        ));
    }
    let key = SharedKey::MaintenanceLease(region, job);
    // Read for update: a concurrent acquisition, renewal or release of this
    // lease conflicts with this one whatever each of them decides to write.
    let current: Option<PresenceRecord> = txn.lock_shared(key).await?;
    if let Some(record) = current
        && record.gateway_id != holder.gateway_id
        && record.lease_expires_at_ms > now_ms
    {
        return Ok(Acquired::Elsewhere(lease_of(job, record)));
    }
    let record = PresenceRecord {
        peer_address: holder.peer_address.clone(),
        gateway_id: holder.gateway_id.clone(),
        lease_expires_at_ms: expires_at_ms,
    };
    txn.put_shared(key, &record).await?;
    Ok(Acquired::Held)
}

/// Deletes the lease of `job` if it names `gateway_id` (live or lapsed).
/// Returns whether a lease was deleted.
pub async fn release(
    txn: &mut Tx<'_>,
    region: RegionId,
    job: MaintenanceJob,
    gateway_id: &str,
) -> Result<bool> {
    let key = SharedKey::MaintenanceLease(region, job);
    let current: Option<PresenceRecord> = txn.lock_shared(key).await?;
    match current {
        Some(record) if record.gateway_id == gateway_id => {
            txn.delete_shared(key).await?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// The lease of one job, live or lapsed.
pub async fn lease(
    txn: &mut Tx<'_>,
    region: RegionId,
    job: MaintenanceJob,
) -> Result<Option<MaintenanceLease>> {
    Ok(txn
        .get::<PresenceRecord>(&Key::MaintenanceLease(region, job))
        .await?
        .map(|record| lease_of(job, record)))
}

/// Every maintenance lease of `region`, live or lapsed, in job order.
pub async fn leases(txn: &mut Tx<'_>, region: RegionId) -> Result<Vec<MaintenanceLease>> {
    let entries = txn
        .scan(
            &Key::maintenance_lease_range(region),
            MaintenanceJob::COUNT,
            ScanOrder::Forward,
        )
        .await?;
    entries
        .iter()
        .map(|(raw, value)| {
            let Key::MaintenanceLease(_, job) = decode_key(raw)? else {
                return Err(Error::corrupt(
                    "maintenance lease",
                    "unexpected key in the maintenance lease range",
                ));
            };
            Ok(lease_of(job, PresenceRecord::from_stored(value)?))
        })
        .collect()
}

/// The current holders of `region`'s jobs: the leases live at `now_ms`, in job
/// order. A job missing here has no holder.
pub async fn holders(
    txn: &mut Tx<'_>,
    region: RegionId,
    now_ms: u64,
) -> Result<Vec<MaintenanceLease>> {
    let mut all = leases(txn, region).await?;
    all.retain(|l| l.is_live(now_ms));
    Ok(all)
}

/// How far the purge queue of a region is behind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PurgeBacklog {
    /// Boxes awaiting their purge (counted up to the scan's limit).
    pub pending: usize,
    /// When the oldest of them was deleted.
    pub oldest_at_ms: Option<u64>,
}

/// Counts up to `limit` boxes of `region` awaiting their purge, and finds when
/// the oldest of those was deleted.
pub async fn purge_backlog(
    txn: &mut Tx<'_>,
    region: RegionId,
    limit: usize,
) -> Result<PurgeBacklog> {
    let entries = txn
        .scan(&Key::purge_range(region), limit, ScanOrder::Forward)
        .await?;
    let mut backlog = PurgeBacklog {
        pending: entries.len(),
        oldest_at_ms: None,
    };
    for (_, value) in &entries {
        let at = Marker::from_stored(value)?.at_ms;
        backlog.oldest_at_ms = Some(backlog.oldest_at_ms.map_or(at, |o| o.min(at)));
    }
    Ok(backlog)
}

/// When the oldest entry of one expiry shard that is due at `now_ms` expired;
/// `None` when nothing there is due.
pub async fn oldest_due(
    txn: &mut Tx<'_>,
    region: RegionId,
    shard: u8,
    now_ms: u64,
) -> Result<Option<u64>> {
    Ok(queue::due(txn, region, shard, now_ms, 1)
        .await?
        .first()
        .map(|(_, at, _)| *at))
}

impl super::Store {
    /// Takes or renews a maintenance lease (see [`acquire`]).
    pub async fn acquire_maintenance(
        &self,
        region: RegionId,
        job: MaintenanceJob,
        holder: &Holder,
        now_ms: u64,
        expires_at_ms: u64,
    ) -> Result<Acquired> {
        crate::transact!(self, |txn| acquire(
            txn,
            region,
            job,
            holder,
            now_ms,
            expires_at_ms
        )
        .await)
    }

    /// Releases the maintenance leases of `region` that name `gateway_id`, in one
    /// transaction. Returns how many were released.
    pub async fn release_maintenance(&self, region: RegionId, gateway_id: &str) -> Result<usize> {
        crate::transact!(self, |txn| async {
            let mut released = 0;
            for job in MaintenanceJob::all() {
                if release(txn, region, job, gateway_id).await? {
                    released += 1;
                }
            }
            Ok(released)
        }
        .await)
    }

    /// Every maintenance lease of `region`, live or lapsed (see [`leases`]).
    pub async fn maintenance_leases(&self, region: RegionId) -> Result<Vec<MaintenanceLease>> {
        crate::transact!(self, |txn| leases(txn, region).await)
    }

    /// The leases of `region` live at `now_ms` (see [`holders`]).
    pub async fn maintenance_holders(
        &self,
        region: RegionId,
        now_ms: u64,
    ) -> Result<Vec<MaintenanceLease>> {
        crate::transact!(self, |txn| holders(txn, region, now_ms).await)
    }

    /// Up to `limit` boxes of `region` awaiting their purge.
    pub async fn pending_purges(&self, region: RegionId, limit: usize) -> Result<Vec<BoxId>> {
        crate::transact!(self, |txn| super::lifecycle::pending_purges(
            txn, region, limit
        )
        .await)
    }

    /// Runs one bounded purge transaction of a deleted box (at most
    /// `Limits::max_deletes_per_txn` keys). Returns `true` once the box is gone
    /// and its purge entry removed.
    pub async fn purge_step(&self, box_id: BoxId) -> Result<bool> {
        let step = self.limits.max_deletes_per_txn;
        crate::transact!(self, |txn| super::lifecycle::purge_step(txn, box_id, step)
            .await)
    }

    /// The purge backlog of `region`, counted up to `limit` boxes (see
    /// [`purge_backlog`]).
    pub async fn purge_backlog(&self, region: RegionId, limit: usize) -> Result<PurgeBacklog> {
        crate::transact!(self, |txn| purge_backlog(txn, region, limit).await)
    }

    /// When the oldest due entry of one expiry shard expired (see
    /// [`oldest_due`]).
    pub async fn oldest_due_expiry(
        &self,
        region: RegionId,
        shard: u8,
        now_ms: u64,
    ) -> Result<Option<u64>> {
        crate::transact!(self, |txn| oldest_due(txn, region, shard, now_ms).await)
    }
}
