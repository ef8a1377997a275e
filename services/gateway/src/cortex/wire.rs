//! What Cortex's routes answer: the job spec, a job's status and a list of
//! them, in Cortex's field names.

use batchmill_core::FailureReason;
use batchmill_core::subjects::{batch_subject, dead_subject};
use batchmill_proto::jobs::v1 as pb;
use serde::Serialize;
use serde_json::{Map, Value};

use super::SqsDeadLetterQueue;

/// A job as Cortex's submit answers it.
#[derive(Serialize)]
pub(super) struct JobSpec {
    pub(super) job_id: String,
    pub(super) api_name: String,
    pub(super) kind: &'static str,
    pub(super) workers: i32,
    pub(super) sqs_dead_letter_queue: SqsDeadLetterQueue,
    pub(super) config: Map<String, Value>,
    pub(super) timeout: Option<i64>,
    pub(super) api_id: String,
    /// Where the job's batches are queued: its JetStream subject.
    pub(super) sqs_url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) total_batch_count: Option<i64>,
    pub(super) created_time: String,
}

impl JobSpec {
    /// `arn` is the dead-letter queue the submission named; by default the
    /// job's dead-letter subject.
    pub(super) fn of(job: &pb::Job, arn: Option<String>) -> JobSpec {
        JobSpec {
            job_id: job.job_id.clone(),
            api_name: job.pipeline.clone(),
            kind: "BatchAPI",
            workers: job.max_workers,
            sqs_dead_letter_queue: SqsDeadLetterQueue {
                arn: arn.unwrap_or_else(|| dead_subject(&job.job_id)),
                max_receive_count: i64::from(job.max_receive_count),
            },
            config: job.config.as_ref().map(batchmill_core::json::struct_to_json).unwrap_or_default(),
            timeout: job.timeout.as_ref().map(|d| d.seconds),
            api_id: job.pipeline.clone(),
            sqs_url: batch_subject(&job.job_id),
            total_batch_count: job.enqueue_complete.then(|| job.batches.as_ref().map_or(0, |b| b.total)),
            created_time: time(job.create_time.as_ref()).unwrap_or_default(),
        }
    }
}

/// A job's status as Cortex shows it, with batchmill's item counts added.
#[derive(Serialize)]
pub(super) struct JobStatus {
    #[serde(flatten)]
    pub(super) spec: JobSpec,
    pub(super) status: &'static str,
    pub(super) batches_in_queue: i64,
    pub(super) batch_metrics: BatchMetrics,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) worker_counts: Option<WorkerCounts>,
    pub(super) item_counts: ItemCounts,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) start_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) end_time: Option<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub(super) message: String,
}

#[derive(Serialize)]
pub(super) struct BatchMetrics {
    pub(super) succeeded: i64,
    /// Failed attempts, as Cortex counts them.
    pub(super) failed: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) avg_time_per_batch: Option<f64>,
    /// Batches that failed for good (all in the dead-letter stream).
    pub(super) failed_batches: i64,
    pub(super) dead_lettered: i64,
    pub(super) total: i64,
}

#[derive(Serialize)]
pub(super) struct WorkerCounts {
    pub(super) pending: i32,
    pub(super) initializing: i32,
    pub(super) running: i32,
    pub(super) succeeded: i32,
    pub(super) failed: i32,
    pub(super) stalled: i32,
}

#[derive(Serialize)]
pub(super) struct ItemCounts {
    pub(super) total: i64,
    pub(super) completed: i64,
    pub(super) failed: i64,
    pub(super) pending: i64,
}

impl JobStatus {
    pub(super) fn of(job: &pb::Job) -> JobStatus {
        let b = job.batches.unwrap_or_default();
        let i = job.items.unwrap_or_default();
        let terminal = batchmill_core::job::is_terminal(job.state());
        let average = b.average_batch_time.as_ref().map(|d| d.seconds as f64 + f64::from(d.nanos) / 1e9);
        JobStatus {
            spec: JobSpec::of(job, None),
            status: status(job),
            batches_in_queue: b.in_queue,
            batch_metrics: BatchMetrics {
                succeeded: b.succeeded,
                failed: b.failed_attempts,
                avg_time_per_batch: average.filter(|_| b.succeeded > 0),
                failed_batches: b.failed,
                dead_lettered: b.dead_lettered,
                total: b.total,
            },
            worker_counts: (!terminal).then(|| {
                let w = job.workers.unwrap_or_default();
                WorkerCounts {
                    pending: w.pending,
                    initializing: w.initializing,
                    running: w.running,
                    succeeded: w.succeeded,
                    failed: w.failed,
                    stalled: w.stalled,
                }
            }),
            item_counts: ItemCounts { total: i.total, completed: i.completed, failed: i.failed, pending: i.pending },
            start_time: time(job.start_time.as_ref()),
            end_time: time(job.end_time.as_ref()),
            message: job.message.clone(),
        }
    }
}

/// Cortex's status code of a job.
pub(super) fn status(job: &pb::Job) -> &'static str {
    match job.state() {
        pb::JobState::Unspecified | pb::JobState::Pending | pb::JobState::Admitted | pb::JobState::Preempted => {
            "pending"
        }
        pb::JobState::Running | pb::JobState::Completing if !job.enqueue_complete => "enqueuing",
        pb::JobState::Running | pb::JobState::Completing => "running",
        pb::JobState::Succeeded => "succeeded",
        pb::JobState::CompletedWithFailures => "completed_with_failures",
        // Cortex's job statuses name the failure reasons as batchmill does.
        pb::JobState::Failed => {
            FailureReason::parse(&job.failure_reason).unwrap_or(FailureReason::UnexpectedError).as_str()
        }
        pb::JobState::TimedOut => "timed_out",
        pb::JobState::Cancelled => "stopped",
    }
}

pub(super) fn time(t: Option<&prost_types::Timestamp>) -> Option<String> {
    t.map(ToString::to_string)
}

#[derive(Serialize)]
pub(super) struct StatusResponse {
    pub(super) job_status: JobStatus,
    pub(super) endpoint: String,
}

#[derive(Serialize)]
pub(super) struct ListResponse {
    pub(super) endpoint: String,
    pub(super) batch_job_statuses: Vec<JobStatus>,
}

#[derive(Serialize)]
pub(super) struct Message {
    pub(super) message: String,
}
