//! Outages of what the cluster depends on, mid-job: S3 and etcd, each
//! killed and started again after a while (`BATCHMILL_OUTAGE_SECS`, default
//! 8 s for S3 and 15 s for etcd, longer than the scheduler's 10 s leadership
//! lease), and S3 failing a share of its writes with a 500. The jobs end
//! SUCCEEDED with every item exactly once, no batch spends a delivery on
//! the outage, and every process rides it out.

use std::time::Duration;

use batchmill_proto::jobs::v1 as pb;
use batchmill_tests::{Options, Sandbox, assert_echo_results, echo_job};
use serde_json::{Value, json};

/// How long an outage lasts: `BATCHMILL_OUTAGE_SECS`, or `default`.
fn outage(default: u64) -> Duration {
    let secs = std::env::var("BATCHMILL_OUTAGE_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(default);
    Duration::from_secs(secs)
}

/// Submits a 600-item echo job in batches of 5 (120 batches) and waits
/// until it is under way.
async fn start_job(sandbox: &Sandbox, items: &[Value]) -> anyhow::Result<String> {
    let mut jobs = sandbox.jobs().await?;
    let job = jobs.submit_job(echo_job(items, 5, 2, json!({"delay_ms": 60}))).await?.into_inner().job;
    let job_id = job.map(|j| j.job_id).unwrap_or_default();
    sandbox.wait_succeeded(&job_id, 10, Duration::from_secs(60)).await?;
    Ok(job_id)
}

/// The job succeeded with every result exact, and no batch spent a second
/// delivery.
async fn check(sandbox: &Sandbox, done: &pb::Job, items: &[Value]) -> anyhow::Result<()> {
    assert_eq!(done.state(), pb::JobState::Succeeded, "{done:?}\nscheduler: {}", sandbox.log_tail("scheduler"));
    let b = done.batches.unwrap_or_default();
    assert_eq!((b.total, b.succeeded, b.failed, b.failed_attempts), (120, 120, 0, 0), "{done:?}");
    assert_eq!(done.items.unwrap_or_default().completed, 600);
    assert_echo_results(sandbox, done, items, 5, &[]).await?;
    let attempts = sandbox.batch_attempts(&done.job_id).await?;
    assert_eq!(attempts.len(), 120, "one record per batch");
    let again: Vec<&(i64, i64)> = attempts.iter().filter(|(_, a)| *a != 1).collect();
    assert!(again.is_empty(), "batches delivered more than once: {again:?}");
    sandbox.check_all_alive()
}

/// Takes `dependency` down mid-job for `BATCHMILL_OUTAGE_SECS` (or
/// `default_secs`), then checks the job.
async fn ride_out(dependency: &str, default_secs: u64) -> anyhow::Result<()> {
    let mut sandbox = Sandbox::start(Options { workers: 2, ack_wait_secs: 3, ..Options::default() }).await?;
    let items: Vec<Value> = (0..600).map(|i| json!({"i": i})).collect();
    let job_id = start_job(&sandbox, &items).await?;
    sandbox.outage(dependency, outage(default_secs)).await?;
    let done = sandbox.wait_terminal_through(&job_id, Duration::from_secs(180)).await?;
    check(&sandbox, &done, &items).await
}

#[tokio::test]
async fn a_job_rides_out_an_s3_outage_without_spending_deliveries() -> anyhow::Result<()> {
    ride_out("s3", 8).await
}

#[tokio::test]
async fn a_job_rides_out_an_etcd_outage_longer_than_the_leader_lease() -> anyhow::Result<()> {
    ride_out("etcd", 15).await
}

#[tokio::test]
async fn a_job_rides_out_s3_failing_a_fifth_of_its_writes() -> anyhow::Result<()> {
    // One PUT in five answered with a 500 InternalError (more than the one
    // in ten the chaos suite asks for) from the job's start to its end.
    let sandbox = Sandbox::start(Options { workers: 2, ack_wait_secs: 3, ..Options::default() }).await?;
    let items: Vec<Value> = (0..600).map(|i| json!({"i": i})).collect();
    let job_id = start_job(&sandbox, &items).await?;
    let before = sandbox.s3_put_error_rate(0.2).await?;
    // The job shows its end only once its manifest is written (retried
    // through the faults), so the check below finds the manifest at once.
    let done = sandbox.wait_terminal(&job_id, Duration::from_secs(180)).await?;
    let injected = sandbox.s3_put_error_rate(0.0).await? - before;
    assert!(injected >= 5, "the S3 server injected {injected} faults while the job ran");
    check(&sandbox, &done, &items).await
}
