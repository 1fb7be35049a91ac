//! Message queues: enqueue, fetch, acknowledge, and cleanup.
//!
//! Keys of a box's queue:
//! - `next`: the next sequence number and the device-list version. Every enqueue
//!   reads and writes it, so commit order equals sequence order and a reader never
//!   sees a gap that later fills in.
//! - `low`: the lowest sequence number still stored. Every ack, device removal and
//!   expiry writes it (even unchanged), so two of them deciding what to delete
//!   from each other's pointers conflict rather than skew; they never write `next`,
//!   so they never conflict with enqueues.
//! - `q/{seq}`: one envelope per recipient box, carrying key material for every
//!   device of that box.
//! - `dedup/{sender device}/{message id}`: the sequence number a send got, so a
//!   retried send is answered with it and enqueues nothing twice.
//!
//! Expiry: each envelope and dedup record has an entry in its region's expiry
//! index (sharded by box); [`expire`] deletes what is due. A device whose pointer
//! falls below `low` is told about the gap on its next fetch.

use super::records::{
    AcceptFrom, DedupRecord, LowWater, Marker, Pointer, Profile, QueueHead, StoredEnvelope,
};
use super::tx::{BoxHandle, Tx};
use super::{Limits, Record, decode_key};
use crate::error::{Error, Result};
use crate::kv::{Key as RawKey, KeyRange, ScanOrder, Value};
use rossby_keyspace::keys::expiry_shard;
use rossby_keyspace::{BoxId, DeviceId, ExpiryEntry, Key, MessageId, RegionId};
use std::collections::{BTreeMap, BTreeSet};

pub use super::records::ANY_DEVICE_LIST;

/// One envelope to enqueue into a recipient box.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewEnvelope {
    /// The sending box.
    pub sender_box: BoxId,
    /// The sending device (the dedup scope).
    pub sender_device: DeviceId,
    /// Client-chosen id; a retry with the same id is not enqueued again.
    pub message_id: MessageId,
    /// The recipient's device-list version the sender encrypted for, or
    /// [`ANY_DEVICE_LIST`] for an envelope that is not sealed per device.
    pub device_list_version: u64,
    /// The ciphertext.
    pub payload: Vec<u8>,
}

/// Where an envelope landed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Enqueued {
    /// Its sequence number in the recipient box.
    pub seq: u64,
    /// True if this was a retry answered from the dedup record.
    pub duplicate: bool,
}

/// A stored envelope handed to a device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivered {
    /// Sequence number in the box.
    pub seq: u64,
    /// The stored record.
    pub envelope: StoredEnvelope,
}

/// Messages a device lost because they expired before it fetched them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gap {
    /// First lost sequence number.
    pub from: u64,
    /// Last lost sequence number (inclusive).
    pub to: u64,
}

/// The answer to a fetch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fetched {
    /// Envelopes after the device's pointer, in sequence order.
    pub envelopes: Vec<Delivered>,
    /// Set when envelopes the device never acknowledged have expired.
    pub gap: Option<Gap>,
    /// Highest sequence number assigned in the box so far.
    pub last_seq: u64,
    /// The device's acknowledged pointer.
    pub acked: u64,
}

impl Fetched {
    /// True if more envelopes are waiting beyond this batch.
    pub fn more(&self) -> bool {
        let seen = self.envelopes.last().map_or(self.acked, |d| d.seq);
        seen < self.last_seq
    }
}

/// Bounds of one fetch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FetchLimits {
    /// Most envelopes returned.
    pub max_count: usize,
    /// Stop adding envelopes once their payloads reach this many bytes (the first
    /// envelope is always returned, so a device can make progress).
    pub max_bytes: usize,
}

impl Default for FetchLimits {
    fn default() -> Self {
        FetchLimits {
            max_count: 100,
            max_bytes: 1024 * 1024,
        }
    }
}

async fn head(txn: &mut Tx<'_>, box_id: BoxId) -> Result<Option<QueueHead>> {
    txn.get(&Key::Next(box_id)).await
}

async fn low(txn: &mut Tx<'_>, box_id: BoxId) -> Result<u64> {
    Ok(txn
        .get::<LowWater>(&Key::Low(box_id))
        .await?
        .map_or(1, |l| l.low.max(1)))
}

/// Whether `recipient` accepts messages from `sender_box`, judged from the
/// block and contact entries in `read`. Own boxes always do.
fn accepts(
    read: &BatchRead,
    recipient: BoxId,
    profile: &Profile,
    sender_box: BoxId,
) -> Result<bool> {
    if recipient == sender_box {
        return Ok(true);
    }
    if read.contains(&Key::Block(recipient, sender_box))? {
        return Ok(false);
    }
    Ok(match profile.accept_from() {
        AcceptFrom::Anyone => true,
        AcceptFrom::Contacts => read.contains(&Key::Contact(recipient, sender_box))?,
    })
}

/// The values of a fixed set of keys, read with one `batch_get`.
///
/// In a multi-region deployment every sequential read is a round trip to the
/// leader of the key's data, so [`enqueue`] reads everything it may need at once:
/// one round trip instead of one for the profile, the head, each sender and each
/// envelope.
struct BatchRead {
    values: BTreeMap<RawKey, Option<Value>>,
}

impl BatchRead {
    async fn of(txn: &mut Tx<'_>, keys: BTreeSet<RawKey>) -> Result<BatchRead> {
        let keys: Vec<RawKey> = keys.into_iter().collect();
        let values = txn.batch_get(&keys).await?;
        if values.len() != keys.len() {
            return Err(Error::corrupt(
                "batch read",
                format!(
                    "the store answered a read of {} keys with {} values",
                    keys.len(),
                    values.len()
                ),
            ));
        }
        Ok(BatchRead {
            values: keys.into_iter().zip(values).collect(),
        })
    }

    /// The stored value of `key`. A key left out of the read is an error, not
    /// "absent": a forgotten key must not pass for a missing block or dedup record.
    fn raw(&self, key: &Key) -> Result<Option<&[u8]>> {
        self.values
            .get(&key.encode())
            .map(Option::as_deref)
            .ok_or_else(|| Error::corrupt("batch read", "a key the enqueue needs was not read"))
    }

    fn contains(&self, key: &Key) -> Result<bool> {
        Ok(self.raw(key)?.is_some())
    }

    fn record<R: Record>(&self, key: &Key) -> Result<Option<R>> {
        self.raw(key)?.map(R::from_stored).transpose()
    }
}

/// Enqueues envelopes into one recipient box in one transaction (a gateway
/// coalesces concurrent sends to a box into one call). Each envelope gets its own
/// outcome: a sequence number (new or from the dedup record), or
/// [`Error::StaleDeviceList`], [`Error::RecipientUnavailable`] or
/// [`Error::Invalid`]. Envelopes that succeed are written even when others fail.
/// The transaction-level `Err` is only for storage failures and conflicts.
///
/// Everything the outcomes depend on (profile, `next`, the block and contact
/// entries of each sender, the dedup record of each envelope) is read with one
/// `batch_get`; only a stale device list costs a further read (of the devices).
/// The first envelope written takes the box's guard by writing `next`.
pub async fn enqueue(
    txn: &mut Tx<'_>,
    limits: &Limits,
    recipient: BoxId,
    envelopes: &[NewEnvelope],
    now_ms: u64,
) -> Result<Vec<Result<Enqueued>>> {
    let profile_key = Key::Profile(recipient);
    let next_key = Key::Next(recipient);
    let mut keys = BTreeSet::from([profile_key.encode(), next_key.encode()]);
    for env in envelopes {
        if env.sender_box != recipient {
            keys.insert(Key::Block(recipient, env.sender_box).encode());
            // Only consulted when the box accepts contacts only; reading it
            // anyway costs nothing extra in a batch.
            keys.insert(Key::Contact(recipient, env.sender_box).encode());
        }
        keys.insert(Key::Dedup(recipient, env.sender_device, env.message_id).encode());
    }
    let read = BatchRead::of(txn, keys).await?;
    // A tombstoned profile is a box being deleted: as absent as an unknown one
    // (the same rule as `accounts::profile`).
    let profile = read.record::<Profile>(&profile_key)?.filter(|p| !p.deleted);
    let head = read.record::<QueueHead>(&next_key)?;
    let (Some(profile), Some(mut head)) = (profile, head) else {
        return Ok(envelopes
            .iter()
            .map(|_| Err(Error::RecipientUnavailable))
            .collect());
    };
    let mut outcomes = Vec::with_capacity(envelopes.len());
    let mut accepted: BTreeMap<BoxId, bool> = BTreeMap::new();
    let mut in_batch: BTreeMap<(DeviceId, MessageId), u64> = BTreeMap::new();
    let mut stale_devices: Option<Vec<DeviceId>> = None;
    let mut handle: Option<BoxHandle> = None;
    for env in envelopes {
        if env.payload.len() > limits.max_payload_bytes {
            outcomes.push(Err(Error::Invalid(format!(
                "payload of {} bytes exceeds the limit of {} bytes",
                env.payload.len(),
                limits.max_payload_bytes
            ))));
            continue;
        }
        let ok = match accepted.get(&env.sender_box) {
            Some(ok) => *ok,
            None => {
                let ok = accepts(&read, recipient, &profile, env.sender_box)?;
                accepted.insert(env.sender_box, ok);
                ok
            }
        };
        if !ok {
            outcomes.push(Err(Error::RecipientUnavailable));
            continue;
        }
        if let Some(seq) = in_batch.get(&(env.sender_device, env.message_id)) {
            outcomes.push(Ok(Enqueued {
                seq: *seq,
                duplicate: true,
            }));
            continue;
        }
        // Read before this loop wrote anything: a dedup key written earlier in the
        // loop belongs to an envelope with the same id, answered by `in_batch` above.
        let dedup_key = Key::Dedup(recipient, env.sender_device, env.message_id);
        if let Some(dedup) = read.record::<DedupRecord>(&dedup_key)?
            && dedup.expires_at_ms > now_ms
        {
            outcomes.push(Ok(Enqueued {
                seq: dedup.seq,
                duplicate: true,
            }));
            continue;
        }
        if env.device_list_version != ANY_DEVICE_LIST
            && env.device_list_version != head.device_list_version
        {
            let devices = match &stale_devices {
                Some(d) => d.clone(),
                None => {
                    let (_, list) = super::devices::recipients(txn, recipient).await?;
                    let ids: Vec<DeviceId> = list.into_iter().map(|(d, _)| d).collect();
                    stale_devices = Some(ids.clone());
                    ids
                }
            };
            outcomes.push(Err(Error::StaleDeviceList {
                box_id: recipient,
                version: head.device_list_version,
                devices,
            }));
            continue;
        }
        let handle = match &mut handle {
            Some(handle) => handle,
            None => handle.insert(txn.write_next(recipient, &profile, &head).await?),
        };
        let seq = head.assign()?;
        let expires_at_ms = now_ms.saturating_add(limits.retention_ms);
        let stored = StoredEnvelope {
            sender_box: env.sender_box.as_bytes().to_vec(),
            sender_device: env.sender_device.as_bytes().to_vec(),
            message_id: env.message_id.as_bytes().to_vec(),
            enqueued_at_ms: now_ms,
            expires_at_ms,
            // The list the envelope was accepted against.
            device_list_version: head.device_list_version,
            payload: env.payload.clone(),
        };
        txn.put(handle, &Key::Queue(recipient, seq), &stored)
            .await?;
        let dedup_expires = now_ms.saturating_add(limits.dedup_window_ms);
        let dedup = DedupRecord {
            seq,
            expires_at_ms: dedup_expires,
        };
        txn.put(handle, &dedup_key, &dedup).await?;
        let marker = Marker { at_ms: now_ms };
        txn.put(
            handle,
            &expiry_key(recipient, expires_at_ms, ExpiryEntry::Message(seq)),
            &marker,
        )
        .await?;
        let dedup_entry = ExpiryEntry::Dedup(env.sender_device, env.message_id);
        txn.put(
            handle,
            &expiry_key(recipient, dedup_expires, dedup_entry),
            &marker,
        )
        .await?;
        in_batch.insert((env.sender_device, env.message_id), seq);
        outcomes.push(Ok(Enqueued {
            seq,
            duplicate: false,
        }));
    }
    if let Some(handle) = &handle {
        txn.put(handle, &Key::Next(recipient), &head).await?;
    }
    Ok(outcomes)
}

fn expiry_key(box_id: BoxId, expires_at_ms: u64, entry: ExpiryEntry) -> Key {
    Key::Expiry {
        shard: expiry_shard(box_id),
        expires_at_ms,
        box_id,
        entry,
    }
}

/// Returns the envelopes after the device's pointer, bounded by `bounds`, and
/// reports a gap if envelopes it never acknowledged have expired. Read-only.
pub async fn fetch(
    txn: &mut Tx<'_>,
    box_id: BoxId,
    device_id: DeviceId,
    bounds: FetchLimits,
) -> Result<Fetched> {
    let pointer: Pointer = txn
        .get(&Key::Pointer(box_id, device_id))
        .await?
        .ok_or(Error::DeviceNotFound)?;
    let head = head(txn, box_id).await?.ok_or(Error::BoxNotFound)?;
    let low = low(txn, box_id).await?;
    let last_seq = head.last_seq()?;
    // A pointer can never pass the last sequence number; one that does is corrupt.
    if pointer.acked > last_seq {
        return Err(Error::corrupt(
            "pointer",
            "acknowledged beyond the last sequence number",
        ));
    }
    let first_wanted = pointer.acked + 1;
    let gap = (first_wanted < low).then(|| Gap {
        from: first_wanted,
        to: low - 1,
    });
    let from = first_wanted.max(low);
    let mut out = Fetched {
        envelopes: Vec::new(),
        gap,
        last_seq,
        acked: pointer.acked,
    };
    if bounds.max_count == 0 || from > last_seq {
        return Ok(out);
    }
    let entries = txn
        .scan(
            &Key::queue_range(box_id, from, head.next_seq),
            bounds.max_count,
            ScanOrder::Forward,
        )
        .await?;
    let mut bytes = 0usize;
    for (raw, value) in entries {
        let Key::Queue(_, seq) = decode_key(&raw)? else {
            return Err(Error::corrupt("envelope", "unexpected key in queue range"));
        };
        let envelope = StoredEnvelope::from_stored(&value)?;
        bytes += envelope.payload.len();
        if !out.envelopes.is_empty() && bytes > bounds.max_bytes {
            break;
        }
        out.envelopes.push(Delivered { seq, envelope });
    }
    Ok(out)
}

/// What an acknowledgement did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Acked {
    /// The device's pointer after the ack.
    pub acked: u64,
    /// Envelopes deleted because every device has now acknowledged them.
    pub deleted: u64,
}

/// Advances a device's pointer to `upto` (monotonic: acknowledging at or below the
/// pointer changes nothing), then deletes envelopes every device acknowledged.
/// Acknowledging a sequence number never assigned fails with
/// [`Error::AckBeyondLast`]. Under the box's `low` guard, which every
/// acknowledgement, expiry and purge step writes.
pub async fn ack(
    txn: &mut Tx<'_>,
    limits: &Limits,
    box_id: BoxId,
    device_id: DeviceId,
    upto: u64,
    now_ms: u64,
) -> Result<Acked> {
    let pointer_key = Key::Pointer(box_id, device_id);
    let mut pointer: Pointer = txn.get(&pointer_key).await?.ok_or(Error::DeviceNotFound)?;
    if upto <= pointer.acked {
        return Ok(Acked {
            acked: pointer.acked,
            deleted: 0,
        });
    }
    // Validate without reading `next` on the success path: an envelope at `upto`
    // exists, or `upto` lies below `low` (already deleted, so it was assigned).
    let (handle, low) = txn.lock_low(box_id).await?;
    if upto >= low && txn.get_raw(&Key::Queue(box_id, upto)).await?.is_none() {
        let last = match head(txn, box_id).await? {
            Some(h) => h.last_seq()?,
            None => 0,
        };
        if upto > last {
            return Err(Error::AckBeyondLast {
                requested: upto,
                last,
            });
        }
    }
    pointer.acked = upto;
    pointer.last_seen_ms = now_ms;
    txn.put(&handle, &pointer_key, &pointer).await?;
    let deleted = collect_acknowledged(txn, &handle, limits.max_deletes_per_txn).await?;
    Ok(Acked {
        acked: upto,
        deleted,
    })
}

/// Deletes envelopes every device of the box has acknowledged (at most
/// `max_deletes`) and raises `low` past them. Returns how many were deleted.
pub(crate) async fn collect_acknowledged(
    txn: &mut Tx<'_>,
    handle: &BoxHandle,
    max_deletes: usize,
) -> Result<u64> {
    let pointers = super::devices::pointers(txn, handle.box_id()).await?;
    // With no devices left, envelopes stay until they expire: the sweeper deletes them.
    let min_acked = pointers.iter().map(|(_, p)| p.acked).min().unwrap_or(0);
    delete_through(txn, handle, min_acked, max_deletes).await
}

/// Deletes stored envelopes with sequence numbers up to `through` (at most
/// `max_deletes`, lowest first) and raises `low` accordingly.
async fn delete_through(
    txn: &mut Tx<'_>,
    handle: &BoxHandle,
    through: u64,
    max_deletes: usize,
) -> Result<u64> {
    let box_id = handle.box_id();
    let low = low(txn, box_id).await?;
    if through < low {
        // Written even when unchanged: every transaction that decides what to
        // delete from the pointers (acks of different devices, device removal,
        // expiry) writes `low`, so under snapshot isolation two of them conflict
        // instead of each deciding from the other's stale pointer (write skew that
        // would leave envelopes every device acknowledged).
        txn.put(handle, &Key::Low(box_id), &LowWater { low })
            .await?;
        return Ok(0);
    }
    let range: KeyRange = Key::queue_range(box_id, low, through.saturating_add(1));
    let entries = txn
        .scan(&range, max_deletes.max(1), ScanOrder::Forward)
        .await?;
    let complete = entries.len() < max_deletes.max(1);
    let mut new_low = through.saturating_add(1);
    let mut deleted = 0;
    for (raw, _) in entries {
        if let Key::Queue(_, seq) = decode_key(&raw)? {
            new_low = seq.saturating_add(1);
        }
        txn.delete_scanned(handle, raw).await?;
        deleted += 1;
    }
    if complete {
        new_low = through.saturating_add(1);
    }
    txn.put(
        handle,
        &Key::Low(box_id),
        &LowWater {
            low: new_low.max(low),
        },
    )
    .await?;
    Ok(deleted)
}

/// What one sweep did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    /// Expiry index entries processed.
    pub entries: u64,
    /// Envelopes deleted.
    pub envelopes: u64,
    /// Dedup records deleted.
    pub dedups: u64,
}

/// Due expiry entries of one shard of a region, oldest first.
pub async fn due(
    txn: &mut Tx<'_>,
    region: RegionId,
    shard: u8,
    now_ms: u64,
    limit: usize,
) -> Result<Vec<(BoxId, u64, ExpiryEntry)>> {
    let entries = txn
        .scan(
            &Key::expiry_due(region, shard, now_ms),
            limit,
            ScanOrder::Forward,
        )
        .await?;
    entries
        .iter()
        .map(|(raw, _)| match decode_key(raw)? {
            Key::Expiry {
                box_id,
                expires_at_ms,
                entry,
                ..
            } => Ok((box_id, expires_at_ms, entry)),
            _ => Err(Error::corrupt(
                "expiry entry",
                "unexpected key in expiry range",
            )),
        })
        .collect()
}

/// Processes expiry entries of one box that are due: deletes expired envelopes
/// (and every older one still stored, so `low` stays a single boundary) and
/// expired dedup records, and removes the index entries.
pub async fn expire(
    txn: &mut Tx<'_>,
    limits: &Limits,
    box_id: BoxId,
    entries: &[(u64, ExpiryEntry)],
) -> Result<Swept> {
    let mut swept = Swept::default();
    // A deleted (or purged) box keeps its index entries until they fall due:
    // they are removed, and nothing is written into the box's range, which the
    // purge empties. (The `low` guard is locked either way, and purge steps
    // write `low`, so an expiry that read the box alive before its deletion
    // conflicts with them instead of writing `low` back into the purged range.)
    let handle = match txn.lock_low(box_id).await {
        Ok((handle, _)) => handle,
        Err(Error::BoxNotFound) => {
            for &(expires_at_ms, entry) in entries {
                txn.delete_expiry_entry(&expiry_key(box_id, expires_at_ms, entry))
                    .await?;
                swept.entries += 1;
            }
            return Ok(swept);
        }
        Err(err) => return Err(err),
    };
    let mut messages = Vec::new();
    for &(expires_at_ms, entry) in entries {
        match entry {
            ExpiryEntry::Message(seq) => messages.push((expires_at_ms, seq)),
            ExpiryEntry::Dedup(device, message) => {
                txn.delete(&handle, &expiry_key(box_id, expires_at_ms, entry))
                    .await?;
                swept.entries += 1;
                let key = Key::Dedup(box_id, device, message);
                // A dedup record re-created by a later send has a later expiry.
                if let Some(d) = txn.get::<DedupRecord>(&key).await?
                    && d.expires_at_ms <= expires_at_ms
                {
                    txn.delete(&handle, &key).await?;
                    swept.dedups += 1;
                }
            }
        }
    }
    if let Some(through) = messages.iter().map(|(_, seq)| *seq).max() {
        swept.envelopes = delete_through(txn, &handle, through, limits.max_deletes_per_txn).await?;
        // Entries whose envelope is still stored (the delete limit was reached)
        // stay in the index and are due again at the next sweep.
        let low = low(txn, box_id).await?;
        for (expires_at_ms, seq) in messages {
            if seq < low {
                txn.delete(
                    &handle,
                    &expiry_key(box_id, expires_at_ms, ExpiryEntry::Message(seq)),
                )
                .await?;
                swept.entries += 1;
            }
        }
    }
    Ok(swept)
}
