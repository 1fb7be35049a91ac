//! Safety numbers: 60 digits two users compare out of band to check that each
//! sees the other's real identity key (and box), in the style of Signal's
//! numeric fingerprints.
//!
//! For each side, with `identity` its 32-byte Ed25519 identity key and `box_id`
//! its 16-byte box id:
//!
//! ```text
//! h = SAFETY_NUMBER_LABEL || identity || box_id
//! repeat SAFETY_NUMBER_ITERATIONS (5200) times: h = SHA-512(h || identity)
//! digits = for i in 0..6: format("{:05}", u40_be(h[5i .. 5i+5]) mod 100000)
//! ```
//!
//! giving 30 digits per side. The two 30-digit strings are sorted (as strings,
//! equivalently as numbers) and concatenated, so both users compute the same
//! number; the 60 digits are shown as 12 groups of 5 separated by single spaces.
//! The iteration count is Signal's: it raises the cost of searching for a key
//! whose 30 digits (about 99.7 bits) collide with a target's.

use sha2::{Digest, Sha512};

/// Domain label and version at the start of each side's hash input.
pub const SAFETY_NUMBER_LABEL: &[u8] = b"rossby/safety-number/v1";
/// SHA-512 iterations per side.
pub const SAFETY_NUMBER_ITERATIONS: usize = 5200;

/// The safety number of two (identity key, box id) pairs: symmetric in `a` and
/// `b`, 12 groups of 5 digits separated by spaces.
#[must_use]
pub fn safety_number(
    a_identity: &[u8; 32],
    a_box: &[u8; 16],
    b_identity: &[u8; 32],
    b_box: &[u8; 16],
) -> String {
    let a = side_digits(a_identity, a_box);
    let b = side_digits(b_identity, b_box);
    let (first, second) = if a <= b { (a, b) } else { (b, a) };
    let digits = first + &second;
    let groups: Vec<&str> = (0..12).map(|i| &digits[i * 5..i * 5 + 5]).collect();
    groups.join(" ")
}

/// The 30 digits of one side.
fn side_digits(identity: &[u8; 32], box_id: &[u8; 16]) -> String {
    let mut hash = Vec::with_capacity(SAFETY_NUMBER_LABEL.len() + 48);
    hash.extend_from_slice(SAFETY_NUMBER_LABEL);
    hash.extend_from_slice(identity);
    hash.extend_from_slice(box_id);
    for _ in 0..SAFETY_NUMBER_ITERATIONS {
        let mut digest = Sha512::new();
        digest.update(&hash);
        digest.update(identity);
        hash = digest.finalize().to_vec();
    }
    hash[..30]
        .chunks_exact(5)
        .map(|chunk| {
            let n = chunk.iter().fold(0u64, |n, &b| (n << 8) | u64::from(b));
            format!("{:05}", n % 100_000)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_format(number: &str) {
        let groups: Vec<&str> = number.split(' ').collect();
        assert_eq!(groups.len(), 12, "{number}");
        for group in groups {
            assert_eq!(group.len(), 5, "{number}");
            assert!(group.bytes().all(|b| b.is_ascii_digit()), "{number}");
        }
        assert_eq!(number.len(), 12 * 5 + 11);
    }

    #[test]
    fn symmetric_and_formatted() {
        let (ka, ba) = ([1u8; 32], [2u8; 16]);
        let (kb, bb) = ([3u8; 32], [4u8; 16]);
        let ab = safety_number(&ka, &ba, &kb, &bb);
        let ba_ = safety_number(&kb, &bb, &ka, &ba);
        assert_eq!(ab, ba_);
        check_format(&ab);
        // Deterministic.
        assert_eq!(ab, safety_number(&ka, &ba, &kb, &bb));
        // Same user on both sides still works.
        check_format(&safety_number(&ka, &ba, &ka, &ba));
    }

    #[test]
    fn changes_when_a_key_or_box_changes() {
        let (ka, ba) = ([1u8; 32], [2u8; 16]);
        let (kb, bb) = ([3u8; 32], [4u8; 16]);
        let base = safety_number(&ka, &ba, &kb, &bb);
        let mut ka2 = ka;
        ka2[31] ^= 1;
        let mut kb2 = kb;
        kb2[0] ^= 0x80;
        let mut bb2 = bb;
        bb2[7] ^= 1;
        for other in [
            safety_number(&ka2, &ba, &kb, &bb),
            safety_number(&ka, &ba, &kb2, &bb),
            safety_number(&ka, &ba, &kb, &bb2),
            safety_number(&kb, &ba, &ka, &bb), // keys swapped between boxes
        ] {
            check_format(&other);
            assert_ne!(other, base);
        }
        // Only the changed side's half differs.
        let changed = safety_number(&ka2, &ba, &kb, &bb);
        let b_half = side_digits(&kb, &bb);
        assert!(changed.replace(' ', "").contains(&b_half));
        assert!(base.replace(' ', "").contains(&b_half));
    }

    /// Pinned output, computed independently with Python's `hashlib`
    /// (docs/security.md, appendix A).
    #[test]
    fn known_answer() {
        let number = safety_number(&[1; 32], &[2; 16], &[3; 32], &[4; 16]);
        assert_eq!(number, KAT_SAFETY_NUMBER);
    }

    const KAT_SAFETY_NUMBER: &str =
        "77573 26813 01704 17819 05984 37313 94472 63929 20175 31866 05247 18383";
}
