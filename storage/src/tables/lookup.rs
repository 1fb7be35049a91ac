//! The inbox lookup: normalised identifier -> box, keyed by a peppered hash.
//!
//! Each binding is stored twice: the global lookup entry (what discovery reads)
//! and an `ident` entry under the box ([`IdentRecord`]: when it was bound, a
//! sealed copy of the identifier and whether it is discoverable), so deleting an
//! account can unbind all of its identifiers without knowing them and the box's
//! owner can list them. Both are written in one transaction.
//!
//! # Sealed copies
//! Identifiers are never stored in clear. The `ident` entry holds the normalised
//! identifier encrypted with ChaCha20-Poly1305 under
//! [`LookupHasher::sealing_key`] of the entry's pepper version (a random 12-byte
//! nonce, then ciphertext and tag), with the box id, pepper version and digest as
//! associated data, so a sealed copy cannot be moved to another box or entry.
//! Entries written before sealed copies existed have none; they are listed
//! without the identifier ([`BoundIdentifier::identifier`] is `None`) until the
//! identifier is next presented in clear by its owner (added again, re-flagged)
//! or re-bound under a new pepper, which seal it.
//!
//! # The last identifier
//! A box always keeps at least one identifier. Every change to a box's bindings
//! locks its profile, so under snapshot isolation two removals of its last two
//! identifiers write a common key and cannot both commit; the retried one counts
//! again and finds only one left.

use super::decode_key;
use super::records::{IdentRecord, LookupRecord, Profile};
use super::tx::{BoxHandle, SharedKey, Tx};
use crate::error::{Error, Result};
use crate::kv::ScanOrder;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use rossby_keyspace::{BoxId, Identifier, Key, LookupDigest, LookupHasher, Table};

/// Default of the most identifiers one box may have bound
/// ([`super::Limits::max_identifiers_per_box`]).
pub const MAX_IDENTIFIERS_PER_BOX: usize = 16;

/// The highest value [`super::Limits::max_identifiers_per_box`] may take: scans
/// of a box's identifiers read at most this many entries.
pub const MAX_IDENTIFIERS_LIMIT: usize = 1024;

/// Domain separation of the associated data of sealed identifiers.
const SEAL_CONTEXT: &[u8] = b"rossby/identifier/v1";

/// Bytes of the random nonce in front of a sealed identifier.
const NONCE_BYTES: usize = 12;

/// Bytes of the authentication tag after the ciphertext.
const TAG_BYTES: usize = 16;

/// One identifier bound to a box, as its owner sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BoundIdentifier {
    /// The identifier; `None` for a binding made before sealed copies existed
    /// (or sealed under a pepper version no longer configured).
    pub identifier: Option<Identifier>,
    /// Whether contacts may find the box by it (the account-wide hidden setting
    /// still hides every identifier).
    pub discoverable: bool,
    /// When it was bound (milliseconds since the Unix epoch).
    pub bound_at_ms: u64,
}

/// Binds `id` to `box_id` under the current pepper, discoverable, with the
/// default quota. See [`bind_with`].
pub async fn bind(
    txn: &mut Tx<'_>,
    hasher: &LookupHasher,
    id: &Identifier,
    box_id: BoxId,
    now_ms: u64,
) -> Result<()> {
    bind_with(
        txn,
        hasher,
        id,
        box_id,
        true,
        MAX_IDENTIFIERS_PER_BOX,
        now_ms,
    )
    .await
    .map(|_| ())
}

/// Binds `id` to `box_id` under the current pepper and returns the binding.
/// Binding an identifier already bound to the same box changes nothing (it only
/// moves it to the current pepper and seals a copy if it had none, keeping its
/// flag and time); bound to another box it fails with
/// [`Error::AlreadyRegistered`]; a new binding beyond `max_identifiers` fails
/// with [`Error::QuotaExceeded`]. Two binds of one identifier conflict on its
/// lookup key; the quota holds because binds into one box lock its profile.
pub async fn bind_with(
    txn: &mut Tx<'_>,
    hasher: &LookupHasher,
    id: &Identifier,
    box_id: BoxId,
    discoverable: bool,
    max_identifiers: usize,
    now_ms: u64,
) -> Result<BoundIdentifier> {
    let (handle, _) = txn.lock_profile(box_id).await?;
    let handle = &handle;
    let current = hasher.current(id);
    if let Some((digest, owner)) = find(txn, hasher, id).await? {
        if owner != box_id {
            return Err(Error::AlreadyRegistered);
        }
        let entry = ident_entry(txn, box_id, digest).await?;
        let (at, flag) = entry
            .as_ref()
            .map_or((now_ms, discoverable), |e| (e.at_ms, !e.undiscoverable));
        let settled = digest.version == current.version
            && entry.is_some_and(|e| !e.sealed_identifier.is_empty());
        if !settled {
            if digest.version != current.version {
                unbind_digest(txn, handle, digest).await?;
            }
            bind_digest(txn, handle, hasher, id, current, at, flag).await?;
        }
        return Ok(BoundIdentifier {
            identifier: Some(id.clone()),
            discoverable: flag,
            bound_at_ms: at,
        });
    }
    let limit = max_identifiers.min(MAX_IDENTIFIERS_LIMIT);
    if count_bound(txn, box_id).await? >= limit {
        return Err(Error::QuotaExceeded(format!(
            "a box may have at most {limit} identifiers"
        )));
    }
    bind_digest(txn, handle, hasher, id, current, now_ms, discoverable).await?;
    Ok(BoundIdentifier {
        identifier: Some(id.clone()),
        discoverable,
        bound_at_ms: now_ms,
    })
}

/// Writes both halves of a binding.
async fn bind_digest(
    txn: &mut Tx<'_>,
    handle: &BoxHandle,
    hasher: &LookupHasher,
    id: &Identifier,
    digest: LookupDigest,
    bound_at_ms: u64,
    discoverable: bool,
) -> Result<()> {
    let box_id = handle.box_id();
    let record = LookupRecord {
        box_id: box_id.as_bytes().to_vec(),
        bound_at_ms,
    };
    txn.put_shared(SharedKey::lookup(&digest), &record).await?;
    let entry = IdentRecord {
        at_ms: bound_at_ms,
        sealed_identifier: seal(hasher, box_id, digest, id)?,
        undiscoverable: !discoverable,
    };
    txn.put(
        handle,
        &Key::Ident(box_id, digest.version, digest.digest),
        &entry,
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

/// The box's entry for the binding with this digest.
async fn ident_entry(
    txn: &mut Tx<'_>,
    box_id: BoxId,
    digest: LookupDigest,
) -> Result<Option<IdentRecord>> {
    txn.get(&Key::Ident(box_id, digest.version, digest.digest))
        .await
}

/// How many identifiers are bound to the box.
async fn count_bound(txn: &mut Tx<'_>, box_id: BoxId) -> Result<usize> {
    Ok(txn
        .scan(
            &Key::table_range(box_id, Table::Ident),
            MAX_IDENTIFIERS_LIMIT,
            ScanOrder::Forward,
        )
        .await?
        .len())
}

/// The associated data binding a sealed copy to its entry.
fn seal_aad(box_id: BoxId, digest: LookupDigest) -> Vec<u8> {
    let mut aad = Vec::with_capacity(SEAL_CONTEXT.len() + 16 + 4 + 32);
    aad.extend_from_slice(SEAL_CONTEXT);
    aad.extend_from_slice(box_id.as_bytes());
    aad.extend_from_slice(&digest.version.to_be_bytes());
    aad.extend_from_slice(&digest.digest);
    aad
}

/// Seals the normalised identifier for the `ident` entry of `digest`.
fn seal(
    hasher: &LookupHasher,
    box_id: BoxId,
    digest: LookupDigest,
    id: &Identifier,
) -> Result<Vec<u8>> {
    // Unreachable with digests from `hasher` (their versions are configured);
    // reported as an internal error rather than a bad request if it ever is.
    let key = hasher
        .sealing_key(digest.version)
        .ok_or_else(|| Error::corrupt("identifier", "pepper version not configured"))?;
    let cipher = ChaCha20Poly1305::new_from_slice(&key)
        .map_err(|_| Error::corrupt("identifier", "sealing key length"))?;
    let nonce: [u8; NONCE_BYTES] = rand::random();
    let aad = seal_aad(box_id, digest);
    let sealed = cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: id.as_str().as_bytes(),
                aad: &aad,
            },
        )
        .map_err(|_| Error::corrupt("identifier", "the identifier could not be sealed"))?;
    let mut out = Vec::with_capacity(NONCE_BYTES + sealed.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// Opens the sealed copy of an entry: `None` when there is none or its pepper
/// version is no longer configured; a copy that does not open is corrupt.
fn open(
    hasher: &LookupHasher,
    box_id: BoxId,
    digest: LookupDigest,
    sealed: &[u8],
) -> Result<Option<Identifier>> {
    if sealed.is_empty() {
        return Ok(None);
    }
    let Some(key) = hasher.sealing_key(digest.version) else {
        return Ok(None);
    };
    let corrupt = |detail: &str| Error::corrupt("identifier", detail);
    if sealed.len() < NONCE_BYTES + TAG_BYTES {
        return Err(corrupt("sealed identifier too short"));
    }
    let cipher =
        ChaCha20Poly1305::new_from_slice(&key).map_err(|_| corrupt("sealing key length"))?;
    let (nonce, body) = sealed.split_at(NONCE_BYTES);
    let aad = seal_aad(box_id, digest);
    let plain = cipher
        .decrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: body,
                aad: &aad,
            },
        )
        .map_err(|_| corrupt("sealed identifier does not open"))?;
    let text = String::from_utf8(plain).map_err(|_| corrupt("sealed identifier is not UTF-8"))?;
    let id = Identifier::parse(&text).map_err(|_| corrupt("sealed identifier does not parse"))?;
    Ok(Some(id))
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
    Ok(resolve_binding(txn, hasher, id, now_ms)
        .await?
        .map(|(_, owner)| owner))
}

/// [`resolve`], with the digest the binding has after it.
async fn resolve_binding(
    txn: &mut Tx<'_>,
    hasher: &LookupHasher,
    id: &Identifier,
    now_ms: u64,
) -> Result<Option<(LookupDigest, BoxId)>> {
    let Some((digest, owner)) = find(txn, hasher, id).await? else {
        return Ok(None);
    };
    if digest.version != hasher.current_version() {
        // A box being deleted keeps its old binding until the deletion removes it.
        match txn.lock_profile(owner).await {
            Ok((handle, _)) => {
                // The rewritten binding keeps its time and flag, and gets a copy
                // sealed under the current pepper's key.
                let entry = ident_entry(txn, owner, digest).await?;
                let (at, discoverable) =
                    entry.map_or((now_ms, true), |e| (e.at_ms, !e.undiscoverable));
                let current = hasher.current(id);
                unbind_digest(txn, &handle, digest).await?;
                bind_digest(txn, &handle, hasher, id, current, at, discoverable).await?;
                return Ok(Some((current, owner)));
            }
            Err(Error::BoxNotFound) => {}
            Err(err) => return Err(err),
        }
    }
    Ok(Some((digest, owner)))
}

/// Resolves `id` for contact discovery by `requester`: a box that is hidden, that
/// blocked the requester, or that is being deleted, and an identifier its owner
/// made undiscoverable, answer exactly like an unknown identifier (`None`). A box
/// always finds itself.
pub async fn discover(
    txn: &mut Tx<'_>,
    hasher: &LookupHasher,
    id: &Identifier,
    requester: BoxId,
    now_ms: u64,
) -> Result<Option<BoxId>> {
    let Some((digest, owner)) = resolve_binding(txn, hasher, id, now_ms).await? else {
        return Ok(None);
    };
    let visible = match txn.get::<Profile>(&Key::Profile(owner)).await? {
        Some(p) if !p.deleted => {
            owner == requester
                || (!p.hidden
                    && ident_entry(txn, owner, digest)
                        .await?
                        .is_some_and(|e| !e.undiscoverable)
                    && !super::contacts::is_blocked(txn, owner, requester).await?)
        }
        _ => false,
    };
    Ok(visible.then_some(owner))
}

/// Removes the binding of `id` if it belongs to `box_id`; returns whether it did.
/// Unlike [`remove`] it may remove the last identifier (for flows that replace
/// it in the same transaction).
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

/// Removes `id` from the box's identifiers and returns how many remain.
/// [`Error::IdentifierNotBound`] if it is not bound to this box,
/// [`Error::LastIdentifier`] if it is the only one (see the module docs for why
/// that holds under snapshot isolation).
pub async fn remove(
    txn: &mut Tx<'_>,
    hasher: &LookupHasher,
    id: &Identifier,
    box_id: BoxId,
) -> Result<usize> {
    // Locked before counting: the lock is the write every removal shares.
    let (handle, _) = txn.lock_profile(box_id).await?;
    let digest = match find(txn, hasher, id).await? {
        Some((digest, owner)) if owner == box_id => digest,
        _ => return Err(Error::IdentifierNotBound),
    };
    let bound = count_bound(txn, box_id).await?;
    if bound <= 1 {
        return Err(Error::LastIdentifier);
    }
    unbind_digest(txn, &handle, digest).await?;
    Ok(bound - 1)
}

/// Makes `id`, bound to the box, discoverable or not, and returns the binding.
/// [`Error::IdentifierNotBound`] if it is not bound to this box. The entry is
/// rewritten with a fresh sealed copy, so a binding from before sealed copies
/// gains one.
pub async fn set_discoverable(
    txn: &mut Tx<'_>,
    hasher: &LookupHasher,
    id: &Identifier,
    box_id: BoxId,
    discoverable: bool,
    now_ms: u64,
) -> Result<BoundIdentifier> {
    let (handle, _) = txn.lock_profile(box_id).await?;
    let digest = match find(txn, hasher, id).await? {
        Some((digest, owner)) if owner == box_id => digest,
        _ => return Err(Error::IdentifierNotBound),
    };
    let at = ident_entry(txn, box_id, digest)
        .await?
        .map_or(now_ms, |e| e.at_ms);
    bind_digest(txn, &handle, hasher, id, digest, at, discoverable).await?;
    Ok(BoundIdentifier {
        identifier: Some(id.clone()),
        discoverable,
        bound_at_ms: at,
    })
}

/// The identifiers bound to a live box, oldest binding first (then by
/// identifier; bindings without a sealed copy last among equals).
/// [`Error::BoxNotFound`] for unknown and deleted boxes.
pub async fn list(
    txn: &mut Tx<'_>,
    hasher: &LookupHasher,
    box_id: BoxId,
) -> Result<Vec<BoundIdentifier>> {
    match txn.get::<Profile>(&Key::Profile(box_id)).await? {
        Some(p) if !p.deleted => {}
        _ => return Err(Error::BoxNotFound),
    }
    let entries = txn
        .scan(
            &Key::table_range(box_id, Table::Ident),
            MAX_IDENTIFIERS_LIMIT,
            ScanOrder::Forward,
        )
        .await?;
    let mut out = Vec::with_capacity(entries.len());
    for (raw, value) in entries {
        let Key::Ident(_, version, digest) = decode_key(&raw)? else {
            return Err(Error::corrupt("identifier", "unexpected key in table"));
        };
        let entry = <IdentRecord as super::Record>::from_stored(&value)?;
        let identifier = open(
            hasher,
            box_id,
            LookupDigest { version, digest },
            &entry.sealed_identifier,
        )?;
        out.push(BoundIdentifier {
            identifier,
            discoverable: !entry.undiscoverable,
            bound_at_ms: entry.at_ms,
        });
    }
    out.sort_by_key(|x| {
        (
            x.bound_at_ms,
            x.identifier.is_none(),
            x.identifier.as_ref().map(|i| i.as_str().to_owned()),
        )
    });
    Ok(out)
}

/// Removes every identifier bound to the handle's box.
pub async fn unbind_all(txn: &mut Tx<'_>, handle: &BoxHandle) -> Result<usize> {
    let box_id = handle.box_id();
    let entries = txn
        .scan(
            &Key::table_range(box_id, Table::Ident),
            MAX_IDENTIFIERS_LIMIT,
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
