//! Region maintenance: the background jobs of this gateway's region, each run by
//! one gateway of the region at a time under a maintenance lease
//! ([`rossby_storage::tables::maintenance`]).
//!
//! A region has [`MaintenanceJob::COUNT`] jobs: sweeping each of the 16 shards of
//! its expiry index (deleting unacknowledged envelopes past the retention period
//! and dedup records past their window), and draining its purge queue (removing
//! what is left of deleted accounts: DeleteAccount only commits the tombstone and
//! the purge entry). Every `interval` the loop:
//!
//! 1. **claims**: reads the region's leases and, job by job, renews the leases it
//!    holds and tries to take free ones (see below); a lease lasts `lease`;
//! 2. **works** on the jobs it holds, one bounded transaction at a time, until
//!    nothing is left or half a lease has passed since the round began (the rest
//!    waits for the next round, under a renewed lease);
//! 3. **measures** what it could not finish: the metrics `rossby_maintenance_*`.
//!
//! **Spreading jobs.** Each job has a preferred gateway: the rendezvous-hash
//! choice ([`rossby_replication::ownership::choose`]) among the live gateways of
//! the region as the box-ownership view sees them (without a topology there is
//! no view, and a gateway prefers itself for everything: one gateway holds every
//! job). A gateway takes a free job (no lease, or a lapsed one) at once when it
//! is the preferred one, and otherwise only once the job has been free for a full
//! lease (a preferred gateway that does not take it up: dead, stuck, or not yet
//! seen by the others). A holder that is not the preferred gateway hands the job
//! over by releasing its lease, so the preferred one takes it at its next round,
//! unless it took the job over from that very gateway (which then had its
//! chance). So after restarts and scale-outs the jobs move back to a spread,
//! and a job is never without a holder for much longer than a lease.
//!
//! **Attachments.** The holder of an expiry shard also sweeps the same shard of
//! the region's blob expiry index: each due blob is marked deleting in storage,
//! its objects are deleted from the object store, then its records
//! ([`rossby_storage::tables::blobs`]). Every step tolerates another gateway
//! doing the same at once (a lapsed lease): marking and finishing lock the
//! blob's record, deleting a missing object is no error, and a blob extended by
//! a send before it was marked is kept.
//!
//! A draining gateway stops the loop and releases its leases; the others take
//! the jobs over at their next round. One that dies stops renewing; its jobs are
//! taken over a lease after its leases lapse. None of this is needed for
//! correctness (the expiry and purge steps are idempotent and conflict with each
//! other where they must); it keeps a region's gateways from all doing the same
//! work and colliding on the same keys, and bounds how long work waits.

mod options;

pub use options::MaintenanceOptions;

use crate::blobstore::BlobStore;
use crate::metrics::Metrics;
use crate::peer::ownership::Ownership;
use rossby_keyspace::{MaintenanceJob, RegionId};
use rossby_replication::ownership::choose;
use rossby_storage::tables::Store;
use rossby_storage::tables::blobs;
use rossby_storage::tables::maintenance::{Acquired, MaintenanceLease};
use rossby_storage::tables::presence::Holder;
use rossby_storage::transact;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::time::Instant;

/// Default interval between maintenance rounds. Each round reads and renews
/// the region's leases and scans the held expiry shards: at 5 s this cost the
/// load test about a third of its latency on two saturated cores
/// (docs/performance.md), at 30 s little.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);

/// Default lifetime of a maintenance lease.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(90);

/// Expiry index entries read per sweep transaction batch.
const SWEEP_BATCH: usize = 1024;

/// Blob expiry entries read per batch.
const BLOB_BATCH: usize = 64;

/// Pending registrations read per batch.
const REGISTRATION_BATCH: usize = 256;

/// Purge entries read per batch.
const PURGE_BATCH: usize = 64;

/// Most purge entries counted for `rossby_maintenance_pending_purges` (and
/// searched for the oldest).
const BACKLOG_LIMIT: usize = 1000;

/// What the loop remembers between rounds.
#[derive(Debug, Default)]
struct State {
    /// When this gateway first saw each job without any lease.
    unleased_since: BTreeMap<MaintenanceJob, u64>,
    /// Jobs this gateway took over although another gateway was preferred, and
    /// that gateway: they are not handed back to it (it had its chance).
    taken_over: BTreeMap<MaintenanceJob, [u8; 16]>,
    /// Rounds run so far (rotates the order in which held jobs are worked on).
    rounds: u64,
}

/// The maintenance of one gateway's region.
pub struct Maintenance {
    store: Store,
    region: RegionId,
    id: [u8; 16],
    holder: Holder,
    ownership: Option<Arc<Ownership>>,
    interval: Duration,
    lease: Duration,
    metrics: Arc<Metrics>,
    state: tokio::sync::Mutex<State>,
    /// The jobs held after the last round, for observers.
    held: Mutex<BTreeSet<MaintenanceJob>>,
    /// The object store of attachments, once attached: blob sweeping is off
    /// until then.
    blobs: std::sync::OnceLock<BlobStore>,
}

impl std::fmt::Debug for Maintenance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Maintenance")
            .field("region", &self.region)
            .field("gateway_id", &self.holder.gateway_id)
            .finish_non_exhaustive()
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Maintenance {
    /// The maintenance of `region` by gateway run `id`, whose leases name
    /// `peer_address` (informational: the peer endpoint, or the client address of
    /// a gateway without one). `ownership` is the view of the region's live
    /// gateways, when box ownership is on.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Store,
        region: RegionId,
        id: [u8; 16],
        peer_address: String,
        ownership: Option<Arc<Ownership>>,
        interval: Duration,
        lease: Duration,
        metrics: Arc<Metrics>,
    ) -> Maintenance {
        Maintenance {
            store,
            region,
            id,
            holder: Holder {
                peer_address,
                gateway_id: hex::encode(id),
            },
            ownership,
            interval,
            lease,
            metrics,
            state: tokio::sync::Mutex::new(State::default()),
            held: Mutex::new(BTreeSet::new()),
            blobs: std::sync::OnceLock::new(),
        }
    }

    /// Attaches the object store whose blobs the expiry shard holders delete.
    /// Returns false if one was attached already.
    pub fn set_blob_store(&self, blobs: BlobStore) -> bool {
        self.blobs.set(blobs).is_ok()
    }

    /// The gateway run id the leases name.
    pub fn gateway_id(&self) -> &str {
        &self.holder.gateway_id
    }

    /// The jobs this gateway held after its last round.
    pub fn held(&self) -> BTreeSet<MaintenanceJob> {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The current holders of the region's jobs, read from storage (a job
    /// missing from the list has none).
    pub async fn holders(&self, now_ms: u64) -> rossby_storage::Result<Vec<MaintenanceLease>> {
        self.store.maintenance_holders(self.region, now_ms).await
    }

    /// Runs rounds every `interval` until aborted.
    pub(crate) async fn run(self: Arc<Self>) {
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            self.round(crate::server::now_ms()).await;
        }
    }

    /// One round at `now_ms`: claim, work, measure. Failures are logged and
    /// retried at the next round.
    pub async fn round(&self, now_ms: u64) {
        let mut state = self.state.lock().await;
        let started = Instant::now();
        let held = self.claim(&mut state, now_ms).await;
        self.set_held(&held);
        let deadline = started + self.lease / 2;
        self.work(&held, state.rounds, now_ms, deadline).await;
        state.rounds = state.rounds.wrapping_add(1);
        drop(state);
        self.measure(&held, now_ms).await;
    }

    /// The live gateways of the region, this one included unless it released
    /// its ownership lease: just this one without box ownership.
    fn candidates(&self) -> Vec<[u8; 16]> {
        match &self.ownership {
            Some(ownership) => ownership.live_ids(self.region),
            None => vec![self.id],
        }
    }

    /// Renews, takes and hands over leases; returns the jobs held until
    /// `now_ms + lease`.
    async fn claim(&self, state: &mut State, now_ms: u64) -> BTreeSet<MaintenanceJob> {
        let mut held = BTreeSet::new();
        let leases = match self.store.maintenance_leases(self.region).await {
            Ok(leases) => leases,
            Err(err) => {
                // Without knowing the leases, hold nothing this round: the
                // leases held lapse unless the next round renews them.
                tracing::warn!(error = %err, "cannot read the maintenance leases");
                return held;
            }
        };
        let by_job: BTreeMap<MaintenanceJob, MaintenanceLease> =
            leases.into_iter().map(|l| (l.job, l)).collect();
        let candidates = self.candidates();
        let lease_ms = millis(self.lease);
        let expires = now_ms.saturating_add(lease_ms.max(1));
        for job in MaintenanceJob::all() {
            let preferred = choose(&job.to_bytes(), &candidates, |id| id.as_slice()).copied();
            let mine = by_job
                .get(&job)
                .is_some_and(|l| l.holder.gateway_id == self.holder.gateway_id);
            let attempt = match by_job.get(&job) {
                Some(_) if mine => {
                    if let Some(other) = preferred
                        && other != self.id
                        && state.taken_over.get(&job) != Some(&other)
                    {
                        self.hand_over(job).await;
                        state.taken_over.remove(&job);
                        continue;
                    }
                    true
                }
                Some(lease) => {
                    state.unleased_since.remove(&job);
                    !lease.is_live(now_ms)
                        && (preferred == Some(self.id)
                            || lease.expires_at_ms.saturating_add(lease_ms) <= now_ms)
                }
                None => {
                    let since = *state.unleased_since.entry(job).or_insert(now_ms);
                    preferred == Some(self.id) || since.saturating_add(lease_ms) <= now_ms
                }
            };
            if !attempt {
                continue;
            }
            match self
                .store
                .acquire_maintenance(self.region, job, &self.holder, now_ms, expires)
                .await
            {
                Ok(Acquired::Held) => {
                    held.insert(job);
                    state.unleased_since.remove(&job);
                    match preferred {
                        Some(other) if other != self.id && !mine => {
                            tracing::info!(%job, "took over a maintenance job nobody ran");
                            state.taken_over.insert(job, other);
                        }
                        Some(other) if other == self.id => {
                            state.taken_over.remove(&job);
                        }
                        _ => {}
                    }
                }
                Ok(Acquired::Elsewhere(_)) => {}
                Err(err) => {
                    tracing::warn!(%job, error = %err, "cannot take or renew a maintenance lease");
                }
            }
        }
        held
    }

    /// Releases the lease of `job` so that its preferred gateway takes it.
    async fn hand_over(&self, job: MaintenanceJob) {
        let released = rossby_storage::transact!(self.store, |txn| {
            rossby_storage::tables::maintenance::release(
                txn,
                self.region,
                job,
                &self.holder.gateway_id,
            )
            .await
        });
        match released {
            Ok(_) => {
                tracing::debug!(%job, "handed a maintenance job over to its preferred gateway")
            }
            Err(err) => tracing::warn!(%job, error = %err, "cannot hand a maintenance job over"),
        }
    }

    /// Works on the held jobs until they are done or `deadline` passes.
    async fn work(
        &self,
        held: &BTreeSet<MaintenanceJob>,
        rounds: u64,
        now_ms: u64,
        deadline: Instant,
    ) {
        let mut jobs: Vec<MaintenanceJob> = held.iter().copied().collect();
        if !jobs.is_empty() {
            // Start each round elsewhere, so a job that uses up the time does
            // not starve the ones after it.
            let start = usize::try_from(rounds).unwrap_or(0) % jobs.len();
            jobs.rotate_left(start);
        }
        for job in jobs {
            if Instant::now() >= deadline {
                tracing::debug!("maintenance round out of time; the rest waits for the next");
                return;
            }
            match job {
                MaintenanceJob::ExpiryShard(shard) => {
                    self.sweep(shard, now_ms, deadline).await;
                    self.sweep_blobs(shard, now_ms, deadline).await;
                }
                MaintenanceJob::Purge => {
                    self.purge(deadline).await;
                    self.sweep_registrations(now_ms, deadline).await;
                }
            }
        }
    }

    /// Deletes the region's pending registrations whose code expired (with the
    /// purge job: both remove what nobody will come back for).
    async fn sweep_registrations(&self, now_ms: u64, deadline: Instant) {
        let mut from: Option<Vec<u8>> = None;
        loop {
            if Instant::now() >= deadline {
                return;
            }
            match self
                .store
                .sweep_registrations(self.region, now_ms, from.as_deref(), REGISTRATION_BATCH)
                .await
            {
                Ok(swept) => {
                    self.metrics.maintenance_work(
                        "registrations",
                        "deleted",
                        u64::try_from(swept.deleted).unwrap_or(u64::MAX),
                    );
                    match swept.next {
                        Some(next) => from = Some(next),
                        None => return,
                    }
                }
                Err(err) => {
                    tracing::warn!(error = %err, "sweeping expired registrations failed; retried at the next round");
                    return;
                }
            }
        }
    }

    /// Deletes what is due in one expiry shard.
    async fn sweep(&self, shard: u8, now_ms: u64, deadline: Instant) {
        loop {
            match self
                .store
                .sweep_shard(self.region, shard, now_ms, SWEEP_BATCH)
                .await
            {
                Ok((swept, more)) => {
                    let m = &self.metrics;
                    m.maintenance_work("expiry", "entries", swept.entries);
                    m.maintenance_work("expiry", "envelopes", swept.envelopes);
                    m.maintenance_work("expiry", "dedups", swept.dedups);
                    if swept.entries > 0 {
                        tracing::debug!(
                            shard,
                            envelopes = swept.envelopes,
                            dedups = swept.dedups,
                            "expired entries swept"
                        );
                    }
                    if !more || Instant::now() >= deadline {
                        return;
                    }
                }
                Err(err) => {
                    tracing::warn!(shard, error = %err, "retention sweep failed; retried at the next round");
                    return;
                }
            }
        }
    }

    /// Deletes the attachment blobs due in one shard of the blob expiry index:
    /// storage marks each deleting, its objects go, then its records. A blob
    /// whose objects cannot be deleted stays due and ends the round's sweep of
    /// the shard (the object store is failing; the alert on its errors says so).
    async fn sweep_blobs(&self, shard: u8, now_ms: u64, deadline: Instant) {
        let Some(objects) = self.blobs.get() else {
            return;
        };
        let store = &self.store;
        let region = self.region;
        let max_deletes = store.limits.max_deletes_per_txn;
        loop {
            let due = match transact!(store, |txn| blobs::due(
                txn, region, shard, now_ms, BLOB_BATCH
            )
            .await)
            {
                Ok(due) => due,
                Err(err) => {
                    tracing::warn!(shard, error = %err, "cannot read the blob expiry index");
                    return;
                }
            };
            for entry in &due {
                if Instant::now() >= deadline {
                    return;
                }
                if let Err(err) = self.delete_blob(objects, entry, now_ms, max_deletes).await {
                    tracing::warn!(shard, error = %err, "deleting an expired attachment failed; retried at the next round");
                    return;
                }
            }
            if due.len() < BLOB_BATCH {
                return;
            }
        }
    }

    /// The three steps of deleting one due blob (see [`Self::sweep_blobs`]).
    async fn delete_blob(
        &self,
        objects: &BlobStore,
        entry: &blobs::DueBlob,
        now_ms: u64,
        max_deletes: usize,
    ) -> Result<(), String> {
        let store = &self.store;
        let outcome = transact!(store, |txn| blobs::mark_deleting(txn, entry, now_ms).await)
            .map_err(|e| e.to_string())?;
        if outcome == blobs::Sweep::Kept {
            self.metrics.maintenance_work("blobs", "kept", 1);
            return Ok(());
        }
        let mut id = Vec::with_capacity(32);
        id.extend_from_slice(entry.box_id.as_bytes());
        id.extend_from_slice(&entry.blob);
        objects.delete_blob(&id).await.map_err(|e| e.to_string())?;
        while !transact!(store, |txn| blobs::finish_deleting(txn, entry, max_deletes)
            .await)
        .map_err(|e| e.to_string())?
        {}
        self.metrics.maintenance_work("blobs", "deleted", 1);
        Ok(())
    }

    /// Finishes the purges of deleted accounts, one bounded transaction at a
    /// time. A box whose purge fails is left for the next round.
    async fn purge(&self, deadline: Instant) {
        loop {
            let pending = match self.store.pending_purges(self.region, PURGE_BATCH).await {
                Ok(pending) => pending,
                Err(err) => {
                    tracing::warn!(error = %err, "cannot read the purge queue");
                    return;
                }
            };
            if pending.is_empty() {
                return;
            }
            let mut finished = 0;
            for box_id in pending {
                loop {
                    if Instant::now() >= deadline {
                        return;
                    }
                    match self.store.purge_step(box_id).await {
                        Ok(done) => {
                            self.metrics.maintenance_work("purge", "steps", 1);
                            if done {
                                self.metrics.maintenance_work("purge", "boxes", 1);
                                finished += 1;
                                break;
                            }
                        }
                        Err(err) => {
                            tracing::warn!(error = %err, "purging a deleted account failed; retried at the next round");
                            break;
                        }
                    }
                }
            }
            if finished > 0 {
                tracing::info!(purged = finished, "deleted accounts purged");
            } else {
                // Every purge of the batch failed: try again next round.
                return;
            }
        }
    }

    /// Sets the gauges from what is left after the round.
    async fn measure(&self, held: &BTreeSet<MaintenanceJob>, now_ms: u64) {
        let m = &self.metrics;
        let mut expiry_lag_ms = 0;
        for job in held {
            if let MaintenanceJob::ExpiryShard(shard) = *job {
                match self
                    .store
                    .oldest_due_expiry(self.region, shard, now_ms)
                    .await
                {
                    Ok(Some(at)) => expiry_lag_ms = expiry_lag_ms.max(now_ms.saturating_sub(at)),
                    Ok(None) => {}
                    Err(err) => {
                        tracing::debug!(shard, error = %err, "cannot measure the expiry lag")
                    }
                }
            }
        }
        set_lag(m, "expiry", expiry_lag_ms);
        if held.contains(&MaintenanceJob::Purge) {
            match self.store.purge_backlog(self.region, BACKLOG_LIMIT).await {
                Ok(backlog) => {
                    m.maintenance_pending_purges
                        .set(i64::try_from(backlog.pending).unwrap_or(i64::MAX));
                    let lag = backlog
                        .oldest_at_ms
                        .map_or(0, |at| now_ms.saturating_sub(at));
                    set_lag(m, "purge", lag);
                }
                Err(err) => tracing::debug!(error = %err, "cannot measure the purge backlog"),
            }
        } else {
            m.maintenance_pending_purges.set(0);
            set_lag(m, "purge", 0);
        }
    }

    fn set_held(&self, held: &BTreeSet<MaintenanceJob>) {
        let count = |kind: &str| held.iter().filter(|j| j.kind() == kind).count();
        for kind in crate::metrics::MAINTENANCE_JOBS {
            self.metrics
                .maintenance_leases_held
                .with_label_values(&[kind])
                .set(i64::try_from(count(kind)).unwrap_or(i64::MAX));
        }
        *self.held.lock().unwrap_or_else(PoisonError::into_inner) = held.clone();
    }

    /// Releases every lease this gateway holds (a draining gateway), so that the
    /// others take the jobs at their next round. Call after the loop stopped.
    pub async fn release(&self) {
        let _state = self.state.lock().await;
        self.set_held(&BTreeSet::new());
        match self
            .store
            .release_maintenance(self.region, &self.holder.gateway_id)
            .await
        {
            Ok(0) => {}
            Ok(released) => tracing::info!(released, "maintenance leases released"),
            Err(err) => {
                tracing::debug!(error = %err, "cannot release the maintenance leases; they lapse")
            }
        }
    }
}

fn set_lag(metrics: &Metrics, job: &str, lag_ms: u64) {
    // Milliseconds as f64 seconds: exact far beyond any real lag.
    #[allow(clippy::cast_precision_loss)]
    let seconds = lag_ms as f64 / 1000.0;
    metrics
        .maintenance_lag_seconds
        .with_label_values(&[job])
        .set(seconds);
}

#[cfg(test)]
mod tests {
    use super::*;
    use rossby_keyspace::{LookupHasher, Pepper};
    use rossby_storage::kv::memory::MemoryStore;

    const REGION: RegionId = RegionId(1);
    const T0: u64 = 1_700_000_000_000;
    const LEASE: Duration = Duration::from_secs(15);
    const LEASE_MS: u64 = 15_000;

    fn store() -> Store {
        let hasher = LookupHasher::new(
            vec![Pepper {
                version: 1,
                secret: vec![7; 32],
            }],
            1,
        )
        .unwrap();
        Store::new(Arc::new(MemoryStore::new()), hasher)
    }

    /// A gateway `n` of `REGION`: its ownership view (refreshed at `now` by
    /// [`Gateway::refresh`]) and its maintenance.
    struct Gateway {
        id: [u8; 16],
        ownership: Arc<Ownership>,
        maintenance: Maintenance,
    }

    impl Gateway {
        fn new(store: &Store, n: u8) -> Gateway {
            let id = [n; 16];
            let address = format!("gw{n}.example.net:7402");
            let ownership = Arc::new(Ownership::new(
                store.clone(),
                REGION,
                vec![REGION],
                id,
                address.clone(),
                Duration::from_secs(5),
            ));
            let maintenance = Maintenance::new(
                store.clone(),
                REGION,
                id,
                address,
                Some(ownership.clone()),
                Duration::from_secs(5),
                LEASE,
                Arc::new(Metrics::new()),
            );
            Gateway {
                id,
                ownership,
                maintenance,
            }
        }

        async fn refresh(&self, now: u64) {
            self.ownership.refresh(now).await;
        }

        fn name(&self) -> String {
            hex::encode(self.id)
        }
    }

    async fn stored(store: &Store, now: u64) -> BTreeMap<MaintenanceJob, String> {
        store
            .maintenance_holders(REGION, now)
            .await
            .unwrap()
            .into_iter()
            .map(|l| (l.job, l.holder.gateway_id))
            .collect()
    }

    /// Each job at its rendezvous choice among `gateways`.
    fn spread(gateways: &[&Gateway]) -> BTreeMap<MaintenanceJob, String> {
        let ids: Vec<[u8; 16]> = gateways.iter().map(|g| g.id).collect();
        MaintenanceJob::all()
            .map(|job| {
                let chosen = choose(&job.to_bytes(), &ids, |id| id.as_slice()).unwrap();
                (job, hex::encode(chosen))
            })
            .collect()
    }

    fn held_by(map: &BTreeMap<MaintenanceJob, String>, g: &Gateway) -> BTreeSet<MaintenanceJob> {
        map.iter()
            .filter(|(_, id)| **id == g.name())
            .map(|(job, _)| *job)
            .collect()
    }

    /// The maintenance of a gateway that is alone in its region (no ownership
    /// view: it prefers itself for every job).
    fn alone(store: &Store, metrics: &Arc<Metrics>) -> Maintenance {
        Maintenance::new(
            store.clone(),
            REGION,
            [9; 16],
            "127.0.0.1:7400".into(),
            None,
            Duration::from_secs(5),
            LEASE,
            metrics.clone(),
        )
    }

    /// Stores a pending registration for `n` whose code expires at `expires`,
    /// asking for `region`.
    async fn pending(store: &Store, n: u32, expires: u64, region: u16) {
        use rossby_storage::tables::records::PendingRegistration;
        use rossby_storage::tables::registrations;
        let id = rossby_keyspace::Identifier::parse(&format!("u{n}@example.com")).unwrap();
        let digest = store.hasher.current(&id);
        let record = PendingRegistration {
            expires_at_ms: expires,
            region: u32::from(region),
            ..PendingRegistration::default()
        };
        transact!(store, |txn| registrations::store_pending(
            txn,
            &digest,
            rossby_keyspace::DeviceId::UNIDENTIFIED,
            &record
        )
        .await)
        .unwrap();
    }

    #[tokio::test]
    async fn the_purge_job_deletes_the_regions_expired_registrations() {
        let store = store();
        let metrics = Arc::new(Metrics::new());
        let m = alone(&store, &metrics);
        // 600 expired (more than two batches), 5 still valid, 7 expired but
        // asking for another region (that region's maintenance deletes them).
        for n in 0..600 {
            pending(&store, n, T0 - 1, 1).await;
        }
        for n in 600..605 {
            pending(&store, n, T0 + 60_000, 1).await;
        }
        for n in 605..612 {
            pending(&store, n, T0 - 1, 2).await;
        }
        let count = || async {
            let range = rossby_keyspace::Key::registration_range();
            transact!(store, |txn| Ok(txn
                .scan(&range, 10_000, rossby_storage::ScanOrder::Forward)
                .await?
                .len()))
            .unwrap()
        };
        assert_eq!(count().await, 612);
        m.round(T0).await;
        assert_eq!(count().await, 12);
        let deleted = metrics
            .maintenance_work_total
            .with_label_values(&["registrations", "deleted"])
            .get();
        assert_eq!(deleted, 600);
        // Once the others expire, they go too.
        m.round(T0 + 120_000).await;
        assert_eq!(count().await, 7);
    }

    #[tokio::test]
    async fn without_ownership_one_gateway_holds_and_renews_every_job() {
        let store = store();
        let metrics = Arc::new(Metrics::new());
        let m = alone(&store, &metrics);
        m.round(T0).await;
        let all: BTreeSet<MaintenanceJob> = MaintenanceJob::all().collect();
        assert_eq!(m.held(), all);
        let leases = store.maintenance_leases(REGION).await.unwrap();
        assert_eq!(leases.len(), MaintenanceJob::COUNT);
        assert!(leases.iter().all(|l| l.expires_at_ms == T0 + LEASE_MS));
        let gauge = |job: &str| {
            metrics
                .maintenance_leases_held
                .with_label_values(&[job])
                .get()
        };
        assert_eq!((gauge("expiry"), gauge("purge")), (16, 1));
        m.round(T0 + 5_000).await;
        let leases = store.maintenance_leases(REGION).await.unwrap();
        assert!(
            leases
                .iter()
                .all(|l| l.expires_at_ms == T0 + 5_000 + LEASE_MS)
        );
        // Another gateway without ownership finds every job taken.
        let other = Maintenance::new(
            store.clone(),
            REGION,
            [8; 16],
            "127.0.0.2:7400".into(),
            None,
            Duration::from_secs(5),
            LEASE,
            Arc::new(Metrics::new()),
        );
        other.round(T0 + 6_000).await;
        assert!(other.held().is_empty());
        // Released, the jobs are the other's at its next round.
        m.release().await;
        assert!(m.held().is_empty());
        assert_eq!(gauge("expiry"), 0);
        other.round(T0 + 7_000).await;
        assert_eq!(other.held(), all);
    }

    #[tokio::test]
    async fn gateways_take_their_preferred_jobs_and_a_newcomer_gets_its_share() {
        let store = store();
        let (a, b) = (Gateway::new(&store, 1), Gateway::new(&store, 2));
        // A alone: every job is A's.
        a.refresh(T0).await;
        a.maintenance.round(T0).await;
        assert_eq!(a.maintenance.held().len(), MaintenanceJob::COUNT);
        // B starts: it sees A's live leases and takes nothing; A, seeing B,
        // hands B's share over; B takes it at its next round.
        b.refresh(T0 + 1_000).await;
        a.refresh(T0 + 1_000).await;
        b.maintenance.round(T0 + 1_000).await;
        assert!(b.maintenance.held().is_empty());
        let expected = spread(&[&a, &b]);
        let (share_a, share_b) = (held_by(&expected, &a), held_by(&expected, &b));
        assert!(!share_a.is_empty() && !share_b.is_empty(), "{expected:?}");
        a.maintenance.round(T0 + 2_000).await;
        assert_eq!(a.maintenance.held(), share_a);
        b.maintenance.round(T0 + 2_000).await;
        assert_eq!(b.maintenance.held(), share_b);
        assert_eq!(stored(&store, T0 + 2_000).await, expected);
        // Steady: renewals change nothing.
        for g in [&a, &b, &a, &b] {
            g.refresh(T0 + 3_000).await;
            g.maintenance.round(T0 + 3_000).await;
        }
        assert_eq!(stored(&store, T0 + 3_000).await, expected);
    }

    #[tokio::test]
    async fn a_silent_gateways_jobs_are_taken_over_a_lease_after_they_lapse() {
        let store = store();
        let (a, b) = (Gateway::new(&store, 1), Gateway::new(&store, 2));
        // Twice: the first refresh of A ran before B's lease existed.
        for g in [&a, &b, &a] {
            g.refresh(T0).await;
        }
        for g in [&a, &b] {
            g.maintenance.round(T0).await;
        }
        let expected = spread(&[&a, &b]);
        assert_eq!(stored(&store, T0).await, expected);
        let share_b = held_by(&expected, &b);
        // B goes silent (its ownership lease is still live in A's view, so B
        // stays the preferred gateway of its jobs).
        let lapsed = T0 + LEASE_MS;
        a.maintenance.round(lapsed).await;
        assert!(
            a.maintenance.held().is_disjoint(&share_b),
            "not before a full lease"
        );
        a.maintenance.round(lapsed + LEASE_MS - 1).await;
        assert!(a.maintenance.held().is_disjoint(&share_b));
        a.maintenance.round(lapsed + LEASE_MS).await;
        assert_eq!(a.maintenance.held().len(), MaintenanceJob::COUNT);
        // B comes back: it finds its jobs held, and A keeps them (no flapping
        // back and forth with a gateway that failed to run them).
        let back = lapsed + LEASE_MS + 1_000;
        b.maintenance.round(back).await;
        assert!(b.maintenance.held().is_empty());
        a.maintenance.round(back + 1).await;
        assert_eq!(a.maintenance.held().len(), MaintenanceJob::COUNT);
        // Once B's ownership lease lapses too, A is everyone's choice anyway.
        a.refresh(back + 10_000).await;
        a.maintenance.round(back + 10_000).await;
        assert_eq!(a.maintenance.held().len(), MaintenanceJob::COUNT);
    }

    #[tokio::test]
    async fn jobs_nobody_takes_up_are_taken_a_lease_after_they_were_first_seen_free() {
        let store = store();
        let (a, b) = (Gateway::new(&store, 1), Gateway::new(&store, 2));
        // Both in every view, but B never runs its maintenance.
        for g in [&a, &b, &a] {
            g.refresh(T0).await;
        }
        let share_b = held_by(&spread(&[&a, &b]), &b);
        a.maintenance.round(T0).await;
        assert!(a.maintenance.held().is_disjoint(&share_b));
        a.maintenance.round(T0 + LEASE_MS - 1).await;
        assert!(a.maintenance.held().is_disjoint(&share_b));
        a.maintenance.round(T0 + LEASE_MS).await;
        assert_eq!(a.maintenance.held().len(), MaintenanceJob::COUNT);
    }
}
