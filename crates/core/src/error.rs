//! One error-code enum with exactly one mapping to `tonic::Code` and to HTTP
//! status; every service error names its code through [`ServiceError`].

use tonic_types::{ErrorDetails, StatusExt};

/// What kind of failure an error is, independent of transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidArgument,
    NotFound,
    AlreadyExists,
    FailedPrecondition,
    PayloadTooLarge,
    Unauthenticated,
    PermissionDenied,
    Unavailable,
    Cancelled,
    Internal,
}

impl ErrorCode {
    /// The gRPC status code.
    pub fn grpc(self) -> tonic::Code {
        match self {
            ErrorCode::InvalidArgument => tonic::Code::InvalidArgument,
            ErrorCode::NotFound => tonic::Code::NotFound,
            ErrorCode::AlreadyExists => tonic::Code::AlreadyExists,
            ErrorCode::FailedPrecondition => tonic::Code::FailedPrecondition,
            ErrorCode::PayloadTooLarge => tonic::Code::ResourceExhausted,
            ErrorCode::Unauthenticated => tonic::Code::Unauthenticated,
            ErrorCode::PermissionDenied => tonic::Code::PermissionDenied,
            ErrorCode::Unavailable => tonic::Code::Unavailable,
            ErrorCode::Cancelled => tonic::Code::Cancelled,
            ErrorCode::Internal => tonic::Code::Internal,
        }
    }

    /// The HTTP status.
    pub fn http(self) -> http::StatusCode {
        match self {
            ErrorCode::InvalidArgument => http::StatusCode::BAD_REQUEST,
            ErrorCode::NotFound => http::StatusCode::NOT_FOUND,
            ErrorCode::AlreadyExists => http::StatusCode::CONFLICT,
            ErrorCode::FailedPrecondition => http::StatusCode::CONFLICT,
            ErrorCode::PayloadTooLarge => http::StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::Unauthenticated => http::StatusCode::UNAUTHORIZED,
            ErrorCode::PermissionDenied => http::StatusCode::FORBIDDEN,
            ErrorCode::Unavailable => http::StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Cancelled => http::StatusCode::from_u16(499).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR),
            ErrorCode::Internal => http::StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Whether the same call may succeed later, unchanged: the service or
    /// what it depends on is unreachable or overloaded for now.
    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorCode::Unavailable)
    }

    /// Whether the caller's request is at fault (an HTTP 4xx).
    pub fn is_caller_error(self) -> bool {
        self.http().is_client_error()
    }

    /// The code of a gRPC status, for transcoding a status back to HTTP.
    pub fn from_grpc(code: tonic::Code) -> ErrorCode {
        match code {
            tonic::Code::InvalidArgument | tonic::Code::OutOfRange => ErrorCode::InvalidArgument,
            tonic::Code::NotFound => ErrorCode::NotFound,
            tonic::Code::AlreadyExists | tonic::Code::Aborted => ErrorCode::AlreadyExists,
            tonic::Code::FailedPrecondition => ErrorCode::FailedPrecondition,
            tonic::Code::ResourceExhausted => ErrorCode::PayloadTooLarge,
            tonic::Code::Unauthenticated => ErrorCode::Unauthenticated,
            tonic::Code::PermissionDenied => ErrorCode::PermissionDenied,
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => ErrorCode::Unavailable,
            tonic::Code::Cancelled => ErrorCode::Cancelled,
            tonic::Code::Ok
            | tonic::Code::Unknown
            | tonic::Code::Unimplemented
            | tonic::Code::Internal
            | tonic::Code::DataLoss => ErrorCode::Internal,
        }
    }
}

/// What another service answered, in the error model: the one conversion
/// of a received `tonic::Status`. A call that never got an answer (the
/// connection failed or was lost mid-call) is [`ErrorCode::Unavailable`],
/// whatever code the transport reported, so the caller knows a retry can help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RemoteError {
    pub code: ErrorCode,
    pub message: String,
    /// The call got no answer: the connection failed or was lost mid-call.
    pub lost: bool,
}

impl RemoteError {
    /// Whether calling again may succeed.
    pub fn is_retryable(&self) -> bool {
        self.code.is_retryable()
    }
}

impl From<&tonic::Status> for RemoteError {
    fn from(status: &tonic::Status) -> RemoteError {
        use std::error::Error as _;
        // tonic reports a failed or broken connection as UNKNOWN with the
        // transport's error as source, and a stream reset as CANCELLED: a
        // batchmill service never cancels a call it forwards or makes.
        let transport = status.source().is_some_and(|s| s.downcast_ref::<tonic::transport::Error>().is_some());
        let lost = transport || status.code() == tonic::Code::Cancelled;
        let code = if lost { ErrorCode::Unavailable } else { ErrorCode::from_grpc(status.code()) };
        RemoteError { code, message: status.message().to_owned(), lost }
    }
}

impl From<tonic::Status> for RemoteError {
    fn from(status: tonic::Status) -> RemoteError {
        RemoteError::from(&status)
    }
}

/// A request field that is wrong, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {description}")]
pub struct FieldViolation {
    /// Path of the field in the request, in proto names (`item_list.batch_size`).
    pub field: String,
    /// What is wrong with it.
    pub description: String,
}

impl FieldViolation {
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        FieldViolation { field: field.into(), description: description.into() }
    }
}

impl From<FieldViolation> for tonic::Status {
    fn from(v: FieldViolation) -> Self {
        let mut details = ErrorDetails::new();
        details.add_bad_request_violation(v.field.clone(), v.description.clone());
        tonic::Status::with_error_details(tonic::Code::InvalidArgument, v.to_string(), details)
    }
}

/// An error a service returns across its API.
pub trait ServiceError: std::error::Error {
    fn code(&self) -> ErrorCode;

    /// The gRPC status of this error; its message is the error's display.
    fn to_status(&self) -> tonic::Status {
        tonic::Status::new(self.code().grpc(), self.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_violation_status_names_field() {
        let status: tonic::Status = FieldViolation::new("item_list.batch_size", "must be at least 1").into();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(status.message(), "item_list.batch_size: must be at least 1");
        let details = status.get_error_details();
        let bad = details.bad_request().expect("bad request details");
        assert_eq!(bad.field_violations[0].field, "item_list.batch_size");
    }

    #[test]
    fn a_received_status_says_whether_a_retry_can_help() {
        let lost = RemoteError::from(&tonic::Status::cancelled("stream reset"));
        assert!(lost.lost && lost.is_retryable());
        assert_eq!(lost.code, ErrorCode::Unavailable);
        let down = RemoteError::from(&tonic::Status::unavailable("no leader"));
        assert!(!down.lost && down.is_retryable());
        let bad = RemoteError::from(&tonic::Status::invalid_argument("batch_size: must be at least 1"));
        assert!(!bad.is_retryable() && bad.code.is_caller_error());
        assert_eq!(bad.to_string(), "batch_size: must be at least 1");
        let unknown = RemoteError::from(&tonic::Status::unknown("boom"));
        assert_eq!((unknown.code, unknown.lost), (ErrorCode::Internal, false));
    }

    #[test]
    fn grpc_http_round_trip_is_consistent() {
        for code in [
            ErrorCode::InvalidArgument,
            ErrorCode::NotFound,
            ErrorCode::AlreadyExists,
            ErrorCode::FailedPrecondition,
            ErrorCode::PayloadTooLarge,
            ErrorCode::Unauthenticated,
            ErrorCode::PermissionDenied,
            ErrorCode::Unavailable,
            ErrorCode::Cancelled,
            ErrorCode::Internal,
        ] {
            assert_eq!(ErrorCode::from_grpc(code.grpc()), code);
        }
        assert_eq!(ErrorCode::InvalidArgument.http(), http::StatusCode::BAD_REQUEST);
        assert_eq!(ErrorCode::NotFound.http(), http::StatusCode::NOT_FOUND);
    }
}
