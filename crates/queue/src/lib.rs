//! Batches in NATS JetStream.
//!
//! One work-queue stream (`BATCHMILL_BATCHES`) holds every job's batches on
//! subject `batchmill.batches.<job_id>`, each published with
//! `Nats-Msg-Id = <job_id>-<seq>` so a republished batch is dropped as a
//! duplicate. Each job has one durable pull consumer, `job-<job_id>`, shared
//! by the workers assigned to it; a message is removed from the stream when
//! a worker acks it.
//!
//! A batch that fails for good is moved to the dead-letter stream
//! (`BATCHMILL_DEAD`, limits retention, subject `batchmill.dead.<job_id>`),
//! where it stays, listable and re-runnable, until its job is deleted.
//!
//! Workers' log lines of a job go to `BATCHMILL_LOGS`, subject
//! `batchmill.logs.<job_id>`, kept for seven days.

mod jetstream;

pub use jetstream::{Delivery, Exhausted, JetStreamQueue, JobConsumer, Stored};

use std::time::Duration;

/// Name of the stream of batches.
pub const BATCH_STREAM: &str = "BATCHMILL_BATCHES";

/// Name of the stream of dead-lettered batches.
pub const DEAD_STREAM: &str = "BATCHMILL_DEAD";

/// The subject of a job's dead-lettered batches.
pub fn dead_subject(job_id: &str) -> String {
    format!("batchmill.dead.{job_id}")
}

/// Name of the stream that keeps JetStream's max-deliveries advisories for
/// the batch stream until the scheduler has handled them.
pub const EXHAUSTED_STREAM: &str = "BATCHMILL_EXHAUSTED";

/// The message id of a dead letter for the batch stored at `batch_stream_seq`:
/// whoever stores it (the worker, or the scheduler from an advisory), it is
/// stored once within the duplicate window.
pub fn dead_letter_id(job_id: &str, seq: u64, batch_stream_seq: u64) -> String {
    format!("{job_id}-{seq}-dead-{batch_stream_seq}")
}

/// Name of the stream of batch records (how each final batch ended).
pub const RECORD_STREAM: &str = "BATCHMILL_RECORDS";

/// The subject of a job's batch records.
pub fn record_subject(job_id: &str) -> String {
    format!("batchmill.records.{job_id}")
}

/// Name of the stream of job log lines.
pub const LOG_STREAM: &str = "BATCHMILL_LOGS";

/// The subject of a job's log lines.
pub fn log_subject(job_id: &str) -> String {
    format!("batchmill.logs.{job_id}")
}

/// The subject of a job's batches.
pub fn batch_subject(job_id: &str) -> String {
    format!("batchmill.batches.{job_id}")
}

/// The durable consumer of a job's batches.
pub fn consumer_name(job_id: &str) -> String {
    format!("job-{job_id}")
}

/// How a job's batches are delivered.
#[derive(Debug, Clone, Copy)]
pub struct DeliveryPolicy {
    /// Time a worker has to ack (or report progress on) a delivery before it
    /// is redelivered to another worker.
    pub ack_wait: Duration,
    /// Deliveries of a batch before it fails for good.
    pub max_deliver: u32,
}

/// Errors from the queue.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("nats connect to {url}: {source}")]
    Connect { url: String, source: async_nats::ConnectError },
    #[error("jetstream {op}: {message}")]
    JetStream { op: &'static str, message: String },
    #[error("publish of batch {msg_id}: {message}")]
    Publish { msg_id: String, message: String },
    #[error("no consumer for job {job_id}")]
    NoConsumer { job_id: String },
}

impl QueueError {
    fn js(op: &'static str, e: impl std::fmt::Display) -> QueueError {
        QueueError::JetStream { op, message: e.to_string() }
    }
}

pub type Result<T, E = QueueError> = std::result::Result<T, E>;
