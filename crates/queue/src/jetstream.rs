//! The JetStream implementation.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use async_nats::jetstream::message::AckKind;
use async_nats::jetstream::stream::{self, RetentionPolicy, StorageType};
use async_nats::jetstream::{self as js, Message};
use async_trait::async_trait;
use batchmill_core::BatchId;
use batchmill_core::metrics::{NATS, Timed};
use batchmill_core::subjects::{
    BATCH_STREAM, DEAD_STREAM, EVENT_STREAM, EXHAUSTED_CONSUMER, EXHAUSTED_STREAM, LOG_STREAM, RECORD_STREAM,
    batch_msg_id, batch_subject, consumer_name, dead_letter_msg_id, dead_subject, event_subject, log_subject,
    max_deliveries_subject, record_subject, rerun_msg_id,
};
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use tracing::debug;

use crate::{
    Advisories, Batches, Consumer, DeadLetters, Delivery, DeliveryPolicy, Events, Exhausted, Handled, LogLines, Logs,
    QueueError, Records, Result, Stored, StoredStream, TraceHeaders,
};

/// A connection to JetStream with the batch stream in place.
#[derive(Clone)]
pub struct JetStreamQueue {
    context: js::Context,
}

/// How this process reaches NATS beyond its URL, set once by `main`
/// ([`use_access`]): TLS and a user. Unset: in the clear, anonymous.
#[derive(Clone, Default)]
pub struct NatsAccess {
    pub tls: Option<batchmill_core::client_tls::ClientTls>,
    /// User and password, for a server that requires them.
    pub user: Option<(String, String)>,
}

impl std::fmt::Debug for NatsAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let user = self.user.as_ref().map(|(user, _)| user.as_str());
        f.debug_struct("NatsAccess").field("tls", &self.tls).field("user", &user).finish_non_exhaustive()
    }
}

static ACCESS: std::sync::OnceLock<NatsAccess> = std::sync::OnceLock::new();

/// Makes every later connection of this process to NATS use `access`.
/// Call it once, before connecting.
pub fn use_access(access: NatsAccess) {
    let _ = ACCESS.set(access);
}

/// Connects to the NATS server at `url` as this process reaches NATS.
pub async fn client(url: &str) -> std::result::Result<async_nats::Client, async_nats::ConnectError> {
    let mut options = async_nats::ConnectOptions::new();
    if let Some(access) = ACCESS.get() {
        if let Some(tls) = &access.tls {
            options = options.require_tls(true).add_root_certificates(tls.ca.clone());
            if let Some((cert, key)) = &tls.identity {
                options = options.add_client_certificate(cert.clone(), key.clone());
            }
        }
        if let Some((user, password)) = &access.user {
            options = options.user_and_password(user.clone(), password.clone());
        }
    }
    options.connect(url).await
}

impl JetStreamQueue {
    /// Connects to `url` (retrying for up to `patience`) and creates or
    /// updates the batch stream.
    pub async fn connect(url: &str, patience: Duration) -> Result<JetStreamQueue> {
        let deadline = tokio::time::Instant::now() + patience;
        let client = loop {
            match client(url).await {
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
            subjects: vec![batch_subject("*")],
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
        // Kept by age: log lines a week, batch records and job events a month.
        let logs = kept_for(LOG_STREAM, log_subject("*"), 7);
        context.create_or_update_stream(logs).await.map_err(|e| QueueError::js("create log stream", e))?;
        let records = kept_for(RECORD_STREAM, record_subject("*"), 30);
        context.create_or_update_stream(records).await.map_err(|e| QueueError::js("create record stream", e))?;
        let events = kept_for(EVENT_STREAM, event_subject("*"), 30);
        context.create_or_update_stream(events).await.map_err(|e| QueueError::js("create event stream", e))?;
        Ok(JetStreamQueue { context })
    }

    /// Publishes to `subject` under `msg_id` (a duplicate within the
    /// stream's window is dropped) and waits for JetStream to store it.
    async fn publish(&self, subject: String, msg_id: String, body: Bytes, trace: &TraceHeaders) -> Result<()> {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", msg_id.as_str());
        for (key, value) in trace {
            headers.insert(key.as_str(), value.as_str());
        }
        let err = |e: &dyn std::fmt::Display| QueueError::Publish { msg_id: msg_id.clone(), message: e.to_string() };
        let stored = async {
            let ack = self.context.publish_with_headers(subject, headers, body).await.map_err(|e| err(&e))?;
            ack.await.map_err(|e| err(&e))
        };
        stored.timed(&NATS, "publish").await?;
        Ok(())
    }

    async fn dead_stream(&self) -> Result<stream::Stream> {
        self.context.get_stream(DEAD_STREAM).await.map_err(|e| QueueError::js("get dead-letter stream", e))
    }

    async fn stream(&self) -> Result<stream::Stream> {
        self.context.get_stream(BATCH_STREAM).await.map_err(|e| QueueError::js("get stream", e))
    }
}

#[async_trait]
impl Batches for JetStreamQueue {
    async fn publish_batch(&self, batch: &BatchId, round: u32, body: Bytes, trace: &TraceHeaders) -> Result<()> {
        self.publish(batch_subject(batch.job_id.as_str()), batch_msg_id(batch, round), body, trace).await
    }

    async fn requeue_batch(&self, batch: &BatchId, rerun: u64, body: Bytes) -> Result<()> {
        let subject = batch_subject(batch.job_id.as_str());
        self.publish(subject, rerun_msg_id(batch, rerun), body, &TraceHeaders::new()).await
    }

    async fn open_job(&self, job_id: &str, policy: DeliveryPolicy) -> Result<()> {
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

    async fn close_job(&self, job_id: &str) -> Result<u64> {
        let stream = self.stream().await?;
        let purged = stream.purge().filter(batch_subject(job_id)).await.map_err(|e| QueueError::js("purge", e))?.purged;
        match stream.delete_consumer(&consumer_name(job_id)).await {
            Ok(_) => {}
            Err(e) if consumer_missing(&e) => {}
            Err(e) => return Err(QueueError::js("delete consumer", e)),
        }
        Ok(purged)
    }

    async fn job_consumer(&self, job_id: &str) -> Result<Arc<dyn Consumer>> {
        let stream = self.stream().await?;
        let consumer: PullConsumer = stream
            .get_consumer(&consumer_name(job_id))
            .await
            .map_err(|_| QueueError::NoConsumer { job_id: job_id.to_owned() })?;
        Ok(Arc::new(JobConsumer { consumer, stream, job_id: job_id.to_owned() }))
    }

    async fn read(&self, stream_seq: u64) -> Result<Option<Bytes>> {
        match self.stream().await?.get_raw_message(stream_seq).await {
            Ok(message) => Ok(Some(message.payload)),
            Err(e) if matches!(e.kind(), async_nats::jetstream::stream::RawMessageErrorKind::NoMessageFound) => {
                Ok(None)
            }
            Err(e) => Err(QueueError::js("read message", e)),
        }
    }

    async fn remove(&self, stream_seq: u64) -> Result<()> {
        self.stream().await?.delete_message(stream_seq).await.map_err(|e| QueueError::js("delete message", e))?;
        Ok(())
    }
}

#[async_trait]
impl DeadLetters for JetStreamQueue {
    async fn dead_letter(&self, batch: &BatchId, batch_stream_seq: u64, body: Bytes) -> Result<()> {
        let msg_id = dead_letter_msg_id(batch, batch_stream_seq);
        self.publish(dead_subject(batch.job_id.as_str()), msg_id, body, &TraceHeaders::new()).await
    }

    async fn dead_letters(&self, job_id: &str, from: u64, limit: usize) -> Result<Vec<Stored>> {
        read_subject(&self.dead_stream().await?, &dead_subject(job_id), from, limit, "read dead letters").await
    }

    async fn remove_dead_letter(&self, stream_seq: u64) -> Result<()> {
        self.dead_stream()
            .await?
            .delete_message(stream_seq)
            .await
            .map_err(|e| QueueError::js("delete dead letter", e))?;
        Ok(())
    }
}

#[async_trait]
impl Records for JetStreamQueue {
    async fn publish_record(&self, job_id: &str, record: Bytes) -> Result<()> {
        let ack =
            self.context.publish(record_subject(job_id), record).await.map_err(|e| QueueError::js("record", e))?;
        ack.await.map_err(|e| QueueError::js("record ack", e))?;
        Ok(())
    }

    async fn records(&self, job_id: &str, from: u64, limit: usize) -> Result<Vec<Stored>> {
        let stream =
            self.context.get_stream(RECORD_STREAM).await.map_err(|e| QueueError::js("get record stream", e))?;
        read_subject(&stream, &record_subject(job_id), from, limit, "read batch records").await
    }
}

#[async_trait]
impl Events for JetStreamQueue {
    async fn publish_event(&self, job_id: &str, event: Bytes) -> Result<u64> {
        let err = |e: &dyn std::fmt::Display| QueueError::Publish {
            msg_id: format!("event of {job_id}"),
            message: e.to_string(),
        };
        let ack = self.context.publish(event_subject(job_id), event).await.map_err(|e| err(&e))?;
        Ok(ack.await.map_err(|e| err(&e))?.sequence)
    }

    async fn events(&self, job_id: &str, from: u64, limit: usize) -> Result<Vec<Stored>> {
        let stream = self.context.get_stream(EVENT_STREAM).await.map_err(|e| QueueError::js("get event stream", e))?;
        read_subject(&stream, &event_subject(job_id), from, limit, "read events").await
    }

    /// Through an ordered consumer from `from`, which follows the stream
    /// and goes away once the returned stream is dropped.
    async fn follow_events(&self, job_id: &str, from: u64) -> Result<StoredStream> {
        const OP: &str = "follow events";
        let stream = self.context.get_stream(EVENT_STREAM).await.map_err(|e| QueueError::js("get event stream", e))?;
        let config = pull::OrderedConfig {
            filter_subject: event_subject(job_id),
            deliver_policy: DeliverPolicy::ByStartSequence { start_sequence: from.max(1) },
            ..Default::default()
        };
        let consumer = stream.create_consumer(config).await.map_err(|e| QueueError::js(OP, e))?;
        let messages = consumer.messages().await.map_err(|e| QueueError::js(OP, e))?;
        Ok(messages
            .map(|m| {
                let m = m.map_err(|e| QueueError::js(OP, e))?;
                let info = m.info().map_err(|e| QueueError::JetStream { op: OP, message: e.to_string() })?;
                Ok(Stored { stream_seq: info.stream_sequence, payload: m.payload.clone() })
            })
            .boxed())
    }
}

#[async_trait]
impl Logs for JetStreamQueue {
    async fn publish_log(&self, job_id: &str, line: Bytes) -> Result<()> {
        // The publish acknowledgement is not awaited.
        let _ack = self.context.publish(log_subject(job_id), line).await.map_err(|e| QueueError::js("log", e))?;
        Ok(())
    }

    /// Lines are read through an ephemeral ordered consumer, in batches; it
    /// goes away once the stream is dropped and it sits idle.
    async fn logs(&self, job_id: &str, follow: bool) -> Result<LogLines> {
        let stream = self.context.get_stream(LOG_STREAM).await.map_err(|e| QueueError::js("get log stream", e))?;
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
}

#[async_trait]
impl Advisories for JetStreamQueue {
    async fn exhausted(&self) -> Result<BoxStream<'static, Result<Exhausted>>> {
        let stream =
            self.context.get_stream(EXHAUSTED_STREAM).await.map_err(|e| QueueError::js("get advisory stream", e))?;
        let config = pull::Config {
            durable_name: Some(EXHAUSTED_CONSUMER.to_owned()),
            ack_policy: AckPolicy::Explicit,
            ack_wait: Duration::from_secs(30),
            ..Default::default()
        };
        let consumer: PullConsumer = stream
            .get_or_create_consumer(EXHAUSTED_CONSUMER, config)
            .await
            .map_err(|e| QueueError::js("advisory consumer", e))?;
        let messages = consumer.messages().await.map_err(|e| QueueError::js("advisory messages", e))?;
        Ok(messages
            .map(|message| {
                let message = message.map_err(|e| QueueError::js("advisory", e))?;
                // An unreadable advisory reads as stream_seq 0: its reader drops it.
                let advisory: MaxDeliveries = serde_json::from_slice(&message.payload).unwrap_or_default();
                Ok(Exhausted::new(advisory.stream_seq, advisory.deliveries, Box::new(Advisory(message))))
            })
            .boxed())
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

/// Whether deleting a consumer failed because there was none.
fn consumer_missing(e: &async_nats::jetstream::stream::ConsumerError) -> bool {
    use async_nats::jetstream::ErrorCode;
    matches!(e.kind(), async_nats::jetstream::stream::ConsumerErrorKind::JetStream(j) if j.error_code() == ErrorCode::CONSUMER_NOT_FOUND)
}

/// How long a read waits for a message it knows is there.
const READ_PATIENCE: Duration = Duration::from_secs(10);

/// A max-deliveries advisory, acked once handled.
struct Advisory(Message);

#[async_trait]
impl Handled for Advisory {
    async fn handled(&self) -> Result<()> {
        self.0.double_ack().await.map_err(|e| QueueError::js("ack advisory", e))
    }
}

/// The fields of `io.nats.jetstream.advisory.v1.max_deliver` batchmill reads.
#[derive(serde::Deserialize, Default)]
struct MaxDeliveries {
    stream_seq: u64,
    deliveries: u64,
}

/// A job's consumer, as one worker sees it.
struct JobConsumer {
    consumer: PullConsumer,
    stream: stream::Stream,
    job_id: String,
}

#[async_trait]
impl Consumer for JobConsumer {
    async fn next(&self, wait: Duration) -> Result<Option<Box<dyn Delivery>>> {
        Ok(self.next_many(1, wait).await?.pop())
    }

    async fn next_many(&self, max: usize, wait: Duration) -> Result<Vec<Box<dyn Delivery>>> {
        let fetched = self.consumer.fetch().max_messages(max.max(1)).expires(wait).messages().await;
        let mut batch = match fetched {
            Ok(batch) => batch,
            Err(e) => return Err(self.why(QueueError::js("fetch", e)).await),
        };
        let mut taken: Vec<Box<dyn Delivery>> = Vec::new();
        while let Some(message) = batch.next().await {
            match message {
                Ok(message) => taken.push(Box::new(JsDelivery { message })),
                // What came before the error is held already: hand it out.
                Err(_) if !taken.is_empty() => break,
                Err(e) => return Err(self.why(QueueError::js("fetch", e)).await),
            }
        }
        Ok(taken)
    }
}

impl JobConsumer {
    /// A fetch fails without saying why in a type: ask whether the consumer
    /// is still there (a closed job's consumer is deleted).
    async fn why(&self, error: QueueError) -> QueueError {
        match self.stream.consumer_info(consumer_name(&self.job_id)).await {
            Err(e) if matches!(e.kind(), async_nats::jetstream::context::ConsumerInfoErrorKind::NotFound) => {
                QueueError::ConsumerDeleted { job_id: self.job_id.clone() }
            }
            _ => error,
        }
    }
}

/// One delivery of a batch.
struct JsDelivery {
    message: Message,
}

#[async_trait]
impl Delivery for JsDelivery {
    fn payload(&self) -> &Bytes {
        &self.message.payload
    }

    fn trace(&self) -> TraceHeaders {
        let Some(headers) = &self.message.headers else { return TraceHeaders::new() };
        ["traceparent", "tracestate"]
            .into_iter()
            .filter_map(|k| Some((k.to_owned(), headers.get(k)?.as_str().to_owned())))
            .collect()
    }

    fn stream_seq(&self) -> u64 {
        self.message.info().map_or(0, |i| i.stream_sequence)
    }

    fn attempt(&self) -> u64 {
        self.message.info().map_or(1, |i| i.delivered.max(1) as u64)
    }

    async fn in_progress(&self) -> Result<()> {
        self.message.ack_with(AckKind::Progress).await.map_err(|e| QueueError::js("progress", e))
    }

    async fn ack(&self) -> Result<()> {
        self.message.double_ack().timed(&NATS, "ack").await.map_err(|e| QueueError::js("ack", e))
    }

    async fn nak(&self, delay: Duration) -> Result<()> {
        self.message.ack_with(AckKind::Nak(Some(delay))).timed(&NATS, "nak").await.map_err(|e| QueueError::js("nak", e))
    }

    async fn term(&self) -> Result<()> {
        self.message.ack_with(AckKind::Term).await.map_err(|e| QueueError::js("term", e))
    }
}
