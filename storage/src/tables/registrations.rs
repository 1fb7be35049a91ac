//! Pending registrations and the transactions that complete them.
//!
//! A registration starts with a verification code sent out of band. Until the code
//! comes back, a [`PendingRegistration`] is stored under the identifier's
//! registration key for the asking device (`LookupDigest::registration_key`,
//! current pepper; one per identifier and device, so someone else's Register
//! never replaces the owner's pending one): the keyed
//! hash of the code (never the code), its expiry, the count of wrong attempts, and
//! the device that asked (id, key bundle, label), whether it asked for recovery and
//! the requested home region. The record is global data like the lookup table,
//! because the identifier decides which box is involved only once it is bound.
//!
//! Counting a wrong attempt writes the record, so two concurrent guesses conflict
//! and each one is counted (also under snapshot isolation). Completing a
//! registration deletes the record in the same transaction that creates or
//! recovers the account ([`super::lifecycle::create_account`],
//! [`super::lifecycle::recover_account`]), so a code is
//! accepted at most once.

use super::Record;
use super::records::PendingRegistration;
use super::tx::{SharedKey, Tx};
use crate::error::{Error, Result};
use crate::kv::{KeyRange, ScanOrder};
use rossby_keyspace::{DeviceId, Key, LookupDigest, RegionId};

/// The pending registration of the identifier with this digest, if any (expired
/// ones included: the caller decides what expiry means).
pub async fn pending(
    txn: &mut Tx<'_>,
    digest: &LookupDigest,
    device: DeviceId,
) -> Result<Option<PendingRegistration>> {
    txn.get(&digest.registration_key(device)).await
}

/// Stores (or replaces) `device`'s pending registration of an identifier.
pub async fn store_pending(
    txn: &mut Tx<'_>,
    digest: &LookupDigest,
    device: DeviceId,
    record: &PendingRegistration,
) -> Result<()> {
    txn.put_shared(SharedKey::registration(digest, device), record)
        .await
}

/// Deletes `device`'s pending registration of an identifier (a no-op if there
/// is none).
pub async fn remove_pending(
    txn: &mut Tx<'_>,
    digest: &LookupDigest,
    device: DeviceId,
) -> Result<()> {
    txn.delete_shared(SharedKey::registration(digest, device))
        .await
}

/// Counts one wrong code against `device`'s pending registration and returns
/// the new count of wrong attempts. Fails with [`Error::Invalid`] if nothing is
/// pending.
pub async fn record_wrong_attempt(
    txn: &mut Tx<'_>,
    digest: &LookupDigest,
    device: DeviceId,
) -> Result<u32> {
    let mut record = pending(txn, digest, device)
        .await?
        .ok_or_else(|| Error::Invalid("no registration is pending".into()))?;
    record.attempts = record.attempts.saturating_add(1);
    store_pending(txn, digest, device, &record).await?;
    Ok(record.attempts)
}

/// What one step of [`sweep_expired`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SweptRegistrations {
    /// Expired pending registrations deleted.
    pub deleted: usize,
    /// Where the next step starts; `None` when the range is done.
    pub next: Option<Vec<u8>>,
}

/// Deletes, among at most `batch` pending registrations from `from` (a key, or
/// the start of the range), those whose code expired before `now_ms` and that
/// belong to `region`: the home region they asked for, or any region for
/// records that name none. Each region's maintenance sweeps its own, so the
/// global range is not swept by every region at once. The deletion is decided
/// on what this transaction read, and it writes the key, so a Register or an
/// Authorize of the same identifier racing with it conflicts instead of being
/// lost.
pub async fn sweep_expired(
    txn: &mut Tx<'_>,
    region: RegionId,
    now_ms: u64,
    from: Option<&[u8]>,
    batch: usize,
) -> Result<SweptRegistrations> {
    let all = Key::registration_range();
    let range = match from {
        Some(start) => KeyRange {
            start: start.to_vec(),
            end: all.end.clone(),
        },
        None => all,
    };
    let pairs = txn.scan(&range, batch.max(1), ScanOrder::Forward).await?;
    let next = (pairs.len() >= batch.max(1))
        .then(|| pairs.last().map(|(key, _)| successor(key)))
        .flatten();
    let mut deleted = 0;
    for (key, value) in pairs {
        // A record that does not decode is left alone (reported by nobody, and
        // harmless: Authorize refuses it as corrupt).
        let Ok(record) = PendingRegistration::from_stored(&value) else {
            continue;
        };
        let mine = record.region == 0 || record.region == u32::from(region.0);
        if mine && record.expires_at_ms <= now_ms {
            // By the raw key: records of the earlier layout (one per
            // identifier, without the device) go too.
            txn.delete_scanned_registration(key).await?;
            deleted += 1;
        }
    }
    Ok(SweptRegistrations { deleted, next })
}

/// The smallest key after `key`.
fn successor(key: &[u8]) -> Vec<u8> {
    let mut next = key.to_vec();
    next.push(0);
    next
}
