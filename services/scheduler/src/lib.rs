//! The scheduler owns the job lifecycle.
//!
//! RPCs: `batchmill.jobs.v1.JobService` (the gateway forwards the public API
//! here) and `batchmill.scheduler.v1.WorkerService/Session` (one stream per
//! worker). Depends on: etcd (leader election, jobs and ledgers, enqueue
//! progress), the enqueuer, JetStream (per-job
//! consumers; purge on cancel) and S3 (staged inputs, manifests).
//!
//! One leader serves at a time: a scheduler campaigns in etcd election
//! [`SCHEDULER_ELECTION`] with its gRPC URL and serves only once it leads, so standbys
//! wait. A new leader rebuilds every job and ledger from etcd.

mod actor;
mod grpc;
mod ledger;
mod pipelines;
mod ports;
mod record;
mod state;

pub use actor::Scheduler;
pub use grpc::{JobsGrpc, PipelinesGrpc, SessionGrpc};
pub use ledger::{Ledger, Recorded};
pub use pipelines::{Deployed, Pipelines, PredictorSpec, merge_config};
pub use ports::{EnqueueClient, JobQueue, LogLines, LogSource, ObjectStore, Ports, SourceProbe, WorkerLink};
pub use record::{Input, JobRecord};
pub use state::{Capabilities, Settings, State};

use std::sync::Arc;
use std::time::Duration;

use batchmill_coord::{Etcd, Kv, KvEvent, SCHEDULER_ELECTION};
use batchmill_core::enqueue::{EnqueueProgress, job_of_progress_key};
use batchmill_core::{ErrorCode, ServiceError};
use batchmill_proto::jobs::v1::{BatchRecord, BatchState};
use batchmill_proto::queue::v1::{Batch, DeadLetter};
use batchmill_queue::{Exhausted, JetStreamQueue};
use futures::StreamExt;
use prost::Message;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// Errors of the scheduler's API.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error("job {job_id} not found")]
    JobNotFound { job_id: String },
    #[error("pipeline: unknown pipeline {name:?}; this cluster has: {known}")]
    UnknownPipeline { name: String, known: String },
    #[error("staging the job's items: {message}")]
    Staging { message: String },
    #[error("{field}: {message}")]
    BadSource { field: String, message: String },
    #[error("job {job_id} could not be recorded in etcd; it was not accepted")]
    NotPersisted { job_id: String },
    #[error("the scheduler is shutting down")]
    Stopped,
    #[error("dead letters: {message}")]
    DeadLetters { message: String },
    #[error("job {job_id} is {state}; only a running job or one completed with failures can re-run dead letters")]
    NotRerunnable { job_id: String, state: String },
    #[error("{field}: {batch_id:?} is not a dead-lettered batch of this job")]
    NotDeadLettered { field: String, batch_id: String },
    #[error("{field}: {message}")]
    BadPipeline { field: String, message: String },
    #[error("pipeline {name:?} not found")]
    PipelineNotFound { name: String },
}

impl ServiceError for SchedulerError {
    fn code(&self) -> ErrorCode {
        match self {
            SchedulerError::JobNotFound { .. } | SchedulerError::PipelineNotFound { .. } => ErrorCode::NotFound,
            SchedulerError::UnknownPipeline { .. }
            | SchedulerError::BadPipeline { .. }
            | SchedulerError::BadSource { .. }
            | SchedulerError::NotDeadLettered { .. } => ErrorCode::InvalidArgument,
            SchedulerError::NotRerunnable { .. } => ErrorCode::FailedPrecondition,
            SchedulerError::Staging { .. }
            | SchedulerError::NotPersisted { .. }
            | SchedulerError::Stopped
            | SchedulerError::DeadLetters { .. } => ErrorCode::Unavailable,
        }
    }
}

/// Follows enqueue progress in etcd, forwarding it to the scheduler until
/// `shutdown`; re-watches after a watch breaks.
///
/// Worker liveness comes from sessions, not from registrations: a killed
/// worker's stream closes at once and a vanished host's fails its HTTP/2
/// keepalive, while a registration can lapse under load with the worker
/// still working. Registrations stay the cluster's directory of workers.
pub fn follow_etcd(kv: Arc<dyn Kv>, scheduler: Scheduler, shutdown: CancellationToken) {
    let prefix = batchmill_core::enqueue::PREFIX;
    tokio::spawn(async move {
        while !shutdown.is_cancelled() {
            match kv.watch(prefix).await {
                Ok(mut events) => loop {
                    let event = tokio::select! {
                        () = shutdown.cancelled() => return,
                        event = events.next() => event,
                    };
                    match event {
                        Some(Ok(KvEvent::Put { key, value })) => {
                            let Some(job_id) = job_of_progress_key(&key) else { continue };
                            match EnqueueProgress::decode(&value) {
                                Ok(p) => scheduler.enqueue_progress(job_id.to_owned(), p),
                                Err(e) => warn!(%key, error = %e, "unreadable enqueue progress"),
                            }
                        }
                        Some(Ok(KvEvent::Delete { .. })) => {}
                        Some(Err(e)) => {
                            warn!(prefix, error = %e, "watch broke");
                            break;
                        }
                        None => break,
                    }
                },
                Err(e) => warn!(prefix, error = %e, "watch failed"),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
}

/// Dead-letters the batches JetStream stops delivering because their
/// deliveries ran out with no outcome (the worker holding the last one was
/// lost), so their jobs still complete; each is removed from the batch
/// stream once it is in the dead-letter stream, has its batch record and its
/// failure is durable. The advisories wait in a stream, so those sent while
/// no scheduler leads are handled by the next leader.
pub fn follow_exhausted(queue: JetStreamQueue, scheduler: Scheduler, shutdown: CancellationToken) {
    tokio::spawn(async move {
        while !shutdown.is_cancelled() {
            let mut advisories = match queue.exhausted().await {
                Ok(a) => Box::pin(a),
                Err(e) => {
                    warn!(error = %e, "reading max-deliveries advisories failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            loop {
                let advisory = tokio::select! {
                    () = shutdown.cancelled() => return,
                    a = advisories.next() => a,
                };
                match advisory {
                    None => break,
                    Some(Err(e)) => warn!(error = %e, "advisory"),
                    Some(Ok(advisory)) => {
                        if dead_letter_exhausted(&queue, &scheduler, &advisory).await
                            && let Err(e) = advisory.handled().await
                        {
                            warn!(stream_seq = advisory.stream_seq, error = %e, "removing a handled advisory failed");
                        }
                    }
                }
            }
        }
    });
}

/// Dead-letters the batch of one advisory; true when the advisory is dealt
/// with, false to have it delivered again.
async fn dead_letter_exhausted(queue: &JetStreamQueue, scheduler: &Scheduler, advisory: &Exhausted) -> bool {
    let stream_seq = advisory.stream_seq;
    if stream_seq == 0 {
        warn!("unreadable max-deliveries advisory dropped");
        return true;
    }
    let batch = match queue.read(stream_seq).await {
        Ok(Some(bytes)) => match Batch::decode(bytes.as_ref()) {
            Ok(b) => b,
            Err(e) => {
                warn!(stream_seq, error = %e, "undecodable batch");
                return true;
            }
        },
        Ok(None) => return true, // settled or purged meanwhile
        Err(e) => {
            warn!(stream_seq, error = %e, "reading an exhausted batch failed");
            return false;
        }
    };
    let items = batch.items.len() as u64;
    let (job_id, seq, deliveries) = (batch.job_id.clone(), batch.seq, advisory.deliveries);
    let Ok(job) = batchmill_core::JobId::parse("job_id", &job_id) else {
        warn!(stream_seq, %job_id, "exhausted batch of a malformed job id");
        return true;
    };
    let last_error =
        format!("delivered {deliveries} times; the worker running the last delivery was lost before it reported");
    let now = batchmill_core::time::now_ms();
    let record = BatchRecord {
        batch_id: batchmill_core::BatchId::new(job, seq).to_string(),
        seq: seq as i64,
        state: BatchState::Failed as i32,
        items: items as i64,
        attempts: deliveries as i64,
        worker_id: String::new(),
        duration: None,
        last_error: last_error.clone(),
        end_time: Some(batchmill_core::time::timestamp(now)),
    };
    let dead = DeadLetter {
        attempts: deliveries,
        last_error,
        worker_id: String::new(),
        time_ms: now,
        duration_ms: 0,
        batch: Some(batch),
    };
    let msg_id = batchmill_queue::dead_letter_id(&job_id, seq, stream_seq);
    if let Err(e) = queue.dead_letter(&job_id, &msg_id, dead.encode_to_vec().into()).await {
        warn!(%job_id, seq, error = %e, "dead-lettering an exhausted batch failed");
        return false;
    }
    if let Err(e) = queue.publish_record(&job_id, record.encode_to_vec().into()).await {
        warn!(%job_id, seq, error = %e, "storing an exhausted batch's record failed");
        return false;
    }
    if scheduler.exhausted(job_id, seq, items, deliveries).await.is_err() {
        return false;
    }
    if let Err(e) = queue.remove(stream_seq).await {
        warn!(stream_seq, error = %e, "removing an exhausted batch failed");
    }
    true
}

/// Campaigns for leadership; returns once this process leads.
pub async fn lead(etcd: &Etcd, url: &str) -> Result<batchmill_coord::Leadership, batchmill_coord::CoordError> {
    etcd.campaign(SCHEDULER_ELECTION, url, Duration::from_secs(10)).await
}
