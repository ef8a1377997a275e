//! batchmill-gateway: the public gRPC and REST API.

use anyhow::Context;
use batchmill_runtime::args::{EtcdArgs, ListenArgs, S3Args};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "batchmill-gateway", version, about = "The public gRPC and REST API")]
struct Args {
    #[command(flatten)]
    listen: ListenArgs,
    #[command(flatten)]
    etcd: EtcdArgs,
    #[command(flatten)]
    s3: S3Args,
    #[command(flatten)]
    tls: batchmill_runtime::args::TlsArgs,
    /// Where inputs are staged; Modzy's uploads go under <staging>/uploads/.
    #[arg(long, env = "BATCHMILL_STAGING_URI", default_value = "s3://batchmill/staging")]
    staging_uri: String,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Creates a cluster admin key (and its account, if new), prints it on
    /// stdout and exits. The key is shown this once; only its hash is kept.
    AdminKey {
        /// The account of the key.
        #[arg(long, default_value = "admin")]
        account: String,
        /// What the key is for.
        #[arg(long, default_value = "created by batchmill-gateway admin-key")]
        description: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(tls) = args.etcd.tls() {
        batchmill_coord::Etcd::use_tls(&tls)?;
    }
    if let Some(Command::AdminKey { account, description }) = args.command {
        let key = batchmill_gateway::admin_key(&args.etcd.etcd_endpoints, &account, &description).await?;
        println!("{key}");
        return Ok(());
    }
    let _telemetry = batchmill_runtime::telemetry::init("batchmill-gateway")?;
    batchmill_runtime::tls::configure(&args.tls)?;
    let shutdown = batchmill_runtime::shutdown_token();
    let config = batchmill_gateway::Config {
        etcd_endpoints: args.etcd.etcd_endpoints,
        s3: batchmill_blob::S3Config::new(args.s3.s3_endpoint, args.s3.s3_region),
        staging_uri: batchmill_core::S3Uri::parse(&args.staging_uri).context("--staging-uri")?,
        tls: args.tls.files(),
    };
    let listener = args.listen.bind(&shutdown).await?;
    batchmill_gateway::run(config, listener, shutdown).await?;
    Ok(())
}
