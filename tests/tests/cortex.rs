//! Cortex's BatchAPI routes answer Cortex's documented requests: submit with
//! each source, dry runs in plain text, status, stop and listing, and
//! `{"kind", "message"}` errors.
// A test walks a whole scenario; the 80-line bar is the product's.
#![allow(clippy::too_many_lines)]

use batchmill_blob::ObjectStore;
use std::time::Duration;

use batchmill_tests::{BUCKET, Options, Sandbox};
use bytes::Bytes;
use serde_json::{Value, json};

async fn status(http: &reqwest::Client, base: &str, job_id: &str) -> anyhow::Result<Value> {
    Ok(http.get(format!("{base}/echo?jobID={job_id}")).send().await?.json().await?)
}

async fn wait_status(http: &reqwest::Client, base: &str, job_id: &str, want: &str) -> anyhow::Result<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let s = status(http, base, job_id).await?;
        if s["job_status"]["status"] == want {
            return Ok(s);
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "job {job_id} never {want}: {s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn cortex_routes_submit_report_stop_and_list_jobs() -> anyhow::Result<()> {
    let sandbox = Sandbox::start(Options::default()).await?;
    let http = sandbox.http();
    let base = sandbox.rest_url();
    for i in 0..3 {
        let key = format!("cortex/images/img_{i}.jpg");
        sandbox.blob.put(BUCKET, &key, Bytes::from_static(b"jpg"), "image/jpeg").await?;
    }
    sandbox.blob.put(BUCKET, "cortex/images/notes.txt", Bytes::from_static(b"txt"), "text/plain").await?;

    // Submit with item_list: Cortex's response fields.
    let items: Vec<Value> = (0..10).map(|i| json!({"url": format!("https://x/{i}.jpg")})).collect();
    let body = json!({"workers": 2, "item_list": {"items": items, "batch_size": 3}, "config": {"k": 1},
        "sqs_dead_letter_queue": {"arn": "arn:aws:sqs:us-west-2:123456789:failed.fifo", "max_receive_count": 2}});
    let response = http.post(format!("{base}/echo")).json(&body).send().await?;
    assert_eq!(response.status(), 200);
    let spec: Value = response.json().await?;
    let job_id = spec["job_id"].as_str().expect("job_id").to_owned();
    assert_eq!(
        (spec["api_name"].as_str(), spec["kind"].as_str(), spec["workers"].as_i64()),
        (Some("echo"), Some("BatchAPI"), Some(2))
    );
    assert_eq!(spec["config"], json!({"k": 1}));
    assert_eq!(
        spec["sqs_dead_letter_queue"],
        json!({"arn": "arn:aws:sqs:us-west-2:123456789:failed.fifo", "max_receive_count": 2})
    );
    assert!(spec["created_time"].as_str().is_some_and(|t| t.ends_with('Z')), "{spec}");

    let done = wait_status(&http, &base, &job_id, "succeeded").await?;
    let s = &done["job_status"];
    assert_eq!(s["batches_in_queue"], 0, "{done}");
    assert_eq!(s["batch_metrics"]["succeeded"], 4);
    assert_eq!(s["batch_metrics"]["failed"], 0);
    assert!(s["batch_metrics"]["avg_time_per_batch"].is_number(), "{done}");
    assert_eq!(s["item_counts"]["completed"], 10);
    assert!(s["end_time"].is_string() && s["start_time"].is_string());
    assert!(s.get("worker_counts").is_none(), "worker counts only while running: {done}");
    assert_eq!(done["endpoint"], format!("{base}/echo?jobID={job_id}"));

    // Dry runs: plain text, one matched path a line, then "validations passed".
    let lister = json!({"workers": 1, "file_path_lister": {"s3_paths": [format!("s3://{BUCKET}/cortex/images/")],
        "includes": ["**.jpg"], "batch_size": 2}});
    let response = http.post(format!("{base}/echo?dryRun=true")).json(&lister).send().await?;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/plain");
    let expected: String = (0..3).map(|i| format!("s3://{BUCKET}/cortex/images/img_{i}.jpg\n")).collect();
    assert_eq!(response.text().await?, format!("{expected}validations passed"));
    let response = http
        .post(format!("{base}/echo?dryRun=true"))
        .json(&json!({"workers": 1, "item_list": {"items": [1], "batch_size": 1}}))
        .send()
        .await?;
    assert_eq!(response.text().await?, "validations passed");
    let nothing =
        json!({"workers": 1, "delimited_files": {"s3_paths": [format!("s3://{BUCKET}/none/")], "batch_size": 1}});
    let response = http.post(format!("{base}/echo?dryRun=true")).json(&nothing).send().await?;
    assert_eq!(response.status(), 400);
    let text = response.text().await?;
    assert!(text.starts_with('\n') && text.ends_with('\n') && text.contains("no S3 object matches"), "{text:?}");
    let listed: Value = http.get(format!("{base}/v1/jobs")).send().await?.json().await?;
    assert_eq!(listed["jobs"].as_array().map(Vec::len), Some(1), "dry runs create no job");

    // The file_path_lister job runs; a slow delimited job is stopped.
    let response = http.post(format!("{base}/echo")).json(&lister).send().await?;
    let second: Value = response.json().await?;
    let second_id = second["job_id"].as_str().unwrap().to_owned();
    wait_status(&http, &base, &second_id, "succeeded").await?;
    let lines: String = (0..50).map(|i| format!("{{\"n\": {i}}}\n")).collect();
    sandbox.blob.put(BUCKET, "cortex/lines/a.jsonl", Bytes::from(lines), "application/x-ndjson").await?;
    let slow = json!({"workers": 1, "config": {"delay_ms": 500},
        "delimited_files": {"s3_paths": [format!("s3://{BUCKET}/cortex/lines/")], "batch_size": 1}});
    let third: Value = http.post(format!("{base}/echo")).json(&slow).send().await?.json().await?;
    let third_id = third["job_id"].as_str().unwrap().to_owned();
    let running = wait_status(&http, &base, &third_id, "running").await?;
    assert!(running["job_status"]["worker_counts"]["running"].as_i64().is_some(), "{running}");
    let response = http.delete(format!("{base}/echo?jobID={third_id}")).send().await?;
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await?, format!("{{\"message\":\"stopped job {third_id}\"}}\n"), "byte for byte");
    wait_status(&http, &base, &third_id, "stopped").await?;

    // GET /<api> lists its jobs, newest first.
    let listed: Value = http.get(format!("{base}/echo")).send().await?.json().await?;
    let ids: Vec<&str> =
        listed["batch_job_statuses"].as_array().unwrap().iter().map(|j| j["job_id"].as_str().unwrap()).collect();
    assert_eq!(ids, [third_id.as_str(), second_id.as_str(), job_id.as_str()], "{listed}");
    assert_eq!(listed["batch_job_statuses"][0]["status"], "stopped");

    // Errors: {"kind", "message"}, 404 for an unknown api or job.
    let response = http.post(format!("{base}/nope")).json(&body).send().await?;
    assert_eq!(response.status(), 404);
    let error: Value = response.json().await?;
    assert_eq!(error, json!({"kind": "err_api_not_deployed", "message": "nope is not deployed"}));
    let response = http.get(format!("{base}/echo?jobID=0123456789abcdef0123")).send().await?;
    assert_eq!(response.status(), 404);
    assert_eq!(response.json::<Value>().await?["kind"], "err_job_not_found");
    for (bad, says) in [
        (json!({"workers": 0, "item_list": {"items": [1], "batch_size": 1}}), "workers"),
        (json!({"workers": 1, "item_list": {"items": [1], "batch_size": 0}}), "item_list.batch_size"),
        (json!({"workers": 1, "itemList": {"items": [1], "batch_size": 1}}), "unknown field `itemList`"),
        (json!({"workers": 1}), "source"),
        (
            json!({"workers": 1, "file_path_lister": {"s3_paths": ["s3://bucket/y"], "includes": ["[bad"], "batch_size": 1}}),
            "file_path_lister.includes[0]",
        ),
    ] {
        let response = http.post(format!("{base}/echo")).json(&bad).send().await?;
        assert_eq!(response.status(), 400, "{bad}");
        let error: Value = response.json().await?;
        assert!(error["kind"].is_string(), "{error}");
        assert!(error["message"].as_str().unwrap_or_default().contains(says), "{error} does not name {says}");
    }
    Ok(())
}
