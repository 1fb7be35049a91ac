//! Boxes: creation, profile and settings, and account deletion.

use super::Limits;
use super::records::{AcceptFrom, LowWater, Marker, Profile, QueueHead};
use super::tx::{BoxHandle, Tx};
use crate::error::{Error, Result};
use crate::kv::ScanOrder;
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
pub async fn create_box(txn: &mut Tx<'_>, box_id: BoxId, now_ms: u64) -> Result<BoxHandle> {
    let profile = Profile {
        created_at_ms: now_ms,
        updated_at_ms: now_ms,
        ..Profile::default()
    };
    let head = QueueHead {
        next_seq: 1,
        device_list_version: 1,
    };
    txn.create_box(box_id, &profile, &head).await
}

/// The profile of a live box; `None` for unknown boxes and boxes being deleted.
pub async fn profile(txn: &mut Tx<'_>, box_id: BoxId) -> Result<Option<Profile>> {
    Ok(txn
        .get::<Profile>(&Key::Profile(box_id))
        .await?
        .filter(|p| !p.deleted))
}

/// The profile of a live box, or [`Error::BoxNotFound`].
pub async fn require_profile(txn: &mut Tx<'_>, box_id: BoxId) -> Result<Profile> {
    profile(txn, box_id).await?.ok_or(Error::BoxNotFound)
}

/// Applies the given changes to a box's settings and returns the new profile.
pub async fn update_settings(
    txn: &mut Tx<'_>,
    limits: &Limits,
    box_id: BoxId,
    update: &SettingsUpdate,
    now_ms: u64,
) -> Result<Profile> {
    let (handle, mut profile) = txn.lock_profile(box_id).await?;
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
    txn.put(&handle, &Key::Profile(box_id), &profile).await?;
    Ok(profile)
}

/// Deletes an account: in this one transaction the box becomes invisible (profile
/// tombstoned, identifiers unbound, devices and their credentials gone), and a
/// purge entry records that its remaining keys must be removed. It writes every
/// guard key of the box (the profile, `next`, `low` and each device record), so
/// no other write into the box can commit concurrently (see [`super::tx`]).
/// [`purge_step`] then removes the rest in bounded transactions.
pub async fn delete_account(
    txn: &mut Tx<'_>,
    limits: &Limits,
    box_id: BoxId,
    now_ms: u64,
) -> Result<()> {
    let (handle, mut profile) = txn.lock_profile(box_id).await?;
    // Removing the devices bumps the device list in `next` and deletes each
    // device record; done while the profile is still live.
    super::lookup::unbind_all(txn, &handle).await?;
    for (device, _) in super::devices::list(txn, box_id).await? {
        super::devices::remove(txn, limits, box_id, device).await?;
    }
    let (_, mut head) = txn.lock_next(box_id).await?;
    head.bump_device_list()?;
    txn.put(&handle, &Key::Next(box_id), &head).await?;
    let (_, low) = txn.lock_low(box_id).await?;
    txn.put(&handle, &Key::Low(box_id), &LowWater { low })
        .await?;
    profile.deleted = true;
    profile.updated_at_ms = now_ms;
    txn.put(&handle, &Key::Profile(box_id), &profile).await?;
    txn.put(&handle, &Key::Purge(box_id), &Marker { at_ms: now_ms })
        .await
}

/// Removes up to `max_keys` remaining keys of a deleted box (its outbox entries,
/// then its box range). Returns `true` when the box is gone completely (its purge
/// entry is removed in the same transaction).
pub async fn purge_step(txn: &mut Tx<'_>, box_id: BoxId, max_keys: usize) -> Result<bool> {
    // Written by every step (even when already gone), as every expiry locks
    // `low`: an expiry that saw the box alive conflicts with the purge instead of
    // writing `low` back into the emptied range.
    let handle = txn.open_for_purge(box_id).await?;
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
            txn.delete_scanned(&handle, key).await?;
        }
        return Ok(false);
    }
    let keys = txn
        .scan(&Key::box_range(box_id), max_keys.max(1), ScanOrder::Reverse)
        .await?;
    let done = keys.len() < max_keys.max(1);
    // Reverse order deletes the profile tombstone last, so an interrupted purge
    // still finds the box marked deleted.
    for (key, _) in keys {
        txn.delete_scanned(&handle, key).await?;
    }
    if done {
        txn.delete(&handle, &Key::Purge(box_id)).await?;
    }
    Ok(done)
}

/// Boxes of a region whose purge has not finished (for example after a crash).
pub async fn pending_purges(
    txn: &mut Tx<'_>,
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
pub async fn box_has_keys(txn: &mut Tx<'_>, box_id: BoxId) -> Result<bool> {
    Ok(!txn
        .scan(&Key::box_range(box_id), 1, ScanOrder::Forward)
        .await?
        .is_empty())
}
