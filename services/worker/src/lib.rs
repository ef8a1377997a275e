//! A worker runs batches: one process per GPU (or CPU).
//!
//! RPCs served: health and reflection only. Depends on: etcd (registration
//! under a lease at `/batchmill/workers/<id>`; the scheduler leader's
//! address), the scheduler (one `WorkerService/Session` stream: assignments
//! in, outcomes out), JetStream (pulls the assigned job's batches) and S3
//! (writes results). On SIGTERM it stops pulling, finishes the batch in
//! hand, gives its assignment back and exits.

pub mod device;
pub mod predictor;
mod runner;
mod session;

use std::time::Duration;

use batchmill_blob::Blob;
use batchmill_coord::{Etcd, LeaderChannel};
use batchmill_core::WorkerId;
use batchmill_proto::scheduler::v1::{self as pb, session_response::Message as In};
use batchmill_queue::JetStreamQueue;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use runner::JobRun;
pub use runner::backoff;
use session::Outbox;

/// Prefix of worker registrations; must match the scheduler's.
pub const WORKERS_PREFIX: &str = "/batchmill/workers/";
/// The scheduler's leader election.
pub const SCHEDULER_ELECTION: &str = "/batchmill/scheduler/leader";
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
                                assign,
                                queue: self.queue.clone(),
                                blob: self.blob.clone(),
                                outbox: outbox.clone(),
                                worker_id: self.id.to_string(),
                            };
                            let task = tokio::spawn(run.run(stop.clone()));
                            current = Some(Current { job_id, stop, task });
                        }
                        In::Revoke(revoke) => {
                            if current.as_ref().is_some_and(|c| c.job_id == revoke.job_id) {
                                info!(job_id = %revoke.job_id, reason = %revoke.reason, "revoked");
                                if let Some(c) = current.take() {
                                    c.stop.cancel();
                                }
                            }
                        }
                        In::OutcomeAck(ack) => outbox.confirm(&ack),
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
}
