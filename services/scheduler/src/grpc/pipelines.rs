//! `PipelineService` on the scheduler: the pipelines jobs may name.

use batchmill_core::{Caller, ServiceError};
use batchmill_proto::pipelines::v1::{self as pb, pipeline_service_server::PipelineService};
use tonic::{Request, Response, Status};

use crate::leader::Leading;

#[derive(Clone)]
pub struct PipelinesGrpc {
    leading: Leading,
}

impl PipelinesGrpc {
    pub fn new(leading: Leading) -> PipelinesGrpc {
        PipelinesGrpc { leading }
    }

    /// The pipelines of the current term; UNAVAILABLE when not leading.
    #[allow(clippy::result_large_err)]
    fn pipelines(&self) -> Result<crate::Pipelines, Status> {
        Ok(self.leading.current()?.scheduler.pipelines().clone())
    }

    pub fn into_service(self) -> pb::pipeline_service_server::PipelineServiceServer<PipelinesGrpc> {
        pb::pipeline_service_server::PipelineServiceServer::new(self)
            .max_decoding_message_size(16 * 1024 * 1024)
            .max_encoding_message_size(16 * 1024 * 1024)
    }
}

#[tonic::async_trait]
impl PipelineService for PipelinesGrpc {
    async fn list_pipelines(
        &self,
        request: Request<pb::ListPipelinesRequest>,
    ) -> Result<Response<pb::ListPipelinesResponse>, Status> {
        Caller::read(request.metadata())?;
        Ok(Response::new(pb::ListPipelinesResponse { pipelines: self.pipelines()?.list() }))
    }

    async fn get_pipeline(
        &self,
        request: Request<pb::GetPipelineRequest>,
    ) -> Result<Response<pb::GetPipelineResponse>, Status> {
        Caller::read(request.metadata())?;
        let name = request.into_inner().name;
        match self.pipelines()?.get(&name) {
            Some(pipeline) => Ok(Response::new(pb::GetPipelineResponse { pipeline: Some(pipeline) })),
            None => Err(Status::not_found(format!("pipeline {name:?} not found"))),
        }
    }

    async fn get_pipeline_version(
        &self,
        request: Request<pb::GetPipelineVersionRequest>,
    ) -> Result<Response<pb::GetPipelineVersionResponse>, Status> {
        Caller::read(request.metadata())?;
        let pb::GetPipelineVersionRequest { name, version } = request.into_inner();
        match self.pipelines()?.version(&name, version).await.map_err(|e| e.to_status())? {
            Some(pipeline) => Ok(Response::new(pb::GetPipelineVersionResponse { pipeline: Some(pipeline) })),
            None => Err(Status::not_found(format!("pipeline {name:?} has no version {version}"))),
        }
    }

    async fn deploy_pipeline(
        &self,
        request: Request<pb::DeployPipelineRequest>,
    ) -> Result<Response<pb::DeployPipelineResponse>, Status> {
        let caller = Caller::read(request.metadata())?;
        let pipeline = self.pipelines()?.deploy(request.into_inner(), &caller).await.map_err(|e| e.to_status())?;
        Ok(Response::new(pb::DeployPipelineResponse { pipeline: Some(pipeline) }))
    }
}
