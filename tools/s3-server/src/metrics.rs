//! The server's own request counts, by kind of S3 request, served in the
//! Prometheus text format on a separate address (`--metrics-listen`), so a
//! benchmark counts the requests a job made instead of estimating them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use http::{Method, Request};

/// The kinds counted: S3's operations as far as a request's method and path
/// tell them apart.
const KINDS: [&str; 7] = ["put", "get", "head", "delete", "list", "post", "other"];

#[derive(Default)]
pub struct Counts {
    requests: [AtomicU64; KINDS.len()],
}

impl Counts {
    pub fn new() -> Arc<Counts> {
        Arc::new(Counts::default())
    }

    /// Counts one request.
    pub fn count<B>(&self, request: &Request<B>) {
        self.requests[kind(request.method(), request.uri().path())].fetch_add(1, Ordering::Relaxed);
    }

    /// The counts in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::from(
            "# HELP batchmill_s3_requests_total S3 requests received, by kind.\n\
             # TYPE batchmill_s3_requests_total counter\n",
        );
        for (name, count) in KINDS.iter().zip(&self.requests) {
            out.push_str(&format!(
                "batchmill_s3_requests_total{{kind=\"{name}\"}} {}\n",
                count.load(Ordering::Relaxed)
            ));
        }
        out
    }
}

/// Index into [`KINDS`]. A GET of a bucket itself (path `/bucket`) is a
/// listing; path-style addressing is what the cluster's clients use.
fn kind(method: &Method, path: &str) -> usize {
    let names_object = path.trim_start_matches('/').trim_end_matches('/').contains('/');
    match *method {
        Method::PUT => 0,
        Method::GET if names_object => 1,
        Method::GET => 4,
        Method::HEAD => 2,
        Method::DELETE => 3,
        Method::POST => 5,
        _ => 6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: Method, uri: &str) -> Request<()> {
        Request::builder().method(method).uri(uri).body(()).unwrap_or_default()
    }

    #[test]
    fn requests_are_counted_by_kind() {
        let counts = Counts::default();
        counts.count(&request(Method::PUT, "/b/results/j/j-0.jsonl"));
        counts.count(&request(Method::PUT, "/b/k"));
        counts.count(&request(Method::GET, "/b/k"));
        counts.count(&request(Method::GET, "/b?list-type=2&prefix=results/"));
        counts.count(&request(Method::GET, "/b/"));
        counts.count(&request(Method::HEAD, "/b/k"));
        let text = counts.render();
        for line in [
            "batchmill_s3_requests_total{kind=\"put\"} 2",
            "batchmill_s3_requests_total{kind=\"get\"} 1",
            "batchmill_s3_requests_total{kind=\"list\"} 2",
            "batchmill_s3_requests_total{kind=\"head\"} 1",
            "batchmill_s3_requests_total{kind=\"delete\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }
}
