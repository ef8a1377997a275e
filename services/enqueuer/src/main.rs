//! batchmill-enqueuer: publishes job batches to JetStream.

use batchmill_runtime::args::{EtcdArgs, ListenArgs, NatsArgs};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "batchmill-enqueuer", version, about = "Publishes job batches to JetStream")]
struct Args {
    #[command(flatten)]
    listen: ListenArgs,
    #[command(flatten)]
    tls: batchmill_runtime::args::TlsArgs,
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
    let args = Args::parse();
    let _telemetry = batchmill_runtime::telemetry::init("batchmill-enqueuer")?;
    batchmill_runtime::reach::cluster(&args.tls, &args.etcd, &args.nats)?;
    let shutdown = batchmill_runtime::shutdown_token();
    let config = batchmill_enqueuer::Config {
        etcd_endpoints: args.etcd.etcd_endpoints,
        nats_url: args.nats.nats_url,
        lister_url: args.lister_url,
        secret_key: batchmill_core::sealed::ClusterKey::from_env()?,
    };
    let listener = args.listen.bind(&shutdown).await?;
    batchmill_enqueuer::run(config, listener, shutdown).await?;
    Ok(())
}
