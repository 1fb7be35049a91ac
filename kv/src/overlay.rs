//! What every buffering backend needs to show a transaction its own pending writes
//! over its snapshot.

use crate::{Key, KeyRange, KvPair, Result, ScanOrder, Value, check_value_size};
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

/// A transaction's buffered writes and locks, applied or checked at commit.
#[derive(Default)]
pub(crate) struct Pending {
    /// `Some` is a put, `None` a delete.
    pub writes: BTreeMap<Key, Option<Value>>,
    /// Keys read with `get_for_update`: conflict-checked at commit but not written.
    pub locked: BTreeSet<Key>,
}

impl Pending {
    pub fn put(&mut self, key: Key, value: Value) -> Result<()> {
        check_value_size(&value)?;
        self.writes.insert(key, Some(value));
        Ok(())
    }

    /// A tombstone even for a missing key: like TiKV, the delete is a write that
    /// takes part in conflict detection.
    pub fn delete(&mut self, key: Key) {
        self.writes.insert(key, None);
    }

    pub fn lock(&mut self, key: &[u8]) {
        self.locked.insert(key.to_vec());
    }

    /// True when there is nothing to write or check.
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty() && self.locked.is_empty()
    }

    /// Every key the commit must check for write-write conflicts.
    pub fn conflict_keys(&self) -> impl Iterator<Item = &Key> {
        self.writes.keys().chain(self.locked.iter())
    }
}

/// Bounds of `range` for `BTreeMap::range` and fjall's range over byte-string keys.
pub(crate) fn bounds(range: &KeyRange) -> (Bound<&[u8]>, Bound<&[u8]>) {
    (
        Bound::Included(range.start.as_slice()),
        range
            .end
            .as_deref()
            .map_or(Bound::Unbounded, Bound::Excluded),
    )
}

/// Merges two key-ordered streams (both in `order`), letting `pending` shadow
/// `committed` on equal keys and dropping pending deletions, until `limit` pairs.
/// The first error of `committed` ends the merge.
pub(crate) fn merge<'a, K, V, E>(
    committed: impl Iterator<Item = Result<(K, V), E>>,
    pending: impl Iterator<Item = (&'a Key, &'a Option<Value>)>,
    order: ScanOrder,
    limit: usize,
) -> Result<Vec<KvPair>, E>
where
    K: AsRef<[u8]>,
    V: AsRef<[u8]>,
{
    let mut committed = committed.peekable();
    let mut pending = pending.peekable();
    let mut out = Vec::new();
    while out.len() < limit {
        if let Some(Err(_)) = committed.peek()
            && let Some(Err(err)) = committed.next()
        {
            return Err(err);
        }
        // Which stream holds the next key in scan order, and whether both do.
        let (take_pending, same_key) = match (committed.peek(), pending.peek()) {
            (None, None) => break,
            (Some(_), None) => (false, false),
            (None, Some(_)) => (true, false),
            (Some(Ok((ck, _))), Some((pk, _))) => {
                let (ck, pk) = (ck.as_ref(), pk.as_slice());
                let pending_first = match order {
                    ScanOrder::Forward => pk <= ck,
                    ScanOrder::Reverse => pk >= ck,
                };
                (pending_first, pk == ck)
            }
            (Some(Err(_)), Some(_)) => continue,
        };
        if same_key {
            // The pending write replaces (or deletes) the committed value.
            committed.next();
        }
        if take_pending {
            if let Some((key, Some(value))) = pending.next() {
                out.push((key.clone(), value.clone()));
            }
        } else if let Some(item) = committed.next() {
            let (key, value) = item?;
            out.push((key.as_ref().to_vec(), value.as_ref().to_vec()));
        }
    }
    Ok(out)
}

/// A printable, bounded rendering of a key for error messages.
pub(crate) fn escape(key: &[u8]) -> String {
    const MAX: usize = 64;
    let mut out: String = key
        .iter()
        .take(MAX)
        .flat_map(|b| std::ascii::escape_default(*b))
        .map(char::from)
        .collect();
    if key.len() > MAX {
        out.push_str("...");
    }
    out
}
