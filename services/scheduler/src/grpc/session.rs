//! `WorkerService/Session`: one bidirectional stream per worker.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use batchmill_core::WorkerId;
use batchmill_proto::scheduler::v1::{self as pb, session_request::Message as In};
use futures::StreamExt;
use futures::stream::BoxStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn};

use crate::leader::Leading;

/// The protocol version this scheduler speaks.
pub const PROTOCOL_VERSION: pb::ProtocolVersion = pb::ProtocolVersion::ProtocolVersion1;

#[derive(Clone)]
pub struct SessionGrpc {
    leading: Leading,
    sessions: Arc<AtomicU64>,
}

impl SessionGrpc {
    pub fn new(leading: Leading) -> SessionGrpc {
        SessionGrpc { leading, sessions: Arc::default() }
    }

    pub fn into_service(self) -> pb::worker_service_server::WorkerServiceServer<SessionGrpc> {
        pb::worker_service_server::WorkerServiceServer::new(self)
    }
}

/// Checks a worker's first message.
fn check_register(first: Option<pb::SessionRequest>) -> Result<pb::Register, Status> {
    let register = match first.and_then(|m| m.message) {
        Some(In::Register(r)) => r,
        _ => {
            return Err(Status::failed_precondition("the first message of a session must be register"));
        }
    };
    if register.protocol_version != PROTOCOL_VERSION as i32 {
        return Err(Status::failed_precondition(format!(
            "worker protocol version {} is not supported; this scheduler speaks {}",
            register.protocol_version, PROTOCOL_VERSION as i32
        )));
    }
    if register.worker_id.is_empty() {
        return Err(batchmill_core::FieldViolation::new("register.worker_id", "must not be empty").into());
    }
    Ok(register)
}

#[tonic::async_trait]
impl pb::worker_service_server::WorkerService for SessionGrpc {
    type SessionStream = BoxStream<'static, Result<pb::SessionResponse, Status>>;

    /// A session lasts as long as this leader's term: when the term ends
    /// the stream ends, and the worker looks for the leader again.
    async fn session(
        &self,
        request: Request<Streaming<pb::SessionRequest>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let term = self.leading.current()?;
        let mut inbound = request.into_inner();
        let register = check_register(inbound.message().await?)?;
        let worker = WorkerId::new(register.worker_id);
        let session = self.sessions.fetch_add(1, Ordering::Relaxed) + 1;
        info!(worker_id = %worker, device = %register.device, session, "worker session opened");
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let runs = crate::Capabilities {
            built_in: register.pipelines,
            predictor_types: register.predictor_types,
            gpu_count: register.gpu_count,
            gpu_name: register.gpu_name,
            gpu_memory_bytes: register.gpu_memory_bytes,
        };
        let scheduler = term.scheduler.clone();
        scheduler.worker_joined(worker.clone(), session, runs, Arc::new(tx));
        let ended = term.ended.clone();
        tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    () = ended.cancelled() => break,
                    message = inbound.message() => message,
                };
                match message {
                    Ok(Some(pb::SessionRequest { message: Some(message) })) => forward(&scheduler, &worker, message),
                    Ok(Some(pb::SessionRequest { message: None })) => {}
                    Ok(None) => break,
                    Err(e) => {
                        warn!(worker_id = %worker, error = %e, "worker session broke");
                        break;
                    }
                }
            }
            scheduler.worker_gone(worker, session);
        });
        let outbound = tokio_stream::wrappers::UnboundedReceiverStream::new(rx).map(Ok);
        Ok(Response::new(outbound.take_until(term.ended.cancelled_owned()).boxed()))
    }
}

/// Hands one message of a worker's session to the scheduler.
fn forward(scheduler: &crate::Scheduler, worker: &WorkerId, message: In) {
    match message {
        In::Outcome(outcome) => scheduler.outcome(worker.clone(), outcome),
        In::Released(r) if r.handed_back => scheduler.handed_back(worker.clone(), r.job_id),
        In::Released(r) => {
            let failure = r.failed.then_some((r.reason, r.out_of_memory));
            scheduler.released(worker.clone(), r.job_id, failure);
        }
        In::Started(s) => scheduler.started(worker.clone(), s.job_id),
        In::Heartbeat(_) => {}
        In::Register(_) => warn!(worker_id = %worker, "register sent twice; ignored"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn register(version: i32, id: &str) -> Option<pb::SessionRequest> {
        Some(pb::SessionRequest {
            message: Some(In::Register(pb::Register {
                worker_id: id.into(),
                protocol_version: version,
                device: "cpu".into(),
                pipelines: vec!["echo".into()],
                ..Default::default()
            })),
        })
    }

    #[test]
    fn refuses_another_protocol_version() {
        let err = check_register(register(2, "w1")).unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
        assert!(err.message().contains("protocol version 2"), "{}", err.message());
    }

    #[test]
    fn requires_register_first() {
        let heartbeat =
            Some(pb::SessionRequest { message: Some(In::Heartbeat(pb::Heartbeat { batches_processed: 0 })) });
        assert_eq!(check_register(heartbeat).unwrap_err().code(), tonic::Code::FailedPrecondition);
        assert_eq!(check_register(register(1, "")).unwrap_err().code(), tonic::Code::InvalidArgument);
        assert!(check_register(register(1, "w1")).is_ok());
    }
}
