//! Half-open key ranges.

/// A half-open key range `[start, end)`; `end: None` means unbounded.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KeyRange {
    /// First key included.
    pub start: Vec<u8>,
    /// First key excluded, or `None` for "to the end of the keyspace".
    pub end: Option<Vec<u8>>,
}

impl KeyRange {
    /// The range `[start, end)`.
    pub fn new(start: impl Into<Vec<u8>>, end: impl Into<Vec<u8>>) -> Self {
        KeyRange {
            start: start.into(),
            end: Some(end.into()),
        }
    }

    /// Every key that starts with `prefix`.
    pub fn prefix(prefix: &[u8]) -> Self {
        KeyRange {
            start: prefix.to_vec(),
            end: prefix_end(prefix),
        }
    }

    /// True if `key` lies inside the range.
    pub fn contains(&self, key: &[u8]) -> bool {
        key >= self.start.as_slice() && self.end.as_deref().is_none_or(|end| key < end)
    }

    /// True if no key can lie inside the range.
    pub fn is_empty(&self) -> bool {
        self.end
            .as_deref()
            .is_some_and(|end| end <= self.start.as_slice())
    }
}

/// The smallest key greater than every key starting with `prefix`, or `None` when
/// the prefix is empty or all `0xff` (then the range is unbounded).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_last_non_ff_byte() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[1, 0xff]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
        assert_eq!(prefix_end(&[]), None);
    }

    #[test]
    fn prefix_range_contains_exactly_the_prefixed_keys() {
        let r = KeyRange::prefix(&[1, 0xff]);
        assert!(r.contains(&[1, 0xff]));
        assert!(r.contains(&[1, 0xff, 0xff, 3]));
        assert!(!r.contains(&[2]));
        assert!(!r.contains(&[1, 0xfe, 0xff]));
        assert!(KeyRange::new(vec![2], vec![1]).is_empty());
        assert!(!KeyRange::prefix(&[]).is_empty());
    }
}
