//! batchmill-worker: runs batches of assigned jobs.

use std::time::Duration;

use anyhow::Context;
use batchmill_blob::{Blob, S3Config};
use batchmill_coord::Etcd;
use batchmill_core::WorkerId;
use batchmill_queue::JetStreamQueue;
use batchmill_runtime::args::{EtcdArgs, ListenArgs, NatsArgs, S3Args};
use batchmill_worker::device::Device;
use batchmill_worker::embed::EmbedModels;
use batchmill_worker::{Loader, Worker};
use clap::Parser;
use tracing::info;

#[derive(Debug, Parser)]
#[command(name = "batchmill-worker", version, about = "Runs batches of assigned jobs")]
struct Config {
    #[command(flatten)]
    listen: ListenArgs,
    #[command(flatten)]
    etcd: EtcdArgs,
    #[command(flatten)]
    nats: NatsArgs,
    #[command(flatten)]
    s3: S3Args,
    /// Unique id of this worker; default: <host>-<random>.
    #[arg(long, env = "BATCHMILL_WORKER_ID")]
    worker_id: Option<String>,
    /// Device to run on: cpu, cuda or auto.
    #[arg(long, env = "BATCHMILL_DEVICE", default_value = "auto")]
    device: String,
    /// Python interpreter for Python predictors (with their packages, such as boto3).
    #[arg(long, env = "BATCHMILL_PYTHON", default_value = "python3")]
    python: std::path::PathBuf,
    /// Directory for deployed pipelines' files; default: <tmp>/batchmill-worker-<id>.
    #[arg(long, env = "BATCHMILL_WORK_DIR")]
    work_dir: Option<std::path::PathBuf>,
    /// The `embed` pipeline's model when a job names none: a directory or an
    /// s3:// prefix with a sentence-transformers model (all-MiniLM-L6-v2).
    #[arg(long, env = "BATCHMILL_EMBED_MODEL")]
    embed_model: Option<String>,
    /// Seconds the registration outlives a worker that stops renewing it.
    #[arg(long, env = "BATCHMILL_LEASE_TTL_SECS", default_value_t = 10)]
    lease_ttl_secs: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let _telemetry = batchmill_runtime::telemetry::init("batchmill-worker")?;
    let shutdown = batchmill_runtime::shutdown_token();
    let device = Device::select(&config.device).map_err(anyhow::Error::msg)?;
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "worker".to_owned());
    let id = config.worker_id.clone().map_or_else(|| WorkerId::generate(&host), WorkerId::new);
    let patience = Duration::from_secs(30);
    let etcd = Etcd::connect(&config.etcd.etcd_endpoints, patience).await.context("connecting to etcd")?;
    let queue = JetStreamQueue::connect(&config.nats.nats_url, patience).await.context("connecting to NATS")?;
    let blob = Blob::new(&S3Config::new(config.s3.s3_endpoint.clone(), config.s3.s3_region.clone())).await;
    let listener = batchmill_runtime::bind(config.listen.listen).await?;
    info!(addr = %listener.local_addr()?, worker_id = %id, "worker serving health");
    // Ready once registered with the scheduler.
    let server = batchmill_runtime::ServerBuilder::new()?.not_ready();
    let health = server.health();
    let routes = server.into_routes().await;
    let serving = batchmill_runtime::server::serve_routes(routes, listener, shutdown.clone());
    let lease_ttl = Duration::from_secs(config.lease_ttl_secs);
    let python = batchmill_worker::python::check_interpreter(&config.python).await;
    let work_dir =
        config.work_dir.clone().unwrap_or_else(|| std::env::temp_dir().join(format!("batchmill-worker-{id}")));
    let loader = Loader::new(python, work_dir, blob.clone(), queue.clone(), id.to_string())
        .with_s3(config.s3.s3_endpoint.as_deref(), &config.s3.s3_region)
        .context("preparing the work directory")?
        .with_embed(EmbedModels::new(device.clone(), config.embed_model.clone()));
    let worker = Worker { id, device, etcd, queue, blob, lease_ttl, health, loader };
    let (served, worked) = tokio::join!(serving, worker.run(shutdown));
    served?;
    worked.context("worker")?;
    Ok(())
}
