//! The worker's Prometheus metrics: batches run by outcome, their items, how
//! long each took, how many are running now (how busy the worker is), and
//! the GPU it runs on (how many, and each one's memory). Registered when the
//! worker starts ([`register`]).

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
    gpus: Gauge,
    gpu_memory: Family<Vec<(&'static str, String)>, Gauge>,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let m = Metrics {
        batches: Family::default(),
        items: Counter::default(),
        // 1 ms to about 9 minutes.
        seconds: Histogram::new(exponential_buckets(0.001, 2.0, 20)),
        running: Gauge::default(),
        gpus: Gauge::default(),
        gpu_memory: Family::default(),
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
        r.register("worker_gpus", "GPUs this worker runs its predictors on (0 on the CPU).", m.gpus.clone());
        r.register("worker_gpu_memory_total_bytes", "Each GPU's memory, by device name.", m.gpu_memory.clone());
    });
    m
});

/// Puts the worker's metrics in the registry, at zero, with the `device`
/// it runs on.
pub fn register(device: &crate::device::Device) {
    let (count, name, memory) = device.gpus();
    METRICS.gpus.set(i64::from(count));
    if count > 0 {
        METRICS.gpu_memory.get_or_create(&vec![("gpu", name)]).set(memory as i64);
    }
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
