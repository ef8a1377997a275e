//! How batches end, as the ledger counts them: outcomes workers report, and
//! batches whose deliveries ran out with no outcome. Each is confirmed only
//! once its job's ledger is durable (see `persist.rs`).

use batchmill_core::{JobId, WorkerId};
use batchmill_proto::scheduler::v1 as spb;
use tokio::sync::oneshot;
use tracing::{info, warn};

use crate::events::event;
use crate::ledger::Recorded;
use crate::persist::Waiter;
use crate::state::State;
use batchmill_core::BatchId;
use batchmill_proto::jobs::v1::{self as pb, EventLevel};

impl State {
    /// A worker reports one delivery of a batch; it is confirmed on the
    /// worker's session once durable. A duplicate (a batch delivered twice)
    /// is counted once and confirmed too.
    pub fn outcome(&mut self, worker: &WorkerId, outcome: spb::BatchOutcome) {
        let session = self.workers.get(worker).map_or(0, |w| w.session);
        let ack = spb::OutcomeAck { job_id: outcome.job_id.clone(), seq: outcome.seq };
        let waiter = Waiter::Worker { worker: worker.clone(), session, ack };
        let id = JobId::parse("job_id", &outcome.job_id).ok();
        // An unknown or ended job has nothing to count; the worker just drops the message.
        if let Some(id) = &id
            && let Some(entry) = self.jobs.get_mut(id)
            && !entry.record.state.is_terminal()
        {
            // A worker that reports a batch has its predictor running (its
            // started message may have gone to a previous leader).
            entry.start(worker);
            entry.running(self.clock.now_ms());
            let duration = outcome.duration.as_ref().map_or(0, batchmill_core::time::duration_to_ms);
            let status = outcome.status();
            let items = outcome.items.max(0) as u64;
            let recorded = if status == spb::BatchStatus::FailedFinal && outcome.items_failed > 0 {
                entry.ledger.record_isolated(outcome.seq, items, outcome.items_failed as u64, duration)
            } else {
                entry.ledger.record(outcome.seq, status, items, duration)
            };
            let counted = recorded == Recorded::Counted;
            if !counted {
                info!(job_id = %id, seq = outcome.seq, "duplicate outcome ignored");
            }
            let (first, last) = (outcome.group_first, outcome.group_last);
            if counted
                && status == spb::BatchStatus::Succeeded
                && last > first
                && !entry.ledger.grouped(outcome.seq, first, last)
            {
                warn!(job_id = %id, seq = outcome.seq, first, last, "an outcome names a group no batch can be in");
            }
            if status == spb::BatchStatus::FailedFinal {
                warn!(job_id = %id, seq = outcome.seq, error = %outcome.error, "batch failed for good");
            }
            self.pending.mark(id);
            if counted && status != spb::BatchStatus::Succeeded {
                self.event(id, failure_event(id, worker, &outcome));
            }
        }
        self.pending.wait(id, waiter);
    }

    /// A batch ran out of deliveries with no outcome (its worker was lost on
    /// the last one): it fails for good. `reply` is released once that is
    /// durable.
    pub fn exhausted(&mut self, job_id: &str, seq: u64, items: u64, deliveries: u64, reply: oneshot::Sender<()>) {
        let id = JobId::parse("job_id", job_id).ok();
        if let Some(id) = &id
            && let Some(entry) = self.jobs.get_mut(id)
            && !entry.record.state.is_terminal()
        {
            let counted = entry.ledger.record(seq, spb::BatchStatus::FailedFinal, items, 0) == Recorded::Counted;
            self.pending.mark(id);
            if counted {
                warn!(job_id = %id, seq, deliveries, "batch ran out of deliveries without an outcome; failed for good");
                let message = format!(
                    "ran out of its {deliveries} deliveries without an outcome (its worker was lost on the last); dead-lettered"
                );
                let event = pb::JobEvent {
                    batch_id: BatchId::new(id.clone(), seq).to_string(),
                    attempt: deliveries as i64,
                    items: items as i64,
                    ..event(EventLevel::Error, "batch_dead_lettered", message)
                };
                self.event(id, event);
            }
        }
        self.pending.wait(id, Waiter::Reply(reply));
    }
}

/// The event of a failed delivery: retried (WARN), or failed for good and
/// dead-lettered (ERROR).
fn failure_event(id: &JobId, worker: &WorkerId, outcome: &spb::BatchOutcome) -> pb::JobEvent {
    let (level, kind, what) = if outcome.status() == spb::BatchStatus::FailedFinal && outcome.items_failed > 0 {
        (EventLevel::Error, "items_dead_lettered", "failed for good; its failing items were isolated and dead-lettered")
    } else if outcome.status() == spb::BatchStatus::FailedFinal {
        (EventLevel::Error, "batch_dead_lettered", "failed for good and was dead-lettered")
    } else {
        (EventLevel::Warn, "batch_failed", "failed and will be delivered again")
    };
    let message = format!("delivery {} {what}: {}", outcome.attempt, outcome.error);
    pb::JobEvent {
        batch_id: BatchId::new(id.clone(), outcome.seq).to_string(),
        worker_id: worker.to_string(),
        attempt: outcome.attempt as i64,
        first_item: outcome.first_item as i64,
        items: outcome.items,
        inputs: outcome.inputs.clone(),
        ..event(level, kind, message)
    }
}
