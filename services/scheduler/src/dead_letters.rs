//! Dead letters and re-runs. A batch that failed for good is in the
//! dead-letter stream (stored by its worker, or by the scheduler from a
//! max-deliveries advisory); the ledger says which batches count as failed,
//! so each is listed once, at its latest dead letter. A re-run queues
//! such batches again and the job runs again.

use std::collections::BTreeMap;

use batchmill_core::time::duration_ms;
use batchmill_core::{BatchId, JobId, JobState};
use batchmill_proto::jobs::v1 as pb;
use batchmill_proto::queue::v1 as qpb;
use prost::Message;
use tracing::{info, warn};

use crate::SchedulerError as E;
use crate::state::State;

/// A job's dead letters of the batches its ledger counts as failed, by
/// batch sequence: each batch's letters as (stream sequence, letter),
/// oldest first.
type Letters = BTreeMap<u64, Vec<(u64, qpb::DeadLetter)>>;

impl State {
    /// A page of the job's dead letters from dead-letter stream sequence
    /// `from` on: the batches its ledger counts as failed, each once (its
    /// latest dead letter), and where the next page starts if any.
    pub async fn dead_letters(
        &self,
        id: &JobId,
        from: u64,
        limit: usize,
    ) -> Result<(Vec<pb::DeadLetter>, Option<u64>), E> {
        let letters = self.failed_letters(id, from).await?;
        let mut by_position: Vec<(u64, qpb::DeadLetter)> =
            letters.into_values().filter_map(|mut versions| versions.pop()).collect();
        // Keep the first `limit` by stream position; the next page starts after them.
        by_position.sort_by_key(|(stream_seq, _)| *stream_seq);
        let more = by_position.len() > limit;
        by_position.truncate(limit);
        let next = if more { by_position.last().map(|(s, _)| s + 1) } else { None };
        Ok((by_position.into_iter().map(|(_, d)| public_dead_letter(id, d)).collect(), next))
    }

    /// The job's dead letters from dead-letter stream sequence `from` on,
    /// of the batches its ledger counts as failed.
    pub(crate) async fn failed_letters(&self, id: &JobId, from: u64) -> Result<Letters, E> {
        let entry = self.jobs.get(id).ok_or_else(|| E::JobNotFound { job_id: id.to_string() })?;
        let mut letters = Letters::new();
        let mut next = from;
        loop {
            let page = self.ports.queue.dead_letters(id.as_str(), next, 1000).await.map_err(E::Queue)?;
            let Some(last) = page.last() else { break };
            next = last.stream_seq + 1;
            for stored in page {
                let Ok(dead) = qpb::DeadLetter::decode(stored.payload.as_ref()) else {
                    warn!(job_id = %id, stream_seq = stored.stream_seq, "undecodable dead letter");
                    continue;
                };
                if let Some(seq) = dead.batch.as_ref().map(|b| b.seq)
                    && entry.ledger.is_failed(seq)
                {
                    letters.entry(seq).or_default().push((stored.stream_seq, dead));
                }
            }
        }
        Ok(letters)
    }

    /// Queues dead-lettered batches of a job again (all of them when
    /// `batch_ids` is empty). A job that had completed with failures runs
    /// again; the batches get fresh deliveries.
    pub async fn rerun(&mut self, id: &JobId, batch_ids: &[String]) -> Result<(pb::Job, Vec<BatchId>), E> {
        let entry = self.jobs.get(id).ok_or_else(|| E::JobNotFound { job_id: id.to_string() })?;
        let state = entry.record.state;
        if !matches!(state, JobState::Admitted | JobState::Running | JobState::CompletedWithFailures) {
            return Err(E::NotRerunnable { job_id: id.to_string(), state: format!("{state:?}") });
        }
        let mut letters = self.failed_letters(id, 0).await?;
        let wanted = wanted(id, batch_ids, &letters)?;
        if wanted.is_empty() {
            return Ok((self.get(id).unwrap_or_default(), Vec::new()));
        }
        if state == JobState::CompletedWithFailures {
            // Its queue was closed at the end; reopen it and run again.
            self.ports.queue.open_job(id.as_str(), entry.policy(&self.settings.policy)).await.map_err(E::Queue)?;
            if let Some(entry) = self.jobs.get_mut(id) {
                entry.enter(JobState::Running);
                entry.record.end_ms = None;
                entry.admitted = true;
            }
        }
        let mut queued = Vec::new();
        for seq in wanted {
            let Some(versions) = letters.remove(&seq) else { continue };
            if !self.requeue(id, seq, &versions).await {
                break;
            }
            queued.push(BatchId::new(id.clone(), seq));
        }
        info!(job_id = %id, batches = queued.len(), "dead letters re-run");
        self.pending.mark(id);
        self.flush().await;
        self.assign();
        if queued.is_empty() {
            return Err(E::Rerun { job_id: id.to_string() });
        }
        Ok((self.get(id).unwrap_or_default(), queued))
    }

    /// Queues batch `seq` again from the latest of its dead letters, then
    /// removes them all; false if it could not be queued.
    async fn requeue(&mut self, id: &JobId, seq: u64, versions: &[(u64, qpb::DeadLetter)]) -> bool {
        let Some((stream_seq, latest)) = versions.last() else { return true };
        let Some(batch) = &latest.batch else { return true };
        let items = batch.items.len() as u64;
        let failed = if latest.failed_items.is_empty() { items } else { latest.failed_items.len() as u64 };
        // The actor handles nothing else meanwhile, so no outcome of the
        // queued batch can arrive before the ledger expects it.
        let batch_id = BatchId::new(id.clone(), seq);
        if let Err(e) = self.ports.queue.requeue_batch(&batch_id, *stream_seq, batch.encode_to_vec().into()).await {
            warn!(batch_id = %batch_id, error = %e, "re-queuing a dead letter failed");
            return false;
        }
        if let Some(entry) = self.jobs.get_mut(id) {
            // All its items run again, those that succeeded too (their
            // object is rewritten whole).
            entry.ledger.revive(seq, items, failed);
        }
        let event = batchmill_proto::jobs::v1::JobEvent {
            batch_id: batch_id.to_string(),
            first_item: batch.first_item as i64,
            items: items as i64,
            ..crate::events::event(
                batchmill_proto::jobs::v1::EventLevel::Info,
                "batch_rerun",
                "dead letter queued again",
            )
        };
        self.event(id, event);
        for (stream_seq, _) in versions {
            if let Err(e) = self.ports.queue.remove_dead_letter(*stream_seq).await {
                warn!(batch_id = %batch_id, error = %e, "removing a re-run dead letter failed");
            }
        }
        true
    }
}

/// The sequence numbers `batch_ids` name (every dead-lettered batch when
/// empty), each checked to be a dead-lettered batch of job `id`.
fn wanted(id: &JobId, batch_ids: &[String], letters: &Letters) -> Result<Vec<u64>, E> {
    if batch_ids.is_empty() {
        return Ok(letters.keys().copied().collect());
    }
    batch_ids
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let field = format!("batch_ids[{i}]");
            BatchId::parse(&field, text)
                .ok()
                .filter(|b| &b.job_id == id && letters.contains_key(&b.seq))
                .map(|b| b.seq)
                .ok_or_else(|| E::NotDeadLettered { field, batch_id: text.clone() })
        })
        .collect()
}

/// A dead letter as the public API shows it.
fn public_dead_letter(id: &JobId, dead: qpb::DeadLetter) -> pb::DeadLetter {
    let batch = dead.batch.unwrap_or_default();
    pb::DeadLetter {
        batch_id: BatchId::new(id.clone(), batch.seq).to_string(),
        seq: batch.seq as i64,
        items: batch
            .items
            .iter()
            .map(|text| {
                let value = serde_json::from_str(text).unwrap_or_else(|_| serde_json::Value::String(text.clone()));
                batchmill_core::json::json_to_value(&value)
            })
            .collect(),
        attempts: dead.attempts as i64,
        last_error: dead.last_error,
        worker_id: dead.worker_id,
        dead_letter_time: Some(batchmill_core::time::timestamp(dead.time_ms)),
        duration: Some(duration_ms(dead.duration_ms)),
        first_item: batch.first_item as i64,
        failed_items: dead
            .failed_items
            .into_iter()
            .map(|f| pb::FailedItem { index: f.index as i64, error: f.error })
            .collect(),
    }
}
