//! What the scheduler talks to, as traits so its logic runs against fakes
//! in unit tests: etcd ([`Kv`]), the queue ([`Queue`]), S3
//! ([`ObjectStore`]), the enqueuer and the lister (gRPC, here), and each
//! worker's session.

use std::sync::Arc;

use async_trait::async_trait;
use batchmill_blob::ObjectStore;
use batchmill_coord::Kv;
use batchmill_core::RemoteError;
use batchmill_proto::enqueuer::v1::enqueuer_service_client::EnqueuerServiceClient;
use batchmill_proto::enqueuer::v1::{EnqueueJobRequest, StopEnqueueRequest};
use batchmill_proto::lister::v1::lister_service_client::ListerServiceClient;
use batchmill_proto::lister::v1::{ListItemsRequest, Source};
use batchmill_proto::scheduler::v1::SessionResponse;
use batchmill_queue::{Queue, TraceHeaders};
use tonic::transport::Channel;

/// The enqueuer.
#[async_trait]
pub trait EnqueueClient: Send + Sync + 'static {
    /// Starts (or resumes) enqueuing, in the trace `trace` carries.
    async fn enqueue(&self, request: EnqueueJobRequest, trace: &TraceHeaders) -> Result<(), RemoteError>;
    /// Stops enqueuing; returns once nothing more of the job will be published.
    async fn stop(&self, job_id: &str) -> Result<(), RemoteError>;
}

/// Checks a job's source before the job is accepted.
#[async_trait]
pub trait SourceProbe: Send + Sync + 'static {
    /// Ok once the lister can start listing `source`; the lister's error otherwise.
    async fn probe(&self, source: Source) -> Result<(), RemoteError>;
    /// Lists `source` to its end: its first `keep` items (JSON strings,
    /// such as s3:// paths) and how many there are in all.
    async fn list_files(&self, source: Source, keep: usize) -> Result<(Vec<String>, u64), RemoteError>;
}

/// The scheduler's end of one worker's session.
pub trait WorkerLink: Send + Sync + 'static {
    /// Sends a message; false if the session is gone.
    fn send(&self, message: SessionResponse) -> bool;
}

/// Everything the scheduler's state talks to.
#[derive(Clone)]
pub struct Ports {
    pub kv: Arc<dyn Kv>,
    pub queue: Arc<dyn Queue>,
    pub enqueuer: Arc<dyn EnqueueClient>,
    pub store: Arc<dyn ObjectStore>,
}

#[async_trait]
impl EnqueueClient for EnqueuerServiceClient<Channel> {
    async fn enqueue(&self, request: EnqueueJobRequest, trace: &TraceHeaders) -> Result<(), RemoteError> {
        let mut request = tonic::Request::new(request);
        batchmill_runtime::trace::inject(&mut request, trace);
        self.clone().enqueue_job(request).await.map(drop).map_err(RemoteError::from)
    }

    async fn stop(&self, job_id: &str) -> Result<(), RemoteError> {
        let request = StopEnqueueRequest { job_id: job_id.to_owned() };
        self.clone().stop_enqueue(request).await.map(drop).map_err(RemoteError::from)
    }
}

#[async_trait]
impl SourceProbe for ListerServiceClient<Channel> {
    async fn probe(&self, source: Source) -> Result<(), RemoteError> {
        let request = ListItemsRequest { job_id: String::new(), source: Some(source), skip: 0 };
        let mut items = self.clone().list_items(request).await?.into_inner();
        // The first chunk (or the end of an empty listing) means it lists;
        // the rest is not read.
        items.message().await?;
        Ok(())
    }

    async fn list_files(&self, source: Source, keep: usize) -> Result<(Vec<String>, u64), RemoteError> {
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

impl WorkerLink for tokio::sync::mpsc::UnboundedSender<SessionResponse> {
    fn send(&self, message: SessionResponse) -> bool {
        tokio::sync::mpsc::UnboundedSender::send(self, message).is_ok()
    }
}
