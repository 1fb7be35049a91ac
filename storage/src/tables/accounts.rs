//! Boxes: creation, profile and settings, and account deletion.

use super::records::{AcceptFrom, Marker, Profile, QueueHead};
use super::{Limits, Record, delete, get, put};
use crate::error::{Error, Result};
use crate::kv::{ScanOrder, Transaction};
use rossby_keyspace::{BoxId, Key, RegionId};

/// Settings a new box starts with, and that `update_settings` may change.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SettingsUpdate {
    /// Hide the box from identifier lookups.
    pub hidden: Option<bool>,
    /// Who may send messages.
    pub accept_from: Option<AcceptFrom>,
    /// New encrypted profile content.
    pub encrypted_profile: Option<Vec<u8>>,
}

/// Creates an empty box: discoverable, accepting messages from anyone, no devices.
pub async fn create_box(txn: &mut dyn Transaction, box_id: BoxId, now_ms: u64) -> Result<()> {
    if txn.get(&Key::Next(box_id).encode()).await?.is_some()
        || txn.get(&Key::Profile(box_id).encode()).await?.is_some()
    {
        return Err(Error::BoxExists(box_id));
    }
    let profile = Profile {
        created_at_ms: now_ms,
        updated_at_ms: now_ms,
        ..Profile::default()
    };
    put(txn, &Key::Profile(box_id), &profile).await?;
    let head = QueueHead {
        next_seq: 1,
        device_list_version: 1,
    };
    put(txn, &Key::Next(box_id), &head).await
}

/// The profile of a live box; `None` for unknown boxes and boxes being deleted.
pub async fn profile(txn: &mut dyn Transaction, box_id: BoxId) -> Result<Option<Profile>> {
    Ok(get::<Profile>(txn, &Key::Profile(box_id))
        .await?
        .filter(|p| !p.deleted))
}

/// The profile of a live box, or [`Error::BoxNotFound`].
pub async fn require_profile(txn: &mut dyn Transaction, box_id: BoxId) -> Result<Profile> {
    profile(txn, box_id).await?.ok_or(Error::BoxNotFound)
}

/// The profile of a live box read for update, or [`Error::BoxNotFound`]: for a
/// write into the box that must not outlive a concurrent account deletion. The
/// deletion writes the profile (its tombstone), so under snapshot isolation the
/// two conflict instead of leaving the write behind in a purged box.
pub async fn lock_profile(txn: &mut dyn Transaction, box_id: BoxId) -> Result<Profile> {
    txn.get_for_update(&Key::Profile(box_id).encode())
        .await?
        .map(|bytes| Profile::from_stored(&bytes))
        .transpose()?
        .filter(|p| !p.deleted)
        .ok_or(Error::BoxNotFound)
}

/// Applies the given changes to a box's settings and returns the new profile.
pub async fn update_settings(
    txn: &mut dyn Transaction,
    limits: &Limits,
    box_id: BoxId,
    update: &SettingsUpdate,
    now_ms: u64,
) -> Result<Profile> {
    let mut profile = require_profile(txn, box_id).await?;
    if let Some(hidden) = update.hidden {
        profile.hidden = hidden;
    }
    if let Some(accept) = update.accept_from {
        profile.set_accept_from(accept);
    }
    if let Some(content) = &update.encrypted_profile {
        if content.len() > limits.max_profile_bytes {
            return Err(Error::Invalid(format!(
                "encrypted profile of {} bytes exceeds the limit of {} bytes",
                content.len(),
                limits.max_profile_bytes
            )));
        }
        profile.encrypted_profile.clone_from(content);
    }
    profile.updated_at_ms = now_ms;
    put(txn, &Key::Profile(box_id), &profile).await?;
    Ok(profile)
}

/// Deletes an account: in this one transaction the box becomes invisible (profile
/// tombstoned, identifiers unbound, devices and their credentials gone, no enqueue
/// can commit), and a purge entry records that its remaining keys must be removed.
/// [`purge_step`] then removes the rest in bounded transactions.
pub async fn delete_account(
    txn: &mut dyn Transaction,
    limits: &Limits,
    box_id: BoxId,
    now_ms: u64,
) -> Result<()> {
    let mut profile = require_profile(txn, box_id).await?;
    profile.deleted = true;
    profile.updated_at_ms = now_ms;
    put(txn, &Key::Profile(box_id), &profile).await?;
    // Writing `next` makes every concurrent enqueue into this box conflict.
    let mut head: QueueHead = get(txn, &Key::Next(box_id))
        .await?
        .ok_or(Error::BoxNotFound)?;
    head.bump_device_list()?;
    put(txn, &Key::Next(box_id), &head).await?;
    super::lookup::unbind_all(txn, box_id).await?;
    for (device, _) in super::devices::list(txn, box_id).await? {
        super::devices::remove(txn, limits, box_id, device).await?;
    }
    put(txn, &Key::Purge(box_id), &Marker { at_ms: now_ms }).await
}

/// Removes up to `max_keys` remaining keys of a deleted box (its outbox entries,
/// then its box range). Returns `true` when the box is gone completely (its purge
/// entry is removed in the same transaction).
pub async fn purge_step(txn: &mut dyn Transaction, box_id: BoxId, max_keys: usize) -> Result<bool> {
    if let Some(p) = get::<Profile>(txn, &Key::Profile(box_id)).await?
        && !p.deleted
    {
        return Err(Error::Invalid("box is not deleted".into()));
    }
    // Undelivered fan-out of the box's groups lives in the region's outbox,
    // outside the box range; it goes first, while the tombstone still marks the
    // box deleted (its groups are gone with it, so nothing is left to deliver).
    let outbox = txn
        .scan(
            &Key::box_outbox_range(box_id),
            max_keys.max(1),
            ScanOrder::Forward,
        )
        .await?;
    if !outbox.is_empty() {
        for (key, _) in outbox {
            txn.delete(key).await?;
        }
        return Ok(false);
    }
    // Written by every step (even when already gone), as every expiry writes
    // `low`: an expiry that saw the box alive conflicts with the purge instead of
    // writing `low` back into the emptied range.
    delete(txn, &Key::Low(box_id)).await?;
    let keys = txn
        .scan(&Key::box_range(box_id), max_keys.max(1), ScanOrder::Reverse)
        .await?;
    let done = keys.len() < max_keys.max(1);
    // Reverse order deletes the profile tombstone last, so an interrupted purge
    // still finds the box marked deleted.
    for (key, _) in keys {
        txn.delete(key).await?;
    }
    if done {
        delete(txn, &Key::Purge(box_id)).await?;
    }
    Ok(done)
}

/// Boxes of a region whose purge has not finished (for example after a crash).
pub async fn pending_purges(
    txn: &mut dyn Transaction,
    region: RegionId,
    limit: usize,
) -> Result<Vec<BoxId>> {
    let entries = txn
        .scan(&Key::purge_range(region), limit, ScanOrder::Forward)
        .await?;
    entries
        .iter()
        .map(|(key, _)| match super::decode_key(key)? {
            Key::Purge(b) => Ok(b),
            _ => Err(Error::corrupt(
                "purge entry",
                "unexpected key in purge range",
            )),
        })
        .collect()
}

/// True if any key of the box remains (used by tests and the purge loop).
pub async fn box_has_keys(txn: &mut dyn Transaction, box_id: BoxId) -> Result<bool> {
    Ok(!txn
        .scan(&Key::box_range(box_id), 1, ScanOrder::Forward)
        .await?
        .is_empty())
}
