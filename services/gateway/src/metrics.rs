//! The gateway's Prometheus metrics: requests by protocol (gRPC, or HTTP for
//! REST, Cortex, Modzy and files) and HTTP status, and how long each took
//! until its response began. One middleware counts every request.

use std::sync::LazyLock;
use std::time::Instant;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

type Labels = Vec<(&'static str, String)>;

struct Metrics {
    requests: Family<Labels, Counter>,
    seconds: Family<Vec<(&'static str, &'static str)>, Histogram>,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let m = Metrics {
        requests: Family::default(),
        // 0.1 ms to about 100 s.
        seconds: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.0001, 2.0, 21))),
    };
    batchmill_runtime::metrics::register(|r| {
        r.register("gateway_requests", "Requests answered, by protocol and HTTP status.", m.requests.clone());
        r.register(
            "gateway_request_duration_seconds",
            "Time from a request to the start of its response, by protocol.",
            m.seconds.clone(),
        );
    });
    m
});

/// Puts the gateway's metrics in the registry.
pub fn register() {
    LazyLock::force(&METRICS);
}

/// The middleware: counts the request and times it.
pub async fn track(request: Request, next: Next) -> Response {
    let grpc = request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    let protocol = if grpc { "grpc" } else { "http" };
    let started = Instant::now();
    let response = next.run(request).await;
    METRICS.seconds.get_or_create(&vec![("protocol", protocol)]).observe(started.elapsed().as_secs_f64());
    let labels = vec![("protocol", protocol.to_owned()), ("code", response.status().as_u16().to_string())];
    METRICS.requests.get_or_create(&labels).inc();
    response
}
