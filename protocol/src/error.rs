//! The protocol crate's one error type.

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why bytes could not be turned into a protocol value, or a signature or
/// ciphertext did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A frame's declared length exceeds the limit.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// Declared length.
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// The input ended inside a frame.
    #[error("truncated frame")]
    Truncated,
    /// Protobuf decoding failed.
    #[error("malformed {what}: {detail}")]
    Malformed {
        /// Which message.
        what: &'static str,
        /// Decoder's complaint.
        detail: String,
    },
    /// Hawk header missing, unparsable or not matching.
    #[error("authentication failed: {0}")]
    Auth(String),
    /// A key, signature or ciphertext is invalid.
    #[error("cryptographic failure: {0}")]
    Crypto(String),
    /// A chunk of an attachment did not authenticate, or is missing: the
    /// download was tampered with, truncated, reordered or is of another file.
    #[error(
        "attachment chunk {index} of {count} is corrupt, missing or out of order (tampered or truncated download)"
    )]
    AttachmentChunk {
        /// Zero-based index of the first chunk that failed.
        index: u64,
        /// How many chunks the attachment has.
        count: u64,
    },
}
