//! batchmill-enqueuer: publishes job batches to JetStream.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use batchmill_coord::Etcd;
use batchmill_enqueuer::{Enqueuer, EnqueuerGrpc};
use batchmill_proto::lister::v1::lister_service_client::ListerServiceClient;
use batchmill_queue::JetStreamQueue;
use batchmill_runtime::args::{EtcdArgs, ListenArgs, NatsArgs};
use clap::Parser;
use tracing::info;

#[derive(Debug, Parser)]
#[command(name = "batchmill-enqueuer", version, about = "Publishes job batches to JetStream")]
struct Config {
    #[command(flatten)]
    listen: ListenArgs,
    #[command(flatten)]
    etcd: EtcdArgs,
    #[command(flatten)]
    nats: NatsArgs,
    /// gRPC URL of the lister.
    #[arg(long, env = "BATCHMILL_LISTER_URL", default_value = "http://127.0.0.1:50052")]
    lister_url: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let _telemetry = batchmill_runtime::telemetry::init("batchmill-enqueuer")?;
    let shutdown = batchmill_runtime::shutdown_token();
    let patience = Duration::from_secs(30);
    let etcd = Etcd::connect(&config.etcd.etcd_endpoints, patience).await.context("connecting to etcd")?;
    let queue = JetStreamQueue::connect(&config.nats.nats_url, patience).await.context("connecting to NATS")?;
    let lister =
        tonic::transport::Endpoint::from_shared(config.lister_url.clone()).context("lister URL")?.connect_lazy();
    let lister = ListerServiceClient::new(lister).max_decoding_message_size(16 * 1024 * 1024);
    let enqueuer = Enqueuer::new(Arc::new(etcd), queue, lister, shutdown.clone());
    let resumed = enqueuer.resume_all().await.context("resuming unfinished jobs")?;
    let listener = batchmill_runtime::bind(config.listen.listen).await?;
    info!(addr = %listener.local_addr()?, resumed, "enqueuer serving");
    batchmill_runtime::ServerBuilder::new()?
        .add_service(EnqueuerGrpc::new(enqueuer.clone()).into_service())
        .serve(listener, shutdown)
        .await?;
    enqueuer.drain().await;
    info!("enqueuer stopped");
    Ok(())
}
