//! What every batchmill service shares to run: the gRPC server builder
//! (reflection, health, tracing, limits, metrics), telemetry, shutdown, and the
//! command-line arguments for the cluster's dependencies and how they are
//! reached (TLS, credentials).

pub mod args;
pub mod dial;
pub mod health;
pub mod logfmt;
pub mod metrics;
pub mod otlp_metrics;
pub mod reach;
pub mod server;
pub mod shutdown;
pub mod telemetry;
pub mod tls;
pub mod trace;

pub use server::ServerBuilder;
pub use shutdown::shutdown_token;

/// Errors of running a service.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("binding {addr}: {source}")]
    Bind { addr: std::net::SocketAddr, source: std::io::Error },
    #[error("building server reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("serving: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("serving: {0}")]
    Io(#[from] std::io::Error),
    #[error("setting up trace export: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    #[error("installing the log subscriber: {0}")]
    Subscriber(#[from] tracing_subscriber::util::TryInitError),
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
}

/// Binds a service's listener (port 0 picks a free port), naming the address
/// on failure.
pub async fn bind(addr: std::net::SocketAddr) -> Result<tokio::net::TcpListener, RuntimeError> {
    tokio::net::TcpListener::bind(addr).await.map_err(|source| RuntimeError::Bind { addr, source })
}
