//! The scheduler owns the job lifecycle.
//!
//! RPCs: `batchmill.jobs.v1.JobService` and
//! `batchmill.pipelines.v1.PipelineService` (the gateway forwards the public
//! API here) and `batchmill.scheduler.v1.WorkerService/Session` (one stream
//! per worker). Depends on: etcd (leader election, jobs and ledgers, enqueue
//! progress, completion-hook claims), the enqueuer and the lister (gRPC),
//! JetStream (per-job consumers, dead letters, records, logs, advisories)
//! and S3 (staged inputs, manifests, pipeline files).
//!
//! One leader serves at a time ([`leader`]): a scheduler campaigns in etcd
//! election [`batchmill_coord::SCHEDULER_ELECTION`] with its gRPC URL, and
//! serves jobs only while it leads; standbys answer UNAVAILABLE. A new
//! leader rebuilds every job and ledger from etcd. A leader that loses its
//! lease steps down and campaigns again.
//!
//! Layout, one concern per module:
//! - [`leader`]: [`run`], leadership terms.
//! - `actor.rs`: the task that owns [`State`], and its handle [`Scheduler`];
//!   `submission.rs`: accepting and dry-running submissions.
//! - `state.rs`, `jobs.rs`, `workers.rs`, `persist.rs`, `outcomes.rs`,
//!   `dead_letters.rs`, `finalize.rs`, `manifest.rs`: the state and each
//!   concern of it.
//! - `follow.rs` (etcd watches) and `exhausted.rs` (max-deliveries
//!   advisories): what a leader follows besides its sessions.
//! - `admission.rs` (the plan) and `preempt.rs` (carrying it out):
//!   queues, priorities, quotas, fair share and preemption.
//! - `retry.rs`: RetryJob and RetryFailedItems.
//! - `ledger.rs`, `record.rs`, `pipelines.rs`: what is persisted;
//!   `events.rs`: jobs' event logs, written and read.
//! - `ports.rs`: what it talks to, as traits; `grpc/`: the adapters.

mod actor;
mod admission;
mod built_in;
mod dead_letters;
mod events;
mod exhausted;
mod finalize;
mod follow;
mod grpc;
mod jobs;
pub mod leader;
mod ledger;
#[cfg(test)]
mod ledger_properties;
mod manifest;
pub mod metrics;
mod outcomes;
mod outputs;
mod persist;
mod pipeline_config;
mod pipelines;
mod ports;
mod preempt;
mod record;
mod results;
mod retry;
mod run_policy;
mod state;
mod submission;
mod workers;
mod writable;

pub use actor::Scheduler;
pub use grpc::{JobsGrpc, PipelinesGrpc, SessionGrpc};
pub use leader::{Config, Leading, RunError, Term, run};
pub use ledger::{Ledger, Recorded};
pub use pipelines::{Deployed, Pipelines, PredictorSpec, merge_config};
pub use ports::{EnqueueClient, Ports, SourceProbe, WorkerLink};
pub use record::{Input, JobRecord};
pub use run_policy::{Resources, RunPolicy};
pub use state::{Settings, State};

/// The most items one job may have unless the scheduler is told otherwise
/// (`BATCHMILL_MAX_JOB_ITEMS`): a job's ledger and checkpoints grow with
/// its batches, and a bigger input is better split into several jobs.
pub const DEFAULT_MAX_JOB_ITEMS: u64 = 100_000_000;
pub use workers::Capabilities;

use batchmill_core::{ErrorCode, RemoteError, ServiceError};

/// Errors of the scheduler's API.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error("job {job_id} not found")]
    JobNotFound { job_id: String },
    #[error("pipeline: unknown pipeline {name:?}; this cluster has: {known}")]
    UnknownPipeline { name: String, known: String },
    #[error("staging the job's items: {0}")]
    Staging(batchmill_blob::BlobError),
    #[error("checking the input: {0}")]
    Probe(RemoteError),
    #[error("checking that results can be written to the output location: {0}")]
    OutputUnchecked(batchmill_blob::BlobError),
    #[error("{field}: {message}")]
    BadSource { field: String, message: String },
    #[error("job {job_id} could not be recorded in etcd; it was not accepted")]
    NotPersisted { job_id: String },
    #[error("this scheduler is not the leader (it is stopping or standing by); retry")]
    Stopped,
    #[error("the queue: {0}")]
    Queue(batchmill_queue::QueueError),
    #[error("job {job_id}: the dead-letter stream refused the re-run; try again")]
    Rerun { job_id: String },
    #[error("job {job_id} is {state}; only a running job or one completed with failures can re-run dead letters")]
    NotRerunnable { job_id: String, state: String },
    #[error("job {job_id} is {state}; only a FAILED, CANCELLED or TIMED_OUT job can be retried")]
    NotRetryable { job_id: String, state: String },
    #[error("job {job_id} is {state}; its failed items cannot be retried: {why}")]
    NoFailedItems { job_id: String, state: String, why: &'static str },
    #[error("{field}: {batch_id:?} is not a dead-lettered batch of this job")]
    NotDeadLettered { field: String, batch_id: String },
    #[error("{field}: {message}")]
    BadPipeline { field: String, message: String },
    #[error("pipeline {name:?} not found")]
    PipelineNotFound { name: String },
    #[error("storing pipeline file {path}: {source}")]
    PipelineFile { path: String, source: batchmill_blob::BlobError },
    #[error("recording the pipeline: {0}")]
    PipelineRecord(batchmill_coord::CoordError),
    #[error("account {account}: {message}")]
    LimitExceeded { account: String, message: String },
    #[error("{0}")]
    NotAllowed(String),
    #[error("reading results: {0}")]
    Results(batchmill_blob::BlobError),
    #[error("{0}")]
    BadRequest(#[from] batchmill_core::FieldViolation),
    #[error("s3_credentials: {0}")]
    Seal(batchmill_core::sealed::SealError),
    #[error("reading the job's files: {0}")]
    Files(batchmill_coord::CoordError),
    #[error("reading the account: {0}")]
    Account(batchmill_accounts::AccountError),
}

impl ServiceError for SchedulerError {
    fn code(&self) -> ErrorCode {
        match self {
            SchedulerError::JobNotFound { .. } | SchedulerError::PipelineNotFound { .. } => ErrorCode::NotFound,
            SchedulerError::UnknownPipeline { .. }
            | SchedulerError::BadPipeline { .. }
            | SchedulerError::BadSource { .. }
            | SchedulerError::NotDeadLettered { .. } => ErrorCode::InvalidArgument,
            SchedulerError::NotRerunnable { .. }
            | SchedulerError::NotRetryable { .. }
            | SchedulerError::NoFailedItems { .. }
            | SchedulerError::LimitExceeded { .. } => ErrorCode::FailedPrecondition,
            SchedulerError::Account(e) => e.code(),
            SchedulerError::NotAllowed(_) => ErrorCode::PermissionDenied,
            SchedulerError::Results(_) => ErrorCode::Unavailable,
            SchedulerError::BadRequest(_) => ErrorCode::InvalidArgument,
            SchedulerError::Seal(_) => ErrorCode::FailedPrecondition,
            SchedulerError::Probe(e) => e.code,
            SchedulerError::Staging(_)
            | SchedulerError::OutputUnchecked(_)
            | SchedulerError::NotPersisted { .. }
            | SchedulerError::Stopped
            | SchedulerError::Queue(_)
            | SchedulerError::Rerun { .. }
            | SchedulerError::PipelineFile { .. }
            | SchedulerError::PipelineRecord(_)
            | SchedulerError::Files(_) => ErrorCode::Unavailable,
        }
    }

    /// The status, with a `google.rpc.BadRequest` detail naming the field
    /// where the error is about one.
    fn to_status(&self) -> tonic::Status {
        let violation = match self {
            SchedulerError::BadRequest(v) => v.clone(),
            SchedulerError::BadSource { field, message } | SchedulerError::BadPipeline { field, message } => {
                batchmill_core::FieldViolation::new(field, message)
            }
            _ => return tonic::Status::new(self.code().grpc(), self.to_string()),
        };
        violation.into()
    }
}
