//! Chunked encryption of attachments (files, pictures, voice notes).
//!
//! A file is encrypted under a fresh random 32-byte key with ChaCha20-Poly1305
//! in fixed-size chunks, in the manner of the STREAM construction (Hoang, Reyhanitabar,
//! Rogaway and Vizár, "Online authenticated-encryption and its nonce-reuse
//! misuse-resistance"): every chunk is sealed on its own, with a nonce made of
//! the chunk's index and a flag that is set on the last chunk only. So a file
//! streams in both directions with memory for one chunk, and a download that is
//! truncated (the last chunk missing: no chunk with the flag), extended, reordered
//! (an index mismatch) or modified fails at the first chunk that does not
//! authenticate, naming it.
//!
//! For a file of `size` bytes in chunks of `chunk_size` plaintext bytes:
//!
//! - `chunk_count = max(1, ceil(size / chunk_size))`: an empty file is one empty
//!   chunk (so even it carries a tag), and a size that is an exact multiple of the
//!   chunk size has no extra empty chunk;
//! - chunk `i` holds plaintext bytes `[i * chunk_size, min(size, (i + 1) * chunk_size))`;
//! - `nonce_i = 0x00 0x00 0x00 || i as u64 big-endian || last` (12 bytes), with
//!   `last = 0x01` for `i = chunk_count - 1`, else `0x00`;
//! - `aad = ATTACHMENT_LABEL || size as u64 big-endian || chunk_size as u32 big-endian`,
//!   so the layout a recipient was told is bound to every chunk;
//! - `ciphertext_i = ChaCha20-Poly1305(key, nonce_i, aad, chunk_i)`, `chunk_i`'s
//!   length plus a 16-byte tag; the blob is the concatenation of the chunks.
//!
//! The key is used for one file only, so (index, flag) never repeats under it.
//! The SHA-256 of the whole ciphertext goes into the
//! [`Attachment`](crate::pb::Attachment) reference as well: it lets a client check
//! a blob before decrypting, and names exactly what the sender uploaded.

use super::seal::{AEAD_KEY_LEN, AEAD_TAG_LEN};
use crate::error::{Error, Result};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};

/// Domain label at the start of every chunk's associated data.
pub const ATTACHMENT_LABEL: &[u8] = b"rossby/attachment/v1";

/// The plaintext chunk size clients use: a sealed chunk is then exactly 64 KiB.
pub const DEFAULT_CHUNK_SIZE: u32 = 64 * 1024 - AEAD_TAG_LEN as u32;

/// Largest plaintext chunk accepted (bounds the memory a recipient needs per
/// chunk, whatever the sender claims).
pub const MAX_CHUNK_SIZE: u32 = 4 * 1024 * 1024;

/// Where the chunks of a file of a given size lie.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkLayout {
    size: u64,
    chunk_size: u32,
}

impl ChunkLayout {
    /// The layout of `size` plaintext bytes in chunks of `chunk_size`. Fails for
    /// a chunk size of zero or above [`MAX_CHUNK_SIZE`], or a size whose
    /// ciphertext length does not fit in a `u64`.
    pub fn new(size: u64, chunk_size: u32) -> Result<Self> {
        if chunk_size == 0 || chunk_size > MAX_CHUNK_SIZE {
            return Err(Error::Crypto(format!(
                "an attachment chunk size must be between 1 and {MAX_CHUNK_SIZE} bytes"
            )));
        }
        let layout = ChunkLayout { size, chunk_size };
        layout
            .chunk_count()
            .checked_mul(AEAD_TAG_LEN as u64)
            .and_then(|tags| tags.checked_add(size))
            .ok_or_else(|| Error::Crypto("the attachment is too large".into()))?;
        Ok(layout)
    }

    /// Plaintext size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Plaintext bytes per chunk.
    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    /// Number of chunks (at least one).
    pub fn chunk_count(&self) -> u64 {
        self.size.div_ceil(u64::from(self.chunk_size)).max(1)
    }

    /// Size of the whole ciphertext (every chunk with its tag).
    pub fn ciphertext_len(&self) -> u64 {
        // Checked in `new`.
        self.size + self.chunk_count() * AEAD_TAG_LEN as u64
    }

    /// Plaintext length of chunk `index` (`None` past the last chunk).
    pub fn plaintext_len(&self, index: u64) -> Option<usize> {
        if index >= self.chunk_count() {
            return None;
        }
        let start = index * u64::from(self.chunk_size);
        let len = (self.size - start).min(u64::from(self.chunk_size));
        usize::try_from(len).ok()
    }

    /// Ciphertext length of chunk `index` (`None` past the last chunk).
    pub fn ciphertext_len_of(&self, index: u64) -> Option<usize> {
        self.plaintext_len(index).map(|len| len + AEAD_TAG_LEN)
    }

    /// True if `index` is the last chunk.
    pub fn is_last(&self, index: u64) -> bool {
        index + 1 == self.chunk_count()
    }

    fn nonce(&self, index: u64) -> [u8; 12] {
        let mut nonce = [0u8; 12];
        nonce[3..11].copy_from_slice(&index.to_be_bytes());
        nonce[11] = u8::from(self.is_last(index));
        nonce
    }

    fn aad(&self) -> Vec<u8> {
        let mut aad = Vec::with_capacity(ATTACHMENT_LABEL.len() + 12);
        aad.extend_from_slice(ATTACHMENT_LABEL);
        aad.extend_from_slice(&self.size.to_be_bytes());
        aad.extend_from_slice(&self.chunk_size.to_be_bytes());
        aad
    }
}

fn cipher(key: &[u8]) -> Result<ChaCha20Poly1305> {
    if key.len() != AEAD_KEY_LEN {
        return Err(Error::Crypto(format!(
            "an attachment key must have {AEAD_KEY_LEN} bytes"
        )));
    }
    Ok(ChaCha20Poly1305::new(Key::from_slice(key)))
}

/// Seals chunk `index` of a file with `layout`. `plaintext` must have exactly the
/// chunk's length ([`ChunkLayout::plaintext_len`]).
pub fn seal_chunk(
    key: &[u8],
    layout: &ChunkLayout,
    index: u64,
    plaintext: &[u8],
) -> Result<Vec<u8>> {
    let expected = layout.plaintext_len(index).ok_or_else(|| {
        Error::Crypto(format!(
            "chunk {index} is past the last chunk ({} chunks)",
            layout.chunk_count()
        ))
    })?;
    if plaintext.len() != expected {
        return Err(Error::Crypto(format!(
            "chunk {index} must have {expected} bytes, not {}",
            plaintext.len()
        )));
    }
    let nonce = layout.nonce(index);
    let aad = layout.aad();
    cipher(key)?
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad: &aad,
            },
        )
        .map_err(|_| Error::Crypto("attachment encryption failed".into()))
}

/// Opens chunk `index` of a file with `layout`. Fails with
/// [`Error::AttachmentChunk`] naming the chunk when it has the wrong length or
/// does not authenticate (tampered, taken from another position or file, or a
/// truncated file's last chunk).
pub fn open_chunk(
    key: &[u8],
    layout: &ChunkLayout,
    index: u64,
    ciphertext: &[u8],
) -> Result<Vec<u8>> {
    let cipher = cipher(key)?;
    let rejected = || Error::AttachmentChunk {
        index,
        count: layout.chunk_count(),
    };
    if layout.ciphertext_len_of(index) != Some(ciphertext.len()) {
        return Err(rejected());
    }
    let nonce = layout.nonce(index);
    let aad = layout.aad();
    cipher
        .decrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: ciphertext,
                aad: &aad,
            },
        )
        .map_err(|_| rejected())
}

/// Encrypts a file chunk by chunk, in order.
pub struct ChunkSealer {
    key: [u8; AEAD_KEY_LEN],
    layout: ChunkLayout,
    next: u64,
}

impl ChunkSealer {
    /// A sealer for a file with `layout` under `key` (32 bytes).
    pub fn new(key: &[u8], layout: ChunkLayout) -> Result<Self> {
        cipher(key)?;
        let mut owned = [0u8; AEAD_KEY_LEN];
        owned.copy_from_slice(key);
        Ok(ChunkSealer {
            key: owned,
            layout,
            next: 0,
        })
    }

    /// The index of the next chunk to seal, or `None` when every chunk was sealed.
    pub fn next_index(&self) -> Option<u64> {
        (self.next < self.layout.chunk_count()).then_some(self.next)
    }

    /// Plaintext length the next chunk must have (`None` when done).
    pub fn next_len(&self) -> Option<usize> {
        self.layout.plaintext_len(self.next)
    }

    /// Seals the next chunk.
    pub fn seal_next(&mut self, plaintext: &[u8]) -> Result<Vec<u8>> {
        let sealed = seal_chunk(&self.key, &self.layout, self.next, plaintext)?;
        self.next += 1;
        Ok(sealed)
    }
}

impl Drop for ChunkSealer {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.key);
    }
}

/// Decrypts a file chunk by chunk, in order, and notices a missing end.
pub struct ChunkOpener {
    key: [u8; AEAD_KEY_LEN],
    layout: ChunkLayout,
    next: u64,
}

impl ChunkOpener {
    /// An opener for a file with `layout` under `key` (32 bytes).
    pub fn new(key: &[u8], layout: ChunkLayout) -> Result<Self> {
        cipher(key)?;
        let mut owned = [0u8; AEAD_KEY_LEN];
        owned.copy_from_slice(key);
        Ok(ChunkOpener {
            key: owned,
            layout,
            next: 0,
        })
    }

    /// Ciphertext length of the next chunk (`None` when every chunk was opened).
    pub fn next_len(&self) -> Option<usize> {
        self.layout.ciphertext_len_of(self.next)
    }

    /// Opens the next chunk.
    pub fn open_next(&mut self, ciphertext: &[u8]) -> Result<Vec<u8>> {
        let plain = open_chunk(&self.key, &self.layout, self.next, ciphertext)?;
        self.next += 1;
        Ok(plain)
    }

    /// Succeeds only when every chunk, the last one included, was opened: a
    /// stream that ended early is an error naming the first missing chunk.
    pub fn finish(&self) -> Result<()> {
        if self.next == self.layout.chunk_count() {
            Ok(())
        } else {
            Err(Error::AttachmentChunk {
                index: self.next,
                count: self.layout.chunk_count(),
            })
        }
    }
}

impl Drop for ChunkOpener {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [7; 32];

    fn plaintext(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    fn seal_all(layout: ChunkLayout, data: &[u8]) -> Vec<Vec<u8>> {
        let mut sealer = ChunkSealer::new(&KEY, layout).unwrap();
        let mut chunks = Vec::new();
        let mut offset = 0;
        while let Some(len) = sealer.next_len() {
            chunks.push(sealer.seal_next(&data[offset..offset + len]).unwrap());
            offset += len;
        }
        assert_eq!(offset, data.len());
        assert!(sealer.next_index().is_none());
        chunks
    }

    fn open_all(layout: ChunkLayout, chunks: &[Vec<u8>]) -> Result<Vec<u8>> {
        let mut opener = ChunkOpener::new(&KEY, layout)?;
        let mut out = Vec::new();
        for chunk in chunks {
            out.extend(opener.open_next(chunk)?);
        }
        opener.finish()?;
        Ok(out)
    }

    #[test]
    fn round_trips_with_the_documented_layout() {
        for (size, chunk) in [
            (0u64, 16u32),
            (1, 16),
            (15, 16),
            (16, 16),
            (17, 16),
            (100, 7),
            (64, 64),
        ] {
            let layout = ChunkLayout::new(size, chunk).unwrap();
            let data = plaintext(size as usize);
            let chunks = seal_all(layout, &data);
            assert_eq!(chunks.len() as u64, layout.chunk_count());
            let total: usize = chunks.iter().map(Vec::len).sum();
            assert_eq!(total as u64, layout.ciphertext_len());
            assert_eq!(open_all(layout, &chunks).unwrap(), data);
        }
    }

    #[test]
    fn an_empty_file_is_one_sealed_empty_chunk() {
        let layout = ChunkLayout::new(0, DEFAULT_CHUNK_SIZE).unwrap();
        assert_eq!(layout.chunk_count(), 1);
        assert_eq!(layout.ciphertext_len(), AEAD_TAG_LEN as u64);
        let chunks = seal_all(layout, &[]);
        assert_eq!(chunks[0].len(), AEAD_TAG_LEN);
        assert_eq!(open_all(layout, &chunks).unwrap(), Vec::<u8>::new());
        // Nothing at all is not an empty file.
        assert_eq!(
            open_all(layout, &[]),
            Err(Error::AttachmentChunk { index: 0, count: 1 })
        );
    }

    #[test]
    fn an_exact_multiple_has_no_extra_chunk_and_its_last_chunk_is_flagged() {
        let layout = ChunkLayout::new(48, 16).unwrap();
        assert_eq!(layout.chunk_count(), 3);
        assert_eq!(layout.plaintext_len(2), Some(16));
        assert_eq!(layout.plaintext_len(3), None);
        assert!(layout.is_last(2));
        let data = plaintext(48);
        let chunks = seal_all(layout, &data);
        // Dropping the last chunk of a 48-byte file and claiming 32 bytes fails:
        // chunk 1 was sealed as not last, and the size is in the associated data.
        let shorter = ChunkLayout::new(32, 16).unwrap();
        assert_eq!(
            open_all(shorter, &chunks[..2]),
            Err(Error::AttachmentChunk { index: 0, count: 2 })
        );
    }

    #[test]
    fn the_nonce_is_index_and_last_flag() {
        let layout = ChunkLayout::new(40, 16).unwrap();
        assert_eq!(layout.nonce(0), [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(layout.nonce(1), [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
        assert_eq!(layout.nonce(2), [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 1]);
        let mut aad = ATTACHMENT_LABEL.to_vec();
        aad.extend_from_slice(&40u64.to_be_bytes());
        aad.extend_from_slice(&16u32.to_be_bytes());
        assert_eq!(layout.aad(), aad);
    }

    #[test]
    fn deterministic_for_a_key_and_layout() {
        let layout = ChunkLayout::new(5, 4).unwrap();
        let a = seal_all(layout, b"hello");
        let b = seal_all(layout, b"hello");
        assert_eq!(a, b);
        // A pinned vector (checked against Python's `cryptography` ChaCha20Poly1305
        // with the documented nonce and associated data), so the format cannot
        // change unnoticed.
        assert_eq!(hex::encode(&a[1]), "c9e5b57d6099d54e10b1ecd8907f0b004c");
        assert_eq!(a[0].len(), 4 + AEAD_TAG_LEN);
        assert_eq!(a[1].len(), 1 + AEAD_TAG_LEN);
    }

    #[test]
    fn a_tampered_chunk_is_named() {
        let layout = ChunkLayout::new(50, 16).unwrap();
        let mut chunks = seal_all(layout, &plaintext(50));
        chunks[2][3] ^= 1;
        let err = open_all(layout, &chunks).unwrap_err();
        assert_eq!(err, Error::AttachmentChunk { index: 2, count: 4 });
        assert!(err.to_string().contains("chunk 2 of 4"), "{err}");
        // A tampered tag as well.
        let mut chunks = seal_all(layout, &plaintext(50));
        let last = chunks[3].len() - 1;
        chunks[3][last] ^= 0x80;
        assert_eq!(
            open_all(layout, &chunks),
            Err(Error::AttachmentChunk { index: 3, count: 4 })
        );
    }

    #[test]
    fn reordered_or_duplicated_chunks_fail() {
        let layout = ChunkLayout::new(64, 16).unwrap();
        let chunks = seal_all(layout, &plaintext(64));
        let mut swapped = chunks.clone();
        swapped.swap(1, 2);
        assert_eq!(
            open_all(layout, &swapped),
            Err(Error::AttachmentChunk { index: 1, count: 4 })
        );
        let mut repeated = chunks.clone();
        repeated[3] = chunks[2].clone();
        assert_eq!(
            open_all(layout, &repeated),
            Err(Error::AttachmentChunk { index: 3, count: 4 })
        );
    }

    #[test]
    fn truncation_fails_at_the_first_missing_chunk_or_byte() {
        let layout = ChunkLayout::new(64, 16).unwrap();
        let chunks = seal_all(layout, &plaintext(64));
        assert_eq!(
            open_all(layout, &chunks[..3]),
            Err(Error::AttachmentChunk { index: 3, count: 4 })
        );
        let mut cut = chunks.clone();
        cut[3].pop();
        assert_eq!(
            open_all(layout, &cut),
            Err(Error::AttachmentChunk { index: 3, count: 4 })
        );
        // Claiming a different size or chunk size breaks the first chunk.
        for (size, chunk) in [(63, 16), (64, 32)] {
            let other = ChunkLayout::new(size, chunk).unwrap();
            assert!(matches!(
                open_all(other, &chunks),
                Err(Error::AttachmentChunk { index: 0, .. })
            ));
        }
    }

    #[test]
    fn a_wrong_key_fails_and_bad_parameters_are_refused() {
        let layout = ChunkLayout::new(10, 4).unwrap();
        let chunks = seal_all(layout, &plaintext(10));
        let mut opener = ChunkOpener::new(&[8; 32], layout).unwrap();
        assert!(opener.open_next(&chunks[0]).is_err());
        assert!(ChunkOpener::new(&[8; 31], layout).is_err());
        assert!(ChunkLayout::new(10, 0).is_err());
        assert!(ChunkLayout::new(10, MAX_CHUNK_SIZE + 1).is_err());
        assert!(ChunkLayout::new(u64::MAX, 1).is_err());
        let mut sealer = ChunkSealer::new(&KEY, layout).unwrap();
        assert!(sealer.seal_next(b"abc").is_err());
        assert!(seal_chunk(&KEY, &layout, 2, b"xx").is_ok());
        assert!(seal_chunk(&KEY, &layout, 3, b"").is_err());
    }
}
