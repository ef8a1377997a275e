//! What one request and one client may hold at the gateway, each refused
//! with an error naming the limit, and the gateway unharmed:
//!
//! - request headers: [`MAX_HEADER_BYTES`], counted as HTTP/2 counts a
//!   header list (name, value and 32 bytes per field); answered 431 over
//!   REST and RESOURCE_EXHAUSTED over gRPC. The server reads no more than
//!   [`crate::serve::HEADER_BACKSTOP`] (a bare 431 from the HTTP layer).
//! - requests in flight per API key, streams included for as long as they
//!   stream (`WatchJob`, log tails): `BATCHMILL_MAX_STREAMS_PER_KEY`
//!   (default [`DEFAULT_STREAMS_PER_KEY`]); answered 429 over REST and
//!   RESOURCE_EXHAUSTED over gRPC. One connection carries at most
//!   [`crate::serve::STREAMS_PER_CONNECTION`] streams at once (HTTP/2's own
//!   limit, which makes a client wait, not fail).
//!
//! Request bodies have their own limits (`MAX_REQUEST_BYTES`,
//! `rest::MAX_BODY_BYTES`).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The most bytes of request headers the gateway takes.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// Requests in flight per API key unless told otherwise.
pub const DEFAULT_STREAMS_PER_KEY: usize = 256;

/// Request headers' size as HTTP/2 counts a header list (RFC 9113 6.5.2):
/// each field's name and value plus 32 bytes.
pub fn header_bytes(headers: &http::HeaderMap) -> usize {
    headers.iter().map(|(name, value)| name.as_str().len() + value.len() + 32).sum()
}

/// A limit a request broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("the request's headers are {bytes} bytes, over the {} KiB the gateway takes", MAX_HEADER_BYTES / 1024)]
    Headers { bytes: usize },
    #[error(
        "API key {key_id} has {max} requests in flight, the most one key may have (the gateway's \
         BATCHMILL_MAX_STREAMS_PER_KEY); wait for some to end, or close idle streams"
    )]
    InFlight { key_id: String, max: usize },
}

impl LimitError {
    /// The refusal: RESOURCE_EXHAUSTED for a gRPC request; for any other,
    /// JSON with 431 (headers) or 429 (requests in flight).
    pub fn response(&self, grpc: bool) -> Response {
        let message = self.to_string();
        if grpc {
            return tonic::Status::resource_exhausted(message).into_http::<Body>().into_response();
        }
        let http = match self {
            LimitError::Headers { .. } => http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            LimitError::InFlight { .. } => http::StatusCode::TOO_MANY_REQUESTS,
        };
        crate::rest::error::json_error(http, tonic::Code::ResourceExhausted, &message, vec![])
    }
}

/// Refuses a request whose headers are over [`MAX_HEADER_BYTES`].
pub fn check_headers(headers: &http::HeaderMap) -> Result<(), LimitError> {
    let bytes = header_bytes(headers);
    if bytes > MAX_HEADER_BYTES {
        return Err(LimitError::Headers { bytes });
    }
    Ok(())
}

/// Requests in flight per API key.
#[derive(Clone)]
pub struct InFlight {
    max: usize,
    by_key: Arc<Mutex<HashMap<String, Arc<Semaphore>>>>,
}

impl InFlight {
    pub fn new(max: usize) -> InFlight {
        InFlight { max: max.max(1), by_key: Arc::default() }
    }

    /// From `BATCHMILL_MAX_STREAMS_PER_KEY`, or the default.
    pub fn from_env() -> InFlight {
        let max = std::env::var("BATCHMILL_MAX_STREAMS_PER_KEY").ok().and_then(|v| v.parse().ok());
        InFlight::new(max.unwrap_or(DEFAULT_STREAMS_PER_KEY))
    }

    /// A place for one more request of key `key_id`, held until dropped;
    /// refused if the key has none left.
    pub fn hold(&self, key_id: &str) -> Result<OwnedSemaphorePermit, LimitError> {
        let semaphore = {
            let mut by_key = self.by_key.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            // Keys with nothing in flight are forgotten, so the map stays as
            // small as the set of busy keys.
            if by_key.len() > 1024 {
                by_key.retain(|_, s| s.available_permits() < self.max);
            }
            by_key.entry(key_id.to_owned()).or_insert_with(|| Arc::new(Semaphore::new(self.max))).clone()
        };
        semaphore.try_acquire_owned().map_err(|_| LimitError::InFlight { key_id: key_id.to_owned(), max: self.max })
    }
}

/// `response`, with `permit` held until its body ends or is dropped (a
/// stream holds its place for as long as it streams).
pub fn holding(response: Response, permit: OwnedSemaphorePermit) -> Response {
    response.map(|body| Body::new(Held { body, _permit: permit }))
}

struct Held {
    body: Body,
    _permit: OwnedSemaphorePermit,
}

impl http_body::Body for Held {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_counted_as_a_header_list_and_refused_over_the_limit() {
        let mut headers = http::HeaderMap::new();
        headers.insert("x-a", http::HeaderValue::from_static("12345"));
        assert_eq!(header_bytes(&headers), 3 + 5 + 32);
        assert!(check_headers(&headers).is_ok());
        let big = http::HeaderValue::from_str(&"x".repeat(MAX_HEADER_BYTES)).expect("ascii");
        headers.insert("x-big", big);
        let refused = check_headers(&headers).expect_err("over the limit");
        assert_eq!(refused, LimitError::Headers { bytes: header_bytes(&headers) });
        assert_eq!(refused.response(false).status(), http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    }

    #[test]
    fn a_key_holds_at_most_its_places_and_gets_one_back_when_a_response_ends() {
        let in_flight = InFlight::new(2);
        let first = in_flight.hold("k1").expect("a place");
        let _second = in_flight.hold("k1").expect("a place");
        let refused = in_flight.hold("k1").expect_err("no place left");
        let grpc = refused.response(true);
        assert_eq!(grpc.headers().get("grpc-status").map(|v| v.as_bytes()), Some(&b"8"[..]));
        assert_eq!(refused.response(false).status(), http::StatusCode::TOO_MANY_REQUESTS);
        assert!(in_flight.hold("k2").is_ok(), "another key has its own places");
        let response = holding(Response::new(Body::from("done")), first);
        assert!(in_flight.hold("k1").is_err(), "the place is held while the response is");
        drop(response);
        assert!(in_flight.hold("k1").is_ok(), "and given back when it is dropped");
    }
}
