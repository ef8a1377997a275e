//! What every batchmill service shares to run: the gRPC server builder
//! (reflection, health, tracing, limits), telemetry, shutdown, and the
//! command-line arguments for the cluster's dependencies.

pub mod args;
pub mod server;
pub mod shutdown;
pub mod telemetry;

pub use server::ServerBuilder;
pub use shutdown::shutdown_token;
