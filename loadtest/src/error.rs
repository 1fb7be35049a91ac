//! The load generator's one error type. Every variant renders as one line that
//! says what to change.

use std::path::PathBuf;

/// Result alias for the load generator.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a load test could not be set up or run. Delivery failures are not errors:
/// they are counted in the report and fail the run through its verdict.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The scenario (flags or file) is invalid.
    #[error("invalid scenario: {0}")]
    Scenario(String),
    /// A file could not be read or written.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// The topology file is invalid.
    #[error("invalid topology {}: {source}", path.display())]
    Topology {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        source: Box<rossby_replication::Error>,
    },
    /// A gateway address of the topology cannot be used.
    #[error("gateway address {addr:?} of region {region}: {reason}")]
    Address {
        /// The region.
        region: String,
        /// The address as written.
        addr: String,
        /// What is wrong.
        reason: String,
    },
    /// The state directory does not hold what this scenario needs.
    #[error("state directory {}: {reason}", path.display())]
    StateDir {
        /// The directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Provisioning a user or device failed.
    #[error("provisioning {who}: {reason}")]
    Provision {
        /// The user or device.
        who: String,
        /// What failed.
        reason: String,
    },
    /// A client SDK call failed outside the measured run.
    #[error("{context}: {source}")]
    Client {
        /// What was being done.
        context: String,
        /// The SDK's error.
        source: Box<rossby_client::Error>,
    },
    /// The local deployment could not start.
    #[error("cannot start the local deployment: {0}")]
    Local(String),
    /// A phase did not finish before its hard deadline.
    #[error("{phase} did not finish within its hard deadline of {seconds} s")]
    Deadline {
        /// The phase.
        phase: &'static str,
        /// The deadline.
        seconds: u64,
    },
    /// Reports cannot be merged.
    #[error("cannot merge: {0}")]
    Merge(String),
    /// The async runtime could not be built.
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
}

impl Error {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            what,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn client(context: impl Into<String>, source: rossby_client::Error) -> Self {
        Error::Client {
            context: context.into(),
            source: Box::new(source),
        }
    }
}
