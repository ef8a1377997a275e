//! batchmill-gateway: the public gRPC and REST API.

use batchmill_runtime::args::{EtcdArgs, ListenArgs};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "batchmill-gateway", version, about = "The public gRPC and REST API")]
struct Args {
    #[command(flatten)]
    listen: ListenArgs,
    #[command(flatten)]
    etcd: EtcdArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _telemetry = batchmill_runtime::telemetry::init("batchmill-gateway")?;
    let shutdown = batchmill_runtime::shutdown_token();
    let config = batchmill_gateway::Config { etcd_endpoints: args.etcd.etcd_endpoints };
    let listener = batchmill_runtime::bind(args.listen.listen).await?;
    batchmill_gateway::run(config, listener, shutdown).await?;
    Ok(())
}
