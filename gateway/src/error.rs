//! The gateway crate's error type for everything outside a request: configuration,
//! TLS set-up, I/O on local files and sockets, storage start-up and the API layer's
//! construction. (Request handling never fails: it answers a status code.)

use std::path::Path;

/// Result alias of the gateway crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can stop a gateway from starting (or a configuration from loading).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An option has an invalid value, or options contradict each other. The message
    /// names the option.
    #[error("{0}")]
    Config(String),
    /// The certificate or key could not be loaded, generated or used.
    #[error("tls: {0}")]
    Tls(String),
    /// A local file or socket operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, for example `cannot read /data/secret`.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The store could not be opened or prepared.
    #[error("storage: {0}")]
    Storage(#[from] rossby_storage::Error),
    /// The API layer refused its settings.
    #[error("api: {0}")]
    Api(String),
    /// A backup could not be taken, verified or restored: the stream or file is
    /// damaged or incomplete, the gateway refused it, or the target is not usable.
    #[error("backup: {0}")]
    Backup(String),
}

impl Error {
    /// An I/O error with what was being done to which path.
    pub(crate) fn io(what: &str, path: &Path, source: std::io::Error) -> Self {
        Error::Io {
            context: format!("{what} {}", path.display()),
            source,
        }
    }
}

impl From<rossby_storage::kv::Error> for Error {
    fn from(err: rossby_storage::kv::Error) -> Self {
        Error::Storage(err.into())
    }
}
