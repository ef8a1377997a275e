//! A worker runs batches: one process per GPU (or CPU).
//!
//! RPCs served: health and reflection only. Depends on: etcd (registration
//! under a lease at `/batchmill/workers/<id>`; the scheduler leader's
//! address), the scheduler (one `WorkerService/Session` stream: assignments
//! in, outcomes out), JetStream (pulls the assigned job's batches) and S3
//! (writes results). On SIGTERM it stops pulling, finishes the batch in
//! hand, gives its assignment back and exits.

pub mod device;
pub mod embed;
mod joblog;
mod loader;
pub mod predictor;
pub mod python;
pub mod requirements;
mod runner;
mod session;

use std::time::Duration;

use batchmill_blob::Blob;
use batchmill_coord::{Etcd, LeaderChannel, SCHEDULER_ELECTION};
use batchmill_core::WorkerId;
use batchmill_core::finalize::Finalizing;
use batchmill_proto::scheduler::v1::{self as pb, session_response::Message as In};
use batchmill_queue::JetStreamQueue;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use joblog::JobLog;
pub use loader::Loader;
use runner::JobRun;
pub use runner::backoff;
use session::Outbox;

/// Prefix of worker registrations; must match the scheduler's.
pub const WORKERS_PREFIX: &str = "/batchmill/workers/";
/// How long a batch in hand may take to finish when draining.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// A worker's wiring.
pub struct Worker {
    pub id: WorkerId,
    pub device: device::Device,
    pub etcd: Etcd,
    pub queue: JetStreamQueue,
    pub blob: Blob,
    pub lease_ttl: Duration,
    /// Reports SERVING only while a scheduler session is open.
    pub health: tonic_health::server::HealthReporter,
    /// Loads (and keeps) the assigned job's predictor.
    pub loader: Loader,
}

struct Current {
    job_id: String,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Worker {
    /// Registers, then serves the scheduler until `shutdown`, reconnecting
    /// to whoever leads after a session breaks.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), batchmill_coord::CoordError> {
        let registration = serde_json::json!({
            "device": self.device.to_string(),
            "pipelines": predictor::BUILT_IN,
            "predictor_types": self.loader.predictor_types(),
        });
        let lease = CancellationToken::new();
        let keeper = self
            .etcd
            .register(
                format!("{WORKERS_PREFIX}{}", self.id),
                registration.to_string().into_bytes(),
                self.lease_ttl,
                lease.clone(),
            )
            .await?;
        info!(worker_id = %self.id, device = %self.device, "registered");
        let leader = LeaderChannel::new(self.etcd.clone(), SCHEDULER_ELECTION);
        while !shutdown.is_cancelled() {
            match self.session(&leader, &shutdown).await {
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
        lease.cancel();
        let _ = keeper.await;
        info!("worker stopped");
        Ok(())
    }

    /// One session; Ok after a clean drain, Err when the session broke.
    async fn session(&self, leader: &LeaderChannel, shutdown: &CancellationToken) -> Result<(), String> {
        let channel = leader.channel().await.map_err(|e| e.to_string())?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let outbox = Outbox::new(tx);
        outbox.send(pb::session_request::Message::Register(pb::Register {
            worker_id: self.id.to_string(),
            protocol_version: pb::ProtocolVersion::ProtocolVersion1 as i32,
            device: self.device.to_string(),
            pipelines: predictor::BUILT_IN.iter().map(|s| (*s).to_owned()).collect(),
            predictor_types: self.loader.predictor_types(),
        }));
        let mut inbound = pb::worker_service_client::WorkerServiceClient::new(channel)
            .session(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
            .await
            .map_err(|s| s.to_string())?
            .into_inner();
        let mut current: Option<Current> = None;
        let mut heartbeat = tokio::time::interval(Duration::from_secs(5));
        let result = loop {
            tokio::select! {
                () = shutdown.cancelled() => break Ok(()),
                _ = heartbeat.tick() => {
                    outbox.send(pb::session_request::Message::Heartbeat(pb::Heartbeat::default()));
                }
                message = inbound.message() => match message {
                    Ok(Some(pb::SessionResponse { message: Some(m) })) => match m {
                        In::Registered(r) => {
                            info!(protocol_version = r.protocol_version, "session open");
                            self.health.set_service_status("", tonic_health::ServingStatus::Serving).await;
                        }
                        In::Assign(assign) => {
                            if let Some(old) = current.take() {
                                old.stop.cancel();
                            }
                            info!(job_id = %assign.job_id, pipeline = %assign.pipeline, "assigned");
                            let stop = CancellationToken::new();
                            let job_id = assign.job_id.clone();
                            let run = JobRun {
                                log: JobLog::new(self.queue.clone(), &assign.job_id, self.id.as_str()),
                                assign,
                                queue: self.queue.clone(),
                                blob: self.blob.clone(),
                                outbox: outbox.clone(),
                                worker_id: self.id.to_string(),
                                loader: self.loader.clone(),
                            };
                            let task = tokio::spawn(run.run(stop.clone()));
                            current = Some(Current { job_id, stop, task });
                        }
                        In::Revoke(revoke) => {
                            if revoke.reason != "completing" {
                                // No completion hook will need it.
                                self.loader.forget(&revoke.job_id);
                            }
                            if current.as_ref().is_some_and(|c| c.job_id == revoke.job_id) {
                                info!(job_id = %revoke.job_id, reason = %revoke.reason, "revoked");
                                if let Some(c) = current.take() {
                                    c.stop.cancel();
                                }
                            }
                        }
                        In::OutcomeAck(ack) => outbox.confirm(&ack),
                        In::Finalize(finalize) => {
                            tokio::spawn(self.finalize(finalize));
                        }
                    },
                    Ok(Some(pb::SessionResponse { message: None })) => {}
                    Ok(None) => break Err("the scheduler closed the session".to_owned()),
                    Err(status) => break Err(status.to_string()),
                }
            }
        };
        self.health.set_service_status("", tonic_health::ServingStatus::NotServing).await;
        if let Some(c) = current.take() {
            c.stop.cancel();
            if result.is_ok() {
                // Draining: finish the batch in hand while the session lives.
                let finished = tokio::time::timeout(DRAIN_TIMEOUT, c.task).await.is_ok();
                info!(job_id = %c.job_id, finished, "drained");
                outbox.release(&c.job_id, "drain");
            }
        }
        result
    }

    /// Runs a job's completion hook if this worker can claim it: see
    /// [`batchmill_core::finalize`]. The outcome is written to the claim,
    /// where the scheduler reads it.
    fn finalize(&self, finalize: pb::Finalize) -> impl std::future::Future<Output = ()> + Send + 'static {
        let (etcd, loader, queue, worker_id, ttl) =
            (self.etcd.clone(), self.loader.clone(), self.queue.clone(), self.id.to_string(), self.lease_ttl);
        async move {
            let Some(job) = finalize.job else { return };
            let key = batchmill_core::finalize::finalizer_key(&job.job_id);
            let mut state =
                Finalizing { attempt: finalize.attempt, worker_id: worker_id.clone(), done: false, error: None };
            let claim = match etcd.claim(key, state.encode(), ttl).await {
                Ok(Some(claim)) => claim,
                Ok(None) => {
                    info!(job_id = %job.job_id, "completion hook already claimed");
                    return;
                }
                Err(e) => {
                    warn!(job_id = %job.job_id, error = %e, "claiming the completion hook failed");
                    return;
                }
            };
            let log = JobLog::new(queue, &job.job_id, &worker_id);
            let metrics = serde_json::Value::Object(
                finalize.metrics.as_ref().map(batchmill_core::json::struct_to_json).unwrap_or_default(),
            );
            let started = std::time::Instant::now();
            let ran = async {
                let predictor = loader.load(&job).await?;
                tokio::task::spawn_blocking(move || predictor.on_job_complete(&metrics))
                    .await
                    .map_err(|e| format!("on_job_complete panicked: {e}"))?
            }
            .await;
            loader.forget(&job.job_id);
            let elapsed = started.elapsed().as_millis();
            match &ran {
                Ok(true) => log.line("", "INFO", format!("on_job_complete finished in {elapsed} ms")).await,
                Ok(false) => {}
                Err(e) => log.line("", "ERROR", format!("on_job_complete failed after {elapsed} ms: {e}")).await,
            }
            info!(job_id = %job.job_id, ok = ran.is_ok(), "completion hook done");
            state.done = true;
            state.error = ran.err();
            if let Err(e) = claim.finish(state.encode()).await {
                warn!(job_id = %job.job_id, error = %e, "recording the completion hook's outcome failed");
            }
        }
    }
}
