//! The first job end to end, over gRPC and over REST: inline items, two
//! workers, every result object exact, the ledger's counts exact.

use std::time::Duration;

use batchmill_blob::ObjectStore;
use batchmill_proto::jobs::v1 as pb;
use batchmill_tests::{Options, Sandbox, assert_echo_results, echo_job};
use serde_json::{Value, json};

fn items(n: usize) -> Vec<Value> {
    (0..n).map(|i| json!({"n": i, "text": format!("item {i} ✓")})).collect()
}

#[tokio::test]
async fn grpc_job_succeeds_with_every_result() -> anyhow::Result<()> {
    let sandbox = Sandbox::start(Options::default()).await?;
    let items = items(95);
    let mut jobs = sandbox.jobs().await?;
    // Two lanes a worker, as a GPU runs embed: each worker holds two
    // batches at once.
    let config = json!({"lanes": 2, "delay_ms": 400});
    let submitted = jobs.submit_job(echo_job(&items, 10, 2, config)).await?.into_inner().job.unwrap();
    assert_eq!(submitted.state(), pb::JobState::Pending);
    assert_eq!(submitted.max_workers, 2);

    // The progress stream ends with the terminal state.
    let mut watch = jobs.watch_job(pb::WatchJobRequest { job_id: submitted.job_id.clone() }).await?.into_inner();
    let mut last = None;
    while let Some(update) = tokio::time::timeout(Duration::from_secs(60), watch.message()).await?? {
        last = update.job;
    }
    let watched = last.expect("the watch sent the job");
    assert_eq!(watched.state(), pb::JobState::Succeeded, "{watched:?}");

    let job = jobs.get_job(pb::GetJobRequest { job_id: submitted.job_id.clone() }).await?.into_inner().job.unwrap();
    assert_eq!(job.state(), pb::JobState::Succeeded);
    let b = job.batches.unwrap();
    assert_eq!((b.total, b.succeeded, b.failed, b.in_queue, b.failed_attempts), (10, 10, 0, 0, 0));
    let i = job.items.unwrap();
    assert_eq!((i.total, i.completed, i.failed, i.pending), (95, 95, 0, 0));
    assert!(job.enqueue_complete);
    assert!(job.start_time.is_some() && job.end_time.is_some());
    assert!(job.queue_time.is_some() && job.elapsed_time.is_some());
    assert_eq!(
        job.workers.unwrap().succeeded,
        2,
        "both workers took part:\n{}",
        sandbox.log_tail("scheduler")
            + "\n--- worker-0\n"
            + &sandbox.log_tail("worker-0")
            + "\n--- worker-1\n"
            + &sandbox.log_tail("worker-1")
    );
    assert_echo_results(&sandbox, &job, &items, 10, &[]).await?;
    let records = jobs
        .list_batches(pb::ListBatchesRequest { job_id: job.job_id.clone(), ..Default::default() })
        .await?
        .into_inner()
        .batches;
    assert_eq!(records.len(), 10, "{records:?}");
    let span = |r: &pb::BatchRecord| {
        let end = r.end_time.as_ref().map_or(0, |t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000);
        let took = r.duration.as_ref().map_or(0, |d| d.seconds * 1000 + i64::from(d.nanos) / 1_000_000);
        (end - took, end)
    };
    // A record's span ends after its result is written, which overlaps the
    // next batch even in one lane; two lanes overlap by most of the delay.
    let overlap = |a: &pb::BatchRecord, b: &pb::BatchRecord| span(a).1.min(span(b).1) - span(a).0.max(span(b).0);
    let most = records
        .iter()
        .enumerate()
        .flat_map(|(i, a)| {
            records[i + 1..].iter().filter(move |b| a.worker_id == b.worker_id).map(move |b| overlap(a, b))
        })
        .max()
        .unwrap_or(0);
    assert!(most >= 200, "no worker ran two batches at once (most overlap {most} ms): {records:?}");

    let listed = jobs.list_jobs(pb::ListJobsRequest::default()).await?.into_inner();
    assert_eq!(listed.jobs.iter().map(|j| j.job_id.as_str()).collect::<Vec<_>>(), vec![job.job_id.as_str()]);
    Ok(())
}

#[tokio::test]
async fn rest_job_succeeds_and_lists_newest_first() -> anyhow::Result<()> {
    let sandbox = Sandbox::start(Options::default()).await?;
    let http = sandbox.http();
    let base = sandbox.rest_url();
    let items = items(40);
    let mut ids = Vec::new();
    for _ in 0..2 {
        let body = json!({"pipeline": "echo", "workers": 2, "itemList": {"items": items, "batchSize": 7}});
        let response = http.post(format!("{base}/v1/jobs")).json(&body).send().await?;
        assert_eq!(response.status(), 200);
        let job: Value = response.json().await?;
        assert_eq!(job["state"], "JOB_STATE_PENDING", "{job}");
        assert_eq!(job["pipeline"], "echo");
        ids.push(job["jobId"].as_str().unwrap().to_owned());
    }
    for id in &ids {
        sandbox.wait_terminal(id, Duration::from_secs(60)).await?;
        let job: Value = http.get(format!("{base}/v1/jobs/{id}")).send().await?.json().await?;
        assert_eq!(job["state"], "JOB_STATE_SUCCEEDED", "{job}");
        // Canonical proto3 JSON: int64 counts are strings.
        assert_eq!(job["batches"]["total"], "6");
        assert_eq!(job["batches"]["succeeded"], "6");
        assert_eq!(job["batches"]["failed"], "0");
        assert_eq!(job["items"]["completed"], "40");
        assert_eq!(job["outputUri"], "s3://batchmill/results");
        let grpc_view =
            sandbox.jobs().await?.get_job(pb::GetJobRequest { job_id: id.clone() }).await?.into_inner().job.unwrap();
        assert_echo_results(&sandbox, &grpc_view, &items, 7, &[]).await?;
    }
    // Newest first, with paging.
    let page: Value = http.get(format!("{base}/v1/jobs?pageSize=1")).send().await?.json().await?;
    assert_eq!(page["jobs"][0]["jobId"], ids[1].as_str(), "{page}");
    let token = page["nextPageToken"].as_str().unwrap();
    let page2: Value = http.get(format!("{base}/v1/jobs?pageSize=1&pageToken={token}")).send().await?.json().await?;
    assert_eq!(page2["jobs"][0]["jobId"], ids[0].as_str(), "{page2}");
    assert_eq!(page2["nextPageToken"], "");

    // The progress stream over REST: NDJSON, ending with the terminal state.
    let text = http.get(format!("{base}/v1/jobs/{}:watch", ids[0])).send().await?.text().await?;
    let last: Value = serde_json::from_str(text.lines().last().unwrap())?;
    assert_eq!(last["result"]["job"]["state"], "JOB_STATE_SUCCEEDED", "{text}");
    Ok(())
}

#[tokio::test]
async fn outputs_download_through_presigned_urls_until_they_expire() -> anyhow::Result<()> {
    let sandbox = Sandbox::start(Options { workers: 1, ..Options::default() }).await?;
    let (http, base) = (sandbox.http(), sandbox.rest_url());
    let body = json!({"pipeline": "echo", "workers": 1, "itemList": {"items": items(10), "batchSize": 3}});
    let job = sandbox.submit_rest(body, Duration::from_secs(60)).await?;
    assert_eq!(job.state(), pb::JobState::Succeeded);

    // Every output, two a page: 4 result objects and the manifest.
    let (mut outputs, mut token) = (Vec::new(), String::new());
    loop {
        let url = format!("{base}/v1/jobs/{}/outputs?pageSize=2&pageToken={token}", job.job_id);
        let page: Value = http.get(url).send().await?.json().await?;
        outputs.extend(page["outputs"].as_array().cloned().unwrap_or_default());
        token = page["nextPageToken"].as_str().unwrap_or_default().to_owned();
        if token.is_empty() {
            break;
        }
    }
    let names: Vec<&str> = outputs.iter().filter_map(|o| o["name"].as_str()).collect();
    let id = &job.job_id;
    let expected = [format!("{id}-0.jsonl"), format!("{id}-1.jsonl"), format!("{id}-2.jsonl"), format!("{id}-3.jsonl")];
    assert_eq!(names[..4], expected.iter().map(String::as_str).collect::<Vec<_>>()[..], "{outputs:?}");
    assert_eq!(names.get(4).copied(), Some("manifest.json"));
    assert_eq!(names.len(), 5);
    // Each URL downloads its object, byte for byte, with no credentials.
    let anonymous = batchmill_tests::http_anonymous();
    for output in &outputs {
        let key = output["uri"].as_str().unwrap_or_default().trim_start_matches("s3://batchmill/").to_owned();
        let stored = sandbox.blob.get("batchmill", &key).await?;
        assert_eq!(output["sizeBytes"], stored.len().to_string(), "{output}");
        let url = output["downloadUrl"].as_str().unwrap_or_default();
        let downloaded = anonymous.get(url).send().await.map_err(|e| anyhow::anyhow!("{url}: {e:?}: {output}"))?;
        assert_eq!(downloaded.status(), 200, "{url}");
        assert_eq!(downloaded.bytes().await?, stored, "{url}");
    }
    // A URL made to last one second stops working after it.
    let url = format!("{base}/v1/jobs/{}/outputs?expiresIn=1s&pageSize=1", job.job_id);
    let page: Value = http.get(url).send().await?.json().await?;
    let short = page["outputs"][0]["downloadUrl"].as_str().unwrap_or_default().to_owned();
    assert!(!short.is_empty(), "{page}");
    assert_eq!(anonymous.get(&short).send().await?.status(), 200);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(anonymous.get(&short).send().await?.status(), 403, "an expired URL is refused");
    let bad = http.get(format!("{base}/v1/jobs/{}/outputs?expiresIn=30d", job.job_id)).send().await?;
    assert_eq!(bad.status(), 400);
    assert!(bad.text().await?.contains("expires_in"));
    Ok(())
}
