//! `JobService` on the scheduler: converts requests, calls [`Scheduler`].

use batchmill_core::{JobId, JobSpec, ServiceError};
use batchmill_proto::jobs::v1::{self as pb, job_service_server::JobService};
use futures::StreamExt;
use futures::stream::BoxStream;
use tonic::{Request, Response, Status};
use tracing::instrument;

use crate::Scheduler;

/// Default and largest page of `ListJobs`.
const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: i32 = 1000;

#[derive(Clone)]
pub struct JobsGrpc {
    scheduler: Scheduler,
}

impl JobsGrpc {
    pub fn new(scheduler: Scheduler) -> JobsGrpc {
        JobsGrpc { scheduler }
    }

    pub fn into_service(self) -> pb::job_service_server::JobServiceServer<JobsGrpc> {
        pb::job_service_server::JobServiceServer::new(self)
            .max_decoding_message_size(16 * 1024 * 1024)
            .max_encoding_message_size(16 * 1024 * 1024)
    }
}

fn job_id(s: &str) -> Result<JobId, Status> {
    JobId::parse("job_id", s).map_err(Status::from)
}

#[tonic::async_trait]
impl JobService for JobsGrpc {
    #[instrument(skip_all, fields(pipeline = %request.get_ref().pipeline))]
    async fn submit_job(
        &self,
        request: Request<pb::SubmitJobRequest>,
    ) -> Result<Response<pb::SubmitJobResponse>, Status> {
        let spec = JobSpec::try_from(request.into_inner())?;
        let job = self.scheduler.submit(spec).await.map_err(|e| e.to_status())?;
        Ok(Response::new(pb::SubmitJobResponse { job: Some(job) }))
    }

    #[instrument(skip_all, fields(job_id = %request.get_ref().job_id))]
    async fn get_job(&self, request: Request<pb::GetJobRequest>) -> Result<Response<pb::GetJobResponse>, Status> {
        let job = self.scheduler.get(job_id(&request.get_ref().job_id)?).await.map_err(|e| e.to_status())?;
        Ok(Response::new(pb::GetJobResponse { job: Some(job) }))
    }

    #[instrument(skip_all)]
    async fn list_jobs(&self, request: Request<pb::ListJobsRequest>) -> Result<Response<pb::ListJobsResponse>, Status> {
        let req = request.into_inner();
        if !(0..=MAX_PAGE).contains(&req.page_size) {
            return Err(
                batchmill_core::FieldViolation::new("page_size", format!("must be between 0 and {MAX_PAGE}")).into()
            );
        }
        let limit = if req.page_size == 0 { DEFAULT_PAGE } else { req.page_size as usize };
        let after = if req.page_token.is_empty() {
            None
        } else {
            Some(JobId::parse("page_token", &req.page_token).map_err(Status::from)?)
        };
        let (jobs, next) = self.scheduler.list(after, limit).await.map_err(|e| e.to_status())?;
        Ok(Response::new(pb::ListJobsResponse {
            jobs,
            next_page_token: next.map(|id| id.to_string()).unwrap_or_default(),
        }))
    }

    #[instrument(skip_all, fields(job_id = %request.get_ref().job_id))]
    async fn cancel_job(
        &self,
        request: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::CancelJobResponse>, Status> {
        let job = self.scheduler.cancel(job_id(&request.get_ref().job_id)?).await.map_err(|e| e.to_status())?;
        Ok(Response::new(pb::CancelJobResponse { job: Some(job) }))
    }

    type WatchJobStream = BoxStream<'static, Result<pb::WatchJobResponse, Status>>;

    #[instrument(skip_all, fields(job_id = %request.get_ref().job_id))]
    async fn watch_job(&self, request: Request<pb::WatchJobRequest>) -> Result<Response<Self::WatchJobStream>, Status> {
        let rx = self.scheduler.watch(job_id(&request.get_ref().job_id)?).await.map_err(|e| e.to_status())?;
        // Current state first, then each change; the stream ends after a terminal state.
        let stream = futures::stream::unfold((rx, false, false), |(mut rx, started, ended)| async move {
            if ended {
                return None;
            }
            if started && rx.changed().await.is_err() {
                return None;
            }
            let job = rx.borrow_and_update().clone();
            let terminal = pb::JobState::try_from(job.state).is_ok_and(|s| {
                matches!(
                    s,
                    pb::JobState::Succeeded
                        | pb::JobState::CompletedWithFailures
                        | pb::JobState::Failed
                        | pb::JobState::TimedOut
                        | pb::JobState::Cancelled
                )
            });
            Some((Ok(pb::WatchJobResponse { job: Some(job) }), (rx, true, terminal)))
        });
        Ok(Response::new(stream.boxed()))
    }
}
