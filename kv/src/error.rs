//! The KV layer's one error type.

/// Result alias used throughout the KV layer.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in a transaction against a backend.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Another transaction wrote a key this one wrote (or, on stricter backends, read)
    /// after this one started. Nothing was written; the whole transaction may be re-run.
    #[error("transaction conflict: {0}")]
    Conflict(String),
    /// The commit may or may not have been applied (for example the durable sync or
    /// the TiKV commit RPC failed after the primary key was prewritten). Callers must
    /// not assume either outcome; idempotent operations can be re-issued.
    #[error("commit outcome undetermined: {0}")]
    Undetermined(String),
    /// The backend cannot serve requests right now (I/O failure, cluster unreachable,
    /// store closed). Nothing was committed by the failing call.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// The retry helper gave up: attempts or the deadline ran out while the
    /// transaction kept conflicting.
    #[error("transaction gave up after {attempts} attempts: {last}")]
    RetriesExhausted {
        /// How many times the transaction body ran.
        attempts: u32,
        /// The conflict of the last attempt.
        last: Box<Error>,
    },
    /// The caller broke a limit of the KV layer (a value too large, a write in a
    /// read-only transaction).
    #[error("invalid request: {0}")]
    Invalid(String),
}

impl Error {
    /// True when re-running the whole transaction may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Conflict(_))
    }
}

/// An error a transaction body may end with: a KV error, or a richer error of the
/// layer above that wraps one. The retry helper re-runs the body when
/// [`TxnError::into_retryable`] hands back a retryable KV error.
pub trait TxnError: From<Error> + std::fmt::Display {
    /// The KV error inside when re-running the transaction may succeed; the error
    /// itself otherwise.
    fn into_retryable(self) -> Result<Error, Self>;
}

impl TxnError for Error {
    fn into_retryable(self) -> Result<Error, Self> {
        if self.is_retryable() {
            Ok(self)
        } else {
            Err(self)
        }
    }
}
