//! batchmill-lister: expands job inputs into item streams.

use batchmill_blob::S3Config;
use batchmill_runtime::args::{ListenArgs, S3Args};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "batchmill-lister", version, about = "Expands job inputs into item streams")]
struct Args {
    #[command(flatten)]
    listen: ListenArgs,
    #[command(flatten)]
    tls: batchmill_runtime::args::TlsArgs,
    #[command(flatten)]
    s3: S3Args,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _telemetry = batchmill_runtime::telemetry::init("batchmill-lister")?;
    batchmill_runtime::tls::configure(&args.tls)?;
    let shutdown = batchmill_runtime::shutdown_token();
    let config = batchmill_lister::Config { s3: S3Config::new(args.s3.s3_endpoint, args.s3.s3_region) };
    let listener = args.listen.bind(&shutdown).await?;
    batchmill_lister::run(config, listener, shutdown).await?;
    Ok(())
}
