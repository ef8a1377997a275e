//! The scheduler's state, owned by one task ([`crate::actor`]): jobs with
//! their ledgers, workers with their assignments. Handlers change memory and
//! mark jobs dirty; [`State::flush`] persists dirty jobs in one etcd
//! transaction each and only then acknowledges batch outcomes, so a worker
//! acks a JetStream message only after its outcome is durable.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use batchmill_core::enqueue::EnqueueProgress;
use batchmill_core::time::{duration_ms, now_ms};
use batchmill_core::{JobId, JobState, S3Uri, WorkerId};
use batchmill_proto::jobs::v1 as pb;
use batchmill_proto::queue::v1 as qpb;
use batchmill_proto::scheduler::v1::{self as spb, session_response::Message as Out};
use batchmill_queue::DeliveryPolicy;
use bytes::Bytes;
use prost::Message;
use tokio::sync::{oneshot, watch};
use tracing::{info, warn};

use crate::ledger::{Ledger, Recorded};
use crate::pipelines::merge_config;
use crate::ports::{Ports, WorkerLink};
use crate::record::{Assigned, JobRecord, job_key, ledger_prefix, reason};

/// Settings of the scheduler.
#[derive(Debug, Clone)]
pub struct Settings {
    pub policy: DeliveryPolicy,
    /// Results location of jobs that name none.
    pub default_output: S3Uri,
    /// Where inline inputs are staged.
    pub staging: S3Uri,
}

struct JobEntry {
    record: JobRecord,
    ledger: Ledger,
    enqueue: EnqueueProgress,
    /// Assigned workers, each with whether its predictor has started.
    assigned: BTreeMap<WorkerId, bool>,
    watchers: watch::Sender<pb::Job>,
    /// Whether this leader has prepared the job's queue and enqueuing.
    admitted: bool,
    /// While completing: the worker last asked to finalize, and when.
    finalizer: Option<(WorkerId, u64)>,
    /// Workers that could not start the job's predictor, under this leader.
    start_failures: u32,
}

/// What a worker can run.
#[derive(Debug, Clone, Default)]
pub struct Capabilities {
    /// Built-in pipelines, by name.
    pub built_in: Vec<String>,
    /// Predictor types of deployed pipelines, such as "python".
    pub predictor_types: Vec<String>,
}

impl JobEntry {
    /// The job as the public API shows it at `now_ms`.
    fn snapshot(&self, now_ms: u64) -> pb::Job {
        self.record.snapshot(&self.ledger, &self.enqueue, self.workers(), now_ms)
    }

    /// Its assigned workers, by whether their predictor has started.
    fn workers(&self) -> Assigned {
        let running = self.assigned.values().filter(|started| **started).count() as u32;
        Assigned { initializing: self.assigned.len() as u32 - running, running }
    }

    /// Marks `worker`'s predictor started; false if it already was or the
    /// worker is not assigned.
    fn start(&mut self, worker: &WorkerId) -> bool {
        match self.assigned.get_mut(worker) {
            Some(started) if !*started => {
                *started = true;
                true
            }
            _ => false,
        }
    }
}

impl Capabilities {
    fn can_run(&self, record: &JobRecord) -> bool {
        match &record.deployed {
            None => self.built_in.contains(&record.pipeline),
            Some(d) => self.predictor_types.contains(&d.predictor.kind),
        }
    }
}

/// Predictor start failures before a job fails.
const START_FAILURES: u32 = 3;
/// Finalize attempts before a job whose hook never finished fails.
const FINALIZE_ATTEMPTS: u32 = 3;
/// How long a worker asked to finalize has to claim it.
const FINALIZE_CLAIM_MS: u64 = 30_000;

/// Someone waiting for a job's changes to be durable in etcd.
enum Waiter {
    /// A worker's outcome, confirmed with an OutcomeAck on its session.
    Worker { worker: WorkerId, session: u64, ack: spb::OutcomeAck },
    /// An internal caller, such as the handler of exhausted batches.
    Reply(oneshot::Sender<()>),
}

struct WorkerEntry {
    session: u64,
    link: Arc<dyn WorkerLink>,
    runs: Capabilities,
    job: Option<JobId>,
}

pub struct State {
    ports: Ports,
    settings: Arc<Settings>,
    jobs: BTreeMap<JobId, JobEntry>,
    workers: BTreeMap<WorkerId, WorkerEntry>,
    dirty: BTreeSet<JobId>,
    /// Waiters released by the next successful write of their job (or at
    /// once, for no job).
    waiting: Vec<(Option<JobId>, Waiter)>,
}

impl State {
    pub fn new(ports: Ports, settings: Arc<Settings>) -> State {
        State {
            ports,
            settings,
            jobs: BTreeMap::new(),
            workers: BTreeMap::new(),
            dirty: BTreeSet::new(),
            waiting: Vec::new(),
        }
    }

    /// Loads every job and ledger from etcd, as a new leader.
    pub async fn load(&mut self) -> Result<usize, batchmill_coord::CoordError> {
        // Ledger keys grouped by job: /batchmill/ledgers/<job_id>/<key>.
        let mut keys: BTreeMap<String, Vec<(String, Vec<u8>)>> = BTreeMap::new();
        for (key, bytes) in self.ports.kv.list(crate::record::LEDGERS_PREFIX).await? {
            let rest = key.trim_start_matches(crate::record::LEDGERS_PREFIX);
            if let Some((job, name)) = rest.split_once('/') {
                keys.entry(job.to_owned()).or_default().push((name.to_owned(), bytes));
            }
        }
        let mut ledgers: BTreeMap<String, Ledger> = BTreeMap::new();
        for (job, pairs) in keys {
            match Ledger::decode(pairs.iter().map(|(k, v)| (k.as_str(), v.as_slice()))) {
                Ok(l) => {
                    ledgers.insert(job, l);
                }
                Err(e) => warn!(job_id = %job, error = %e, "unreadable ledger"),
            }
        }
        for (key, bytes) in self.ports.kv.list(crate::record::JOBS_PREFIX).await? {
            let record = match JobRecord::decode(&bytes) {
                Ok(r) => r,
                Err(e) => {
                    warn!(%key, error = %e, "unreadable job record");
                    continue;
                }
            };
            let ledger = ledgers.remove(record.job_id.as_str()).unwrap_or_default();
            let mut record = record;
            if record.state == JobState::Completing && record.deployed.is_none() {
                // Completion is redone (the manifest is rewritten in place);
                // a job with a completion hook goes on finalizing.
                record.state = JobState::Running;
            }
            self.insert(record, ledger);
        }
        Ok(self.jobs.len())
    }

    fn insert(&mut self, record: JobRecord, ledger: Ledger) {
        let enqueue = EnqueueProgress::default();
        let snapshot = record.snapshot(&ledger, &enqueue, Assigned::default(), now_ms());
        let (watchers, _) = watch::channel(snapshot);
        self.jobs.insert(
            record.job_id.clone(),
            JobEntry {
                record,
                ledger,
                enqueue,
                assigned: BTreeMap::new(),
                watchers,
                admitted: false,
                finalizer: None,
                start_failures: 0,
            },
        );
    }

    fn snapshot(&self, id: &JobId) -> Option<pb::Job> {
        let e = self.jobs.get(id)?;
        Some(e.snapshot(now_ms()))
    }

    // ---- jobs ----

    /// Accepts a job once it is durable in etcd; if it cannot be written the
    /// job is refused (UNAVAILABLE) rather than held only in memory.
    pub async fn submit(&mut self, record: JobRecord) -> Result<pb::Job, crate::SchedulerError> {
        let id = record.job_id.clone();
        self.insert(record, Ledger::default());
        self.dirty.insert(id.clone());
        self.flush().await;
        if self.dirty.remove(&id) {
            self.jobs.remove(&id);
            return Err(crate::SchedulerError::NotPersisted { job_id: id.to_string() });
        }
        info!(job_id = %id, "job accepted");
        // The reply is the job as accepted (durable, PENDING); admission follows.
        let accepted = self.snapshot(&id).unwrap_or_default();
        self.admit(&id).await;
        Ok(accepted)
    }

    pub fn get(&self, id: &JobId) -> Option<pb::Job> {
        self.snapshot(id)
    }

    /// Jobs newest first (of `pipeline` only, if given), after `after`, at
    /// most `limit`; and the last id if more remain.
    pub fn list(&self, after: Option<&JobId>, limit: usize, pipeline: Option<&str>) -> (Vec<pb::Job>, Option<JobId>) {
        let older: Box<dyn Iterator<Item = (&JobId, &JobEntry)>> = match after {
            Some(after) => Box::new(self.jobs.range(..after.clone()).rev()),
            None => Box::new(self.jobs.iter().rev()),
        };
        let ids: Vec<&JobId> = older
            .filter(|(_, e)| pipeline.is_none_or(|p| e.record.pipeline == p))
            .map(|(k, _)| k)
            .take(limit + 1)
            .collect();
        let more = ids.len() > limit;
        let page: Vec<&JobId> = ids.into_iter().take(limit).collect();
        let next = if more { page.last().map(|id| (*id).clone()) } else { None };
        (page.iter().filter_map(|id| self.snapshot(id)).collect(), next)
    }

    pub fn watch(&self, id: &JobId) -> Option<watch::Receiver<pb::Job>> {
        let e = self.jobs.get(id)?;
        e.watchers.send_replace(e.snapshot(now_ms()));
        Some(e.watchers.subscribe())
    }

    pub async fn cancel(&mut self, id: &JobId) -> Option<pb::Job> {
        let state = self.jobs.get(id)?.record.state;
        if !state.is_terminal() {
            if let Err(e) = self.ports.enqueuer.stop(id.as_str()).await {
                warn!(job_id = %id, error = %e, "stopping enqueue failed");
            }
            self.end(id, JobState::Cancelled, None, Some("cancelled by request".into()), "cancelled").await;
            self.flush().await;
        }
        self.snapshot(id)
    }

    /// Admits a pending job: prepares its consumer and starts enqueuing.
    /// On failure the job stays as it is and the next tick tries again.
    async fn admit(&mut self, id: &JobId) {
        let Some(entry) = self.jobs.get(id) else {
            return;
        };
        let request = batchmill_proto::enqueuer::v1::EnqueueJobRequest {
            job_id: id.to_string(),
            source: Some(entry.record.input.to_source()),
            batch_size: entry.record.batch_size as i32,
        };
        let trace = entry.record.trace.clone();
        let policy = self.policy(&entry.record);
        if let Err(e) = self.ports.queue.open(id.as_str(), policy).await {
            warn!(job_id = %id, error = %e, "opening the job's queue failed; will retry");
            return;
        }
        if let Err(e) = self.ports.enqueuer.enqueue(request, &trace).await {
            warn!(job_id = %id, error = %e, "starting enqueue failed; will retry");
            return;
        }
        if let Some(entry) = self.jobs.get_mut(id) {
            entry.admitted = true;
            if entry.record.state == JobState::Pending {
                entry.record.state = JobState::Admitted;
                self.dirty.insert(id.clone());
            }
        }
        self.assign();
    }

    /// How the job's batches are delivered.
    fn policy(&self, record: &JobRecord) -> DeliveryPolicy {
        DeliveryPolicy { ack_wait: self.settings.policy.ack_wait, max_deliver: record.max_receive_count.max(1) }
    }

    /// A page of the job's dead letters from dead-letter stream sequence
    /// `from` on: the batches its ledger counts as failed, each once (its
    /// latest dead letter), and where the next page starts if any.
    pub async fn dead_letters(
        &self,
        id: &JobId,
        from: u64,
        limit: usize,
    ) -> Result<(Vec<pb::DeadLetter>, Option<u64>), crate::SchedulerError> {
        // Each failed batch once, at its latest dead letter.
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
    /// of the batches its ledger counts as failed, grouped by batch as
    /// (stream sequence, letter), oldest first.
    async fn failed_letters(
        &self,
        id: &JobId,
        from: u64,
    ) -> Result<BTreeMap<u64, Vec<(u64, qpb::DeadLetter)>>, crate::SchedulerError> {
        let entry = self.jobs.get(id).ok_or_else(|| crate::SchedulerError::JobNotFound { job_id: id.to_string() })?;
        let mut letters: BTreeMap<u64, Vec<(u64, qpb::DeadLetter)>> = BTreeMap::new();
        let mut next = from;
        loop {
            let page = self.ports.queue.dead_letters(id.as_str(), next, 1000).await.map_err(dead_letter_error)?;
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
    pub async fn rerun(
        &mut self,
        id: &JobId,
        batch_ids: &[String],
    ) -> Result<(pb::Job, Vec<String>), crate::SchedulerError> {
        use crate::SchedulerError as E;
        let entry = self.jobs.get(id).ok_or_else(|| E::JobNotFound { job_id: id.to_string() })?;
        let state = entry.record.state;
        if !matches!(state, JobState::Admitted | JobState::Running | JobState::CompletedWithFailures) {
            return Err(E::NotRerunnable { job_id: id.to_string(), state: format!("{state:?}") });
        }
        let mut letters = self.failed_letters(id, 0).await?;
        let wanted: Vec<u64> = if batch_ids.is_empty() {
            letters.keys().copied().collect()
        } else {
            let prefix = format!("{id}-");
            batch_ids
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    b.strip_prefix(&prefix)
                        .and_then(|s| s.parse::<u64>().ok())
                        .filter(|seq| letters.contains_key(seq))
                        .ok_or_else(|| E::NotDeadLettered { field: format!("batch_ids[{i}]"), batch_id: b.clone() })
                })
                .collect::<Result<_, _>>()?
        };
        if wanted.is_empty() {
            return Ok((self.snapshot(id).unwrap_or_default(), Vec::new()));
        }
        if state == JobState::CompletedWithFailures {
            // Its queue was closed at the end; reopen it and run again.
            let policy = self.policy(&entry.record);
            self.ports.queue.open(id.as_str(), policy).await.map_err(dead_letter_error)?;
            if let Some(entry) = self.jobs.get_mut(id) {
                entry.record.state = JobState::Running;
                entry.record.end_ms = None;
                entry.admitted = true;
            }
        }
        let mut queued = Vec::new();
        for seq in wanted {
            let Some(versions) = letters.remove(&seq) else { continue };
            let Some((stream_seq, latest)) = versions.last() else { continue };
            let Some(batch) = &latest.batch else { continue };
            let items = batch.items.len() as u64;
            // The actor handles nothing else meanwhile, so no outcome of the
            // queued batch can arrive before the ledger expects it.
            if let Err(e) = self.ports.queue.requeue(id.as_str(), seq, *stream_seq, batch.encode_to_vec().into()).await
            {
                warn!(job_id = %id, seq, error = %e, "re-queuing a dead letter failed");
                break;
            }
            if let Some(entry) = self.jobs.get_mut(id) {
                entry.ledger.revive(seq, items);
            }
            for (stream_seq, _) in &versions {
                if let Err(e) = self.ports.queue.remove_dead_letter(*stream_seq).await {
                    warn!(job_id = %id, seq, error = %e, "removing a re-run dead letter failed");
                }
            }
            queued.push(format!("{id}-{seq}"));
        }
        info!(job_id = %id, batches = queued.len(), "dead letters re-run");
        self.dirty.insert(id.clone());
        self.flush().await;
        self.assign();
        if queued.is_empty() {
            return Err(E::DeadLetters { message: "the dead-letter stream refused the re-run; try again".into() });
        }
        Ok((self.snapshot(id).unwrap_or_default(), queued))
    }

    /// Ends a job in a terminal state: revokes its workers and withdraws its
    /// remaining batches. The caller flushes.
    async fn end(&mut self, id: &JobId, state: JobState, failure: Option<&str>, message: Option<String>, why: &str) {
        let Some(entry) = self.jobs.get_mut(id) else {
            return;
        };
        entry.record.state = state;
        entry.record.end_ms = Some(now_ms());
        entry.record.failure_reason = failure.map(str::to_owned);
        entry.record.message = message;
        if matches!(state, JobState::Succeeded | JobState::CompletedWithFailures) {
            entry.record.workers_succeeded += entry.assigned.len() as u32;
        }
        let assigned = std::mem::take(&mut entry.assigned);
        if let Err(e) = self.write_manifest(id).await {
            warn!(job_id = %id, error = %e, "writing the manifest failed");
        }
        for worker in assigned.into_keys() {
            if let Some(w) = self.workers.get_mut(&worker) {
                w.job = None;
                w.link.send(out(Out::Revoke(spb::Revoke { job_id: id.to_string(), reason: why.to_owned() })));
            }
        }
        self.dirty.insert(id.clone());
        match self.ports.queue.close(id.as_str()).await {
            Ok(withdrawn) => info!(job_id = %id, ?state, withdrawn, "job ended"),
            Err(e) => warn!(job_id = %id, error = %e, "closing the job's queue failed"),
        }
        self.assign();
    }

    /// Completes a job whose every batch is final.
    async fn complete_if_done(&mut self, id: &JobId) {
        let Some(entry) = self.jobs.get_mut(id) else {
            return;
        };
        if !matches!(entry.record.state, JobState::Admitted | JobState::Running) {
            return;
        }
        if let Some(error) = entry.enqueue.error.clone() {
            self.end(id, JobState::Failed, Some(reason::ENQUEUE_FAILED), Some(error), "failed").await;
            return;
        }
        if !(entry.enqueue.done && entry.ledger.finished() >= entry.enqueue.next_seq) {
            return;
        }
        entry.record.state = JobState::Completing;
        if entry.record.deployed.is_some() {
            // Its predictor may have an on_job_complete: one worker runs it,
            // then the job ends (see `finalize`).
            entry.record.finalize_base = entry.record.finalize_attempts;
            entry.finalizer = None;
            let assigned = std::mem::take(&mut entry.assigned);
            self.dirty.insert(id.clone());
            for worker in assigned.into_keys() {
                if let Some(w) = self.workers.get_mut(&worker) {
                    w.job = None;
                    w.link.send(out(Out::Revoke(spb::Revoke { job_id: id.to_string(), reason: "completing".into() })));
                }
            }
            info!(job_id = %id, "every batch is final; finalizing");
            self.finalize(id).await;
            return;
        }
        let state = self.completed_state(id);
        self.end(id, state, None, None, "completed").await;
    }

    /// The terminal state of a job whose every batch is final.
    fn completed_state(&self, id: &JobId) -> JobState {
        match self.jobs.get(id) {
            Some(e) if e.ledger.failed() > 0 => JobState::CompletedWithFailures,
            _ => JobState::Succeeded,
        }
    }

    /// Drives a completing job's hook: ends the job once a worker has run it
    /// (as its finalizer key in etcd says), and otherwise asks an idle worker
    /// that can run the pipeline, again when a worker is lost before it
    /// finishes, up to [`FINALIZE_ATTEMPTS`] times.
    async fn finalize(&mut self, id: &JobId) {
        let key = batchmill_core::finalize::finalizer_key(id.as_str());
        let claim = match self.ports.kv.get(&key).await {
            Ok(v) => v.and_then(|b| batchmill_core::finalize::Finalizing::decode(&b)),
            Err(e) => {
                warn!(job_id = %id, error = %e, "reading the finalizer failed; will retry");
                return;
            }
        };
        let Some(entry) = self.jobs.get(id) else { return };
        let base = entry.record.finalize_base;
        // A claim from an earlier completion (before a re-run) is stale.
        match claim.filter(|c| c.attempt > base) {
            Some(c) if c.done => {
                if let Err(e) = self.ports.kv.delete(&key).await {
                    warn!(job_id = %id, error = %e, "removing the finalizer key failed");
                }
                match c.error {
                    None => {
                        info!(job_id = %id, worker_id = %c.worker_id, "on_job_complete finished");
                        let state = self.completed_state(id);
                        self.end(id, state, None, None, "completed").await;
                    }
                    Some(error) => {
                        let message = format!("on_job_complete failed on worker {}: {error}", c.worker_id);
                        self.end(id, JobState::Failed, Some(reason::WORKER_ERROR), Some(message), "failed").await;
                    }
                }
                return;
            }
            // Running on a live worker (its lease holds the claim).
            Some(_) => return,
            None => {}
        }
        let now = now_ms();
        if let Some((worker, sent)) = &entry.finalizer
            && self.workers.get(worker).is_some_and(|w| w.job.as_ref() == Some(id))
            && now.saturating_sub(*sent) < FINALIZE_CLAIM_MS
        {
            return; // asked, not claimed yet
        }
        if entry.record.finalize_attempts - base >= FINALIZE_ATTEMPTS {
            let message =
                format!("on_job_complete did not finish after {FINALIZE_ATTEMPTS} attempts; workers were lost");
            self.end(id, JobState::Failed, Some(reason::WORKER_ERROR), Some(message), "failed").await;
            return;
        }
        let record = &entry.record;
        let Some(worker_id) =
            self.workers.iter().find(|(_, w)| w.job.is_none() && w.runs.can_run(record)).map(|(k, _)| k.clone())
        else {
            return; // no idle worker can run it yet
        };
        let attempt = record.finalize_attempts + 1;
        let snapshot = record.snapshot(&entry.ledger, &entry.enqueue, Assigned::default(), now);
        let finalize = spb::Finalize {
            job: Some(self.assignment(id, entry)),
            attempt,
            metrics: Some(batchmill_core::json::json_to_struct(&final_metrics(&snapshot))),
        };
        let Some(worker) = self.workers.get_mut(&worker_id) else { return };
        if !worker.link.send(out(Out::Finalize(finalize))) {
            return;
        }
        info!(job_id = %id, worker_id = %worker_id, attempt, "finalize sent");
        worker.job = Some(id.clone());
        if let Some(entry) = self.jobs.get_mut(id) {
            entry.record.finalize_attempts = attempt;
            entry.finalizer = Some((worker_id.clone(), now));
            entry.assigned.insert(worker_id, true);
        }
        self.dirty.insert(id.clone());
    }

    /// Writes `<output_uri>/<job_id>/manifest.json`: the job's terminal state,
    /// counts, result objects and failed batches.
    async fn write_manifest(&self, id: &JobId) -> Result<(), String> {
        let entry = self.jobs.get(id).ok_or("job gone")?;
        let output = S3Uri::parse(&entry.record.output_uri)?.join(id.as_str());
        let batch_uri = |seq: u64| output.join(&format!("{id}-{seq}.jsonl")).to_string();
        let snapshot = entry.record.snapshot(&entry.ledger, &entry.enqueue, Assigned::default(), now_ms());
        let manifest = serde_json::json!({
            "job_id": id.to_string(),
            "pipeline": entry.record.pipeline,
            "state": snapshot.state().as_str_name(),
            "message": snapshot.message,
            "batches": {
                "total": snapshot.batches.as_ref().map_or(0, |b| b.total),
                "succeeded": entry.ledger.succeeded(),
                "failed": entry.ledger.failed(),
            },
            "items": {
                "total": snapshot.items.as_ref().map_or(0, |i| i.total),
                "completed": entry.ledger.items_completed(),
                "failed": entry.ledger.items_failed(),
            },
            "results": entry.ledger.succeeded_seqs().map(batch_uri).collect::<Vec<_>>(),
            "failed_batches": entry.ledger.failed_seqs().map(|s| format!("{id}-{s}")).collect::<Vec<_>>(),
        });
        let body = Bytes::from(serde_json::to_vec_pretty(&manifest).map_err(|e| e.to_string())?);
        self.ports.store.put(&output.join("manifest.json"), body, "application/json").await
    }

    pub async fn enqueue_progress(&mut self, job_id: &str, progress: EnqueueProgress) {
        let Ok(id) = JobId::parse("job_id", job_id) else {
            return;
        };
        let Some(entry) = self.jobs.get_mut(&id) else {
            return;
        };
        entry.enqueue = progress;
        self.dirty.insert(id);
    }

    // ---- workers ----

    pub fn worker_joined(&mut self, id: WorkerId, session: u64, runs: Capabilities, link: Arc<dyn WorkerLink>) {
        self.worker_gone(&id, None);
        link.send(out(Out::Registered(spb::Registered {
            protocol_version: spb::ProtocolVersion::ProtocolVersion1 as i32,
        })));
        info!(worker_id = %id, ?runs, "worker joined");
        self.workers.insert(id, WorkerEntry { session, link, runs, job: None });
        self.assign();
    }

    /// A worker's session ended (`session` set) or its registration expired.
    pub fn worker_gone(&mut self, id: &WorkerId, session: Option<u64>) {
        let Some(w) = self.workers.get(id) else {
            return;
        };
        if session.is_some_and(|s| s != w.session) {
            return; // an older session of a worker that has reconnected
        }
        let Some(w) = self.workers.remove(id) else {
            return;
        };
        info!(worker_id = %id, job_id = ?w.job.as_ref().map(ToString::to_string), "worker left");
        self.waiting.retain(|(_, w)| !matches!(w, Waiter::Worker { worker, .. } if worker == id));
        if let Some(job) = w.job
            && let Some(entry) = self.jobs.get_mut(&job)
        {
            entry.assigned.remove(id);
            entry.record.workers_failed += 1;
            self.dirty.insert(job);
        }
        self.assign();
    }

    /// A worker has its job's predictor loaded and takes batches.
    pub fn started(&mut self, worker: &WorkerId, job_id: &str) {
        let Ok(id) = JobId::parse("job_id", job_id) else { return };
        if let Some(entry) = self.jobs.get_mut(&id)
            && entry.start(worker)
        {
            info!(job_id = %id, worker_id = %worker, "worker started the job's predictor");
            // Worker counts are not persisted: tell the watchers, write nothing.
            entry.watchers.send_replace(entry.snapshot(now_ms()));
        }
    }

    /// A worker gave a job back; `failure` says why its predictor could
    /// not start. After [`START_FAILURES`] such failures the job fails.
    pub async fn released(&mut self, worker: &WorkerId, job_id: &str, failure: Option<String>) {
        let Some(w) = self.workers.get_mut(worker) else {
            return;
        };
        if w.job.as_ref().is_none_or(|j| j.as_str() != job_id) {
            return;
        }
        let Some(job) = w.job.take() else { return };
        let mut give_up = None;
        if let Some(entry) = self.jobs.get_mut(&job) {
            entry.assigned.remove(worker);
            if let Some(error) = failure {
                warn!(job_id = %job, worker_id = %worker, %error, "the job's predictor could not start");
                entry.record.workers_failed += 1;
                entry.start_failures += 1;
                if entry.start_failures >= START_FAILURES && !entry.record.state.is_terminal() {
                    give_up = Some(format!(
                        "the predictor could not start ({START_FAILURES} attempts); last error, on worker {worker}: {error}"
                    ));
                }
            }
            self.dirty.insert(job.clone());
        }
        if let Some(message) = give_up {
            if let Err(e) = self.ports.enqueuer.stop(job.as_str()).await {
                warn!(job_id = %job, error = %e, "stopping enqueue failed");
            }
            self.end(&job, JobState::Failed, Some(reason::WORKER_ERROR), Some(message), "failed").await;
        }
        self.assign();
    }

    pub fn outcome(&mut self, worker: &WorkerId, outcome: spb::BatchOutcome) {
        let session = self.workers.get(worker).map_or(0, |w| w.session);
        let ack = spb::OutcomeAck { job_id: outcome.job_id.clone(), seq: outcome.seq };
        let waiter = Waiter::Worker { worker: worker.clone(), session, ack };
        let id = JobId::parse("job_id", &outcome.job_id).ok();
        // An unknown or ended job has nothing to count; the worker just drops the message.
        if let Some(entry) = id.as_ref().and_then(|id| self.jobs.get_mut(id))
            && !entry.record.state.is_terminal()
            && let Some(id) = &id
        {
            // A worker that reports a batch has its predictor running (its
            // started message may have gone to a previous leader).
            entry.start(worker);
            let duration = outcome.duration.as_ref().map_or(0, batchmill_core::time::duration_to_ms);
            let status = outcome.status();
            if entry.ledger.record(outcome.seq, status, outcome.items.max(0) as u64, duration) == Recorded::Duplicate {
                info!(job_id = %id, seq = outcome.seq, "duplicate outcome ignored");
            }
            if status == spb::BatchStatus::FailedFinal {
                warn!(job_id = %id, seq = outcome.seq, error = %outcome.error, "batch failed for good");
            }
            self.dirty.insert(id.clone());
        }
        self.waiting.push((id, waiter));
    }

    /// A batch ran out of deliveries with no outcome (its worker was lost on
    /// the last one): it fails for good. `reply` is released once that is
    /// durable.
    pub fn exhausted(&mut self, job_id: &str, seq: u64, items: u64, deliveries: u64, reply: oneshot::Sender<()>) {
        let id = JobId::parse("job_id", job_id).ok();
        if let Some(entry) = id.as_ref().and_then(|id| self.jobs.get_mut(id))
            && !entry.record.state.is_terminal()
            && let Some(id) = &id
        {
            if entry.ledger.record(seq, spb::BatchStatus::FailedFinal, items, 0) == Recorded::Counted {
                warn!(job_id = %id, seq, deliveries, "batch ran out of deliveries without an outcome; failed for good");
            }
            self.dirty.insert(id.clone());
        }
        self.waiting.push((id, Waiter::Reply(reply)));
    }

    /// Gives idle workers to jobs that can take more, oldest job first.
    fn assign(&mut self) {
        let idle: Vec<WorkerId> =
            self.workers.iter().filter(|(_, w)| w.job.is_none()).map(|(k, _)| k.clone()).collect();
        for worker_id in idle {
            let Some(worker) = self.workers.get_mut(&worker_id) else {
                continue;
            };
            // A deployed (Python) predictor starts once enqueuing is done,
            // as in Cortex, so its job_spec has the total batch count.
            let job = self.jobs.iter().find(|(_, e)| {
                matches!(e.record.state, JobState::Admitted | JobState::Running)
                    && (e.assigned.len() as u32) < e.record.max_workers
                    && worker.runs.can_run(&e.record)
                    && (e.record.deployed.is_none() || e.enqueue.done)
            });
            let Some((job_id, entry)) = job else { continue };
            let (job_id, assign) = (job_id.clone(), self.assignment(job_id, entry));
            let (Some(worker), Some(entry)) = (self.workers.get_mut(&worker_id), self.jobs.get_mut(&job_id)) else {
                continue;
            };
            if !worker.link.send(out(Out::Assign(assign))) {
                continue;
            }
            info!(job_id = %job_id, worker_id = %worker_id, "worker assigned");
            worker.job = Some(job_id.clone());
            entry.assigned.insert(worker_id.clone(), false);
            if entry.record.state == JobState::Admitted {
                entry.record.state = JobState::Running;
                entry.record.start_ms = Some(now_ms());
            }
            self.dirty.insert(job_id.clone());
        }
    }

    /// What a worker is told to run a job.
    fn assignment(&self, job_id: &JobId, entry: &JobEntry) -> spb::Assign {
        let record = &entry.record;
        let config = match &record.deployed {
            Some(d) => merge_config(&d.predictor.config, &record.config),
            None => record.config.clone(),
        };
        spb::Assign {
            job_id: job_id.to_string(),
            pipeline: record.pipeline.clone(),
            config: Some(batchmill_core::json::json_to_struct(&config)),
            output_uri: record.output_uri.clone(),
            stream: batchmill_queue::BATCH_STREAM.to_owned(),
            consumer: batchmill_queue::consumer_name(job_id.as_str()),
            max_deliver: record.max_receive_count.max(1),
            ack_wait: Some(duration_ms(self.settings.policy.ack_wait.as_millis() as u64)),
            predictor: record.deployed.as_ref().map(crate::pipelines::Deployed::to_assigned),
            workers: record.max_workers,
            total_batch_count: if entry.enqueue.done { entry.enqueue.next_seq as i64 } else { -1 },
        }
    }

    /// Periodic work: admit jobs this leader has not admitted yet (new
    /// ones, ones whose admission failed, and ones a previous leader left
    /// running; admission is idempotent), drive completion hooks, then
    /// assign idle workers.
    pub async fn tick(&mut self) {
        let unadmitted: Vec<JobId> = self
            .jobs
            .iter()
            .filter(|(_, e)| {
                !e.admitted && matches!(e.record.state, JobState::Pending | JobState::Admitted | JobState::Running)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for id in unadmitted {
            self.admit(&id).await;
        }
        let completing: Vec<JobId> =
            self.jobs.iter().filter(|(_, e)| e.record.state == JobState::Completing).map(|(k, _)| k.clone()).collect();
        for id in completing {
            self.finalize(&id).await;
        }
        let now = now_ms();
        let expired: Vec<JobId> = self
            .jobs
            .iter()
            .filter(|(_, e)| !e.record.state.is_terminal() && e.record.timed_out(now))
            .map(|(k, _)| k.clone())
            .collect();
        for id in expired {
            self.time_out(&id).await;
        }
        self.assign();
    }

    /// Ends a job that ran past its timeout: enqueuing stops, its batches
    /// are withdrawn; results already written stay and the manifest lists them.
    async fn time_out(&mut self, id: &JobId) {
        let Some(entry) = self.jobs.get(id) else { return };
        let timeout_ms = entry.record.timeout_ms.unwrap_or(0);
        let (finished, total) = (entry.ledger.finished(), entry.enqueue.next_seq.max(entry.ledger.finished()));
        if let Err(e) = self.ports.enqueuer.stop(id.as_str()).await {
            warn!(job_id = %id, error = %e, "stopping enqueue failed");
        }
        let message = format!(
            "the job ran past its timeout of {}; {finished} of {total} batches enqueued were final",
            batchmill_core::time::human_ms(timeout_ms)
        );
        self.end(id, JobState::TimedOut, None, Some(message), "timed out").await;
    }

    /// Persists dirty jobs, then acknowledges outcomes and notifies watchers.
    /// A job whose write failed stays dirty and its outcomes unacknowledged.
    pub async fn flush(&mut self) {
        if self.dirty.is_empty() && self.waiting.is_empty() {
            return;
        }
        let dirty = std::mem::take(&mut self.dirty);
        let mut failed = BTreeSet::new();
        for id in &dirty {
            let Some(entry) = self.jobs.get(id) else {
                continue;
            };
            let mut pairs = vec![(job_key(id), entry.record.encode())];
            pairs.extend(entry.ledger.changes(&ledger_prefix(id)));
            match self.put_batched(pairs).await {
                Ok(()) => {
                    if let Some(entry) = self.jobs.get_mut(id) {
                        entry.ledger.written();
                    }
                }
                Err(e) => {
                    warn!(job_id = %id, error = %e, "persisting job failed; will retry");
                    failed.insert(id.clone());
                }
            }
        }
        let now = now_ms();
        for id in &dirty {
            if let Some(e) = self.jobs.get(id) {
                e.watchers.send_replace(e.snapshot(now));
            }
        }
        let (ready, held): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition(|(job, _)| job.as_ref().is_none_or(|id| !failed.contains(id)));
        for (_, waiter) in ready {
            match waiter {
                Waiter::Worker { worker, session, ack } => {
                    if let Some(w) = self.workers.get(&worker)
                        && w.session == session
                    {
                        w.link.send(out(Out::OutcomeAck(ack)));
                    }
                }
                Waiter::Reply(reply) => {
                    let _ = reply.send(());
                }
            }
        }
        self.waiting = held;
        self.dirty = failed;
    }

    /// Writes pairs in transactions of at most 100 operations (etcd allows 128).
    async fn put_batched(&self, mut pairs: Vec<(String, Vec<u8>)>) -> Result<(), batchmill_coord::CoordError> {
        while !pairs.is_empty() {
            let rest = pairs.split_off(pairs.len().min(100));
            self.ports.kv.put_all(pairs).await?;
            pairs = rest;
        }
        Ok(())
    }

    /// Completes or fails the changed jobs that are done.
    pub async fn settle(&mut self) {
        let changed: Vec<JobId> = self.dirty.iter().cloned().collect();
        for id in changed {
            self.complete_if_done(&id).await;
        }
    }
}

fn dead_letter_error(message: String) -> crate::SchedulerError {
    crate::SchedulerError::DeadLetters { message }
}

/// A dead letter as the public API shows it.
fn public_dead_letter(id: &JobId, dead: qpb::DeadLetter) -> pb::DeadLetter {
    let batch = dead.batch.unwrap_or_default();
    pb::DeadLetter {
        batch_id: format!("{id}-{}", batch.seq),
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
    }
}

/// The counts a job's completion hook receives.
fn final_metrics(job: &pb::Job) -> serde_json::Map<String, serde_json::Value> {
    let batches = job.batches.unwrap_or_default();
    let items = job.items.unwrap_or_default();
    let metrics = serde_json::json!({
        "job_id": job.job_id,
        "pipeline": job.pipeline,
        "total_batch_count": batches.total,
        "succeeded": batches.succeeded,
        "failed": batches.failed,
        "items": {"total": items.total, "completed": items.completed, "failed": items.failed},
    });
    metrics.as_object().cloned().unwrap_or_default()
}

fn out(message: Out) -> spb::SessionResponse {
    spb::SessionResponse { message: Some(message) }
}
