//! The keyspace crate's one error type.

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why an identifier, id or key was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A phone number is not in E.164 form after removing separators.
    #[error("invalid phone number: {0}")]
    InvalidPhone(&'static str),
    /// An e-mail address is malformed.
    #[error("invalid e-mail address: {0}")]
    InvalidEmail(&'static str),
    /// A textual or binary id could not be parsed.
    #[error("invalid {kind}: {reason}")]
    InvalidId {
        /// Which id type.
        kind: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// Bytes are not a key of any known table.
    #[error("malformed key: {0}")]
    MalformedKey(&'static str),
    /// The lookup hasher was given unusable peppers.
    #[error("invalid pepper configuration: {0}")]
    InvalidPepper(String),
}
