//! Boxes: creation, profile and settings. Deleting an account spans every table
//! of the box and lives in [`super::lifecycle`].

use super::records::{AcceptFrom, Profile, QueueHead};
use super::tx::{BoxHandle, Tx};
use crate::error::{Error, Result};
use rossby_keyspace::{BoxId, Key};

/// Settings a new box starts with, and that `update_settings` may change.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SettingsUpdate {
    /// Hide the box from identifier lookups.
    pub hidden: Option<bool>,
    /// Who may send messages.
    pub accept_from: Option<AcceptFrom>,
    /// New sealed-sender access key: 16 bytes, or empty to accept sealed-sender
    /// mail only under `sealed_sender_anyone`.
    pub sealed_sender_key: Option<Vec<u8>>,
    /// Accept sealed-sender mail from anyone, without an access key.
    pub sealed_sender_anyone: Option<bool>,
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
        enqueued_bytes: 0,
        devices: Vec::new(),
        devices_known: true,
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
    if let Some(key) = &update.sealed_sender_key {
        if !key.is_empty() && key.len() != super::queue::ACCESS_KEY_LEN {
            return Err(Error::Invalid(format!(
                "a sealed-sender access key has {} bytes (or none), not {}",
                super::queue::ACCESS_KEY_LEN,
                key.len()
            )));
        }
        profile.sealed_sender_key.clone_from(key);
    }
    if let Some(anyone) = update.sealed_sender_anyone {
        profile.sealed_sender_anyone = anyone;
    }
    profile.updated_at_ms = now_ms;
    txn.put(&handle, &Key::Profile(box_id), &profile).await?;
    Ok(profile)
}
