//! The domain crate's one error type.

use rossby_keyspace::{BoxId, DeviceId};

/// Result alias used throughout the storage crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in a domain transaction.
///
/// [`Error::Kv`] describes the transaction itself and is what the retry helper
/// looks at; the rest are domain outcomes that a caller turns into a status code
/// for the client.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The transaction itself failed in the KV layer (a conflict the retry helper
    /// gave up on, an undetermined commit, an unavailable backend, a KV limit).
    #[error(transparent)]
    Kv(#[from] rossby_kv::Error),
    /// A stored record could not be decoded. The data is left untouched.
    #[error("corrupt {what} record: {detail}")]
    Corrupt {
        /// Which table the record came from.
        what: &'static str,
        /// The decoder's complaint.
        detail: String,
    },
    /// The caller broke a documented limit or precondition.
    #[error("invalid request: {0}")]
    Invalid(String),

    /// The box does not exist (or is being deleted).
    #[error("box not found")]
    BoxNotFound,
    /// The device does not belong to the box.
    #[error("device not found")]
    DeviceNotFound,
    /// A box with this id already exists.
    #[error("box {0} already exists")]
    BoxExists(BoxId),
    /// A device with this id already exists in the box.
    #[error("device {0} already exists")]
    DeviceExists(DeviceId),
    /// The identifier is already bound to a box.
    #[error("identifier already registered")]
    AlreadyRegistered,
    /// The sender's view of the recipient's devices is out of date: the current
    /// device-list version and devices are returned so it can re-encrypt.
    #[error("device list changed (current version {version})")]
    StaleDeviceList {
        /// The box whose device list changed.
        box_id: BoxId,
        /// The current device-list version.
        version: u64,
        /// The devices currently authorized to receive messages.
        devices: Vec<DeviceId>,
    },
    /// The envelope names the current device-list version, but its key wraps
    /// are not for exactly that list's devices (the sending device left out of
    /// its own box's copy): no device could read it, or one could not.
    #[error(
        "the envelope's key wraps do not match device list version {version}: {} missing, {} not in the list",
        missing.len(),
        unexpected.len()
    )]
    KeyWrapsMismatch {
        /// The current device-list version.
        version: u64,
        /// Devices of the list without a wrap.
        missing: Vec<DeviceId>,
        /// Wraps for devices not in the list (or named twice).
        unexpected: Vec<DeviceId>,
    },
    /// The recipient does not accept messages from this sender (blocked, contacts
    /// only, or unknown). Deliberately indistinguishable from an unknown box.
    #[error("recipient unavailable")]
    RecipientUnavailable,
    /// An acknowledgement named a sequence number that was never assigned.
    #[error("ack {requested} is beyond the last sequence number {last}")]
    AckBeyondLast {
        /// The sequence number the device asked to acknowledge.
        requested: u64,
        /// The highest sequence number assigned so far in the box.
        last: u64,
    },
    /// A per-box or per-device quota is full.
    #[error("quota exceeded: {0}")]
    QuotaExceeded(String),
    /// The identifier is not bound to the box the operation is about.
    #[error("identifier not bound to this box")]
    IdentifierNotBound,
    /// Removing the identifier would leave the box with none.
    #[error("the last identifier of a box cannot be removed")]
    LastIdentifier,
    /// The attachment blob is unknown, not complete, expired or being deleted
    /// (one outcome, so none of these can be told apart).
    #[error("blob not found")]
    BlobNotFound,
    /// CompleteUpload before every part was stored.
    #[error("{} of the upload's parts are missing", missing.len())]
    UploadIncomplete {
        /// The missing part numbers, ascending.
        missing: Vec<u32>,
    },
    /// A size or count exceeds a limit (for example an attachment's size).
    #[error("too large: {0}")]
    TooLarge(String),
    /// The caller may not do this (for example remove others from a group it
    /// did not create).
    #[error("forbidden: {0}")]
    Forbidden(String),
}

impl Error {
    /// True when re-running the whole transaction may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Kv(err) if err.is_retryable())
    }

    /// A write-write conflict, as the KV layer reports it (the domain detects some
    /// itself, for example an epoch that moved on).
    pub fn conflict(detail: impl Into<String>) -> Self {
        Error::Kv(rossby_kv::Error::Conflict(detail.into()))
    }

    pub(crate) fn corrupt(what: &'static str, err: impl std::fmt::Display) -> Self {
        Error::Corrupt {
            what,
            detail: err.to_string(),
        }
    }
}

impl rossby_kv::TxnError for Error {
    fn into_retryable(self) -> std::result::Result<rossby_kv::Error, Self> {
        match self {
            Error::Kv(err) if err.is_retryable() => Ok(err),
            other => Err(other),
        }
    }
}
