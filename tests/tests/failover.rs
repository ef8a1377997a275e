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
            "no terminal state after failover:\nstandby: {}\ngateway: {}\nworker-0: {}\nworker-1: {}",
            sandbox.log_tail("scheduler-standby"),
            sandbox.log_tail("gateway"),
            sandbox.log_tail("worker-0"),
            sandbox.log_tail("worker-1"),
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
    let b = done.batches.unwrap();
    assert_eq!((b.total, b.succeeded, b.failed, b.in_queue), (60, 60, 0, 0));
    assert_eq!(done.items.unwrap().completed, 300);
    assert_echo_results(&sandbox, &done, &items, 5, &[]).await?;
    Ok(())
}

/// The batches workers held when their leader died (run, reported, not yet
/// confirmed) are confirmed by the next leader as soon as the workers find
/// it, not redelivered after their ack wait: with a 30 s ack wait the job
/// once stalled for about 50 s after a new leader led.
#[tokio::test]
async fn a_new_leader_settles_the_batches_in_flight_at_once() -> anyhow::Result<()> {
    let sandbox =
        Sandbox::start(Options { workers: 2, ack_wait_secs: 30, standby_scheduler: true, ..Options::default() })
            .await?;
    let items: Vec<Value> = (0..200).map(|i| json!({"i": i})).collect();
    let mut jobs = sandbox.jobs().await?;
    let job = jobs.submit_job(echo_job(&items, 5, 2, json!({"delay_ms": 100}))).await?.into_inner().job.unwrap();
    sandbox.wait_succeeded(&job.job_id, 6, Duration::from_secs(30)).await?;
    sandbox.signal("scheduler", "KILL")?;
    let killed = tokio::time::Instant::now();
    let done = sandbox.wait_terminal_through(&job.job_id, Duration::from_secs(120)).await?;
    let took = killed.elapsed();
    println!("from the leader's SIGKILL to the job's end: {took:?}");
    assert_eq!(done.state(), pb::JobState::Succeeded, "{done:?}");
    assert_echo_results(&sandbox, &done, &items, 5, &[]).await?;
    let attempts = sandbox.batch_attempts(&job.job_id).await?;
    let again: Vec<&(i64, i64)> = attempts.iter().filter(|(_, a)| *a != 1).collect();
    assert!(again.is_empty(), "batches redelivered after the failover: {again:?}");
    // The old leader's lease (10 s) lapses, the standby leads, the workers
    // find it: well under one ack wait (30 s) from the kill to the end.
    assert!(took < Duration::from_secs(30), "the job took {took:?} after its leader died");
    Ok(())
}

#[tokio::test]
async fn a_batch_exhausted_while_no_scheduler_leads_is_dead_lettered_by_the_next_leader() -> anyhow::Result<()> {
    let sandbox = Sandbox::start(Options {
        workers: 1,
        ack_wait_secs: 2,
        max_deliver: 1,
        standby_scheduler: true,
        ..Options::default()
    })
    .await?;
    let mut jobs = sandbox.jobs().await?;
    let items = [json!("a"), json!("b")];
    let job = jobs.submit_job(echo_job(&items, 1, 1, json!({"delay_ms": 600_000}))).await?.into_inner().job.unwrap();
    sandbox.wait_held(&job.job_id, 1, Duration::from_secs(30)).await?;
    // The leader and the worker die together: the batch's deliveries run out
    // (2 s) long before the standby leads (the old lease lasts 10 s), so its
    // max-deliveries advisory is sent while no scheduler listens.
    sandbox.signal("scheduler", "KILL")?;
    sandbox.signal("worker-0", "KILL")?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let mut last = String::new();
    let dead = loop {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the exhausted batch was never dead-lettered; last answer: {last}\nstandby: {}\ngateway: {}\nworker-0: {}",
            sandbox.log_tail("scheduler-standby"),
            sandbox.log_tail("gateway"),
            sandbox.log_tail("worker-0"),
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
        let request = pb::ListDeadLettersRequest { job_id: job.job_id.clone(), ..Default::default() };
        match jobs.list_dead_letters(request).await {
            Ok(r) if !r.get_ref().dead_letters.is_empty() => break r.into_inner().dead_letters,
            Ok(r) => last = format!("{:?}", r.into_inner()),
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
                last = format!("{status:?}");
            }
        }
    };
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(dead[0].attempts == 1 && dead[0].last_error.contains("lost"), "{dead:?}");
    let now = jobs.get_job(pb::GetJobRequest { job_id: job.job_id.clone() }).await?.into_inner().job.unwrap();
    let b = now.batches.unwrap();
    assert_eq!((b.total, b.failed), (2, 1), "the other batch still waits for a worker");
    Ok(())
}
