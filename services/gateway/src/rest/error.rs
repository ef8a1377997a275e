//! gRPC status as an HTTP response: the status from the one code mapping in
//! `batchmill_core::ErrorCode`, and a `google.rpc.Status`-shaped JSON body
//! with field violations under `details`.

use axum::response::{IntoResponse, Response};
use batchmill_core::RemoteError;
use http::StatusCode;
use serde_json::{Value, json};
use tonic_types::StatusExt;

/// The JSON of a status: `{"code", "message", "details"}`.
pub fn status_json(status: &tonic::Status) -> Value {
    let mut details = Vec::new();
    if let Some(bad) = status.get_details_bad_request() {
        let violations: Vec<Value> =
            bad.field_violations.iter().map(|v| json!({"field": v.field, "description": v.description})).collect();
        details.push(json!({"@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": violations}));
    }
    json!({"code": status.code() as i32, "message": status.message(), "details": details})
}

/// The HTTP response of a gRPC status.
pub fn status_response(status: &tonic::Status) -> Response {
    let http = RemoteError::from(status).code.http();
    (http, [(http::header::CONTENT_TYPE, "application/json")], status_json(status).to_string()).into_response()
}

/// An error found before any RPC was made.
pub fn json_error(http: StatusCode, code: tonic::Code, message: &str, details: Vec<Value>) -> Response {
    let body = json!({"code": code as i32, "message": message, "details": details});
    (http, [(http::header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

/// `response`, marked to close its connection. For a request whose body was
/// left unread (over the size limit): the connection cannot carry another
/// request, and without the header a client may reuse it and see it closed
/// under its next request.
pub fn closing(mut response: Response) -> Response {
    response.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
    response
}
