//! Prometheus metrics. A process has one registry (`batchmill_core::metrics`),
//! to which each module adds its metrics ([`register`]); every service serves it
//! at `GET /metrics` on its own port (HTTP/1.1 beside its gRPC, see
//! [`crate::server`]) in the OpenMetrics text format, each name prefixed
//! `batchmill_`.

use axum::routing::get;

/// Where every service serves its metrics.
pub const PATH: &str = "/metrics";

/// The exposition's content type (OpenMetrics 1.0 text).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub use batchmill_core::metrics::{register, render};

/// The `/metrics` and `/healthz` routes.
pub fn router() -> axum::Router {
    axum::Router::new()
        .route(PATH, get(|| async { ([(http::header::CONTENT_TYPE, CONTENT_TYPE)], render()) }))
        .route("/healthz", get(crate::health::healthz))
}

/// Serves `GET /metrics` (and `GET /healthz`, [`crate::health`]) alone on
/// `listener` until `shutdown`.
pub async fn serve(listener: tokio::net::TcpListener, shutdown: tokio_util::sync::CancellationToken) {
    if let Err(error) = axum::serve(listener, router()).with_graceful_shutdown(shutdown.cancelled_owned()).await {
        tracing::warn!(%error, "serving metrics failed");
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::counter::Counter;

    use super::*;

    #[test]
    fn registered_metrics_are_rendered_with_the_prefix() {
        let counter: Counter = Counter::default();
        register(|r| r.register("test_things", "Things counted by a test.", counter.clone()));
        counter.inc_by(3);
        let text = render();
        assert!(text.contains("# TYPE batchmill_test_things counter"), "{text}");
        assert!(text.contains("batchmill_test_things_total 3"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[tokio::test]
    async fn metrics_are_served_on_their_own_address_when_asked() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let args = crate::args::ListenArgs {
            listen: "127.0.0.1:0".parse().expect("addr"),
            metrics_listen: Some(
                std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port"),
            ),
        };
        let shutdown = tokio_util::sync::CancellationToken::new();
        let _grpc = args.bind(&shutdown).await.expect("bind");
        let addr = args.metrics_listen.expect("set");
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.expect("write");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.expect("read");
        assert!(answer.starts_with("HTTP/1.1 200") && answer.contains("# EOF"), "{answer}");
        shutdown.cancel();
    }
}
