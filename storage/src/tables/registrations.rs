//! Pending registrations and the transactions that complete them.
//!
//! A registration starts with a verification code sent out of band. Until the code
//! comes back, a [`PendingRegistration`] is stored under the identifier's
//! registration key (`LookupDigest::registration_key`, current pepper): the keyed
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

use super::records::PendingRegistration;
use super::tx::{SharedKey, Tx};
use crate::error::{Error, Result};
use rossby_keyspace::LookupDigest;

/// The pending registration of the identifier with this digest, if any (expired
/// ones included: the caller decides what expiry means).
pub async fn pending(
    txn: &mut Tx<'_>,
    digest: &LookupDigest,
) -> Result<Option<PendingRegistration>> {
    txn.get(&digest.registration_key()).await
}

/// Stores (or replaces) the pending registration of an identifier.
pub async fn store_pending(
    txn: &mut Tx<'_>,
    digest: &LookupDigest,
    record: &PendingRegistration,
) -> Result<()> {
    txn.put_shared(SharedKey::registration(digest), record)
        .await
}

/// Deletes the pending registration of an identifier (a no-op if there is none).
pub async fn remove_pending(txn: &mut Tx<'_>, digest: &LookupDigest) -> Result<()> {
    txn.delete_shared(SharedKey::registration(digest)).await
}

/// Counts one wrong code against the pending registration and returns the new
/// count of wrong attempts. Fails with [`Error::Invalid`] if nothing is pending.
pub async fn record_wrong_attempt(txn: &mut Tx<'_>, digest: &LookupDigest) -> Result<u32> {
    let mut record = pending(txn, digest)
        .await?
        .ok_or_else(|| Error::Invalid("no registration is pending".into()))?;
    record.attempts = record.attempts.saturating_add(1);
    store_pending(txn, digest, &record).await?;
    Ok(record.attempts)
}
