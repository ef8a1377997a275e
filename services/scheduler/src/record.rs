//! A job as the scheduler persists it (`/batchmill/jobs/<job_id>`, JSON) and
//! its snapshot in the public contract.

use batchmill_core::access::{S3Access, Secrets, SqlSource};
use batchmill_core::enqueue::EnqueueProgress;
use batchmill_core::job::Folder;
use batchmill_core::sealed::{ClusterKey, SealError, Sealed};
use batchmill_core::time::{duration_ms, timestamp};
use batchmill_core::{FailureReason, JobId, JobState, Owner, S3Selection};
use batchmill_proto::jobs::v1 as pb;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::ledger::Ledger;

pub const JOBS_PREFIX: &str = "/batchmill/jobs/";
pub const LEDGERS_PREFIX: &str = "/batchmill/ledgers/";

pub fn job_key(id: &JobId) -> String {
    format!("{JOBS_PREFIX}{id}")
}

/// Prefix of a job's ledger keys (see [`crate::ledger`]).
pub fn ledger_prefix(id: &JobId) -> String {
    format!("{LEDGERS_PREFIX}{id}/")
}

/// Pending for longer than this counts a job's missing workers as stalled.
const STALLED_AFTER_MS: u64 = 10 * 60 * 1000;

/// Where a job's items are read from, as the lister reads them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Input {
    /// Lines of NDJSON objects (inline items, staged).
    Ndjson { uris: Vec<String> },
    /// The path of each selected object.
    FilePaths(S3Selection),
    /// Each line of each selected object.
    DelimitedFiles(S3Selection),
    /// Each object under each folder, as a named item.
    Folders { folders: Vec<Folder> },
    /// Each row of a query, as a named item.
    Sql(SqlSource),
}

impl Input {
    /// The lister's description of this input, with the job's `secrets`
    /// (its own S3 access, else the cluster's S3; its database password).
    pub fn to_source(&self, secrets: &Secrets) -> batchmill_proto::lister::v1::Source {
        use batchmill_proto::lister::v1::{self as lister, source::Kind};
        let selection = |s: &S3Selection| lister::S3Selection {
            s3_paths: s.s3_paths.iter().map(ToString::to_string).collect(),
            includes: s.includes.clone(),
            excludes: s.excludes.clone(),
        };
        let kind = match self {
            Input::Ndjson { uris } => Kind::NdjsonObjects(lister::NdjsonObjects { uris: uris.clone() }),
            Input::FilePaths(s) => Kind::FilePaths(selection(s)),
            Input::DelimitedFiles(s) => Kind::DelimitedFiles(selection(s)),
            Input::Sql(sql) => Kind::SqlRows(lister::SqlRows {
                url: sql.url.clone(),
                username: sql.username.clone(),
                password: secrets.sql_password.clone().unwrap_or_default(),
                query: sql.query.clone(),
            }),
            Input::Folders { folders } => Kind::NamedFolders(lister::NamedFolders {
                folders: folders
                    .iter()
                    .map(|f| lister::NamedFolder {
                        name: f.name.clone(),
                        input: f.input.clone(),
                        s3_path: f.s3_path.to_string(),
                    })
                    .collect(),
            }),
        };
        lister::Source { kind: Some(kind), access: secrets.s3.as_ref().map(S3Access::to_pb) }
    }
}

/// A job's persisted record; small, written on state changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub job_id: JobId,
    pub pipeline: String,
    pub max_workers: u32,
    pub batch_size: u32,
    pub config: Map<String, Value>,
    /// Where results go (`<output_uri>/<job_id>/<batch_id>.jsonl`).
    pub output_uri: String,
    /// Where the items are read from (inline items are staged in S3).
    pub input: Input,
    /// Number of items when known at submission.
    pub item_count: Option<u64>,
    pub state: JobState,
    pub create_ms: u64,
    pub start_ms: Option<u64>,
    pub end_ms: Option<u64>,
    pub failure_reason: Option<FailureReason>,
    pub message: Option<String>,
    /// Workers that were assigned when the job completed.
    pub workers_succeeded: u32,
    /// Workers lost while assigned.
    pub workers_failed: u32,
    /// W3C trace headers of the SubmitJob call, carried to every later hop.
    #[serde(default)]
    pub trace: std::collections::HashMap<String, String>,
    /// Deliveries of a batch before it is dead-lettered.
    #[serde(default = "default_max_receive_count")]
    pub max_receive_count: u32,
    /// Milliseconds from submission after which the job times out.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// The deployed pipeline version the job runs; None for a built-in one.
    #[serde(default)]
    pub deployed: Option<crate::pipelines::Deployed>,
    /// Finalize requests sent so far, over every completion of the job.
    #[serde(default)]
    pub finalize_attempts: u32,
    /// `finalize_attempts` when the current completion began.
    #[serde(default)]
    pub finalize_base: u32,
    /// Whether the manifest of the job's end is written (records from
    /// before this field existed were written at once).
    #[serde(default = "written")]
    pub manifest_written: bool,
    /// Who submitted the job (empty for jobs from before accounts: only a
    /// cluster admin sees those).
    #[serde(default)]
    pub owner: batchmill_core::Owner,
    /// Bytes of the items given inline.
    #[serde(default)]
    pub input_bytes: u64,
    /// The first [`INPUT_NAMES`] names of named inputs.
    #[serde(default)]
    pub input_names: Vec<String>,
    /// The job's own secrets ([`Secrets`]: its S3 access, its database
    /// password), sealed with the cluster's key.
    #[serde(default)]
    pub input_access: Option<Sealed>,
    /// Times the job was retried (its round: see the enqueuer).
    #[serde(default)]
    pub retries: u32,
    /// When it was last retried; its timeout counts from then.
    #[serde(default)]
    pub retry_ms: Option<u64>,
    /// The job whose failed items this one retries.
    #[serde(default)]
    pub parent: Option<JobId>,
    /// The jobs made from this one's failed items, oldest first.
    #[serde(default)]
    pub children: Vec<JobId>,
    /// Its admission queue.
    #[serde(default = "default_queue")]
    pub queue: String,
    /// Its priority in its queue.
    #[serde(default)]
    pub priority: u32,
    /// What it holds of its queue's capacity once admitted (workers, or GPUs).
    #[serde(default = "one")]
    pub demand: u32,
    /// When it was last preempted.
    #[serde(default)]
    pub preempted_ms: Option<u64>,
    /// Times it was preempted.
    #[serde(default)]
    pub preemptions: u32,
    /// Its account's quota on its queue when it was submitted (0: none);
    /// the newest job of an account says the account's quota.
    #[serde(default)]
    pub quota: u32,
    /// Whether a batch that fails for good is bisected to isolate the items
    /// that fail (jobs from before bisection are not).
    #[serde(default)]
    pub bisect: bool,
}

fn default_queue() -> String {
    batchmill_core::queues::DEFAULT_QUEUE.to_owned()
}

fn one() -> u32 {
    1
}

/// Most input names a job record keeps: the record stays small.
pub const INPUT_NAMES: usize = 100;

fn written() -> bool {
    true
}

/// Deliveries of a batch when a job names no dead-letter policy.
pub const DEFAULT_MAX_RECEIVE_COUNT: u32 = 3;

fn default_max_receive_count() -> u32 {
    DEFAULT_MAX_RECEIVE_COUNT
}

/// A job's assigned workers: preparing its predictor, or running batches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Assigned {
    pub initializing: u32,
    pub running: u32,
}

impl JobRecord {
    /// A job just accepted: PENDING, one worker, batches of one, no config,
    /// nothing counted yet. Callers set what the submission says.
    pub fn pending(job_id: JobId, pipeline: String, input: Input, create_ms: u64) -> JobRecord {
        JobRecord {
            job_id,
            pipeline,
            max_workers: 1,
            batch_size: 1,
            config: Map::new(),
            output_uri: String::new(),
            input,
            item_count: None,
            state: JobState::Pending,
            create_ms,
            start_ms: None,
            end_ms: None,
            failure_reason: None,
            message: None,
            workers_succeeded: 0,
            workers_failed: 0,
            trace: Default::default(),
            max_receive_count: DEFAULT_MAX_RECEIVE_COUNT,
            timeout_ms: None,
            deployed: None,
            finalize_attempts: 0,
            finalize_base: 0,
            manifest_written: false,
            owner: Owner::default(),
            input_bytes: 0,
            input_names: Vec::new(),
            input_access: None,
            retries: 0,
            retry_ms: None,
            parent: None,
            children: Vec::new(),
            queue: default_queue(),
            priority: 0,
            demand: 1,
            preempted_ms: None,
            preemptions: 0,
            quota: 0,
            bisect: true,
        }
    }

    /// The job's own secrets, opened with the cluster's key.
    pub fn secrets(&self, key: Option<&ClusterKey>) -> Result<Secrets, SealError> {
        let Some(sealed) = &self.input_access else { return Ok(Secrets::default()) };
        let key = key.ok_or(SealError::NoKey)?;
        let plain = key.open(sealed)?;
        serde_json::from_slice(&plain).map_err(|_| SealError::Unopenable)
    }

    /// Whether the job has run past its timeout at `now_ms`, counted from
    /// its submission or its last retry.
    pub fn timed_out(&self, now_ms: u64) -> bool {
        let since = self.retry_ms.unwrap_or(self.create_ms);
        self.timeout_ms.is_some_and(|t| now_ms >= since.saturating_add(t))
    }

    pub fn encode(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<JobRecord, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// The job as the public API shows it at `now_ms`.
    /// The state clients see. A job that ended on its own shows as
    /// `COMPLETING` until its manifest is written, so that whoever sees it
    /// terminal can read the manifest; a cancelled job shows `CANCELLED` at
    /// once (the cancel answers it), its manifest following.
    pub fn shown_state(&self) -> JobState {
        if self.state.is_terminal() && self.state != JobState::Cancelled && !self.manifest_written {
            JobState::Completing
        } else {
            self.state
        }
    }

    pub fn snapshot(&self, ledger: &Ledger, enqueue: &EnqueueProgress, assigned: Assigned, now_ms: u64) -> pb::Job {
        let Assigned { initializing, running } = assigned;
        let assigned = initializing + running;
        let total_batches = enqueue.next_seq.max(ledger.finished());
        // Enqueue progress is checkpointed, so it can lag what workers finished.
        let total_items =
            self.item_count.unwrap_or(0).max(enqueue.next_item).max(ledger.items_completed() + ledger.items_failed());
        let terminal = self.state.is_terminal();
        let in_queue = if terminal { 0 } else { total_batches - ledger.finished() };
        let pending_workers = if terminal { 0 } else { self.max_workers.saturating_sub(assigned) };
        let queue_end = self.start_ms.or(self.end_ms).unwrap_or(now_ms);
        let elapsed = self.start_ms.map_or(0, |start| self.end_ms.unwrap_or(now_ms).saturating_sub(start));
        let stalled = if self.start_ms.is_none() && now_ms.saturating_sub(self.create_ms) > STALLED_AFTER_MS {
            pending_workers
        } else {
            0
        };
        pb::Job {
            job_id: self.job_id.to_string(),
            pipeline: self.pipeline.clone(),
            state: pb::JobState::from(self.shown_state()) as i32,
            output_uri: self.output_uri.clone(),
            batches: Some(pb::BatchCounts {
                total: total_batches as i64,
                succeeded: ledger.succeeded() as i64,
                failed: ledger.failed() as i64,
                // Every batch that fails for good is dead-lettered.
                dead_lettered: ledger.failed() as i64,
                in_queue: in_queue as i64,
                failed_attempts: ledger.failed_attempts() as i64,
                average_batch_time: Some(duration_ms(ledger.average_batch_ms())),
            }),
            items: Some(pb::ItemCounts {
                total: total_items as i64,
                completed: ledger.items_completed() as i64,
                failed: ledger.items_failed() as i64,
                pending: if terminal {
                    0
                } else {
                    total_items.saturating_sub(ledger.items_completed() + ledger.items_failed()) as i64
                },
            }),
            workers: Some(pb::WorkerCounts {
                pending: (pending_workers - stalled) as i32,
                initializing: initializing as i32,
                running: running as i32,
                succeeded: self.workers_succeeded as i32,
                failed: self.workers_failed as i32,
                stalled: stalled as i32,
            }),
            max_workers: self.max_workers as i32,
            batch_size: self.batch_size as i32,
            config: Some(batchmill_core::json::json_to_struct(&self.config)),
            create_time: Some(timestamp(self.create_ms)),
            start_time: self.start_ms.map(timestamp),
            end_time: self.end_ms.map(timestamp),
            queue_time: Some(duration_ms(queue_end.saturating_sub(self.create_ms))),
            elapsed_time: Some(duration_ms(elapsed)),
            failure_reason: self.failure_reason.map(|r| r.as_str().to_owned()).unwrap_or_default(),
            message: self.message.clone().unwrap_or_default(),
            enqueue_complete: enqueue.done,
            max_receive_count: self.max_receive_count as i32,
            timeout: self.timeout_ms.map(duration_ms),
            account_id: self.owner.account.clone(),
            submitted_by: self.owner.key_id.clone(),
            input_bytes: self.input_bytes as i64,
            input_names: self.input_names.clone(),
            pipeline_version: self.deployed.as_ref().map_or(1, |d| d.version),
            retries: self.retries,
            retry_time: self.retry_ms.map(timestamp),
            parent_job_id: self.parent.as_ref().map(ToString::to_string).unwrap_or_default(),
            child_job_ids: self.children.iter().map(ToString::to_string).collect(),
            priority: self.priority,
            queue: self.queue.clone(),
            preemptions: self.preemptions,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use batchmill_proto::scheduler::v1::BatchStatus;

    fn record() -> JobRecord {
        let id = JobId::parse("job_id", "abc").unwrap();
        JobRecord {
            max_workers: 2,
            batch_size: 10,
            output_uri: "s3://b/results".into(),
            item_count: Some(25),
            state: JobState::Running,
            start_ms: Some(1_500),
            ..JobRecord::pending(id, "echo".into(), Input::Ndjson { uris: vec![] }, 1_000)
        }
    }

    #[test]
    fn snapshot_counts_come_from_the_ledger() {
        let mut ledger = Ledger::default();
        ledger.record(0, BatchStatus::Succeeded, 10, 100);
        ledger.record(2, BatchStatus::FailedFinal, 5, 100);
        let enqueue = EnqueueProgress { next_seq: 3, next_item: 25, done: true, ..Default::default() };
        let job = record().snapshot(&ledger, &enqueue, Assigned { initializing: 0, running: 2 }, 4_000);
        let b = job.batches.unwrap();
        assert_eq!((b.total, b.succeeded, b.failed, b.in_queue), (3, 1, 1, 1));
        let i = job.items.unwrap();
        assert_eq!((i.total, i.completed, i.failed, i.pending), (25, 10, 5, 10));
        assert_eq!(job.queue_time.unwrap().nanos, 500_000_000);
        assert_eq!(job.elapsed_time.unwrap().seconds, 2);
        assert_eq!(job.workers.unwrap().running, 2);
    }

    #[test]
    fn record_round_trips() {
        let r = record();
        assert_eq!(JobRecord::decode(&r.encode().unwrap()).unwrap(), r);
        let failed = JobRecord { failure_reason: Some(FailureReason::WorkerOom), ..r };
        let text = String::from_utf8(failed.encode().unwrap()).unwrap();
        assert!(text.contains(r#""failure_reason":"worker_oom""#), "{text}");
        assert_eq!(JobRecord::decode(text.as_bytes()).unwrap(), failed);
    }
}
