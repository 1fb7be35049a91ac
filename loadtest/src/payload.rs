//! The message text: an accounting header and filler, checksummed, so that a
//! receiver can tell which send it got, from whom, and whether it arrived intact.
//!
//! ```text
//! rlt1 <run id, 16 hex> <index> <sender slot> <checksum, 16 hex> <filler>
//! ```
//!
//! The checksum is the first 8 bytes of SHA-256 over the text with the checksum
//! field left out; the filler is derived from the run id and index and pads the
//! text to its planned size. Any change to any byte fails the checksum.

use sha2::{Digest, Sha256};

/// The format tag at the start of every load-test message.
pub const MAGIC: &str = "rlt1";

/// What a valid message text says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// The run that sent it.
    pub run_id: u64,
    /// The send's index in the schedule.
    pub index: u64,
    /// The sending device's slot.
    pub sender: u32,
}

/// Why a received text is not a valid load-test message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Invalid {
    /// It does not start with [`MAGIC`] and the header fields.
    Malformed,
    /// The checksum does not match the text.
    Checksum,
}

/// Builds the text of send `index` of run `run_id` from device `sender`, `size`
/// bytes long (longer only when the header alone exceeds `size`).
pub fn encode(run_id: u64, index: u64, sender: u32, size: usize) -> String {
    let head = format!("{MAGIC} {run_id:016x} {index} {sender}");
    // Header, space, 16 hex digits, space, then filler.
    let fixed = head.len() + 1 + 16 + 1;
    let filler = filler(run_id, index, size.saturating_sub(fixed));
    let sum = checksum(&head, &filler);
    format!("{head} {sum:016x} {filler}")
}

/// Parses and checks a received text.
pub fn decode(text: &str) -> Result<Header, Invalid> {
    let mut parts = text.splitn(6, ' ');
    let (Some(magic), Some(run), Some(index), Some(sender), Some(sum)) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(Invalid::Malformed);
    };
    let filler = parts.next().unwrap_or("");
    if magic != MAGIC || run.len() != 16 || sum.len() != 16 {
        return Err(Invalid::Malformed);
    }
    let run_id = u64::from_str_radix(run, 16).map_err(|_| Invalid::Malformed)?;
    let index: u64 = index.parse().map_err(|_| Invalid::Malformed)?;
    let sender: u32 = sender.parse().map_err(|_| Invalid::Malformed)?;
    let sum = u64::from_str_radix(sum, 16).map_err(|_| Invalid::Malformed)?;
    let head = format!("{MAGIC} {run} {index} {sender}");
    // The canonical header must be what was received (no leading zeros or signs
    // that would let two texts share a checksum).
    if !text.starts_with(&head) || checksum(&head, filler) != sum {
        return Err(Invalid::Checksum);
    }
    Ok(Header {
        run_id,
        index,
        sender,
    })
}

fn checksum(head: &str, filler: &str) -> u64 {
    let mut h = Sha256::new();
    h.update(head.as_bytes());
    h.update([0u8]);
    h.update(filler.as_bytes());
    let digest = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// Printable filler that differs between messages, so that a server mixing up
/// bodies of equal length is caught too.
fn filler(run_id: u64, index: u64, len: usize) -> String {
    const ALPHABET: &[u8; 64] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_";
    let mut state = run_id ^ index.rotate_left(32) ^ 0x9e37_79b9_7f4a_7c15;
    let mut out = String::with_capacity(len);
    while out.len() < len {
        // xorshift64*
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        let mut word = state.wrapping_mul(0x2545_f491_4f6c_dd1d);
        for _ in 0..10 {
            if out.len() == len {
                break;
            }
            out.push(char::from(ALPHABET[(word & 63) as usize]));
            word >>= 6;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_round_trip_at_their_planned_size() {
        for size in [64, 65, 100, 1000, 16384] {
            let text = encode(0xdead_beef, 123_456, 42, size);
            assert_eq!(text.len(), size);
            assert_eq!(
                decode(&text),
                Ok(Header {
                    run_id: 0xdead_beef,
                    index: 123_456,
                    sender: 42
                })
            );
        }
        // Too small for the header: the header wins.
        let text = encode(1, 2, 3, 10);
        assert!(text.len() > 10);
        assert!(decode(&text).is_ok());
    }

    #[test]
    fn any_change_is_detected() {
        let text = encode(7, 99, 5, 200);
        let bytes = text.as_bytes();
        for i in 0..bytes.len() {
            let mut changed = bytes.to_vec();
            changed[i] = if changed[i] == b'x' { b'y' } else { b'x' };
            let changed = String::from_utf8(changed).unwrap();
            assert!(decode(&changed).is_err(), "byte {i} changed undetected");
        }
        assert_eq!(decode(&text[..150]), Err(Invalid::Checksum));
        assert_eq!(decode("hello"), Err(Invalid::Malformed));
        assert_eq!(decode(""), Err(Invalid::Malformed));
        // Two messages of one size differ in their filler too.
        let a = encode(7, 1, 5, 300);
        let b = encode(7, 2, 5, 300);
        assert_ne!(a[60..], b[60..]);
    }
}
