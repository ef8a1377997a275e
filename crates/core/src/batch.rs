//! The batch contract: where a batch's result object goes, how small
//! batches travel in groups, and how a batch's ending is recorded. Workers
//! and the scheduler both end batches (the scheduler when a batch's
//! deliveries ran out with its worker lost), and build the same three
//! messages through [`BatchEnd`].
//!
//! A group is one message holding consecutive batches of a job: they run
//! one after another on one worker, their results go into one object
//! (`<job_id>-<first>-<last>.jsonl`), and they settle together, so the trip
//! through the queue and the object store is paid once for all of them. A
//! group settles only once every batch in it is final (succeeded, or failed
//! for good): until then nothing of it is reported and the whole group runs
//! again, so a result object is only ever rewritten whole, with the same
//! batches, and a redelivery never duplicates a result.

use batchmill_proto::jobs::v1::{BatchRecord, BatchState};
use batchmill_proto::queue::v1::{Batch, BatchRecords, DeadLetter, FailedItem};
use batchmill_proto::scheduler::v1::{BatchOutcome, BatchStatus};
use prost::Message;

use crate::time::{duration_ms, timestamp};
use crate::{BatchId, JobId, S3Uri};

/// Most lanes a predictor may ask for: each holds a batch while it runs.
pub const MAX_LANES: usize = 4;

/// Where a job's objects go: `<output_uri>/<job_id>`.
pub fn job_output(output_uri: &S3Uri, job: &JobId) -> S3Uri {
    output_uri.join(job.as_str())
}

/// A batch's result object: `<output_uri>/<job_id>/<batch_id>.jsonl`. A
/// batch delivered twice overwrites its own object.
pub fn result_uri(output_uri: &S3Uri, batch: &BatchId) -> S3Uri {
    job_output(output_uri, &batch.job_id).join(&format!("{batch}.jsonl"))
}

/// The result object of the batches `first..=last` of `job` that ran as
/// one group: `<output_uri>/<job_id>/<job_id>-<first>-<last>.jsonl`.
pub fn group_uri(output_uri: &S3Uri, job: &JobId, first: u64, last: u64) -> S3Uri {
    job_output(output_uri, job).join(&format!("{job}-{first}-{last}.jsonl"))
}

/// The batches a message carries: its group, or itself.
pub fn unpack(message: Batch) -> Vec<Batch> {
    if message.group.is_empty() { vec![message] } else { message.group }
}

/// Items a group holds at most (fewer where the job is small; see
/// [`batches_per_group`]).
pub const GROUP_ITEMS: u64 = 1_000;
/// Batches a group holds at most.
pub const GROUP_BATCHES: u64 = 64;
/// Groups each worker should have to take, at least, where a job's size is
/// known: grouping must not leave workers idle.
const GROUPS_PER_WORKER: u64 = 8;

/// How many batches of `batch_size` items travel per message: enough to
/// hold about [`GROUP_ITEMS`] items (at most [`GROUP_BATCHES`] batches),
/// but, for a job of `items` items (when known) on up to `workers`
/// workers, few enough that each worker has [`GROUPS_PER_WORKER`] groups to
/// take. 1 for batches that fill a group alone.
pub fn batches_per_group(batch_size: u32, items: Option<u64>, workers: u32) -> u32 {
    let batch = u64::from(batch_size.max(1));
    let mut group = (GROUP_ITEMS / batch).min(GROUP_BATCHES);
    if let Some(items) = items {
        let batches = items.div_ceil(batch);
        group = group.min(batches / (u64::from(workers.max(1)) * GROUPS_PER_WORKER));
    }
    group.max(1) as u32
}

/// A job's manifest, written at its end: `<output_uri>/<job_id>/manifest.json`.
pub fn manifest_uri(output_uri: &S3Uri, job: &JobId) -> S3Uri {
    job_output(output_uri, job).join("manifest.json")
}

/// How one delivery of a batch ended, as whoever ran it (or lost it) saw it.
#[derive(Debug, Clone)]
pub struct BatchEnd<'a> {
    pub id: &'a BatchId,
    pub batch: &'a Batch,
    pub status: BatchStatus,
    /// Which delivery, from 1.
    pub attempt: u64,
    /// The worker that ran it; empty when it was lost.
    pub worker_id: &'a str,
    pub duration_ms: u64,
    /// Why it failed; empty when it succeeded.
    pub error: String,
    /// When it ended, in Unix milliseconds.
    pub end_ms: u64,
    /// The first and last batch of the group it ran in, if it did.
    pub group: Option<(u64, u64)>,
    /// Of a batch that failed for good once its failing items were isolated
    /// (bisection), those items: (index in the job, error). The others
    /// succeeded. Empty when the whole batch failed, or it succeeded.
    pub failed_items: Vec<(u64, String)>,
}

/// What a batch's ending makes durable: the dead letter of a batch that
/// failed for good, the record of a final batch, then the outcome the ledger
/// counts.
#[derive(Debug, Clone, PartialEq)]
pub struct Ending {
    pub outcome: BatchOutcome,
    pub dead_letter: Option<DeadLetter>,
    pub record: Option<BatchRecord>,
}

impl BatchEnd<'_> {
    /// The messages this ending makes durable.
    pub fn build(self) -> Ending {
        let BatchEnd { id, batch, status, attempt, worker_id, duration_ms: ms, error, end_ms, group, failed_items } =
            self;
        let items = batch.items.len() as i64;
        let items_failed = failed_items.len() as i64;
        let dead_letter = (status == BatchStatus::FailedFinal).then(|| DeadLetter {
            attempts: attempt,
            last_error: error.clone(),
            worker_id: worker_id.to_owned(),
            time_ms: end_ms,
            duration_ms: ms,
            batch: Some(batch.clone()),
            failed_items: failed_items.into_iter().map(|(index, error)| FailedItem { index, error }).collect(),
        });
        let state = match status {
            BatchStatus::Succeeded => Some(BatchState::Succeeded),
            BatchStatus::FailedFinal => Some(BatchState::Failed),
            BatchStatus::FailedRetryable | BatchStatus::Unspecified => None,
        };
        let record = state.map(|state| BatchRecord {
            batch_id: id.to_string(),
            seq: batch.seq as i64,
            state: state as i32,
            items,
            attempts: attempt as i64,
            worker_id: worker_id.to_owned(),
            duration: Some(duration_ms(ms)),
            last_error: error.clone(),
            end_time: Some(timestamp(end_ms)),
            items_failed,
        });
        // A failure names the batch's named inputs, for the job's event log.
        let inputs = if status == BatchStatus::Succeeded { Vec::new() } else { input_names(batch) };
        let outcome = BatchOutcome {
            job_id: batch.job_id.clone(),
            seq: batch.seq,
            status: status as i32,
            items,
            error,
            duration: Some(duration_ms(ms)),
            attempt,
            first_item: batch.first_item,
            inputs,
            group_first: group.map_or(0, |g| g.0),
            group_last: group.map_or(0, |g| g.1),
            items_failed,
        };
        Ending { outcome, dead_letter, record }
    }
}

/// The body of one message on a job's record subject: `records`, stored
/// together (see `queue.v1.BatchRecords`).
pub fn records_message(records: Vec<BatchRecord>) -> Vec<u8> {
    BatchRecords { records }.encode_to_vec()
}

/// The records one message on a job's record subject holds: several
/// (`queue.v1.BatchRecords`), or one (a `jobs.v1.BatchRecord`, as stored
/// before records were grouped); none if it is neither.
pub fn read_records(payload: &[u8]) -> Vec<BatchRecord> {
    match BatchRecords::decode(payload) {
        Ok(many) if !many.records.is_empty() => many.records,
        _ => BatchRecord::decode(payload).ok().filter(|r| !r.batch_id.is_empty()).into_iter().collect(),
    }
}

/// The names of a batch's named inputs, in order (none for plain items).
fn input_names(batch: &Batch) -> Vec<String> {
    batch
        .items
        .iter()
        .filter_map(|item| {
            let value: serde_json::Value = serde_json::from_str(item).ok()?;
            crate::named::name_of(&value).map(str::to_owned)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch() -> Batch {
        Batch { job_id: "j1".into(), seq: 4, first_item: 40, items: vec!["1".into(), "2".into()], group: vec![] }
    }

    fn end(batch: &Batch, status: BatchStatus) -> Ending {
        let error = if status == BatchStatus::Succeeded { String::new() } else { "boom".into() };
        let id = &BatchId::of(batch).expect("id");
        BatchEnd {
            id,
            batch,
            status,
            attempt: 3,
            worker_id: "w1",
            duration_ms: 1500,
            error,
            end_ms: 2_000,
            group: None,
            failed_items: Vec::new(),
        }
        .build()
    }

    #[test]
    fn result_objects_are_per_batch_under_the_job() {
        let output = S3Uri::parse("s3://results/runs/").expect("uri");
        let batch = BatchId::new(JobId::parse("job_id", "j1").expect("id"), 4);
        assert_eq!(result_uri(&output, &batch).to_string(), "s3://results/runs/j1/j1-4.jsonl");
        assert_eq!(manifest_uri(&output, &batch.job_id).to_string(), "s3://results/runs/j1/manifest.json");
        let group = group_uri(&output, &batch.job_id, 40, 47).to_string();
        assert_eq!(group, "s3://results/runs/j1/j1-40-47.jsonl");
    }

    #[test]
    fn small_batches_are_grouped_up_to_a_thousand_items_leaving_every_worker_work() {
        // No size known: about a thousand items, at most 64 batches.
        assert_eq!([1, 10, 100, 400, 1000, 5000].map(|b| batches_per_group(b, None, 2)), [64, 64, 10, 2, 1, 1]);
        // 200,000 items on 2 workers leave plenty of groups each.
        assert_eq!(batches_per_group(10, Some(200_000), 2), 64);
        // 1,000 items in batches of 32 on 2 workers: 32 batches, 16 groups
        // wanted, so 2 batches per group; a tiny job is not grouped.
        assert_eq!(batches_per_group(32, Some(1_000), 2), 2);
        assert_eq!(batches_per_group(10, Some(30), 4), 1);
        assert_eq!(batches_per_group(0, Some(0), 0), 1, "degenerate sizes still give one batch per message");
    }

    #[test]
    fn a_message_unpacks_into_its_batches() {
        let alone = batch();
        assert_eq!(unpack(alone.clone()), vec![alone.clone()]);
        let second = Batch { seq: 5, first_item: 42, ..batch() };
        let group = Batch { items: vec![], group: vec![alone.clone(), second.clone()], ..batch() };
        assert_eq!(unpack(group), vec![alone, second]);
    }

    #[test]
    fn an_ending_in_a_group_names_the_group() {
        let batch = batch();
        let id = &BatchId::of(&batch).expect("id");
        let grouped = BatchEnd {
            id,
            batch: &batch,
            status: BatchStatus::Succeeded,
            attempt: 1,
            worker_id: "w1",
            duration_ms: 3,
            error: String::new(),
            end_ms: 9,
            group: Some((4, 9)),
            failed_items: Vec::new(),
        }
        .build();
        assert_eq!((grouped.outcome.group_first, grouped.outcome.group_last), (4, 9));
        assert_eq!(end(&batch, BatchStatus::Succeeded).outcome.group_last, 0);
    }

    #[test]
    fn a_record_message_reads_back_whether_it_holds_many_or_is_one_old_record() {
        let record = |seq: i64| BatchRecord { batch_id: format!("j1-{seq}"), seq, items: 3, ..Default::default() };
        let many = records_message(vec![record(4), record(5)]);
        assert_eq!(read_records(&many), [record(4), record(5)]);
        let old = record(7).encode_to_vec();
        assert_eq!(read_records(&old), [record(7)]);
        assert!(read_records(b"\xff\x00").is_empty());
        assert!(read_records(&records_message(Vec::new())).is_empty());
    }

    #[test]
    fn an_ending_records_what_its_status_needs() {
        let batch = batch();
        let ok = end(&batch, BatchStatus::Succeeded);
        assert_eq!((ok.outcome.seq, ok.outcome.items, ok.outcome.attempt), (4, 2, 3));
        assert!(ok.dead_letter.is_none());
        let record = ok.record.expect("a final batch has a record");
        assert_eq!((record.batch_id.as_str(), record.state), ("j1-4", BatchState::Succeeded as i32));

        let retry = end(&batch, BatchStatus::FailedRetryable);
        assert!(retry.dead_letter.is_none() && retry.record.is_none(), "it runs again");
        assert_eq!(retry.outcome.error, "boom");

        let dead = end(&batch, BatchStatus::FailedFinal);
        let letter = dead.dead_letter.expect("dead letter");
        assert_eq!((letter.attempts, letter.last_error.as_str(), letter.worker_id.as_str()), (3, "boom", "w1"));
        assert_eq!(letter.batch, Some(batch.clone()));
        assert_eq!(dead.record.expect("record").state, BatchState::Failed as i32);
    }

    #[test]
    fn a_failure_names_the_batchs_named_inputs() {
        let named = |name: &str| format!(r#"{{"name":"{name}","inputs":{{"input.txt":"hi"}}}}"#);
        let batch = Batch { items: vec![named("alpha"), named("beta")], ..batch() };
        let failed = end(&batch, BatchStatus::FailedRetryable).outcome;
        assert_eq!((failed.inputs, failed.first_item), (vec!["alpha".to_owned(), "beta".to_owned()], 40));
        assert!(end(&batch, BatchStatus::Succeeded).outcome.inputs.is_empty(), "a success stays small");
        assert!(end(&self::batch(), BatchStatus::FailedFinal).outcome.inputs.is_empty(), "plain items have no names");
    }
}
