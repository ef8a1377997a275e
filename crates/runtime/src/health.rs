//! The service's health, reported two ways: the gRPC health service (for
//! grpcurl, gRPC load balancers and Kubernetes' gRPC probes) and
//! `GET /healthz` beside `/metrics` (for probes that cannot speak gRPC or
//! TLS: with TLS on the gRPC port, Kubernetes probes the metrics port).

use std::sync::atomic::{AtomicBool, Ordering};

use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// The process's overall status (service ""), as `/healthz` answers it.
static SERVING: AtomicBool = AtomicBool::new(false);

/// Reports the service's health; clone it where the status changes.
#[derive(Clone)]
pub struct Health {
    reporter: HealthReporter,
}

impl Health {
    pub(crate) fn new(reporter: HealthReporter) -> Health {
        Health { reporter }
    }

    /// Sets the overall status: SERVING, or NOT_SERVING while the service
    /// cannot do its work.
    pub async fn set_serving(&self, serving: bool) {
        SERVING.store(serving, Ordering::SeqCst);
        let status = if serving { ServingStatus::Serving } else { ServingStatus::NotServing };
        self.reporter.set_service_status("", status).await;
    }

    /// Marks one named gRPC service SERVING.
    pub(crate) async fn set_service_serving(&self, name: &str) {
        self.reporter.set_service_status(name, ServingStatus::Serving).await;
    }
}

/// `GET /healthz`: 200 `SERVING`, or 503 `NOT_SERVING`.
pub(crate) async fn healthz() -> (http::StatusCode, &'static str) {
    if SERVING.load(Ordering::SeqCst) {
        (http::StatusCode::OK, "SERVING\n")
    } else {
        (http::StatusCode::SERVICE_UNAVAILABLE, "NOT_SERVING\n")
    }
}
