//! The gRPC adapter of [`Enqueuer`].

use batchmill_core::ServiceError;
use batchmill_proto::enqueuer::v1 as pb;
use tonic::{Request, Response, Status};
use tracing::instrument;

use crate::Enqueuer;

/// Serves [`Enqueuer`] as `EnqueuerService`.
#[derive(Clone)]
pub struct EnqueuerGrpc {
    enqueuer: Enqueuer,
}

impl EnqueuerGrpc {
    pub fn new(enqueuer: Enqueuer) -> EnqueuerGrpc {
        EnqueuerGrpc { enqueuer }
    }

    pub fn into_service(self) -> pb::enqueuer_service_server::EnqueuerServiceServer<EnqueuerGrpc> {
        pb::enqueuer_service_server::EnqueuerServiceServer::new(self)
    }
}

#[tonic::async_trait]
impl pb::enqueuer_service_server::EnqueuerService for EnqueuerGrpc {
    #[instrument(skip_all, fields(job_id = %request.get_ref().job_id))]
    async fn enqueue_job(
        &self,
        request: Request<pb::EnqueueJobRequest>,
    ) -> Result<Response<pb::EnqueueJobResponse>, Status> {
        let started = self.enqueuer.enqueue(request.into_inner()).await.map_err(|e| e.to_status())?;
        Ok(Response::new(pb::EnqueueJobResponse { started }))
    }

    #[instrument(skip_all, fields(job_id = %request.get_ref().job_id))]
    async fn stop_enqueue(
        &self,
        request: Request<pb::StopEnqueueRequest>,
    ) -> Result<Response<pb::StopEnqueueResponse>, Status> {
        let was_running = self.enqueuer.stop(&request.get_ref().job_id).await.map_err(|e| e.to_status())?;
        Ok(Response::new(pb::StopEnqueueResponse { was_running }))
    }
}
