//! batchmill's domain vocabulary, shared by every service: newtype ids, the
//! job model and its validation, S3 URIs, and the one error-code enum that
//! maps to gRPC and HTTP status.

pub mod embed;
pub mod enqueue;
pub mod error;
pub mod finalize;
pub mod glob;
pub mod ids;
pub mod job;
pub mod json;
pub mod time;
pub mod uri;

pub use error::{ErrorCode, FieldViolation, ServiceError};
pub use ids::{BatchId, JobId, WorkerId};
pub use job::{JobSpec, JobState, S3Selection, SourceSpec};
pub use uri::S3Uri;
