//! W3C trace context across hops: gRPC metadata and NATS message headers
//! carry `traceparent`/`tracestate`, so one trace follows a batch from
//! SubmitJob to its result. Headers travel as a small map so any transport
//! can carry them.

use std::collections::HashMap;

use opentelemetry::propagation::Extractor;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Trace headers (`traceparent`, `tracestate`).
pub type TraceHeaders = HashMap<String, String>;

/// The current span's context as trace headers; empty outside a trace.
pub fn current() -> TraceHeaders {
    let cx = tracing::Span::current().context();
    let mut headers = TraceHeaders::new();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut headers));
    headers
}

/// The current trace's id (32 hex digits), for logs; empty outside a trace.
pub fn trace_id() -> String {
    use opentelemetry::trace::TraceContextExt;
    let cx = tracing::Span::current().context();
    let id = cx.span().span_context().trace_id();
    if id == opentelemetry::trace::TraceId::INVALID { String::new() } else { id.to_string() }
}

/// Makes `span` a child of the trace `headers` carry (if any).
pub fn set_parent(span: &tracing::Span, headers: &TraceHeaders) {
    if headers.is_empty() {
        return;
    }
    let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(headers));
    let _ = span.set_parent(cx);
}

/// Adds trace headers to an outgoing gRPC request's metadata.
pub fn inject<T>(request: &mut tonic::Request<T>, headers: &TraceHeaders) {
    for (key, value) in headers {
        if let (Ok(key), Ok(value)) =
            (tonic::metadata::MetadataKey::from_bytes(key.as_bytes()), tonic::metadata::MetadataValue::try_from(value))
        {
            request.metadata_mut().insert(key, value);
        }
    }
}

/// A request for `message` carrying the current trace.
pub fn request<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    inject(&mut request, &current());
    request
}

/// Reads trace headers from HTTP headers (gRPC metadata is HTTP/2 headers).
pub struct HeaderExtractor<'a>(pub &'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// The span of an incoming request, child of the trace its headers carry.
pub fn request_span<B>(request: &http::Request<B>) -> tracing::Span {
    let span = tracing::info_span!("request", method = %request.method(), path = %request.uri().path());
    let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(request.headers())));
    let _ = span.set_parent(cx);
    span
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::TraceContextExt;
    use tracing::subscriber::with_default;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn a_trace_crosses_a_hop_through_headers() {
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        opentelemetry::global::set_text_map_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new());
        let tracer = opentelemetry::trace::TracerProvider::tracer(&provider, "test");
        let subscriber = tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(tracer));
        with_default(subscriber, || {
            let sender = tracing::info_span!("sender");
            let headers = sender.in_scope(current);
            assert!(headers.get("traceparent").is_some_and(|t| t.starts_with("00-")), "{headers:?}");
            let receiver = tracing::info_span!("receiver");
            set_parent(&receiver, &headers);
            let sent = sender.context().span().span_context().trace_id();
            assert_eq!(receiver.context().span().span_context().trace_id(), sent);

            let mut http_request = http::Request::new(());
            for (k, v) in &headers {
                http_request.headers_mut().insert(
                    http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                    http::HeaderValue::from_str(v).expect("value"),
                );
            }
            assert_eq!(request_span(&http_request).context().span().span_context().trace_id(), sent);
        });
    }
}
