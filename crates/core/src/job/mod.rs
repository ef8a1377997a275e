//! The job model: lifecycle states and failure reasons here, the validated
//! job spec and the conversion of a `SubmitJobRequest` into it, which names
//! the wrong field, in [`spec`].

use batchmill_proto::jobs::v1 as pb;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{FieldViolation, S3Uri};

/// Most bytes of one batch, as Cortex: a larger batch is refused at submit.
pub const MAX_BATCH_BYTES: usize = 256 * 1024;
/// Most workers one job may ask for.
pub const MAX_WORKERS: i32 = 1000;
/// Most deliveries of one batch a job may ask for.
pub const MAX_RECEIVE_COUNT: i32 = 100;

/// Where a job is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobState {
    Pending,
    Admitted,
    Running,
    Completing,
    Succeeded,
    CompletedWithFailures,
    Failed,
    TimedOut,
    Cancelled,
    Preempted,
}

impl JobState {
    /// Whether the job has ended for good.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Succeeded
                | JobState::CompletedWithFailures
                | JobState::Failed
                | JobState::TimedOut
                | JobState::Cancelled
        )
    }
}

impl From<JobState> for pb::JobState {
    fn from(s: JobState) -> Self {
        match s {
            JobState::Pending => pb::JobState::Pending,
            JobState::Admitted => pb::JobState::Admitted,
            JobState::Running => pb::JobState::Running,
            JobState::Completing => pb::JobState::Completing,
            JobState::Succeeded => pb::JobState::Succeeded,
            JobState::CompletedWithFailures => pb::JobState::CompletedWithFailures,
            JobState::Failed => pb::JobState::Failed,
            JobState::TimedOut => pb::JobState::TimedOut,
            JobState::Cancelled => pb::JobState::Cancelled,
            JobState::Preempted => pb::JobState::Preempted,
        }
    }
}

/// Why a job failed, as the contract's `Job.failure_reason` and Cortex's
/// job status name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureReason {
    /// Its items could not be listed or enqueued.
    EnqueueFailed,
    /// Its predictor could not start, or its completion hook failed.
    WorkerError,
    /// Its predictor ran out of memory while starting.
    WorkerOom,
    /// Anything else.
    UnexpectedError,
}

impl FailureReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::EnqueueFailed => "enqueue_failed",
            FailureReason::WorkerError => "worker_error",
            FailureReason::WorkerOom => "worker_oom",
            FailureReason::UnexpectedError => "unexpected_error",
        }
    }

    /// The reason named `s`; None for an empty or unknown name.
    pub fn parse(s: &str) -> Option<FailureReason> {
        [Self::EnqueueFailed, Self::WorkerError, Self::WorkerOom, Self::UnexpectedError]
            .into_iter()
            .find(|r| r.as_str() == s)
    }
}

impl std::fmt::Display for FailureReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a job in contract state `state` has ended for good.
pub fn is_terminal(state: pb::JobState) -> bool {
    matches!(
        state,
        pb::JobState::Succeeded
            | pb::JobState::CompletedWithFailures
            | pb::JobState::Failed
            | pb::JobState::TimedOut
            | pb::JobState::Cancelled
    )
}

mod spec;
pub use spec::*;
