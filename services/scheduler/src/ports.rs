//! What the scheduler needs from the rest of the cluster, as traits so its
//! logic runs against fakes in unit tests.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use batchmill_blob::Blob;
use batchmill_core::S3Uri;
use batchmill_proto::enqueuer::v1::enqueuer_service_client::EnqueuerServiceClient;
use batchmill_proto::enqueuer::v1::{EnqueueJobRequest, StopEnqueueRequest};
use batchmill_proto::lister::v1::lister_service_client::ListerServiceClient;
use batchmill_proto::lister::v1::{ListItemsRequest, Source};
use batchmill_proto::scheduler::v1::SessionResponse;
use batchmill_queue::{DeliveryPolicy, JetStreamQueue, Stored};
use bytes::Bytes;
use tonic::transport::Channel;

/// A job's batches in the queue.
#[async_trait]
pub trait JobQueue: Send + Sync + 'static {
    /// Prepares delivery of the job's batches (idempotent).
    async fn open(&self, job_id: &str, policy: DeliveryPolicy) -> Result<(), String>;
    /// Withdraws the job's remaining batches; returns how many.
    async fn close(&self, job_id: &str) -> Result<u64, String>;
    /// Up to `limit` dead letters of the job from dead-letter stream
    /// sequence `from` on, oldest first.
    async fn dead_letters(&self, job_id: &str, from: u64, limit: usize) -> Result<Vec<Stored>, String>;
    /// Queues batch `seq` (its encoded `Batch`) again; `rerun` tells this
    /// publication apart from earlier ones.
    async fn requeue(&self, job_id: &str, seq: u64, rerun: u64, batch: Bytes) -> Result<(), String>;
    /// Removes the dead letter at dead-letter stream sequence `stream_seq`.
    async fn remove_dead_letter(&self, stream_seq: u64) -> Result<(), String>;
}

/// The enqueuer.
#[async_trait]
pub trait EnqueueClient: Send + Sync + 'static {
    /// Starts enqueuing, in the trace `trace` carries.
    async fn enqueue(&self, request: EnqueueJobRequest, trace: &HashMap<String, String>) -> Result<(), String>;
    async fn stop(&self, job_id: &str) -> Result<(), String>;
}

/// Object storage.
#[async_trait]
pub trait ObjectStore: Send + Sync + 'static {
    async fn put(&self, uri: &S3Uri, body: Bytes, content_type: &str) -> Result<(), String>;
}

/// Checks a job's source before the job is accepted.
#[async_trait]
pub trait SourceProbe: Send + Sync + 'static {
    /// Ok once the lister can start listing `source`; the lister's error otherwise.
    async fn probe(&self, source: Source) -> Result<(), tonic::Status>;
    /// Lists `source` to its end: its first `keep` items (JSON strings,
    /// such as s3:// paths) and how many there are in all.
    async fn list_files(&self, source: Source, keep: usize) -> Result<(Vec<String>, u64), tonic::Status>;
}

#[async_trait]
impl SourceProbe for ListerServiceClient<Channel> {
    async fn probe(&self, source: Source) -> Result<(), tonic::Status> {
        let request = ListItemsRequest { job_id: String::new(), source: Some(source), skip: 0 };
        let mut items = self.clone().list_items(request).await?.into_inner();
        // The first chunk (or the end of an empty listing) means it lists;
        // the rest is not read.
        items.message().await?;
        Ok(())
    }

    async fn list_files(&self, source: Source, keep: usize) -> Result<(Vec<String>, u64), tonic::Status> {
        let request = ListItemsRequest { job_id: String::new(), source: Some(source), skip: 0 };
        let mut items = self.clone().list_items(request).await?.into_inner();
        let (mut kept, mut count) = (Vec::new(), 0u64);
        while let Some(chunk) = items.message().await? {
            for item in chunk.items {
                count += 1;
                if kept.len() < keep {
                    kept.push(serde_json::from_str::<String>(&item).unwrap_or(item));
                }
            }
        }
        Ok((kept, count))
    }
}

/// A stream of log lines (encoded `LogLine`s).
pub type LogLines = futures::stream::BoxStream<'static, Result<Bytes, String>>;

/// Where workers' log lines and batch records are kept.
#[async_trait]
pub trait LogSource: Send + Sync + 'static {
    /// The job's lines, oldest first; with `follow` the stream does not end.
    async fn logs(&self, job_id: &str, follow: bool) -> Result<LogLines, String>;
    /// Up to `limit` encoded `BatchRecord`s of the job from record stream
    /// sequence `from` on, oldest first.
    async fn records(&self, job_id: &str, from: u64, limit: usize) -> Result<Vec<Stored>, String>;
}

#[async_trait]
impl LogSource for JetStreamQueue {
    async fn logs(&self, job_id: &str, follow: bool) -> Result<LogLines, String> {
        use futures::StreamExt;
        let lines = JetStreamQueue::logs(self, job_id, follow).await.map_err(|e| e.to_string())?;
        Ok(lines.map(|l| l.map_err(|e| e.to_string())).boxed())
    }

    async fn records(&self, job_id: &str, from: u64, limit: usize) -> Result<Vec<Stored>, String> {
        JetStreamQueue::records(self, job_id, from, limit).await.map_err(|e| e.to_string())
    }
}

/// The scheduler's end of one worker's session.
pub trait WorkerLink: Send + Sync + 'static {
    /// Sends a message; false if the session is gone.
    fn send(&self, message: SessionResponse) -> bool;
}

/// Everything the scheduler talks to.
#[derive(Clone)]
pub struct Ports {
    pub kv: Arc<dyn batchmill_coord::Kv>,
    pub queue: Arc<dyn JobQueue>,
    pub enqueuer: Arc<dyn EnqueueClient>,
    pub store: Arc<dyn ObjectStore>,
}

#[async_trait]
impl JobQueue for JetStreamQueue {
    async fn open(&self, job_id: &str, policy: DeliveryPolicy) -> Result<(), String> {
        self.open_job(job_id, policy).await.map_err(|e| e.to_string())
    }

    async fn close(&self, job_id: &str) -> Result<u64, String> {
        self.close_job(job_id).await.map_err(|e| e.to_string())
    }

    async fn dead_letters(&self, job_id: &str, from: u64, limit: usize) -> Result<Vec<Stored>, String> {
        JetStreamQueue::dead_letters(self, job_id, from, limit).await.map_err(|e| e.to_string())
    }

    async fn requeue(&self, job_id: &str, seq: u64, rerun: u64, batch: Bytes) -> Result<(), String> {
        self.requeue_batch(job_id, seq, rerun, batch).await.map_err(|e| e.to_string())
    }

    async fn remove_dead_letter(&self, stream_seq: u64) -> Result<(), String> {
        JetStreamQueue::remove_dead_letter(self, stream_seq).await.map_err(|e| e.to_string())
    }
}

#[async_trait]
impl EnqueueClient for EnqueuerServiceClient<Channel> {
    async fn enqueue(&self, request: EnqueueJobRequest, trace: &HashMap<String, String>) -> Result<(), String> {
        let mut request = tonic::Request::new(request);
        batchmill_runtime::trace::inject(&mut request, trace);
        self.clone().enqueue_job(request).await.map(drop).map_err(|s| s.message().to_owned())
    }

    async fn stop(&self, job_id: &str) -> Result<(), String> {
        self.clone()
            .stop_enqueue(StopEnqueueRequest { job_id: job_id.to_owned() })
            .await
            .map(drop)
            .map_err(|s| s.message().to_owned())
    }
}

#[async_trait]
impl ObjectStore for Blob {
    async fn put(&self, uri: &S3Uri, body: Bytes, content_type: &str) -> Result<(), String> {
        Blob::put(self, &uri.bucket, &uri.key, body, content_type).await.map_err(|e| e.to_string())
    }
}

impl WorkerLink for tokio::sync::mpsc::UnboundedSender<SessionResponse> {
    fn send(&self, message: SessionResponse) -> bool {
        tokio::sync::mpsc::UnboundedSender::send(self, message).is_ok()
    }
}
