//! Rossby's domain tables, written against the KV layer's transactions only,
//! through [`Tx`].
//!
//! Each submodule offers functions that run inside a caller's transaction, so a
//! request handler can combine several of them atomically (registering creates a
//! box, binds identifiers and adds a device in one transaction). [`Store`] wraps
//! the KV handle, the retry policy, the lookup hasher and the limits, and runs the
//! common single-purpose transactions.
//!
//! # Correct under snapshot isolation
//! Every invariant that spans keys is protected by the transactions involved
//! writing a common key, because TiKV (and the memory backend) only detect
//! write-write conflicts. For boxes this is a type ([`tx`]): a box key is written
//! only through a [`BoxHandle`] obtained by locking or writing one of the box's
//! guard keys, and deleting an account writes all of them. On top of that:
//! - enqueues and device-list changes all write the box's `next` key, so a send
//!   can never commit against a device list that changed under it;
//! - acks and cleanup write `low` and pointers but never `next`, so they never
//!   conflict with enqueues;
//! - claiming a KeyPackage deletes it, so two claims of one package conflict;
//! - binding an identifier writes its lookup key, so two boxes cannot bind it;
//! - binding, removing and re-flagging identifiers and changing pending
//!   additions all lock the box's profile, so two removals of a box's last two
//!   identifiers conflict and the second one finds only one left;
//! - quotas are counted under the guard every insert of the kind takes;
//! - every code sent to an identifier and every wrong code tried for it write
//!   its identifier-limit record, so concurrent spends of the last unit
//!   conflict; every registration-lock PIN attempt is counted (a profile
//!   write) before the PIN is checked, so concurrent guesses never exceed the
//!   limit;
//! - every expiry locks and every purge step writes the box's `low` key, and
//!   expiry writes nothing into a box that is no longer alive;
//! - a group Commit, leave or message writes the group's epoch record (one
//!   Commit wins per epoch, and no message of an old epoch passes after it) and
//!   records its fan-out in the outbox in the same transaction; delivering the
//!   fan-out writes the recipients' `next` keys and the outbox entry, never the
//!   epoch record, so delivery never conflicts with the next Commit;
//! - each gateway writes only its own ownership lease, so renewals never
//!   conflict; ownership itself protects nothing (two gateways that both think
//!   they own a box still conflict on its `next` key);
//! - acquiring, renewing and releasing a maintenance lease read it for update
//!   and write it, so two gateways taking one job at once conflict and the job
//!   has one holder; like ownership, the lease only spreads work (the expiry and
//!   purge steps it schedules stay correct when two gateways run them).

use crate::error::Result;
use crate::kv::RetryPolicy;
use crate::kv::{Key as RawKey, Kv};
use crate::transact;
use rossby_keyspace::keys::EXPIRY_SHARDS;
use rossby_keyspace::{BoxId, DeviceId, ExpiryEntry, Key, LookupHasher, RegionId};
use std::collections::BTreeMap;

pub mod accounts;
pub mod blobs;
pub mod code_budgets;
pub mod contacts;
pub mod devices;
pub mod gateways;
pub mod groups;
pub mod identifier_limits;
pub mod identifiers;
pub mod keypackages;
pub mod lifecycle;
pub mod lookup;
pub mod maintenance;
pub mod outbox;
pub mod presence;
pub mod push;
pub mod queue;
pub mod records;
pub mod registration_lock;
pub mod registrations;
pub mod tx;

pub use records::Record;
pub use tx::{BatchRead, BoxHandle, Guard, LiveBox, SharedKey, Tx};

/// Limits enforced by the tables. All are configurable; the defaults suit a
/// production deployment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest envelope payload accepted, in bytes.
    pub max_payload_bytes: usize,
    /// Most devices one box may have.
    pub max_devices_per_box: usize,
    /// Most unclaimed KeyPackages stored per device.
    pub max_key_packages_per_device: usize,
    /// Largest KeyPackage accepted, in bytes.
    pub max_key_package_bytes: usize,
    /// How long an envelope is kept when not every device acknowledged it.
    pub retention_ms: u64,
    /// How long a send stays idempotent: a retry with the same sender device and
    /// message id within this window returns the original sequence number.
    pub dedup_window_ms: u64,
    /// Most queue entries deleted by one acknowledgement or sweep transaction
    /// (bounds transaction size; the rest is deleted by later ones).
    pub max_deletes_per_txn: usize,
    /// Most contacts, and separately most blocked boxes, one box may hold.
    pub max_relations_per_box: usize,
    /// Most identifiers bound to one box (at most
    /// [`lookup::MAX_IDENTIFIERS_LIMIT`]).
    pub max_identifiers_per_box: usize,
    /// Most identifiers one box may be adding at once (codes sent, not yet
    /// confirmed and not expired).
    pub max_pending_identifiers_per_box: usize,
    /// Most bytes of envelopes one box's queue holds (stored record bytes);
    /// an enqueue beyond it is refused with [`crate::Error::QuotaExceeded`].
    pub max_queue_bytes: u64,
    /// Most envelopes one box's queue holds.
    pub max_queue_envelopes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_payload_bytes: 256 * 1024,
            max_devices_per_box: 16,
            max_key_packages_per_device: 200,
            max_key_package_bytes: 16 * 1024,
            retention_ms: 30 * 24 * 3600 * 1000,
            dedup_window_ms: 24 * 3600 * 1000,
            max_deletes_per_txn: 1024,
            max_relations_per_box: 10_000,
            max_identifiers_per_box: lookup::MAX_IDENTIFIERS_PER_BOX,
            max_pending_identifiers_per_box: 4,
            max_queue_bytes: 64 * 1024 * 1024,
            max_queue_envelopes: 50_000,
        }
    }
}

/// The domain store: a KV handle plus what every domain transaction needs.
#[derive(Clone)]
pub struct Store {
    /// The key-value store.
    pub kv: Kv,
    /// How transactions are retried on conflict.
    pub retry: RetryPolicy,
    /// Hashes identifiers for the lookup table.
    pub hasher: LookupHasher,
    /// Size and count limits.
    pub limits: Limits,
}

/// Decodes a raw key read by a scan of one of our own ranges.
pub(crate) fn decode_key(raw: &RawKey) -> Result<Key> {
    Key::decode(raw).map_err(|e| crate::Error::corrupt("key", e))
}

impl Store {
    /// A store with the default retry policy and limits.
    pub fn new(kv: Kv, hasher: LookupHasher) -> Self {
        Store {
            kv,
            retry: RetryPolicy::default(),
            hasher,
            limits: Limits::default(),
        }
    }

    /// Enqueues envelopes into one recipient box (see [`queue::enqueue`]).
    pub async fn enqueue(
        &self,
        recipient: BoxId,
        envelopes: &[queue::NewEnvelope],
        now_ms: u64,
    ) -> Result<Vec<Result<queue::Enqueued>>> {
        transact!(self, |txn| queue::enqueue(
            txn,
            &self.limits,
            recipient,
            envelopes,
            now_ms
        )
        .await)
    }

    /// Fetches envelopes for a device (see [`queue::fetch`]).
    pub async fn fetch(
        &self,
        box_id: BoxId,
        device: DeviceId,
        bounds: queue::FetchLimits,
    ) -> Result<queue::Fetched> {
        transact!(self, |txn| queue::fetch(txn, box_id, device, bounds).await)
    }

    /// Acknowledges envelopes up to `upto` for a device (see [`queue::ack`]).
    pub async fn ack(
        &self,
        box_id: BoxId,
        device: DeviceId,
        upto: u64,
        now_ms: u64,
    ) -> Result<queue::Acked> {
        transact!(self, |txn| queue::ack(
            txn,
            &self.limits,
            box_id,
            device,
            upto,
            now_ms
        )
        .await)
    }

    /// Deletes everything in `region` whose expiry is before `now_ms`: every shard
    /// of the expiry index in turn, each with [`Store::sweep_shard`] until nothing
    /// due is left.
    pub async fn sweep(&self, region: RegionId, now_ms: u64, batch: usize) -> Result<queue::Swept> {
        let mut total = queue::Swept::default();
        for shard in 0..EXPIRY_SHARDS {
            loop {
                let (swept, more) = self.sweep_shard(region, shard, now_ms, batch).await?;
                total.entries += swept.entries;
                total.envelopes += swept.envelopes;
                total.dedups += swept.dedups;
                if !more {
                    break;
                }
            }
        }
        Ok(total)
    }

    /// Deletes up to `batch` entries of one expiry shard of `region` that are due
    /// before `now_ms`, oldest first. Each box's due entries are processed in a
    /// transaction of their own, so a sweep never holds a large transaction or
    /// conflicts with more than one box at a time. Returns what was deleted and
    /// whether due entries may remain (the batch was full and made progress).
    pub async fn sweep_shard(
        &self,
        region: RegionId,
        shard: u8,
        now_ms: u64,
        batch: usize,
    ) -> Result<(queue::Swept, bool)> {
        let batch = batch.max(1);
        let due = transact!(self, |txn| queue::due(txn, region, shard, now_ms, batch)
            .await)?;
        let mut by_box: BTreeMap<BoxId, Vec<(u64, ExpiryEntry)>> = BTreeMap::new();
        for (box_id, at, entry) in &due {
            by_box.entry(*box_id).or_default().push((*at, *entry));
        }
        let mut total = queue::Swept::default();
        for (box_id, entries) in &by_box {
            let swept = transact!(self, |txn| queue::expire(
                txn,
                &self.limits,
                *box_id,
                entries,
                now_ms
            )
            .await)?;
            total.entries += swept.entries;
            total.envelopes += swept.envelopes;
            total.dedups += swept.dedups;
        }
        Ok((total, due.len() == batch && total.entries > 0))
    }

    /// Deletes an account (see [`lifecycle::delete_account`]): in one transaction
    /// the box becomes invisible and a purge entry is recorded. The remaining keys
    /// are removed afterwards, off the request path, by whichever gateway holds the
    /// region's purge lease ([`maintenance`]; [`Store::purge`] does it at once).
    pub async fn delete_account(&self, box_id: BoxId, now_ms: u64) -> Result<()> {
        transact!(self, |txn| lifecycle::delete_account(
            txn,
            &self.limits,
            box_id,
            now_ms
        )
        .await)
    }

    /// Removes the remaining keys of a deleted box, in bounded transactions.
    pub async fn purge(&self, box_id: BoxId) -> Result<()> {
        let step = self.limits.max_deletes_per_txn;
        while !transact!(self, |txn| lifecycle::purge_step(txn, box_id, step).await)? {}
        Ok(())
    }

    /// One bounded step of deleting `region`'s expired pending registrations
    /// (see [`registrations::sweep_expired`]).
    pub async fn sweep_registrations(
        &self,
        region: RegionId,
        now_ms: u64,
        from: Option<&[u8]>,
        batch: usize,
    ) -> Result<registrations::SweptRegistrations> {
        transact!(self, |txn| registrations::sweep_expired(
            txn, region, now_ms, from, batch
        )
        .await)
    }

    /// Purges every box of `region` awaiting its purge (deletions whose purge has
    /// not run yet or was interrupted) until none is left. Returns how many boxes
    /// were purged. Gateways do this in bounded rounds under the region's purge
    /// lease ([`maintenance`]); this runs to the end (tests and tools).
    pub async fn resume_purges(&self, region: RegionId) -> Result<usize> {
        let mut purged = 0;
        loop {
            let pending = transact!(self, |txn| lifecycle::pending_purges(txn, region, 64).await)?;
            if pending.is_empty() {
                return Ok(purged);
            }
            for box_id in pending {
                self.purge(box_id).await?;
                purged += 1;
            }
        }
    }
}
