//! batchmill-lister: expands job inputs into item streams.

use batchmill_blob::{Blob, S3Config};
use batchmill_lister::{Lister, ListerGrpc};
use batchmill_runtime::args::{ListenArgs, S3Args};
use clap::Parser;
use tracing::info;

#[derive(Debug, Parser)]
#[command(name = "batchmill-lister", version, about = "Expands job inputs into item streams")]
struct Config {
    #[command(flatten)]
    listen: ListenArgs,
    #[command(flatten)]
    s3: S3Args,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let _telemetry = batchmill_runtime::telemetry::init("batchmill-lister")?;
    let shutdown = batchmill_runtime::shutdown_token();
    let blob = Blob::new(&S3Config::new(config.s3.s3_endpoint.clone(), config.s3.s3_region.clone())).await;
    let listener = batchmill_runtime::bind(config.listen.listen).await?;
    info!(addr = %listener.local_addr()?, "lister serving");
    batchmill_runtime::ServerBuilder::new()?
        .add_service(ListerGrpc::new(Lister::new(blob)).into_service())
        .serve(listener, shutdown)
        .await?;
    info!("lister stopped");
    Ok(())
}
