//! Batches, dead letters, batch records and log lines in NATS JetStream,
//! behind small traits so that services run against [`mem::MemQueue`] in
//! unit tests (feature `testing`), which passes the same
//! [`conformance`] suite as the real server.
//!
//! The streams, subjects and message ids are in
//! [`batchmill_core::subjects`]. A batch is published with
//! `Nats-Msg-Id = <batch_id>`, so a republished batch is dropped as a
//! duplicate. Each job has one durable pull consumer shared by its workers;
//! a message leaves the stream when a worker acks (or terms) it.
//!
//! A batch that fails for good is moved to the dead-letter stream, where it
//! stays, listable and re-runnable. A batch whose deliveries run out with no
//! worker settling it (the worker holding the last one was lost) stays in
//! the batch stream; JetStream's MAX_DELIVERIES advisory, kept in its own
//! stream until handled ([`Advisories`]), tells the scheduler to move it.

mod jetstream;

#[cfg(any(test, feature = "testing"))]
pub mod conformance;
#[cfg(any(test, feature = "testing"))]
pub mod mem;

pub use jetstream::{JetStreamQueue, NatsAccess, client, use_access};

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use batchmill_core::BatchId;
use bytes::Bytes;
use futures::stream::BoxStream;

/// How a job's batches are delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    #[error("publish of {msg_id}: {message}")]
    Publish { msg_id: String, message: String },
    #[error("no consumer for job {job_id}")]
    NoConsumer { job_id: String },
    #[error("the consumer of job {job_id} was deleted")]
    ConsumerDeleted { job_id: String },
}

impl QueueError {
    fn js(op: &'static str, e: impl std::fmt::Display) -> QueueError {
        QueueError::JetStream { op, message: e.to_string() }
    }

    /// Whether the same call may succeed later: NATS was unreachable or slow.
    /// A job whose consumer is gone has ended; that does not heal.
    pub fn is_transient(&self) -> bool {
        match self {
            QueueError::Connect { .. } | QueueError::JetStream { .. } | QueueError::Publish { .. } => true,
            QueueError::NoConsumer { .. } | QueueError::ConsumerDeleted { .. } => false,
        }
    }
}

pub type Result<T, E = QueueError> = std::result::Result<T, E>;

/// W3C trace headers (`traceparent`, `tracestate`) carried with a batch.
pub type TraceHeaders = HashMap<String, String>;

/// A message as stored in a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub stream_seq: u64,
    pub payload: Bytes,
}

/// Jobs' batches: published by the enqueuer, pulled by workers through each
/// job's consumer, withdrawn by the scheduler.
#[async_trait]
pub trait Batches: Send + Sync + 'static {
    /// Publishes a batch of the job's `round` (0 until it is retried) and
    /// waits for it to be stored; one published already in the same round
    /// (within the 2-minute window) is dropped. `trace` travels in the
    /// message headers.
    async fn publish_batch(&self, batch: &BatchId, round: u32, body: Bytes, trace: &TraceHeaders) -> Result<()>;
    /// Publishes a dead-lettered batch again; `rerun` (its dead letter's
    /// stream sequence) tells this publication apart from earlier ones.
    async fn requeue_batch(&self, batch: &BatchId, rerun: u64, body: Bytes) -> Result<()>;
    /// Creates the job's durable consumer (idempotent).
    async fn open_job(&self, job_id: &str, policy: DeliveryPolicy) -> Result<()>;
    /// Withdraws the job's remaining batches and deletes its consumer;
    /// returns how many batches were withdrawn.
    async fn close_job(&self, job_id: &str) -> Result<u64>;
    /// The job's consumer, for a worker to pull from.
    async fn job_consumer(&self, job_id: &str) -> Result<Arc<dyn Consumer>>;
    /// The batch stored at stream sequence `stream_seq`, if it is still there.
    async fn read(&self, stream_seq: u64) -> Result<Option<Bytes>>;
    /// Removes the batch stored at stream sequence `stream_seq`.
    async fn remove(&self, stream_seq: u64) -> Result<()>;
}

/// A job's consumer, as one worker sees it.
#[async_trait]
pub trait Consumer: Send + Sync + 'static {
    /// The next delivery, or `None` if none arrived within `wait`. Takes one
    /// message at a time, so a busy worker never hoards batches.
    /// [`QueueError::ConsumerDeleted`] once the job's queue is closed.
    async fn next(&self, wait: Duration) -> Result<Option<Box<dyn Delivery>>>;

    /// Up to `max` deliveries at once: what has arrived when the first does,
    /// or none within `wait`. For a consumer that settles each quickly (one
    /// trip to the server for many messages); every one is held from now.
    async fn next_many(&self, max: usize, wait: Duration) -> Result<Vec<Box<dyn Delivery>>>;
}

/// One delivery of a batch, held until it is settled (acked, nak'ed or
/// term'ed) or its ack wait passes without progress.
#[async_trait]
pub trait Delivery: Send + Sync + 'static {
    fn payload(&self) -> &Bytes;
    /// The trace headers the batch was published with.
    fn trace(&self) -> TraceHeaders;
    /// Where the batch is stored in the batch stream.
    fn stream_seq(&self) -> u64;
    /// Which delivery of the batch this is, from 1.
    fn attempt(&self) -> u64;
    /// Asks for more time before redelivery.
    async fn in_progress(&self) -> Result<()>;
    /// Acknowledges the batch; it leaves the stream.
    async fn ack(&self) -> Result<()>;
    /// Asks for redelivery after `delay`.
    async fn nak(&self, delay: Duration) -> Result<()>;
    /// Stops delivering the batch; it leaves the stream.
    async fn term(&self) -> Result<()>;
}

/// Batches that failed for good, per job, until re-run.
#[async_trait]
pub trait DeadLetters: Send + Sync + 'static {
    /// Stores the dead letter of `batch`, delivered from batch stream
    /// sequence `batch_stream_seq`; the same one stored twice within the
    /// duplicate window (by a worker and by the scheduler) is kept once.
    async fn dead_letter(&self, batch: &BatchId, batch_stream_seq: u64, body: Bytes) -> Result<()>;
    /// Up to `limit` dead letters of the job from dead-letter stream
    /// sequence `from` on, oldest first.
    async fn dead_letters(&self, job_id: &str, from: u64, limit: usize) -> Result<Vec<Stored>>;
    /// Removes the dead letter at dead-letter stream sequence `stream_seq`.
    async fn remove_dead_letter(&self, stream_seq: u64) -> Result<()>;
}

/// How each final batch ended, per job.
#[async_trait]
pub trait Records: Send + Sync + 'static {
    /// Stores the record of how a batch of the job ended.
    async fn publish_record(&self, job_id: &str, record: Bytes) -> Result<()>;
    /// Up to `limit` records of the job from record stream sequence `from`
    /// on, oldest first.
    async fn records(&self, job_id: &str, from: u64, limit: usize) -> Result<Vec<Stored>>;
}

/// A stream of log lines.
pub type LogLines = BoxStream<'static, Result<Bytes>>;

/// Jobs' log lines.
#[async_trait]
pub trait Logs: Send + Sync + 'static {
    /// Appends a log line of the job without waiting for it to be stored:
    /// logging never slows a batch down.
    async fn publish_log(&self, job_id: &str, line: Bytes) -> Result<()>;
    /// The job's lines, oldest first: those stored now, and with `follow`
    /// every later one too (the stream then never ends by itself).
    async fn logs(&self, job_id: &str, follow: bool) -> Result<LogLines>;
}

/// A stream of stored messages with their positions.
pub type StoredStream = BoxStream<'static, Result<Stored>>;

/// Jobs' event logs.
#[async_trait]
pub trait Events: Send + Sync + 'static {
    /// Appends an event of the job and waits for it to be stored; returns
    /// its position, which only grows.
    async fn publish_event(&self, job_id: &str, event: Bytes) -> Result<u64>;
    /// Up to `limit` events of the job from position `from` on, oldest first.
    async fn events(&self, job_id: &str, from: u64, limit: usize) -> Result<Vec<Stored>>;
    /// The job's events from position `from` on: those stored, then each
    /// new one as it is stored (the stream never ends by itself).
    async fn follow_events(&self, job_id: &str, from: u64) -> Result<StoredStream>;
}

/// A batch whose deliveries ran out without being settled.
pub struct Exhausted {
    /// Where the batch is stored in the batch stream (0 if the advisory
    /// could not be read).
    pub stream_seq: u64,
    /// How many times it was delivered.
    pub deliveries: u64,
    handle: Box<dyn Handled>,
}

impl Exhausted {
    pub fn new(stream_seq: u64, deliveries: u64, handle: Box<dyn Handled>) -> Exhausted {
        Exhausted { stream_seq, deliveries, handle }
    }

    /// Removes the advisory: the batch is dealt with.
    pub async fn handled(&self) -> Result<()> {
        self.handle.handled().await
    }
}

/// Removes one advisory once it is handled.
#[async_trait]
pub trait Handled: Send + Sync + 'static {
    async fn handled(&self) -> Result<()>;
}

/// The batch stream's max-deliveries advisories.
#[async_trait]
pub trait Advisories: Send + Sync + 'static {
    /// Batches whose deliveries ran out with none settled, from advisories
    /// kept until [`Exhausted::handled`]; one not handled within 30 s (its
    /// reader died) is delivered again.
    async fn exhausted(&self) -> Result<BoxStream<'static, Result<Exhausted>>>;
}

/// Everything batchmill keeps in the queue.
pub trait Queue: Batches + DeadLetters + Records + Logs + Events + Advisories {}

impl<T: Batches + DeadLetters + Records + Logs + Events + Advisories> Queue for T {}
