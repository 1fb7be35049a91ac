//! The journal file's framing: sealing records and reading them back.
//!
//! ```text
//! header
//! 0   8   magic "RSBYJRNL"
//! 8   1   journal version, 1
//! 9   16  id of the snapshot this journal continues
//! records, each
//! +0  4   n: length of nonce + ciphertext (big-endian)
//! +4  4   !n (bitwise complement: a torn or zeroed length is recognised)
//! +8  12  ChaCha20-Poly1305 nonce (random, fresh for every record)
//! +20 n-12 ciphertext and tag of a protobuf `Patch`; the associated data is
//!          the header, the record's index (u64, big-endian, from 0) and n
//! ```
//! Binding each record to its index and to the snapshot id means records cannot
//! be reordered, dropped from the middle, duplicated, or carried over from
//! another journal (of this or another state) without failing authentication.

use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use zeroize::Zeroizing;

/// Magic bytes at the start of a journal.
pub const MAGIC: &[u8; 8] = b"RSBYJRNL";
/// The journal version written by this build.
pub const VERSION: u8 = 1;
/// Length of a snapshot id.
pub const SNAPSHOT_ID_LEN: usize = 16;
/// Length of the journal header.
pub const HEADER_LEN: usize = 8 + 1 + SNAPSHOT_ID_LEN;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const LENGTHS_LEN: usize = 8;
/// Larger records are refused (a record is a few changes; whole-state changes
/// are snapshots).
const MAX_SEALED_LEN: u32 = 64 << 20;

/// The header of the journal continuing snapshot `id`.
pub fn header(id: &[u8; SNAPSHOT_ID_LEN]) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(MAGIC);
    h[8] = VERSION;
    h[9..].copy_from_slice(id);
    h
}

/// The snapshot id a journal header names, or why it is not a journal header.
pub fn parse_header(bytes: &[u8]) -> Result<[u8; SNAPSHOT_ID_LEN], String> {
    let Some(h) = bytes.get(..HEADER_LEN) else {
        return Err("truncated journal header".into());
    };
    if &h[..8] != MAGIC {
        return Err("not a Rossby state journal".into());
    }
    if h[8] != VERSION {
        return Err(format!("unsupported journal version {}", h[8]));
    }
    let mut id = [0u8; SNAPSHOT_ID_LEN];
    id.copy_from_slice(&h[9..]);
    Ok(id)
}

fn aad(header: &[u8; HEADER_LEN], index: u64, sealed_len: u32) -> [u8; HEADER_LEN + 12] {
    let mut a = [0u8; HEADER_LEN + 12];
    a[..HEADER_LEN].copy_from_slice(header);
    a[HEADER_LEN..HEADER_LEN + 8].copy_from_slice(&index.to_be_bytes());
    a[HEADER_LEN + 8..].copy_from_slice(&sealed_len.to_be_bytes());
    a
}

/// Record `index` of the journal with `header`, sealed, with its lengths.
pub fn seal(
    cipher: &ChaCha20Poly1305,
    header: &[u8; HEADER_LEN],
    index: u64,
    plaintext: &[u8],
) -> Result<Vec<u8>, String> {
    let sealed_len = u32::try_from(NONCE_LEN + plaintext.len() + TAG_LEN)
        .ok()
        .filter(|n| *n <= MAX_SEALED_LEN)
        .ok_or_else(|| "journal record too large".to_string())?;
    let nonce: [u8; NONCE_LEN] = rand::random();
    let ciphertext = cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad: &aad(header, index, sealed_len),
            },
        )
        .map_err(|_| "journal encryption failed".to_string())?;
    let mut out = Vec::with_capacity(LENGTHS_LEN + NONCE_LEN + ciphertext.len());
    out.extend_from_slice(&sealed_len.to_be_bytes());
    out.extend_from_slice(&(!sealed_len).to_be_bytes());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ciphertext);
    Ok(out)
}

/// The records of a journal that authenticate, in order.
pub struct Scan {
    /// Their plaintexts.
    pub records: Vec<Zeroizing<Vec<u8>>>,
    /// Bytes of the file they (and the header) take: appending continues here.
    pub good_len: u64,
    /// The file held a torn last record after them (discarded).
    pub torn: bool,
}

/// Reads every record of a journal whose header was checked.
///
/// Only the end of the file can hold an incomplete record, since records are
/// appended one at a time and each is synced before the next is written: a
/// crash while appending leaves a length that is incomplete, a record that
/// ends past the end of the file, a last record whose bytes did not all reach
/// the disk (it fails authentication), or zeros where the file was extended
/// before its data was written (from inside the length on). Such a tail is discarded. Anything else that
/// fails (a damaged length, a record failing authentication with more records
/// after it) is corruption and an error.
pub fn scan(
    cipher: &ChaCha20Poly1305,
    header: &[u8; HEADER_LEN],
    file: &[u8],
) -> Result<Scan, String> {
    let mut records = Vec::new();
    let mut at = HEADER_LEN;
    let mut index = 0u64;
    let torn = |records, at: usize| {
        Ok(Scan {
            records,
            good_len: at as u64,
            torn: true,
        })
    };
    while at < file.len() {
        let rest = &file[at..];
        if rest.iter().all(|b| *b == 0) {
            return torn(records, at);
        }
        let Some(lengths) = rest.get(..LENGTHS_LEN) else {
            return torn(records, at);
        };
        let word = |i: usize| {
            let mut w = [0u8; 4];
            w.copy_from_slice(&lengths[i..i + 4]);
            u32::from_be_bytes(w)
        };
        let sealed_len = word(0);
        if word(4) != !sealed_len
            || sealed_len > MAX_SEALED_LEN
            || (sealed_len as usize) < NONCE_LEN + TAG_LEN
        {
            // Zeros from inside the length on: the extended file's data never
            // reached the disk.
            if rest[LENGTHS_LEN..].iter().all(|b| *b == 0) {
                return torn(records, at);
            }
            return Err(format!("record {index} at byte {at} has a damaged length"));
        }
        let Some(sealed) = rest.get(LENGTHS_LEN..LENGTHS_LEN + sealed_len as usize) else {
            return torn(records, at);
        };
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        let plaintext = cipher.decrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: ciphertext,
                aad: &aad(header, index, sealed_len),
            },
        );
        let end = at + LENGTHS_LEN + sealed_len as usize;
        match plaintext {
            Ok(p) => records.push(Zeroizing::new(p)),
            Err(_) if end == file.len() => return torn(records, at),
            Err(_) => {
                return Err(format!(
                    "record {index} at byte {at} fails authentication (damaged, tampered with, reordered or from another file)"
                ));
            }
        }
        at = end;
        index += 1;
    }
    Ok(Scan {
        records,
        good_len: at as u64,
        torn: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chacha20poly1305::KeyInit;

    fn cipher(k: u8) -> ChaCha20Poly1305 {
        ChaCha20Poly1305::new(&[k; 32].into())
    }

    /// A journal of `n` records "record i".
    fn journal(c: &ChaCha20Poly1305, h: &[u8; HEADER_LEN], n: u64) -> (Vec<u8>, Vec<usize>) {
        let mut file = h.to_vec();
        let mut starts = Vec::new();
        for i in 0..n {
            starts.push(file.len());
            file.extend(seal(c, h, i, format!("record {i}").as_bytes()).unwrap());
        }
        (file, starts)
    }

    fn texts(scan: &Scan) -> Vec<String> {
        scan.records
            .iter()
            .map(|r| String::from_utf8(r.to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn records_round_trip() {
        let c = cipher(1);
        let h = header(&[7; 16]);
        assert_eq!(parse_header(&h).unwrap(), [7; 16]);
        let (file, _) = journal(&c, &h, 3);
        let scan = scan(&c, &h, &file).unwrap();
        assert_eq!(texts(&scan), ["record 0", "record 1", "record 2"]);
        assert!(!scan.torn);
        assert_eq!(scan.good_len, file.len() as u64);
        // Two seals of the same record differ (fresh nonces).
        assert_ne!(
            seal(&c, &h, 0, b"x").unwrap(),
            seal(&c, &h, 0, b"x").unwrap()
        );
        assert!(parse_header(b"RSBYJRNL").is_err());
        assert!(parse_header(&[0; HEADER_LEN]).is_err());
    }

    #[test]
    fn a_torn_tail_is_discarded_at_every_cut() {
        let c = cipher(1);
        let h = header(&[7; 16]);
        let (file, starts) = journal(&c, &h, 3);
        let last = starts[2];
        for cut in last..file.len() {
            let scan = scan(&c, &h, &file[..cut]).unwrap();
            assert_eq!(texts(&scan), ["record 0", "record 1"], "cut at {cut}");
            assert_eq!(scan.good_len, last as u64);
            assert_eq!(scan.torn, cut > last);
        }
        // The file was extended but the record's bytes never arrived.
        for zeroed_from in last..file.len() {
            let mut damaged = file.clone();
            damaged[zeroed_from..].fill(0);
            let scan = scan(&c, &h, &damaged).unwrap();
            assert_eq!(texts(&scan), ["record 0", "record 1"], "{zeroed_from}");
            assert!(scan.torn);
        }
        let mut extended = file.clone();
        extended.extend([0; 100]);
        assert_eq!(scan(&c, &h, &extended).unwrap().records.len(), 3);
    }

    #[test]
    fn tampering_in_the_middle_is_an_error() {
        let c = cipher(1);
        let h = header(&[7; 16]);
        let (file, starts) = journal(&c, &h, 3);
        for at in starts[1]..starts[2] {
            let mut damaged = file.clone();
            damaged[at] ^= 0x40;
            assert!(scan(&c, &h, &damaged).is_err(), "flip at {at}");
        }
        // The last record tampered with cannot be told from a torn one: it is
        // dropped, as truncating the file would.
        let mut damaged = file.clone();
        let end = damaged.len() - 1;
        damaged[end] ^= 1;
        assert_eq!(scan(&c, &h, &damaged).unwrap().records.len(), 2);
    }

    #[test]
    fn reordered_dropped_and_foreign_records_are_errors() {
        let c = cipher(1);
        let h = header(&[7; 16]);
        let (file, s) = journal(&c, &h, 4);
        let rec = |i: usize| file[s[i]..*s.get(i + 1).unwrap_or(&file.len())].to_vec();
        let build = |order: &[usize]| {
            let mut f = h.to_vec();
            for i in order {
                f.extend(rec(*i));
            }
            f
        };
        assert!(scan(&c, &h, &build(&[0, 2, 1, 3])).is_err(), "reordered");
        assert!(scan(&c, &h, &build(&[0, 2, 3])).is_err(), "dropped");
        assert!(scan(&c, &h, &build(&[0, 1, 1, 3])).is_err(), "replayed");
        // A record of another snapshot's journal, same key.
        let other = header(&[8; 16]);
        let mut f = build(&[0]);
        f.extend(seal(&c, &other, 1, b"foreign").unwrap());
        f.extend(rec(2));
        assert!(scan(&c, &h, &f).is_err(), "foreign");
        // Another key.
        assert!(scan(&cipher(2), &h, &build(&[0, 1, 2, 3])).is_err());
        // A damaged length.
        let mut f = file.clone();
        f[s[1] + 2] ^= 1;
        assert!(scan(&c, &h, &f).is_err());
    }
}
