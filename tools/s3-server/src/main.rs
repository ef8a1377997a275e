//! batchmill-s3-server: a real S3-compatible server for the local cluster
//! and the test sandbox, over a directory. It is the s3s-fs library (SigV4
//! authentication, pagination, multipart) behind a small hyper front end,
//! built in this workspace so it shares its dependencies, with its own
//! listing by prefix ([`listing`]).

mod listing;
mod metrics;
mod store;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;
use tracing::info;

#[derive(Parser)]
#[command(name = "batchmill-s3-server", version, about = "S3-compatible server over a directory")]
struct Config {
    /// Address to listen on.
    #[arg(long, env = "BATCHMILL_S3_LISTEN", default_value = "127.0.0.1:9000")]
    listen: SocketAddr,
    /// Directory holding the buckets (one subdirectory each).
    #[arg(long, env = "BATCHMILL_S3_ROOT")]
    root: PathBuf,
    /// Access key clients must sign with.
    #[arg(long, env = "AWS_ACCESS_KEY_ID")]
    access_key: String,
    /// Secret key clients must sign with.
    #[arg(long, env = "AWS_SECRET_ACCESS_KEY", hide_env_values = true)]
    secret_key: String,
    /// Buckets to create at start.
    #[arg(long, value_delimiter = ',')]
    buckets: Vec<String>,
    /// More identities, as ACCESS_KEY:SECRET_KEY (repeatable): users of the
    /// store other than the cluster, such as a job's own credentials.
    #[arg(long = "extra-key")]
    extra_keys: Vec<String>,
    /// Where to serve the request counts (`GET /metrics`, Prometheus text);
    /// none when unset.
    #[arg(long, env = "BATCHMILL_S3_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("root", &self.root)
            .field("access_key", &self.access_key)
            .field("secret_key", &"<redacted>")
            .field("buckets", &self.buckets)
            .field("extra_keys", &self.extra_keys.len())
            .field("metrics_listen", &self.metrics_listen)
            .finish()
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let _telemetry = batchmill_runtime::telemetry::init("batchmill-s3-server")?;
    let shutdown = batchmill_runtime::shutdown_token();
    std::fs::create_dir_all(&config.root).with_context(|| format!("creating {}", config.root.display()))?;
    for bucket in &config.buckets {
        std::fs::create_dir_all(config.root.join(bucket)).with_context(|| format!("creating bucket {bucket}"))?;
    }
    let store = store::Store::new(&config.root).with_context(|| format!("opening {}", config.root.display()))?;
    let service = {
        let mut builder = S3ServiceBuilder::new(store);
        let mut auth = SimpleAuth::from_single(config.access_key.clone(), config.secret_key.clone());
        for pair in &config.extra_keys {
            let (access, secret) = pair.split_once(':').context("--extra-key takes ACCESS_KEY:SECRET_KEY")?;
            auth.register(access.to_owned(), secret.to_owned().into());
        }
        builder.set_auth(auth);
        builder.build()
    };
    let counts = metrics::Counts::new();
    if let Some(addr) = config.metrics_listen {
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
        info!(addr = %listener.local_addr()?, "metrics serving");
        tokio::spawn(serve_metrics(listener, counts.clone()));
    }
    let service = {
        let counts = counts.clone();
        hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
            counts.count(&request);
            hyper::service::Service::call(&service, request)
        })
    };
    let listener =
        tokio::net::TcpListener::bind(config.listen).await.with_context(|| format!("binding {}", config.listen))?;
    info!(addr = %listener.local_addr()?, root = %config.root.display(), "s3 serving");
    let http = ConnBuilder::new(TokioExecutor::new());
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let socket = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((socket, _)) => socket,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
        };
        let connection = http.serve_connection(TokioIo::new(socket), service.clone()).into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            let _ = connection.await;
        });
    }
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
    }
    info!("s3 stopped");
    Ok(())
}

/// Answers every request on `listener` with the request counts.
async fn serve_metrics(listener: tokio::net::TcpListener, counts: std::sync::Arc<metrics::Counts>) {
    let http = ConnBuilder::new(TokioExecutor::new());
    while let Ok((socket, _)) = listener.accept().await {
        let counts = counts.clone();
        let answer = hyper::service::service_fn(move |_: http::Request<hyper::body::Incoming>| {
            let body = http_body_util::Full::new(bytes::Bytes::from(counts.render()));
            let response = http::Response::builder().header("content-type", "text/plain; version=0.0.4").body(body);
            std::future::ready(response)
        });
        let connection = http.serve_connection(TokioIo::new(socket), answer).into_owned();
        tokio::spawn(async move {
            let _ = connection.await;
        });
    }
}
