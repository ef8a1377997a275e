//! The scheduler's Prometheus metrics, read from the leader's state: jobs by
//! state, batches and items by outcome, and the batches waiting to run, in
//! all (`batchmill_pending_batches`, what an autoscaler such as KEDA scales
//! workers on) and per unended job. The leader refreshes them each tick
//! ([`crate::state::State::tick`], 250 ms); a scheduler that does not lead
//! reports no jobs.

use std::sync::{Arc, LazyLock, Mutex, PoisonError};

use batchmill_core::job::JobState;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::jobs::Jobs;

/// Every state, with its label value.
const STATES: [(JobState, &str); 10] = [
    (JobState::Pending, "pending"),
    (JobState::Admitted, "admitted"),
    (JobState::Running, "running"),
    (JobState::Preempted, "preempted"),
    (JobState::Completing, "completing"),
    (JobState::Succeeded, "succeeded"),
    (JobState::CompletedWithFailures, "completed_with_failures"),
    (JobState::Failed, "failed"),
    (JobState::TimedOut, "timed_out"),
    (JobState::Cancelled, "cancelled"),
];

/// The figures at the last tick.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Snapshot {
    /// Jobs in each state of [`STATES`], in its order.
    pub jobs: [u64; STATES.len()],
    pub batches_succeeded: u64,
    pub batches_failed: u64,
    /// Deliveries that failed and were retried.
    pub failed_attempts: u64,
    pub items_completed: u64,
    pub items_failed: u64,
    /// Each unended job's id, pipeline and batches enqueued and not final.
    pub pending: Vec<(String, String, u64)>,
}

impl Snapshot {
    /// The figures of `jobs`.
    pub(crate) fn of(jobs: &Jobs) -> Snapshot {
        let mut s = Snapshot::default();
        for (id, entry) in jobs.iter() {
            let (record, ledger) = (&entry.record, &entry.ledger);
            if let Some(i) = STATES.iter().position(|(state, _)| *state == record.state) {
                s.jobs[i] += 1;
            }
            s.batches_succeeded += ledger.succeeded();
            s.batches_failed += ledger.failed();
            s.failed_attempts += ledger.failed_attempts();
            s.items_completed += ledger.items_completed();
            s.items_failed += ledger.items_failed();
            if !record.state.is_terminal() {
                let enqueued = entry.enqueue.next_seq.max(ledger.finished());
                s.pending.push((id.to_string(), record.pipeline.clone(), enqueued - ledger.finished()));
            }
        }
        s
    }
}

/// The collector the registry reads the last snapshot from.
#[derive(Debug, Default)]
pub struct Metrics {
    now: Mutex<Snapshot>,
}

/// The process's scheduler metrics, registered on first use.
pub static METRICS: LazyLock<Arc<Metrics>> = LazyLock::new(|| {
    let metrics = Arc::new(Metrics::default());
    batchmill_runtime::metrics::register(|r| r.register_collector(Box::new(metrics.clone())));
    metrics
});

impl Metrics {
    pub fn set(&self, snapshot: Snapshot) {
        *self.now.lock().unwrap_or_else(PoisonError::into_inner) = snapshot;
    }

    pub fn get(&self) -> Snapshot {
        self.now.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

impl Collector for Metrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = self.get();
        let gauge = ConstGauge::new(0i64);
        let mut family = encoder.encode_descriptor("jobs", "Jobs by state.", None, gauge.metric_type())?;
        for ((_, name), n) in STATES.iter().zip(s.jobs) {
            ConstGauge::new(n as i64).encode(family.encode_family(&[("state", *name)])?)?;
        }
        let counter = ConstCounter::new(0u64);
        let mut family =
            encoder.encode_descriptor("batches", "Batches final, by outcome.", None, counter.metric_type())?;
        for (outcome, n) in [("succeeded", s.batches_succeeded), ("failed", s.batches_failed)] {
            ConstCounter::new(n).encode(family.encode_family(&[("outcome", outcome)])?)?;
        }
        let mut family = encoder.encode_descriptor("items", "Items final, by outcome.", None, counter.metric_type())?;
        for (outcome, n) in [("completed", s.items_completed), ("failed", s.items_failed)] {
            ConstCounter::new(n).encode(family.encode_family(&[("outcome", outcome)])?)?;
        }
        let failed = encoder.encode_descriptor(
            "batch_failed_attempts",
            "Deliveries of a batch that failed and were retried.",
            None,
            counter.metric_type(),
        )?;
        ConstCounter::new(s.failed_attempts).encode(failed)?;
        let total: u64 = s.pending.iter().map(|(_, _, n)| n).sum();
        let pending = encoder.encode_descriptor(
            "pending_batches",
            "Batches enqueued and not yet final, over every unended job: the figure to scale workers on.",
            None,
            gauge.metric_type(),
        )?;
        ConstGauge::new(total as i64).encode(pending)?;
        let mut family = encoder.encode_descriptor(
            "job_pending_batches",
            "Batches enqueued and not yet final, per unended job.",
            None,
            gauge.metric_type(),
        )?;
        for (job, pipeline, n) in &s.pending {
            let labels = [("job_id", job.as_str()), ("pipeline", pipeline.as_str())];
            ConstGauge::new(*n as i64).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}
