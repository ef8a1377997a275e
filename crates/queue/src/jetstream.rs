//! The JetStream implementation.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use async_nats::jetstream::message::AckKind;
use async_nats::jetstream::stream::{self, RetentionPolicy, StorageType};
use async_nats::jetstream::{self as js, Message};
use bytes::Bytes;
use futures::StreamExt;
use tracing::debug;

use crate::{
    BATCH_STREAM, DEAD_STREAM, DeliveryPolicy, EXHAUSTED_STREAM, LOG_STREAM, QueueError, RECORD_STREAM, Result,
    batch_subject, consumer_name, dead_subject, log_subject, record_subject,
};

/// A connection to JetStream with the batch stream in place.
#[derive(Clone)]
pub struct JetStreamQueue {
    context: js::Context,
}

impl JetStreamQueue {
    /// Connects to `url` (retrying for up to `patience`) and creates or
    /// updates the batch stream.
    pub async fn connect(url: &str, patience: Duration) -> Result<JetStreamQueue> {
        let deadline = tokio::time::Instant::now() + patience;
        let client = loop {
            match async_nats::connect(url).await {
                Ok(client) => break client,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    debug!(error = %e, "nats unreachable; retrying");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(source) => {
                    return Err(QueueError::Connect { url: url.to_owned(), source });
                }
            }
        };
        let context = js::new(client);
        let config = stream::Config {
            name: BATCH_STREAM.to_owned(),
            subjects: vec!["batchmill.batches.*".to_owned()],
            retention: RetentionPolicy::WorkQueue,
            storage: StorageType::File,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        };
        context.create_or_update_stream(config).await.map_err(|e| QueueError::js("create stream", e))?;
        let dead = stream::Config {
            name: DEAD_STREAM.to_owned(),
            subjects: vec![dead_subject("*")],
            retention: RetentionPolicy::Limits,
            storage: StorageType::File,
            ..Default::default()
        };
        context.create_or_update_stream(dead).await.map_err(|e| QueueError::js("create dead-letter stream", e))?;
        // Advisories are core NATS messages, lost when nobody listens (as
        // during a scheduler failover): this stream keeps them until handled.
        let advisories = stream::Config {
            name: EXHAUSTED_STREAM.to_owned(),
            subjects: vec![max_deliveries_subject()],
            retention: RetentionPolicy::WorkQueue,
            storage: StorageType::File,
            max_age: Duration::from_secs(7 * 24 * 3600),
            ..Default::default()
        };
        context.create_or_update_stream(advisories).await.map_err(|e| QueueError::js("create advisory stream", e))?;
        // Kept by age: log lines a week, batch records a month.
        let logs = kept_for(LOG_STREAM, log_subject("*"), 7);
        context.create_or_update_stream(logs).await.map_err(|e| QueueError::js("create log stream", e))?;
        let records = kept_for(RECORD_STREAM, record_subject("*"), 30);
        context.create_or_update_stream(records).await.map_err(|e| QueueError::js("create record stream", e))?;
        Ok(JetStreamQueue { context })
    }

    /// Publishes batch `seq` of `job_id` and waits for JetStream to store it.
    /// A batch already published (within the 2-minute window) is dropped.
    /// `trace` (W3C trace headers) travels in the message headers.
    pub async fn publish_batch(
        &self,
        job_id: &str,
        seq: u64,
        body: Bytes,
        trace: &HashMap<String, String>,
    ) -> Result<()> {
        self.publish(batch_subject(job_id), format!("{job_id}-{seq}"), body, trace).await
    }

    /// Publishes a dead-lettered batch of `job_id` again, under message id
    /// `<job_id>-<seq>-r<rerun>`: `rerun` (the dead letter's stream sequence)
    /// tells it apart from the original within the duplicate window.
    pub async fn requeue_batch(&self, job_id: &str, seq: u64, rerun: u64, body: Bytes) -> Result<()> {
        self.publish(batch_subject(job_id), format!("{job_id}-{seq}-r{rerun}"), body, &HashMap::new()).await
    }

    /// Publishes to `subject` under `msg_id` (a duplicate within the
    /// stream's window is dropped) and waits for JetStream to store it.
    async fn publish(
        &self,
        subject: String,
        msg_id: String,
        body: Bytes,
        trace: &HashMap<String, String>,
    ) -> Result<()> {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", msg_id.as_str());
        for (key, value) in trace {
            headers.insert(key.as_str(), value.as_str());
        }
        let err = |e: &dyn std::fmt::Display| QueueError::Publish { msg_id: msg_id.clone(), message: e.to_string() };
        let ack = self.context.publish_with_headers(subject, headers, body).await.map_err(|e| err(&e))?;
        ack.await.map_err(|e| err(&e))?;
        Ok(())
    }

    /// Creates the job's durable consumer (idempotent).
    pub async fn open_job(&self, job_id: &str, policy: DeliveryPolicy) -> Result<()> {
        let stream = self.stream().await?;
        let config = pull::Config {
            durable_name: Some(consumer_name(job_id)),
            filter_subject: batch_subject(job_id),
            ack_policy: AckPolicy::Explicit,
            ack_wait: policy.ack_wait,
            max_deliver: i64::from(policy.max_deliver),
            max_ack_pending: 10_000,
            ..Default::default()
        };
        stream
            .get_or_create_consumer(&consumer_name(job_id), config)
            .await
            .map_err(|e| QueueError::js("create consumer", e))?;
        Ok(())
    }

    /// Withdraws a job's remaining batches and deletes its consumer; returns
    /// how many batches were withdrawn.
    pub async fn close_job(&self, job_id: &str) -> Result<u64> {
        let stream = self.stream().await?;
        let purged = stream.purge().filter(batch_subject(job_id)).await.map_err(|e| QueueError::js("purge", e))?.purged;
        match stream.delete_consumer(&consumer_name(job_id)).await {
            Ok(_) => {}
            Err(e) if e.to_string().contains("not found") => {}
            Err(e) => return Err(QueueError::js("delete consumer", e)),
        }
        Ok(purged)
    }

    /// Batches JetStream stopped delivering because their deliveries ran out
    /// with none settled (a worker lost on the last one), from the
    /// MAX_DELIVERIES advisories kept in the advisory stream. Each stays
    /// there until [`Exhausted::handled`]; one not handled within 30 s
    /// (its reader died) is delivered again.
    pub async fn exhausted(&self) -> Result<impl futures::Stream<Item = Result<Exhausted>> + use<>> {
        let stream =
            self.context.get_stream(EXHAUSTED_STREAM).await.map_err(|e| QueueError::js("get advisory stream", e))?;
        let config = pull::Config {
            durable_name: Some("scheduler".to_owned()),
            ack_policy: AckPolicy::Explicit,
            ack_wait: Duration::from_secs(30),
            ..Default::default()
        };
        let consumer: PullConsumer = stream
            .get_or_create_consumer("scheduler", config)
            .await
            .map_err(|e| QueueError::js("advisory consumer", e))?;
        let messages = consumer.messages().await.map_err(|e| QueueError::js("advisory messages", e))?;
        Ok(messages.map(|message| {
            let message = message.map_err(|e| QueueError::js("advisory", e))?;
            let advisory: MaxDeliveries = serde_json::from_slice(&message.payload).unwrap_or_default();
            Ok(Exhausted { stream_seq: advisory.stream_seq, deliveries: advisory.deliveries, message })
        }))
    }

    /// The batch stored at stream sequence `stream_seq`, if it is still there.
    pub async fn read(&self, stream_seq: u64) -> Result<Option<Bytes>> {
        match self.stream().await?.get_raw_message(stream_seq).await {
            Ok(message) => Ok(Some(message.payload)),
            Err(e) if matches!(e.kind(), async_nats::jetstream::stream::RawMessageErrorKind::NoMessageFound) => {
                Ok(None)
            }
            Err(e) => Err(QueueError::js("read message", e)),
        }
    }

    /// Removes the batch stored at stream sequence `stream_seq`.
    pub async fn remove(&self, stream_seq: u64) -> Result<()> {
        self.stream().await?.delete_message(stream_seq).await.map_err(|e| QueueError::js("delete message", e))?;
        Ok(())
    }

    /// Stores a dead letter of `job_id` under message id `msg_id` (see
    /// [`crate::dead_letter_id`]); one stored again within the duplicate
    /// window is dropped.
    pub async fn dead_letter(&self, job_id: &str, msg_id: &str, body: Bytes) -> Result<()> {
        self.publish(dead_subject(job_id), msg_id.to_owned(), body, &HashMap::new()).await
    }

    /// Up to `limit` dead letters of `job_id` stored at stream sequence
    /// `from` or later, oldest first.
    pub async fn dead_letters(&self, job_id: &str, from: u64, limit: usize) -> Result<Vec<Stored>> {
        read_subject(&self.dead_stream().await?, &dead_subject(job_id), from, limit, "read dead letters").await
    }

    /// Stores the record of how a batch of `job_id` ended.
    pub async fn publish_record(&self, job_id: &str, record: Bytes) -> Result<()> {
        let ack =
            self.context.publish(record_subject(job_id), record).await.map_err(|e| QueueError::js("record", e))?;
        ack.await.map_err(|e| QueueError::js("record ack", e))?;
        Ok(())
    }

    /// Up to `limit` batch records of `job_id` from record stream sequence
    /// `from` on, oldest first.
    pub async fn records(&self, job_id: &str, from: u64, limit: usize) -> Result<Vec<Stored>> {
        let stream =
            self.context.get_stream(RECORD_STREAM).await.map_err(|e| QueueError::js("get record stream", e))?;
        read_subject(&stream, &record_subject(job_id), from, limit, "read batch records").await
    }

    /// Removes the dead letter stored at stream sequence `stream_seq`.
    pub async fn remove_dead_letter(&self, stream_seq: u64) -> Result<()> {
        self.dead_stream()
            .await?
            .delete_message(stream_seq)
            .await
            .map_err(|e| QueueError::js("delete dead letter", e))?;
        Ok(())
    }

    /// Appends a log line of `job_id` without waiting for JetStream to
    /// store it: logging never slows a batch down.
    pub async fn publish_log(&self, job_id: &str, line: Bytes) -> Result<()> {
        // The publish acknowledgement is not awaited.
        let _ack = self.context.publish(log_subject(job_id), line).await.map_err(|e| QueueError::js("log", e))?;
        Ok(())
    }

    /// A job's log lines, oldest first: those stored now, and with `follow`
    /// every later one too (the stream then never ends by itself). Lines
    /// are read by stream position, so a reader holds no consumer.
    pub async fn logs(&self, job_id: &str, follow: bool) -> Result<futures::stream::BoxStream<'static, Result<Bytes>>> {
        let stream = self.context.get_stream(LOG_STREAM).await.map_err(|e| QueueError::js("get log stream", e))?;
        // An ephemeral ordered consumer streams the lines in batches; it
        // goes away once the stream is dropped and it sits idle.
        let config = pull::OrderedConfig { filter_subject: log_subject(job_id), ..Default::default() };
        let consumer = stream.create_consumer(config).await.map_err(|e| QueueError::js("read logs", e))?;
        let stored = consumer.cached_info().num_pending as usize;
        let lines = consumer
            .messages()
            .await
            .map_err(|e| QueueError::js("read logs", e))?
            .map(|m| m.map(|m| m.payload.clone()).map_err(|e| QueueError::js("read logs", e)));
        // Without follow, the lines stored when the read began.
        Ok(if follow { lines.boxed() } else { lines.take(stored).boxed() })
    }

    /// The job's consumer, for a worker to pull from.
    pub async fn job_consumer(&self, job_id: &str) -> Result<JobConsumer> {
        let stream = self.stream().await?;
        let consumer: PullConsumer = stream
            .get_consumer(&consumer_name(job_id))
            .await
            .map_err(|_| QueueError::NoConsumer { job_id: job_id.to_owned() })?;
        Ok(JobConsumer { consumer })
    }

    async fn dead_stream(&self) -> Result<stream::Stream> {
        self.context.get_stream(DEAD_STREAM).await.map_err(|e| QueueError::js("get dead-letter stream", e))
    }

    async fn stream(&self) -> Result<stream::Stream> {
        self.context.get_stream(BATCH_STREAM).await.map_err(|e| QueueError::js("get stream", e))
    }
}

/// A stream of `subjects` whose messages are kept for `days`.
fn kept_for(name: &str, subjects: String, days: u64) -> stream::Config {
    stream::Config {
        name: name.to_owned(),
        subjects: vec![subjects],
        retention: RetentionPolicy::Limits,
        storage: StorageType::File,
        max_age: Duration::from_secs(days * 24 * 3600),
        ..Default::default()
    }
}

/// Up to `limit` messages on `subject` from stream sequence `from` on,
/// read through an ephemeral ordered consumer: one request to create it and
/// the messages streamed in batches, not one request per message.
async fn read_subject(
    stream: &stream::Stream,
    subject: &str,
    from: u64,
    limit: usize,
    op: &'static str,
) -> Result<Vec<Stored>> {
    let config = pull::OrderedConfig {
        filter_subject: subject.to_owned(),
        deliver_policy: DeliverPolicy::ByStartSequence { start_sequence: from.max(1) },
        ..Default::default()
    };
    let consumer = stream.create_consumer(config).await.map_err(|e| QueueError::js(op, e))?;
    // What matched when the consumer was made; later messages wait for the next page.
    let want = (consumer.cached_info().num_pending as usize).min(limit);
    let mut found = Vec::with_capacity(want);
    if want == 0 {
        return Ok(found);
    }
    let mut messages = consumer.messages().await.map_err(|e| QueueError::js(op, e))?;
    while found.len() < want {
        let message = match tokio::time::timeout(READ_PATIENCE, messages.next()).await {
            Ok(Some(Ok(m))) => m,
            Ok(Some(Err(e))) => return Err(QueueError::js(op, e)),
            Ok(None) => break,
            Err(_) => {
                return Err(QueueError::JetStream { op, message: format!("no message within {READ_PATIENCE:?}") });
            }
        };
        let stream_seq =
            message.info().map_err(|e| QueueError::JetStream { op, message: e.to_string() })?.stream_sequence;
        found.push(Stored { stream_seq, payload: message.payload.clone() });
    }
    Ok(found)
}

/// How long a read waits for a message it knows is there.
const READ_PATIENCE: Duration = Duration::from_secs(10);

/// A message as stored in a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub stream_seq: u64,
    pub payload: Bytes,
}

/// A batch whose deliveries ran out without being settled.
pub struct Exhausted {
    /// Where the batch is stored in the batch stream (0 if the advisory
    /// could not be read).
    pub stream_seq: u64,
    /// How many times it was delivered.
    pub deliveries: u64,
    message: Message,
}

impl Exhausted {
    /// Removes the advisory: the batch is dealt with.
    pub async fn handled(&self) -> Result<()> {
        self.message.double_ack().await.map_err(|e| QueueError::js("ack advisory", e))
    }
}

/// The subject of the batch stream's MAX_DELIVERIES advisories.
fn max_deliveries_subject() -> String {
    format!("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{BATCH_STREAM}.*")
}

/// The fields of `io.nats.jetstream.advisory.v1.max_deliver` batchmill reads.
#[derive(serde::Deserialize, Default)]
struct MaxDeliveries {
    stream_seq: u64,
    deliveries: u64,
}

/// A job's consumer, as one worker sees it.
#[derive(Clone)]
pub struct JobConsumer {
    consumer: PullConsumer,
}

impl JobConsumer {
    /// The next delivery, or `None` if none arrived within `wait`. Takes one
    /// message at a time so a busy worker never hoards batches.
    pub async fn next(&self, wait: Duration) -> Result<Option<Delivery>> {
        let mut batch = self
            .consumer
            .fetch()
            .max_messages(1)
            .expires(wait)
            .messages()
            .await
            .map_err(|e| QueueError::js("fetch", e))?;
        match batch.next().await {
            Some(Ok(message)) => Ok(Some(Delivery { message })),
            Some(Err(e)) => Err(QueueError::js("fetch", e)),
            None => Ok(None),
        }
    }
}

/// One delivery of a batch.
pub struct Delivery {
    message: Message,
}

impl Delivery {
    pub fn payload(&self) -> &Bytes {
        &self.message.payload
    }

    /// The W3C trace headers the batch was published with.
    pub fn trace(&self) -> HashMap<String, String> {
        let Some(headers) = &self.message.headers else { return HashMap::new() };
        ["traceparent", "tracestate"]
            .into_iter()
            .filter_map(|k| Some((k.to_owned(), headers.get(k)?.as_str().to_owned())))
            .collect()
    }

    /// Where the batch is stored in the batch stream.
    pub fn stream_seq(&self) -> u64 {
        self.message.info().map_or(0, |i| i.stream_sequence)
    }

    /// Which delivery of the batch this is, from 1.
    pub fn attempt(&self) -> u64 {
        self.message.info().map_or(1, |i| i.delivered.max(1) as u64)
    }

    /// Asks for more time before redelivery.
    pub async fn in_progress(&self) -> Result<()> {
        self.message.ack_with(AckKind::Progress).await.map_err(|e| QueueError::js("progress", e))
    }

    /// Acknowledges the batch; JetStream removes it from the stream.
    pub async fn ack(&self) -> Result<()> {
        self.message.double_ack().await.map_err(|e| QueueError::js("ack", e))
    }

    /// Asks for redelivery after `delay`.
    pub async fn nak(&self, delay: Duration) -> Result<()> {
        self.message.ack_with(AckKind::Nak(Some(delay))).await.map_err(|e| QueueError::js("nak", e))
    }

    /// Stops delivering the batch.
    pub async fn term(&self) -> Result<()> {
        self.message.ack_with(AckKind::Term).await.map_err(|e| QueueError::js("term", e))
    }
}
