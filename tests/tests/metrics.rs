//! Prometheus metrics as an operator scrapes them: every service answers
//! `GET /metrics` on its own port, in OpenMetrics text that the reference
//! parser (the `prometheus-client` package, from PyPI) reads; after a job,
//! the scheduler's and the workers' figures are its exact counts; while a
//! job waits for workers, the scheduler's pending batches (what KEDA scales
//! workers on) are exactly its enqueued batches. Workers started with
//! `BATCHMILL_LOG_FORMAT=json` log JSON lines. Every metric the Grafana
//! dashboard (deploy/grafana/batchmill.json) queries is served.

use std::collections::BTreeMap;
use std::time::Duration;

use batchmill_tests::{Options, Sandbox, http_as, tool};
use serde_json::{Value, json};

/// The samples of a service's metrics, `name{label="value",…}` (labels
/// sorted) to value, and each family as `# name`, read by
/// prometheus-client's OpenMetrics parser, which refuses text that is not
/// OpenMetrics.
async fn scrape(sandbox: &Sandbox, service: &str) -> anyhow::Result<BTreeMap<String, f64>> {
    let url = format!("{}/metrics", sandbox.url_of(service)?);
    let response = batchmill_tests::http_anonymous().get(url).send().await?;
    anyhow::ensure!(response.status() == 200, "{service}: GET /metrics answered {}", response.status());
    let kind = response.headers()[reqwest::header::CONTENT_TYPE].to_str()?.to_owned();
    anyhow::ensure!(kind.starts_with("application/openmetrics-text"), "{service}: content type {kind}");
    let text = response.text().await?;
    let parse = "import json, sys\n\
                 from prometheus_client.openmetrics.parser import text_string_to_metric_families\n\
                 out = {}\n\
                 for family in text_string_to_metric_families(sys.stdin.read()):\n\
                 \x20   out[f'# {family.name}'] = 0\n\
                 \x20   for s in family.samples:\n\
                 \x20       labels = ','.join(f'{k}=\"{v}\"' for k, v in sorted(s.labels.items()))\n\
                 \x20       out[f'{s.name}{{{labels}}}' if labels else s.name] = s.value\n\
                 print(json.dumps(out))\n";
    let mut child = tokio::process::Command::new(tool("python3")?)
        .args(["-c", parse])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        tokio::io::AsyncWriteExt::write_all(&mut stdin, text.as_bytes()).await?;
    }
    let out = child.wait_with_output().await?;
    anyhow::ensure!(
        out.status.success(),
        "{service}: the OpenMetrics parser refused the text:\n{}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// A sample's value, 0 when absent.
fn value(samples: &BTreeMap<String, f64>, key: &str) -> f64 {
    samples.get(key).copied().unwrap_or(0.0)
}

async fn wait_for(
    http: &reqwest::Client,
    base: &str,
    id: &str,
    done: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let job: Value = http.get(format!("{base}/v1/jobs/{id}")).send().await?.json().await?;
        if done(&job) {
            return Ok(job);
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "the job did not get there: {job}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_service_serves_metrics_and_they_count_a_job_exactly() -> anyhow::Result<()> {
    // The workers log JSON lines (BATCHMILL_LOG_FORMAT), checked at the end.
    let worker_env = vec![("BATCHMILL_LOG_FORMAT".to_owned(), "json".to_owned())];
    let sandbox = Sandbox::start(Options { workers: 2, worker_env, ..Options::default() }).await?;
    let (base, http) = (sandbox.rest_url(), http_as(&sandbox.api_key));
    // 250 items in batches of 10 (the last of them short): 25 batches.
    let items: Vec<Value> = (0..250).map(|i| json!({"n": i})).collect();
    let spec = json!({"pipeline": "echo", "workers": 2, "itemList": {"items": items, "batchSize": 10}});
    let job: Value = http.post(format!("{base}/v1/jobs")).json(&spec).send().await?.json().await?;
    let id = job["jobId"].as_str().unwrap_or_default().to_owned();
    let job = wait_for(&http, &base, &id, |j| j["state"] == "JOB_STATE_SUCCEEDED").await?;
    assert_eq!((job["batches"]["succeeded"].as_str(), job["items"]["completed"].as_str()), (Some("25"), Some("250")));
    // The scheduler refreshes its figures each tick (250 ms).
    tokio::time::sleep(Duration::from_millis(600)).await;

    let scheduler = scrape(&sandbox, "scheduler").await?;
    assert_eq!(value(&scheduler, "batchmill_jobs{state=\"succeeded\"}"), 1.0, "{scheduler:?}");
    assert_eq!(value(&scheduler, "batchmill_jobs{state=\"running\"}"), 0.0);
    assert_eq!(value(&scheduler, "batchmill_batches_total{outcome=\"succeeded\"}"), 25.0);
    assert_eq!(value(&scheduler, "batchmill_batches_total{outcome=\"failed\"}"), 0.0);
    assert_eq!(value(&scheduler, "batchmill_items_total{outcome=\"completed\"}"), 250.0);
    assert_eq!(value(&scheduler, "batchmill_pending_batches"), 0.0);

    // Between them the two workers ran every batch once.
    let (mut batches, mut items, mut timed) = (0.0, 0.0, 0.0);
    let mut workers = Vec::new();
    for worker in ["worker-0", "worker-1"] {
        let samples = scrape(&sandbox, worker).await?;
        batches += value(&samples, "batchmill_worker_batches_total{outcome=\"succeeded\"}");
        items += value(&samples, "batchmill_worker_items_total");
        timed += value(&samples, "batchmill_worker_batch_duration_seconds_count");
        assert_eq!(value(&samples, "batchmill_worker_running_batches"), 0.0, "{worker}: {samples:?}");
        // The sandbox's workers find no GPU.
        assert_eq!(samples.get("batchmill_worker_gpus"), Some(&0.0), "{worker}: {samples:?}");
        workers.push(samples);
    }
    assert_eq!((batches, items, timed), (25.0, 250.0, 25.0));
    // The adapters' round trips: the workers wrote results to S3 and acked
    // JetStream, the scheduler wrote etcd.
    let worker = &workers[0];
    let count = |m: &BTreeMap<String, f64>, name: &str| value(m, &format!("{name}_count{{op=\"put\"}}"));
    assert!(count(worker, "batchmill_s3_request_duration_seconds") >= 1.0, "{worker:?}");
    assert!(value(worker, "batchmill_nats_request_duration_seconds_count{op=\"ack\"}") >= 1.0, "{worker:?}");
    assert_eq!(value(worker, "batchmill_s3_request_errors_total{op=\"put\"}"), 0.0);
    let etcd_writes: f64 = ["put", "txn"]
        .iter()
        .map(|op| value(&scheduler, &format!("batchmill_etcd_request_duration_seconds_count{{op=\"{op}\"}}")))
        .sum();
    assert!(etcd_writes >= 1.0, "{scheduler:?}");

    // The gateway counted the REST requests: the submission, and each poll.
    let gateway = scrape(&sandbox, "gateway").await?;
    let ok = value(&gateway, "batchmill_gateway_requests_total{code=\"200\",protocol=\"http\"}");
    assert!(ok >= 2.0, "{gateway:?}");
    assert!(value(&gateway, "batchmill_gateway_request_duration_seconds_count{protocol=\"http\"}") >= ok);
    // The others serve theirs too.
    let mut all: Vec<String> = [&scheduler, &gateway, worker].iter().flat_map(|m| m.keys().cloned()).collect();
    for service in ["lister", "enqueuer"] {
        all.extend(scrape(&sandbox, service).await?.into_keys());
    }
    // Every metric the Grafana dashboard queries is one the services serve.
    let dashboard = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/grafana/batchmill.json"))?;
    let dashboard: Value = serde_json::from_str(&dashboard)?;
    let mut queried = 0;
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap_or_default();
            for name in
                expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).filter(|w| w.starts_with("batchmill_"))
            {
                // A family ("# name"), or a counter's or histogram's series of it.
                let served = all.iter().filter_map(|k| k.strip_prefix("# ")).any(|family| {
                    ["", "_total", "_bucket", "_sum", "_count"].iter().any(|suffix| name == format!("{family}{suffix}"))
                });
                assert!(served, "the dashboard queries {name}, which no service serves");
                queried += 1;
            }
        }
    }
    assert!(queried >= 10, "{queried} metrics queried");
    let log = sandbox.log_tail("worker-0");
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "worker-0 logged nothing");
    for line in lines {
        let entry: Value = serde_json::from_str(line).map_err(|e| anyhow::anyhow!("{e}: {line}"))?;
        assert!(entry["level"].is_string() && entry["timestamp"].is_string(), "{line}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn pending_batches_are_the_batches_waiting_for_workers() -> anyhow::Result<()> {
    // No workers: the job is admitted and enqueued, and waits.
    let sandbox = Sandbox::start(Options { workers: 0, ..Options::default() }).await?;
    let (base, http) = (sandbox.rest_url(), http_as(&sandbox.api_key));
    let items: Vec<Value> = (0..35).map(|i| json!(i)).collect();
    let spec = json!({"pipeline": "echo", "workers": 1, "itemList": {"items": items, "batchSize": 5}});
    let job: Value = http.post(format!("{base}/v1/jobs")).json(&spec).send().await?.json().await?;
    let id = job["jobId"].as_str().unwrap_or_default().to_owned();
    wait_for(&http, &base, &id, |j| j["enqueueComplete"] == true && j["batches"]["total"] == "7").await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let scheduler = scrape(&sandbox, "scheduler").await?;
        let mine = format!("batchmill_job_pending_batches{{job_id=\"{id}\",pipeline=\"echo\"}}");
        if value(&scheduler, "batchmill_pending_batches") == 7.0 && value(&scheduler, &mine) == 7.0 {
            break;
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "pending batches never 7: {scheduler:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Cancelled, it waits for nothing.
    http.post(format!("{base}/v1/jobs/{id}:cancel")).json(&json!({})).send().await?.error_for_status()?;
    wait_for(&http, &base, &id, |j| j["state"] == "JOB_STATE_CANCELLED").await?;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let scheduler = scrape(&sandbox, "scheduler").await?;
    assert_eq!(value(&scheduler, "batchmill_pending_batches"), 0.0, "{scheduler:?}");
    assert_eq!(value(&scheduler, "batchmill_jobs{state=\"cancelled\"}"), 1.0);
    assert!(!scheduler.keys().any(|k| k.contains(&id)), "an ended job keeps no series: {scheduler:?}");
    Ok(())
}
