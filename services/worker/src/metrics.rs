//! The worker's Prometheus metrics: batches run by outcome, their items, how
//! long each took, and how many are running now (how busy the worker is).
//! Registered when the worker starts ([`register`]).

use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

type Outcome = Vec<(&'static str, &'static str)>;

struct Metrics {
    batches: Family<Outcome, Counter>,
    items: Counter,
    seconds: Histogram,
    running: Gauge,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let m = Metrics {
        batches: Family::default(),
        items: Counter::default(),
        // 1 ms to about 9 minutes.
        seconds: Histogram::new(exponential_buckets(0.001, 2.0, 20)),
        running: Gauge::default(),
    };
    batchmill_runtime::metrics::register(|r| {
        r.register("worker_batches", "Batches this worker's predictor ran, by outcome.", m.batches.clone());
        r.register("worker_items", "Items in the batches this worker's predictor ran.", m.items.clone());
        r.register(
            "worker_batch_duration_seconds",
            "How long the predictor took over one batch (its objects read, its results made).",
            m.seconds.clone(),
        );
        r.register("worker_running_batches", "Batches the predictor is running now.", m.running.clone());
    });
    m
});

/// Puts the worker's metrics in the registry, at zero.
pub fn register() {
    LazyLock::force(&METRICS);
}

/// A batch running, counted until dropped.
pub struct Running(());

pub fn running() -> Running {
    METRICS.running.inc();
    Running(())
}

impl Drop for Running {
    fn drop(&mut self) {
        METRICS.running.dec();
    }
}

/// A batch of `items` that the predictor ran in `took`, `ok` or not.
pub fn ran(ok: bool, items: usize, took: Duration) {
    let outcome = if ok { "succeeded" } else { "failed" };
    METRICS.batches.get_or_create(&vec![("outcome", outcome)]).inc();
    METRICS.items.inc_by(items as u64);
    METRICS.seconds.observe(took.as_secs_f64());
}
