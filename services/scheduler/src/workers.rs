//! Workers and assignment. A worker counts as alive while its session
//! stream is open: a killed worker's stream closes at once, and a vanished
//! host's fails its HTTP/2 keepalive. [`Workers`] owns every worker with its
//! session and assignment; idle workers go to jobs that can take more,
//! oldest job first.

use std::collections::BTreeMap;
use std::sync::Arc;

use batchmill_core::time::duration_ms;
use batchmill_core::{FailureReason, JobId, JobState, WorkerId};
use batchmill_proto::scheduler::v1::{self as spb, session_response::Message as Out};
use tracing::{info, warn};

use crate::events::event;
use crate::jobs::{End, JobEntry};
use crate::pipelines::merge_config;
use crate::ports::WorkerLink;
use crate::record::JobRecord;
use crate::state::State;
use batchmill_proto::jobs::v1::{EventLevel, JobEvent};

/// Predictor start failures before a job fails.
const START_FAILURES: u32 = 3;
/// How long an admitted job waits with no worker able to run it before its
/// log says so (workers come and go; a moment without one is no news).
const UNMATCHED_GRACE_MS: u64 = 5_000;

/// What a worker can run.
#[derive(Debug, Clone, Default)]
pub struct Capabilities {
    /// Built-in pipelines, by name.
    pub built_in: Vec<String>,
    /// Predictor types of deployed pipelines, such as "python".
    pub predictor_types: Vec<String>,
    /// GPUs its predictors may use (0 on a CPU worker).
    pub gpu_count: u32,
    /// The GPU's name, as its driver reports it.
    pub gpu_name: String,
    /// Memory of each GPU, in bytes.
    pub gpu_memory_bytes: u64,
}

impl Capabilities {
    /// What a worker offers, as an event tells it.
    fn describe(&self) -> String {
        let gpus = match self.gpu_count {
            0 => "no GPU".to_owned(),
            n => format!("{n} × {} ({} MiB)", self.gpu_name, self.gpu_memory_bytes >> 20),
        };
        let mut runs = self.built_in.clone();
        runs.extend(self.predictor_types.iter().cloned());
        format!("{gpus}; runs {}", runs.join(", "))
    }

    /// Whether this worker can run `record`'s pipeline: a built-in one it
    /// has, or a deployed version whose predictor type it runs and whose
    /// GPU needs (count, type, memory) it meets.
    pub(crate) fn can_run(&self, record: &JobRecord) -> bool {
        match &record.deployed {
            None => self.built_in.contains(&record.pipeline),
            Some(d) => {
                self.predictor_types.contains(&d.predictor.kind)
                    && d.run.resources.met_by(self.gpu_count, &self.gpu_name, self.gpu_memory_bytes)
            }
        }
    }
}

pub(crate) struct WorkerEntry {
    pub session: u64,
    link: Arc<dyn WorkerLink>,
    pub runs: Capabilities,
    /// The job it works on (or finalizes), if any.
    pub job: Option<JobId>,
}

/// Every worker with an open session, by id.
#[derive(Default)]
pub(crate) struct Workers {
    entries: BTreeMap<WorkerId, WorkerEntry>,
}

pub(crate) fn out(message: Out) -> spb::SessionResponse {
    spb::SessionResponse { message: Some(message) }
}

impl Workers {
    pub fn get(&self, id: &WorkerId) -> Option<&WorkerEntry> {
        self.entries.get(id)
    }

    pub fn get_mut(&mut self, id: &WorkerId) -> Option<&mut WorkerEntry> {
        self.entries.get_mut(id)
    }

    /// Sends `message` on the worker's session, if it is `session` (any
    /// session when None); false if it could not be sent.
    pub fn send(&self, id: &WorkerId, session: Option<u64>, message: Out) -> bool {
        match self.entries.get(id) {
            Some(w) if session.is_none_or(|s| s == w.session) => w.link.send(out(message)),
            _ => false,
        }
    }

    /// Takes job `job` from each of `workers`, telling them why.
    pub fn revoke(&mut self, workers: impl IntoIterator<Item = WorkerId>, job: &JobId, why: &str) {
        for worker in workers {
            if let Some(w) = self.entries.get_mut(&worker) {
                w.job = None;
                w.link.send(out(Out::Revoke(spb::Revoke { job_id: job.to_string(), reason: why.to_owned() })));
            }
        }
    }

    /// Whether any connected worker, idle or not, can run `record`'s pipeline.
    fn any_can_run(&self, record: &JobRecord) -> bool {
        self.entries.values().any(|w| w.runs.can_run(record))
    }

    /// What the connected workers offer, each kind once.
    fn offers(&self) -> String {
        let mut kinds: Vec<String> = self.entries.values().map(|w| w.runs.describe()).collect();
        kinds.sort();
        kinds.dedup();
        if kinds.is_empty() { "no worker is connected".to_owned() } else { kinds.join("; ") }
    }

    /// An idle worker that can run `record`'s pipeline.
    pub fn idle_for(&self, record: &JobRecord) -> Option<WorkerId> {
        self.entries.iter().find(|(_, w)| w.job.is_none() && w.runs.can_run(record)).map(|(k, _)| k.clone())
    }

    fn idle(&self) -> Vec<WorkerId> {
        self.entries.iter().filter(|(_, w)| w.job.is_none()).map(|(k, _)| k.clone()).collect()
    }
}

impl State {
    pub fn worker_joined(&mut self, id: WorkerId, session: u64, runs: Capabilities, link: Arc<dyn WorkerLink>) {
        self.worker_gone(&id, None);
        link.send(out(Out::Registered(spb::Registered {
            protocol_version: spb::ProtocolVersion::ProtocolVersion1 as i32,
        })));
        info!(worker_id = %id, ?runs, "worker joined");
        self.workers.entries.insert(id, WorkerEntry { session, link, runs, job: None });
        self.assign();
    }

    /// A worker's session ended: `session`, or whichever it had (None).
    pub fn worker_gone(&mut self, id: &WorkerId, session: Option<u64>) {
        let Some(w) = self.workers.get(id) else {
            return;
        };
        if session.is_some_and(|s| s != w.session) {
            return; // an older session of a worker that has reconnected
        }
        let Some(w) = self.workers.entries.remove(id) else {
            return;
        };
        info!(worker_id = %id, job_id = ?w.job.as_ref().map(ToString::to_string), "worker left");
        self.pending.drop_worker(id);
        self.stop_waiting_for(id);
        if let Some(job) = w.job
            && let Some(entry) = self.jobs.get_mut(&job)
        {
            entry.assigned.remove(id);
            entry.record.workers_failed += 1;
            self.pending.mark(&job);
            let message = format!("worker {id} was lost (its session ended); the batches it held are delivered again");
            self.event(&job, worker_event(EventLevel::Warn, "worker_lost", id, message));
        }
        self.assign();
    }

    /// A worker has its job's predictor loaded and takes batches.
    pub fn started(&mut self, worker: &WorkerId, job_id: &str) {
        let Ok(id) = JobId::parse("job_id", job_id) else { return };
        let now = self.clock.now_ms();
        if let Some(entry) = self.jobs.get_mut(&id)
            && entry.start(worker)
        {
            info!(job_id = %id, worker_id = %worker, "worker started the job's predictor");
            if entry.running(now) {
                self.pending.mark(&id);
            } else {
                // Worker counts are not persisted: tell the watchers, write nothing.
                entry.publish(now);
            }
        }
    }

    /// A worker gave a job back; `failure` says why its predictor could not
    /// start, and whether it ran out of memory. After [`START_FAILURES`]
    /// such failures the job fails.
    pub async fn released(&mut self, worker: &WorkerId, job_id: &str, failure: Option<(String, bool)>) {
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
            let (level, kind, message) = match &failure {
                Some((error, oom)) => {
                    let oom = if *oom { " (out of memory)" } else { "" };
                    (
                        EventLevel::Error,
                        "worker_start_failed",
                        format!("the predictor could not start on worker {worker}{oom}: {error}"),
                    )
                }
                None => (EventLevel::Info, "worker_released", format!("worker {worker} gave the job back")),
            };
            let released = worker_event(level, kind, worker, message);
            if let Some((error, oom)) = failure {
                warn!(job_id = %job, worker_id = %worker, %error, oom, "the job's predictor could not start");
                entry.record.workers_failed += 1;
                entry.start_failures += 1;
                if entry.start_failures >= START_FAILURES && !entry.record.state.is_terminal() {
                    let reason = if oom { FailureReason::WorkerOom } else { FailureReason::WorkerError };
                    let message = format!(
                        "the predictor could not start ({START_FAILURES} attempts); last error, on worker {worker}: {error}"
                    );
                    give_up = Some(End::failed(reason, message));
                }
            }
            self.pending.mark(&job);
            self.event(&job, released);
        }
        if let Some(end) = give_up {
            if let Err(e) = self.ports.enqueuer.stop(job.as_str()).await {
                warn!(job_id = %job, error = %e, "stopping enqueue failed");
            }
            self.end(&job, end).await;
        }
        self.assign();
    }

    /// Says in the log of each admitted job that has no worker, and that no
    /// connected worker can run, what it needs and what the workers offer:
    /// once, after [`UNMATCHED_GRACE_MS`], and again only after a worker
    /// has taken it.
    pub(crate) fn note_unmatched(&mut self) {
        let now = self.clock.now_ms();
        let waiting = |e: &JobEntry| matches!(e.record.state, JobState::Admitted | JobState::Running);
        for id in self.jobs.ids(|e| waiting(e) || e.unmatched.is_some()) {
            let Some(entry) = self.jobs.get_mut(&id) else { continue };
            if !waiting(entry) || !entry.assigned.is_empty() || self.workers.any_can_run(&entry.record) {
                entry.unmatched = None;
                continue;
            }
            match entry.unmatched {
                None => entry.unmatched = Some((now, false)),
                Some((since, false)) if now.saturating_sub(since) >= UNMATCHED_GRACE_MS => {
                    entry.unmatched = Some((since, true));
                    let message = format!(
                        "no connected worker can run it: it needs {}; the workers offer: {}",
                        needs(&entry.record),
                        self.workers.offers()
                    );
                    self.event(&id, event(EventLevel::Warn, "no_matching_worker", message));
                }
                Some(_) => {}
            }
        }
    }

    /// Gives idle workers to jobs that can take more, oldest job first.
    pub(crate) fn assign(&mut self) {
        for worker_id in self.workers.idle() {
            let Some(worker) = self.workers.get(&worker_id) else { continue };
            // A deployed (Python) predictor starts once enqueuing is done,
            // as in Cortex, so its job_spec has the total batch count.
            let job = self.jobs.iter().find(|(_, e)| {
                matches!(e.record.state, JobState::Admitted | JobState::Running)
                    && (e.assigned.len() as u32) < e.record.max_workers
                    && worker.runs.can_run(&e.record)
                    && (e.record.deployed.is_none() || e.enqueue.done)
            });
            let Some((job_id, entry)) = job else { continue };
            let (job_id, assign) = (job_id.clone(), self.assignment(entry));
            if !self.workers.send(&worker_id, None, Out::Assign(assign)) {
                continue;
            }
            info!(job_id = %job_id, worker_id = %worker_id, "worker assigned");
            let message = format!("worker {worker_id} assigned");
            self.event(&job_id, worker_event(EventLevel::Info, "worker_assigned", &worker_id, message));
            if let Some(worker) = self.workers.get_mut(&worker_id) {
                worker.job = Some(job_id.clone());
            }
            // RUNNING waits for the worker to have its predictor running.
            if let Some(entry) = self.jobs.get_mut(&job_id) {
                entry.assigned.insert(worker_id.clone(), false);
            }
            self.pending.mark(&job_id);
        }
    }

    /// What a worker is told to run a job.
    pub(crate) fn assignment(&self, entry: &JobEntry) -> spb::Assign {
        let record = &entry.record;
        let config = match &record.deployed {
            Some(d) => merge_config(&d.predictor.config, &record.config),
            None => record.config.clone(),
        };
        let job_id = record.job_id.as_str();
        let backoff = record.deployed.as_ref().and_then(|d| d.run.backoff).unwrap_or_default();
        let (initial_backoff, max_backoff) = backoff.to_proto();
        spb::Assign {
            job_id: job_id.to_owned(),
            pipeline: record.pipeline.clone(),
            config: Some(batchmill_core::json::json_to_struct(&config)),
            output_uri: record.output_uri.clone(),
            stream: batchmill_core::subjects::BATCH_STREAM.to_owned(),
            consumer: batchmill_core::subjects::consumer_name(job_id),
            max_deliver: record.max_receive_count.max(1),
            ack_wait: Some(duration_ms(self.settings.policy.ack_wait.as_millis() as u64)),
            predictor: record.deployed.as_ref().map(crate::pipelines::Deployed::to_assigned),
            workers: record.max_workers,
            total_batch_count: if entry.enqueue.done { entry.enqueue.next_seq as i64 } else { -1 },
            // A job whose credentials cannot be opened fails at admission.
            input_access: record.secrets(self.settings.secret_key.as_ref()).ok().and_then(|s| s.s3).map(|a| a.to_pb()),
            initial_backoff: Some(initial_backoff),
            max_backoff: Some(max_backoff),
            bisect: record.bisect,
        }
    }
}

/// What a job's pipeline asks of a worker, as an event tells it.
fn needs(record: &JobRecord) -> String {
    let Some(deployed) = &record.deployed else { return format!("the built-in pipeline {:?}", record.pipeline) };
    let r = &deployed.run.resources;
    let gpus = match r.gpu_count {
        0 => String::new(),
        n => {
            let memory = if r.gpu_memory.is_empty() { String::new() } else { format!(" of at least {}", r.gpu_memory) };
            format!(" and {n} GPU(s) of type {}{memory}", r.gpu_type)
        }
    };
    format!("a {} predictor{gpus}", deployed.predictor.kind)
}

/// An event about worker `worker`.
pub(crate) fn worker_event(level: EventLevel, kind: &str, worker: &WorkerId, message: String) -> JobEvent {
    JobEvent { worker_id: worker.to_string(), ..event(level, kind, message) }
}
