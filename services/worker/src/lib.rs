//! A worker runs batches: one process per GPU (or CPU).
//!
//! RPCs served: health and reflection only. Depends on: the scheduler (one
//! `WorkerService/Session` stream: assignments in, outcomes out; its leader
//! is found in etcd), JetStream (pulls the assigned job's batches; dead
//! letters, batch records, log lines), S3 (writes results; fetches deployed
//! pipelines' files) and etcd (completion-hook claims). A worker counts as
//! alive while its session is open. On SIGTERM it stops pulling, finishes
//! the batches in hand, gives its assignment back and exits.
//!
//! Layout: [`worker`] (sessions, assignments), `runner.rs` (one job's
//! batches), `settle.rs` (making a batch's ending durable, then acking),
//! `session.rs` (the outbox that outlives sessions), `finalize.rs`
//! (completion hooks), [`loader`] with [`predictor`], [`python`],
//! [`requirements`] and [`embed`] (what runs a batch), [`device`].

mod bisect;
pub mod device;
pub mod embed;
mod finalize;
mod joblog;
pub mod loader;
mod metrics;
mod objects;
pub mod predictor;
pub mod python;
pub mod requirements;
mod runner;
mod session;
mod settle;
pub mod worker;

pub use loader::{LoadError, Loader};
pub use worker::Worker;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use batchmill_blob::{Blob, S3Config};
use batchmill_coord::{CoordError, Etcd};
use batchmill_core::WorkerId;
use batchmill_queue::{JetStreamQueue, QueueError};
use batchmill_runtime::RuntimeError;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::device::{Device, DeviceError};
use crate::embed::EmbedModels;

/// How a worker runs.
#[derive(Debug, Clone)]
pub struct Config {
    pub etcd_endpoints: Vec<String>,
    pub nats_url: String,
    pub s3: S3Config,
    /// Unique id of this worker; None: <host>-<random>.
    pub worker_id: Option<String>,
    /// Device to run on: cpu, cuda or auto.
    pub device: String,
    /// Python interpreter for Python predictors.
    pub python: PathBuf,
    /// Directory for deployed pipelines' files; None: <tmp>/batchmill-worker-<id>.
    pub work_dir: Option<PathBuf>,
    /// The `embed` pipeline's model when a job names none.
    pub embed_model: Option<String>,
    /// TTL of a completion-hook claim's lease: how long a dead worker's
    /// claim keeps another from running the hook.
    pub claim_ttl: Duration,
}

/// Errors that stop a worker.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    Device(#[from] DeviceError),
    #[error("connecting to etcd: {0}")]
    Etcd(#[from] CoordError),
    #[error("connecting to NATS: {0}")]
    Nats(#[from] QueueError),
    #[error("preparing the work directory: {0}")]
    WorkDir(std::io::Error),
    #[error("{0}")]
    Runtime(#[from] RuntimeError),
}

/// Serves health on `listener` and works until `shutdown`.
pub async fn run(config: Config, listener: TcpListener, shutdown: CancellationToken) -> Result<(), RunError> {
    let device = Device::select(&config.device)?;
    metrics::register(&device);
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "worker".to_owned());
    let id = config.worker_id.clone().map_or_else(|| WorkerId::generate(&host), WorkerId::new);
    let patience = Duration::from_secs(30);
    let etcd = Etcd::connect(&config.etcd_endpoints, patience).await?;
    let queue = Arc::new(JetStreamQueue::connect(&config.nats_url, patience).await?);
    let blob = Arc::new(Blob::new(&config.s3).await);
    info!(addr = %listener.local_addr().map_err(RuntimeError::Io)?, worker_id = %id, "worker serving health");
    // Ready once a session with the scheduler is open.
    let server = batchmill_runtime::ServerBuilder::new()?.not_ready();
    let health = server.health();
    let serving = batchmill_runtime::server::serve_routes(server.into_routes().await, listener, shutdown.clone());
    let python = python::check_interpreter(&config.python).await;
    let work_dir =
        config.work_dir.clone().unwrap_or_else(|| std::env::temp_dir().join(format!("batchmill-worker-{id}")));
    let loader = Loader::new(python, work_dir, blob.clone(), queue.clone(), id.to_string())
        .with_s3(config.s3.endpoint.as_deref(), &config.s3.region)
        .map_err(RunError::WorkDir)?
        .with_embed(EmbedModels::new(device.clone(), config.embed_model.clone()));
    let s3 = config.s3.clone();
    let worker = Worker { id, device, etcd, queue, blob, claim_ttl: config.claim_ttl, health, loader, s3 };
    let (served, ()) = tokio::join!(serving, worker.run(shutdown));
    served?;
    Ok(())
}
