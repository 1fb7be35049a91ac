//! Attachment blobs: the records of encrypted files a box uploaded, their parts,
//! the box's usage quota and the region's blob expiry index.
//!
//! The ciphertext itself lives in an object store the gateway writes; this
//! module keeps what must be exact across gateways:
//!
//! - `Blob(box, blob)`: a [`BlobRecord`] (size, part layout, state, expiry);
//! - `BlobPart(box, blob, index)`: one marker per stored part, written by the
//!   part's own transaction, so parallel parts never conflict (see
//!   [`Tx::read_uploading_blob`]);
//! - `BlobUsage(box)`: the box's stored bytes and uploads in progress. Creating
//!   an upload and deleting a blob both lock the profile and write this key, so
//!   two creations that would together exceed the quota conflict and the retry
//!   sees the first one's bytes (snapshot isolation needs that common write);
//! - `BlobExpiry { shard, expires_at_ms, box, blob }`: one entry per blob, always
//!   filed under the record's `expires_at_ms` (changing the expiry moves it), so
//!   the sweeper finds due blobs by a range scan per shard.
//!
//! Deleting a blob takes three steps, each safe when several gateways run it at
//! once: [`mark_deleting`] (locks the record; from then on nothing extends it),
//! the gateway deletes its objects, then [`finish_deleting`] removes markers,
//! record and entry and gives the bytes back to the quota.

use super::records::{BlobRecord, BlobState, BlobUsage, Marker, Profile};
use super::tx::Tx;
use super::{Limits, decode_key};
use crate::error::{Error, Result};
use crate::kv::ScanOrder;
use rossby_keyspace::keys::expiry_shard;
use rossby_keyspace::{BoxId, Key, RegionId};

/// Limits of attachments, enforced when an upload is created and when it is
/// completed. The gateway fills them from its configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobLimits {
    /// Largest blob (ciphertext bytes).
    pub max_size: u64,
    /// Most ciphertext bytes one account may store at once (uploads included).
    pub quota_bytes: u64,
    /// Bytes of every part but the last.
    pub part_size: u32,
    /// Most parts one blob may have.
    pub max_parts: u32,
    /// Most uploads one account may have in progress.
    pub max_uploads_in_progress: u32,
    /// Time to complete an upload before it is deleted.
    pub upload_ttl_ms: u64,
    /// How long a completed blob lives when no send references it.
    pub unsent_ttl_ms: u64,
    /// Longest a blob may live after its creation, however often it is sent (0:
    /// no limit). A send that would need it longer is refused, so the client
    /// uploads the file again; an object store that expires objects by age (an
    /// S3 lifecycle rule) needs this below its expiry.
    pub max_age_ms: u64,
}

impl Default for BlobLimits {
    fn default() -> Self {
        BlobLimits {
            max_size: 100 * 1024 * 1024,
            quota_bytes: 1024 * 1024 * 1024,
            part_size: 1024 * 1024,
            max_parts: 1024,
            max_uploads_in_progress: 16,
            upload_ttl_ms: 24 * 3600 * 1000,
            unsent_ttl_ms: 24 * 3600 * 1000,
            max_age_ms: 0,
        }
    }
}

/// The expiry index entry of a blob filed under `expires_at_ms`.
pub fn expiry_key(box_id: BoxId, blob: [u8; 16], expires_at_ms: u64) -> Key {
    Key::BlobExpiry {
        shard: expiry_shard(box_id),
        expires_at_ms,
        box_id,
        blob,
    }
}

/// The box's attachment usage (zero when it never uploaded).
pub async fn usage(txn: &mut Tx<'_>, box_id: BoxId) -> Result<BlobUsage> {
    Ok(txn
        .get::<BlobUsage>(&Key::BlobUsage(box_id))
        .await?
        .unwrap_or_default())
}

/// A blob's record as stored (any state), or `None`.
pub async fn record(txn: &mut Tx<'_>, box_id: BoxId, blob: [u8; 16]) -> Result<Option<BlobRecord>> {
    txn.get::<BlobRecord>(&Key::Blob(box_id, blob)).await
}

/// A blob that may be downloaded at `now_ms`: complete and not expired.
/// [`Error::BlobNotFound`] otherwise (unknown, uploading, expired or being
/// deleted look the same). A deleted box's blobs are gone at once.
pub async fn downloadable(
    txn: &mut Tx<'_>,
    box_id: BoxId,
    blob: [u8; 16],
    now_ms: u64,
) -> Result<BlobRecord> {
    let record = record(txn, box_id, blob)
        .await?
        .filter(|r| r.state() == BlobState::Complete && r.expires_at_ms > now_ms)
        .ok_or(Error::BlobNotFound)?;
    let alive = txn
        .get::<Profile>(&Key::Profile(box_id))
        .await?
        .is_some_and(|p| !p.deleted);
    if !alive {
        return Err(Error::BlobNotFound);
    }
    Ok(record)
}

/// Creates an upload of `size` ciphertext bytes as `blob` in `box_id`:
/// [`Error::TooLarge`] above the size or part limits, [`Error::QuotaExceeded`]
/// when the box's stored bytes or uploads in progress would pass the limits,
/// [`Error::Invalid`] for a size of zero or a blob name in use.
pub async fn create(
    txn: &mut Tx<'_>,
    limits: &BlobLimits,
    box_id: BoxId,
    blob: [u8; 16],
    size: u64,
    now_ms: u64,
) -> Result<BlobRecord> {
    let part_count = check_size(limits, size)?;
    let (handle, _) = txn.lock_profile(box_id).await?;
    if record(txn, box_id, blob).await?.is_some() {
        return Err(Error::Invalid("this blob id is in use".into()));
    }
    let mut usage = usage(txn, box_id).await?;
    if usage.uploads_in_progress >= limits.max_uploads_in_progress {
        return Err(Error::QuotaExceeded(format!(
            "at most {} attachment uploads may be in progress",
            limits.max_uploads_in_progress
        )));
    }
    let stored = usage
        .stored_bytes
        .checked_add(size)
        .filter(|total| *total <= limits.quota_bytes)
        .ok_or_else(|| {
            Error::QuotaExceeded(format!(
                "attachments may take at most {} bytes per account",
                limits.quota_bytes
            ))
        })?;
    usage.stored_bytes = stored;
    usage.uploads_in_progress += 1;
    let expires_at_ms = now_ms.saturating_add(limits.upload_ttl_ms);
    let mut record = BlobRecord {
        size,
        part_size: limits.part_size,
        part_count,
        created_at_ms: now_ms,
        expires_at_ms,
        completed_at_ms: 0,
        ..BlobRecord::default()
    };
    record.set_state(BlobState::Uploading);
    txn.put(&handle, &Key::BlobUsage(box_id), &usage).await?;
    txn.put(&handle, &Key::Blob(box_id, blob), &record).await?;
    txn.put(
        &handle,
        &expiry_key(box_id, blob, expires_at_ms),
        &Marker { at_ms: now_ms },
    )
    .await?;
    Ok(record)
}

/// The number of parts of a blob of `size` bytes, or why it is refused.
pub fn check_size(limits: &BlobLimits, size: u64) -> Result<u32> {
    if size == 0 {
        return Err(Error::Invalid(
            "an attachment has at least one byte of ciphertext".into(),
        ));
    }
    if limits.part_size == 0 {
        return Err(Error::Invalid("the part size is zero".into()));
    }
    if size > limits.max_size {
        return Err(Error::TooLarge(format!(
            "an attachment may have at most {} bytes",
            limits.max_size
        )));
    }
    u32::try_from(size.div_ceil(u64::from(limits.part_size)))
        .ok()
        .filter(|count| *count <= limits.max_parts)
        .ok_or_else(|| {
            Error::TooLarge(format!(
                "an attachment may have at most {} parts of {} bytes",
                limits.max_parts, limits.part_size
            ))
        })
}

/// The byte length part `index` of `record` must have (`None` past the last).
pub fn part_len(record: &BlobRecord, index: u32) -> Option<u64> {
    if index >= record.part_count {
        return None;
    }
    let start = u64::from(index) * u64::from(record.part_size);
    Some((record.size - start.min(record.size)).min(u64::from(record.part_size)))
}

/// Records that part `index` of an uploading blob is stored. Writes only the
/// part's marker (no conflict with the upload's other parts); storing a part
/// again is harmless. [`Error::BlobNotFound`] when the blob is not uploading or
/// its deadline passed, [`Error::Invalid`] for an index past the last part.
pub async fn mark_part(
    txn: &mut Tx<'_>,
    box_id: BoxId,
    blob: [u8; 16],
    index: u32,
    now_ms: u64,
) -> Result<()> {
    let (handle, record) = txn.read_uploading_blob(box_id, blob).await?;
    if record.expires_at_ms <= now_ms {
        return Err(Error::BlobNotFound);
    }
    if index >= record.part_count {
        return Err(Error::Invalid(format!(
            "part {index} is past the last part ({} parts)",
            record.part_count
        )));
    }
    txn.put(
        &handle,
        &Key::BlobPart(box_id, blob, index),
        &Marker { at_ms: now_ms },
    )
    .await
}

/// The part numbers of a blob that have no marker yet, ascending.
pub async fn missing_parts(
    txn: &mut Tx<'_>,
    box_id: BoxId,
    blob: [u8; 16],
    record: &BlobRecord,
) -> Result<Vec<u32>> {
    let limit = usize::try_from(record.part_count)
        .unwrap_or(usize::MAX)
        .saturating_add(1);
    let stored = txn
        .scan(
            &Key::blob_parts_range(box_id, blob),
            limit,
            ScanOrder::Forward,
        )
        .await?;
    let mut present = vec![false; usize::try_from(record.part_count).unwrap_or(0)];
    for (raw, _) in stored {
        if let Key::BlobPart(_, _, index) = decode_key(&raw)?
            && let Some(slot) = usize::try_from(index).ok().and_then(|i| present.get_mut(i))
        {
            *slot = true;
        }
    }
    Ok(present
        .iter()
        .enumerate()
        .filter(|(_, stored)| !**stored)
        .filter_map(|(i, _)| u32::try_from(i).ok())
        .collect())
}

/// Seals an upload whose every part is stored: it becomes downloadable until
/// `now_ms + unsent_ttl_ms` (unless a send extends it). Repeating it on a
/// complete blob returns the record unchanged. [`Error::UploadIncomplete`] with
/// the missing parts, [`Error::BlobNotFound`] for an unknown, expired or
/// deleted upload.
pub async fn complete(
    txn: &mut Tx<'_>,
    limits: &BlobLimits,
    box_id: BoxId,
    blob: [u8; 16],
    now_ms: u64,
) -> Result<BlobRecord> {
    let (handle, _) = txn.lock_profile(box_id).await.map_err(gone_box)?;
    let mut record = record(txn, box_id, blob)
        .await?
        .filter(|r| r.state() != BlobState::Deleting && r.expires_at_ms > now_ms)
        .ok_or(Error::BlobNotFound)?;
    if record.state() == BlobState::Complete {
        return Ok(record);
    }
    let missing = missing_parts(txn, box_id, blob, &record).await?;
    if !missing.is_empty() {
        return Err(Error::UploadIncomplete { missing });
    }
    let mut usage = usage(txn, box_id).await?;
    usage.uploads_in_progress = usage.uploads_in_progress.saturating_sub(1);
    txn.put(&handle, &Key::BlobUsage(box_id), &usage).await?;
    txn.delete(&handle, &expiry_key(box_id, blob, record.expires_at_ms))
        .await?;
    record.set_state(BlobState::Complete);
    record.completed_at_ms = now_ms;
    record.expires_at_ms = now_ms.saturating_add(limits.unsent_ttl_ms);
    txn.put(&handle, &Key::Blob(box_id, blob), &record).await?;
    txn.put(
        &handle,
        &expiry_key(box_id, blob, record.expires_at_ms),
        &Marker { at_ms: now_ms },
    )
    .await?;
    Ok(record)
}

/// Keeps a complete blob at least until `until_ms` (a send referenced it). To
/// spare a write per send, a blob already kept that long is left alone, and an
/// extension adds `slack_ms` beyond `until_ms` (never past the blob's maximum
/// age). [`Error::BlobNotFound`] for a blob that is unknown, not complete,
/// expired, being deleted, of a deleted box, or that would have to live past
/// `max_age_ms` (0: no limit) after its creation.
pub async fn extend(
    txn: &mut Tx<'_>,
    box_id: BoxId,
    blob: [u8; 16],
    now_ms: u64,
    until_ms: u64,
    slack_ms: u64,
    max_age_ms: u64,
) -> Result<()> {
    let current = downloadable(txn, box_id, blob, now_ms).await?;
    if current.expires_at_ms >= until_ms {
        return Ok(());
    }
    let latest = match max_age_ms {
        0 => u64::MAX,
        age => current.created_at_ms.saturating_add(age),
    };
    if until_ms > latest {
        return Err(Error::BlobNotFound);
    }
    let Some((handle, mut record)) = txn.lock_blob(box_id, blob).await? else {
        return Err(Error::BlobNotFound);
    };
    if record.state() != BlobState::Complete || record.expires_at_ms <= now_ms {
        return Err(Error::BlobNotFound);
    }
    txn.delete(&handle, &expiry_key(box_id, blob, record.expires_at_ms))
        .await?;
    record.expires_at_ms = until_ms.saturating_add(slack_ms).min(latest);
    txn.put(&handle, &Key::Blob(box_id, blob), &record).await?;
    txn.put(
        &handle,
        &expiry_key(box_id, blob, record.expires_at_ms),
        &Marker { at_ms: now_ms },
    )
    .await
}

/// A due entry of the blob expiry index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DueBlob {
    /// The box that uploaded it.
    pub box_id: BoxId,
    /// Its name in the box.
    pub blob: [u8; 16],
    /// The time the entry is filed under.
    pub expires_at_ms: u64,
}

/// Up to `limit` entries of one shard of the region's blob expiry index due
/// before `now_ms`, oldest first.
pub async fn due(
    txn: &mut Tx<'_>,
    region: RegionId,
    shard: u8,
    now_ms: u64,
    limit: usize,
) -> Result<Vec<DueBlob>> {
    let entries = txn
        .scan(
            &Key::blob_expiry_due(region, shard, now_ms),
            limit,
            ScanOrder::Forward,
        )
        .await?;
    entries
        .iter()
        .map(|(raw, _)| match decode_key(raw)? {
            Key::BlobExpiry {
                expires_at_ms,
                box_id,
                blob,
                ..
            } => Ok(DueBlob {
                box_id,
                blob,
                expires_at_ms,
            }),
            _ => Err(Error::corrupt(
                "blob expiry entry",
                "unexpected key in the blob expiry range",
            )),
        })
        .collect()
}

/// What the sweeper does with a due entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sweep {
    /// The entry was stale (the blob lives on); it is gone now.
    Kept,
    /// Delete the blob's objects, then call [`finish_deleting`].
    DeleteObjects,
}

/// First step of deleting a due blob: marks its record deleting (so no send
/// extends it any more) unless it was extended meanwhile. A blob whose record
/// is gone (a purged account's, or one another gateway finished) still has its
/// objects deleted, by name.
pub async fn mark_deleting(txn: &mut Tx<'_>, entry: &DueBlob, now_ms: u64) -> Result<Sweep> {
    let Some((handle, mut record)) = txn.lock_blob(entry.box_id, entry.blob).await? else {
        return Ok(Sweep::DeleteObjects);
    };
    if record.state() != BlobState::Deleting && record.expires_at_ms > now_ms {
        if record.expires_at_ms != entry.expires_at_ms {
            txn.delete_expiry_entry(&expiry_key(entry.box_id, entry.blob, entry.expires_at_ms))
                .await?;
        }
        return Ok(Sweep::Kept);
    }
    if record.state() != BlobState::Deleting {
        record.set_state(BlobState::Deleting);
        txn.put(&handle, &Key::Blob(entry.box_id, entry.blob), &record)
            .await?;
    }
    Ok(Sweep::DeleteObjects)
}

/// Last step of deleting a blob whose objects are gone: deletes up to
/// `max_deletes` of its part markers, and once none is left its record and
/// expiry entry, giving its bytes (and its upload slot, if it never completed)
/// back to the box's quota. Returns `true` when the blob is gone completely.
pub async fn finish_deleting(
    txn: &mut Tx<'_>,
    entry: &DueBlob,
    max_deletes: usize,
) -> Result<bool> {
    let entry_key = expiry_key(entry.box_id, entry.blob, entry.expires_at_ms);
    let Some((blob_handle, record)) = txn.lock_blob(entry.box_id, entry.blob).await? else {
        txn.delete_expiry_entry(&entry_key).await?;
        return Ok(true);
    };
    if record.state() != BlobState::Deleting {
        // Not this sweep's to delete (a later record under a reused name cannot
        // exist: names are random; this is a stale entry).
        txn.delete_expiry_entry(&entry_key).await?;
        return Ok(true);
    }
    let markers = txn
        .scan(
            &Key::blob_parts_range(entry.box_id, entry.blob),
            max_deletes.max(1),
            ScanOrder::Forward,
        )
        .await?;
    let more = markers.len() >= max_deletes.max(1);
    for (raw, _) in markers {
        txn.delete_scanned(&blob_handle, raw).await?;
    }
    if more {
        return Ok(false);
    }
    // Give the bytes back when the box is alive; a deleted box's usage goes
    // with its purge.
    let alive = match txn.lock_profile(entry.box_id).await {
        Ok((handle, _)) => Some(handle),
        Err(Error::BoxNotFound) => None,
        Err(err) => return Err(err),
    };
    if let Some(handle) = alive {
        let mut usage = usage(txn, entry.box_id).await?;
        usage.stored_bytes = usage.stored_bytes.saturating_sub(record.size);
        if record.completed_at_ms == 0 {
            usage.uploads_in_progress = usage.uploads_in_progress.saturating_sub(1);
        }
        txn.put(&handle, &Key::BlobUsage(entry.box_id), &usage)
            .await?;
    }
    txn.delete(&blob_handle, &Key::Blob(entry.box_id, entry.blob))
        .await?;
    txn.delete(
        &blob_handle,
        &expiry_key(entry.box_id, entry.blob, record.expires_at_ms),
    )
    .await?;
    txn.delete_expiry_entry(&entry_key).await?;
    Ok(true)
}

/// Part of a purge step of a deleted box: files up to `max_keys` of its blob
/// records for deletion at once (their expiry entries move to time 0) and
/// deletes the records, so the sweeper deletes their objects by name. Returns
/// how many it handled (0: none left).
pub async fn purge_records(
    txn: &mut Tx<'_>,
    handle: &super::BoxHandle,
    max_keys: usize,
) -> Result<usize> {
    let box_id = handle.box_id();
    let records = txn
        .scan(
            &Key::table_range(box_id, rossby_keyspace::keys::Table::Blob),
            max_keys.max(1),
            ScanOrder::Forward,
        )
        .await?;
    let count = records.len();
    for (raw, value) in records {
        let Key::Blob(_, blob) = decode_key(&raw)? else {
            return Err(Error::corrupt(
                "blob record",
                "unexpected key in the blob table",
            ));
        };
        let record = <BlobRecord as super::Record>::from_stored(&value)?;
        txn.delete(handle, &expiry_key(box_id, blob, record.expires_at_ms))
            .await?;
        txn.put(handle, &expiry_key(box_id, blob, 0), &Marker { at_ms: 0 })
            .await?;
        txn.delete(handle, &Key::Blob(box_id, blob)).await?;
    }
    Ok(count)
}

/// A box that is gone makes its blobs unknown; every other error (a conflict
/// above all, which the retry helper needs) passes through.
fn gone_box(err: Error) -> Error {
    match err {
        Error::BoxNotFound => Error::BlobNotFound,
        other => other,
    }
}

/// The part of [`Limits`] the slack of [`extend`] derives from: a sixteenth of
/// the retention, at most an hour, so a blob sent often is rewritten at most
/// about once per slack.
pub fn extension_slack_ms(limits: &Limits) -> u64 {
    (limits.retention_ms / 16).min(3_600_000)
}
