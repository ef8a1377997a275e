//! CancelJob stops a running job at once: workers stop taking its batches,
//! its remaining batches are withdrawn from JetStream, results already
//! written stay.

use std::time::Duration;

use batchmill_proto::jobs::v1 as pb;
use batchmill_tests::{Options, Sandbox};
use serde_json::{Value, json};

/// Messages left in the batch stream.
async fn queued_batches(sandbox: &Sandbox) -> anyhow::Result<u64> {
    let client = batchmill_queue::client(&sandbox.nats_url).await?;
    let mut stream = async_nats::jetstream::new(client).get_stream("BATCHMILL_BATCHES").await?;
    Ok(stream.info().await?.state.messages)
}

#[tokio::test]
async fn cancel_stops_a_running_job_and_withdraws_its_batches() -> anyhow::Result<()> {
    let sandbox = Sandbox::start(Options::default()).await?;
    let http = sandbox.http();
    let base = sandbox.rest_url();
    let items: Vec<Value> = (0..200).map(|i| json!(i)).collect();
    let body = json!({"pipeline": "echo", "workers": 2, "itemList": {"items": items, "batchSize": 5}, "config": {"delay_ms": 300}});
    let job: Value = http.post(format!("{base}/v1/jobs")).json(&body).send().await?.json().await?;
    let id = job["jobId"].as_str().unwrap().to_owned();

    // Catch it in flight: some batches done, most still queued.
    let mut jobs = sandbox.jobs().await?;
    sandbox.wait_succeeded(&id, 3, Duration::from_secs(30)).await?;
    let response = http.post(format!("{base}/v1/jobs/{id}:cancel")).json(&json!({})).send().await?;
    assert_eq!(response.status(), 200);
    let cancelled: Value = response.json().await?;
    assert_eq!(cancelled["state"], "JOB_STATE_CANCELLED", "{cancelled}");
    assert_eq!(cancelled["batches"]["inQueue"], "0");
    assert!(cancelled["endTime"].is_string());

    // The batches in hand finish; nothing more is taken.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let job = jobs.get_job(pb::GetJobRequest { job_id: id.clone() }).await?.into_inner().job.unwrap();
    let batch_objects = |results: &[(String, String)]| results.iter().filter(|(k, _)| k.ends_with(".jsonl")).count();
    let results = sandbox.results(&job).await?;
    let after = batch_objects(&results);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(batch_objects(&sandbox.results(&job).await?), after, "workers kept writing after cancel");
    assert!(after > 0 && after < 40, "{after} result objects of 40 batches");
    // The manifest lists what was written before the cancel.
    let manifest = results.iter().find(|(k, _)| k.ends_with("manifest.json")).map(|(_, b)| b).expect("manifest");
    let manifest: Value = serde_json::from_str(manifest)?;
    assert_eq!(manifest["state"], "JOB_STATE_CANCELLED", "{manifest}");
    assert!(manifest["results"].as_array().is_some_and(|r| !r.is_empty()), "{manifest}");
    assert_eq!(job.state(), pb::JobState::Cancelled);
    assert_eq!(queued_batches(&sandbox).await?, 0, "remaining batches were not withdrawn");

    // Cancelling again answers the job unchanged.
    let again: Value = http.post(format!("{base}/v1/jobs/{id}:cancel")).json(&json!({})).send().await?.json().await?;
    assert_eq!(again["state"], "JOB_STATE_CANCELLED");
    assert_eq!(again["endTime"], cancelled["endTime"]);

    // The workers are free for the next job.
    let next =
        jobs.submit_job(batchmill_tests::echo_job(&[json!("after")], 1, 2, json!({}))).await?.into_inner().job.unwrap();
    assert_eq!(sandbox.wait_terminal(&next.job_id, Duration::from_secs(60)).await?.state(), pb::JobState::Succeeded);
    Ok(())
}

#[tokio::test]
async fn a_job_past_its_timeout_ends_timed_out_keeping_its_results() -> anyhow::Result<()> {
    let sandbox = Sandbox::start(Options { workers: 1, ..Options::default() }).await?;
    let http = sandbox.http();
    let base = sandbox.rest_url();
    let items: Vec<Value> = (0..40).map(|i| json!(i)).collect();
    let body = json!({"pipeline": "echo", "workers": 1, "timeout": "3s",
        "itemList": {"items": items, "batchSize": 2}, "config": {"delay_ms": 400}});
    let job: Value = http.post(format!("{base}/v1/jobs")).json(&body).send().await?.json().await?;
    assert_eq!(job["timeout"], "3s", "{job}");
    let id = job["jobId"].as_str().unwrap().to_owned();
    let done = sandbox.wait_terminal(&id, Duration::from_secs(60)).await?;
    assert_eq!(done.state(), pb::JobState::TimedOut, "{done:?}");
    assert!(done.message.contains("timeout of 3s"), "{}", done.message);
    let b = done.batches.unwrap();
    assert!(b.succeeded > 0 && b.succeeded < 20, "{b:?}");
    assert_eq!(b.in_queue, 0);
    let results = sandbox.results(&done).await?;
    let manifest = results.iter().find(|(k, _)| k.ends_with("manifest.json")).map(|(_, b)| b).expect("manifest");
    let manifest: Value = serde_json::from_str(manifest)?;
    assert_eq!(manifest["state"], "JOB_STATE_TIMED_OUT");
    // The objects the manifest lists hold every completed item's result, once.
    let listed: Vec<&str> = manifest["results"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    let lines: usize = results
        .iter()
        .filter(|(k, _)| listed.iter().any(|u| u.ends_with(k.as_str())))
        .map(|(_, body)| body.lines().count())
        .sum();
    assert_eq!(lines as i64, done.items.as_ref().unwrap().completed, "{manifest}");
    assert_eq!(lines as i64, b.succeeded * 2, "{manifest}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(queued_batches(&sandbox).await?, 0, "remaining batches were not withdrawn");
    Ok(())
}
