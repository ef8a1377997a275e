//! Runs one assigned job: pulls its batches, runs the predictor, writes
//! `<output_uri>/<job_id>/<batch_id>.jsonl`, reports the outcome and, once
//! the scheduler confirms it is in the ledger, acks the message. Only the
//! predictor is on the critical path: the write, the report and the ack run
//! in the background while the next batch predicts.
//!
//! A message may hold a group of small batches (see
//! `batchmill_core::batch`): they predict one after another, and their
//! results go into one object, `<job_id>-<first>-<last>.jsonl`, written only
//! once every batch of the group is final. Until then no success of the
//! group is reported; its failures are, and the whole group runs again.
//!
//! Only the predictor's own failures spend a batch's deliveries: a failed
//! delivery is nak'ed with backoff, and after its last one the batch goes
//! to the dead-letter stream and is term'ed. A failure of what the worker
//! depends on (S3 or NATS unreachable, a 5xx, a timeout; the scheduler
//! between leaders) is retried in place, with backoff and jitter, while the
//! message is kept in progress (see `settle.rs`).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use batchmill_blob::ObjectStore;
use batchmill_core::batch::{BatchEnd, group_uri, result_uri};
use batchmill_core::{BatchId, S3Uri};
use batchmill_proto::queue::v1::Batch;
use batchmill_proto::scheduler::v1::{self as pb, BatchStatus};
use batchmill_queue::{Consumer, Delivery, Queue, QueueError};
use bytes::Bytes;
use prost::Message;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, instrument, warn};

use crate::joblog::JobLog;
use crate::loader::Loader;
use crate::predictor::{BatchInput, MAX_LANES, PredictError, Predictor};
use crate::session::Outbox;
use crate::settle::{Ran, Settle, keep_in_progress, retry_in_place};

/// Everything a job run needs.
pub struct JobRun {
    pub assign: pb::Assign,
    pub queue: Arc<dyn Queue>,
    pub blob: Arc<dyn ObjectStore>,
    pub outbox: Outbox,
    pub worker_id: String,
    pub loader: Loader,
    pub log: JobLog,
    /// Cancelled when the job is taken from this worker (it ended, or was
    /// cancelled): batches in hand stop waiting out failures of S3 or NATS.
    pub revoked: CancellationToken,
    /// Where the job's own input objects are read.
    pub inputs: Inputs,
}

/// Where a job's own input objects (named inputs' objects) are read.
pub enum Inputs {
    /// The job's own access; opened when the job starts.
    Config(batchmill_blob::S3Config),
    /// An open store: the job's own, or the cluster's for a job that brings
    /// no credentials (the scheduler fenced off the cluster's own places in
    /// S3 from what such a job may name).
    Store(Arc<dyn ObjectStore>),
}

impl Inputs {
    async fn open(self) -> Inputs {
        match self {
            Inputs::Config(config) => Inputs::Store(Arc::new(batchmill_blob::Blob::new(&config).await)),
            other => other,
        }
    }

    fn store(&self) -> Option<&Arc<dyn ObjectStore>> {
        match self {
            Inputs::Store(store) => Some(store),
            Inputs::Config(_) => None,
        }
    }
}

impl JobRun {
    /// Takes batches until `stop` (revoked, drained, session lost); the
    /// batches in hand are finished first.
    #[instrument(skip_all, fields(job_id = %self.assign.job_id))]
    pub async fn run(mut self, stop: CancellationToken) {
        self.inputs = std::mem::replace(&mut self.inputs, Inputs::Store(self.blob.clone())).open().await;
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
                self.outbox.fail_start(&self.assign.job_id, &e.to_string(), e.out_of_memory());
                return;
            }
        };
        self.outbox.started(&self.assign.job_id);
        let output = match S3Uri::parse(&self.assign.output_uri) {
            Ok(uri) => uri,
            Err(e) => {
                self.outbox.release(&self.assign.job_id, &e.to_string());
                return;
            }
        };
        let Some(consumer) = self.consumer(&stop).await else { return };
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

    /// The job's consumer, once it is there; None if stopped first.
    async fn consumer(&self, stop: &CancellationToken) -> Option<Arc<dyn Consumer>> {
        loop {
            match self.queue.job_consumer(&self.assign.job_id).await {
                Ok(c) => return Some(c),
                Err(e) => {
                    warn!(error = %e, "job consumer unavailable; retrying");
                    tokio::select! {
                        () = stop.cancelled() => return None,
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
    }

    /// Takes batches until `stop`, predicts each, and leaves its write and
    /// settling to the background. A predictor with several lanes runs this
    /// once per lane, so that one batch's work on the host overlaps
    /// another's on the device. Batches that predict quickly are pulled
    /// several per trip to the server ([`Pace`]); slow ones one at a time,
    /// so that a busy worker never hoards them.
    async fn lane(
        self: Arc<Self>,
        predictor: Arc<dyn Predictor>,
        consumer: Arc<dyn Consumer>,
        output: S3Uri,
        stop: CancellationToken,
    ) {
        let mut settling = tokio::task::JoinSet::new();
        let mut taken: VecDeque<Box<dyn Delivery>> = VecDeque::new();
        let mut pace = Pace::default();
        // A batch once taken runs to the end, even when stopping.
        loop {
            let Some(delivery) = taken.pop_front() else {
                if stop.is_cancelled() {
                    break;
                }
                let pulled = tokio::select! {
                    () = stop.cancelled() => break,
                    d = consumer.next_many(pace.pull(), Duration::from_secs(2)) => d,
                };
                match pulled {
                    Ok(deliveries) => taken.extend(deliveries),
                    Err(QueueError::ConsumerDeleted { .. }) => {
                        // The job ended and its queue is gone; the revoke follows.
                        info!("job consumer deleted; stopping");
                        break;
                    }
                    Err(e) => {
                        warn!(error = %e, "pull failed");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
                continue;
            };
            let span = tracing::info_span!("batch", batch_id = tracing::field::Empty, attempt = delivery.attempt());
            batchmill_runtime::trace::set_parent(&span, &delivery.trace());
            let started = Instant::now();
            // Writing the result, then settling (confirmation, then ack),
            // overlaps the next batch.
            if let Some(predicted) = self.predict(&predictor, delivery).instrument(span.clone()).await {
                let (run, output) = (self.clone(), output.clone());
                settling.spawn(async move { run.finish(&output, predicted).await.settle(&run).await }.instrument(span));
            }
            pace.ran(started.elapsed());
            if settling.len() >= MAX_UNSETTLED {
                self.wait_for_settling(&mut settling, &taken).await;
            }
            while settling.try_join_next().is_some() {}
        }
        while settling.join_next().await.is_some() {}
    }

    /// Waits until fewer than [`MAX_UNSETTLED`] batches are settling; the
    /// batches in hand (`taken`) stay ours meanwhile.
    async fn wait_for_settling(&self, settling: &mut tokio::task::JoinSet<()>, taken: &VecDeque<Box<dyn Delivery>>) {
        let period = (self.ack_wait() / 3).max(Duration::from_millis(100));
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        while settling.len() >= MAX_UNSETTLED {
            tokio::select! {
                _ = settling.join_next() => {}
                _ = tick.tick() => {
                    for delivery in taken {
                        if let Err(e) = delivery.in_progress().await {
                            warn!(error = %e, "keeping a batch in hand failed");
                        }
                    }
                }
            }
        }
    }

    /// Runs the predictor on one delivery's batches, keeping the delivery
    /// ours meanwhile; None for a message that is no batch (terminated).
    async fn predict(&self, predictor: &Arc<dyn Predictor>, delivery: Box<dyn Delivery>) -> Option<Predicted> {
        let started = Instant::now();
        let decoded = Batch::decode(delivery.payload().as_ref()).map_err(|e| e.to_string());
        let batches = decoded.and_then(|message| {
            let batches = batchmill_core::batch::unpack(message);
            let ids: Result<Vec<BatchId>, _> = batches.iter().map(BatchId::of).collect();
            ids.map(|ids| batches.into_iter().zip(ids).collect::<Vec<_>>()).map_err(|e| e.to_string())
        });
        let batches = match batches {
            Ok(found) => found,
            Err(e) => {
                warn!(error = %e, "undecodable batch; terminating it");
                let _ = delivery.term().await;
                return None;
            }
        };
        if let Some((_, id)) = batches.first() {
            tracing::Span::current().record("batch_id", tracing::field::display(id));
        }
        let mut ran = Vec::with_capacity(batches.len());
        for (mut batch, id) in batches {
            let began = Instant::now();
            let running = crate::metrics::running();
            let mut result = Ok(());
            if crate::objects::has_objects(&batch) {
                let reading = crate::objects::resolve(self.inputs.store(), &mut batch, &self.revoked);
                result = self.in_progress(delivery.as_ref(), reading).await;
            }
            let result = match result {
                Ok(()) => self.in_progress(delivery.as_ref(), run_predictor(predictor, &batch, &id)).await,
                Err(e) => Err(e),
            };
            drop(running);
            let took = began.elapsed();
            crate::metrics::ran(result.is_ok(), batch.items.len(), took);
            ran.push(Predict { batch, id, result, ms: took.as_millis() as u64, isolated: None });
        }
        if self.assign.bisect {
            self.isolate(predictor, delivery.as_ref(), &mut ran).await;
        }
        Some(Predicted { delivery, started, batches: ran })
    }

    /// Bisects each batch of a delivery that failed for good, to isolate
    /// its failing items ([`crate::bisect`]); not while the message runs
    /// again (a group whose failures have deliveries left).
    async fn isolate(&self, predictor: &Arc<dyn Predictor>, delivery: &dyn Delivery, ran: &mut [Predict]) {
        let last = self.is_last(delivery.attempt());
        if ran.iter().any(|b| matches!(b.result, Err(PredictError::Retryable(_))) && !last) {
            return;
        }
        for b in ran.iter_mut() {
            let Err(PredictError::Permanent(error) | PredictError::Retryable(error)) = &b.result else { continue };
            if b.batch.items.len() < 2 {
                continue;
            }
            let run = |part: Batch| {
                let (predictor, id) = (predictor.clone(), b.id.clone());
                async move { run_predictor(&predictor, &part, &id).await }
            };
            let isolated = self.in_progress(delivery, crate::bisect::isolate(&b.batch, error, run)).await;
            if let Some(found) = &isolated {
                let (failed, items) = (found.failed.len(), b.batch.items.len());
                info!(batch_id = %b.id, failed, items, "failing items isolated");
            }
            b.isolated = isolated;
        }
    }

    /// Whether delivery `attempt` is the batch's last.
    fn is_last(&self, attempt: u64) -> bool {
        attempt >= u64::from(self.assign.max_deliver.max(1))
    }

    /// [`keep_in_progress`] with the job's ack_wait.
    async fn in_progress<T>(&self, delivery: &dyn Delivery, work: impl Future<Output = T>) -> T {
        keep_in_progress(delivery, self.ack_wait(), work).await
    }

    pub(crate) fn ack_wait(&self) -> Duration {
        Duration::from_millis(self.assign.ack_wait.as_ref().map_or(30_000, batchmill_core::time::duration_to_ms))
    }

    /// The wait before a failed batch is delivered again, as the job's
    /// pipeline version sets it.
    pub(crate) fn backoff(&self) -> batchmill_core::backoff::Backoff {
        batchmill_core::backoff::Backoff::from_proto(
            self.assign.initial_backoff.as_ref(),
            self.assign.max_backoff.as_ref(),
        )
    }

    /// Writes a predicted message's results and works out how each of its
    /// batches ended, left to settle.
    async fn finish(&self, output: &S3Uri, predicted: Predicted) -> Ran {
        let Predicted { delivery, started, mut batches } = predicted;
        let attempt = delivery.attempt();
        let last = self.is_last(attempt);
        let group = match (batches.first(), batches.last()) {
            (Some(first), Some(end)) if batches.len() > 1 => Some((first.batch.seq, end.batch.seq)),
            _ => None,
        };
        // A group whose failures have deliveries left runs again whole.
        let again = |b: &Predict| matches!(b.result, Err(PredictError::Retryable(_))) && !last;
        if !batches.iter().any(again) && batches.iter().any(|b| b.result.is_ok()) {
            self.write_results(output, delivery.as_ref(), &mut batches, group).await;
        }
        self.write_isolated(output, delivery.as_ref(), &mut batches).await;
        let settles = !batches.iter().any(again);
        let mut endings = Vec::with_capacity(batches.len());
        let mut items = 0;
        for Predict { batch, id, result, ms, isolated } in batches {
            let (status, mut error) = match result {
                // A success in a group that runs again is not reported yet.
                Ok(_) if !settles => continue,
                Ok(_) => (BatchStatus::Succeeded, String::new()),
                Err(PredictError::Permanent(e)) if settles => (BatchStatus::FailedFinal, e),
                Err(PredictError::Retryable(e)) if last => (BatchStatus::FailedFinal, e),
                Err(PredictError::Permanent(e) | PredictError::Retryable(e)) => (BatchStatus::FailedRetryable, e),
            };
            let failed_items = match isolated {
                Some(found) if status == BatchStatus::FailedFinal => {
                    items += batch.items.len() - found.failed.len();
                    error = isolated_error(&found.failed, batch.items.len());
                    found.failed
                }
                _ => Vec::new(),
            };
            if status == BatchStatus::Succeeded {
                items += batch.items.len();
            } else {
                self.log_failure(&id, attempt, status, &error, group.is_some()).await;
            }
            let grouped = group.filter(|_| status == BatchStatus::Succeeded);
            let end_ms = batchmill_core::time::now_ms();
            let (worker_id, duration_ms) = (self.worker_id.as_str(), ms);
            let ending = BatchEnd {
                id: &id,
                batch: &batch,
                status,
                attempt,
                worker_id,
                duration_ms,
                error,
                end_ms,
                group: grouped,
                failed_items,
            }
            .build();
            endings.push((id, ending));
        }
        let succeeded = endings.iter().filter(|(_, e)| e.outcome.status() == BatchStatus::Succeeded).count();
        if succeeded > 0 {
            self.log_success(&endings[0].0, group, succeeded, items, started, attempt).await;
        }
        let settle = match (settles, succeeded) {
            (false, _) => Settle::Nak,
            (true, 0) => Settle::Term,
            (true, _) => Settle::Ack,
        };
        Ran { delivery, endings, settle }
    }

    /// Writes the results of a message's successful batches: the batch's
    /// object, or the group's. Where the write fails, so does each success.
    async fn write_results(
        &self,
        output: &S3Uri,
        delivery: &dyn Delivery,
        batches: &mut [Predict],
        group: Option<(u64, u64)>,
    ) {
        let uri = match group {
            Some((first, end)) => group_uri(output, &batches[0].id.job_id, first, end),
            None => result_uri(output, &batches[0].id),
        };
        let body = batches.iter().filter_map(|b| b.result.as_ref().ok()).flatten().copied().collect();
        if let Err(e) = self.in_progress(delivery, self.write(&uri, body)).await {
            // Nothing of it is in S3.
            for b in batches.iter_mut().filter(|b| b.result.is_ok()) {
                b.result = Err(e.clone());
            }
        }
    }

    /// Writes the results of the items that succeeded in batches whose
    /// failing items were isolated, each into the batch's own object; where
    /// that fails, the batch fails whole.
    async fn write_isolated(&self, output: &S3Uri, delivery: &dyn Delivery, batches: &mut [Predict]) {
        for b in batches.iter_mut() {
            let Some(found) = &b.isolated else { continue };
            let uri = result_uri(output, &b.id);
            if let Err(e) = self.in_progress(delivery, self.write(&uri, found.results.clone())).await {
                warn!(batch_id = %b.id, error = %e, "writing the results of isolated items failed");
                b.isolated = None;
            }
        }
    }

    async fn log_failure(&self, id: &BatchId, attempt: u64, status: BatchStatus, error: &str, grouped: bool) {
        warn!(batch_id = %id, attempt, error = %error, ?status, "batch failed");
        let next = match status {
            BatchStatus::FailedFinal => "dead-lettered",
            _ if grouped => "will be retried with its group",
            _ => "will be retried",
        };
        let max = self.assign.max_deliver.max(1);
        self.log(&id.to_string(), "ERROR", format!("failed on delivery {attempt} of {max}, {next}: {error}")).await;
    }

    /// One line for a message's successes: its batch's, or its group's.
    async fn log_success(
        &self,
        first: &BatchId,
        group: Option<(u64, u64)>,
        succeeded: usize,
        items: usize,
        started: Instant,
        attempt: u64,
    ) {
        let elapsed_ms = started.elapsed().as_millis();
        let (name, what) = match group {
            Some((a, b)) => {
                (format!("{}-{a}-{b}", first.job_id), format!("{succeeded} batches of group {a}-{b} succeeded"))
            }
            None => (first.to_string(), "succeeded".to_owned()),
        };
        tracing::debug!(batch_id = %name, attempt, trace_id = %batchmill_runtime::trace::trace_id(), "batch done");
        let max = self.assign.max_deliver.max(1);
        self.log(&name, "INFO", format!("{what}: {items} items in {elapsed_ms} ms (delivery {attempt} of {max})"))
            .await;
    }

    async fn log(&self, batch_id: &str, level: &str, message: String) {
        self.log.line(batch_id, level, message).await;
    }

    /// Writes a batch's result object. S3 being unreachable (or slow, or
    /// failing with a 5xx) is waited out; a refusal (no such bucket, denied)
    /// fails the batch for good, since another delivery would meet it too.
    async fn write(&self, uri: &S3Uri, body: Vec<u8>) -> Result<(), PredictError> {
        let body = Bytes::from(body);
        let put = || self.blob.put(&uri.bucket, &uri.key, body.clone(), "application/x-ndjson");
        let written = retry_in_place(&format!("writing {uri}"), &self.revoked, put, |e| e.is_transient()).await;
        match written {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => Err(PredictError::Permanent(format!("writing {uri}: {e}"))),
            None => Err(PredictError::Retryable(format!("writing {uri}: the job was taken from this worker"))),
        }
    }
}

/// A delivery whose batches the predictor has run, their results not yet
/// written.
struct Predicted {
    delivery: Box<dyn Delivery>,
    started: Instant,
    /// In order: one, or a group's.
    batches: Vec<Predict>,
}

/// One batch the predictor ran.
struct Predict {
    batch: Batch,
    id: BatchId,
    /// The NDJSON result, or why there is none.
    result: Result<Vec<u8>, PredictError>,
    /// How long it took, in milliseconds.
    ms: u64,
    /// Of a batch that failed for good: its failing items, isolated, and
    /// the others' results.
    isolated: Option<crate::bisect::Isolated>,
}

/// The error of a batch whose failing items were isolated: how many, and
/// the first few with their errors.
fn isolated_error(failed: &[(u64, String)], items: usize) -> String {
    let shown: Vec<String> = failed.iter().take(3).map(|(index, e)| format!("item {index}: {e}")).collect();
    let more = if failed.len() > 3 { format!("; and {} more", failed.len() - 3) } else { String::new() };
    format!("{} of its {items} items failed, isolated by bisection: {}{more}", failed.len(), shown.join("; "))
}

/// Runs the predictor on `batch`, returning its NDJSON result. Parsing,
/// predicting and writing the NDJSON all run off the async threads.
async fn run_predictor(predictor: &Arc<dyn Predictor>, batch: &Batch, id: &BatchId) -> Result<Vec<u8>, PredictError> {
    let (predictor, id, seq, first_item) = (predictor.clone(), id.to_string(), batch.seq, batch.first_item);
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

/// Most batches run but not yet settled, per lane.
const MAX_UNSETTLED: usize = 8;

/// How many batches a lane pulls per trip to the server: one while batches
/// take a while to predict, more (doubling, up to [`MOST_PULLED`]) while
/// they are quick, since then the trip costs as much as the batch.
#[derive(Debug)]
pub(crate) struct Pace {
    pull: usize,
}

/// A batch that predicts in less than this is quick.
const QUICK: Duration = Duration::from_millis(20);
/// Most batches pulled at once.
const MOST_PULLED: usize = 8;

impl Default for Pace {
    fn default() -> Pace {
        Pace { pull: 1 }
    }
}

impl Pace {
    /// How many to pull next.
    pub fn pull(&self) -> usize {
        self.pull
    }

    /// A batch predicted in `took`.
    pub fn ran(&mut self, took: Duration) {
        self.pull = if took < QUICK { (self.pull * 2).min(MOST_PULLED) } else { 1 };
    }
}

#[cfg(test)]
#[path = "runner_tests.rs"]
mod tests;
