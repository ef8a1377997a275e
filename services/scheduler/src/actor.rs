//! The task that owns [`State`], and the handle the gRPC adapters use. Every
//! command is handled in order; after each burst of commands dirty jobs are
//! flushed together, so under load many outcomes share one etcd write.

use std::sync::Arc;
use std::time::Duration;

use batchmill_accounts::{Accounts, Limits};
use batchmill_blob::ObjectStore;
use batchmill_core::enqueue::EnqueueProgress;
use batchmill_core::finalize::Finalizing;
use batchmill_core::{BatchId, Caller, JobId, WorkerId};
use batchmill_proto::jobs::v1 as pb;
use batchmill_proto::scheduler::v1::BatchOutcome;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::SchedulerError;
use crate::pipelines::Pipelines;
use crate::ports::{SourceProbe, WorkerLink};
use crate::record::JobRecord;
use crate::state::{Settings, State};
use crate::workers::Capabilities;

/// How often pending admissions are retried and idle workers assigned.
const TICK: Duration = Duration::from_millis(250);
/// Most commands handled before a flush.
const BURST: usize = 512;
/// How long a stopping leader waits for manifests still being written.
const MANIFEST_PATIENCE: Duration = Duration::from_secs(5);

type Reply<T> = oneshot::Sender<T>;

/// A page of dead letters and where the next one starts.
pub type DeadLetterPage = Result<(Vec<pb::DeadLetter>, Option<u64>), SchedulerError>;
/// A page of jobs and the id the next one starts after.
pub type JobPage = (Vec<pb::Job>, Option<JobId>);

enum Command {
    Submit { record: Box<JobRecord>, limits: Limits, reply: Reply<Result<pb::Job, SchedulerError>> },
    Get { id: JobId, reply: Reply<Option<pb::Job>> },
    List { caller: Caller, after: Option<JobId>, limit: usize, pipeline: Option<String>, reply: Reply<JobPage> },
    Cancel { id: JobId, reply: Reply<Option<pb::Job>> },
    Retry { id: JobId, limits: Limits, reply: Reply<Result<pb::Job, SchedulerError>> },
    FailedItems { id: JobId, reply: Reply<Result<(JobRecord, Vec<String>), SchedulerError>> },
    Adopt { parent: JobId, child: JobId },
    Watch { id: JobId, reply: Reply<Option<watch::Receiver<pb::Job>>> },
    WorkerJoined { id: WorkerId, session: u64, runs: Capabilities, link: Arc<dyn WorkerLink> },
    WorkerGone { id: WorkerId, session: u64 },
    Outcome { worker: WorkerId, outcome: BatchOutcome },
    Released { worker: WorkerId, job_id: String, failure: Option<(String, bool)> },
    HandedBack { worker: WorkerId, job_id: String },
    Started { worker: WorkerId, job_id: String },
    Enqueue { job_id: String, progress: EnqueueProgress },
    Claim { id: JobId, claim: Option<Finalizing> },
    Exhausted { job_id: String, seq: u64, items: u64, deliveries: u64, reply: Reply<()> },
    DeadLetters { id: JobId, from: u64, limit: usize, reply: Reply<DeadLetterPage> },
    Rerun { id: JobId, batch_ids: Vec<String>, reply: Reply<Result<(pb::Job, Vec<BatchId>), SchedulerError>> },
}

/// A handle on the scheduler task; clones share it.
#[derive(Clone)]
pub struct Scheduler {
    tx: mpsc::UnboundedSender<Command>,
    pub(crate) settings: Arc<Settings>,
    pub(crate) store: Arc<dyn ObjectStore>,
    pub(crate) probe: Arc<dyn SourceProbe>,
    pub(crate) pipelines: Pipelines,
    pub(crate) accounts: Accounts,
    /// etcd, where the Files API's records are read.
    pub(crate) kv: Arc<dyn batchmill_coord::Kv>,
    /// Output locations that took a probe write lately.
    pub(crate) writable: Arc<crate::writable::Writable>,
}

impl Scheduler {
    /// Starts the task over a loaded `state`. It stops at `stop`, after a
    /// last flush; the handle it returns ends then.
    pub fn start(
        mut state: State,
        probe: Arc<dyn SourceProbe>,
        pipelines: Pipelines,
        stop: CancellationToken,
    ) -> (Scheduler, tokio::task::JoinHandle<()>) {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (settings, store) = (state.settings.clone(), state.ports.store.clone());
        let accounts = Accounts::new(state.ports.kv.clone());
        let kv = state.ports.kv.clone();
        let manifest_finished = state.manifests.wake();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    _ = tick.tick() => state.tick().await,
                    () = manifest_finished.notified() => state.note_manifests(),
                    command = rx.recv() => {
                        let Some(command) = command else { break };
                        handle(&mut state, command).await;
                        for _ in 0..BURST {
                            match rx.try_recv() {
                                Ok(command) => handle(&mut state, command).await,
                                Err(_) => break,
                            }
                        }
                    }
                }
                state.flush().await;
            }
            state.manifests_written(MANIFEST_PATIENCE).await;
            state.flush().await;
            state.events_written(MANIFEST_PATIENCE).await;
        });
        (Scheduler { tx, settings, store, probe, pipelines, accounts, kv, writable: Arc::default() }, task)
    }

    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, SchedulerError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).map_err(|_| SchedulerError::Stopped)?;
        rx.await.map_err(|_| SchedulerError::Stopped)
    }

    fn tell(&self, command: Command) {
        let _ = self.tx.send(command);
    }

    /// Records an accepted job (see `submission.rs`).
    /// `limits` are the submitting account's, checked against its other jobs.
    pub(crate) async fn record(&self, record: JobRecord, limits: Limits) -> Result<pb::Job, SchedulerError> {
        self.ask(|reply| Command::Submit { record: Box::new(record), limits, reply }).await?
    }

    /// The pipelines jobs may name.
    pub fn pipelines(&self) -> &Pipelines {
        &self.pipelines
    }

    /// A page of a job's dead letters from dead-letter stream sequence `from`.
    pub async fn dead_letters(&self, id: JobId, from: u64, limit: usize) -> DeadLetterPage {
        self.ask(|reply| Command::DeadLetters { id, from, limit, reply }).await?
    }

    /// Queues a job's dead-lettered batches again (all when `batch_ids` is empty).
    pub async fn rerun(&self, id: JobId, batch_ids: Vec<String>) -> Result<(pb::Job, Vec<BatchId>), SchedulerError> {
        self.ask(|reply| Command::Rerun { id, batch_ids, reply }).await?
    }

    pub async fn get(&self, id: JobId) -> Result<pb::Job, SchedulerError> {
        let job_id = id.to_string();
        self.ask(|reply| Command::Get { id, reply }).await?.ok_or(SchedulerError::JobNotFound { job_id })
    }

    /// The jobs `caller` sees, newest first (of `pipeline` only, if given).
    pub async fn list(
        &self,
        caller: Caller,
        after: Option<JobId>,
        limit: usize,
        pipeline: Option<String>,
    ) -> Result<JobPage, SchedulerError> {
        self.ask(|reply| Command::List { caller, after, limit, pipeline, reply }).await
    }

    pub async fn cancel(&self, id: JobId) -> Result<pb::Job, SchedulerError> {
        let job_id = id.to_string();
        self.ask(|reply| Command::Cancel { id, reply }).await?.ok_or(SchedulerError::JobNotFound { job_id })
    }

    /// Continues a FAILED, CANCELLED or TIMED_OUT job from its ledger,
    /// within its account's limits (those of the account that owns it).
    pub async fn retry(&self, id: JobId, account: &str) -> Result<pb::Job, SchedulerError> {
        let limits = self.accounts.limits_of(account).await.map_err(SchedulerError::Account)?.limits;
        self.ask(|reply| Command::Retry { id, limits, reply }).await?
    }

    /// The job's record and the items of its batches that failed for good.
    pub(crate) async fn failed_items(&self, id: JobId) -> Result<(JobRecord, Vec<String>), SchedulerError> {
        self.ask(|reply| Command::FailedItems { id, reply }).await?
    }

    /// Links an accepted child job to its parent.
    pub(crate) fn adopt(&self, parent: JobId, child: JobId) {
        self.tell(Command::Adopt { parent, child });
    }

    pub async fn watch(&self, id: JobId) -> Result<watch::Receiver<pb::Job>, SchedulerError> {
        let job_id = id.to_string();
        self.ask(|reply| Command::Watch { id, reply }).await?.ok_or(SchedulerError::JobNotFound { job_id })
    }

    pub fn worker_joined(&self, id: WorkerId, session: u64, runs: Capabilities, link: Arc<dyn WorkerLink>) {
        self.tell(Command::WorkerJoined { id, session, runs, link });
    }

    /// A worker's session `session` ended.
    pub fn worker_gone(&self, id: WorkerId, session: u64) {
        self.tell(Command::WorkerGone { id, session });
    }

    pub fn outcome(&self, worker: WorkerId, outcome: BatchOutcome) {
        self.tell(Command::Outcome { worker, outcome });
    }

    /// A worker has its job's predictor ready.
    pub fn started(&self, worker: WorkerId, job_id: String) {
        self.tell(Command::Started { worker, job_id });
    }

    /// A worker gave a job back; `failure` if the job's predictor could not
    /// start: why, and whether it ran out of memory.
    pub fn released(&self, worker: WorkerId, job_id: String, failure: Option<(String, bool)>) {
        self.tell(Command::Released { worker, job_id, failure });
    }

    /// A worker has finished the batches it held of a preempted job.
    pub fn handed_back(&self, worker: WorkerId, job_id: String) {
        self.tell(Command::HandedBack { worker, job_id });
    }

    /// Fails a batch whose deliveries ran out with no outcome; returns once
    /// that is durable.
    pub async fn exhausted(&self, job_id: String, seq: u64, items: u64, deliveries: u64) -> Result<(), SchedulerError> {
        self.ask(|reply| Command::Exhausted { job_id, seq, items, deliveries, reply }).await
    }

    pub fn enqueue_progress(&self, job_id: String, progress: EnqueueProgress) {
        self.tell(Command::Enqueue { job_id, progress });
    }

    /// A job's completion-hook claim changed (None: it is gone).
    pub fn claim_changed(&self, id: JobId, claim: Option<Finalizing>) {
        self.tell(Command::Claim { id, claim });
    }
}

async fn handle(state: &mut State, command: Command) {
    match command {
        Command::Submit { record, limits, reply } => {
            // The submitter has its answer before admission's round trips
            // (opening the job's queue, starting its enqueue).
            let accepted = state.accept(*record, limits).await;
            let admit = accepted.is_ok();
            drop(reply.send(accepted));
            if admit {
                state.admission().await;
            }
        }
        Command::Get { id, reply } => drop(reply.send(state.get(&id))),
        Command::List { caller, after, limit, pipeline, reply } => {
            drop(reply.send(state.list(&caller, after.as_ref(), limit, pipeline.as_deref())));
        }
        Command::Cancel { id, reply } => drop(reply.send(state.cancel(&id).await)),
        Command::Retry { id, limits, reply } => drop(reply.send(state.retry(&id, limits).await)),
        Command::FailedItems { id, reply } => drop(reply.send(state.failed_items(&id).await)),
        Command::Adopt { parent, child } => state.adopt(&parent, &child),
        Command::Watch { id, reply } => drop(reply.send(state.watch(&id))),
        Command::WorkerJoined { id, session, runs, link } => state.worker_joined(id, session, runs, link),
        Command::WorkerGone { id, session } => state.worker_gone(&id, Some(session)),
        Command::Outcome { worker, outcome } => state.outcome(&worker, outcome),
        Command::Released { worker, job_id, failure } => state.released(&worker, &job_id, failure).await,
        Command::HandedBack { worker, job_id } => state.handed_back(&worker, &job_id),
        Command::Started { worker, job_id } => state.started(&worker, &job_id),
        Command::Enqueue { job_id, progress } => state.enqueue_progress(&job_id, progress),
        Command::Claim { id, claim } => {
            state.claim_changed(&id, claim);
            state.finalize(&id).await;
        }
        Command::Exhausted { job_id, seq, items, deliveries, reply } => {
            state.exhausted(&job_id, seq, items, deliveries, reply);
        }
        Command::DeadLetters { id, from, limit, reply } => {
            drop(reply.send(state.dead_letters(&id, from, limit).await));
        }
        Command::Rerun { id, batch_ids, reply } => drop(reply.send(state.rerun(&id, &batch_ids).await)),
    }
}
