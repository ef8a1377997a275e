//! One way to serve gRPC: every service gets server reflection (v1 and
//! v1alpha, so grpcurl 1.8 works), health checking, its Prometheus metrics
//! at `GET /metrics` (HTTP/1.1 on the same port, [`crate::metrics`]), a
//! tracing layer, a concurrency limit, and graceful shutdown on a token.

use std::time::Duration;

use crate::health::Health;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService;
use tonic::service::{Routes, RoutesBuilder};

/// Most requests one service handles at once.
const CONCURRENCY_LIMIT: usize = 1024;

/// Builds a service's gRPC routes with reflection and health.
pub struct ServerBuilder {
    routes: RoutesBuilder,
    health: Health,
    names: Vec<&'static str>,
    ready_at_start: bool,
}

impl ServerBuilder {
    pub fn new() -> Result<ServerBuilder, crate::RuntimeError> {
        let mut routes = RoutesBuilder::default();
        let (health, health_service) = tonic_health::server::health_reporter();
        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(batchmill_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(batchmill_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()?;
        routes.add_service(health_service);
        routes.add_service(reflection_v1);
        routes.add_service(reflection_v1alpha);
        Ok(ServerBuilder { routes, health: Health::new(health), names: Vec::new(), ready_at_start: true })
    }

    /// Reports the server (service "") NOT_SERVING until the owner calls
    /// `health().set_serving(true)`, for a process that is
    /// ready only once it has done more than bind.
    pub fn not_ready(mut self) -> Self {
        self.ready_at_start = false;
        self
    }

    /// Adds a service; it reports SERVING once the server starts.
    pub fn add_service<S>(mut self, service: S) -> Self
    where
        S: tower::Service<http::Request<tonic::body::Body>, Error = std::convert::Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Response: axum::response::IntoResponse,
        S::Future: Send + 'static,
    {
        self.names.push(S::NAME);
        self.routes.add_service(service);
        self
    }

    /// The health reporter, to report NOT_SERVING while a service cannot work.
    pub fn health(&self) -> Health {
        self.health.clone()
    }

    /// Marks every added service SERVING and returns the routes.
    pub async fn into_routes(self) -> Routes {
        for name in &self.names {
            self.health.set_service_serving(name).await;
        }
        self.health.set_serving(self.ready_at_start).await;
        Routes::from(self.routes.routes().into_axum_router().merge(crate::metrics::router()))
    }

    /// Serves on `listener` until `shutdown` is cancelled, then drains.
    pub async fn serve(self, listener: TcpListener, shutdown: CancellationToken) -> Result<(), crate::RuntimeError> {
        let health = self.health.clone();
        let routes = self.into_routes().await;
        serve_routes(routes, listener, shutdown.clone()).await?;
        health.set_serving(false).await;
        Ok(())
    }
}

/// How a request's span is made.
type MakeSpan = fn(&http::Request<tonic::body::Body>) -> tracing::Span;

/// The request-tracing layer every service runs.
pub type TraceLayer = tower_http::trace::TraceLayer<
    tower_http::classify::SharedClassifier<tower_http::classify::GrpcErrorsAsFailures>,
    MakeSpan,
>;

/// Request tracing. Failed requests are logged at DEBUG: services log the
/// errors they handle, and a client's bad request is no server error.
pub fn trace_layer() -> TraceLayer {
    tower_http::trace::TraceLayer::new_for_grpc()
        .make_span_with(crate::trace::request_span::<tonic::body::Body> as MakeSpan)
        .on_failure(tower_http::trace::DefaultOnFailure::new().level(tracing::Level::DEBUG))
}

/// Serves prepared routes with the standard layers until `shutdown`.
pub async fn serve_routes(
    routes: Routes,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), crate::RuntimeError> {
    let server = tonic::transport::Server::builder()
        // HTTP/1.1 too, for `GET /metrics`; gRPC stays HTTP/2.
        .accept_http1(true)
        .concurrency_limit_per_connection(CONCURRENCY_LIMIT)
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .layer(trace_layer())
        .add_routes(routes);
    match crate::tls::server_files() {
        None => {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            server.serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned()).await?;
        }
        Some(files) => {
            let incoming = crate::tls::incoming(listener, files, shutdown.clone())?;
            server.serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned()).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};

    use super::*;

    async fn status(addr: std::net::SocketAddr) -> i32 {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).expect("url").connect().await;
        let mut client = HealthClient::new(channel.expect("connect"));
        client.check(HealthCheckRequest { service: String::new() }).await.expect("check").into_inner().status
    }

    #[tokio::test]
    async fn a_not_ready_server_reports_not_serving_until_told() {
        let builder = ServerBuilder::new().expect("builder").not_ready();
        let health = builder.health();
        let routes = builder.into_routes().await;
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve_routes(routes, listener, shutdown.clone()));
        assert_eq!(status(addr).await, ServingStatus::NotServing as i32);
        health.set_serving(true).await;
        assert_eq!(status(addr).await, ServingStatus::Serving as i32);
        shutdown.cancel();
        server.await.expect("join").expect("served");
    }

    #[tokio::test]
    async fn metrics_are_served_over_http1_beside_grpc() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let routes = ServerBuilder::new().expect("builder").into_routes().await;
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve_routes(routes, listener, shutdown.clone()));
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.expect("write");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.expect("read");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.contains(crate::metrics::CONTENT_TYPE), "{answer}");
        assert!(answer.contains("# EOF"), "{answer}");
        // gRPC still answers on the same port.
        assert_eq!(status(addr).await, ServingStatus::Serving as i32);
        shutdown.cancel();
        server.await.expect("join").expect("served");
    }
}
