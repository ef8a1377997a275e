//! OTLP metrics, beside the traces, when `OTEL_EXPORTER_OTLP_ENDPOINT` is
//! set: the process's Prometheus registry ([`crate::metrics`]) read back
//! every second and exported through OpenTelemetry's periodic reader
//! (`OTEL_METRIC_EXPORT_INTERVAL`, default 60 s). A counter family becomes
//! a monotonic sum of its name, a gauge a gauge; a histogram becomes the
//! sums `<name>_count` and `<name>_sum` and the cumulative bucket counts
//! `<name>_bucket` by `le`, as Prometheus writes them. Each family gets its
//! instrument once it first appears in the registry.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry_sdk::metrics::SdkMeterProvider;

/// A sample's labels and value.
type Series = Vec<(Vec<KeyValue>, f64)>;

/// The registry as last read: each exported name's series.
type Snapshot = Arc<Mutex<HashMap<String, Series>>>;

/// How often the registry is read back.
const READ_EVERY: Duration = Duration::from_secs(1);

/// Starts exporting, if an OTLP endpoint is set; the provider flushes on
/// shutdown.
pub fn start(resource: opentelemetry_sdk::Resource) -> Result<Option<SdkMeterProvider>, crate::RuntimeError> {
    if std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_none() {
        return Ok(None);
    }
    let exporter = opentelemetry_otlp::MetricExporter::builder().with_tonic().build()?;
    let provider = SdkMeterProvider::builder().with_resource(resource).with_periodic_exporter(exporter).build();
    let meter = provider.meter("batchmill");
    let snapshot: Snapshot = Arc::default();
    tokio::spawn(async move {
        let mut bridged: BTreeMap<String, Box<dyn std::any::Any + Send>> = BTreeMap::new();
        let mut tick = tokio::time::interval(READ_EVERY);
        loop {
            tick.tick().await;
            let (kinds, series) = parse(&crate::metrics::render());
            *snapshot.lock().unwrap_or_else(PoisonError::into_inner) = series;
            for (name, kind) in kinds {
                for (exported, monotonic) in exported_names(&name, &kind) {
                    if bridged.contains_key(&exported) {
                        continue;
                    }
                    let shared = snapshot.clone();
                    let key = exported.clone();
                    let observe = move |observer: &dyn opentelemetry::metrics::AsyncInstrument<f64>| {
                        let snapshot = shared.lock().unwrap_or_else(PoisonError::into_inner);
                        for (labels, value) in snapshot.get(&key).into_iter().flatten() {
                            observer.observe(*value, labels);
                        }
                    };
                    let instrument: Box<dyn std::any::Any + Send> = if monotonic {
                        Box::new(meter.f64_observable_counter(exported.clone()).with_callback(observe).build())
                    } else {
                        Box::new(meter.f64_observable_gauge(exported.clone()).with_callback(observe).build())
                    };
                    bridged.insert(exported, instrument);
                }
            }
        }
    });
    Ok(Some(provider))
}

/// The names a family is exported as, and whether each is monotonic.
fn exported_names(family: &str, kind: &str) -> Vec<(String, bool)> {
    match kind {
        "counter" => vec![(family.to_owned(), true)],
        "gauge" => vec![(family.to_owned(), false)],
        "histogram" => ["_count", "_sum", "_bucket"].iter().map(|s| (format!("{family}{s}"), true)).collect(),
        _ => Vec::new(),
    }
}

/// The families' kinds, and every sample by the name it is exported under
/// (a counter's `_total` sample under the family's name).
fn parse(text: &str) -> (BTreeMap<String, String>, HashMap<String, Series>) {
    let mut kinds = BTreeMap::new();
    let mut series: HashMap<String, Series> = HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some((name, kind)) = rest.split_once(' ') {
                kinds.insert(name.to_owned(), kind.to_owned());
            }
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let Some((name, labels, value)) = sample(line) else { continue };
        let name = match name.strip_suffix("_total") {
            Some(family) if kinds.get(family).is_some_and(|k| k == "counter") => family.to_owned(),
            _ => name.to_owned(),
        };
        series.entry(name).or_default().push((labels, value));
    }
    (kinds, series)
}

/// One sample line: `name{a="x",b="y"} value` or `name value`.
fn sample(line: &str) -> Option<(&str, Vec<KeyValue>, f64)> {
    let (head, value) = line.rsplit_once(' ')?;
    let value = value.parse().ok()?;
    let Some((name, rest)) = head.split_once('{') else {
        return Some((head, Vec::new(), value));
    };
    let mut labels = Vec::new();
    let mut chars = rest.strip_suffix('}')?.chars().peekable();
    while chars.peek().is_some() {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if chars.next() != Some('"') {
            return None;
        }
        let mut text = String::new();
        while let Some(c) = chars.next() {
            match c {
                '"' => break,
                '\\' => match chars.next()? {
                    'n' => text.push('\n'),
                    other => text.push(other),
                },
                c => text.push(c),
            }
        }
        labels.push(KeyValue::new(key.trim_start_matches(',').to_owned(), text));
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
    Some((name, labels, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registry_text_is_read_back_by_family() {
        let text = "# HELP batchmill_items Items.\n# TYPE batchmill_items counter\n\
                    batchmill_items_total{outcome=\"completed\"} 250\nbatchmill_items_total{outcome=\"failed\"} 0\n\
                    # TYPE batchmill_pending_batches gauge\nbatchmill_pending_batches 7\n\
                    # TYPE batchmill_x_seconds histogram\nbatchmill_x_seconds_sum{op=\"a\\\"b\"} 1.5\n\
                    batchmill_x_seconds_count{op=\"a\\\"b\"} 3\nbatchmill_x_seconds_bucket{le=\"0.1\",op=\"a\\\"b\"} 2\n# EOF\n";
        let (kinds, series) = parse(text);
        assert_eq!(kinds.get("batchmill_items").map(String::as_str), Some("counter"));
        let items = &series["batchmill_items"];
        assert_eq!(items.len(), 2);
        assert_eq!((items[0].0[0].value.as_str().into_owned(), items[0].1), ("completed".to_owned(), 250.0));
        assert_eq!(series["batchmill_pending_batches"][0].1, 7.0);
        let bucket = &series["batchmill_x_seconds_bucket"][0];
        assert_eq!(bucket.0.len(), 2);
        assert_eq!(bucket.0[1].value.as_str(), "a\"b");
        assert_eq!(exported_names("batchmill_x_seconds", "histogram").len(), 3);
    }
}
