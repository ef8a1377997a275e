//! batchmill-scheduler: owns the job lifecycle; one leader at a time.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use batchmill_blob::{Blob, S3Config};
use batchmill_coord::Etcd;
use batchmill_core::S3Uri;
use batchmill_proto::enqueuer::v1::enqueuer_service_client::EnqueuerServiceClient;
use batchmill_proto::lister::v1::lister_service_client::ListerServiceClient;
use batchmill_queue::{DeliveryPolicy, JetStreamQueue};
use batchmill_runtime::args::{EtcdArgs, ListenArgs, NatsArgs, S3Args};
use batchmill_scheduler::{JobsGrpc, Pipelines, PipelinesGrpc, Ports, Scheduler, SessionGrpc, Settings, State};
use clap::Parser;
use tracing::{info, warn};

#[derive(Debug, Parser)]
#[command(name = "batchmill-scheduler", version, about = "Owns the job lifecycle")]
struct Config {
    #[command(flatten)]
    listen: ListenArgs,
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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let _telemetry = batchmill_runtime::telemetry::init("batchmill-scheduler")?;
    let shutdown = batchmill_runtime::shutdown_token();
    let patience = Duration::from_secs(30);
    let default_output = S3Uri::parse(&config.output_uri).map_err(anyhow::Error::msg).context("--output-uri")?;
    let staging = S3Uri::parse(&config.staging_uri).map_err(anyhow::Error::msg).context("--staging-uri")?;
    let artifacts = S3Uri::parse(&config.pipelines_uri).map_err(anyhow::Error::msg).context("--pipelines-uri")?;
    let etcd = Etcd::connect(&config.etcd.etcd_endpoints, patience).await.context("connecting to etcd")?;
    let queue = JetStreamQueue::connect(&config.nats.nats_url, patience).await.context("connecting to NATS")?;
    let blob = Blob::new(&S3Config::new(config.s3.s3_endpoint.clone(), config.s3.s3_region.clone())).await;
    for bucket in [&default_output.bucket, &staging.bucket, &artifacts.bucket] {
        if let Err(e) = blob.ensure_bucket(bucket).await {
            warn!(bucket, error = %e, "could not ensure bucket");
        }
    }
    let enqueuer = EnqueuerServiceClient::new(
        tonic::transport::Endpoint::from_shared(config.enqueuer_url.clone())
            .context("enqueuer URL")?
            .connect_timeout(Duration::from_secs(3))
            .connect_lazy(),
    );
    let listener = batchmill_runtime::bind(config.listen.listen).await?;
    let url = config.advertise_url.clone().unwrap_or(format!("http://{}", listener.local_addr()?));

    info!(%url, "campaigning for leadership");
    let leadership = tokio::select! {
        l = batchmill_scheduler::lead(&etcd, &url) => l.context("leader election")?,
        () = shutdown.cancelled() => return Ok(()),
    };
    let lost = leadership.lost();

    let settings = Arc::new(Settings {
        policy: DeliveryPolicy { ack_wait: Duration::from_secs(config.ack_wait_secs), max_deliver: config.max_deliver },
        default_output,
        staging,
    });
    let kv: Arc<dyn batchmill_coord::Kv> = Arc::new(etcd);
    let store = Arc::new(blob);
    let ports =
        Ports { kv: kv.clone(), queue: Arc::new(queue.clone()), enqueuer: Arc::new(enqueuer), store: store.clone() };
    let mut state = State::new(ports, settings.clone());
    let jobs = state.load().await.context("loading jobs")?;
    let lister = ListerServiceClient::new(
        tonic::transport::Endpoint::from_shared(config.lister_url.clone())
            .context("lister URL")?
            .connect_timeout(Duration::from_secs(3))
            .connect_lazy(),
    );
    let pipelines = Pipelines::load(
        vec!["echo".to_owned(), batchmill_core::embed::PIPELINE.to_owned()],
        kv.clone(),
        store.clone(),
        artifacts,
    )
    .await
    .context("loading pipelines")?;
    let scheduler = Scheduler::start(state, settings, store, Arc::new(lister), pipelines, shutdown.clone());
    batchmill_scheduler::follow_etcd(kv, scheduler.clone(), shutdown.clone());
    batchmill_scheduler::follow_exhausted(queue.clone(), scheduler.clone(), shutdown.clone());
    info!(%url, jobs, "leading; serving");

    let serving = shutdown.clone();
    tokio::spawn(async move {
        lost.cancelled().await;
        warn!("leadership lost; stopping");
        serving.cancel();
    });
    batchmill_runtime::ServerBuilder::new()?
        .add_service(JobsGrpc::new(scheduler.clone(), Arc::new(queue.clone())).into_service())
        .add_service(PipelinesGrpc::new(scheduler.clone()).into_service())
        .add_service(SessionGrpc::new(scheduler).into_service())
        .serve(listener, shutdown)
        .await?;
    leadership.resign().await;
    info!("scheduler stopped");
    Ok(())
}
