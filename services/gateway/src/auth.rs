//! Authentication: every request but health checks and reflection carries
//! an API key (`Authorization: Bearer <key>` or Modzy's `ApiKey <key>`).
//! One middleware checks it against the account store and puts the
//! [`Caller`] in the request's extensions; REST, the Cortex and Modzy routes
//! carry it into the in-process gRPC call, and the forwarders pass it to the
//! scheduler as metadata. A request that reaches a forwarder with no caller
//! is refused, so a route that missed the middleware fails closed.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use batchmill_accounts::{AccountError, Accounts};
use batchmill_core::{Caller, ServiceError};
use tonic::Status;

/// Paths served without a key: health checks, server reflection, the
/// REST API's OpenAPI document and reference page (the same facts), the
/// Prometheus metrics (counts, no names or data of any account), and the
/// web console's page (which asks for a key and sends it with every call).
fn is_open(path: &str) -> bool {
    ["/grpc.health.v1.Health/", "/grpc.reflection.v1.ServerReflection/", "/grpc.reflection.v1alpha.ServerReflection/"]
        .iter()
        .any(|p| path.starts_with(p))
        || path == crate::rest::OPENAPI_PATH
        || path == crate::rest::REFERENCE_PATH
        || path == batchmill_runtime::metrics::PATH
        || path == crate::console::PATH
}

fn is_grpc(request: &Request) -> bool {
    request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// What the middleware checks requests against.
#[derive(Clone)]
pub struct Gate {
    pub accounts: Accounts,
    pub in_flight: crate::limits::InFlight,
}

/// The middleware: refuses headers over the limit, authenticates the
/// request's key, or answers 401 / UNAUTHENTICATED (503 / UNAVAILABLE
/// while the account store is down), and holds one of the key's places
/// for requests in flight until the response ends (see [`crate::limits`]).
pub async fn authenticate(State(gate): State<Gate>, mut request: Request, next: Next) -> Response {
    if let Err(refused) = crate::limits::check_headers(request.headers()) {
        return refused.response(is_grpc(&request));
    }
    // Identity headers come from the gateway only.
    let forged: Vec<_> = request.headers().keys().filter(|k| k.as_str().starts_with("x-batchmill-")).cloned().collect();
    for name in forged {
        request.headers_mut().remove(name);
    }
    if is_open(request.uri().path()) {
        return next.run(request).await;
    }
    let header = request.headers().get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    match gate.accounts.authenticate(header).await {
        Ok(caller) => {
            let permit = match gate.in_flight.hold(&caller.key_id) {
                Ok(permit) => permit,
                Err(refused) => return refused.response(is_grpc(&request)),
            };
            request.extensions_mut().insert(caller);
            crate::limits::holding(next.run(request).await, permit)
        }
        Err(error) => refuse(&request, &error),
    }
}

fn refuse(request: &Request, error: &AccountError) -> Response {
    let status = error.to_status();
    if is_grpc(request) {
        return status.into_http::<axum::body::Body>().into_response();
    }
    let mut response = crate::rest::status_response(&status);
    if matches!(error, AccountError::Unauthenticated(_)) {
        response.headers_mut().insert(http::header::WWW_AUTHENTICATE, http::HeaderValue::from_static("Bearer"));
    }
    response
}

/// The authenticated caller of a request.
#[allow(clippy::result_large_err)]
pub fn caller<T>(request: &tonic::Request<T>) -> Result<Caller, Status> {
    found(request.extensions().get::<Caller>())
}

/// The authenticated caller of an HTTP request, from its extensions.
#[allow(clippy::result_large_err)]
pub fn caller_of(extensions: &http::Extensions) -> Result<Caller, Status> {
    found(extensions.get::<Caller>())
}

#[allow(clippy::result_large_err)]
fn found(caller: Option<&Caller>) -> Result<Caller, Status> {
    caller.cloned().ok_or_else(|| Status::unauthenticated("no API key was checked for this call"))
}

/// A request made on behalf of `caller`, for calling a service in process.
pub fn as_caller<T>(caller: &Caller, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.extensions_mut().insert(caller.clone());
    request
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_health_and_reflection_are_open() {
        assert!(is_open("/grpc.health.v1.Health/Check"));
        assert!(is_open("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"));
        assert!(!is_open("/batchmill.jobs.v1.JobService/GetJob"));
        assert!(!is_open("/v1/jobs"));
        assert!(!is_open("/api/jobs"));
        assert!(!is_open("/echo"));
    }
}
