//! The registration lock: an optional PIN an account must present to be
//! recovered, kept in the box's profile as the PHC string of a slow, salted
//! hash (the gateway makes and checks it; storage never sees the PIN), with a
//! count of wrong PINs and a lockout.
//!
//! Checking a slow hash inside a transaction would hold it open (and repeat the
//! hash on every retry), so a check is split in three steps:
//! [`begin_attempt`] counts the attempt *before* the PIN is checked, under the
//! profile lock, so concurrent guesses conflict and never exceed the limit;
//! the caller then checks the PIN; [`accept`] (in the transaction that
//! completes the recovery) forgives the counted attempt if the lock is still
//! the one that was checked, and [`refuse`] turns an exhausted count into a
//! lockout. A check that never finishes has spent its attempt.

use super::tx::Tx;
use crate::error::Result;
use rossby_keyspace::{BoxId, Key};

/// What a PIN check may go on with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Gate {
    /// The account has no registration lock: recovery needs no PIN.
    Unlocked,
    /// Too many wrong PINs: no PIN is checked for `retry_after_ms`.
    LockedOut {
        /// How long until PINs are checked again.
        retry_after_ms: u64,
    },
    /// The attempt is counted: check the PIN against this hash.
    Check {
        /// The stored PHC string.
        hash: String,
    },
}

/// Whether the account has a registration lock, and the lockout if any (a
/// read: nothing is counted).
pub async fn peek(txn: &mut Tx<'_>, box_id: BoxId, now_ms: u64) -> Result<Gate> {
    let profile = super::accounts::require_profile(txn, box_id).await?;
    Ok(gate_of(&profile, now_ms))
}

fn gate_of(profile: &super::records::Profile, now_ms: u64) -> Gate {
    if profile.registration_lock.is_empty() {
        Gate::Unlocked
    } else if profile.registration_lock_until_ms > now_ms {
        Gate::LockedOut {
            retry_after_ms: profile.registration_lock_until_ms - now_ms,
        }
    } else {
        Gate::Check {
            hash: profile.registration_lock.clone(),
        }
    }
}

/// Counts one PIN attempt against the account, or refuses it once
/// `max_failures` are counted (attempts in flight included): the refusal that
/// finds the count exhausted starts a lockout of `lockout_ms`.
pub async fn begin_attempt(
    txn: &mut Tx<'_>,
    box_id: BoxId,
    max_failures: u32,
    lockout_ms: u64,
    now_ms: u64,
) -> Result<Gate> {
    let (handle, mut profile) = txn.lock_profile(box_id).await?;
    let gate = gate_of(&profile, now_ms);
    if !matches!(gate, Gate::Check { .. }) {
        return Ok(gate);
    }
    if profile.registration_lock_failures >= max_failures {
        profile.registration_lock_failures = 0;
        profile.registration_lock_until_ms = now_ms.saturating_add(lockout_ms);
        txn.put(&handle, &Key::Profile(box_id), &profile).await?;
        return Ok(Gate::LockedOut {
            retry_after_ms: lockout_ms,
        });
    }
    profile.registration_lock_failures += 1;
    txn.put(&handle, &Key::Profile(box_id), &profile).await?;
    Ok(gate)
}

/// After a wrong PIN: starts the lockout when it was the last attempt allowed.
/// Returns whether the account is now locked out.
pub async fn refuse(
    txn: &mut Tx<'_>,
    box_id: BoxId,
    max_failures: u32,
    lockout_ms: u64,
    now_ms: u64,
) -> Result<bool> {
    let (handle, mut profile) = txn.lock_profile(box_id).await?;
    if profile.registration_lock_failures < max_failures {
        return Ok(false);
    }
    profile.registration_lock_failures = 0;
    profile.registration_lock_until_ms = now_ms.saturating_add(lockout_ms);
    txn.put(&handle, &Key::Profile(box_id), &profile).await?;
    Ok(true)
}

/// After a right PIN, in the transaction that uses it: forgives the counted
/// attempts. Returns `false` (writing nothing) when the lock changed since
/// `hash` was checked, so the check does not count.
pub async fn accept(txn: &mut Tx<'_>, box_id: BoxId, hash: &str) -> Result<bool> {
    let (handle, mut profile) = txn.lock_profile(box_id).await?;
    if profile.registration_lock != hash {
        return Ok(false);
    }
    profile.registration_lock_failures = 0;
    profile.registration_lock_until_ms = 0;
    txn.put(&handle, &Key::Profile(box_id), &profile).await?;
    Ok(true)
}

/// Sets (a PHC string) or clears (`None`) the account's registration lock; the
/// count of wrong PINs and any lockout start again.
pub async fn set(txn: &mut Tx<'_>, box_id: BoxId, hash: Option<&str>, now_ms: u64) -> Result<()> {
    let (handle, mut profile) = txn.lock_profile(box_id).await?;
    profile.registration_lock = hash.unwrap_or_default().to_string();
    profile.registration_lock_failures = 0;
    profile.registration_lock_until_ms = 0;
    profile.updated_at_ms = now_ms;
    txn.put(&handle, &Key::Profile(box_id), &profile).await
}
