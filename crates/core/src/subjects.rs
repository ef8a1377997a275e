//! Every JetStream name batchmill uses: streams, subjects, consumers and
//! message ids. The queue adapter, the scheduler, the workers and the
//! compatibility routes all take them from here.
//!
//! - `BATCHMILL_BATCHES` (work queue): batches on `batchmill.batches.<job_id>`,
//!   each published with `Nats-Msg-Id = <batch_id>`, pulled through the
//!   job's durable consumer `job-<job_id>`.
//! - `BATCHMILL_DEAD` (limits): dead-lettered batches on `batchmill.dead.<job_id>`.
//! - `BATCHMILL_EXHAUSTED` (work queue): JetStream's MAX_DELIVERIES advisories
//!   for the batch stream, kept until the scheduler handles them.
//! - `BATCHMILL_RECORDS` (limits, 30 days): how each final batch ended, on
//!   `batchmill.records.<job_id>`.
//! - `BATCHMILL_LOGS` (limits, 7 days): job log lines on `batchmill.logs.<job_id>`.

use crate::BatchId;

/// The stream of batches.
pub const BATCH_STREAM: &str = "BATCHMILL_BATCHES";
/// The stream of dead-lettered batches.
pub const DEAD_STREAM: &str = "BATCHMILL_DEAD";
/// The stream that keeps the batch stream's max-deliveries advisories.
pub const EXHAUSTED_STREAM: &str = "BATCHMILL_EXHAUSTED";
/// The stream of batch records.
pub const RECORD_STREAM: &str = "BATCHMILL_RECORDS";
/// The stream of job log lines.
pub const LOG_STREAM: &str = "BATCHMILL_LOGS";
/// The stream of jobs' event logs.
pub const EVENT_STREAM: &str = "BATCHMILL_EVENTS";
/// The durable consumer of the advisory stream.
pub const EXHAUSTED_CONSUMER: &str = "scheduler";

/// A job's batches; `*` for every job's.
pub fn batch_subject(job_id: &str) -> String {
    format!("batchmill.batches.{job_id}")
}

/// A job's dead-lettered batches; `*` for every job's.
pub fn dead_subject(job_id: &str) -> String {
    format!("batchmill.dead.{job_id}")
}

/// A job's batch records; `*` for every job's.
pub fn record_subject(job_id: &str) -> String {
    format!("batchmill.records.{job_id}")
}

/// A job's log lines; `*` for every job's.
pub fn log_subject(job_id: &str) -> String {
    format!("batchmill.logs.{job_id}")
}

/// A job's events; `*` for every job's.
pub fn event_subject(job_id: &str) -> String {
    format!("batchmill.events.{job_id}")
}

/// The batch stream's MAX_DELIVERIES advisories.
pub fn max_deliveries_subject() -> String {
    format!("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{BATCH_STREAM}.*")
}

/// The durable consumer of a job's batches, shared by its workers.
pub fn consumer_name(job_id: &str) -> String {
    format!("job-{job_id}")
}

/// The message id of a batch's publication in its job's `round` (0 when
/// first run, n after its nth retry): its batch id, and the round after it
/// once retried, so a batch republished in the same round (a restarted
/// enqueuer) is dropped as a duplicate while a retry's is not.
pub fn batch_msg_id(batch: &BatchId, round: u32) -> String {
    if round == 0 { batch.to_string() } else { format!("{batch}-round{round}") }
}

/// The message id of a dead-lettered batch queued again; `rerun` (the dead
/// letter's stream sequence) tells it apart from earlier publications.
pub fn rerun_msg_id(batch: &BatchId, rerun: u64) -> String {
    format!("{batch}-r{rerun}")
}

/// The message id of the dead letter of the batch stored at
/// `batch_stream_seq`: whoever stores it (the worker, or the scheduler from
/// an advisory), it is stored once within the duplicate window.
pub fn dead_letter_msg_id(batch: &BatchId, batch_stream_seq: u64) -> String {
    format!("{batch}-dead-{batch_stream_seq}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::JobId;

    #[test]
    fn names_are_per_job() {
        let batch = BatchId::new(JobId::parse("job_id", "j1").expect("id"), 3);
        assert_eq!(batch_subject("j1"), "batchmill.batches.j1");
        assert_eq!(batch_msg_id(&batch, 0), "j1-3");
        assert_eq!(batch_msg_id(&batch, 2), "j1-3-round2");
        assert_eq!(rerun_msg_id(&batch, 9), "j1-3-r9");
        assert_eq!(dead_letter_msg_id(&batch, 12), "j1-3-dead-12");
        assert_eq!(consumer_name("j1"), "job-j1");
    }
}
