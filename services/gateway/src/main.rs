//! batchmill-gateway: the public gRPC and REST API.

use std::time::Duration;

use anyhow::Context;
use batchmill_coord::Etcd;
use batchmill_runtime::args::{EtcdArgs, ListenArgs};
use clap::Parser;
use tracing::info;

#[derive(Debug, Parser)]
#[command(name = "batchmill-gateway", version, about = "The public gRPC and REST API")]
struct Config {
    #[command(flatten)]
    listen: ListenArgs,
    #[command(flatten)]
    etcd: EtcdArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let _telemetry = batchmill_runtime::telemetry::init("batchmill-gateway")?;
    let shutdown = batchmill_runtime::shutdown_token();
    let etcd =
        Etcd::connect(&config.etcd.etcd_endpoints, Duration::from_secs(30)).await.context("connecting to etcd")?;
    let listener = batchmill_runtime::bind(config.listen.listen).await?;
    info!(addr = %listener.local_addr()?, "gateway serving gRPC and REST");
    batchmill_gateway::run(etcd, listener, shutdown).await?;
    info!("gateway stopped");
    Ok(())
}
