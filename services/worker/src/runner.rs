//! Runs one assigned job: pulls its batches one at a time, runs the
//! predictor, writes `<output_uri>/<job_id>/<batch_id>.jsonl`, reports the
//! outcome and, once the scheduler confirms it is in the ledger, acks the
//! message. Only the predictor is on the critical path: the write, the
//! report and the ack run in the background while the next batch predicts.
//! A failed delivery is nak'ed with backoff; after its last delivery the
//! batch goes to the dead-letter stream and is term'ed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use batchmill_blob::Blob;
use batchmill_core::S3Uri;
use batchmill_core::time::duration_ms;
use batchmill_proto::jobs::v1::{BatchRecord, BatchState};
use batchmill_proto::queue::v1::{Batch, DeadLetter};
use batchmill_proto::scheduler::v1::{self as pb, BatchStatus};
use batchmill_queue::{Delivery, JetStreamQueue, JobConsumer};
use bytes::Bytes;
use prost::Message;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, instrument, warn};

use crate::joblog::JobLog;
use crate::loader::Loader;
use crate::predictor::{BatchInput, MAX_LANES, PredictError, Predictor};
use crate::session::Outbox;

/// How long to wait for the scheduler to confirm an outcome.
const ACK_TIMEOUT: Duration = Duration::from_secs(30);

/// Everything a job run needs.
pub struct JobRun {
    pub assign: pb::Assign,
    pub queue: JetStreamQueue,
    pub blob: Blob,
    pub outbox: Outbox,
    pub worker_id: String,
    pub loader: Loader,
    pub log: JobLog,
}

impl JobRun {
    /// Takes batches until `stop` (revoked, drained, session lost); the batch
    /// in hand is finished first.
    #[instrument(skip_all, fields(job_id = %self.assign.job_id))]
    pub async fn run(self, stop: CancellationToken) {
        let loading = self.loader.load(&self.assign);
        let loaded = tokio::select! {
            () = stop.cancelled() => return,
            loaded = loading => loaded,
        };
        let predictor: Arc<dyn Predictor> = match loaded {
            Ok(p) => p,
            Err(e) => {
                warn!(error = %e, "cannot run the job's pipeline");
                self.log("", "ERROR", format!("cannot run pipeline {}: {e}", self.assign.pipeline)).await;
                self.outbox.fail_start(&self.assign.job_id, &e);
                return;
            }
        };
        self.outbox.started(&self.assign.job_id);
        let output = match S3Uri::parse(&self.assign.output_uri) {
            Ok(uri) => uri.join(&self.assign.job_id),
            Err(e) => {
                self.outbox.release(&self.assign.job_id, &e);
                return;
            }
        };
        let consumer = loop {
            match self.queue.job_consumer(&self.assign.job_id).await {
                Ok(c) => break c,
                Err(e) => {
                    warn!(error = %e, "job consumer unavailable; retrying");
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        };
        let lanes = predictor.lanes().clamp(1, MAX_LANES);
        info!(lanes, "taking batches");
        self.log("", "INFO", format!("worker {} started on pipeline {}", self.worker_id, self.assign.pipeline)).await;
        let this = Arc::new(self);
        let mut running = tokio::task::JoinSet::new();
        for _ in 0..lanes {
            let lane = this.clone().lane(predictor.clone(), consumer.clone(), output.clone(), stop.clone());
            running.spawn(lane.in_current_span());
        }
        while running.join_next().await.is_some() {}
    }

    /// Takes one batch at a time until `stop`, predicts it, and leaves its
    /// write and settling to the background. A predictor with several lanes
    /// runs this once per lane, so that one batch's work on the host overlaps
    /// another's on the device.
    async fn lane(
        self: Arc<Self>,
        predictor: Arc<dyn Predictor>,
        consumer: JobConsumer,
        output: S3Uri,
        stop: CancellationToken,
    ) {
        let mut settling = tokio::task::JoinSet::new();
        while !stop.is_cancelled() {
            let delivery = tokio::select! {
                () = stop.cancelled() => break,
                d = consumer.next(Duration::from_secs(2)) => d,
            };
            match delivery {
                // A batch once taken runs to the end, even when stopping.
                Ok(Some(delivery)) => {
                    let span =
                        tracing::info_span!("batch", batch_id = tracing::field::Empty, attempt = delivery.attempt());
                    batchmill_runtime::trace::set_parent(&span, &delivery.trace());
                    // Writing the result, then settling (confirmation, then
                    // ack), overlaps the next batch.
                    if let Some(predicted) = self.predict(&predictor, delivery).instrument(span.clone()).await {
                        let (run, output) = (self.clone(), output.clone());
                        settling.spawn(
                            async move {
                                let ran = run.finish(&output, predicted).await;
                                ran.settle(run.outbox.clone(), run.queue.clone(), run.ack_wait()).await;
                            }
                            .instrument(span),
                        );
                    }
                    while settling.len() >= MAX_UNSETTLED {
                        settling.join_next().await;
                    }
                    while settling.try_join_next().is_some() {}
                }
                Ok(None) => {}
                Err(e) if e.to_string().contains("Consumer Deleted") => {
                    // The job ended and its queue is gone; the revoke follows.
                    info!("job consumer deleted; stopping");
                    break;
                }
                Err(e) => {
                    warn!(error = %e, "pull failed");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
        while settling.join_next().await.is_some() {}
    }

    /// Runs the predictor on one delivery, keeping the delivery ours
    /// meanwhile; None for a message that is no batch (terminated).
    async fn predict(&self, predictor: &Arc<dyn Predictor>, delivery: Delivery) -> Option<Predicted> {
        let started = Instant::now();
        let batch = match Batch::decode(delivery.payload().as_ref()) {
            Ok(b) => b,
            Err(e) => {
                warn!(error = %e, "undecodable batch; terminating it");
                let _ = delivery.term().await;
                return None;
            }
        };
        let batch_id = format!("{}-{}", batch.job_id, batch.seq);
        tracing::Span::current().record("batch_id", batch_id.as_str());
        let result = self.in_progress(&delivery, run_predictor(predictor, &batch, &batch_id)).await;
        Some(Predicted { delivery, batch, batch_id, started, result })
    }

    /// [`keep_in_progress`] with the job's ack_wait.
    async fn in_progress<T>(&self, delivery: &Delivery, work: impl Future<Output = T>) -> T {
        keep_in_progress(delivery, self.ack_wait(), work).await
    }

    fn ack_wait(&self) -> Duration {
        Duration::from_millis(self.assign.ack_wait.as_ref().map_or(30_000, batchmill_core::time::duration_to_ms))
    }

    /// Writes a predicted batch's result and works out its outcome, left to
    /// settle.
    async fn finish(&self, output: &S3Uri, predicted: Predicted) -> Ran {
        let Predicted { delivery, batch, batch_id, started, result } = predicted;
        let result = match result {
            Ok(body) => self.in_progress(&delivery, self.write(output, &batch_id, body)).await,
            Err(e) => Err(e),
        };
        let attempt = delivery.attempt();
        let items = batch.items.len() as i64;
        let last = attempt >= u64::from(self.assign.max_deliver.max(1));
        let (status, error) = match &result {
            Ok(()) => (BatchStatus::Succeeded, String::new()),
            Err(PredictError::Permanent(e)) => (BatchStatus::FailedFinal, e.clone()),
            Err(PredictError::Retryable(e)) if last => (BatchStatus::FailedFinal, e.clone()),
            Err(PredictError::Retryable(e)) => (BatchStatus::FailedRetryable, e.clone()),
        };
        let trace_id = batchmill_runtime::trace::trace_id();
        let elapsed_ms = started.elapsed().as_millis() as u64;
        let max = self.assign.max_deliver.max(1);
        if status == BatchStatus::Succeeded {
            tracing::debug!(%batch_id, attempt, %trace_id, "batch done");
            self.log(
                &batch_id,
                "INFO",
                format!("succeeded: {items} items in {elapsed_ms} ms (delivery {attempt} of {max})"),
            )
            .await;
        } else {
            warn!(%batch_id, attempt, error = %error, ?status, %trace_id, "batch failed");
            let next = if status == BatchStatus::FailedFinal { "dead-lettered" } else { "will be retried" };
            self.log(&batch_id, "ERROR", format!("failed on delivery {attempt} of {max}, {next}: {error}")).await;
        }
        let dead_letter = (status == BatchStatus::FailedFinal).then(|| DeadLetter {
            attempts: attempt,
            last_error: error.clone(),
            worker_id: self.worker_id.clone(),
            time_ms: batchmill_core::time::now_ms(),
            duration_ms: elapsed_ms,
            batch: Some(batch.clone()),
        });
        let record = matches!(status, BatchStatus::Succeeded | BatchStatus::FailedFinal).then(|| BatchRecord {
            batch_id: batch_id.clone(),
            seq: batch.seq as i64,
            state: if status == BatchStatus::Succeeded { BatchState::Succeeded } else { BatchState::Failed } as i32,
            items,
            attempts: attempt as i64,
            worker_id: self.worker_id.clone(),
            duration: Some(duration_ms(elapsed_ms)),
            last_error: error.clone(),
            end_time: Some(batchmill_core::time::timestamp(batchmill_core::time::now_ms())),
        });
        let outcome = pb::BatchOutcome {
            job_id: batch.job_id,
            seq: batch.seq,
            status: status as i32,
            items,
            error,
            duration: Some(duration_ms(elapsed_ms)),
            attempt,
        };
        Ran { delivery, ending: Ending { outcome, batch_id, dead_letter, record } }
    }

    async fn log(&self, batch_id: &str, level: &str, message: String) {
        self.log.line(batch_id, level, message).await;
    }

    /// Writes a batch's result object.
    async fn write(&self, output: &S3Uri, batch_id: &str, body: Vec<u8>) -> Result<(), PredictError> {
        let key = output.join(&format!("{batch_id}.jsonl"));
        self.blob
            .put(&key.bucket, &key.key, Bytes::from(body), "application/x-ndjson")
            .await
            .map_err(|e| PredictError::Retryable(format!("writing {key}: {e}")))
    }
}

/// A batch whose predictor has run, its result not yet written.
struct Predicted {
    delivery: Delivery,
    batch: Batch,
    batch_id: String,
    started: Instant,
    /// The NDJSON result, or why there is none.
    result: Result<Vec<u8>, PredictError>,
}

/// Runs the predictor on `batch`, returning its NDJSON result. Parsing,
/// predicting and writing the NDJSON all run off the async threads.
async fn run_predictor(predictor: &Arc<dyn Predictor>, batch: &Batch, batch_id: &str) -> Result<Vec<u8>, PredictError> {
    let (predictor, id, seq, first_item) = (predictor.clone(), batch_id.to_owned(), batch.seq, batch.first_item);
    let raw = batch.items.clone();
    tokio::task::spawn_blocking(move || {
        let items: Vec<Value> = raw
            .iter()
            .map(|s| serde_json::from_str(s))
            .collect::<Result<_, _>>()
            .map_err(|e| PredictError::Permanent(format!("batch {id} holds an item that is not JSON: {e}")))?;
        predictor.predict_ndjson(&BatchInput { batch_id: &id, seq, first_item, items: &items })
    })
    .await
    .map_err(|e| PredictError::Retryable(format!("predictor crashed: {e}")))?
}

/// A batch that ran and whose outcome is still to be settled.
struct Ran {
    delivery: Delivery,
    ending: Ending,
}

/// How a batch ended, to be made durable before its message is settled.
struct Ending {
    outcome: pb::BatchOutcome,
    batch_id: String,
    /// For a batch that failed for good: what goes to the dead-letter stream.
    dead_letter: Option<DeadLetter>,
    /// For a batch that is final: how it ended, for the batch records.
    record: Option<BatchRecord>,
}

impl Ran {
    /// Reports the outcome and, once the scheduler confirms it is durable,
    /// acks the message (nak with backoff for a retry, term when final).
    /// Without confirmation the batch is redelivered and counted once. The
    /// message stays ours until then, however long the streams or the
    /// scheduler's ledger take: slowness is no reason to run the batch again
    /// elsewhere and spend one of its deliveries.
    async fn settle(self, outbox: Outbox, queue: JetStreamQueue, ack_wait: Duration) {
        let Ran { delivery, ending } = self;
        let (status, attempt) = (ending.outcome.status(), ending.outcome.attempt);
        let batch_id = ending.batch_id.clone();
        if !keep_in_progress(&delivery, ack_wait, ending.store(&outbox, &queue, delivery.stream_seq())).await {
            return;
        }
        let settled = match status {
            BatchStatus::Succeeded => delivery.ack().await,
            BatchStatus::FailedFinal => delivery.term().await,
            _ => delivery.nak(backoff(attempt)).await,
        };
        if let Err(e) = settled {
            warn!(%batch_id, error = %e, "settling the message failed");
        }
    }
}

impl Ending {
    /// Makes the outcome durable: the dead letter (for a batch that failed
    /// for good), the record (for a final one), then the outcome, reported to
    /// the scheduler; true once the scheduler confirms it. `stream_seq` is
    /// where the batch is in the batch stream.
    ///
    /// If the dead letter cannot be stored, the message is left alone, and
    /// once its deliveries run out the scheduler dead-letters it from the
    /// advisory.
    async fn store(self, outbox: &Outbox, queue: &JetStreamQueue, stream_seq: u64) -> bool {
        let Ending { outcome, batch_id, dead_letter, record } = self;
        let job_id = outcome.job_id.clone();
        if let Some(dead) = dead_letter {
            let msg_id = batchmill_queue::dead_letter_id(&job_id, outcome.seq, stream_seq);
            if let Err(e) = queue.dead_letter(&job_id, &msg_id, Bytes::from(dead.encode_to_vec())).await {
                warn!(%batch_id, error = %e, "dead-lettering failed; leaving the batch to the scheduler");
                return false;
            }
            info!(%batch_id, attempt = outcome.attempt, "batch dead-lettered");
        }
        // Stored before the outcome, so that a job that has ended has every
        // batch's record.
        if let Some(record) = record
            && let Err(e) = queue.publish_record(&job_id, Bytes::from(record.encode_to_vec())).await
        {
            warn!(%batch_id, error = %e, "storing the batch record failed");
        }
        let confirmed = outbox.report(outcome, ACK_TIMEOUT).await;
        if !confirmed {
            warn!(%batch_id, "outcome not confirmed; leaving the batch for redelivery");
        }
        confirmed
    }
}

/// Runs `work` while keeping `delivery` ours: progress is reported well
/// within `ack_wait` so the message is not redelivered to another worker.
async fn keep_in_progress<T>(delivery: &Delivery, ack_wait: Duration, work: impl Future<Output = T>) -> T {
    tokio::pin!(work);
    let mut tick = tokio::time::interval((ack_wait / 3).max(Duration::from_millis(100)));
    tick.tick().await;
    loop {
        tokio::select! {
            r = &mut work => break r,
            _ = tick.tick() => { let _ = delivery.in_progress().await; }
        }
    }
}

/// Most batches run but not yet settled, per lane.
const MAX_UNSETTLED: usize = 8;

/// Delay before redelivering a failed batch: 1s, 2s, 4s, ... up to 30s.
pub fn backoff(attempt: u64) -> Duration {
    Duration::from_secs(1u64 << attempt.saturating_sub(1).min(5)).min(Duration::from_secs(30))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(2), Duration::from_secs(2));
        assert_eq!(backoff(4), Duration::from_secs(8));
        assert_eq!(backoff(50), Duration::from_secs(30));
    }
}
