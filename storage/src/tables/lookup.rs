//! The inbox lookup: normalised identifier -> box, keyed by a peppered hash.
//!
//! Each binding is stored twice: the global lookup entry (what discovery reads)
//! and an `ident` entry under the box (so deleting an account can unbind all of its
//! identifiers without knowing them). Both are written in one transaction.

use super::decode_key;
use super::records::{LookupRecord, Marker, Profile};
use super::tx::{BoxHandle, SharedKey, Tx};
use crate::error::{Error, Result};
use crate::kv::ScanOrder;
use rossby_keyspace::{BoxId, Identifier, Key, LookupDigest, LookupHasher, Table};

/// Most identifiers one box may have bound.
pub const MAX_IDENTIFIERS_PER_BOX: usize = 16;

/// Binds `id` to `box_id` under the current pepper. Binding an identifier
/// already bound to the same box is a no-op; bound to another box it fails with
/// [`Error::AlreadyRegistered`]. Two binds of one identifier conflict on its
/// lookup key; the identifier quota holds because binds into one box take its
/// profile guard.
pub async fn bind(
    txn: &mut Tx<'_>,
    hasher: &LookupHasher,
    id: &Identifier,
    box_id: BoxId,
    now_ms: u64,
) -> Result<()> {
    let (handle, _) = txn.lock_profile(box_id).await?;
    let handle = &handle;
    if let Some((digest, owner)) = find(txn, hasher, id).await? {
        if owner != box_id {
            return Err(Error::AlreadyRegistered);
        }
        if digest.version == hasher.current_version() {
            return Ok(());
        }
        unbind_digest(txn, handle, digest).await?;
    }
    let bound = txn
        .scan(
            &Key::table_range(box_id, Table::Ident),
            MAX_IDENTIFIERS_PER_BOX,
            ScanOrder::Forward,
        )
        .await?;
    if bound.len() >= MAX_IDENTIFIERS_PER_BOX {
        return Err(Error::QuotaExceeded(format!(
            "a box may have at most {MAX_IDENTIFIERS_PER_BOX} identifiers"
        )));
    }
    bind_digest(txn, handle, hasher.current(id), now_ms).await
}

async fn bind_digest(
    txn: &mut Tx<'_>,
    handle: &BoxHandle,
    digest: LookupDigest,
    now_ms: u64,
) -> Result<()> {
    let box_id = handle.box_id();
    let record = LookupRecord {
        box_id: box_id.as_bytes().to_vec(),
        bound_at_ms: now_ms,
    };
    txn.put_shared(SharedKey::lookup(&digest), &record).await?;
    txn.put(
        handle,
        &Key::Ident(box_id, digest.version, digest.digest),
        &Marker { at_ms: now_ms },
    )
    .await
}

async fn unbind_digest(txn: &mut Tx<'_>, handle: &BoxHandle, digest: LookupDigest) -> Result<()> {
    txn.delete_shared(SharedKey::lookup(&digest)).await?;
    txn.delete(
        handle,
        &Key::Ident(handle.box_id(), digest.version, digest.digest),
    )
    .await
}

/// Finds the binding of `id` under any known pepper version, current first.
async fn find(
    txn: &mut Tx<'_>,
    hasher: &LookupHasher,
    id: &Identifier,
) -> Result<Option<(LookupDigest, BoxId)>> {
    for digest in hasher.candidates(id) {
        if let Some(record) = txn.get::<LookupRecord>(&digest.key()).await? {
            let owner =
                BoxId::try_from_slice(&record.box_id).map_err(|e| Error::corrupt("lookup", e))?;
            return Ok(Some((digest, owner)));
        }
    }
    Ok(None)
}

/// Resolves `id` to its box. A binding found under an older pepper is rewritten
/// under the current one in this transaction (lazy pepper rotation, under the
/// box's profile guard), so commit the transaction to keep the migration.
pub async fn resolve(
    txn: &mut Tx<'_>,
    hasher: &LookupHasher,
    id: &Identifier,
    now_ms: u64,
) -> Result<Option<BoxId>> {
    let Some((digest, owner)) = find(txn, hasher, id).await? else {
        return Ok(None);
    };
    if digest.version != hasher.current_version() {
        // A box being deleted keeps its old binding until the deletion removes it.
        match txn.lock_profile(owner).await {
            Ok((handle, _)) => {
                unbind_digest(txn, &handle, digest).await?;
                bind_digest(txn, &handle, hasher.current(id), now_ms).await?;
            }
            Err(Error::BoxNotFound) => {}
            Err(err) => return Err(err),
        }
    }
    Ok(Some(owner))
}

/// Resolves `id` for contact discovery by `requester`: a box that is hidden, that
/// blocked the requester, or that is being deleted answers exactly like an unknown
/// identifier (`None`).
pub async fn discover(
    txn: &mut Tx<'_>,
    hasher: &LookupHasher,
    id: &Identifier,
    requester: BoxId,
    now_ms: u64,
) -> Result<Option<BoxId>> {
    let Some(owner) = resolve(txn, hasher, id, now_ms).await? else {
        return Ok(None);
    };
    let visible = match txn.get::<Profile>(&Key::Profile(owner)).await? {
        Some(p) if !p.deleted => {
            owner == requester
                || (!p.hidden && !super::contacts::is_blocked(txn, owner, requester).await?)
        }
        _ => false,
    };
    Ok(visible.then_some(owner))
}

/// Removes the binding of `id` if it belongs to `box_id`; returns whether it did.
pub async fn unbind(
    txn: &mut Tx<'_>,
    hasher: &LookupHasher,
    id: &Identifier,
    box_id: BoxId,
) -> Result<bool> {
    match find(txn, hasher, id).await? {
        Some((digest, owner)) if owner == box_id => {
            let (handle, _) = txn.lock_profile(box_id).await?;
            unbind_digest(txn, &handle, digest).await?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// Removes every identifier bound to the handle's box.
pub async fn unbind_all(txn: &mut Tx<'_>, handle: &BoxHandle) -> Result<usize> {
    let box_id = handle.box_id();
    let entries = txn
        .scan(
            &Key::table_range(box_id, Table::Ident),
            MAX_IDENTIFIERS_PER_BOX * 4,
            ScanOrder::Forward,
        )
        .await?;
    let count = entries.len();
    for (raw, _) in entries {
        if let Key::Ident(_, version, digest) = decode_key(&raw)? {
            unbind_digest(txn, handle, LookupDigest { version, digest }).await?;
        }
    }
    Ok(count)
}
