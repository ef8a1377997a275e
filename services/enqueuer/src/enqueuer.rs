//! The enqueuer's domain: one enqueuing task per job, publishing batches
//! from the lister's items and checkpointing how far it came in etcd.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use batchmill_coord::Kv;
use batchmill_core::enqueue::{self as progress, EnqueueProgress, access_key, progress_key, request_key};
use batchmill_core::sealed::{ClusterKey, SealError, Sealed};
use batchmill_core::{BatchId, JobId};
use batchmill_proto::enqueuer::v1::EnqueueJobRequest;
use batchmill_proto::lister::v1::ListItemsRequest;
use batchmill_proto::lister::v1::SourceSecrets;
use batchmill_proto::lister::v1::source::Kind;
use batchmill_proto::queue::v1::Batch;
use batchmill_queue::Batches;
use bytes::Bytes;
use futures::StreamExt;
use prost::Message;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, instrument, warn};

use crate::group::Group;
use crate::{Batcher, EnqueueError, ItemSource, Skip};

/// How long `stop` waits for a job's task to end.
const STOP_PATIENCE: Duration = Duration::from_secs(10);

/// Checkpoint at least this often while publishing.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);

fn corrupt(job_id: &str, e: impl std::fmt::Display) -> EnqueueError {
    EnqueueError::Corrupt { job_id: job_id.to_owned(), message: e.to_string() }
}

/// A checkpoint as etcd keeps it.
fn encoded(job_id: &str, progress: &EnqueueProgress) -> Result<Vec<u8>, EnqueueError> {
    progress.encode().map_err(|e| EnqueueError::Encode { job_id: job_id.to_owned(), message: e.to_string() })
}

/// The enqueuer's domain: runs one enqueuing task per job.
#[derive(Clone)]
pub struct Enqueuer {
    kv: Arc<dyn Kv>,
    queue: Arc<dyn Batches>,
    lister: Arc<dyn ItemSource>,
    running: Arc<Mutex<HashMap<String, CancellationToken>>>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
    /// Seals a source's own access before it is stored for resuming.
    secret_key: Option<ClusterKey>,
}

impl Enqueuer {
    pub fn new(
        kv: Arc<dyn Kv>,
        queue: Arc<dyn Batches>,
        lister: Arc<dyn ItemSource>,
        shutdown: CancellationToken,
    ) -> Enqueuer {
        Enqueuer { kv, queue, lister, running: Arc::default(), tasks: TaskTracker::new(), shutdown, secret_key: None }
    }

    /// An enqueuer that keeps sources' own access sealed with `key`.
    #[must_use]
    pub fn with_secret_key(mut self, key: Option<ClusterKey>) -> Enqueuer {
        self.secret_key = key;
        self
    }

    /// What is stored to resume `request`: the request without its
    /// source's secrets (its own S3 access, its database password), and
    /// those sealed.
    fn stored(&self, request: &EnqueueJobRequest) -> Result<Vec<(String, Vec<u8>)>, EnqueueError> {
        let job_id = &request.job_id;
        let mut bare = request.clone();
        let mut secrets = SourceSecrets::default();
        if let Some(source) = bare.source.as_mut() {
            secrets.access = source.access.take();
            if let Some(Kind::SqlRows(q)) = source.kind.as_mut() {
                secrets.sql_password = std::mem::take(&mut q.password);
            }
        }
        let mut pairs = vec![(request_key(job_id), bare.encode_to_vec())];
        if secrets != SourceSecrets::default() {
            let refuse = |message: String| EnqueueError::InvalidRequest { field: "source.access", message };
            let key = self.secret_key.as_ref().ok_or_else(|| refuse(SealError::NoKey.to_string()))?;
            let sealed = key.seal(&secrets.encode_to_vec()).map_err(|e| refuse(e.to_string()))?;
            let json = serde_json::to_vec(&sealed).map_err(|e| refuse(e.to_string()))?;
            pairs.push((access_key(job_id), json));
        }
        Ok(pairs)
    }

    /// A stored request with its source's access opened again.
    async fn restored(&self, job_id: &str, mut request: EnqueueJobRequest) -> Result<EnqueueJobRequest, EnqueueError> {
        let Some(raw) = self.kv.get(&access_key(job_id)).await? else { return Ok(request) };
        let sealed: Sealed = serde_json::from_slice(&raw).map_err(|e| corrupt(job_id, e))?;
        let key = self.secret_key.as_ref().ok_or_else(|| corrupt(job_id, SealError::NoKey))?;
        let plain = key.open(&sealed).map_err(|e| corrupt(job_id, e))?;
        let secrets = SourceSecrets::decode(plain.as_slice()).map_err(|e| corrupt(job_id, e))?;
        if let Some(source) = request.source.as_mut() {
            source.access = secrets.access;
            if let Some(Kind::SqlRows(q)) = source.kind.as_mut() {
                q.password = secrets.sql_password;
            }
        }
        Ok(request)
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<String, CancellationToken>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts (or resumes) enqueuing; returns false if it is running or done.
    pub async fn enqueue(&self, request: EnqueueJobRequest) -> Result<bool, EnqueueError> {
        if let Err(v) = JobId::parse("job_id", &request.job_id) {
            return Err(EnqueueError::InvalidRequest { field: "job_id", message: v.description });
        }
        if request.batch_size < 1 {
            return Err(EnqueueError::InvalidRequest { field: "batch_size", message: "must be at least 1".into() });
        }
        if request.source.is_none() {
            return Err(EnqueueError::InvalidRequest { field: "source", message: "must be set".into() });
        }
        let job_id = request.job_id.clone();
        if self.running().contains_key(&job_id) {
            return Ok(false);
        }
        let stored = match self.kv.get(&progress_key(&job_id)).await? {
            Some(bytes) => Some(EnqueueProgress::decode(&bytes).map_err(|e| corrupt(&job_id, e))?),
            None => None,
        };
        let progress = match stored {
            Some(progress) if progress.round > request.round => return Ok(false), // a stale request
            Some(progress) if progress.round == request.round => progress,
            // A new job, or a retried one: from its first item, in the request's round.
            _ => {
                let fresh = EnqueueProgress { round: request.round, ..EnqueueProgress::default() };
                let mut pairs = self.stored(&request)?;
                pairs.push((progress_key(&job_id), encoded(&job_id, &fresh)?));
                self.kv.put_all(pairs).await?;
                if request.round > 0 {
                    info!(job_id, round = request.round, skip = Skip::new(&request.skip).len(), "enqueuing a retry");
                }
                fresh
            }
        };
        if progress.is_final() {
            return Ok(false);
        }
        self.spawn(request, progress, tracing::Span::current());
        Ok(true)
    }

    /// Stops enqueuing a job and returns once nothing more of it will be
    /// published (so a purge after it is complete); returns whether it was
    /// running.
    pub async fn stop(&self, job_id: &str) -> Result<bool, EnqueueError> {
        let token = self.running().get(job_id).cloned();
        let was_running = token.is_some();
        if let Some(token) = token {
            token.cancel();
            // The task removes itself when it ends; a publish in flight finishes first.
            let deadline = tokio::time::Instant::now() + STOP_PATIENCE;
            while self.running().contains_key(job_id) && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        if let Some(bytes) = self.kv.get(&progress_key(job_id)).await? {
            let mut progress = EnqueueProgress::decode(&bytes).map_err(|e| corrupt(job_id, e))?;
            if !progress.is_final() {
                progress.stopped = true;
                self.kv.put(&progress_key(job_id), encoded(job_id, &progress)?).await?;
            }
        }
        Ok(was_running)
    }

    /// Resumes every job whose enqueuing did not finish, after a restart.
    pub async fn resume_all(&self) -> Result<usize, EnqueueError> {
        let mut resumed = 0;
        for (key, bytes) in self.kv.list(progress::PREFIX).await? {
            let Some(job_id) = progress::job_of_progress_key(&key) else {
                continue;
            };
            let progress = EnqueueProgress::decode(&bytes).map_err(|e| corrupt(job_id, e))?;
            if progress.is_final() {
                continue;
            }
            let Some(raw) = self.kv.get(&request_key(job_id)).await? else {
                continue;
            };
            let request = EnqueueJobRequest::decode(raw.as_slice()).map_err(|e| corrupt(job_id, e))?;
            let request = self.restored(job_id, request).await?;
            info!(job_id, next_seq = progress.next_seq, "resuming enqueue");
            self.spawn(request, progress, tracing::Span::none());
            resumed += 1;
        }
        Ok(resumed)
    }

    /// Waits for running tasks to reach a checkpoint and stop.
    pub async fn drain(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }

    /// One task per job: publishes until done, retrying transient failures
    /// from the checkpoint in hand, until stopped or shut down.
    /// The task runs in `parent` (the EnqueueJob call's span), so the batches
    /// it publishes carry the job's trace.
    fn spawn(&self, request: EnqueueJobRequest, progress: EnqueueProgress, parent: tracing::Span) {
        let token = self.shutdown.child_token();
        self.running().insert(request.job_id.clone(), token.clone());
        let this = self.clone();
        self.tasks.spawn(
            async move {
                let mut progress = progress;
                loop {
                    match this.run(&request, &mut progress, &token).await {
                        Ok(()) => break,
                        Err(e) if e.is_transient() => {
                            warn!(job_id = %request.job_id, error = %e, "enqueue interrupted; retrying");
                            tokio::select! {
                                () = token.cancelled() => break,
                                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                            }
                        }
                        Err(e) => {
                            warn!(job_id = %request.job_id, error = %e, "enqueue failed");
                            break;
                        }
                    }
                }
                this.running().remove(&request.job_id);
            }
            .instrument(parent),
        );
    }

    /// Publishes from `progress` on; records the outcome in etcd.
    #[instrument(skip_all, fields(job_id = %request.job_id))]
    async fn run(
        &self,
        request: &EnqueueJobRequest,
        progress: &mut EnqueueProgress,
        cancel: &CancellationToken,
    ) -> Result<(), EnqueueError> {
        let job_id = request.job_id.as_str();
        let result = self.publish_all(request, progress, cancel).await;
        match &result {
            // On shutdown the checkpoint says where to resume; on a stop,
            // `stop` itself marks the record.
            Ok(()) if cancel.is_cancelled() => {
                if self.shutdown.is_cancelled() {
                    self.checkpoint(job_id, progress).await?;
                }
            }
            Ok(()) => {
                progress.done = true;
                self.checkpoint(job_id, progress).await?;
                info!(batches = progress.next_seq, items = progress.next_item, "enqueue complete");
            }
            Err(e) if !e.is_transient() => {
                progress.error = Some(e.to_string());
                self.checkpoint(job_id, progress).await?;
            }
            Err(_) => {
                // Best effort: the in-memory checkpoint is what the retry uses.
                if let Err(e) = self.checkpoint(job_id, progress).await {
                    warn!(error = %e, "checkpointing after a failure failed");
                }
            }
        }
        result
    }

    async fn checkpoint(&self, job_id: &str, progress: &EnqueueProgress) -> Result<(), EnqueueError> {
        self.kv.put(&progress_key(job_id), encoded(job_id, progress)?).await?;
        Ok(())
    }

    async fn publish_all(
        &self,
        request: &EnqueueJobRequest,
        progress: &mut EnqueueProgress,
        cancel: &CancellationToken,
    ) -> Result<(), EnqueueError> {
        let job_id = JobId::parse("job_id", &request.job_id).map_err(|e| corrupt(&request.job_id, e))?;
        let list = ListItemsRequest {
            job_id: request.job_id.clone(),
            source: request.source.clone(),
            skip: progress.next_item,
        };
        let trace = batchmill_runtime::trace::current();
        let mut stream = self.lister.items(list).await?;
        let mut batcher = Batcher::new(request.batch_size as usize, batchmill_core::job::MAX_BATCH_BYTES);
        let mut group = Group::new(request.group, batchmill_core::job::MAX_BATCH_BYTES);
        let mut last_checkpoint = tokio::time::Instant::now();
        let mut item_index = progress.next_item;
        let skip = Skip::new(&request.skip);
        let to = To { job_id: &job_id, round: request.round, skip: &skip, trace: &trace };
        loop {
            let chunk = tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                chunk = stream.next() => chunk.transpose()?,
            };
            let Some(chunk) = chunk else { break };
            for item in chunk {
                if request.max_items > 0 && item_index >= request.max_items {
                    return Err(EnqueueError::TooManyItems { limit: request.max_items });
                }
                let full = batcher.push(item).map_err(|bytes| EnqueueError::ItemTooLarge {
                    index: item_index,
                    bytes,
                    limit: batchmill_core::job::MAX_BATCH_BYTES,
                })?;
                item_index += 1;
                if let Some(items) = full {
                    self.publish(&to, progress, &mut group, items).await?;
                }
            }
            if last_checkpoint.elapsed() >= CHECKPOINT_EVERY {
                self.checkpoint(job_id.as_str(), progress).await?;
                last_checkpoint = tokio::time::Instant::now();
            }
        }
        if let Some(items) = batcher.finish() {
            self.publish(&to, progress, &mut group, items).await?;
        }
        self.send(&to, progress, group.take()).await
    }

    /// Adds a batch to the group being filled, publishing what that
    /// completes. `progress` counts only what is published, so a checkpoint
    /// always falls at a group's boundary.
    async fn publish(
        &self,
        to: &To<'_>,
        progress: &mut EnqueueProgress,
        group: &mut Group,
        items: Vec<String>,
    ) -> Result<(), EnqueueError> {
        let count = items.len() as u64;
        let seq = progress.next_seq + group.len();
        if to.skip.contains(seq) {
            // Final already (a retried job): its items count, it is not run
            // again, and it ends the group before it.
            self.send(to, progress, group.take()).await?;
            progress.next_seq += 1;
            progress.next_item += count;
            return Ok(());
        }
        let batch = batchmill_proto::queue::v1::Batch {
            job_id: to.job_id.to_string(),
            seq,
            first_item: progress.next_item + group.items(),
            items,
            group: Vec::new(),
        };
        let message = group.push(batch);
        self.send(to, progress, message).await
    }

    /// Publishes one message (a batch, or a group of them) as its first
    /// batch's id, and counts its batches and items as published.
    async fn send(
        &self,
        to: &To<'_>,
        progress: &mut EnqueueProgress,
        message: Option<Batch>,
    ) -> Result<(), EnqueueError> {
        let Some(message) = message else { return Ok(()) };
        let (batches, items) = match message.group.as_slice() {
            [] => (1, message.items.len() as u64),
            group => (group.len() as u64, group.iter().map(|b| b.items.len() as u64).sum()),
        };
        let id = BatchId::new(to.job_id.clone(), message.seq);
        self.queue.publish_batch(&id, to.round, Bytes::from(message.encode_to_vec()), to.trace).await?;
        progress.next_seq += batches;
        progress.next_item += items;
        Ok(())
    }
}

/// Where a job's batches are published, and which are skipped.
struct To<'a> {
    job_id: &'a JobId,
    round: u32,
    skip: &'a Skip,
    trace: &'a batchmill_runtime::trace::TraceHeaders,
}
