//! The task that owns [`State`], and the handle the gRPC adapters use. Every
//! command is handled in order; after each burst of commands dirty jobs are
//! flushed together, so under load many outcomes share one etcd write.

use std::sync::Arc;
use std::time::Duration;

use batchmill_core::enqueue::EnqueueProgress;
use batchmill_core::time::now_ms;
use batchmill_core::{JobId, JobSpec, SourceSpec, WorkerId};
use batchmill_proto::jobs::v1 as pb;
use batchmill_proto::scheduler::v1::BatchOutcome;
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::SchedulerError;
use crate::pipelines::Pipelines;
use crate::ports::{ObjectStore, SourceProbe, WorkerLink};
use crate::record::{Input, JobRecord};
use crate::state::{Capabilities, Settings, State};

/// How often pending admissions are retried and idle workers assigned.
const TICK: Duration = Duration::from_millis(250);
/// Most commands handled before a flush.
const BURST: usize = 512;

enum Command {
    Submit {
        record: Box<JobRecord>,
        reply: oneshot::Sender<Result<pb::Job, SchedulerError>>,
    },
    Get {
        id: JobId,
        reply: oneshot::Sender<Option<pb::Job>>,
    },
    List {
        after: Option<JobId>,
        limit: usize,
        pipeline: Option<String>,
        reply: oneshot::Sender<(Vec<pb::Job>, Option<JobId>)>,
    },
    Cancel {
        id: JobId,
        reply: oneshot::Sender<Option<pb::Job>>,
    },
    Watch {
        id: JobId,
        reply: oneshot::Sender<Option<watch::Receiver<pb::Job>>>,
    },
    WorkerJoined {
        id: WorkerId,
        session: u64,
        runs: Capabilities,
        link: Arc<dyn WorkerLink>,
    },
    WorkerGone {
        id: WorkerId,
        session: Option<u64>,
    },
    Outcome {
        worker: WorkerId,
        outcome: BatchOutcome,
    },
    Released {
        worker: WorkerId,
        job_id: String,
        failure: Option<String>,
    },
    Started {
        worker: WorkerId,
        job_id: String,
    },
    Enqueue {
        job_id: String,
        progress: EnqueueProgress,
    },
    Exhausted {
        job_id: String,
        seq: u64,
        items: u64,
        deliveries: u64,
        reply: oneshot::Sender<()>,
    },
    DeadLetters {
        id: JobId,
        from: u64,
        limit: usize,
        reply: oneshot::Sender<DeadLetterPage>,
    },
    Rerun {
        id: JobId,
        batch_ids: Vec<String>,
        reply: oneshot::Sender<Result<(pb::Job, Vec<String>), SchedulerError>>,
    },
}

/// A page of dead letters and where the next one starts.
type DeadLetterPage = Result<(Vec<pb::DeadLetter>, Option<u64>), SchedulerError>;

/// Most matched files a dry run lists by name; it counts them all.
pub const DRY_RUN_MAX_FILES: usize = 100_000;

/// A handle on the scheduler task; clones share it.
#[derive(Clone)]
pub struct Scheduler {
    tx: mpsc::UnboundedSender<Command>,
    settings: Arc<Settings>,
    store: Arc<dyn ObjectStore>,
    probe: Arc<dyn SourceProbe>,
    pipelines: Pipelines,
}

impl Scheduler {
    /// Starts the task over a loaded `state`; it stops at `shutdown`.
    pub fn start(
        mut state: State,
        settings: Arc<Settings>,
        store: Arc<dyn ObjectStore>,
        probe: Arc<dyn SourceProbe>,
        pipelines: Pipelines,
        shutdown: CancellationToken,
    ) -> Scheduler {
        let (tx, mut rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    _ = tick.tick() => state.tick().await,
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
                state.settle().await;
                state.flush().await;
            }
            state.flush().await;
        });
        Scheduler { tx, settings, store, probe, pipelines }
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, SchedulerError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).map_err(|_| SchedulerError::Stopped)?;
        rx.await.map_err(|_| SchedulerError::Stopped)
    }

    fn tell(&self, command: Command) {
        let _ = self.tx.send(command);
    }

    /// Accepts a job: stages its inline items in S3, then records it.
    pub async fn submit(&self, spec: JobSpec) -> Result<pb::Job, SchedulerError> {
        let deployed = self.pipelines.resolve(&spec.pipeline)?;
        crate::pipelines::check_config(&spec.pipeline, &spec.config)?;
        let create_ms = now_ms();
        let job_id = JobId::generate(create_ms);
        let (input, item_count) = match spec.source {
            SourceSpec::Items(items) => {
                let uri = self.settings.staging.join(job_id.as_str()).join("items.ndjson");
                let mut body = Vec::with_capacity(items.len() * 16);
                for item in &items {
                    body.extend_from_slice(item.to_string().as_bytes());
                    body.push(b'\n');
                }
                self.store
                    .put(&uri, Bytes::from(body), "application/x-ndjson")
                    .await
                    .map_err(|message| SchedulerError::Staging { message })?;
                (Input::Ndjson { uris: vec![uri.to_string()] }, Some(items.len() as u64))
            }
            // Counted as the lister goes.
            SourceSpec::FilePaths(selection) => {
                (self.checked(Input::FilePaths(selection), "file_path_lister").await?, None)
            }
            SourceSpec::DelimitedFiles(selection) => {
                (self.checked(Input::DelimitedFiles(selection), "delimited_files").await?, None)
            }
        };
        let record = JobRecord {
            max_receive_count: spec.max_receive_count.unwrap_or(self.settings.policy.max_deliver),
            timeout_ms: spec.timeout_ms,
            max_workers: spec.max_workers,
            batch_size: spec.batch_size,
            config: spec.config,
            output_uri: spec.output_uri.unwrap_or_else(|| self.settings.default_output.clone()).to_string(),
            item_count,
            deployed,
            trace: batchmill_runtime::trace::current(),
            ..JobRecord::pending(job_id, spec.pipeline, input, create_ms)
        };
        tracing::info!(job_id = %record.job_id, trace_id = %batchmill_runtime::trace::trace_id(), "job submitted");
        self.ask(|reply| Command::Submit { record: Box::new(record), reply }).await?
    }

    /// Checks a submission as [`Scheduler::submit`] would, without creating
    /// a job, and says what it would read: the matched files (as Cortex
    /// prints them) and the item and batch counts where they are known.
    pub async fn dry_run(&self, spec: JobSpec) -> Result<pb::DryRunJobResponse, SchedulerError> {
        self.pipelines.resolve(&spec.pipeline)?;
        crate::pipelines::check_config(&spec.pipeline, &spec.config)?;
        let batches = |items: u64| items.div_ceil(u64::from(spec.batch_size)) as i64;
        let (selection, field, lines) = match spec.source {
            SourceSpec::Items(items) => {
                return Ok(pb::DryRunJobResponse {
                    message: "validations passed".into(),
                    files: vec![],
                    file_count: 0,
                    item_count: items.len() as i64,
                    batch_count: batches(items.len() as u64),
                });
            }
            SourceSpec::FilePaths(selection) => (selection, "file_path_lister", false),
            SourceSpec::DelimitedFiles(selection) => (selection, "delimited_files", true),
        };
        let source = Input::FilePaths(selection).to_source();
        let (files, count) =
            self.probe.list_files(source, DRY_RUN_MAX_FILES).await.map_err(|status| bad_source(status, field))?;
        let mut message = String::with_capacity(files.iter().map(|f| f.len() + 1).sum::<usize>() + 64);
        for file in &files {
            message.push_str(file);
            message.push('\n');
        }
        if count > files.len() as u64 {
            message.push_str(&format!("... and {} more\n", count - files.len() as u64));
        }
        message.push_str("validations passed");
        let (item_count, batch_count) = if lines { (-1, -1) } else { (count as i64, batches(count)) };
        Ok(pb::DryRunJobResponse { message, files, file_count: count as i64, item_count, batch_count })
    }

    /// The pipelines jobs may name.
    pub fn pipelines(&self) -> &Pipelines {
        &self.pipelines
    }

    /// An S3 input the lister can list: no match, an unknown bucket or
    /// refused credentials are errors now, naming `field`, not a job that
    /// fails later.
    async fn checked(&self, input: Input, field: &str) -> Result<Input, SchedulerError> {
        match self.probe.probe(input.to_source()).await {
            Ok(()) => Ok(input),
            Err(status) => Err(bad_source(status, field)),
        }
    }

    /// A page of a job's dead letters from dead-letter stream sequence `from`.
    pub async fn dead_letters(&self, id: JobId, from: u64, limit: usize) -> DeadLetterPage {
        self.ask(|reply| Command::DeadLetters { id, from, limit, reply }).await?
    }

    /// Queues a job's dead-lettered batches again (all when `batch_ids` is empty).
    pub async fn rerun(&self, id: JobId, batch_ids: Vec<String>) -> Result<(pb::Job, Vec<String>), SchedulerError> {
        self.ask(|reply| Command::Rerun { id, batch_ids, reply }).await?
    }

    pub async fn get(&self, id: JobId) -> Result<pb::Job, SchedulerError> {
        let job_id = id.to_string();
        self.ask(|reply| Command::Get { id, reply }).await?.ok_or(SchedulerError::JobNotFound { job_id })
    }

    pub async fn list(
        &self,
        after: Option<JobId>,
        limit: usize,
        pipeline: Option<String>,
    ) -> Result<(Vec<pb::Job>, Option<JobId>), SchedulerError> {
        self.ask(|reply| Command::List { after, limit, pipeline, reply }).await
    }

    pub async fn cancel(&self, id: JobId) -> Result<pb::Job, SchedulerError> {
        let job_id = id.to_string();
        self.ask(|reply| Command::Cancel { id, reply }).await?.ok_or(SchedulerError::JobNotFound { job_id })
    }

    pub async fn watch(&self, id: JobId) -> Result<watch::Receiver<pb::Job>, SchedulerError> {
        let job_id = id.to_string();
        self.ask(|reply| Command::Watch { id, reply }).await?.ok_or(SchedulerError::JobNotFound { job_id })
    }

    pub fn worker_joined(&self, id: WorkerId, session: u64, runs: Capabilities, link: Arc<dyn WorkerLink>) {
        self.tell(Command::WorkerJoined { id, session, runs, link });
    }

    /// A worker's session ended (`session`) or its registration expired (`None`).
    pub fn worker_gone(&self, id: WorkerId, session: Option<u64>) {
        self.tell(Command::WorkerGone { id, session });
    }

    pub fn outcome(&self, worker: WorkerId, outcome: BatchOutcome) {
        self.tell(Command::Outcome { worker, outcome });
    }

    /// A worker has its job's predictor ready.
    pub fn started(&self, worker: WorkerId, job_id: String) {
        self.tell(Command::Started { worker, job_id });
    }

    /// A worker gave a job back; `failure` if the job's predictor could not start.
    pub fn released(&self, worker: WorkerId, job_id: String, failure: Option<String>) {
        self.tell(Command::Released { worker, job_id, failure });
    }

    /// Fails a batch whose deliveries ran out with no outcome; returns once
    /// that is durable.
    pub async fn exhausted(&self, job_id: String, seq: u64, items: u64, deliveries: u64) -> Result<(), SchedulerError> {
        let (reply, done) = oneshot::channel();
        self.tell(Command::Exhausted { job_id, seq, items, deliveries, reply });
        done.await.map_err(|_| SchedulerError::Stopped)
    }

    pub fn enqueue_progress(&self, job_id: String, progress: EnqueueProgress) {
        self.tell(Command::Enqueue { job_id, progress });
    }
}

/// The lister's refusal of a source given in request field `field`: bad
/// input names the field; anything else is the cluster's trouble.
fn bad_source(status: tonic::Status, field: &str) -> SchedulerError {
    match status.code() {
        tonic::Code::InvalidArgument
        | tonic::Code::NotFound
        | tonic::Code::PermissionDenied
        | tonic::Code::Unauthenticated
        | tonic::Code::FailedPrecondition => {
            SchedulerError::BadSource { field: field.to_owned(), message: status.message().to_owned() }
        }
        _ => SchedulerError::Staging { message: format!("checking the input: {}", status.message()) },
    }
}

async fn handle(state: &mut State, command: Command) {
    match command {
        Command::Submit { record, reply } => {
            let _ = reply.send(state.submit(*record).await);
        }
        Command::Get { id, reply } => {
            let _ = reply.send(state.get(&id));
        }
        Command::List { after, limit, pipeline, reply } => {
            let _ = reply.send(state.list(after.as_ref(), limit, pipeline.as_deref()));
        }
        Command::Cancel { id, reply } => {
            let _ = reply.send(state.cancel(&id).await);
        }
        Command::Watch { id, reply } => {
            let _ = reply.send(state.watch(&id));
        }
        Command::WorkerJoined { id, session, runs, link } => state.worker_joined(id, session, runs, link),
        Command::WorkerGone { id, session } => state.worker_gone(&id, session),
        Command::Outcome { worker, outcome } => state.outcome(&worker, outcome),
        Command::Released { worker, job_id, failure } => state.released(&worker, &job_id, failure).await,
        Command::Started { worker, job_id } => state.started(&worker, &job_id),
        Command::Enqueue { job_id, progress } => state.enqueue_progress(&job_id, progress).await,
        Command::Exhausted { job_id, seq, items, deliveries, reply } => {
            state.exhausted(&job_id, seq, items, deliveries, reply);
        }
        Command::DeadLetters { id, from, limit, reply } => {
            let _ = reply.send(state.dead_letters(&id, from, limit).await);
        }
        Command::Rerun { id, batch_ids, reply } => {
            let _ = reply.send(state.rerun(&id, &batch_ids).await);
        }
    }
}
