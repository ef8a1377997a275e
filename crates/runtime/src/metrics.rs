//! Prometheus metrics. A process has one registry, to which each module adds
//! its metrics as the service starts ([`register`]); every service serves it
//! at `GET /metrics` on its own port (HTTP/1.1 beside its gRPC, see
//! [`crate::server`]) in the OpenMetrics text format, each name prefixed
//! `batchmill_`.

use std::sync::{LazyLock, Mutex, PoisonError};

use axum::routing::get;
use prometheus_client::registry::Registry;

/// Where every service serves its metrics.
pub const PATH: &str = "/metrics";

/// The exposition's content type (OpenMetrics 1.0 text).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

static REGISTRY: LazyLock<Mutex<Registry>> = LazyLock::new(|| Mutex::new(Registry::with_prefix("batchmill")));

/// Adds metrics to the process's registry.
pub fn register(add: impl FnOnce(&mut Registry)) {
    add(&mut REGISTRY.lock().unwrap_or_else(PoisonError::into_inner));
}

/// Every registered metric, as OpenMetrics text.
pub fn render() -> String {
    let mut text = String::new();
    let registry = REGISTRY.lock().unwrap_or_else(PoisonError::into_inner);
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
    text
}

/// The `/metrics` route.
pub fn router() -> axum::Router {
    axum::Router::new().route(PATH, get(|| async { ([(http::header::CONTENT_TYPE, CONTENT_TYPE)], render()) }))
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
}
