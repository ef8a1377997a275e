//! An OTLP collector for tests: the OpenTelemetry protocol's trace and
//! metrics services over gRPC, keeping every trace export as it arrived
//! (the encoded request), so a test can look for what should not be there.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message;

/// Every trace export received.
#[derive(Clone, Default)]
pub struct Traces(Arc<Mutex<Vec<ExportTraceServiceRequest>>>);

#[tonic::async_trait]
impl TraceService for Traces {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.lock().map_err(|_| tonic::Status::internal("poisoned"))?.push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

/// Takes metrics and drops them (services push both once an endpoint is set).
struct Drop;

#[tonic::async_trait]
impl MetricsService for Drop {
    async fn export(
        &self,
        _: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        Ok(tonic::Response::new(ExportMetricsServiceResponse { partial_success: None }))
    }
}

impl Traces {
    /// Starts a collector on a free loopback port; its endpoint URL.
    pub async fn start() -> anyhow::Result<(Traces, String)> {
        let traces = Traces::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let serving = traces.clone();
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(serving))
                .add_service(MetricsServiceServer::new(Drop))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
        });
        Ok((traces, endpoint))
    }

    /// The environment that makes a service export its traces here, at once.
    pub fn env(endpoint: &str) -> Vec<(String, String)> {
        vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT".into(), endpoint.into()),
            ("OTEL_BSP_SCHEDULE_DELAY".into(), "200".into()),
            ("OTEL_METRIC_EXPORT_INTERVAL".into(), "60000".into()),
        ]
    }

    fn received(&self) -> Vec<ExportTraceServiceRequest> {
        self.0.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// The services that sent spans (`service.name`), and how many spans.
    pub fn seen(&self) -> (BTreeSet<String>, usize) {
        let (mut services, mut spans) = (BTreeSet::new(), 0);
        for export in self.received() {
            for resource in &export.resource_spans {
                let name = resource.resource.iter().flat_map(|r| &r.attributes).find(|kv| kv.key == "service.name");
                if let Some(Value::StringValue(name)) = name.and_then(|kv| kv.value.as_ref()?.value.as_ref()) {
                    services.insert(name.clone());
                }
                spans += resource.scope_spans.iter().map(|s| s.spans.len()).sum::<usize>();
            }
        }
        (services, spans)
    }

    /// The `secrets` found anywhere in what was received (names, attributes,
    /// events, as the bytes that came over the wire).
    pub fn holding<'a>(&self, secrets: &[&'a str]) -> Vec<&'a str> {
        let bytes: Vec<Vec<u8>> = self.received().iter().map(Message::encode_to_vec).collect();
        secrets
            .iter()
            .filter(|s| bytes.iter().any(|b| b.windows(s.len()).any(|w| w == s.as_bytes())))
            .copied()
            .collect()
    }
}
