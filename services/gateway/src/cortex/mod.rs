//! Cortex BatchAPI routes, so Cortex users move over unchanged: `<api>` is a
//! pipeline name.
//!
//! - `POST /<api>` submits a job from Cortex's body (`workers`, `timeout`,
//!   `sqs_dead_letter_queue` or `dead_letter`, one of `item_list` /
//!   `file_path_lister` / `delimited_files`, `config`) and answers the job
//!   spec; with `?dryRun=true` it answers plain text: each matched `s3://`
//!   object on a line, then `validations passed`.
//! - `GET /<api>?jobID=<id>` answers `{"job_status": {...}, "endpoint": ...}`.
//! - `DELETE /<api>?jobID=<id>` stops the job: `{"message":"stopped job <id>"}`.
//! - `GET /<api>` lists the pipeline's recent jobs, newest first.
//!
//! JSON bodies end with a newline, as Go's encoder writes them. Errors are
//! `{"kind": ..., "message": ...}`: 404 for an unknown api or job, 413 for
//! a body over 10 MiB, 400 for anything else the caller got wrong.

use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use batchmill_core::{Caller, ErrorCode, RemoteError};
use batchmill_proto::jobs::v1::{self as pb, job_service_server::JobService};
use batchmill_proto::pipelines::v1::{GetPipelineRequest, pipeline_service_server::PipelineService};
use http::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::auth::as_caller;

mod wire;
use crate::forward::{JobsForwarder, PipelinesForwarder};
use crate::rest::MAX_BODY_BYTES;
use wire::{JobSpec, JobStatus, ListResponse, Message, StatusResponse};

/// Most jobs `GET /<api>` lists.
const LIST_LIMIT: i32 = 100;

/// The Cortex face of the job and pipeline services.
#[derive(Clone)]
pub struct Cortex {
    jobs: JobsForwarder,
    pipelines: PipelinesForwarder,
    scheme: &'static str,
}

/// Whether `path` is a Cortex route: one segment that is no native prefix.
pub fn is_cortex_path(path: &str) -> bool {
    let name = path.strip_prefix('/').unwrap_or_default();
    !name.is_empty() && !name.contains('/') && name != "v1"
}

impl Cortex {
    /// Cortex's routes; job URLs are `scheme://` (`https` for a gateway
    /// serving TLS) unless a proxy in front says otherwise
    /// (`X-Forwarded-Proto`).
    pub fn new(jobs: JobsForwarder, pipelines: PipelinesForwarder, scheme: &'static str) -> Cortex {
        Cortex { jobs, pipelines, scheme }
    }

    /// Serves one request to `/<api>`.
    pub async fn handle(&self, request: Request) -> Response {
        match self.route(request).await {
            Ok(response) => response,
            Err(error) => error.into_response(),
        }
    }

    async fn route(&self, request: Request) -> Result<Response, CortexError> {
        let (parts, body) = request.into_parts();
        let api = parts.uri.path().trim_start_matches('/').to_owned();
        let query = crate::rest::form_urlencoded(parts.uri.query().unwrap_or_default());
        let param = |name: &str| query.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        let host = parts.headers.get(http::header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost");
        let scheme = match parts.headers.get("x-forwarded-proto").and_then(|h| h.to_str().ok()) {
            Some(proto @ ("http" | "https")) => proto,
            _ => self.scheme,
        };
        let endpoint = format!("{scheme}://{host}/{api}");
        let caller = crate::auth::caller_of(&parts.extensions)?;
        self.known_api(&caller, &api).await?;
        match (parts.method, param("jobID")) {
            (Method::POST, _) => {
                let dry_run = param("dryRun").is_some_and(|v| v == "true");
                let body = axum::body::to_bytes(body, MAX_BODY_BYTES).await.map_err(|_| CortexError::too_large())?;
                if dry_run {
                    Ok(self.dry_run(&caller, &api, &body).await)
                } else {
                    self.submit(&caller, &api, &body).await
                }
            }
            (Method::GET, Some(job_id)) => {
                let job = self.job(&caller, &api, &job_id).await?;
                let status = JobStatus::of(&job);
                Ok(json(
                    StatusCode::OK,
                    &StatusResponse { job_status: status, endpoint: job_endpoint(&endpoint, &job_id) },
                ))
            }
            (Method::GET, None) => self.list(&caller, &api, &endpoint).await,
            (Method::DELETE, Some(job_id)) => {
                self.job(&caller, &api, &job_id).await?;
                let request = as_caller(&caller, pb::CancelJobRequest { job_id: job_id.clone() });
                JobService::cancel_job(&self.jobs, request).await.map_err(CortexError::from)?;
                Ok(json(StatusCode::OK, &Message { message: format!("stopped job {job_id}") }))
            }
            (Method::DELETE, None) => Err(CortexError::bad("err_missing_query_param", "missing query parameter jobID")),
            (method, _) => Err(CortexError {
                status: StatusCode::METHOD_NOT_ALLOWED,
                kind: "err_method_not_allowed",
                message: format!("{method} is not supported on /{api}; use POST, GET or DELETE"),
            }),
        }
    }

    async fn known_api(&self, caller: &Caller, api: &str) -> Result<(), CortexError> {
        let request = as_caller(caller, GetPipelineRequest { name: api.to_owned() });
        match PipelineService::get_pipeline(&self.pipelines, request).await {
            Ok(_) => Ok(()),
            Err(status) if status.code() == tonic::Code::NotFound => Err(CortexError {
                status: StatusCode::NOT_FOUND,
                kind: "err_api_not_deployed",
                message: format!("{api} is not deployed"),
            }),
            Err(status) => Err(status.into()),
        }
    }

    /// The job, if it is a job of `api`.
    async fn job(&self, caller: &Caller, api: &str, job_id: &str) -> Result<pb::Job, CortexError> {
        let not_found = || CortexError {
            status: StatusCode::NOT_FOUND,
            kind: "err_job_not_found",
            message: format!("{job_id} job not found for api {api}"),
        };
        let request = as_caller(caller, pb::GetJobRequest { job_id: job_id.to_owned() });
        let job = match JobService::get_job(&self.jobs, request).await {
            Ok(response) => response.into_inner().job.unwrap_or_default(),
            Err(status) if matches!(status.code(), tonic::Code::NotFound | tonic::Code::InvalidArgument) => {
                return Err(not_found());
            }
            Err(status) => return Err(status.into()),
        };
        if job.pipeline != api {
            return Err(not_found());
        }
        Ok(job)
    }

    async fn submit(&self, caller: &Caller, api: &str, body: &[u8]) -> Result<Response, CortexError> {
        let submission = Submission::parse(body)?;
        let arn = submission.sqs_dead_letter_queue.as_ref().map(|q| q.arn.clone());
        let request = as_caller(caller, submission.into_request(api)?);
        let job = JobService::submit_job(&self.jobs, request).await.map_err(CortexError::from)?.into_inner();
        let job = job.job.unwrap_or_default();
        Ok(json(StatusCode::OK, &JobSpec::of(&job, arn)))
    }

    /// Plain text, as Cortex answers a dry run, errors included.
    async fn dry_run(&self, caller: &Caller, api: &str, body: &[u8]) -> Response {
        let answer = async {
            let request =
                as_caller(caller, pb::DryRunJobRequest { job: Some(Submission::parse(body)?.into_request(api)?) });
            let answer = JobService::dry_run_job(&self.jobs, request).await.map_err(CortexError::from)?;
            Ok::<_, CortexError>(answer.into_inner().message)
        };
        let (status, text) = match answer.await {
            Ok(message) => (StatusCode::OK, message),
            Err(e) => (e.status, format!("\n{}\n", e.message)),
        };
        (status, [(http::header::CONTENT_TYPE, "text/plain")], text).into_response()
    }

    async fn list(&self, caller: &Caller, api: &str, endpoint: &str) -> Result<Response, CortexError> {
        // This api's newest jobs, filtered by the scheduler.
        let request = as_caller(
            caller,
            pb::ListJobsRequest { page_size: LIST_LIMIT, page_token: String::new(), pipeline: api.to_owned() },
        );
        let page = JobService::list_jobs(&self.jobs, request).await.map_err(CortexError::from)?.into_inner();
        let statuses: Vec<JobStatus> = page.jobs.iter().map(JobStatus::of).collect();
        Ok(json(StatusCode::OK, &ListResponse { endpoint: endpoint.to_owned(), batch_job_statuses: statuses }))
    }
}

fn job_endpoint(endpoint: &str, job_id: &str) -> String {
    format!("{endpoint}?jobID={job_id}")
}

/// Cortex's job submission.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Submission {
    workers: Option<i64>,
    timeout: Option<i64>,
    sqs_dead_letter_queue: Option<SqsDeadLetterQueue>,
    dead_letter: Option<DeadLetter>,
    item_list: Option<ItemList>,
    file_path_lister: Option<S3Lister>,
    delimited_files: Option<S3Lister>,
    config: Option<Map<String, Value>>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct SqsDeadLetterQueue {
    #[serde(default)]
    pub(super) arn: String,
    pub(super) max_receive_count: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeadLetter {
    max_receive_count: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ItemList {
    items: Vec<Value>,
    batch_size: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct S3Lister {
    s3_paths: Vec<String>,
    #[serde(default)]
    includes: Vec<String>,
    #[serde(default)]
    excludes: Vec<String>,
    batch_size: i64,
}

/// A number for an int32 field: out of range is kept out of range, so the
/// field's own check names it.
/// The native request a Cortex submission body to `api` becomes, if it is
/// one.
pub(crate) fn request_of(body: &[u8], api: &str) -> Option<pb::SubmitJobRequest> {
    Submission::parse(body).and_then(|s| s.into_request(api)).ok()
}

fn int32(n: i64) -> i32 {
    n.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32
}

impl Submission {
    fn parse(body: &[u8]) -> Result<Submission, CortexError> {
        serde_json::from_slice(body)
            .map_err(|e| CortexError::bad("err_invalid_submission", format!("job submission: {e}")))
    }

    fn into_request(self, api: &str) -> Result<pb::SubmitJobRequest, CortexError> {
        use pb::submit_job_request::Source;
        let given: Vec<&str> = [
            ("item_list", self.item_list.is_some()),
            ("file_path_lister", self.file_path_lister.is_some()),
            ("delimited_files", self.delimited_files.is_some()),
        ]
        .into_iter()
        .filter_map(|(k, set)| set.then_some(k))
        .collect();
        if given.len() > 1 {
            return Err(CortexError::bad(
                "err_conflicting_fields",
                format!("{}: only one of item_list, file_path_lister, delimited_files may be given", given.join(", ")),
            ));
        }
        if self.sqs_dead_letter_queue.is_some() && self.dead_letter.is_some() {
            return Err(CortexError::bad(
                "err_conflicting_fields",
                "sqs_dead_letter_queue, dead_letter: give at most one",
            ));
        }
        let lister = |l: S3Lister| (l.s3_paths, l.includes, l.excludes, int32(l.batch_size));
        let source = if let Some(list) = self.item_list {
            let items = list.items.iter().map(batchmill_core::json::json_to_value).collect();
            Some(Source::ItemList(pb::ItemList { items, batch_size: int32(list.batch_size) }))
        } else if let Some(l) = self.file_path_lister {
            let (s3_paths, includes, excludes, batch_size) = lister(l);
            Some(Source::FilePathLister(pb::FilePathLister { s3_paths, includes, excludes, batch_size }))
        } else if let Some(l) = self.delimited_files {
            let (s3_paths, includes, excludes, batch_size) = lister(l);
            Some(Source::DelimitedFiles(pb::DelimitedFiles { s3_paths, includes, excludes, batch_size }))
        } else {
            None
        };
        let max_receive_count =
            self.sqs_dead_letter_queue.map(|q| q.max_receive_count).or(self.dead_letter.map(|d| d.max_receive_count));
        if let Some(timeout) = self.timeout
            && timeout < 1
        {
            return Err(CortexError::bad(
                "err_invalid_submission",
                format!("timeout: must be at least 1, got {timeout}"),
            ));
        }
        Ok(pb::SubmitJobRequest {
            pipeline: api.to_owned(),
            workers: int32(self.workers.unwrap_or(0)),
            source,
            config: self.config.as_ref().map(batchmill_core::json::json_to_struct),
            output_uri: String::new(),
            dead_letter: max_receive_count.map(|n| pb::DeadLetterPolicy { max_receive_count: int32(n), bisect: None }),
            timeout: self.timeout.map(|seconds| prost_types::Duration { seconds, nanos: 0 }),
            s3_credentials: None,
            ..Default::default()
        })
    }
}

/// A Cortex error: `{"kind", "message"}`.
#[derive(Debug)]
struct CortexError {
    status: StatusCode,
    kind: &'static str,
    message: String,
}

impl CortexError {
    fn bad(kind: &'static str, message: impl Into<String>) -> CortexError {
        CortexError { status: StatusCode::BAD_REQUEST, kind, message: message.into() }
    }

    fn too_large() -> CortexError {
        CortexError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            kind: "err_request_too_large",
            message: format!(
                "the request body is over the 10 MiB ({MAX_BODY_BYTES}-byte) limit; give large inputs as files in S3 (file_path_lister, delimited_files)"
            ),
        }
    }
}

impl From<tonic::Status> for CortexError {
    /// The HTTP status is the cluster's one mapping ([`ErrorCode`]); the
    /// kind names the same code in Cortex's style.
    fn from(status: tonic::Status) -> CortexError {
        let code = RemoteError::from(&status).code;
        let kind = match code {
            ErrorCode::InvalidArgument => "err_invalid_submission",
            ErrorCode::NotFound => "err_not_found",
            ErrorCode::AlreadyExists => "err_already_exists",
            ErrorCode::FailedPrecondition => "err_failed_precondition",
            ErrorCode::PayloadTooLarge => "err_request_too_large",
            ErrorCode::Unauthenticated => "err_unauthenticated",
            ErrorCode::PermissionDenied => "err_permission_denied",
            ErrorCode::Unavailable => "err_unavailable",
            ErrorCode::Cancelled => "err_cancelled",
            ErrorCode::Internal => "err_internal",
        };
        CortexError { status: code.http(), kind, message: status.message().to_owned() }
    }
}

impl IntoResponse for CortexError {
    fn into_response(self) -> Response {
        #[derive(Serialize)]
        struct Body<'a> {
            kind: &'a str,
            message: &'a str,
        }
        let response = json(self.status, &Body { kind: self.kind, message: &self.message });
        // A body over the limit was left unread.
        if self.status == StatusCode::PAYLOAD_TOO_LARGE { crate::rest::error::closing(response) } else { response }
    }
}

/// Compact JSON and a newline, as Go's `json.Encoder` writes.
fn json<T: Serialize>(status: StatusCode, value: &T) -> Response {
    let mut body = match serde_json::to_vec(value) {
        Ok(body) => body,
        Err(e) => {
            let error = CortexError {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                kind: "err_internal",
                message: format!("encoding the response: {e}"),
            };
            // The error's own body is two strings, which always encode.
            return json(error.status, &serde_json::json!({"kind": error.kind, "message": error.message}));
        }
    };
    body.push(b'\n');
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request(body: Value) -> Result<pb::SubmitJobRequest, CortexError> {
        Submission::parse(body.to_string().as_bytes())?.into_request("image-classifier")
    }

    #[test]
    fn cortex_submissions_become_native_requests() {
        let req = request(json!({"workers": 2, "timeout": 600,
            "sqs_dead_letter_queue": {"arn": "arn:aws:sqs:us-west-2:1:f.fifo", "max_receive_count": 3},
            "file_path_lister": {"s3_paths": ["s3://b/images/"], "includes": ["**.jpg"], "batch_size": 2},
            "config": {"dest_s3_dir": "s3://b/out"}}))
        .unwrap();
        assert_eq!((req.pipeline.as_str(), req.workers), ("image-classifier", 2));
        assert_eq!(req.timeout.map(|d| d.seconds), Some(600));
        assert_eq!(req.dead_letter.map(|d| d.max_receive_count), Some(3));
        assert!(matches!(req.source, Some(pb::submit_job_request::Source::FilePathLister(ref l)) if l.batch_size == 2));
        let req = request(json!({"workers": 1, "item_list": {"items": [1, "a"], "batch_size": 1}})).unwrap();
        assert!(matches!(req.source, Some(pb::submit_job_request::Source::ItemList(ref l)) if l.items.len() == 2));
    }

    #[test]
    fn bad_submissions_name_what_is_wrong() {
        let says = |body: Value, text: &str| {
            let e = request(body).unwrap_err();
            assert!(e.message.contains(text), "{} does not say {text}", e.message);
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
        };
        says(json!({"worker": 1}), "unknown field `worker`");
        says(json!({"workers": "two"}), "invalid type");
        says(
            json!({"workers": 1, "item_list": {"items": [], "batch_size": 1}, "delimited_files": {"s3_paths": [], "batch_size": 1}}),
            "only one of",
        );
        says(json!({"workers": 1, "timeout": 0}), "timeout");
        says(json!({"workers": 1, "item_list": {"items": [1]}}), "batch_size");
    }

    #[test]
    fn states_map_to_cortex_status_codes() {
        let job = |state: pb::JobState, enqueued: bool, reason: &str| pb::Job {
            state: state as i32,
            enqueue_complete: enqueued,
            failure_reason: reason.into(),
            ..Default::default()
        };
        assert_eq!(wire::status(&job(pb::JobState::Pending, false, "")), "pending");
        assert_eq!(wire::status(&job(pb::JobState::Running, false, "")), "enqueuing");
        assert_eq!(wire::status(&job(pb::JobState::Running, true, "")), "running");
        assert_eq!(wire::status(&job(pb::JobState::Cancelled, true, "")), "stopped");
        assert_eq!(wire::status(&job(pb::JobState::Failed, false, "enqueue_failed")), "enqueue_failed");
        assert_eq!(wire::status(&job(pb::JobState::TimedOut, true, "")), "timed_out");
    }

    #[test]
    fn only_single_segment_paths_are_cortex_routes() {
        assert!(is_cortex_path("/image-classifier"));
        assert!(!is_cortex_path("/v1"));
        assert!(!is_cortex_path("/v1/jobs"));
        assert!(!is_cortex_path("/batchmill.jobs.v1.JobService/GetJob"));
        assert!(!is_cortex_path("/"));
    }
}
