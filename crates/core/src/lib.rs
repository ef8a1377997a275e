//! batchmill's domain vocabulary, shared by every service: newtype ids, the
//! job model and its validation, the batch contract (result keys, endings,
//! JetStream names), S3 URIs, the clock, and the one error-code enum that
//! maps to gRPC and HTTP status.

pub mod access;
pub mod backoff;
pub mod batch;
pub mod client_tls;
pub mod embed;
pub mod enqueue;
pub mod error;
pub mod fence;
pub mod files;
pub mod finalize;
pub mod glob;
pub mod identity;
pub mod ids;
pub mod job;
pub mod json;
pub mod metrics;
pub mod named;
pub mod project;
pub mod queues;
pub mod sealed;
pub mod subjects;
pub mod time;
pub mod uri;

pub use error::{ErrorCode, FieldViolation, RemoteError, ServiceError};
pub use identity::{Caller, Owner, Role};
pub use ids::{BatchId, JobId, WorkerId};
pub use job::{FailureReason, JobSpec, JobState, S3Selection, SourceSpec};
pub use time::Clock;
pub use uri::{S3Uri, UriError};
