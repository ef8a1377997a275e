//! batchmill-worker: runs batches of assigned jobs.

use std::time::Duration;

use batchmill_blob::S3Config;
use batchmill_runtime::args::{EtcdArgs, ListenArgs, NatsArgs, S3Args};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "batchmill-worker", version, about = "Runs batches of assigned jobs")]
struct Args {
    #[command(flatten)]
    listen: ListenArgs,
    #[command(flatten)]
    tls: batchmill_runtime::args::TlsArgs,
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
    /// Seconds a dead worker's completion-hook claim outlives it.
    #[arg(long, env = "BATCHMILL_LEASE_TTL_SECS", default_value_t = 10)]
    lease_ttl_secs: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _telemetry = batchmill_runtime::telemetry::init("batchmill-worker")?;
    batchmill_runtime::reach::cluster(&args.tls, &args.etcd, &args.nats)?;
    let shutdown = batchmill_runtime::shutdown_token();
    let config = batchmill_worker::Config {
        etcd_endpoints: args.etcd.etcd_endpoints,
        nats_url: args.nats.nats_url,
        s3: S3Config::new(args.s3.s3_endpoint, args.s3.s3_region),
        worker_id: args.worker_id,
        device: args.device,
        python: args.python,
        work_dir: args.work_dir,
        embed_model: args.embed_model,
        claim_ttl: Duration::from_secs(args.lease_ttl_secs.max(1)),
    };
    let listener = args.listen.bind(&shutdown).await?;
    batchmill_worker::run(config, listener, shutdown).await?;
    Ok(())
}
