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
//! Expiry: each enqueue transaction that stores envelopes files one entry in its
//! region's expiry index (sharded by box): [`ExpiryEntry::Batch`] with the
//! batch's last sequence number, under the earlier of the envelopes' expiry and
//! the dedup window's end, listing the batch's dedup records in its value. Every
//! envelope of a batch shares one expiry time, and expiring an envelope deletes
//! every older one, so one entry per batch covers its envelopes exactly. The
//! sweeper ([`expire`]) deletes the part that is due and files the rest again
//! under its own time (the envelopes as a plain [`ExpiryEntry::Message`], unless
//! acknowledgements deleted them already), so an
//! envelope is deleted when its retention ends and a dedup record when its
//! window does, as when each had its own entry. Entries of the older layout (one
//! message and one dedup entry per envelope) are still swept. A device whose
//! pointer falls below `low` is told about the gap on its next fetch.

use super::records::{
    AcceptFrom, DedupRecord, EnvelopeRef, ExpiryBatch, LowWater, Marker, Pointer, Profile,
    QueueHead, StoredEnvelope,
};
use super::tx::{BatchRead, BoxHandle, Tx};
use super::{Limits, Record, decode_key};
use crate::error::{Error, Result};
use crate::kv::{KeyRange, ScanOrder};
use rossby_keyspace::keys::expiry_shard;
use rossby_keyspace::{BoxId, DeviceId, ExpiryEntry, Key, MessageId, RegionId};
use std::collections::BTreeMap;

pub use super::records::ANY_DEVICE_LIST;

/// Length of a sealed-sender access key.
pub const ACCESS_KEY_LEN: usize = 16;

/// Length of a device's Ed25519 identity key.
pub const IDENTITY_KEY_LEN: usize = 32;

/// Who sent an envelope, as far as the gateway knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Sender {
    /// An authenticated device. The recipient's block list and contacts-only
    /// setting apply, and retries are recognised per (device, message id).
    Device {
        /// The sending box.
        box_id: BoxId,
        /// The sending device (the dedup scope).
        device_id: DeviceId,
        /// The device's Ed25519 identity key as its record held it when the
        /// request was authenticated: stored with the envelope so recipients
        /// can verify it even once the sender cannot be looked up (`None`:
        /// not recorded, as in group fan-outs filed before it was kept).
        identity_key: Option<[u8; IDENTITY_KEY_LEN]>,
    },
    /// Sealed sender: nobody the gateway can name. Accepted only when the
    /// recipient takes sealed-sender mail from anyone or `access_key` is the
    /// one it set (compared in constant time); nothing about the sender is
    /// stored, and retries are recognised per message id in the box.
    Sealed {
        /// The key the sender derived from the recipient's access secret.
        access_key: [u8; ACCESS_KEY_LEN],
    },
}

impl Sender {
    /// The sending box, when known.
    pub fn box_id(&self) -> Option<BoxId> {
        match self {
            Sender::Device { box_id, .. } => Some(*box_id),
            Sender::Sealed { .. } => None,
        }
    }

    /// The scope of retry recognition: the device, or
    /// [`DeviceId::UNIDENTIFIED`] for sealed senders.
    pub fn dedup_device(&self) -> DeviceId {
        match self {
            Sender::Device { device_id, .. } => *device_id,
            Sender::Sealed { .. } => DeviceId::UNIDENTIFIED,
        }
    }
}

/// One envelope to enqueue into a recipient box.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewEnvelope {
    /// Who sent it.
    pub sender: Sender,
    /// Client-chosen id; a retry with the same id is not enqueued again.
    pub message_id: MessageId,
    /// The recipient's device-list version the sender encrypted for, or
    /// [`ANY_DEVICE_LIST`] for an envelope that is not sealed per device.
    pub device_list_version: u64,
    /// The ciphertext.
    pub payload: Vec<u8>,
    /// The devices the envelope's key wraps are for, as the gateway read them
    /// from it: checked against the recipient's current list (its authorized
    /// devices, less the sending device in its own box). `None`: not checked
    /// (group envelopes, which are not sealed per device).
    pub wrapped_for: Option<Vec<DeviceId>>,
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

/// The box's low-water record (`low` at least 1; a box without one has
/// deleted nothing yet).
pub(crate) async fn low_water(txn: &mut Tx<'_>, box_id: BoxId) -> Result<LowWater> {
    let mut record = txn
        .get::<LowWater>(&Key::Low(box_id))
        .await?
        .unwrap_or_default();
    record.low = record.low.max(1);
    Ok(record)
}

/// Whether `recipient` accepts messages from `sender`: for a device, judged
/// from the block and contact entries in `read` (own boxes always do); for a
/// sealed sender, from the profile's sealed-sender setting.
fn accepts(read: &BatchRead, recipient: BoxId, profile: &Profile, sender: &Sender) -> Result<bool> {
    let sender_box = match sender {
        Sender::Device { box_id, .. } => *box_id,
        Sender::Sealed { access_key } => return Ok(accepts_sealed(profile, access_key)),
    };
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

/// Whether a box takes sealed-sender mail with `access_key`: from anyone when it
/// said so, otherwise only with the key it set (none set: from nobody).
pub fn accepts_sealed(profile: &Profile, access_key: &[u8; ACCESS_KEY_LEN]) -> bool {
    use subtle::ConstantTimeEq;
    if profile.sealed_sender_anyone {
        return true;
    }
    profile.sealed_sender_key.len() == ACCESS_KEY_LEN
        && bool::from(profile.sealed_sender_key.as_slice().ct_eq(access_key))
}

/// Enqueues envelopes into one recipient box in one transaction (a gateway
/// coalesces concurrent sends to a box into one call). Each envelope gets its own
/// outcome: a sequence number (new or from the dedup record), or
/// [`Error::StaleDeviceList`], [`Error::RecipientUnavailable`] or
/// [`Error::Invalid`]. Envelopes that succeed are written even when others fail.
/// The transaction-level `Err` is only for storage failures and conflicts.
///
/// In a multi-region deployment every sequential read is a round trip to the
/// leader of the key's data, so everything the outcomes depend on (profile,
/// `next`, the block and contact entries of each sender, the dedup record of
/// each envelope) is read with one `batch_get`; only a stale device list costs a
/// further read (of the devices). The box's guard is taken by writing `next`
/// once, with the final head.
///
/// Writes per stored envelope: the envelope and its dedup record. Per
/// transaction: `next` and one expiry index entry ([`ExpiryEntry::Batch`]) that
/// covers every envelope and dedup record it stored.
pub async fn enqueue(
    txn: &mut Tx<'_>,
    limits: &Limits,
    recipient: BoxId,
    envelopes: &[NewEnvelope],
    now_ms: u64,
) -> Result<Vec<Result<Enqueued>>> {
    let mut keys = Vec::with_capacity(3 + 3 * envelopes.len());
    keys.extend([
        Key::Profile(recipient),
        Key::Next(recipient),
        Key::Low(recipient),
    ]);
    for env in envelopes {
        if let Some(sender_box) = env.sender.box_id()
            && sender_box != recipient
        {
            keys.push(Key::Block(recipient, sender_box));
            // Only consulted when the box accepts contacts only; reading it
            // anyway costs nothing extra in a batch.
            keys.push(Key::Contact(recipient, sender_box));
        }
        keys.push(Key::Dedup(
            recipient,
            env.sender.dedup_device(),
            env.message_id,
        ));
    }
    let read = txn.read_batch(keys).await?;
    // A tombstoned profile is a box being deleted: as absent as an unknown one.
    let Some(live) = read.live_box(recipient)? else {
        return Ok(envelopes
            .iter()
            .map(|_| Err(Error::RecipientUnavailable))
            .collect());
    };
    let mut head = live.head.clone();
    // What the queue holds now. `low` is only read: a deletion that commits
    // meanwhile makes this an overestimate, never an underestimate, and every
    // enqueue writes `next`, so two of them cannot both fill the last room.
    let water = read
        .record::<LowWater>(&Key::Low(recipient))?
        .unwrap_or_default();
    let mut queued_envelopes = head.next_seq.saturating_sub(water.low.max(1));
    let mut queued_bytes = head.enqueued_bytes.saturating_sub(water.deleted_bytes);
    let expires_at_ms = now_ms.saturating_add(limits.retention_ms);
    let mut outcomes = Vec::with_capacity(envelopes.len());
    let mut accepted: BTreeMap<Sender, bool> = BTreeMap::new();
    let mut in_batch: BTreeMap<(DeviceId, MessageId), u64> = BTreeMap::new();
    let mut stale_devices: Option<Vec<DeviceId>> = None;
    // Decided first, written after: `next` is then written once, with its
    // final value.
    let mut fresh: Vec<(u64, &NewEnvelope)> = Vec::new();
    for env in envelopes {
        if env.payload.len() > limits.max_payload_bytes {
            outcomes.push(Err(Error::Invalid(format!(
                "payload of {} bytes exceeds the limit of {} bytes",
                env.payload.len(),
                limits.max_payload_bytes
            ))));
            continue;
        }
        let ok = match accepted.get(&env.sender) {
            Some(ok) => *ok,
            None => {
                let ok = accepts(&read, recipient, &live.profile, &env.sender)?;
                accepted.insert(env.sender, ok);
                ok
            }
        };
        let dedup_device = env.sender.dedup_device();
        if !ok {
            outcomes.push(Err(Error::RecipientUnavailable));
            continue;
        }
        if let Some(seq) = in_batch.get(&(dedup_device, env.message_id)) {
            outcomes.push(Ok(Enqueued {
                seq: *seq,
                duplicate: true,
            }));
            continue;
        }
        let dedup_key = Key::Dedup(recipient, dedup_device, env.message_id);
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
        if let Some(mismatch) = wraps_mismatch(env, recipient, &head) {
            outcomes.push(Err(mismatch));
            continue;
        }
        // A corrupt or exhausted head is reported as such, before any quota.
        head.next_assignable()?;
        let stored_len =
            stored_record(env, now_ms, expires_at_ms, head.device_list_version).stored_len() as u64;
        if queued_envelopes.saturating_add(1) > limits.max_queue_envelopes
            || queued_bytes.saturating_add(stored_len) > limits.max_queue_bytes
        {
            outcomes.push(Err(Error::QuotaExceeded(format!(
                "the recipient's queue is full (at most {} envelopes and {} bytes)",
                limits.max_queue_envelopes, limits.max_queue_bytes
            ))));
            continue;
        }
        queued_envelopes += 1;
        queued_bytes = queued_bytes.saturating_add(stored_len);
        head.enqueued_bytes = head.enqueued_bytes.saturating_add(stored_len);
        let seq = head.assign()?;
        in_batch.insert((dedup_device, env.message_id), seq);
        fresh.push((seq, env));
        outcomes.push(Ok(Enqueued {
            seq,
            duplicate: false,
        }));
    }
    let Some(&(last_seq, _)) = fresh.last() else {
        return Ok(outcomes);
    };
    let handle = txn.write_next(&live, &head).await?;
    let dedup_expires = now_ms.saturating_add(limits.dedup_window_ms);
    let mut expiry = ExpiryBatch {
        messages_expire_at_ms: expires_at_ms,
        dedup_expire_at_ms: dedup_expires,
        dedups: Vec::with_capacity(32 * fresh.len()),
    };
    for (seq, env) in fresh {
        let dedup_device = env.sender.dedup_device();
        // Against the list the envelope was accepted against.
        let stored = stored_record(env, now_ms, expires_at_ms, head.device_list_version);
        txn.put(&handle, &Key::Queue(recipient, seq), &stored)
            .await?;
        let dedup = DedupRecord {
            seq,
            expires_at_ms: dedup_expires,
        };
        txn.put(
            &handle,
            &Key::Dedup(recipient, dedup_device, env.message_id),
            &dedup,
        )
        .await?;
        expiry.push_dedup(dedup_device, env.message_id);
    }
    let due_at = expires_at_ms.min(dedup_expires);
    txn.put(
        &handle,
        &expiry_key(recipient, due_at, ExpiryEntry::Batch(last_seq)),
        &expiry,
    )
    .await?;
    Ok(outcomes)
}

/// The refusal of an envelope whose key wraps are not for exactly the devices
/// of the list it was accepted against: the head's authorized devices, less
/// the sending device in its own box. `None` when they match, or when there is
/// nothing to check (no wraps given, or a head from before it kept devices).
fn wraps_mismatch(env: &NewEnvelope, recipient: BoxId, head: &QueueHead) -> Option<Error> {
    let wrapped = env.wrapped_for.as_ref()?;
    let listed = head.authorized_devices()?;
    let sender_device = match env.sender {
        Sender::Device {
            box_id, device_id, ..
        } if box_id == recipient => Some(device_id),
        _ => None,
    };
    let expected: Vec<DeviceId> = listed
        .iter()
        .filter_map(|d| DeviceId::try_from_slice(d).ok())
        .filter(|d| Some(*d) != sender_device)
        .collect();
    let mut seen = std::collections::BTreeSet::new();
    let unexpected: Vec<DeviceId> = wrapped
        .iter()
        .filter(|d| !expected.contains(d) || !seen.insert(**d))
        .copied()
        .collect();
    let missing: Vec<DeviceId> = expected
        .iter()
        .filter(|d| !wrapped.contains(d))
        .copied()
        .collect();
    (!missing.is_empty() || !unexpected.is_empty()).then_some(Error::KeyWrapsMismatch {
        version: head.device_list_version,
        missing,
        unexpected,
    })
}

/// The record an envelope is stored as. A sealed sender leaves both sender
/// fields empty: the store names nobody.
fn stored_record(
    env: &NewEnvelope,
    now_ms: u64,
    expires_at_ms: u64,
    device_list_version: u64,
) -> EnvelopeRef<'_> {
    let (sender_box, sender_device, sender_identity_key): (&[u8], &[u8], &[u8]) = match &env.sender
    {
        Sender::Device {
            box_id,
            device_id,
            identity_key,
        } => (
            box_id.as_bytes(),
            device_id.as_bytes(),
            identity_key.as_ref().map_or(&[][..], |k| &k[..]),
        ),
        Sender::Sealed { .. } => (&[], &[], &[]),
    };
    EnvelopeRef {
        sender_box,
        sender_device,
        message_id: env.message_id.as_bytes(),
        enqueued_at_ms: now_ms,
        expires_at_ms,
        device_list_version,
        payload: &env.payload,
        sender_identity_key,
    }
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
    let (pointer_key, next_key, low_key) = (
        Key::Pointer(box_id, device_id),
        Key::Next(box_id),
        Key::Low(box_id),
    );
    // One round trip for the three point reads, as in `enqueue`.
    let read = txn.read_batch([pointer_key, next_key, low_key]).await?;
    let pointer: Pointer = read.record(&pointer_key)?.ok_or(Error::DeviceNotFound)?;
    let head: QueueHead = read.record(&next_key)?.ok_or(Error::BoxNotFound)?;
    let low = read
        .record::<LowWater>(&low_key)?
        .map_or(1, |l| l.low.max(1));
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
    Ok(delete_through(txn, handle, min_acked, max_deletes).await?.0)
}

/// Deletes stored envelopes with sequence numbers up to `through` (at most
/// `max_deletes`, lowest first) and raises `low` accordingly. Returns how many
/// were deleted and the new `low`.
async fn delete_through(
    txn: &mut Tx<'_>,
    handle: &BoxHandle,
    through: u64,
    max_deletes: usize,
) -> Result<(u64, u64)> {
    let box_id = handle.box_id();
    let water = low_water(txn, box_id).await?;
    let low = water.low;
    if through < low {
        // Written even when unchanged: every transaction that decides what to
        // delete from the pointers (acks of different devices, device removal,
        // expiry) writes `low`, so under snapshot isolation two of them conflict
        // instead of each deciding from the other's stale pointer (write skew that
        // would leave envelopes every device acknowledged).
        txn.put(handle, &Key::Low(box_id), &water).await?;
        return Ok((0, low));
    }
    let range: KeyRange = Key::queue_range(box_id, low, through.saturating_add(1));
    let entries = txn
        .scan(&range, max_deletes.max(1), ScanOrder::Forward)
        .await?;
    let complete = entries.len() < max_deletes.max(1);
    let mut new_low = through.saturating_add(1);
    let mut deleted = 0;
    let mut deleted_bytes = 0u64;
    for (raw, value) in entries {
        if let Key::Queue(_, seq) = txn.delete_scanned(handle, raw).await? {
            new_low = seq.saturating_add(1);
        }
        deleted += 1;
        deleted_bytes = deleted_bytes.saturating_add(value.len() as u64);
    }
    if complete {
        new_low = through.saturating_add(1);
    }
    let new_low = new_low.max(low);
    let water = LowWater {
        low: new_low,
        deleted_bytes: water.deleted_bytes.saturating_add(deleted_bytes),
    };
    txn.put(handle, &Key::Low(box_id), &water).await?;
    Ok((deleted, new_low))
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

/// Processes due expiry entries of one box (`now_ms` is the sweep's clock,
/// which every entry given fell due before): deletes expired envelopes (and
/// every older one still stored, so `low` stays a single boundary) and expired
/// dedup records, removes the index entries, and files the part of a batch entry
/// that is not due yet again under its own time.
pub async fn expire(
    txn: &mut Tx<'_>,
    limits: &Limits,
    box_id: BoxId,
    entries: &[(u64, ExpiryEntry)],
    now_ms: u64,
) -> Result<Swept> {
    let mut swept = Swept::default();
    // A deleted (or purged) box keeps its index entries until they fall due:
    // they are removed, and nothing is written into the box's range, which the
    // purge empties. (The `low` guard is locked either way, and purge steps
    // write `low`, so an expiry that read the box alive before its deletion
    // conflicts with them instead of writing `low` back into the purged range.)
    let (handle, low) = match txn.lock_low(box_id).await {
        Ok(locked) => locked,
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
    let batch_keys: Vec<Key> = entries
        .iter()
        .filter(|(_, entry)| matches!(entry, ExpiryEntry::Batch(_)))
        .map(|&(at, entry)| expiry_key(box_id, at, entry))
        .collect();
    // Read again in this snapshot: a sweep that ran meanwhile may have handled
    // (and removed) one.
    let batches = if batch_keys.is_empty() {
        None
    } else {
        Some(txn.read_batch(batch_keys).await?)
    };
    // Envelopes due: (sequence number, its expiry time, whether an index entry
    // for it is filed under that time).
    let mut messages: Vec<(u64, u64, bool)> = Vec::new();
    // Dedup records due, with the latest window end they are due at: a record
    // re-created by a later send expires later and stays.
    let mut dedups: BTreeMap<(DeviceId, MessageId), u64> = BTreeMap::new();
    for &(at, entry) in entries {
        let key = expiry_key(box_id, at, entry);
        match entry {
            ExpiryEntry::Message(seq) => messages.push((seq, at, true)),
            ExpiryEntry::Dedup(device, message) => {
                txn.delete(&handle, &key).await?;
                swept.entries += 1;
                let end = dedups.entry((device, message)).or_default();
                *end = (*end).max(at);
            }
            ExpiryEntry::Batch(seq) => {
                let Some(batch) = batches
                    .as_ref()
                    .map(|read| read.record::<ExpiryBatch>(&key))
                    .transpose()?
                    .flatten()
                else {
                    continue;
                };
                txn.delete(&handle, &key).await?;
                swept.entries += 1;
                let mut rest = ExpiryBatch::default();
                let messages_at = batch.messages_expire_at_ms;
                if messages_at == 0 || seq < low {
                    // Handled, or already deleted (every device acknowledged
                    // them): nothing of them is left to expire.
                } else if messages_at < now_ms {
                    messages.push((seq, messages_at, false));
                } else {
                    rest.messages_expire_at_ms = messages_at;
                }
                if batch.dedup_expire_at_ms < now_ms {
                    for reference in batch.dedup_refs()? {
                        let end = dedups.entry(reference).or_default();
                        *end = (*end).max(batch.dedup_expire_at_ms);
                    }
                } else {
                    rest.dedup_expire_at_ms = batch.dedup_expire_at_ms;
                    rest.dedups = batch.dedups;
                }
                refile(txn, &handle, seq, rest, now_ms).await?;
            }
        }
    }
    if !dedups.is_empty() {
        let keys = dedups
            .keys()
            .map(|&(device, message)| Key::Dedup(box_id, device, message));
        let read = txn.read_batch(keys).await?;
        for (&(device, message), &end) in &dedups {
            let key = Key::Dedup(box_id, device, message);
            if let Some(d) = read.record::<DedupRecord>(&key)?
                && d.expires_at_ms <= end
            {
                txn.delete(&handle, &key).await?;
                swept.dedups += 1;
            }
        }
    }
    if let Some(through) = messages.iter().map(|(seq, _, _)| *seq).max() {
        let (deleted, low) =
            delete_through(txn, &handle, through, limits.max_deletes_per_txn).await?;
        swept.envelopes = deleted;
        // Envelopes still stored (the delete limit was reached) keep an index
        // entry, due again at the next sweep.
        for (seq, at, filed) in messages {
            let key = expiry_key(box_id, at, ExpiryEntry::Message(seq));
            match (seq < low, filed) {
                (true, true) => {
                    txn.delete(&handle, &key).await?;
                    swept.entries += 1;
                }
                (false, false) => {
                    txn.put(&handle, &key, &Marker { at_ms: now_ms }).await?;
                }
                _ => {}
            }
        }
    }
    Ok(swept)
}

/// Files what is left of a batch entry under the time it falls due: its
/// envelopes alone as a plain [`ExpiryEntry::Message`] entry, anything with
/// dedup records as a batch entry.
async fn refile(
    txn: &mut Tx<'_>,
    handle: &BoxHandle,
    seq: u64,
    rest: ExpiryBatch,
    now_ms: u64,
) -> Result<()> {
    let box_id = handle.box_id();
    let messages_at = rest.messages_expire_at_ms;
    if rest.dedups.is_empty() {
        if messages_at != 0 {
            let key = expiry_key(box_id, messages_at, ExpiryEntry::Message(seq));
            txn.put(handle, &key, &Marker { at_ms: now_ms }).await?;
        }
        return Ok(());
    }
    let at = match messages_at {
        0 => rest.dedup_expire_at_ms,
        t => t.min(rest.dedup_expire_at_ms),
    };
    txn.put(
        handle,
        &expiry_key(box_id, at, ExpiryEntry::Batch(seq)),
        &rest,
    )
    .await
}
