//! Logs and traces: `tracing` to stderr, filtered by `RUST_LOG` (default
//! `info`), as text or, with `BATCHMILL_LOG_FORMAT=json`, JSON lines with
//! trace ids ([`crate::logfmt`]), plus OpenTelemetry OTLP traces and
//! metrics ([`crate::otlp_metrics`]) when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.

use std::io::IsTerminal;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Flushes telemetry when dropped; keep it alive until the end of `main`.
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
    meters: Option<opentelemetry_sdk::metrics::SdkMeterProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = provider.shutdown();
        }
        if let Some(meters) = self.meters.take() {
            let _ = meters.shutdown();
        }
    }
}

/// Installs the global subscriber for `service` (such as "batchmill-gateway")
/// and the W3C trace-context propagator. Spans always get OpenTelemetry ids,
/// so trace context passes through every hop; they are exported only when
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
pub fn init(service: &'static str) -> Result<TelemetryGuard, crate::RuntimeError> {
    opentelemetry::global::set_text_map_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only on a terminal: logs written to files (deploy/local's, the
    // tests') or collected by Kubernetes stay plain text.
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal());
    let resource = opentelemetry_sdk::Resource::builder().with_service_name(service).build();
    let meters = crate::otlp_metrics::start(resource.clone())?;
    let mut builder = SdkTracerProvider::builder().with_resource(resource);
    if std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_some() {
        let exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic().build()?;
        builder = builder.with_batch_exporter(exporter);
    }
    let provider = builder.build();
    let otel = tracing_opentelemetry::layer().with_tracer(provider.tracer(service));
    let (text, json) = match crate::logfmt::LogFormat::from_env() {
        crate::logfmt::LogFormat::Text => (Some(fmt), None),
        crate::logfmt::LogFormat::Json => (
            None,
            Some(tracing_subscriber::fmt::layer().with_writer(std::io::stderr).event_format(crate::logfmt::JsonLines)),
        ),
    };
    tracing_subscriber::registry().with(filter).with(text).with(json).with(otel).try_init()?;
    Ok(TelemetryGuard { provider: Some(provider), meters })
}
