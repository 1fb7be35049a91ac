//! Status codes and the shape of error replies.

use crate::pb::{Response, Status};

impl Status {
    /// True for statuses after which repeating the same request may succeed
    /// unchanged (sends are idempotent by message id).
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            Status::RateLimited | Status::Unavailable | Status::Undetermined | Status::Draining
        )
    }
}

/// Builds an error response.
pub fn error_response(status: Status, message: impl Into<String>, server_time_ms: u64) -> Response {
    Response {
        status: status as i32,
        message: message.into(),
        server_time_ms,
        ..Response::default()
    }
}

/// The status of a response, treating numbers this build does not know as
/// [`Status::Internal`].
pub fn status_of(response: &Response) -> Status {
    Status::try_from(response.status).unwrap_or(Status::Internal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_numbers_are_stable() {
        // These numbers are part of the wire protocol (docs/protocol.md).
        let expected = [
            (Status::Ok, 0),
            (Status::BadRequest, 1),
            (Status::UnknownMethod, 2),
            (Status::UnsupportedVersion, 3),
            (Status::Unauthenticated, 4),
            (Status::ClockSkew, 5),
            (Status::Replayed, 6),
            (Status::Forbidden, 7),
            (Status::NotFound, 8),
            (Status::AlreadyRegistered, 9),
            (Status::StaleDevices, 10),
            (Status::InvalidCode, 11),
            (Status::CodeAttemptsExhausted, 12),
            (Status::CodeExpired, 13),
            (Status::RateLimited, 14),
            (Status::QuotaExceeded, 15),
            (Status::TooLarge, 16),
            (Status::AckBeyondLast, 17),
            (Status::Unavailable, 18),
            (Status::Undetermined, 19),
            (Status::Draining, 20),
            (Status::Internal, 21),
            (Status::EpochConflict, 22),
            (Status::NotGroupMember, 23),
            (Status::LastIdentifier, 24),
            (Status::UploadIncomplete, 25),
            (Status::PushProviderUnavailable, 26),
            (Status::RegistrationLocked, 27),
        ];
        for (status, number) in expected {
            assert_eq!(status as i32, number, "{status:?}");
        }
        let unknown = Response {
            status: 999,
            ..Response::default()
        };
        assert_eq!(status_of(&unknown), Status::Internal);
    }
}
