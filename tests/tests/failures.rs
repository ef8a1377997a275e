//! Failures: a worker killed with SIGKILL mid-job has its batches
//! redelivered to the other worker and every batch counts once; a batch that
//! always fails is retried up to max_deliver and the job ends
//! COMPLETED_WITH_FAILURES with the other results intact.

use std::time::Duration;

use batchmill_proto::jobs::v1 as pb;
use batchmill_tests::{Options, Sandbox, assert_echo_results, echo_job};
use serde_json::{Value, json};

#[tokio::test]
async fn a_killed_worker_loses_nothing_and_counts_nothing_twice() -> anyhow::Result<()> {
    let sandbox =
        Sandbox::start(Options { workers: 2, ack_wait_secs: 2, max_deliver: 5, ..Options::default() }).await?;
    let items: Vec<Value> = (0..150).map(|i| json!({"i": i})).collect();
    let mut jobs = sandbox.jobs().await?;
    let job = jobs.submit_job(echo_job(&items, 5, 2, json!({"delay_ms": 250}))).await?.into_inner().job.unwrap();

    // Let both workers get going, then kill one while it holds a batch.
    sandbox.wait_succeeded(&job.job_id, 6, Duration::from_secs(30)).await?;
    sandbox.signal("worker-0", "KILL")?;

    let done = sandbox.wait_terminal(&job.job_id, Duration::from_secs(120)).await?;
    assert_eq!(done.state(), pb::JobState::Succeeded, "{done:?}");
    let b = done.batches.clone().unwrap();
    assert_eq!((b.total, b.succeeded, b.failed, b.in_queue), (30, 30, 0, 0));
    let i = done.items.clone().unwrap();
    assert_eq!((i.total, i.completed, i.failed), (150, 150, 0));
    let w = done.workers.clone().unwrap();
    assert_eq!((w.failed, w.succeeded), (1, 1), "{w:?}");
    assert_echo_results(&sandbox, &done, &items, 5, &[]).await?;
    Ok(())
}

#[tokio::test]
async fn a_batch_that_always_fails_is_retried_then_fails_the_job_partially() -> anyhow::Result<()> {
    let sandbox =
        Sandbox::start(Options { workers: 2, ack_wait_secs: 30, max_deliver: 2, ..Options::default() }).await?;
    let items: Vec<Value> = (0..40).map(|i| json!(i)).collect();
    let mut jobs = sandbox.jobs().await?;
    let job = jobs.submit_job(echo_job(&items, 4, 2, json!({"fail_batches": [3]}))).await?.into_inner().job.unwrap();
    let done = sandbox.wait_terminal(&job.job_id, Duration::from_secs(60)).await?;
    assert_eq!(done.state(), pb::JobState::CompletedWithFailures, "{done:?}");
    let b = done.batches.clone().unwrap();
    assert_eq!((b.total, b.succeeded, b.failed, b.failed_attempts), (10, 9, 1, 2));
    let i = done.items.clone().unwrap();
    assert_eq!((i.total, i.completed, i.failed, i.pending), (40, 36, 4, 0));
    assert_echo_results(&sandbox, &done, &items, 4, &[3]).await?;
    let manifest = sandbox.results(&done).await?.into_iter().find(|(k, _)| k.ends_with("manifest.json")).unwrap().1;
    let manifest: Value = serde_json::from_str(&manifest)?;
    assert_eq!(manifest["state"], "JOB_STATE_COMPLETED_WITH_FAILURES");
    assert_eq!(manifest["failed_batches"], json!([format!("{}-3", done.job_id)]));
    Ok(())
}

#[tokio::test]
async fn batches_whose_workers_died_on_their_last_delivery_fail_and_the_job_ends() -> anyhow::Result<()> {
    let sandbox =
        Sandbox::start(Options { workers: 2, ack_wait_secs: 2, max_deliver: 1, ..Options::default() }).await?;
    let mut jobs = sandbox.jobs().await?;
    // Two batches that take ten minutes each: one in each worker's hands.
    let items = [json!("a"), json!("b")];
    let job = jobs.submit_job(echo_job(&items, 1, 2, json!({"delay_ms": 600_000}))).await?.into_inner().job.unwrap();
    let nats = async_nats::jetstream::new(async_nats::connect(&sandbox.nats_url).await?);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let stream = nats.get_stream("BATCHMILL_BATCHES").await?;
        let held = match stream
            .get_consumer::<async_nats::jetstream::consumer::pull::Config>(&format!("job-{}", job.job_id))
            .await
        {
            Ok(mut consumer) => consumer.info().await?.num_ack_pending,
            Err(_) => 0,
        };
        if held == 2 {
            break;
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "the workers never took both batches");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sandbox.signal("worker-0", "KILL")?;
    sandbox.signal("worker-1", "KILL")?;

    // No worker is left: only the max-deliveries advisory can end the job.
    let done = sandbox.wait_terminal(&job.job_id, Duration::from_secs(60)).await?;
    assert_eq!(done.state(), pb::JobState::CompletedWithFailures, "{done:?}");
    let b = done.batches.clone().unwrap();
    assert_eq!((b.total, b.succeeded, b.failed, b.in_queue), (2, 0, 2, 0));
    assert_eq!(done.items.clone().unwrap().failed, 2);
    assert_eq!(done.workers.clone().unwrap().failed, 2);
    let mut stream = nats.get_stream("BATCHMILL_BATCHES").await?;
    assert_eq!(stream.info().await?.state.messages, 0, "exhausted batches are removed from the stream");
    Ok(())
}
