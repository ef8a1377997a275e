//! Scheduler failover: the leader is killed mid-job; the standby wins the
//! election, rebuilds jobs and ledgers from etcd, the workers and the
//! gateway find it, and the job still ends with exact counts.

use std::time::Duration;

use batchmill_proto::jobs::v1 as pb;
use batchmill_tests::{Options, Sandbox, assert_echo_results, echo_job, is_terminal};
use serde_json::{Value, json};

#[tokio::test]
async fn a_job_survives_its_scheduler_being_killed() -> anyhow::Result<()> {
    let sandbox =
        Sandbox::start(Options { workers: 2, ack_wait_secs: 3, standby_scheduler: true, ..Options::default() }).await?;
    let items: Vec<Value> = (0..300).map(|i| json!({"i": i})).collect();
    let mut jobs = sandbox.jobs().await?;
    let job = jobs.submit_job(echo_job(&items, 5, 2, json!({"delay_ms": 100}))).await?.into_inner().job.unwrap();
    sandbox.wait_succeeded(&job.job_id, 8, Duration::from_secs(30)).await?;
    sandbox.signal("scheduler", "KILL")?;

    // The API is unavailable until the standby leads (the old leader's lease
    // must expire first), then answers again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let done = loop {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "no terminal state after failover:\n{}",
            sandbox.log_tail("scheduler-standby")
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
        match jobs.get_job(pb::GetJobRequest { job_id: job.job_id.clone() }).await {
            Ok(r) => {
                let job = r.into_inner().job.unwrap();
                if is_terminal(job.state()) {
                    break job;
                }
            }
            Err(status) => assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}"),
        }
    };
    assert_eq!(done.state(), pb::JobState::Succeeded, "{done:?}");
    let b = done.batches.clone().unwrap();
    assert_eq!((b.total, b.succeeded, b.failed, b.in_queue), (60, 60, 0, 0));
    assert_eq!(done.items.clone().unwrap().completed, 300);
    assert_echo_results(&sandbox, &done, &items, 5, &[]).await?;
    Ok(())
}
