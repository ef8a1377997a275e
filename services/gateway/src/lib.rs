//! The gateway is batchmill's only public face.
//!
//! RPCs: `batchmill.jobs.v1.JobService` and
//! `batchmill.pipelines.v1.PipelineService` over gRPC, the same RPCs as
//! REST/JSON on the same port, routed from their `google.api.http`
//! annotations (see [`rest`]), Cortex's BatchAPI routes (see [`cortex`]) and
//! Modzy's Jobs API (see [`modzy`]). Depends on: etcd (keys, and the
//! scheduler leader), the scheduler (which owns jobs) and S3 (Modzy's file
//! uploads, kept under the staging location). Stateless.

mod accounts;
mod auth;
mod console;
pub mod cortex;
pub mod files;
mod forward;
pub mod fuzz;
pub mod limits;
mod metrics;
pub mod modzy;
pub mod rest;
mod serve;

pub use forward::{JobsForwarder, PipelinesForwarder};

use std::sync::Arc;
use std::time::Duration;

use batchmill_coord::{CoordError, Etcd, LeaderChannel, SCHEDULER_ELECTION};
use batchmill_runtime::RuntimeError;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Errors that stop a gateway.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("connecting to etcd: {0}")]
    Etcd(#[from] CoordError),
    #[error("building the REST routes: {0}")]
    Routes(#[from] rest::RouteError),
    #[error("{0}")]
    Runtime(#[from] RuntimeError),
    #[error("creating the key: {0}")]
    Accounts(#[from] batchmill_accounts::AccountError),
    #[error("TLS: {0}")]
    Tls(#[from] batchmill_runtime::tls::TlsError),
}

/// How a gateway runs.
#[derive(Debug, Clone)]
pub struct Config {
    pub etcd_endpoints: Vec<String>,
    pub s3: batchmill_blob::S3Config,
    /// Where inputs are staged; uploads go under `<staging>/uploads/`.
    pub staging_uri: batchmill_core::S3Uri,
    /// Serve over TLS with these files; None: in the clear.
    pub tls: Option<batchmill_runtime::tls::TlsFiles>,
}

/// The public services, served over gRPC and REST.
pub const PUBLIC_SERVICES: &[&str] =
    &["batchmill.jobs.v1.JobService", "batchmill.pipelines.v1.PipelineService", "batchmill.accounts.v1.AccountService"];

/// The gateway's router: gRPC (with health and reflection) and REST.
/// `tls` says whether it is served over TLS (for the URLs it hands out).
pub async fn router(
    etcd: Etcd,
    uploads: modzy::Uploads,
    files: files::Files,
    tls: bool,
) -> Result<axum::Router, GatewayError> {
    let store = batchmill_accounts::Accounts::new(Arc::new(etcd.clone()));
    let jobs =
        JobsForwarder::new(LeaderChannel::new(etcd, SCHEDULER_ELECTION).dialing(batchmill_runtime::dial::channel));
    let pipelines = PipelinesForwarder::new(jobs.clone());
    let cortex = cortex::Cortex::new(jobs.clone(), pipelines.clone(), if tls { "https" } else { "http" });
    let modzy = modzy::Modzy::new(jobs.clone(), pipelines.clone(), uploads);
    metrics::register();
    let routes = batchmill_runtime::ServerBuilder::new()?
        .add_service(jobs.into_service())
        .add_service(pipelines.into_service())
        .add_service(accounts::AccountsGrpc::new(store.clone()).into_service())
        .into_routes()
        .await;
    let rest = Arc::new(rest::Rest::new(routes.clone(), PUBLIC_SERVICES)?);
    // Paths that are no gRPC method fall through to the Cortex routes
    // (`/<api>`) or REST (gRPC clients calling an unknown method get HTTP
    // 404, which they read as UNIMPLEMENTED).
    Ok(routes
        .into_axum_router()
        .fallback(move |request: axum::extract::Request| {
            let (rest, cortex, modzy, files) = (rest.clone(), cortex.clone(), modzy.clone(), files.clone());
            async move {
                if request.method() == http::Method::GET
                    && let Some(docs) = rest.docs(request.uri().path())
                {
                    docs
                } else if request.method() == http::Method::GET && request.uri().path() == console::PATH {
                    console::page()
                } else if files::is_files_path(request.uri().path()) {
                    files.handle(request).await
                } else if modzy::is_modzy_path(request.uri().path()) {
                    modzy.handle(request).await
                } else if cortex::is_cortex_path(request.uri().path()) {
                    cortex.handle(request).await
                } else {
                    rest::handle(axum::extract::State(rest), request).await
                }
            }
        })
        .layer(axum::middleware::from_fn_with_state(
            auth::Gate { accounts: store, in_flight: limits::InFlight::from_env() },
            auth::authenticate,
        ))
        .layer(axum::middleware::from_fn(metrics::track))
        .layer(
            tower_http::trace::TraceLayer::new_for_http()
                .make_span_with(batchmill_runtime::trace::request_span::<axum::body::Body> as fn(&_) -> _)
                .on_failure(tower_http::trace::DefaultOnFailure::new().level(tracing::Level::DEBUG)),
        ))
}

/// Creates a cluster admin key in `account` (created if new), for the
/// deployment's first key; returns the key, shown this once.
pub async fn admin_key(etcd_endpoints: &[String], account: &str, description: &str) -> Result<String, GatewayError> {
    let etcd = Etcd::connect(etcd_endpoints, Duration::from_secs(30)).await?;
    let key = batchmill_accounts::Accounts::new(Arc::new(etcd)).bootstrap(account, description).await?;
    Ok(key.reveal())
}

/// Serves gRPC (h2c) and REST (HTTP/1.1) on `listener` until `shutdown`.
pub async fn run(config: Config, listener: TcpListener, shutdown: CancellationToken) -> Result<(), GatewayError> {
    let etcd = Etcd::connect(&config.etcd_endpoints, Duration::from_secs(30)).await?;
    let blob: Arc<dyn batchmill_blob::ObjectStore> = Arc::new(batchmill_blob::Blob::new(&config.s3).await);
    let files = files::Files::new(blob.clone(), Arc::new(etcd.clone()), config.staging_uri.clone());
    let app = router(etcd, modzy::Uploads::new(blob, config.staging_uri), files, config.tls.is_some()).await?;
    let tls_on = config.tls.is_some();
    tracing::info!(addr = %listener.local_addr().map_err(RuntimeError::Io)?, tls = tls_on, "gateway serving gRPC and REST");
    let tls = match config.tls {
        Some(files) => Some(batchmill_runtime::tls::ServerTls::start(files, serve::ALPN, shutdown.clone())?),
        None => None,
    };
    serve::serve(listener, app, tls, shutdown).await;
    tracing::info!("gateway stopped");
    Ok(())
}
