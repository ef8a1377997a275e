//! Jobs and their lifecycle: accepted (PENDING), admitted (queue open and
//! enqueuing started), running, completed from the ledger, or ended by
//! cancel, timeout or failure. [`Jobs`] owns every job the leader knows.

use std::collections::{BTreeMap, BTreeSet};

use batchmill_accounts::Limits;
use batchmill_core::enqueue::EnqueueProgress;
use batchmill_core::{Caller, FailureReason, JobId, JobState, WorkerId};
use batchmill_proto::jobs::v1 as pb;
use batchmill_queue::DeliveryPolicy;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::finalize::Finalizer;
use crate::ledger::Ledger;
use crate::record::{Assigned, JobRecord};
use crate::state::State;

/// One job as the leader holds it.
pub(crate) struct JobEntry {
    pub record: JobRecord,
    pub ledger: Ledger,
    pub enqueue: EnqueueProgress,
    /// Assigned workers, each with whether its predictor has started.
    pub assigned: BTreeMap<WorkerId, bool>,
    watchers: watch::Sender<pb::Job>,
    /// Whether this leader has prepared the job's queue and enqueuing.
    pub admitted: bool,
    /// The completion hook's progress, while completing.
    pub finalizer: Finalizer,
    /// Workers that could not start the job's predictor, under this leader.
    pub start_failures: u32,
    /// What its event log does not have yet, in order; recorded once the
    /// job's change is durable.
    pub unsaid: Vec<crate::events::Unsaid>,
    /// Loaded by this leader from etcd, its enqueue progress not yet seen:
    /// what that progress says an earlier leader has told already.
    pub loaded: bool,
    /// Since when no connected worker can run it (while it has none), and
    /// whether its log says so yet.
    pub unmatched: Option<(u64, bool)>,
    /// While preempted: the workers still finishing the batches they held
    /// (under this leader; a new leader knows none and waits for none).
    pub handing_back: BTreeSet<WorkerId>,
}

impl JobEntry {
    /// The job as the public API shows it at `now_ms`.
    pub fn snapshot(&self, now_ms: u64) -> pb::Job {
        self.record.snapshot(&self.ledger, &self.enqueue, self.workers(), now_ms)
    }

    /// Tells the job's watchers how it is at `now_ms`.
    pub fn publish(&self, now_ms: u64) {
        self.watchers.send_replace(self.snapshot(now_ms));
    }

    /// Its assigned workers, by whether their predictor has started.
    fn workers(&self) -> Assigned {
        let running = self.assigned.values().filter(|started| **started).count() as u32;
        Assigned { initializing: self.assigned.len() as u32 - running, running }
    }

    /// Puts the job in `state`, to be recorded in its event log once durable.
    pub fn enter(&mut self, state: JobState) {
        self.record.state = state;
        self.unsaid.push(crate::events::Unsaid::State(state));
    }

    /// An admitted job runs once a worker has its predictor running (it says
    /// so, or reports a batch); true if it has just started running.
    pub fn running(&mut self, now_ms: u64) -> bool {
        if self.record.state != JobState::Admitted {
            return false;
        }
        self.enter(JobState::Running);
        self.record.start_ms = Some(now_ms);
        true
    }

    /// Marks `worker`'s predictor started; false if it already was or the
    /// worker is not assigned.
    pub fn start(&mut self, worker: &WorkerId) -> bool {
        match self.assigned.get_mut(worker) {
            Some(started) if !*started => {
                *started = true;
                true
            }
            _ => false,
        }
    }

    /// How the job's batches are delivered, with `ack_wait` the cluster's.
    pub fn policy(&self, cluster: &DeliveryPolicy) -> DeliveryPolicy {
        DeliveryPolicy { ack_wait: cluster.ack_wait, max_deliver: self.record.max_receive_count.max(1) }
    }
}

/// Every job the leader knows, by id (ids sort by creation).
#[derive(Default)]
pub(crate) struct Jobs {
    entries: BTreeMap<JobId, JobEntry>,
}

impl Jobs {
    pub fn insert(&mut self, record: JobRecord, ledger: Ledger, now_ms: u64) {
        let enqueue = EnqueueProgress::default();
        let (watchers, _) = watch::channel(record.snapshot(&ledger, &enqueue, Assigned::default(), now_ms));
        let entry = JobEntry {
            record,
            ledger,
            enqueue,
            assigned: BTreeMap::new(),
            watchers,
            admitted: false,
            finalizer: Finalizer::default(),
            start_failures: 0,
            unsaid: Vec::new(),
            loaded: false,
            unmatched: None,
            handing_back: BTreeSet::new(),
        };
        self.entries.insert(entry.record.job_id.clone(), entry);
    }

    pub fn get(&self, id: &JobId) -> Option<&JobEntry> {
        self.entries.get(id)
    }

    pub fn get_mut(&mut self, id: &JobId) -> Option<&mut JobEntry> {
        self.entries.get_mut(id)
    }

    pub fn remove(&mut self, id: &JobId) {
        self.entries.remove(id);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Jobs by id, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = (&JobId, &JobEntry)> {
        self.entries.iter()
    }

    /// The ids of the jobs `wanted` picks, oldest first.
    pub fn ids(&self, wanted: impl Fn(&JobEntry) -> bool) -> Vec<JobId> {
        self.entries.iter().filter(|(_, e)| wanted(e)).map(|(k, _)| k.clone()).collect()
    }

    /// Jobs newest first (of `pipeline` only, if given), after `after`, at
    /// most `limit`; and the last id if more remain.
    pub fn list(
        &self,
        caller: &Caller,
        after: Option<&JobId>,
        limit: usize,
        pipeline: Option<&str>,
        now_ms: u64,
    ) -> (Vec<pb::Job>, Option<JobId>) {
        let older: Box<dyn Iterator<Item = (&JobId, &JobEntry)>> = match after {
            Some(after) => Box::new(self.entries.range(..after.clone()).rev()),
            None => Box::new(self.entries.iter().rev()),
        };
        let mut page: Vec<(&JobId, &JobEntry)> = older
            .filter(|(_, e)| caller.sees(&e.record.owner) && pipeline.is_none_or(|p| e.record.pipeline == p))
            .take(limit + 1)
            .collect();
        let more = page.len() > limit;
        page.truncate(limit);
        let next = if more { page.last().map(|(id, _)| (*id).clone()) } else { None };
        (page.iter().map(|(_, e)| e.snapshot(now_ms)).collect(), next)
    }
}

impl Jobs {
    /// Refuses `record` if its account would go over `limits` with it,
    /// naming the limit: its unended jobs, and their workers.
    pub fn within(&self, record: &JobRecord, limits: Limits) -> Result<(), crate::SchedulerError> {
        let account = &record.owner.account;
        let (mut jobs, mut workers) = (0u32, 0u32);
        for e in self.entries.values() {
            if e.record.owner.account == *account && !e.record.state.is_terminal() {
                jobs += 1;
                workers = workers.saturating_add(e.record.max_workers);
            }
        }
        let refuse = |message: String| Err(crate::SchedulerError::LimitExceeded { account: account.clone(), message });
        if limits.max_concurrent_jobs > 0 && jobs >= limits.max_concurrent_jobs {
            return refuse(format!(
                "max_concurrent_jobs is {}, and {jobs} of its jobs have not ended; wait for one to end or cancel one",
                limits.max_concurrent_jobs
            ));
        }
        let asked = record.max_workers;
        if limits.max_workers > 0 && workers.saturating_add(asked) > limits.max_workers {
            return refuse(format!(
                "max_workers is {}: its unended jobs have {workers} workers, and this job asks for {asked} more",
                limits.max_workers
            ));
        }
        Ok(())
    }
}

/// How a job ends.
pub(crate) struct End {
    pub state: JobState,
    pub reason: Option<FailureReason>,
    pub message: Option<String>,
    /// Why its workers are revoked, as they are told.
    pub why: &'static str,
}

impl End {
    pub fn failed(reason: FailureReason, message: String) -> End {
        End { state: JobState::Failed, reason: Some(reason), message: Some(message), why: "failed" }
    }
}

impl State {
    fn snapshot(&self, id: &JobId) -> Option<pb::Job> {
        Some(self.jobs.get(id)?.snapshot(self.clock.now_ms()))
    }

    /// Accepts a job ([`State::accept`]), then admits what can be.
    pub async fn submit(&mut self, record: JobRecord, limits: Limits) -> Result<pb::Job, crate::SchedulerError> {
        let accepted = self.accept(record, limits).await?;
        self.admission().await;
        Ok(accepted)
    }

    /// Accepts a job once it is durable in etcd; if it cannot be written the
    /// job is refused (UNAVAILABLE) rather than held only in memory. The
    /// reply is the job as accepted (durable, PENDING); admission, which
    /// opens its queue and starts enqueuing, is the caller's to run next.
    pub async fn accept(&mut self, record: JobRecord, limits: Limits) -> Result<pb::Job, crate::SchedulerError> {
        self.jobs.within(&record, limits)?;
        let id = record.job_id.clone();
        let state = record.state;
        self.jobs.insert(record, Ledger::default(), self.clock.now_ms());
        if let Some(entry) = self.jobs.get_mut(&id) {
            entry.unsaid.push(crate::events::Unsaid::State(state));
        }
        self.pending.mark(&id);
        self.flush().await;
        if self.pending.forget(&id) {
            self.jobs.remove(&id);
            return Err(crate::SchedulerError::NotPersisted { job_id: id.to_string() });
        }
        info!(job_id = %id, "job accepted");
        Ok(self.snapshot(&id).unwrap_or_default())
    }

    pub fn get(&self, id: &JobId) -> Option<pb::Job> {
        self.snapshot(id)
    }

    /// Jobs newest first (of `pipeline` only, if given), after `after`, at
    /// most `limit`; and the last id if more remain.
    pub fn list(
        &self,
        caller: &Caller,
        after: Option<&JobId>,
        limit: usize,
        pipeline: Option<&str>,
    ) -> (Vec<pb::Job>, Option<JobId>) {
        self.jobs.list(caller, after, limit, pipeline, self.clock.now_ms())
    }

    pub fn watch(&self, id: &JobId) -> Option<watch::Receiver<pb::Job>> {
        let e = self.jobs.get(id)?;
        e.publish(self.clock.now_ms());
        Some(e.watchers.subscribe())
    }

    pub async fn cancel(&mut self, id: &JobId) -> Option<pb::Job> {
        if !self.jobs.get(id)?.record.state.is_terminal() {
            self.stop_enqueue(id).await;
            let message = Some("cancelled by request".into());
            self.end(id, End { state: JobState::Cancelled, reason: None, message, why: "cancelled" }).await;
            self.flush().await;
        }
        self.snapshot(id)
    }

    pub(crate) async fn stop_enqueue(&self, id: &JobId) {
        if let Err(e) = self.ports.enqueuer.stop(id.as_str()).await {
            warn!(job_id = %id, error = %e, "stopping enqueue failed");
        }
    }

    /// Admits a job that admission chose (or prepares one admitted under an
    /// earlier leader): prepares its consumer and starts enqueuing (both
    /// idempotent). On failure the job stays as it is and the next round
    /// tries again.
    pub(crate) async fn admit(&mut self, id: &JobId) {
        let Some(entry) = self.jobs.get(id) else {
            return;
        };
        let secrets = match entry.record.secrets(self.settings.secret_key.as_ref()) {
            Ok(secrets) => secrets,
            Err(e) => {
                warn!(job_id = %id, error = %e, "the job's own credentials cannot be opened");
                let end = End::failed(FailureReason::EnqueueFailed, format!("its credentials cannot be read: {e}"));
                self.end(id, end).await;
                return;
            }
        };
        let skip = if entry.record.retries == 0 { Vec::new() } else { entry.ledger.final_ranges() };
        let request = batchmill_proto::enqueuer::v1::EnqueueJobRequest {
            job_id: id.to_string(),
            source: Some(entry.record.input.to_source(&secrets)),
            batch_size: entry.record.batch_size as i32,
            round: entry.record.retries,
            skip: skip.into_iter().map(|(start, end)| batchmill_proto::enqueuer::v1::SeqRange { start, end }).collect(),
            group: batchmill_core::batch::batches_per_group(
                entry.record.batch_size,
                entry.record.item_count,
                entry.record.max_workers,
            ),
            max_items: self.settings.max_job_items,
        };
        let trace = entry.record.trace.clone();
        if let Err(e) = self.ports.queue.open_job(id.as_str(), entry.policy(&self.settings.policy)).await {
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
                entry.enter(JobState::Admitted);
                self.pending.mark(id);
            }
        }
        self.assign();
    }

    /// Ends a job in a terminal state: revokes its workers, withdraws its
    /// remaining batches and writes its manifest. The caller flushes.
    pub(crate) async fn end(&mut self, id: &JobId, end: End) {
        let now = self.clock.now_ms();
        let Some(entry) = self.jobs.get_mut(id) else {
            return;
        };
        entry.enter(end.state);
        entry.record.end_ms = Some(now);
        entry.record.failure_reason = end.reason;
        entry.record.message = end.message;
        entry.record.manifest_written = false;
        if matches!(end.state, JobState::Succeeded | JobState::CompletedWithFailures) {
            entry.record.workers_succeeded += entry.assigned.len() as u32;
        }
        let assigned = std::mem::take(&mut entry.assigned);
        self.workers.revoke(assigned.into_keys(), id, end.why);
        self.write_manifest(id);
        self.pending.mark(id);
        match self.ports.queue.close_job(id.as_str()).await {
            Ok(withdrawn) => info!(job_id = %id, state = ?end.state, withdrawn, "job ended"),
            Err(e) => warn!(job_id = %id, error = %e, "closing the job's queue failed"),
        }
        self.assign();
    }

    /// Completes a job whose every batch is final.
    pub(crate) async fn complete_if_done(&mut self, id: &JobId) {
        let Some(entry) = self.jobs.get_mut(id) else {
            return;
        };
        if !matches!(entry.record.state, JobState::Admitted | JobState::Running) {
            return;
        }
        if let Some(error) = entry.enqueue.error.clone() {
            self.end(id, End::failed(FailureReason::EnqueueFailed, error)).await;
            return;
        }
        if !(entry.enqueue.done && entry.ledger.finished() >= entry.enqueue.next_seq) {
            return;
        }
        if entry.record.deployed.is_some() {
            // Its predictor may have an on_job_complete: one worker runs it,
            // then the job ends (see `finalize`).
            self.begin_finalizing(id).await;
            return;
        }
        let state = self.completed_state(id);
        self.end(id, End { state, reason: None, message: None, why: "completed" }).await;
    }

    /// The terminal state of a job whose every batch is final.
    pub(crate) fn completed_state(&self, id: &JobId) -> JobState {
        match self.jobs.get(id) {
            Some(e) if e.ledger.failed() > 0 => JobState::CompletedWithFailures,
            _ => JobState::Succeeded,
        }
    }

    /// Ends a job that ran past its timeout: enqueuing stops, its batches
    /// are withdrawn; results already written stay and the manifest lists them.
    pub(crate) async fn time_out(&mut self, id: &JobId) {
        let Some(entry) = self.jobs.get(id) else { return };
        let timeout_ms = entry.record.timeout_ms.unwrap_or(0);
        let (finished, total) = (entry.ledger.finished(), entry.enqueue.next_seq.max(entry.ledger.finished()));
        self.stop_enqueue(id).await;
        let message = format!(
            "the job ran past its timeout of {}; {finished} of {total} batches enqueued were final",
            batchmill_core::time::human_ms(timeout_ms)
        );
        let end = End { state: JobState::TimedOut, reason: None, message: Some(message), why: "timed out" };
        self.end(id, end).await;
    }

    /// How far enqueuing a job has come, from its checkpoint in etcd; a
    /// checkpoint of an earlier round is stale.
    pub fn enqueue_progress(&mut self, job_id: &str, progress: EnqueueProgress) {
        let Ok(id) = JobId::parse("job_id", job_id) else {
            return;
        };
        let Some(entry) = self.jobs.get_mut(&id) else {
            return;
        };
        if progress.round < entry.record.retries {
            return; // of a round before the job's last retry
        }
        let told = std::mem::take(&mut entry.loaded);
        let news = match (&progress.error, &entry.enqueue.error) {
            _ if told => None,
            (Some(error), None) => {
                Some((pb::EventLevel::Error, "enqueue_failed", format!("enqueuing failed: {error}")))
            }
            _ if progress.done && !entry.enqueue.done => Some((
                pb::EventLevel::Info,
                "enqueue_complete",
                format!("every item is enqueued: {} batches, {} items", progress.next_seq, progress.next_item),
            )),
            _ => None,
        };
        entry.enqueue = progress;
        if let Some((level, kind, message)) = news {
            self.event(&id, crate::events::event(level, kind, message));
        }
        self.pending.mark(&id);
    }
}
