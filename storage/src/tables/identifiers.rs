//! Identifiers being added to a box: the pending half of AddIdentifier and
//! ConfirmIdentifier.
//!
//! Adding an identifier to an existing box starts, like a registration, with a
//! verification code sent out of band. Until the code comes back, a
//! [`PendingIdentifier`] is stored under the box, keyed by the identifier's lookup
//! digest (current pepper): the keyed hash of the code (never the code), its
//! expiry, the count of wrong attempts and the requested discoverable flag.
//! Unlike a pending registration it is box data, because the box is known.
//!
//! Every write here locks the box's profile, like the bindings in
//! [`super::lookup`], so a box's pending additions are counted exactly
//! ([`super::Limits::max_pending_identifiers_per_box`]) and counting a wrong
//! attempt (which writes the record) conflicts with any concurrent guess, so each
//! guess is counted, also under snapshot isolation. Confirming deletes the record
//! in the transaction that binds the identifier, so a code is accepted at most
//! once. Deleting the account deletes them ([`super::lifecycle::delete_account`]).

use super::Limits;
use super::records::{PendingIdentifier, Record};
use super::tx::{BoxHandle, Tx};
use crate::error::{Error, Result};
use crate::kv::ScanOrder;
use rossby_keyspace::{BoxId, Key, LookupDigest, Table};

/// The highest value [`Limits::max_pending_identifiers_per_box`] may take: scans
/// of a box's pending additions read at most this many entries.
pub const MAX_PENDING_LIMIT: usize = 256;

fn key(box_id: BoxId, digest: &LookupDigest) -> Key {
    Key::PendingIdentifier(box_id, digest.version, digest.digest)
}

/// The pending addition of the identifier with this digest to the box, if any
/// (expired ones included: the caller decides what expiry means).
pub async fn pending(
    txn: &mut Tx<'_>,
    box_id: BoxId,
    digest: &LookupDigest,
) -> Result<Option<PendingIdentifier>> {
    txn.get(&key(box_id, digest)).await
}

/// Stores (or replaces) the pending addition of an identifier to a live box.
/// Expired additions of other identifiers are deleted on the way; more than
/// [`Limits::max_pending_identifiers_per_box`] live ones fail with
/// [`Error::QuotaExceeded`] (replacing one of them is always allowed).
pub async fn store_pending(
    txn: &mut Tx<'_>,
    limits: &Limits,
    box_id: BoxId,
    digest: &LookupDigest,
    record: &PendingIdentifier,
    now_ms: u64,
) -> Result<()> {
    let (handle, _) = txn.lock_profile(box_id).await?;
    let this = key(box_id, digest).encode();
    let entries = txn
        .scan(
            &Key::table_range(box_id, Table::PendingIdentifier),
            MAX_PENDING_LIMIT,
            ScanOrder::Forward,
        )
        .await?;
    let mut live = 0usize;
    for (raw, value) in entries {
        if raw == this {
            continue;
        }
        if PendingIdentifier::from_stored(&value)?.expires_at_ms <= now_ms {
            txn.delete_scanned(&handle, raw).await?;
        } else {
            live += 1;
        }
    }
    let limit = limits
        .max_pending_identifiers_per_box
        .min(MAX_PENDING_LIMIT);
    if live >= limit {
        return Err(Error::QuotaExceeded(format!(
            "a box may be adding at most {limit} identifiers at once"
        )));
    }
    txn.put(&handle, &key(box_id, digest), record).await
}

/// Deletes the pending addition of an identifier (a no-op if there is none).
pub async fn remove_pending(txn: &mut Tx<'_>, box_id: BoxId, digest: &LookupDigest) -> Result<()> {
    let (handle, _) = txn.lock_profile(box_id).await?;
    txn.delete(&handle, &key(box_id, digest)).await
}

/// Counts one wrong code against the pending addition and returns the new count
/// of wrong attempts. Fails with [`Error::Invalid`] if nothing is pending.
pub async fn record_wrong_attempt(
    txn: &mut Tx<'_>,
    box_id: BoxId,
    digest: &LookupDigest,
) -> Result<u32> {
    let (handle, _) = txn.lock_profile(box_id).await?;
    let mut record = pending(txn, box_id, digest)
        .await?
        .ok_or_else(|| Error::Invalid("no identifier addition is pending".into()))?;
    record.attempts = record.attempts.saturating_add(1);
    txn.put(&handle, &key(box_id, digest), &record).await?;
    Ok(record.attempts)
}

/// Deletes every pending addition of the handle's box; returns how many.
pub async fn remove_all_pending(txn: &mut Tx<'_>, handle: &BoxHandle) -> Result<usize> {
    let entries = txn
        .scan(
            &Key::table_range(handle.box_id(), Table::PendingIdentifier),
            MAX_PENDING_LIMIT,
            ScanOrder::Forward,
        )
        .await?;
    let count = entries.len();
    for (raw, _) in entries {
        txn.delete_scanned(handle, raw).await?;
    }
    Ok(count)
}
