//! batchmill-s3-server: a real S3-compatible server for the local cluster
//! and the test sandbox, over a directory. It is the s3s-fs library (SigV4
//! authentication, pagination, multipart) behind a small hyper front end,
//! built in this workspace so it shares its dependencies, with its own
//! listing by prefix ([`listing`]).

mod faults;
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
    /// Where to serve the request counts (`GET /metrics`, Prometheus text)
    /// and the fault control (`POST /faults?put_error_rate=R`); none when
    /// unset.
    #[arg(long, env = "BATCHMILL_S3_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Share of PUTs answered with a 500 InternalError, from 0 to 1 (fault
    /// injection, for tests and the chaos suite).
    #[arg(long, default_value_t = 0.0)]
    fail_puts: f64,
    /// Seed of which PUTs fail.
    #[arg(long, default_value_t = 0)]
    fault_seed: u64,
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
            .field("fail_puts", &self.fail_puts)
            .field("fault_seed", &self.fault_seed)
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
    let faults = std::sync::Arc::new(faults::Faults::new(config.fail_puts, config.fault_seed));
    if let Some(addr) = config.metrics_listen {
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
        info!(addr = %listener.local_addr()?, "metrics serving");
        tokio::spawn(serve_metrics(listener, counts.clone(), faults.clone()));
    }
    let service = {
        let counts = counts.clone();
        hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
            counts.count(&request);
            let injected = faults.inject(&request);
            let call = hyper::service::Service::call(&service, request);
            async move {
                match injected {
                    Some(response) => Ok(response),
                    None => call.await,
                }
            }
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

/// Answers `/faults` with the fault control, every other request on
/// `listener` with the request counts.
async fn serve_metrics(
    listener: tokio::net::TcpListener,
    counts: std::sync::Arc<metrics::Counts>,
    faults: std::sync::Arc<faults::Faults>,
) {
    let http = ConnBuilder::new(TokioExecutor::new());
    while let Ok((socket, _)) = listener.accept().await {
        let (counts, faults) = (counts.clone(), faults.clone());
        let answer = hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
            let (status, text, kind) = if request.uri().path() == "/faults" {
                match faults.control(request.method(), request.uri().query()) {
                    Ok(text) => (http::StatusCode::OK, text, "text/plain"),
                    Err(why) => (http::StatusCode::BAD_REQUEST, format!("{why}\n"), "text/plain"),
                }
            } else {
                let text = format!("{}{}", counts.render(), faults_metric(faults.injected()));
                (http::StatusCode::OK, text, "text/plain; version=0.0.4")
            };
            let body = http_body_util::Full::new(bytes::Bytes::from(text));
            std::future::ready(http::Response::builder().status(status).header("content-type", kind).body(body))
        });
        let connection = http.serve_connection(TokioIo::new(socket), answer).into_owned();
        tokio::spawn(async move {
            let _ = connection.await;
        });
    }
}

/// The count of injected faults, in the Prometheus text format.
fn faults_metric(injected: u64) -> String {
    format!(
        "# HELP batchmill_s3_faults_injected_total Requests answered with an injected fault.\n\
         # TYPE batchmill_s3_faults_injected_total counter\nbatchmill_s3_faults_injected_total {injected}\n"
    )
}
