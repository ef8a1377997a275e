//! batchmill-scheduler: owns the job lifecycle; one leader at a time.

use std::time::Duration;

use anyhow::Context;
use batchmill_blob::S3Config;
use batchmill_core::S3Uri;
use batchmill_queue::DeliveryPolicy;
use batchmill_runtime::args::{EtcdArgs, ListenArgs, NatsArgs, S3Args};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "batchmill-scheduler", version, about = "Owns the job lifecycle")]
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
    /// gRPC URL of the enqueuer.
    #[arg(long, env = "BATCHMILL_ENQUEUER_URL", default_value = "http://127.0.0.1:50053")]
    enqueuer_url: String,
    /// gRPC URL of the lister, which checks S3 inputs at submission.
    #[arg(long, env = "BATCHMILL_LISTER_URL", default_value = "http://127.0.0.1:50052")]
    lister_url: String,
    /// URL other services reach this scheduler at; default: http://<listen address>.
    #[arg(long, env = "BATCHMILL_ADVERTISE_URL")]
    advertise_url: Option<String>,
    /// Results location of jobs that name none.
    #[arg(long, env = "BATCHMILL_OUTPUT_URI", default_value = "s3://batchmill/results")]
    output_uri: String,
    /// Where inline inputs are staged.
    #[arg(long, env = "BATCHMILL_STAGING_URI", default_value = "s3://batchmill/staging")]
    staging_uri: String,
    /// Where deployed pipelines' files are kept.
    #[arg(long, env = "BATCHMILL_PIPELINES_URI", default_value = "s3://batchmill/pipelines")]
    pipelines_uri: String,
    /// Seconds a worker has to ack a batch before it is redelivered.
    #[arg(long, env = "BATCHMILL_ACK_WAIT_SECS", default_value_t = 30)]
    ack_wait_secs: u64,
    /// Deliveries of a batch before it fails for good.
    #[arg(long, env = "BATCHMILL_MAX_DELIVER", default_value_t = 3)]
    max_deliver: u32,
    /// Seconds a dead leader keeps the standbys waiting (its lease's TTL).
    #[arg(long, env = "BATCHMILL_LEADER_TTL_SECS", default_value_t = 10)]
    leader_ttl_secs: u64,
    /// Admission queues, `name=capacity[:workers|gpus]` separated by commas
    /// (capacity 0: no limit); `default` always exists.
    #[arg(long, env = "BATCHMILL_QUEUES", default_value = "")]
    queues: String,
    /// The most items one job may have: a larger inline job is refused,
    /// and a listed one fails once its lister passes this (0: no limit).
    #[arg(long, env = "BATCHMILL_MAX_JOB_ITEMS", default_value_t = batchmill_scheduler::DEFAULT_MAX_JOB_ITEMS)]
    max_job_items: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _telemetry = batchmill_runtime::telemetry::init("batchmill-scheduler")?;
    batchmill_runtime::reach::cluster(&args.tls, &args.etcd, &args.nats)?;
    let shutdown = batchmill_runtime::shutdown_token();
    let config = batchmill_scheduler::Config {
        etcd_endpoints: args.etcd.etcd_endpoints,
        nats_url: args.nats.nats_url,
        s3: S3Config::new(args.s3.s3_endpoint, args.s3.s3_region),
        enqueuer_url: args.enqueuer_url,
        lister_url: args.lister_url,
        advertise_url: args.advertise_url,
        output_uri: S3Uri::parse(&args.output_uri).context("--output-uri")?,
        staging_uri: S3Uri::parse(&args.staging_uri).context("--staging-uri")?,
        pipelines_uri: S3Uri::parse(&args.pipelines_uri).context("--pipelines-uri")?,
        policy: DeliveryPolicy { ack_wait: Duration::from_secs(args.ack_wait_secs), max_deliver: args.max_deliver },
        lease_ttl: Duration::from_secs(args.leader_ttl_secs.max(1)),
        // BATCHMILL_SECRET_KEY: 64 hex digits; without it, jobs that bring
        // their own credentials are refused.
        secret_key: batchmill_core::sealed::ClusterKey::from_env()?,
        queues: batchmill_core::queues::Queues::parse(&args.queues).map_err(|v| anyhow::anyhow!("{v}"))?,
        max_job_items: args.max_job_items,
    };
    let listener = args.listen.bind(&shutdown).await?;
    batchmill_scheduler::run(config, listener, shutdown).await?;
    Ok(())
}
