//! The process's Prometheus registry, and the round trips of the adapters
//! to the cluster's dependencies: each etcd, NATS and S3 request timed by
//! operation, and each that failed counted ([`Timed`]). Services serve the
//! registry at `GET /metrics` (`batchmill_runtime::metrics`); names are
//! prefixed `batchmill_`.

use std::sync::{LazyLock, Mutex, PoisonError};
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

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

type Op = Vec<(&'static str, &'static str)>;

/// The requests of one dependency: their durations and their failures, by
/// operation.
pub struct Requests {
    seconds: Family<Op, Histogram>,
    errors: Family<Op, Counter>,
}

impl Requests {
    fn new(system: &str, what: &str) -> Requests {
        let requests = Requests {
            // 0.1 ms to about 26 s.
            seconds: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.0001, 2.0, 19))),
            errors: Family::default(),
        };
        register(|r| {
            r.register(
                format!("{system}_request_duration_seconds"),
                format!("Round trips of {what}, by operation."),
                requests.seconds.clone(),
            );
            r.register(
                format!("{system}_request_errors"),
                format!("{what} that failed, by operation."),
                requests.errors.clone(),
            );
        });
        requests
    }
}

/// etcd requests (the coordination adapter's).
pub static ETCD: LazyLock<Requests> = LazyLock::new(|| Requests::new("etcd", "etcd requests"));
/// NATS and JetStream requests (the queue adapter's).
pub static NATS: LazyLock<Requests> = LazyLock::new(|| Requests::new("nats", "NATS and JetStream requests"));
/// S3 requests (the object store adapter's).
pub static S3: LazyLock<Requests> = LazyLock::new(|| Requests::new("s3", "S3 requests"));

/// Runs `request` (operation `op` of `system`), timing it and counting it
/// if it fails.
async fn timed<T, E>(system: &Requests, op: &'static str, request: impl Future<Output = Result<T, E>>) -> Result<T, E> {
    let started = Instant::now();
    let result = request.await;
    let labels = vec![("op", op)];
    system.seconds.get_or_create(&labels).observe(started.elapsed().as_secs_f64());
    // The error count of every operation used exists, at 0 until one fails
    // (a series that appears only at the first failure hides the change).
    let errors = system.errors.get_or_create(&labels);
    if result.is_err() {
        errors.inc();
    }
    result
}

/// Times a request to a dependency: `request.timed(&S3, "put").await` runs
/// it, records how long it took under operation `op`, and counts it if it
/// failed.
pub trait Timed<T, E>: Future<Output = Result<T, E>> + Sized {
    fn timed(self, system: &'static Requests, op: &'static str) -> impl Future<Output = Result<T, E>> {
        timed(system, op, self)
    }
}

impl<F: Future<Output = Result<T, E>>, T, E> Timed<T, E> for F {}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn requests_are_timed_and_failures_counted_by_operation() {
        let ok: Result<u8, ()> = async { Ok(1) }.timed(&S3, "test_get").await;
        let failed: Result<u8, ()> = async { Err(()) }.timed(&S3, "test_get").await;
        assert_eq!((ok, failed), (Ok(1), Err(())));
        let text = render();
        assert!(text.contains("batchmill_s3_request_duration_seconds_count{op=\"test_get\"} 2"), "{text}");
        assert!(text.contains("batchmill_s3_request_errors_total{op=\"test_get\"} 1"), "{text}");
    }
}
