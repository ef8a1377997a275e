//! The gateway is batchmill's only public face.
//!
//! RPCs: `batchmill.jobs.v1.JobService` and
//! `batchmill.pipelines.v1.PipelineService` over gRPC, the same RPCs as
//! REST/JSON on the same port, routed from their `google.api.http`
//! annotations (see [`rest`]), and Cortex's BatchAPI routes (see [`cortex`]). Depends on: etcd (to find the scheduler
//! leader) and the scheduler (which owns jobs). Stateless.

pub mod cortex;
mod forward;
pub mod rest;

pub use forward::{JobsForwarder, PipelinesForwarder};

use std::sync::Arc;

use batchmill_coord::{Etcd, LeaderChannel, SCHEDULER_ELECTION};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The public services, served over gRPC and REST.
pub const PUBLIC_SERVICES: &[&str] = &["batchmill.jobs.v1.JobService", "batchmill.pipelines.v1.PipelineService"];

/// The gateway's router: gRPC (with health and reflection) and REST.
pub async fn router(etcd: Etcd) -> anyhow::Result<axum::Router> {
    let jobs = JobsForwarder::new(LeaderChannel::new(etcd, SCHEDULER_ELECTION));
    let pipelines = PipelinesForwarder::new(jobs.clone());
    let cortex = cortex::Cortex::new(jobs.clone(), pipelines.clone());
    let routes = batchmill_runtime::ServerBuilder::new()?
        .add_service(jobs.into_service())
        .add_service(pipelines.into_service())
        .into_routes()
        .await;
    let rest = Arc::new(rest::Rest::new(routes.clone(), PUBLIC_SERVICES).map_err(anyhow::Error::msg)?);
    // Paths that are no gRPC method fall through to the Cortex routes
    // (`/<api>`) or REST (gRPC clients calling an unknown method get HTTP
    // 404, which they read as UNIMPLEMENTED).
    Ok(routes
        .into_axum_router()
        .fallback(move |request: axum::extract::Request| {
            let (rest, cortex) = (rest.clone(), cortex.clone());
            async move {
                if cortex::is_cortex_path(request.uri().path()) {
                    cortex.handle(request).await
                } else {
                    rest::handle(axum::extract::State(rest), request).await
                }
            }
        })
        .layer(
            tower_http::trace::TraceLayer::new_for_http()
                .make_span_with(batchmill_runtime::trace::request_span::<axum::body::Body> as fn(&_) -> _)
                .on_failure(tower_http::trace::DefaultOnFailure::new().level(tracing::Level::DEBUG)),
        ))
}

/// Serves gRPC (h2c) and REST (HTTP/1.1) on `listener` until `shutdown`.
pub async fn run(etcd: Etcd, listener: TcpListener, shutdown: CancellationToken) -> anyhow::Result<()> {
    let app = router(etcd).await?;
    axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await?;
    Ok(())
}
