//! The enqueuer turns a job's item stream into batches on JetStream.
//!
//! RPCs: `batchmill.enqueuer.v1.EnqueuerService/{EnqueueJob,StopEnqueue}`.
//! Depends on: the lister (items, [`ItemSource`]), JetStream (publishes
//! batches with `Nats-Msg-Id = <batch_id>`), etcd (the request and the
//! resume cursor under `/batchmill/enqueue/<job_id>/`). A restarted
//! enqueuer resumes every unfinished job from its last checkpoint; batches
//! republished after the checkpoint are dropped by JetStream's duplicate
//! window. A failure of what it depends on (etcd, NATS, the lister
//! unreachable) is retried from the checkpoint; a bad input ends the job's
//! enqueuing with the error in its checkpoint, where the scheduler reads it.
//!
//! A retried job comes back in a later round: its items are listed again
//! from the first and batched the same way, and the batches its ledger
//! holds as final are skipped (their sequence numbers and items still
//! count), so only the rest run again. Each round's batches have their own
//! message ids, so the duplicate window does not drop them.

mod batcher;
mod enqueuer;
mod group;
mod grpc;
mod items;
mod skip;

pub use batcher::Batcher;
pub use enqueuer::Enqueuer;
pub use grpc::EnqueuerGrpc;
pub use items::{Chunks, ItemSource};
pub use skip::Skip;

use std::sync::Arc;
use std::time::Duration;

use batchmill_coord::{CoordError, Etcd};
use batchmill_core::{ErrorCode, RemoteError, ServiceError};
use batchmill_proto::lister::v1::lister_service_client::ListerServiceClient;
use batchmill_queue::{JetStreamQueue, QueueError};
use batchmill_runtime::RuntimeError;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

/// Errors of the enqueuer.
#[derive(Debug, thiserror::Error)]
pub enum EnqueueError {
    #[error("{field}: {message}")]
    InvalidRequest { field: &'static str, message: String },
    #[error("etcd: {0}")]
    Coord(#[from] CoordError),
    #[error("{0}")]
    Queue(#[from] QueueError),
    #[error("lister: {0}")]
    Lister(#[from] RemoteError),
    #[error("item {index} is {bytes} bytes, over the {limit}-byte batch limit")]
    ItemTooLarge { index: u64, bytes: usize, limit: usize },
    #[error(
        "the job has more than {limit} items, the most one job may have (the scheduler's \
         BATCHMILL_MAX_JOB_ITEMS); split its input into several jobs"
    )]
    TooManyItems { limit: u64 },
    #[error("corrupt checkpoint for job {job_id}: {message}")]
    Corrupt { job_id: String, message: String },
    #[error("encoding the checkpoint of job {job_id}: {message}")]
    Encode { job_id: String, message: String },
}

impl EnqueueError {
    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            EnqueueError::Coord(e) => e.is_transient(),
            EnqueueError::Queue(e) => e.is_transient(),
            EnqueueError::Lister(e) => e.is_retryable(),
            EnqueueError::InvalidRequest { .. }
            | EnqueueError::ItemTooLarge { .. }
            | EnqueueError::TooManyItems { .. }
            | EnqueueError::Corrupt { .. }
            | EnqueueError::Encode { .. } => false,
        }
    }
}

impl ServiceError for EnqueueError {
    fn code(&self) -> ErrorCode {
        match self {
            EnqueueError::InvalidRequest { .. }
            | EnqueueError::ItemTooLarge { .. }
            | EnqueueError::TooManyItems { .. } => ErrorCode::InvalidArgument,
            EnqueueError::Coord(_) | EnqueueError::Queue(_) => ErrorCode::Unavailable,
            EnqueueError::Lister(e) => e.code,
            EnqueueError::Corrupt { .. } | EnqueueError::Encode { .. } => ErrorCode::Internal,
        }
    }
}

/// How an enqueuer runs.
#[derive(Debug, Clone)]
pub struct Config {
    pub etcd_endpoints: Vec<String>,
    pub nats_url: String,
    /// gRPC URL of the lister.
    pub lister_url: String,
    /// The cluster's secret key, which seals a job's own credentials while
    /// they are kept for resuming.
    pub secret_key: Option<batchmill_core::sealed::ClusterKey>,
}

/// Errors that stop an enqueuer.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("connecting to etcd: {0}")]
    Etcd(#[from] CoordError),
    #[error("connecting to NATS: {0}")]
    Nats(#[from] QueueError),
    #[error("resuming unfinished jobs: {0}")]
    Resume(#[from] EnqueueError),
    #[error("lister URL {url:?}: {message}")]
    ListerUrl { url: String, message: String },
    #[error("{0}")]
    Runtime(#[from] RuntimeError),
}

/// Resumes unfinished jobs, then serves on `listener` until `shutdown`;
/// returns once running jobs reached a checkpoint.
pub async fn run(config: Config, listener: TcpListener, shutdown: CancellationToken) -> Result<(), RunError> {
    let patience = Duration::from_secs(30);
    let etcd = Etcd::connect(&config.etcd_endpoints, patience).await?;
    let queue = JetStreamQueue::connect(&config.nats_url, patience).await?;
    let channel = batchmill_runtime::dial::channel(&config.lister_url)
        .map_err(|e| RunError::ListerUrl { url: config.lister_url.clone(), message: e.to_string() })?;
    let lister = ListerServiceClient::new(channel).max_decoding_message_size(16 * 1024 * 1024);
    let enqueuer = Enqueuer::new(Arc::new(etcd), Arc::new(queue), Arc::new(lister), shutdown.clone())
        .with_secret_key(config.secret_key.clone());
    let resumed = enqueuer.resume_all().await?;
    info!(addr = %listener.local_addr().map_err(RuntimeError::Io)?, resumed, "enqueuer serving");
    batchmill_runtime::ServerBuilder::new()?
        .add_service(EnqueuerGrpc::new(enqueuer.clone()).into_service())
        .serve(listener, shutdown)
        .await?;
    enqueuer.drain().await;
    info!("enqueuer stopped");
    Ok(())
}
