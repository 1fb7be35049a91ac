//! Attachments: CreateUpload, UploadPart, UploadStatus, CompleteUpload and
//! DownloadPart, and the extension of referenced blobs on a send.
//!
//! A blob id is 32 bytes: the uploading box's id followed by 16 random bytes
//! naming the blob in that box, so any gateway finds the blob's record under
//! its box (`rossby_storage::tables::blobs`) without a global index. The id is
//! the capability to download; its random half has 128 bits.
//!
//! Each request carries at most one part, so a request's memory is one part
//! (the frame limit bounds it before the body is read); the QUIC stream limits
//! bound the parts in flight per connection.

mod options;

pub use options::{AttachmentOptions, MIN_PART_BYTES};

use super::{Failure, Shared, decode, now_ms};
use crate::auth::Authenticated;
use bytes::Bytes;
use rossby_keyspace::BoxId;
use rossby_protocol::pb::{self, Status};
use rossby_storage::tables::blobs::{self, BlobLimits};
use rossby_storage::tables::records::{BlobRecord, BlobState};
use rossby_storage::transact;
use std::time::Duration;

/// Bytes a frame needs besides an upload part's data (request envelope, Hawk
/// header, blob id, field tags): `part size + FRAME_OVERHEAD` must fit the
/// frame limit.
pub const FRAME_OVERHEAD: usize = 16 * 1024;

/// Bytes of a blob id on the wire.
pub const BLOB_ID_LEN: usize = 32;

/// Most attachments one Send or GroupSend may reference.
pub const MAX_ATTACHMENTS_PER_SEND: usize = 32;

/// Parts are refused this close to an upload's deadline, and storing one may
/// take at most this long: so no part lands after the sweeper, which waits for
/// the deadline, deleted the upload.
pub const PART_DEADLINE: Duration = Duration::from_secs(30);

/// A blob id split into its box and its name in the box.
fn parse_blob_id(raw: &[u8]) -> Result<(BoxId, [u8; 16]), Failure> {
    if raw.len() != BLOB_ID_LEN {
        return Err(Failure::bad_request(format!(
            "a blob id must have {BLOB_ID_LEN} bytes"
        )));
    }
    let (owner, name) = raw.split_at(16);
    // Any 16 bytes of a well-formed length that do not make a box id name no
    // blob: the same answer as an unknown one.
    let owner = BoxId::try_from_slice(owner).map_err(|_| not_found())?;
    let mut out = [0u8; 16];
    out.copy_from_slice(name);
    Ok((owner, out))
}

fn blob_id(owner: BoxId, name: [u8; 16]) -> Vec<u8> {
    let mut id = Vec::with_capacity(BLOB_ID_LEN);
    id.extend_from_slice(owner.as_bytes());
    id.extend_from_slice(&name);
    id
}

/// The one answer for every blob that cannot be used.
fn not_found() -> Failure {
    Failure::new(
        Status::NotFound,
        "no such attachment (unknown, incomplete or expired)",
    )
}

fn blob_store(shared: &Shared) -> Result<&crate::blobstore::BlobStore, Failure> {
    shared
        .blobs
        .get()
        .ok_or_else(|| Failure::unavailable("attachments are not available on this gateway"))
}

fn store_failure(err: &crate::blobstore::BlobStoreError) -> Failure {
    tracing::warn!(error = %err, "object store call failed");
    Failure::unavailable("the attachment store is unavailable; retry shortly")
}

fn limits(shared: &Shared) -> &BlobLimits {
    &shared.settings.attachments
}

/// Reads the record of an upload of the caller's own box.
async fn own_record(
    shared: &Shared,
    caller: &Authenticated,
    raw_id: &[u8],
) -> Result<([u8; 16], BlobRecord), Failure> {
    let (owner, name) = parse_blob_id(raw_id)?;
    if owner != caller.box_id {
        return Err(not_found());
    }
    let store = &shared.store;
    let record = transact!(store, |txn| blobs::record(txn, owner, name).await)?;
    match record {
        Some(r) if r.state() != BlobState::Deleting && r.expires_at_ms > now_ms() => Ok((name, r)),
        _ => Err(not_found()),
    }
}

/// CreateUpload: reserves the blob's bytes in the caller's quota.
pub(crate) async fn create_upload(
    shared: &Shared,
    caller: &Authenticated,
    body: &[u8],
) -> Result<pb::CreateUploadResponse, Failure> {
    let req: pb::CreateUploadRequest = decode(body, "CreateUploadRequest")?;
    blob_store(shared)?;
    let limits = limits(shared);
    // Refused before any write: a size that could never be stored.
    blobs::check_size(limits, req.size)?;
    let name: [u8; 16] = rand::random();
    let store = &shared.store;
    let now = now_ms();
    let box_id = caller.box_id;
    let record = transact!(store, |txn| blobs::create(
        txn, limits, box_id, name, req.size, now
    )
    .await)?;
    Ok(pb::CreateUploadResponse {
        blob_id: blob_id(box_id, name),
        part_size: record.part_size,
        part_count: record.part_count,
        expires_at_ms: record.expires_at_ms,
    })
}

/// UploadPart: stores one part's object, then its marker.
pub(crate) async fn upload_part(
    shared: &Shared,
    caller: &Authenticated,
    body: &[u8],
) -> Result<pb::UploadPartResponse, Failure> {
    let req: pb::UploadPartRequest = decode(body, "UploadPartRequest")?;
    let objects = blob_store(shared)?;
    let (name, record) = own_record(shared, caller, &req.blob_id).await?;
    let now = now_ms();
    let deadline_ms = u64::try_from(PART_DEADLINE.as_millis()).unwrap_or(u64::MAX);
    if record.state() != BlobState::Uploading
        || record.expires_at_ms.saturating_sub(deadline_ms) <= now
    {
        return Err(not_found());
    }
    let Some(expected) = blobs::part_len(&record, req.index) else {
        return Err(Failure::bad_request(format!(
            "part {} is past the last part ({} parts)",
            req.index, record.part_count
        )));
    };
    if req.data.len() as u64 != expected {
        return Err(Failure::bad_request(format!(
            "part {} must have {expected} bytes, not {}",
            req.index,
            req.data.len()
        )));
    }
    let box_id = caller.box_id;
    let index = req.index;
    let id = req.blob_id;
    let data = Bytes::from(req.data);
    let work = async {
        objects
            .put_part(&id, index, data)
            .await
            .map_err(|e| store_failure(&e))?;
        let store = &shared.store;
        let now = now_ms();
        transact!(store, |txn| blobs::mark_part(txn, box_id, name, index, now)
            .await)?;
        Ok::<_, Failure>(())
    };
    match tokio::time::timeout(PART_DEADLINE, work).await {
        Ok(result) => result?,
        Err(_) => {
            return Err(Failure::unavailable(
                "storing the part took too long; retry it",
            ));
        }
    }
    Ok(pb::UploadPartResponse {})
}

/// UploadStatus: the parts still missing, to resume an upload.
pub(crate) async fn upload_status(
    shared: &Shared,
    caller: &Authenticated,
    body: &[u8],
) -> Result<pb::UploadStatusResponse, Failure> {
    let req: pb::UploadStatusRequest = decode(body, "UploadStatusRequest")?;
    let (name, record) = own_record(shared, caller, &req.blob_id).await?;
    let complete = record.state() == BlobState::Complete;
    let missing = if complete {
        Vec::new()
    } else {
        let store = &shared.store;
        let box_id = caller.box_id;
        transact!(store, |txn| blobs::missing_parts(
            txn, box_id, name, &record
        )
        .await)?
    };
    Ok(pb::UploadStatusResponse {
        size: record.size,
        part_size: record.part_size,
        part_count: record.part_count,
        missing,
        complete,
        expires_at_ms: record.expires_at_ms,
    })
}

/// CompleteUpload: seals a blob whose every part is stored.
pub(crate) async fn complete_upload(
    shared: &Shared,
    caller: &Authenticated,
    body: &[u8],
) -> Result<pb::CompleteUploadResponse, Failure> {
    let req: pb::CompleteUploadRequest = decode(body, "CompleteUploadRequest")?;
    let (owner, name) = parse_blob_id(&req.blob_id)?;
    if owner != caller.box_id {
        return Err(not_found());
    }
    let store = &shared.store;
    let limits = limits(shared);
    let now = now_ms();
    let record = transact!(store, |txn| blobs::complete(txn, limits, owner, name, now)
        .await)?;
    Ok(pb::CompleteUploadResponse {
        expires_at_ms: record.expires_at_ms,
    })
}

/// DownloadPart: one part of a complete blob, to anyone authenticated who
/// knows its id.
pub(crate) async fn download_part(
    shared: &Shared,
    _caller: &Authenticated,
    body: &[u8],
) -> Result<pb::DownloadPartResponse, Failure> {
    let req: pb::DownloadPartRequest = decode(body, "DownloadPartRequest")?;
    let objects = blob_store(shared)?;
    let (owner, name) = parse_blob_id(&req.blob_id)?;
    let store = &shared.store;
    let now = now_ms();
    let record = transact!(store, |txn| blobs::downloadable(txn, owner, name, now)
        .await)?;
    let Some(expected) = blobs::part_len(&record, req.index) else {
        return Err(Failure::bad_request(format!(
            "part {} is past the last part ({} parts)",
            req.index, record.part_count
        )));
    };
    let data = objects
        .get_part(&req.blob_id, req.index)
        .await
        .map_err(|e| store_failure(&e))?
        .ok_or_else(|| {
            tracing::error!(
                part = req.index,
                "a part of a complete attachment is missing from the object store"
            );
            Failure::internal()
        })?;
    if data.len() as u64 != expected {
        tracing::error!(
            part = req.index,
            "a stored attachment part has the wrong size"
        );
        return Err(Failure::internal());
    }
    Ok(pb::DownloadPartResponse {
        data: data.to_vec(),
        size: record.size,
        part_size: record.part_size,
        part_count: record.part_count,
    })
}

/// Keeps the blobs a send references for at least the message retention from
/// now. Refuses the send (changing nothing) when a reference is malformed or
/// names a blob that cannot be used, so a client re-uploads instead of sending
/// a reference nobody could download.
pub(crate) async fn keep_referenced(
    shared: &Shared,
    attachments: &[Vec<u8>],
) -> Result<(), Failure> {
    if attachments.is_empty() {
        return Ok(());
    }
    if attachments.len() > MAX_ATTACHMENTS_PER_SEND {
        return Err(Failure::new(
            Status::TooLarge,
            format!("a message may reference at most {MAX_ATTACHMENTS_PER_SEND} attachments"),
        ));
    }
    let mut ids = Vec::with_capacity(attachments.len());
    for raw in attachments {
        ids.push(parse_blob_id(raw)?);
    }
    ids.sort_unstable();
    ids.dedup();
    let store = &shared.store;
    let now = now_ms();
    let until = now.saturating_add(store.limits.retention_ms);
    let slack = blobs::extension_slack_ms(&store.limits);
    let max_age = limits(shared).max_age_ms;
    transact!(store, |txn| {
        async {
            for (owner, name) in &ids {
                blobs::extend(txn, *owner, *name, now, until, slack, max_age).await?;
            }
            Ok(())
        }
        .await
    })
    .map_err(|err| match err {
        rossby_storage::Error::BlobNotFound => Failure::new(
            Status::NotFound,
            "an attachment the message references is unknown, expired or too old to keep for the retention; upload it again",
        ),
        other => Failure::from(other),
    })
}
