//! Accounts and their API keys, stored in etcd through the [`Kv`] trait:
//! creating, listing and revoking them with the caller's role checked, and
//! authenticating a request's key into a [`Caller`].
//!
//! An object the caller may not see answers [`AccountError::NotFound`], as
//! if it did not exist; one it may see but not change answers
//! [`AccountError::PermissionDenied`].

mod key;
mod records;
mod store;

pub use key::{NoRandomness, SecretKey, from_authorization};
pub use records::{ACCOUNTS_PREFIX, AccountRecord, KEYS_PREFIX, KeyRecord, Limits};
pub use store::Accounts;

use batchmill_coord::CoordError;
use batchmill_core::{ErrorCode, FieldViolation, ServiceError};

/// Errors of account and key operations.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("{0}")]
    Unauthenticated(&'static str),
    #[error("{what} not found")]
    NotFound { what: String },
    #[error("{0}")]
    PermissionDenied(String),
    #[error("account {0} already exists")]
    AlreadyExists(String),
    #[error("{0}")]
    Invalid(#[from] FieldViolation),
    #[error("account store: {0}")]
    Store(#[from] CoordError),
    #[error("{key} holds no valid record: {message}")]
    Corrupt { key: String, message: String },
    #[error("{0}")]
    Randomness(#[from] NoRandomness),
}

impl ServiceError for AccountError {
    fn code(&self) -> ErrorCode {
        match self {
            AccountError::Unauthenticated(_) => ErrorCode::Unauthenticated,
            AccountError::NotFound { .. } => ErrorCode::NotFound,
            AccountError::PermissionDenied(_) => ErrorCode::PermissionDenied,
            AccountError::AlreadyExists(_) => ErrorCode::AlreadyExists,
            AccountError::Invalid(_) => ErrorCode::InvalidArgument,
            AccountError::Store(e) if e.is_transient() => ErrorCode::Unavailable,
            AccountError::Store(_) | AccountError::Corrupt { .. } | AccountError::Randomness(_) => ErrorCode::Internal,
        }
    }

    fn to_status(&self) -> tonic::Status {
        match self {
            AccountError::Invalid(v) => v.clone().into(),
            other => tonic::Status::new(other.code().grpc(), other.to_string()),
        }
    }
}
