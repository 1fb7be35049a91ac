//! What every buffering backend needs to show a transaction its own pending writes
//! over its snapshot.

use crate::{Key, KeyRange, KvPair, ScanOrder, Value};
use std::ops::Bound;

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
