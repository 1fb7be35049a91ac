//! Contacts and blocks of a box's owner.
//!
//! Both are sets of other boxes, one key per member, so checking one membership is
//! a point read on the send path.

use super::records::Relation;
use super::tx::Tx;
use super::{Limits, decode_key};
use crate::error::{Error, Result};
use crate::kv::ScanOrder;
use rossby_keyspace::{BoxId, Key, Table};

/// Which relation a set holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Relationship {
    /// The owner's contacts: they pass the contacts-only setting.
    Contact,
    /// Boxes the owner blocked: they cannot send to or find the owner.
    Block,
}

impl Relationship {
    fn key(self, owner: BoxId, other: BoxId) -> Key {
        match self {
            Relationship::Contact => Key::Contact(owner, other),
            Relationship::Block => Key::Block(owner, other),
        }
    }

    fn table(self) -> Table {
        match self {
            Relationship::Contact => Table::Contact,
            Relationship::Block => Table::Block,
        }
    }
}

/// Adds `other` to the owner's set; adding twice is a no-op. Under the owner's
/// profile guard: a contact cannot outlive a concurrent account deletion, and two
/// adds cannot both pass the quota.
pub async fn add(
    txn: &mut Tx<'_>,
    limits: &Limits,
    rel: Relationship,
    owner: BoxId,
    other: BoxId,
    now_ms: u64,
) -> Result<()> {
    if owner == other {
        return Err(Error::Invalid("a box cannot relate to itself".into()));
    }
    let (handle, _) = txn.lock_profile(owner).await?;
    let key = rel.key(owner, other);
    if txn.get_raw(&key).await?.is_some() {
        return Ok(());
    }
    let existing = txn
        .scan(
            &Key::table_range(owner, rel.table()),
            limits.max_relations_per_box,
            ScanOrder::Forward,
        )
        .await?;
    if existing.len() >= limits.max_relations_per_box {
        return Err(Error::QuotaExceeded(format!(
            "at most {} entries per list",
            limits.max_relations_per_box
        )));
    }
    txn.put(&handle, &key, &Relation { since_ms: now_ms }).await
}

/// Removes `other` from the owner's set; returns whether it was there.
pub async fn remove(
    txn: &mut Tx<'_>,
    rel: Relationship,
    owner: BoxId,
    other: BoxId,
) -> Result<bool> {
    let key = rel.key(owner, other);
    let present = txn.get_raw(&key).await?.is_some();
    if present {
        let (handle, _) = txn.lock_profile(owner).await?;
        txn.delete(&handle, &key).await?;
    }
    Ok(present)
}

/// Whether `other` is in the owner's set.
pub async fn contains(
    txn: &mut Tx<'_>,
    rel: Relationship,
    owner: BoxId,
    other: BoxId,
) -> Result<bool> {
    Ok(txn.get_raw(&rel.key(owner, other)).await?.is_some())
}

/// Whether `owner` blocked `other`.
pub async fn is_blocked(txn: &mut Tx<'_>, owner: BoxId, other: BoxId) -> Result<bool> {
    contains(txn, Relationship::Block, owner, other).await
}

/// The members of the owner's set, in box order, at most `limit`.
pub async fn list(
    txn: &mut Tx<'_>,
    rel: Relationship,
    owner: BoxId,
    limit: usize,
) -> Result<Vec<BoxId>> {
    let entries = txn
        .scan(
            &Key::table_range(owner, rel.table()),
            limit,
            ScanOrder::Forward,
        )
        .await?;
    entries
        .iter()
        .map(|(raw, _)| match decode_key(raw)? {
            Key::Contact(_, other) | Key::Block(_, other) => Ok(other),
            _ => Err(Error::corrupt(
                "relation",
                "unexpected key in relation range",
            )),
        })
        .collect()
}
