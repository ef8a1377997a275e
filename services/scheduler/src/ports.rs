//! What the scheduler talks to, as traits so its logic runs against fakes
//! in unit tests: etcd ([`Kv`]), the queue ([`Queue`]), S3
//! ([`ObjectStore`]), the enqueuer and the lister (gRPC, here), and each
//! worker's session.

use std::sync::Arc;
use std::time::Duration;

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

/// Longest wait for the enqueuer's answer. The scheduler's actor awaits it,
/// so a slow enqueuer must not hold every job up; admission is retried on
/// the next tick. Stopping takes up to the enqueuer's own 10 s patience.
const ENQUEUER_PATIENCE: Duration = Duration::from_secs(15);

/// `call`, or UNAVAILABLE after [`ENQUEUER_PATIENCE`].
async fn patiently<T>(
    what: &str,
    call: impl std::future::Future<Output = Result<T, tonic::Status>>,
) -> Result<T, RemoteError> {
    match tokio::time::timeout(ENQUEUER_PATIENCE, call).await {
        Ok(answer) => answer.map_err(RemoteError::from),
        Err(_) => Err(RemoteError::from(&tonic::Status::unavailable(format!(
            "the enqueuer did not answer {what} within {ENQUEUER_PATIENCE:?}"
        )))),
    }
}

#[async_trait]
impl EnqueueClient for EnqueuerServiceClient<Channel> {
    async fn enqueue(&self, request: EnqueueJobRequest, trace: &TraceHeaders) -> Result<(), RemoteError> {
        let mut request = tonic::Request::new(request);
        batchmill_runtime::trace::inject(&mut request, trace);
        let mut client = self.clone();
        patiently("EnqueueJob", client.enqueue_job(request)).await.map(drop)
    }

    async fn stop(&self, job_id: &str) -> Result<(), RemoteError> {
        let request = StopEnqueueRequest { job_id: job_id.to_owned() };
        let mut client = self.clone();
        patiently("StopEnqueue", client.stop_enqueue(request)).await.map(drop)
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
