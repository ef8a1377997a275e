//! Limits a user can run into, each refused with an error that names it,
//! while the cluster stays up: items per job (`BATCHMILL_MAX_JOB_ITEMS`),
//! request headers, and requests in flight per API key
//! (`BATCHMILL_MAX_STREAMS_PER_KEY`), streams included.

use std::time::Duration;

use batchmill_blob::ObjectStore;
use batchmill_proto::jobs::v1 as pb;
use batchmill_tests::{BUCKET, Options, Sandbox};
use bytes::Bytes;
use serde_json::{Value, json};

#[tokio::test]
async fn a_job_over_the_item_limit_is_refused_or_failed_naming_the_limit() -> anyhow::Result<()> {
    let sandbox = Sandbox::start(Options {
        workers: 1,
        service_env: vec![("BATCHMILL_MAX_JOB_ITEMS".into(), "50".into())],
        ..Options::default()
    })
    .await?;
    let http = sandbox.http();
    let base = sandbox.rest_url();
    let inline = |n: usize| json!({"pipeline": "echo", "workers": 1, "itemList": {"items": (0..n).collect::<Vec<_>>(), "batchSize": 10}});

    // Inline items are counted at submission, and by a dry run.
    for url in [format!("{base}/v1/jobs"), format!("{base}/v1/jobs:dryRun")] {
        let response = http.post(&url).json(&inline(51)).send().await?;
        assert_eq!(response.status(), 400, "{url}");
        let body: Value = response.json().await?;
        let text = body.to_string();
        assert!(text.contains("item_list.items") && text.contains("51 items, over the 50"), "{url}: {text}");
    }
    let at_limit = sandbox.submit_rest(inline(50), Duration::from_secs(60)).await?;
    assert_eq!(at_limit.state(), pb::JobState::Succeeded, "{at_limit:?}");

    // Listed items are counted as the lister goes: the job fails once past it.
    let lines: String = (0..120).map(|i| format!("{{\"i\":{i}}}\n")).collect();
    sandbox.blob.put(BUCKET, "limits/lines.jsonl", Bytes::from(lines), "application/x-ndjson").await?;
    let listed = json!({"pipeline": "echo", "workers": 1,
        "delimitedFiles": {"s3Paths": [format!("s3://{BUCKET}/limits/lines.jsonl")], "batchSize": 10}});
    let failed = sandbox.submit_rest(listed, Duration::from_secs(60)).await?;
    assert_eq!(failed.state(), pb::JobState::Failed, "{failed:?}");
    assert!(
        failed.message.contains("more than 50 items") && failed.message.contains("BATCHMILL_MAX_JOB_ITEMS"),
        "{failed:?}"
    );
    sandbox.check_all_alive()
}

#[tokio::test]
async fn headers_over_the_limit_are_refused_naming_it_and_the_gateway_stays_up() -> anyhow::Result<()> {
    let sandbox = Sandbox::start(Options { workers: 1, ..Options::default() }).await?;
    let url = format!("{}/v1/jobs", sandbox.rest_url());
    // REST: 431, naming the limit.
    let response = sandbox.http().get(&url).header("x-padding", "x".repeat(20 * 1024)).send().await?;
    assert_eq!(response.status(), 431);
    let body = response.text().await?;
    assert!(body.contains("headers are") && body.contains("over the 16 KiB"), "{body}");
    // Far over it, the HTTP layer refuses before reading them all (a bare
    // 431, or over TLS the connection closed under the request).
    let response = sandbox.http().get(&url).header("x-padding", "x".repeat(200 * 1024)).send().await;
    assert!(response.as_ref().map_or(true, |r| r.status() == 431), "{response:?}");
    // gRPC: RESOURCE_EXHAUSTED, naming the limit.
    let mut jobs = sandbox.jobs().await?;
    let mut request = tonic::Request::new(pb::ListJobsRequest::default());
    request.metadata_mut().insert("x-padding", "x".repeat(20 * 1024).parse()?);
    let refused = jobs.list_jobs(request).await.expect_err("headers over the limit");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("over the 16 KiB"), "{refused:?}");
    // Still serving.
    jobs.list_jobs(pb::ListJobsRequest::default()).await?;
    assert_eq!(sandbox.http().get(&url).send().await?.status(), 200);
    sandbox.check_all_alive()
}

#[tokio::test]
async fn a_key_holds_at_most_its_streams_and_gets_them_back_as_they_end() -> anyhow::Result<()> {
    let sandbox = Sandbox::start(Options {
        workers: 1,
        service_env: vec![("BATCHMILL_MAX_STREAMS_PER_KEY".into(), "3".into())],
        ..Options::default()
    })
    .await?;
    let other = batchmill_tests::member_key(&sandbox, "other").await?;
    let items = [json!(1)];
    let mut jobs = sandbox.jobs().await?;
    // A job that runs for long, so that its watchers stream until they go.
    let job =
        jobs.submit_job(batchmill_tests::echo_job(&items, 1, 1, json!({"delay_ms": 600_000}))).await?.into_inner().job;
    let job_id = job.map(|j| j.job_id).unwrap_or_default();
    let watch = || pb::WatchJobRequest { job_id: job_id.clone() };
    let mut streams = Vec::new();
    for _ in 0..3 {
        streams.push(jobs.watch_job(watch()).await?.into_inner());
    }
    let refused = jobs.watch_job(watch()).await.expect_err("a fourth stream");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("3 requests in flight"), "{refused:?}");
    let rest = sandbox.http().get(format!("{}/v1/jobs/{job_id}", sandbox.rest_url())).send().await?;
    assert_eq!(rest.status(), 429, "REST calls of the key count too");
    assert!(rest.text().await?.contains("BATCHMILL_MAX_STREAMS_PER_KEY"));

    // Another key has its own places.
    sandbox.jobs_as(&other).await?.list_jobs(pb::ListJobsRequest::default()).await?;
    // A stream that ends gives its place back.
    drop(streams.pop());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match jobs.get_job(pb::GetJobRequest { job_id: job_id.clone() }).await {
            Ok(_) => break,
            Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                anyhow::ensure!(tokio::time::Instant::now() < deadline, "the place was never given back");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(status) => anyhow::bail!("{status:?}"),
        }
    }
    sandbox.check_all_alive()
}
