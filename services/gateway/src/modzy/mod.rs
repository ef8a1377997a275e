//! Modzy's Jobs API under `/api`, as its Python SDK (`modzy-sdk`'s
//! `ApiClient(base_url=<gateway>/api, api_key=...)`) calls it. A "model" is
//! a pipeline and its version. The adapter translates and owns no state:
//! every call is a call of the native job and pipeline services, as the
//! caller.
//!
//! - `POST /api/jobs`: `text`, `embedded`, `aws-s3`, `aws-s3-folder` and
//!   `jdbc` inputs (see `submit`); with no input, an upload is opened, to
//!   which `POST /api/jobs/{id}/{item}/{input}` appends chunks and which
//!   `POST /api/jobs/{id}/close` submits (see `upload`).
//! - `GET /api/jobs/{id}`, `DELETE /api/jobs/{id}` (cancel),
//!   `GET /api/jobs/history`, `GET /api/jobs/features`.
//! - `GET /api/results/{id}`: results keyed by input name.
//! - `GET /api/models`, `/api/models/{id}`, `/api/models/{id}/versions`,
//!   `/api/models/{id}/versions/{version}`.
//!
//! Errors are `{"statusCode", "status", "message"}`, as Modzy answers them.

mod history;
mod models;
pub(crate) mod submit;
mod upload;
mod view;

pub use upload::Uploads;

use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use batchmill_core::{Caller, RemoteError};
use batchmill_proto::jobs::v1::{self as pb, job_service_server::JobService};
use http::{Method, StatusCode};
use serde_json::{Value, json};

use crate::auth::as_caller;
use crate::forward::{JobsForwarder, PipelinesForwarder};
use crate::rest::MAX_BODY_BYTES;

/// The prefix of every Modzy route.
pub const PREFIX: &str = "/api/";

/// Whether `path` is a Modzy route.
pub fn is_modzy_path(path: &str) -> bool {
    path.starts_with(PREFIX)
}

/// The Modzy face of the job and pipeline services.
#[derive(Clone)]
pub struct Modzy {
    jobs: JobsForwarder,
    pipelines: PipelinesForwarder,
    uploads: Uploads,
}

/// An error in Modzy's shape.
#[derive(Debug)]
pub struct ModzyError {
    status: StatusCode,
    message: String,
}

impl ModzyError {
    pub fn bad(message: impl Into<String>) -> ModzyError {
        ModzyError { status: StatusCode::BAD_REQUEST, message: message.into() }
    }

    pub fn not_found(message: impl Into<String>) -> ModzyError {
        ModzyError { status: StatusCode::NOT_FOUND, message: message.into() }
    }
}

impl From<tonic::Status> for ModzyError {
    fn from(status: tonic::Status) -> ModzyError {
        let code = RemoteError::from(&status).code;
        ModzyError { status: code.http(), message: status.message().to_owned() }
    }
}

impl From<batchmill_core::FieldViolation> for ModzyError {
    fn from(v: batchmill_core::FieldViolation) -> ModzyError {
        ModzyError::bad(v.to_string())
    }
}

impl IntoResponse for ModzyError {
    fn into_response(self) -> Response {
        let reason = self.status.canonical_reason().unwrap_or("ERROR").to_uppercase().replace(' ', "_");
        let body = json!({"statusCode": self.status.as_u16(), "status": reason, "message": self.message});
        json_response(self.status, &body)
    }
}

pub fn json_response(status: StatusCode, body: &Value) -> Response {
    (status, [(http::header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

fn ok(body: &Value) -> Result<Response, ModzyError> {
    Ok(json_response(StatusCode::OK, body))
}

impl Modzy {
    pub fn new(jobs: JobsForwarder, pipelines: PipelinesForwarder, uploads: Uploads) -> Modzy {
        Modzy { jobs, pipelines, uploads }
    }

    /// Serves one request under `/api`.
    pub async fn handle(&self, request: Request) -> Response {
        match self.route(request).await {
            Ok(response) => response,
            Err(error) => error.into_response(),
        }
    }

    async fn route(&self, request: Request) -> Result<Response, ModzyError> {
        let caller = crate::auth::caller_of(request.extensions())?;
        let method = request.method().clone();
        let path = request.uri().path().trim_start_matches(PREFIX).trim_end_matches('/').to_owned();
        let query = crate::rest::form_urlencoded(request.uri().query().unwrap_or_default());
        let segments: Vec<&str> = path.split('/').collect();
        match (&method, segments.as_slice()) {
            (&Method::POST, ["jobs"]) => {
                let body = axum::body::to_bytes(request.into_body(), MAX_BODY_BYTES).await.map_err(|_| ModzyError {
                    status: StatusCode::PAYLOAD_TOO_LARGE,
                    message: format!("the request body is over the {MAX_BODY_BYTES}-byte (10 MiB) limit"),
                })?;
                match submit::parse(&body)? {
                    submit::Parsed::Submit(submission) => ok(&view::job(&self.submit(&caller, submission).await?)),
                    submit::Parsed::Open(head) => {
                        models::check_version(&self.pipelines, &caller, &head.model, &head.version).await?;
                        ok(&self.uploads.open(&caller, head).await?)
                    }
                }
            }
            (&Method::GET, ["jobs", "features"]) => ok(&json!({"input_chunk_maximum_size": upload::CHUNK_MAX_TEXT})),
            (&Method::GET, ["jobs", "history"]) => {
                let filter = history::Filter::parse(&query)?;
                let jobs = self.all_jobs(&caller).await?;
                ok(&Value::Array(filter.apply(jobs).iter().map(view::job).collect()))
            }
            (&Method::GET, ["jobs", id]) if upload::is_upload_id(id) => match self.uploads.get(&caller, id).await? {
                upload::Upload::Shown(view) => ok(&view),
                upload::Upload::Became(job_id) => ok(&view::job(&self.job(&caller, &job_id).await?)),
            },
            (&Method::GET, ["jobs", id]) => ok(&view::job(&self.job(&caller, id).await?)),
            (&Method::DELETE, ["jobs", id]) if upload::is_upload_id(id) => {
                match self.uploads.cancel(&caller, id).await? {
                    upload::Upload::Shown(view) => ok(&view),
                    upload::Upload::Became(job_id) => ok(&view::job(&self.cancel(&caller, &job_id).await?)),
                }
            }
            (&Method::DELETE, ["jobs", id]) => ok(&view::job(&self.cancel(&caller, id).await?)),
            (&Method::POST, ["jobs", id, "close"]) if upload::is_upload_id(id) => {
                match self.uploads.closing(&caller, id).await? {
                    upload::Closing::Submit(submission) => {
                        let job = self.submit(&caller, *submission).await?;
                        self.uploads.submitted(&caller, id, &job.job_id).await?;
                        ok(&view::job(&job))
                    }
                    upload::Closing::Ended(upload::Upload::Shown(view)) => ok(&view),
                    upload::Closing::Ended(upload::Upload::Became(job_id)) => {
                        ok(&view::job(&self.job(&caller, &job_id).await?))
                    }
                }
            }
            (&Method::POST, ["jobs", id, item, input]) if upload::is_upload_id(id) => {
                let (id, item, input) = ((*id).to_owned(), (*item).to_owned(), (*input).to_owned());
                ok(&self.uploads.append(&caller, &id, &item, &input, request).await?)
            }
            (&Method::GET, ["results", id]) => {
                let job = self.job(&caller, id).await?;
                let results = self.results(&caller, &job).await?;
                ok(&results)
            }
            (&Method::GET, ["models", rest @ ..]) => models::route(&self.pipelines, &caller, rest, &query).await,
            (method, _) => Err(ModzyError::not_found(format!("no route for {method} /api/{path}"))),
        }
    }

    /// A job the caller sees: 404 otherwise, and for an id that is no job id.
    async fn job(&self, caller: &Caller, id: &str) -> Result<pb::Job, ModzyError> {
        let request = as_caller(caller, pb::GetJobRequest { job_id: id.to_owned() });
        match JobService::get_job(&self.jobs, request).await {
            Ok(response) => Ok(response.into_inner().job.unwrap_or_default()),
            Err(status) if matches!(status.code(), tonic::Code::NotFound | tonic::Code::InvalidArgument) => {
                Err(ModzyError::not_found(format!("job {id} not found")))
            }
            Err(status) => Err(status.into()),
        }
    }

    /// Cancels a job the caller sees.
    async fn cancel(&self, caller: &Caller, id: &str) -> Result<pb::Job, ModzyError> {
        self.job(caller, id).await?;
        let request = as_caller(caller, pb::CancelJobRequest { job_id: id.to_owned() });
        Ok(JobService::cancel_job(&self.jobs, request).await?.into_inner().job.unwrap_or_default())
    }

    async fn submit(&self, caller: &Caller, submission: submit::Submission) -> Result<pb::Job, ModzyError> {
        models::check_version(&self.pipelines, caller, &submission.head.model, &submission.head.version).await?;
        let request = as_caller(caller, submission.into_request());
        match JobService::submit_job(&self.jobs, request).await {
            Ok(response) => Ok(response.into_inner().job.unwrap_or_default()),
            Err(status) => Err(status.into()),
        }
    }

    /// Every job the caller sees, newest first, up to [`history::MOST`].
    async fn all_jobs(&self, caller: &Caller) -> Result<Vec<pb::Job>, ModzyError> {
        all_pages(history::MOST, |page_token| async move {
            let request = pb::ListJobsRequest { page_size: 1000, page_token, pipeline: String::new() };
            let page = JobService::list_jobs(&self.jobs, as_caller(caller, request)).await?.into_inner();
            Ok((page.jobs, page.next_page_token))
        })
        .await
    }

    /// The results object of a job: every result by input name, and the
    /// failures (items of batches that failed for good) with their error.
    async fn results(&self, caller: &Caller, job: &pb::Job) -> Result<Value, ModzyError> {
        let results = all_pages(view::MOST_RESULTS, |page_token| async move {
            let request = pb::ListJobResultsRequest { job_id: job.job_id.clone(), page_size: 1000, page_token };
            let page = JobService::list_job_results(&self.jobs, as_caller(caller, request)).await?.into_inner();
            Ok((page.results, page.next_page_token))
        })
        .await?;
        let dead = all_pages(view::MOST_RESULTS, |page_token| async move {
            let request = pb::ListDeadLettersRequest { job_id: job.job_id.clone(), page_size: 1000, page_token };
            let page = JobService::list_dead_letters(&self.jobs, as_caller(caller, request)).await?.into_inner();
            Ok((page.dead_letters, page.next_page_token))
        })
        .await?;
        Ok(view::results(job, &results, &dead))
    }
}

/// Every entry of a paged listing, page after page until the last or until
/// `most` are in hand: `page(token)` answers a page and the next token.
async fn all_pages<T, F, Fut>(most: usize, mut page: F) -> Result<Vec<T>, ModzyError>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = Result<(Vec<T>, String), ModzyError>>,
{
    let (mut all, mut token) = (Vec::new(), String::new());
    loop {
        let (entries, next) = page(token).await?;
        all.extend(entries);
        if next.is_empty() || all.len() >= most {
            return Ok(all);
        }
        token = next;
    }
}
