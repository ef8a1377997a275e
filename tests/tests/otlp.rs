//! OTLP metrics as a collector receives them: a worker started with
//! `OTEL_EXPORTER_OTLP_ENDPOINT` pushes its metrics over OTLP/gRPC to an
//! OTLP metrics service (the OpenTelemetry protocol's own, served here), and
//! its items counter reaches the job's exact item count.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use batchmill_tests::{Options, Sandbox, http_as};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse};
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};
use serde_json::{Value, json};

/// Every export received.
#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<ExportMetricsServiceRequest>>>);

#[tonic::async_trait]
impl MetricsService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.0.lock().map_err(|_| tonic::Status::internal("poisoned"))?.push(request.into_inner());
        Ok(tonic::Response::new(ExportMetricsServiceResponse { partial_success: None }))
    }
}

impl Collector {
    /// The latest value of the sum `name` from service `service`, summed over
    /// its series.
    fn latest_sum(&self, service: &str, name: &str) -> Option<f64> {
        let received = self.0.lock().ok()?;
        received.iter().rev().find_map(|export| {
            export.resource_metrics.iter().find_map(|rm| {
                let from = rm
                    .resource
                    .as_ref()?
                    .attributes
                    .iter()
                    .any(|kv| kv.key == "service.name" && format!("{:?}", kv.value).contains(service));
                if !from {
                    return None;
                }
                rm.scope_metrics.iter().flat_map(|s| &s.metrics).find(|m| m.name == name).and_then(|m| {
                    let Some(metric::Data::Sum(sum)) = &m.data else { return None };
                    Some(
                        sum.data_points
                            .iter()
                            .map(|p| match p.value {
                                Some(number_data_point::Value::AsDouble(v)) => v,
                                Some(number_data_point::Value::AsInt(v)) => v as f64,
                                None => 0.0,
                            })
                            .sum(),
                    )
                })
            })
        })
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_workers_metrics_reach_an_otlp_collector() -> anyhow::Result<()> {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let serving = collector.clone();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(MetricsServiceServer::new(serving))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
    });
    let worker_env = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(), format!("http://{addr}")),
        ("OTEL_METRIC_EXPORT_INTERVAL".to_owned(), "500".to_owned()),
    ];
    let sandbox = Sandbox::start(Options { workers: 1, worker_env, ..Options::default() }).await?;
    let (base, http) = (sandbox.rest_url(), http_as(&sandbox.api_key));
    let items: Vec<Value> = (0..30).map(|i| json!(i)).collect();
    let spec = json!({"pipeline": "echo", "workers": 1, "itemList": {"items": items, "batchSize": 4}});
    http.post(format!("{base}/v1/jobs")).json(&spec).send().await?.error_for_status()?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let items = collector.latest_sum("batchmill-worker", "batchmill_worker_items");
        let batches = collector.latest_sum("batchmill-worker", "batchmill_worker_batches");
        if items == Some(30.0) && batches == Some(8.0) {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the collector got items {items:?} and batches {batches:?}, not 30 and 8 ({} exports)\nworker log:\n{}",
            collector.0.lock().map(|r| r.len()).unwrap_or(0),
            sandbox.log_tail("worker-0")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}
