//! What every batchmill service shares to run: the gRPC server builder
//! (reflection, health, tracing, limits), telemetry, shutdown, and the
//! command-line arguments for the cluster's dependencies.

pub mod args;
pub mod server;
pub mod shutdown;
pub mod telemetry;
pub mod trace;

pub use server::ServerBuilder;
pub use shutdown::shutdown_token;

/// Binds a service's listener (port 0 picks a free port), naming the address
/// on failure.
pub async fn bind(addr: std::net::SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    use anyhow::Context;
    tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))
}
