//! The public `JobService`: validates each request where it arrives, then
//! forwards it to the scheduler leader (found through etcd).

use batchmill_coord::LeaderChannel;
use batchmill_core::{ErrorCode, FieldViolation, JobSpec, RemoteError};
use batchmill_proto::jobs::v1::{self as pb, job_service_client::JobServiceClient, job_service_server::JobService};
use batchmill_proto::pipelines::v1::{
    self as ppb, pipeline_service_client::PipelineServiceClient, pipeline_service_server::PipelineService,
};
use futures::StreamExt;
use futures::stream::BoxStream;
use tonic::{Request, Response, Status};
use tracing::instrument;

/// Most bytes of one request to the public API, as Cortex (and API Gateway).
pub const MAX_REQUEST_BYTES: usize = 10 * 1024 * 1024;
/// Most bytes gRPC decodes; a request between this and [`MAX_REQUEST_BYTES`]
/// is refused with a message naming the limit.
const MAX_DECODED_BYTES: usize = 16 * 1024 * 1024;

/// Refuses a request over [`MAX_REQUEST_BYTES`], naming the limit.
fn check_size<T: prost::Message>(request: &Request<T>) -> Result<(), Status> {
    let size = request.get_ref().encoded_len();
    if size > MAX_REQUEST_BYTES {
        return Err(Status::new(
            ErrorCode::PayloadTooLarge.grpc(),
            format!(
                "the request is {size} bytes, over the 10 MiB ({MAX_REQUEST_BYTES}-byte) request limit; \
                 submit large inputs as files in S3 (file_path_lister, delimited_files)"
            ),
        ));
    }
    Ok(())
}

#[derive(Clone)]
pub struct JobsForwarder {
    leader: LeaderChannel,
}

impl JobsForwarder {
    pub fn new(leader: LeaderChannel) -> JobsForwarder {
        JobsForwarder { leader }
    }

    pub fn into_service(self) -> pb::job_service_server::JobServiceServer<JobsForwarder> {
        pb::job_service_server::JobServiceServer::new(self)
            .max_decoding_message_size(MAX_DECODED_BYTES)
            .max_encoding_message_size(64 * 1024 * 1024)
    }

    /// A channel to the scheduler leader.
    async fn channel(&self) -> Result<tonic::transport::Channel, Status> {
        self.leader.channel().await.map_err(|e| Status::unavailable(format!("no scheduler leader: {e}")))
    }

    async fn client(&self) -> Result<JobServiceClient<tonic::transport::Channel>, Status> {
        Ok(JobServiceClient::new(self.channel().await?)
            .max_decoding_message_size(64 * 1024 * 1024)
            .max_encoding_message_size(64 * 1024 * 1024))
    }

    /// Forgets the leader when it could not be reached, so the next call
    /// resolves it again.
    /// A connection to the leader lost mid-call (it died, say) is UNAVAILABLE
    /// too, not UNKNOWN or CANCELLED (hyper reports a reset stream as
    /// cancelled): the client should retry once a new leader serves. The
    /// gateway never cancels a forwarded call itself; a client that cancels
    /// drops this future and sees no status.
    async fn check<T>(&self, result: Result<Response<T>, Status>) -> Result<Response<T>, Status> {
        let status = match result {
            Ok(response) => return Ok(Response::new(response.into_inner())),
            Err(status) => status,
        };
        let remote = RemoteError::from(&status);
        if remote.is_retryable() {
            self.leader.invalidate().await;
        }
        if remote.lost {
            return Err(Status::unavailable("the connection to the scheduler leader was lost; retry"));
        }
        // The leader's own answer goes back as it came, field violations and all.
        Err(status)
    }
}

/// The request message alone, with the caller's identity, the metadata
/// worth passing on and the current trace (this call's span, a child of the
/// caller's trace). A request no key was checked for goes nowhere.
#[allow(clippy::result_large_err)]
fn onward<T>(request: Request<T>) -> Result<Request<T>, Status> {
    let caller = crate::auth::caller(&request)?;
    let (metadata, _, message) = request.into_parts();
    let mut onward = batchmill_runtime::trace::request(message);
    if let Some(v) = metadata.get("x-request-id") {
        onward.metadata_mut().insert("x-request-id", v.clone());
    }
    caller.write(onward.metadata_mut());
    Ok(onward)
}

#[tonic::async_trait]
impl JobService for JobsForwarder {
    #[instrument(skip_all)]
    async fn submit_job(
        &self,
        request: Request<pb::SubmitJobRequest>,
    ) -> Result<Response<pb::SubmitJobResponse>, Status> {
        // Refuse bad input here, before it crosses the cluster (the sizes of
        // inline items' batches are checked where the job is made).
        check_size(&request)?;
        let mut request = request;
        JobSpec::check(request.get_mut())?;
        let result = self.client().await?.submit_job(onward(request)?).await;
        self.check(result).await
    }

    #[instrument(skip_all)]
    async fn get_job(&self, request: Request<pb::GetJobRequest>) -> Result<Response<pb::GetJobResponse>, Status> {
        let result = self.client().await?.get_job(onward(request)?).await;
        self.check(result).await
    }

    #[instrument(skip_all)]
    async fn list_jobs(&self, request: Request<pb::ListJobsRequest>) -> Result<Response<pb::ListJobsResponse>, Status> {
        let result = self.client().await?.list_jobs(onward(request)?).await;
        self.check(result).await
    }

    #[instrument(skip_all)]
    async fn cancel_job(
        &self,
        request: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::CancelJobResponse>, Status> {
        let result = self.client().await?.cancel_job(onward(request)?).await;
        self.check(result).await
    }

    #[instrument(skip_all)]
    async fn retry_job(&self, request: Request<pb::RetryJobRequest>) -> Result<Response<pb::RetryJobResponse>, Status> {
        let result = self.client().await?.retry_job(onward(request)?).await;
        self.check(result).await
    }

    #[instrument(skip_all)]
    async fn retry_failed_items(
        &self,
        request: Request<pb::RetryFailedItemsRequest>,
    ) -> Result<Response<pb::RetryFailedItemsResponse>, Status> {
        let result = self.client().await?.retry_failed_items(onward(request)?).await;
        self.check(result).await
    }

    #[instrument(skip_all)]
    async fn dry_run_job(
        &self,
        request: Request<pb::DryRunJobRequest>,
    ) -> Result<Response<pb::DryRunJobResponse>, Status> {
        check_size(&request)?;
        let job = request.get_ref().job.clone().ok_or_else(|| FieldViolation::new("job", "must be set"))?;
        JobSpec::try_from(job)?;
        let result = self.client().await?.dry_run_job(onward(request)?).await;
        self.check(result).await
    }

    #[instrument(skip_all)]
    async fn list_dead_letters(
        &self,
        request: Request<pb::ListDeadLettersRequest>,
    ) -> Result<Response<pb::ListDeadLettersResponse>, Status> {
        let result = self.client().await?.list_dead_letters(onward(request)?).await;
        self.check(result).await
    }

    #[instrument(skip_all)]
    async fn list_batches(
        &self,
        request: Request<pb::ListBatchesRequest>,
    ) -> Result<Response<pb::ListBatchesResponse>, Status> {
        let result = self.client().await?.list_batches(onward(request)?).await;
        self.check(result).await
    }

    #[instrument(skip_all)]
    async fn rerun_dead_letters(
        &self,
        request: Request<pb::RerunDeadLettersRequest>,
    ) -> Result<Response<pb::RerunDeadLettersResponse>, Status> {
        let result = self.client().await?.rerun_dead_letters(onward(request)?).await;
        self.check(result).await
    }

    #[instrument(skip_all)]
    async fn list_job_results(
        &self,
        request: Request<pb::ListJobResultsRequest>,
    ) -> Result<Response<pb::ListJobResultsResponse>, Status> {
        let result = self.client().await?.list_job_results(onward(request)?).await;
        self.check(result).await
    }

    #[instrument(skip_all)]
    async fn list_outputs(
        &self,
        request: Request<pb::ListOutputsRequest>,
    ) -> Result<Response<pb::ListOutputsResponse>, Status> {
        let result = self.client().await?.list_outputs(onward(request)?).await;
        self.check(result).await
    }

    type StreamJobLogsStream = BoxStream<'static, Result<pb::StreamJobLogsResponse, Status>>;

    #[instrument(skip_all)]
    async fn stream_job_logs(
        &self,
        request: Request<pb::StreamJobLogsRequest>,
    ) -> Result<Response<Self::StreamJobLogsStream>, Status> {
        let result = self.client().await?.stream_job_logs(onward(request)?).await;
        let stream = self.check(result).await?.into_inner();
        Ok(Response::new(stream.boxed()))
    }

    #[instrument(skip_all)]
    async fn list_job_events(
        &self,
        request: Request<pb::ListJobEventsRequest>,
    ) -> Result<Response<pb::ListJobEventsResponse>, Status> {
        let result = self.client().await?.list_job_events(onward(request)?).await;
        self.check(result).await
    }

    type WatchJobEventsStream = BoxStream<'static, Result<pb::WatchJobEventsResponse, Status>>;

    #[instrument(skip_all)]
    async fn watch_job_events(
        &self,
        request: Request<pb::WatchJobEventsRequest>,
    ) -> Result<Response<Self::WatchJobEventsStream>, Status> {
        let result = self.client().await?.watch_job_events(onward(request)?).await;
        let stream = self.check(result).await?.into_inner();
        Ok(Response::new(stream.boxed()))
    }

    type WatchJobStream = BoxStream<'static, Result<pb::WatchJobResponse, Status>>;

    #[instrument(skip_all)]
    async fn watch_job(&self, request: Request<pb::WatchJobRequest>) -> Result<Response<Self::WatchJobStream>, Status> {
        let result = self.client().await?.watch_job(onward(request)?).await;
        let stream = self.check(result).await?.into_inner();
        Ok(Response::new(stream.boxed()))
    }
}

/// The public `PipelineService`, forwarded to the scheduler leader.
#[derive(Clone)]
pub struct PipelinesForwarder {
    jobs: JobsForwarder,
}

impl PipelinesForwarder {
    pub fn new(jobs: JobsForwarder) -> PipelinesForwarder {
        PipelinesForwarder { jobs }
    }

    pub fn into_service(self) -> ppb::pipeline_service_server::PipelineServiceServer<PipelinesForwarder> {
        ppb::pipeline_service_server::PipelineServiceServer::new(self)
            .max_decoding_message_size(MAX_DECODED_BYTES)
            .max_encoding_message_size(64 * 1024 * 1024)
    }

    async fn client(&self) -> Result<PipelineServiceClient<tonic::transport::Channel>, Status> {
        Ok(PipelineServiceClient::new(self.jobs.channel().await?)
            .max_decoding_message_size(64 * 1024 * 1024)
            .max_encoding_message_size(64 * 1024 * 1024))
    }
}

#[tonic::async_trait]
impl PipelineService for PipelinesForwarder {
    #[instrument(skip_all)]
    async fn deploy_pipeline(
        &self,
        request: Request<ppb::DeployPipelineRequest>,
    ) -> Result<Response<ppb::DeployPipelineResponse>, Status> {
        check_size(&request)?;
        let result = self.client().await?.deploy_pipeline(onward(request)?).await;
        self.jobs.check(result).await
    }

    #[instrument(skip_all)]
    async fn list_pipelines(
        &self,
        request: Request<ppb::ListPipelinesRequest>,
    ) -> Result<Response<ppb::ListPipelinesResponse>, Status> {
        let result = self.client().await?.list_pipelines(onward(request)?).await;
        self.jobs.check(result).await
    }

    #[instrument(skip_all)]
    async fn get_pipeline(
        &self,
        request: Request<ppb::GetPipelineRequest>,
    ) -> Result<Response<ppb::GetPipelineResponse>, Status> {
        let result = self.client().await?.get_pipeline(onward(request)?).await;
        self.jobs.check(result).await
    }

    #[instrument(skip_all)]
    async fn get_pipeline_version(
        &self,
        request: Request<ppb::GetPipelineVersionRequest>,
    ) -> Result<Response<ppb::GetPipelineVersionResponse>, Status> {
        let result = self.client().await?.get_pipeline_version(onward(request)?).await;
        self.jobs.check(result).await
    }
}
