//! `JobService` on the scheduler: converts requests, calls [`Scheduler`].

use batchmill_core::batch;
use batchmill_core::job::is_terminal;
use batchmill_core::{Caller, JobId, JobSpec, Owner, ServiceError};
use batchmill_proto::jobs::v1::{self as pb, job_service_server::JobService};
use futures::StreamExt;
use futures::stream::BoxStream;
use tonic::{Request, Response, Status};
use tracing::instrument;

use std::sync::Arc;
use std::time::Duration;

use prost::Message;

use batchmill_queue::Queue;

use crate::events;
use crate::leader::Leading;

/// Default and largest page of `ListJobs`.
const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: i32 = 1000;

#[derive(Clone)]
pub struct JobsGrpc {
    leading: Leading,
    /// Where batch records and log lines are read.
    logs: Arc<dyn Queue>,
}

impl JobsGrpc {
    pub fn new(leading: Leading, logs: Arc<dyn Queue>) -> JobsGrpc {
        JobsGrpc { leading, logs }
    }

    /// The scheduler of the current term; UNAVAILABLE when not leading.
    #[allow(clippy::result_large_err)]
    fn scheduler(&self) -> Result<crate::Scheduler, Status> {
        Ok(self.leading.current()?.scheduler)
    }

    /// The job, if `caller` may see it; NOT_FOUND, as for no such job, if
    /// not, so that another tenant's job does not show it exists.
    async fn visible(&self, caller: &Caller, id: &JobId) -> Result<pb::Job, Status> {
        let job = self.scheduler()?.get(id.clone()).await.map_err(|e| e.to_status())?;
        let owner = Owner { account: job.account_id.clone(), key_id: job.submitted_by.clone() };
        if caller.sees(&owner) {
            Ok(job)
        } else {
            Err(crate::SchedulerError::JobNotFound { job_id: id.to_string() }.to_status())
        }
    }

    pub fn into_service(self) -> pb::job_service_server::JobServiceServer<JobsGrpc> {
        pb::job_service_server::JobServiceServer::new(self)
            .max_decoding_message_size(16 * 1024 * 1024)
            .max_encoding_message_size(16 * 1024 * 1024)
    }
}

/// Most log lines in one response.
const LOG_CHUNK: usize = 500;
/// How long a followed log stream stays open after its job ended.
const LOG_GRACE: Duration = Duration::from_secs(2);

/// Default page of `ListDeadLetters`.
const DEFAULT_DEAD_LETTER_PAGE: usize = 100;

/// The submission a dry run checks; its fields are named as in SubmitJob.
pub fn dry_run_spec(request: pb::DryRunJobRequest) -> Result<JobSpec, Status> {
    let job = request.job.ok_or_else(|| batchmill_core::FieldViolation::new("job", "must be set"))?;
    Ok(JobSpec::try_from(job)?)
}

/// The page size a request asks for: 0 for `default`, at most [`MAX_PAGE`].
fn page_size(asked: i32, default: usize) -> Result<usize, Status> {
    match asked {
        0 => Ok(default),
        n if (1..=MAX_PAGE).contains(&n) => Ok(n as usize),
        _ => Err(batchmill_core::FieldViolation::new("page_size", format!("must be between 0 and {MAX_PAGE}")).into()),
    }
}

/// A page token that is a stream position (0 for the first page).
fn stream_position(token: &str) -> Result<u64, Status> {
    if token.is_empty() {
        return Ok(0);
    }
    token.parse::<u64>().map_err(|_| {
        Status::from(batchmill_core::FieldViolation::new(
            "page_token",
            "is not a token this API returned; pass next_page_token as it was",
        ))
    })
}

/// A ListBatches page token: a record stream position, and how many records
/// of the message there were already listed (`<seq>` or `<seq>.<listed>`).
fn record_position(token: &str) -> Result<(u64, usize), Status> {
    let (seq, listed) = token.split_once('.').unwrap_or((token, "0"));
    let listed = listed.parse::<usize>().map_err(|_| {
        Status::from(batchmill_core::FieldViolation::new(
            "page_token",
            "is not a token this API returned; pass next_page_token as it was",
        ))
    })?;
    Ok((stream_position(seq)?, listed))
}

fn watched(event: pb::JobEvent) -> pb::WatchJobEventsResponse {
    pb::WatchJobEventsResponse { event: Some(event) }
}

/// The caller the gateway passed on.
#[allow(clippy::result_large_err)]
fn caller<T>(request: &Request<T>) -> Result<Caller, Status> {
    Ok(Caller::read(request.metadata())?)
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
        let caller = caller(&request)?;
        let spec = JobSpec::try_from(request.into_inner())?;
        let job = self.scheduler()?.submit(spec, &caller).await.map_err(|e| e.to_status())?;
        Ok(Response::new(pb::SubmitJobResponse { job: Some(job) }))
    }

    #[instrument(skip_all, fields(job_id = %request.get_ref().job_id))]
    async fn get_job(&self, request: Request<pb::GetJobRequest>) -> Result<Response<pb::GetJobResponse>, Status> {
        let caller = caller(&request)?;
        let job = self.visible(&caller, &job_id(&request.get_ref().job_id)?).await?;
        Ok(Response::new(pb::GetJobResponse { job: Some(job) }))
    }

    #[instrument(skip_all)]
    async fn list_jobs(&self, request: Request<pb::ListJobsRequest>) -> Result<Response<pb::ListJobsResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let limit = page_size(req.page_size, DEFAULT_PAGE)?;
        let after = if req.page_token.is_empty() {
            None
        } else {
            Some(JobId::parse("page_token", &req.page_token).map_err(Status::from)?)
        };
        let pipeline = (!req.pipeline.is_empty()).then_some(req.pipeline);
        let (jobs, next) = self.scheduler()?.list(caller, after, limit, pipeline).await.map_err(|e| e.to_status())?;
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
        let caller = caller(&request)?;
        let id = job_id(&request.get_ref().job_id)?;
        self.visible(&caller, &id).await?;
        let job = self.scheduler()?.cancel(id).await.map_err(|e| e.to_status())?;
        Ok(Response::new(pb::CancelJobResponse { job: Some(job) }))
    }

    #[instrument(skip_all, fields(job_id = %request.get_ref().job_id))]
    async fn retry_job(&self, request: Request<pb::RetryJobRequest>) -> Result<Response<pb::RetryJobResponse>, Status> {
        let caller = caller(&request)?;
        let id = job_id(&request.get_ref().job_id)?;
        let job = self.visible(&caller, &id).await?;
        let job = self.scheduler()?.retry(id, &job.account_id).await.map_err(|e| e.to_status())?;
        Ok(Response::new(pb::RetryJobResponse { job: Some(job) }))
    }

    #[instrument(skip_all, fields(job_id = %request.get_ref().job_id))]
    async fn retry_failed_items(
        &self,
        request: Request<pb::RetryFailedItemsRequest>,
    ) -> Result<Response<pb::RetryFailedItemsResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let id = job_id(&req.job_id)?;
        self.visible(&caller, &id).await?;
        let field = |name: &str, n: i32, max: i32| {
            u32::try_from(n).ok().filter(|n| *n as i32 <= max).ok_or_else(|| {
                Status::from(batchmill_core::FieldViolation::new(name, format!("must be between 0 and {max}")))
            })
        };
        let batch_size = field("batch_size", req.batch_size, i32::MAX)?;
        let workers = field("workers", req.workers, batchmill_core::job::MAX_WORKERS)?;
        let job = self.scheduler()?.retry_failed_items(id, batch_size, workers).await.map_err(|e| e.to_status())?;
        Ok(Response::new(pb::RetryFailedItemsResponse { job: Some(job) }))
    }

    #[instrument(skip_all)]
    async fn dry_run_job(
        &self,
        request: Request<pb::DryRunJobRequest>,
    ) -> Result<Response<pb::DryRunJobResponse>, Status> {
        let caller = caller(&request)?;
        let spec = dry_run_spec(request.into_inner())?;
        let answer = self.scheduler()?.dry_run(spec, &caller).await.map_err(|e| e.to_status())?;
        Ok(Response::new(answer))
    }

    #[instrument(skip_all, fields(job_id = %request.get_ref().job_id))]
    async fn list_dead_letters(
        &self,
        request: Request<pb::ListDeadLettersRequest>,
    ) -> Result<Response<pb::ListDeadLettersResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let limit = page_size(req.page_size, DEFAULT_DEAD_LETTER_PAGE)?;
        let from = stream_position(&req.page_token)?;
        let id = job_id(&req.job_id)?;
        self.visible(&caller, &id).await?;
        let (dead_letters, next) = self.scheduler()?.dead_letters(id, from, limit).await.map_err(|e| e.to_status())?;
        Ok(Response::new(pb::ListDeadLettersResponse {
            dead_letters,
            next_page_token: next.map(|n| n.to_string()).unwrap_or_default(),
        }))
    }

    #[instrument(skip_all, fields(job_id = %request.get_ref().job_id))]
    async fn list_batches(
        &self,
        request: Request<pb::ListBatchesRequest>,
    ) -> Result<Response<pb::ListBatchesResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let limit = page_size(req.page_size, DEFAULT_DEAD_LETTER_PAGE)?;
        let (from, skip) = record_position(&req.page_token)?;
        // The job must exist and be this caller's.
        self.visible(&caller, &job_id(&req.job_id)?).await?;
        // One message holds one record or several (a group's): `limit`
        // messages hold enough, and a page may end inside one.
        let stored =
            self.logs.records(&req.job_id, from, limit).await.map_err(|e| Status::unavailable(e.to_string()))?;
        let mut next = None;
        // A batch that ended twice (delivered again after its worker was lost)
        // shows once, at its latest record.
        let mut batches: Vec<pb::BatchRecord> = Vec::with_capacity(limit);
        'page: for s in &stored {
            let first = if s.stream_seq == from { skip } else { 0 };
            for (i, record) in batch::read_records(&s.payload).into_iter().enumerate().skip(first) {
                if batches.len() == limit {
                    next = Some(format!("{}.{i}", s.stream_seq));
                    break 'page;
                }
                batches.retain(|b| b.seq != record.seq);
                batches.push(record);
            }
        }
        if next.is_none() && stored.len() == limit {
            next = stored.last().map(|s| (s.stream_seq + 1).to_string());
        }
        Ok(Response::new(pb::ListBatchesResponse { batches, next_page_token: next.unwrap_or_default() }))
    }

    #[instrument(skip_all, fields(job_id = %request.get_ref().job_id))]
    async fn rerun_dead_letters(
        &self,
        request: Request<pb::RerunDeadLettersRequest>,
    ) -> Result<Response<pb::RerunDeadLettersResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let id = job_id(&req.job_id)?;
        self.visible(&caller, &id).await?;
        let (job, batch_ids) = self.scheduler()?.rerun(id, req.batch_ids).await.map_err(|e| e.to_status())?;
        let batch_ids = batch_ids.iter().map(ToString::to_string).collect();
        Ok(Response::new(pb::RerunDeadLettersResponse { job: Some(job), batch_ids }))
    }

    type StreamJobLogsStream = BoxStream<'static, Result<pb::StreamJobLogsResponse, Status>>;

    #[instrument(skip_all, fields(job_id = %request.get_ref().job_id))]
    async fn stream_job_logs(
        &self,
        request: Request<pb::StreamJobLogsRequest>,
    ) -> Result<Response<Self::StreamJobLogsStream>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let id = job_id(&req.job_id)?;
        self.visible(&caller, &id).await?;
        let mut job = self.scheduler()?.watch(id).await.map_err(|e| e.to_status())?;
        let lines = self.logs.logs(&req.job_id, req.follow).await.map_err(|e| Status::unavailable(e.to_string()))?;
        let lines = lines.ready_chunks(LOG_CHUNK).map(|chunk| {
            let mut out = Vec::with_capacity(chunk.len());
            for line in chunk {
                let line = line.map_err(|e| Status::unavailable(e.to_string()))?;
                match pb::LogLine::decode(line.as_ref()) {
                    Ok(l) => out.push(l),
                    Err(e) => tracing::warn!(error = %e, "undecodable log line"),
                }
            }
            Ok(pb::StreamJobLogsResponse { lines: out })
        });
        if !req.follow {
            return Ok(Response::new(lines.boxed()));
        }
        // Following: once the job has ended, lines still in flight get a
        // moment to arrive, then the stream ends.
        let ended = async move {
            while !is_terminal(job.borrow_and_update().state()) {
                if job.changed().await.is_err() {
                    break;
                }
            }
            tokio::time::sleep(LOG_GRACE).await;
        };
        Ok(Response::new(lines.take_until(ended).boxed()))
    }

    #[instrument(skip_all, fields(job_id = %request.get_ref().job_id))]
    async fn list_job_results(
        &self,
        request: Request<pb::ListJobResultsRequest>,
    ) -> Result<Response<pb::ListJobResultsResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let limit = page_size(req.page_size, DEFAULT_DEAD_LETTER_PAGE)?;
        let job = self.visible(&caller, &job_id(&req.job_id)?).await?;
        let store = self.scheduler()?.store.clone();
        let (results, next) =
            crate::results::page(&store, &job, &req.page_token, limit).await.map_err(|e| match e {
                crate::SchedulerError::BadRequest(v) => Status::from(v),
                other => other.to_status(),
            })?;
        Ok(Response::new(pb::ListJobResultsResponse { results, next_page_token: next.unwrap_or_default() }))
    }

    #[instrument(skip_all, fields(job_id = %request.get_ref().job_id))]
    async fn list_outputs(
        &self,
        request: Request<pb::ListOutputsRequest>,
    ) -> Result<Response<pb::ListOutputsResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let limit = page_size(req.page_size, DEFAULT_DEAD_LETTER_PAGE)?;
        let expires = crate::outputs::expiry(req.expires_in.as_ref()).map_err(Status::from)?;
        let job = self.visible(&caller, &job_id(&req.job_id)?).await?;
        let store = self.scheduler()?.store.clone();
        let (outputs, next) =
            crate::outputs::page(&store, &job, &req.page_token, limit, expires).await.map_err(|e| e.to_status())?;
        Ok(Response::new(pb::ListOutputsResponse { outputs, next_page_token: next.unwrap_or_default() }))
    }

    #[instrument(skip_all, fields(job_id = %request.get_ref().job_id))]
    async fn list_job_events(
        &self,
        request: Request<pb::ListJobEventsRequest>,
    ) -> Result<Response<pb::ListJobEventsResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let limit = page_size(req.page_size, DEFAULT_DEAD_LETTER_PAGE)?;
        let id = job_id(&req.job_id)?;
        self.visible(&caller, &id).await?;
        let from = events::after("page_token", &req.page_token)?;
        let filter = events::Filter::new(req.levels, req.types, &req.input);
        let (events, next) = events::page(self.logs.as_ref(), id.as_str(), from, limit, &filter)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(pb::ListJobEventsResponse {
            events,
            next_page_token: next.map(|n| n.to_string()).unwrap_or_default(),
        }))
    }

    type WatchJobEventsStream = BoxStream<'static, Result<pb::WatchJobEventsResponse, Status>>;

    #[instrument(skip_all, fields(job_id = %request.get_ref().job_id))]
    async fn watch_job_events(
        &self,
        request: Request<pb::WatchJobEventsRequest>,
    ) -> Result<Response<Self::WatchJobEventsStream>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let id = job_id(&req.job_id)?;
        let job = self.visible(&caller, &id).await?;
        let from = events::after("cursor", &req.cursor)?;
        let filter = events::Filter::new(req.levels, req.types, &req.input);
        let unavailable = |e: batchmill_queue::QueueError| Status::unavailable(e.to_string());
        if is_terminal(job.state()) {
            // An ended job: what its log holds after the cursor, then the end.
            let queue = self.logs.clone();
            let pages = futures::stream::unfold(Some(from), move |from| {
                let (queue, filter, id) = (queue.clone(), filter.clone(), id.clone());
                async move {
                    let from = from?;
                    match events::page(queue.as_ref(), id.as_str(), from, MAX_PAGE as usize, &filter).await {
                        Ok((found, next)) => Some((Ok(found), next.map(|n| n + 1))),
                        Err(e) => Some((Err(unavailable(e)), None)),
                    }
                }
            });
            let events = pages
                .map(|page| match page {
                    Ok(found) => futures::stream::iter(found.into_iter().map(|e| Ok(watched(e)))).boxed(),
                    Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
                })
                .flatten();
            return Ok(Response::new(events.boxed()));
        }
        let stored = self.logs.follow_events(id.as_str(), from).await.map_err(unavailable)?;
        // Each event the filter picks, until one that ends the job's run.
        let stream = futures::stream::unfold((stored, false), move |(mut stored, ended)| {
            let filter = filter.clone();
            async move {
                if ended {
                    return None;
                }
                loop {
                    let event = match stored.next().await? {
                        Ok(s) => events::decode(&s),
                        Err(e) => return Some((Err(unavailable(e)), (stored, true))),
                    };
                    let Some(event) = event else { continue };
                    let end = events::is_end(&event);
                    if filter.matches(&event) {
                        return Some((Ok(watched(event)), (stored, end)));
                    }
                    if end {
                        return None;
                    }
                }
            }
        });
        Ok(Response::new(stream.boxed()))
    }

    type WatchJobStream = BoxStream<'static, Result<pb::WatchJobResponse, Status>>;

    #[instrument(skip_all, fields(job_id = %request.get_ref().job_id))]
    async fn watch_job(&self, request: Request<pb::WatchJobRequest>) -> Result<Response<Self::WatchJobStream>, Status> {
        let caller = caller(&request)?;
        let id = job_id(&request.get_ref().job_id)?;
        self.visible(&caller, &id).await?;
        let rx = self.scheduler()?.watch(id).await.map_err(|e| e.to_status())?;
        // Current state first, then each change; the stream ends after a terminal state.
        let stream = futures::stream::unfold((rx, false, false), |(mut rx, started, ended)| async move {
            if ended {
                return None;
            }
            if started && rx.changed().await.is_err() {
                return None;
            }
            let job = rx.borrow_and_update().clone();
            let terminal = is_terminal(job.state());
            Some((Ok(pb::WatchJobResponse { job: Some(job) }), (rx, true, terminal)))
        });
        Ok(Response::new(stream.boxed()))
    }
}
