//! The operator commands' one error type.
//!
//! Every variant renders as a single line (the binary prints it as is after
//! `rossby-admin: `), naming the file or the PD it concerns.

use std::path::PathBuf;

/// Result alias for the operator commands.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why an operator command failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done, e.g. "cannot read topology file".
        what: &'static str,
        /// The file concerned.
        path: PathBuf,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// An argument is invalid.
    #[error("{0}")]
    Invalid(String),
    /// A topology file is invalid, or its placement cannot meet its survival goal.
    #[error("invalid topology {}: {source}", path.display())]
    Topology {
        /// The topology file.
        path: PathBuf,
        /// What the geography crate found wrong.
        source: rossby_replication::Error,
    },
    /// PD could not be reached, or did not answer in time.
    #[error("cannot reach PD at {url}: {reason}")]
    PdUnreachable {
        /// PD's URL.
        url: String,
        /// What failed.
        reason: String,
    },
    /// PD answered a request with a non-2xx status.
    #[error("PD at {url} answered {request} with HTTP {status}: {body}")]
    PdStatus {
        /// PD's URL.
        url: String,
        /// Method and path of the request.
        request: String,
        /// The HTTP status code.
        status: u16,
        /// PD's explanation (the answer's body, shortened).
        body: String,
    },
    /// PD has the placement rules feature disabled, so it refuses rules.
    #[error(
        "PD at {url} has placement rules disabled: enable them with `pd-ctl -u {url} config placement-rules enable` (or set replication.enable-placement-rules = true in PD's configuration) and retry"
    )]
    PlacementRulesDisabled {
        /// PD's URL.
        url: String,
    },
    /// PD accepted the rules but reads back something else.
    #[error("PD at {url} does not hold the rules as sent: {reason}")]
    PdMismatch {
        /// PD's URL.
        url: String,
        /// The first difference found.
        reason: String,
    },
    /// PD answered with something that is not what its API documents.
    #[error("unexpected answer from PD at {url} to {request}: {reason}")]
    PdAnswer {
        /// PD's URL.
        url: String,
        /// Method and path of the request.
        request: String,
        /// What does not parse or make sense.
        reason: String,
    },
    /// The prober could not open, register or use its account.
    #[error("prober of region {region}: {reason}")]
    Prober {
        /// The prober's region.
        region: String,
        /// What failed.
        reason: String,
    },
    /// A backup or restore failed (the gateway library says why).
    #[error("{0}")]
    Gateway(#[from] rossby_gateway::error::Error),
}

impl Error {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            what,
            path: path.into(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_render_as_one_line() {
        let e = Error::PdStatus {
            url: "http://pd:2379".into(),
            request: "GET /pd/api/v1/regions".into(),
            status: 500,
            body: "boom".into(),
        };
        assert_eq!(
            e.to_string(),
            "PD at http://pd:2379 answered GET /pd/api/v1/regions with HTTP 500: boom"
        );
        let e = Error::io(
            "cannot read topology file",
            "/x.toml",
            std::io::Error::from(std::io::ErrorKind::NotFound),
        );
        assert!(!e.to_string().contains('\n'));
    }
}
