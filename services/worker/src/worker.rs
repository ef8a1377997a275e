//! A worker's life: it holds one session at a time with the scheduler
//! leader (found in etcd), runs the job it is assigned, and reconnects to
//! whoever leads after a session ends. Its outbox outlives sessions, so an
//! outcome reported on a session that broke goes out again on the next.

use std::sync::Arc;
use std::time::Duration;

use batchmill_blob::ObjectStore;
use batchmill_coord::{Etcd, LeaderChannel, SCHEDULER_ELECTION};
use batchmill_core::{RemoteError, WorkerId};
use batchmill_proto::scheduler::v1::{self as pb, session_response::Message as In};
use batchmill_queue::Queue;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::device::Device;
use crate::joblog::JobLog;
use crate::loader::Loader;
use crate::predictor;
use crate::runner::{Inputs, JobRun};
use crate::session::Outbox;

/// How long a batch in hand may take to finish when draining.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a session ended other than by a drain.
#[derive(Debug, thiserror::Error)]
enum SessionEnd {
    #[error("no scheduler leader: {0}")]
    NoLeader(#[from] batchmill_coord::CoordError),
    #[error("the scheduler: {0}")]
    Scheduler(#[from] RemoteError),
    #[error("the scheduler closed the session")]
    Closed,
}

/// A worker's wiring.
pub struct Worker {
    pub id: WorkerId,
    pub device: Device,
    pub etcd: Etcd,
    pub queue: Arc<dyn Queue>,
    pub blob: Arc<dyn ObjectStore>,
    /// TTL of a completion-hook claim's lease.
    pub claim_ttl: Duration,
    /// Reports SERVING only while a scheduler session is open.
    pub health: batchmill_runtime::health::Health,
    /// Loads (and keeps) the assigned job's predictor.
    pub loader: Loader,
    /// The cluster's S3 settings, over which a job's own access is built.
    pub s3: batchmill_blob::S3Config,
}

/// The job this worker runs now.
struct Current {
    job_id: String,
    /// Stops taking its batches.
    stop: CancellationToken,
    /// The job was taken away: batches in hand stop waiting out outages.
    revoked: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Worker {
    /// Serves the scheduler until `shutdown`, reconnecting to whoever leads
    /// after a session breaks.
    pub async fn run(self, shutdown: CancellationToken) {
        let leader =
            LeaderChannel::new(self.etcd.clone(), SCHEDULER_ELECTION).dialing(batchmill_runtime::dial::channel);
        let outbox = Outbox::default();
        info!(worker_id = %self.id, device = %self.device, "looking for the scheduler");
        while !shutdown.is_cancelled() {
            match self.session(&leader, &outbox, &shutdown).await {
                Ok(()) => break,
                Err(e) => {
                    warn!(error = %e, "scheduler session ended; reconnecting");
                    leader.invalidate().await;
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
        info!("worker stopped");
    }

    /// The Register message this worker opens a session with.
    fn register(&self) -> pb::SessionRequest {
        let (gpu_count, gpu_name, gpu_memory_bytes) = self.device.gpus();
        pb::SessionRequest {
            message: Some(pb::session_request::Message::Register(pb::Register {
                worker_id: self.id.to_string(),
                protocol_version: pb::ProtocolVersion::ProtocolVersion1 as i32,
                device: self.device.to_string(),
                pipelines: predictor::BUILT_IN.iter().map(|s| (*s).to_owned()).collect(),
                predictor_types: self.loader.predictor_types(),
                gpu_count,
                gpu_name,
                gpu_memory_bytes,
            })),
        }
    }

    /// One session; Ok after a clean drain, Err when the session broke.
    async fn session(
        &self,
        leader: &LeaderChannel,
        outbox: &Outbox,
        shutdown: &CancellationToken,
    ) -> Result<(), SessionEnd> {
        let channel = leader.channel().await?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let _ = tx.send(self.register());
        let mut inbound = pb::worker_service_client::WorkerServiceClient::new(channel)
            .session(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
            .await
            .map_err(RemoteError::from)?
            .into_inner();
        // Outcomes left unconfirmed by the last session go out on this one.
        outbox.attach(tx);
        let mut current: Option<Current> = None;
        let mut heartbeat = tokio::time::interval(Duration::from_secs(5));
        let result = loop {
            tokio::select! {
                () = shutdown.cancelled() => break Ok(()),
                _ = heartbeat.tick() => {
                    outbox.send(pb::session_request::Message::Heartbeat(pb::Heartbeat::default()));
                }
                message = inbound.message() => match message {
                    Ok(Some(pb::SessionResponse { message: Some(m) })) => self.handle(m, outbox, &mut current).await,
                    Ok(Some(pb::SessionResponse { message: None })) => {}
                    Ok(None) => break Err(SessionEnd::Closed),
                    Err(status) => break Err(SessionEnd::Scheduler(RemoteError::from(status))),
                }
            }
        };
        self.health.set_serving(false).await;
        if let Some(c) = current.take() {
            c.stop.cancel();
            if result.is_ok() {
                // Draining: finish the batches in hand while the session lives.
                let finished = tokio::time::timeout(DRAIN_TIMEOUT, c.task).await.is_ok();
                info!(job_id = %c.job_id, finished, "drained");
                outbox.release(&c.job_id, "drain");
            }
        }
        outbox.detach();
        result
    }

    /// One message from the scheduler.
    async fn handle(&self, message: In, outbox: &Outbox, current: &mut Option<Current>) {
        match message {
            In::Registered(r) => {
                info!(protocol_version = r.protocol_version, device = %self.device, "registered with the scheduler");
                self.health.set_serving(true).await;
            }
            In::Assign(assign) => {
                if let Some(old) = current.take() {
                    old.stop.cancel();
                }
                info!(job_id = %assign.job_id, pipeline = %assign.pipeline, "assigned");
                *current = Some(self.start(assign, outbox));
            }
            In::Revoke(revoke) => {
                if revoke.reason != "completing" {
                    // No completion hook will need it.
                    self.loader.forget(&revoke.job_id);
                }
                if current.as_ref().is_some_and(|c| c.job_id == revoke.job_id)
                    && let Some(c) = current.take()
                {
                    info!(job_id = %revoke.job_id, reason = %revoke.reason, "revoked");
                    c.stop.cancel();
                    // A preempted job's batches in hand are finished and
                    // reported (the job goes on later), then its capacity is
                    // handed back; an ended job's stop waiting out failures.
                    if revoke.reason == "preempted" {
                        let outbox = outbox.clone();
                        tokio::spawn(async move {
                            let _ = c.task.await;
                            info!(job_id = %c.job_id, "finished the preempted job's batches in hand");
                            outbox.hand_back(&c.job_id);
                        });
                    } else {
                        c.revoked.cancel();
                    }
                }
            }
            In::OutcomeAck(ack) => outbox.confirm(&ack),
            In::Finalize(finalize) => {
                let hook = crate::finalize::Hook {
                    etcd: self.etcd.clone(),
                    loader: self.loader.clone(),
                    queue: self.queue.clone(),
                    worker_id: self.id.to_string(),
                    ttl: self.claim_ttl,
                };
                tokio::spawn(hook.run(finalize));
            }
        }
    }

    /// Starts running an assigned job's batches.
    fn start(&self, assign: pb::Assign, outbox: &Outbox) -> Current {
        let (stop, revoked) = (CancellationToken::new(), CancellationToken::new());
        let job_id = assign.job_id.clone();
        let assign_access = assign.input_access.clone();
        let run = JobRun {
            log: JobLog::new(self.queue.clone(), &assign.job_id, self.id.as_str()),
            assign,
            queue: self.queue.clone(),
            blob: self.blob.clone(),
            outbox: outbox.clone(),
            worker_id: self.id.to_string(),
            loader: self.loader.clone(),
            revoked: revoked.clone(),
            inputs: match &assign_access {
                Some(a) => Inputs::Config(self.s3.with_credentials(
                    &a.access_key_id,
                    &a.secret_access_key,
                    &a.region,
                    &a.endpoint,
                )),
                None => Inputs::Store(self.blob.clone()),
            },
        };
        let task = tokio::spawn(run.run(stop.clone()));
        Current { job_id, stop, revoked, task }
    }
}
