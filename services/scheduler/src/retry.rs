//! Retries: RetryJob continues an ended job from its ledger, under the
//! same id, in its next round (the enqueuer skips the batches the ledger
//! holds as final); RetryFailedItems makes a child job over only the items
//! of the batches that failed for good, read from their dead letters, and
//! links parent and child.

use batchmill_accounts::Limits;
use batchmill_core::enqueue::EnqueueProgress;
use batchmill_core::{JobId, JobState};
use batchmill_proto::jobs::v1 as pb;
use tracing::info;

use crate::SchedulerError as E;
use crate::record::JobRecord;
use crate::state::State;

/// Whether a job in `state` has ended in a way a retry continues.
fn retryable(state: JobState) -> bool {
    matches!(state, JobState::Failed | JobState::Cancelled | JobState::TimedOut)
}

impl State {
    /// Continues a FAILED, CANCELLED or TIMED_OUT job from its ledger, in
    /// its next round: it is PENDING again with its counts as they are, and
    /// admission enqueues only the batches its ledger does not hold as
    /// final. Refused, naming the limit, if its account is at its limits.
    pub async fn retry(&mut self, id: &JobId, limits: Limits) -> Result<pb::Job, E> {
        let entry = self.jobs.get(id).ok_or_else(|| E::JobNotFound { job_id: id.to_string() })?;
        let state = entry.record.state;
        if !retryable(state) {
            let state = pb::JobState::from(state).as_str_name().to_owned();
            return Err(E::NotRetryable { job_id: id.to_string(), state });
        }
        self.jobs.within(&entry.record, limits)?;
        // Its enqueuing of the last round is over (stopped, failed or done):
        // make sure, so that nothing of it is published after the new round starts.
        self.stop_enqueue(id).await;
        let now = self.clock.now_ms();
        let Some(entry) = self.jobs.get_mut(id) else {
            return Err(E::JobNotFound { job_id: id.to_string() });
        };
        let before = entry.record.clone();
        entry.enter(JobState::Pending);
        let record = &mut entry.record;
        record.retries += 1;
        record.retry_ms = Some(now);
        (record.end_ms, record.failure_reason, record.message) = (None, None, None);
        record.manifest_written = true; // nothing to write until it ends again
        entry.enqueue = EnqueueProgress { round: record.retries, ..EnqueueProgress::default() };
        (entry.admitted, entry.start_failures) = (false, 0);
        self.pending.mark(id);
        self.flush().await;
        if self.pending.forget(id) {
            // Not durable: the job stays as it was.
            if let Some(entry) = self.jobs.get_mut(id) {
                entry.record = before;
                entry.unsaid.clear();
            }
            return Err(E::NotPersisted { job_id: id.to_string() });
        }
        info!(job_id = %id, retries = before.retries + 1, from = ?state, "job retried");
        let kept = self.jobs.get(id).map_or(0, |e| e.ledger.finished());
        let message = format!(
            "retry {} of a {} job: its {kept} final batches are kept, the rest run again",
            before.retries + 1,
            pb::JobState::from(state).as_str_name()
        );
        self.event(id, crate::events::event(pb::EventLevel::Info, "job_retried", message));
        let retried = self.get(id).unwrap_or_default();
        self.admission().await;
        Ok(retried)
    }

    /// The items of the job's batches that failed for good, in batch
    /// order, from their dead letters; with the job's record, from which a
    /// child job is made. Refused unless the job has ended with such
    /// batches and each still has its dead letter.
    pub async fn failed_items(&self, id: &JobId) -> Result<(JobRecord, Vec<String>), E> {
        let entry = self.jobs.get(id).ok_or_else(|| E::JobNotFound { job_id: id.to_string() })?;
        let state = entry.record.state;
        let ended = state.is_terminal();
        if !ended || entry.ledger.failed() == 0 {
            let state = pb::JobState::from(state).as_str_name().to_owned();
            let why = if ended { "it has no failed items" } else { "it has not ended" };
            return Err(E::NoFailedItems { job_id: id.to_string(), state, why });
        }
        let record = entry.record.clone();
        let failed: Vec<u64> = entry.ledger.failed_seqs().collect();
        let mut letters = self.failed_letters(id, 0).await?;
        let mut items = Vec::new();
        let mut missing = Vec::new();
        for seq in failed {
            match letters.remove(&seq).and_then(|mut versions| versions.pop()) {
                Some((_, dead)) if dead.batch.is_some() => items.extend(failed_of(dead)),
                _ => missing.push(batchmill_core::BatchId::new(id.clone(), seq).to_string()),
            }
        }
        if !missing.is_empty() {
            return Err(E::NoFailedItems {
                job_id: id.to_string(),
                state: pb::JobState::from(state).as_str_name().to_owned(),
                why: "the dead letters of some failed batches are gone (kept 30 days): their items cannot be read",
            });
        }
        Ok((record, items))
    }

    /// Links child job `child` (accepted already) to its parent, and
    /// rewrites the parent's manifest to list it.
    pub fn adopt(&mut self, parent: &JobId, child: &JobId) {
        let Some(entry) = self.jobs.get_mut(parent) else { return };
        entry.record.children.push(child.clone());
        entry.record.manifest_written = false;
        self.pending.mark(parent);
        let message = format!("job {child} runs its failed items again");
        let event = pb::JobEvent { ..crate::events::event(pb::EventLevel::Info, "failed_items_retried", message) };
        self.event(parent, event);
        self.write_manifest(parent);
    }
}

/// The items of a dead letter that failed: those isolated, where they were,
/// else all of its batch's.
fn failed_of(dead: batchmill_proto::queue::v1::DeadLetter) -> Vec<String> {
    let Some(batch) = dead.batch else { return Vec::new() };
    if dead.failed_items.is_empty() {
        return batch.items;
    }
    let first = batch.first_item;
    let failed: std::collections::BTreeSet<u64> = dead.failed_items.iter().map(|f| f.index).collect();
    let indexed = batch.items.into_iter().enumerate().map(|(i, item)| (first + i as u64, item));
    indexed.filter(|(index, _)| failed.contains(index)).map(|(_, item)| item).collect()
}
