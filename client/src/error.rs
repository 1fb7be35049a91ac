//! The client's one error type.
//!
//! Every variant renders as a single human-readable line (the CLI prints it as is),
//! never as a debug dump, and never contains key material.

use rossby_protocol::pb;
use std::path::PathBuf;

/// Result alias for the client.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done, e.g. "cannot read state file".
        what: &'static str,
        /// The file concerned.
        path: PathBuf,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// There is no state file where one is needed.
    #[error(
        "no state file at {}: run `rossby register <identifier>` or `rossby link --new` first",
        .0.display()
    )]
    NoState(PathBuf),
    /// The state file is protected by a passphrase and none was given.
    #[error(
        "the state file {} is protected by a passphrase: set ROSSBY_PASSPHRASE or use --passphrase-file",
        .0.display()
    )]
    PassphraseRequired(PathBuf),
    /// The state file could not be decrypted.
    #[error(
        "cannot decrypt the state file {}: wrong passphrase or key file, or the file is corrupt",
        .0.display()
    )]
    StateDecrypt(PathBuf),
    /// Another client (in this or another process) has the state open.
    #[error(
        "the state file {} is in use by another client or process; close it first",
        .0.display()
    )]
    StateInUse(PathBuf),
    /// The state file is not a Rossby state file, or has an unsupported format.
    #[error("invalid state file {}: {reason}", path.display())]
    StateFormat {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The device has not completed registration (or linking).
    #[error(
        "this device is not authorized yet: run `rossby register` and `rossby authorize`, or link it"
    )]
    NotAuthorized,
    /// `authorize` without a pending registration.
    #[error("no registration is pending: run `rossby register <identifier>` first")]
    NoPendingRegistration,
    /// The device is authorized already.
    #[error("this device is already authorized for box {0}")]
    AlreadyAuthorized(String),
    /// An argument is invalid.
    #[error("{0}")]
    Invalid(String),
    /// Bad configuration (certificates, addresses, service name).
    #[error("configuration error: {0}")]
    Config(String),
    /// The gateway could not be reached or the connection broke, after retries.
    #[error("cannot reach the gateway at {addr}: {reason}")]
    Unreachable {
        /// The gateway's address.
        addr: String,
        /// The last failure.
        reason: String,
    },
    /// The gateway answered with a non-OK status.
    #[error("gateway answered {}: {message}", status_name(*.status))]
    Status {
        /// The status.
        status: pb::Status,
        /// The gateway's explanation.
        message: String,
    },
    /// The gateway sent something that does not decode or make sense.
    #[error("unexpected reply from the gateway: {0}")]
    BadReply(String),
    /// A recipient or contact does not exist, or cannot be reached by us.
    #[error(
        "unknown recipient {0} (not registered, not discoverable, or not accepting messages from you)"
    )]
    UnknownRecipient(String),
    /// A cryptographic operation failed (bad signature, undecryptable envelope...).
    #[error("cryptographic failure: {0}")]
    Crypto(String),
    /// A wire-format error from the protocol crate.
    #[error("{0}")]
    Protocol(#[from] rossby_protocol::Error),
    /// A group operation failed (unknown group, MLS failure, a member without
    /// KeyPackages...).
    #[error("group: {0}")]
    Group(String),
}

impl Error {
    /// The gateway status this error carries, if it is one.
    pub fn status(&self) -> Option<pb::Status> {
        match self {
            Error::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            what,
            path: path.into(),
            source,
        }
    }
}

/// A status as its protocol name without the `STATUS_` prefix, e.g. `NOT_FOUND`.
pub fn status_name(status: pb::Status) -> &'static str {
    status
        .as_str_name()
        .strip_prefix("STATUS_")
        .unwrap_or(status.as_str_name())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_render_as_one_line() {
        let e = Error::Status {
            status: pb::Status::NotFound,
            message: "no such user".into(),
        };
        assert_eq!(e.to_string(), "gateway answered NOT_FOUND: no such user");
        assert_eq!(e.status(), Some(pb::Status::NotFound));
        let e = Error::StateDecrypt("/tmp/x".into());
        assert!(!e.to_string().contains('\n'));
    }
}
