//! The scheduler's logic against fakes: in-memory etcd, a queue, enqueuer and
//! object store that record calls, and virtual workers (channel ends).
// The fakes and helpers below are test code too: a poisoned lock or a bad
// fixture should stop the test where it happens.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use batchmill_accounts::Limits;
use batchmill_coord::Kv;
use batchmill_core::enqueue::EnqueueProgress;
use batchmill_core::{Caller, Role, WorkerId};
use batchmill_proto::jobs::v1 as pb;
use batchmill_proto::queue::v1 as qpb;
use batchmill_proto::scheduler::v1::{self as spb, session_response::Message as Out};
use batchmill_queue::{Batches, DeadLetters};
use batchmill_scheduler::JobRecord;
use prost::Message;

use common::*;

#[tokio::test]
async fn a_job_completes_from_its_ledger_and_counts_a_redelivery_once() {
    let fakes = fakes().await;
    let kv = fakes.kv.clone();
    let mut state = state(&fakes);
    let mut worker = join(&mut state, "w1");

    let accepted = state.submit(record("j1", 2), Limits::default()).await.unwrap();
    assert_eq!(accepted.state(), pb::JobState::Pending);
    assert!(fakes.open("j1").await, "the job's queue is open");
    assert_eq!(fakes.calls().enqueued[0].batch_size, 10);
    assert!(kv.get("/batchmill/jobs/j1").await.unwrap().is_some(), "accepted jobs are durable");
    let assign = drain(&mut worker);
    assert!(matches!(&assign[..], [Out::Assign(a)] if a.job_id == "j1" && a.max_deliver == 3));

    state.enqueue_progress("j1", EnqueueProgress { next_seq: 3, next_item: 30, done: true, ..Default::default() });
    for seq in [0, 1, 1, 2] {
        state.outcome(&WorkerId::new("w1"), outcome("j1", seq, spb::BatchStatus::Succeeded));
    }
    assert!(drain(&mut worker).is_empty(), "no outcome is confirmed before it is durable");
    state.settle().await;
    state.flush().await;

    let sent = drain(&mut worker);
    let acks = sent.iter().filter(|m| matches!(m, Out::OutcomeAck(_))).count();
    assert_eq!(acks, 4, "every report is confirmed, the duplicate too");
    assert!(sent.iter().any(|m| matches!(m, Out::Revoke(r) if r.job_id == "j1")));
    let job = fakes.ended(&mut state, "j1").await;
    assert_eq!(job.state(), pb::JobState::Succeeded);
    let b = job.batches.unwrap();
    assert_eq!((b.total, b.succeeded, b.failed, b.in_queue), (3, 3, 0, 0));
    assert_eq!(job.items.unwrap().completed, 30);
    assert!(!fakes.open("j1").await, "the job's queue is closed");
    let objects = fakes.objects(&mut state).await;
    let manifest = objects.get("s3://out/results/j1/manifest.json").cloned().expect("manifest");
    let manifest: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    assert_eq!(manifest["results"].as_array().unwrap().len(), 3);
}

/// A submission handled in the same burst of commands as a job's last
/// outcome writes every changed job; the finished one must still complete.
#[tokio::test]
async fn a_job_whose_last_outcome_came_just_before_a_submission_still_completes() {
    let fakes = fakes().await;
    let mut state = state(&fakes);
    let _worker = join(&mut state, "w1");
    state.submit(record("j1", 1), Limits::default()).await.unwrap();
    state.enqueue_progress("j1", EnqueueProgress { next_seq: 1, next_item: 1, done: true, ..Default::default() });
    state.flush().await;

    state.outcome(&WorkerId::new("w1"), outcome("j1", 0, spb::BatchStatus::Succeeded));
    state.submit(record("j2", 1), Limits::default()).await.unwrap();
    state.flush().await;

    assert_eq!(fakes.ended(&mut state, "j1").await.state(), pb::JobState::Succeeded);
    assert!(!fakes.open("j1").await, "the finished job's queue is closed");
}

/// Whoever sees a job SUCCEEDED can read its manifest: while S3 is down and
/// the manifest unwritten, the job shows COMPLETING, and its watchers see
/// it end once the manifest is in place.
#[tokio::test]
async fn a_job_shows_completing_until_its_manifest_is_written() {
    let fakes = fakes().await;
    let mut state = state(&fakes);
    let _worker = join(&mut state, "w1");
    state.submit(record("j1", 1), Limits::default()).await.unwrap();
    state.enqueue_progress("j1", EnqueueProgress { next_seq: 1, next_item: 10, done: true, ..Default::default() });
    let mut watch = state.watch(&job_id("j1")).unwrap();
    fakes.store.set_down(true);
    state.outcome(&WorkerId::new("w1"), outcome("j1", 0, spb::BatchStatus::Succeeded));
    state.settle().await;
    state.flush().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    state.tick().await;
    state.flush().await;
    let job = state.get(&job_id("j1")).unwrap();
    assert_eq!(job.state(), pb::JobState::Completing, "ended, but its manifest is not written");
    assert_eq!(job.batches.unwrap().succeeded, 1);
    assert!(fakes.store.objects().is_empty(), "S3 is down");

    fakes.store.set_down(false);
    let job = fakes.ended(&mut state, "j1").await;
    assert_eq!(job.state(), pb::JobState::Succeeded);
    let manifest = fakes.store.objects().get("s3://out/results/j1/manifest.json").cloned().expect("manifest");
    let manifest: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    assert_eq!(manifest["state"], "JOB_STATE_SUCCEEDED");
    state.flush().await;
    assert_eq!(watch.borrow_and_update().state(), pb::JobState::Succeeded, "watchers see it end");
}

#[tokio::test]
async fn workers_are_capped_per_job_and_freed_when_it_ends() {
    let fakes = fakes().await;
    let mut state = state(&fakes);
    let mut w1 = join(&mut state, "w1");
    let mut w2 = join(&mut state, "w2");
    state.submit(record("j1", 1), Limits::default()).await.unwrap();
    let assigned: Vec<_> = [drain(&mut w1), drain(&mut w2)].into_iter().filter(|m| !m.is_empty()).collect();
    assert_eq!(assigned.len(), 1, "max_workers 1 takes one worker");

    state.submit(record("j2", 1), Limits::default()).await.unwrap();
    let j2: Vec<Out> = [drain(&mut w1), drain(&mut w2)].concat();
    assert!(matches!(&j2[..], [Out::Assign(a)] if a.job_id == "j2"), "the idle worker takes the next job");

    let cancelled = state.cancel(&job_id("j1")).await.unwrap();
    assert_eq!(cancelled.state(), pb::JobState::Cancelled);
    assert_eq!(fakes.calls().stopped, vec!["j1"]);
    assert!(!fakes.open("j1").await, "the job's queue is closed");
    let revoked: Vec<Out> = [drain(&mut w1), drain(&mut w2)].concat();
    assert!(matches!(&revoked[..], [Out::Revoke(r)] if r.job_id == "j1"));
}

#[tokio::test]
async fn a_lost_worker_is_counted_and_its_job_goes_on() {
    let fakes = fakes().await;
    let mut state = state(&fakes);
    let _w1 = join(&mut state, "w1");
    state.submit(record("j1", 2), Limits::default()).await.unwrap();
    state.worker_gone(&WorkerId::new("w1"), None);
    let mut w2 = join(&mut state, "w2");
    assert!(matches!(&drain(&mut w2)[..], [Out::Assign(a)] if a.job_id == "j1"));
    state.flush().await;
    let workers = state.get(&job_id("j1")).unwrap().workers.unwrap();
    assert_eq!((workers.failed, workers.initializing, workers.running, workers.pending), (1, 1, 0, 1));
    state.started(&WorkerId::new("w2"), "j1");
    let workers = state.get(&job_id("j1")).unwrap().workers.unwrap();
    assert_eq!((workers.failed, workers.initializing, workers.running, workers.pending), (1, 0, 1, 1));
}

#[tokio::test]
async fn a_worker_that_reports_a_batch_counts_as_running() {
    let fakes = fakes().await;
    let mut state = state(&fakes);
    let mut w1 = join(&mut state, "w1");
    state.submit(record("j1", 1), Limits::default()).await.unwrap();
    assert!(matches!(&drain(&mut w1)[..], [Out::Assign(a)] if a.job_id == "j1"));
    let job = state.get(&job_id("j1")).unwrap();
    assert_eq!(job.workers.unwrap().initializing, 1);
    assert_eq!(job.state(), pb::JobState::Admitted, "not running until a worker runs its batches");
    // Its started message went to a previous leader; its first outcome tells.
    let outcome = spb::BatchOutcome {
        job_id: "j1".into(),
        seq: 0,
        status: spb::BatchStatus::Succeeded as i32,
        items: 10,
        attempt: 1,
        ..Default::default()
    };
    state.outcome(&WorkerId::new("w1"), outcome);
    let job = state.get(&job_id("j1")).unwrap();
    let workers = job.workers.unwrap();
    assert_eq!((workers.initializing, workers.running), (0, 1));
    assert_eq!(job.state(), pb::JobState::Running);
}

#[tokio::test]
async fn an_admitted_job_runs_once_a_worker_has_its_predictor_running() {
    let fakes = fakes().await;
    let mut state = state(&fakes);
    let mut w1 = join(&mut state, "w1");
    state.submit(record("j1", 1), Limits::default()).await.unwrap();
    drain(&mut w1);
    let job = state.get(&job_id("j1")).unwrap();
    assert_eq!((job.state(), job.start_time.is_some()), (pb::JobState::Admitted, false));
    state.started(&WorkerId::new("w1"), "j1");
    let job = state.get(&job_id("j1")).unwrap();
    assert_eq!((job.state(), job.start_time.is_some()), (pb::JobState::Running, true));
    state.flush().await;
    let durable = JobRecord::decode(&fakes.kv.get("/batchmill/jobs/j1").await.unwrap().unwrap()).unwrap();
    assert_eq!(durable.state, batchmill_core::JobState::Running, "and it is durable");
}

#[tokio::test]
async fn a_new_leader_rebuilds_jobs_and_ledgers_and_resumes_them() {
    let fakes = fakes().await;
    let mut first = state(&fakes);
    let _w = join(&mut first, "w1");
    first.submit(record("j1", 1), Limits::default()).await.unwrap();
    first.outcome(&WorkerId::new("w1"), outcome("j1", 0, spb::BatchStatus::Succeeded));
    first.outcome(&WorkerId::new("w1"), outcome("j1", 1, spb::BatchStatus::FailedFinal));
    first.flush().await;
    drop(first);

    let mut second = state(&fakes);
    assert_eq!(second.load().await.unwrap(), 1);
    let job = second.get(&job_id("j1")).unwrap();
    let b = job.batches.unwrap();
    assert_eq!((b.succeeded, b.failed), (1, 1), "the ledger survives the leader");
    assert_eq!(job.state(), pb::JobState::Running);
    second.tick().await;
    assert_eq!(fakes.calls().enqueued.len(), 2, "the new leader asks the enqueuer to resume");
    // Finishing the last batch completes the job with its failure.
    second.enqueue_progress("j1", EnqueueProgress { next_seq: 3, next_item: 30, done: true, ..Default::default() });
    let mut w = join(&mut second, "w1");
    second.outcome(&WorkerId::new("w1"), outcome("j1", 2, spb::BatchStatus::Succeeded));
    second.settle().await;
    second.flush().await;
    assert_eq!(fakes.ended(&mut second, "j1").await.state(), pb::JobState::CompletedWithFailures);
    assert!(drain(&mut w).iter().any(|m| matches!(m, Out::OutcomeAck(a) if a.seq == 2)));
}

#[tokio::test]
async fn a_batch_that_ran_out_of_deliveries_fails_once_it_is_durable() {
    let fakes = fakes().await;
    let mut state = state(&fakes);
    let _w = join(&mut state, "w1");
    state.submit(record("j1", 1), Limits::default()).await.unwrap();
    state.enqueue_progress("j1", EnqueueProgress { next_seq: 2, next_item: 20, done: true, ..Default::default() });
    state.outcome(&WorkerId::new("w1"), outcome("j1", 0, spb::BatchStatus::Succeeded));
    let (tx, mut rx) = tokio::sync::oneshot::channel();
    state.exhausted("j1", 1, 10, 3, tx);
    assert!(rx.try_recv().is_err(), "released only after the write");
    state.settle().await;
    state.flush().await;
    rx.await.expect("released after the write");
    let job = fakes.ended(&mut state, "j1").await;
    assert_eq!(job.state(), pb::JobState::CompletedWithFailures);
    let b = job.batches.unwrap();
    assert_eq!((b.succeeded, b.failed), (1, 1));
    // A late outcome for the same batch changes nothing.
    state.outcome(&WorkerId::new("w1"), outcome("j1", 1, spb::BatchStatus::Succeeded));
    state.flush().await;
    assert_eq!(state.get(&job_id("j1")).unwrap().batches.unwrap().failed, 1);
}

#[tokio::test]
async fn dead_letters_are_listed_from_the_ledger_and_a_rerun_completes_the_job() {
    let fakes = fakes().await;
    let mut state = state(&fakes);
    let mut w = join(&mut state, "w1");
    state.submit(record("j1", 1), Limits::default()).await.unwrap();
    state.enqueue_progress("j1", EnqueueProgress { next_seq: 3, next_item: 30, done: true, ..Default::default() });
    // Batch 1 is dead-lettered twice (a worker and the advisory raced), batch 2 once.
    for (seq, from, attempts, items) in [(1, 11, 2, "old"), (1, 12, 2, "new"), (2, 13, 2, "x")] {
        fakes.dead_letter("j1", seq, from, attempts, items).await;
    }
    fakes.dead_letter("other", 0, 1, 1, "x").await;
    state.outcome(&WorkerId::new("w1"), outcome("j1", 0, spb::BatchStatus::Succeeded));
    state.outcome(&WorkerId::new("w1"), outcome("j1", 1, spb::BatchStatus::FailedFinal));
    state.outcome(&WorkerId::new("w1"), outcome("j1", 2, spb::BatchStatus::FailedFinal));
    state.settle().await;
    state.flush().await;
    let job = fakes.ended(&mut state, "j1").await;
    assert_eq!(job.state(), pb::JobState::CompletedWithFailures);
    assert_eq!(job.batches.as_ref().unwrap().dead_lettered, 2);

    let (letters, next) = state.dead_letters(&job_id("j1"), 0, 10).await.unwrap();
    let ids: Vec<&str> = letters.iter().map(|d| d.batch_id.as_str()).collect();
    assert_eq!(ids, ["j1-1", "j1-2"], "each failed batch once, no other job's");
    assert_eq!((letters[0].attempts, letters[0].items.len(), letters[0].last_error.as_str()), (2, 10, "boom"));
    assert_eq!(next, None);
    let (first, next) = state.dead_letters(&job_id("j1"), 0, 1).await.unwrap();
    assert_eq!((first.len(), first[0].batch_id.as_str()), (1, "j1-1"));
    let (rest, _) = state.dead_letters(&job_id("j1"), next.expect("a second page"), 1).await.unwrap();
    assert_eq!(rest[0].batch_id, "j1-2");

    let err = state.rerun(&job_id("j1"), &["j1-0".into()]).await.unwrap_err();
    assert!(err.to_string().starts_with("batch_ids[0]"), "{err}");
    drain(&mut w);
    let (job, queued) = state.rerun(&job_id("j1"), &["j1-1".into()]).await.unwrap();
    assert_eq!(batch_ids(&queued), ["j1-1"]);
    assert_eq!(job.state(), pb::JobState::Running, "the job runs again");
    assert_eq!(job.batches.as_ref().unwrap().failed, 1);
    let consumer = fakes.queue.job_consumer("j1").await.unwrap();
    let requeued = consumer.next(Duration::from_millis(10)).await.unwrap().expect("batch 1 is queued again");
    let batch = qpb::Batch::decode(requeued.payload().as_ref()).unwrap();
    assert_eq!((batch.seq, batch.items[0].as_str()), (1, "new"), "the latest dead letter is re-run");
    requeued.nak(Duration::ZERO).await.unwrap();
    assert_eq!(fakes.queue.dead_letters("j1", 0, 100).await.unwrap().len(), 1, "both letters of batch 1 removed");
    assert!(matches!(&drain(&mut w)[..], [Out::Assign(a)] if a.job_id == "j1"), "a worker takes it again");

    state.outcome(&WorkerId::new("w1"), outcome("j1", 1, spb::BatchStatus::Succeeded));
    state.settle().await;
    state.flush().await;
    let job = fakes.ended(&mut state, "j1").await;
    assert_eq!(job.state(), pb::JobState::CompletedWithFailures, "batch 2 still failed");
    let b = job.batches.unwrap();
    assert_eq!((b.succeeded, b.failed, b.dead_lettered), (2, 1, 1));

    let (_, queued) = state.rerun(&job_id("j1"), &[]).await.unwrap();
    assert_eq!(batch_ids(&queued), ["j1-2"], "no ids: every dead letter");
    state.outcome(&WorkerId::new("w1"), outcome("j1", 2, spb::BatchStatus::Succeeded));
    state.settle().await;
    state.flush().await;
    assert_eq!(fakes.ended(&mut state, "j1").await.state(), pb::JobState::Succeeded);
    let cancelled = state.cancel(&job_id("j1")).await.unwrap();
    assert_eq!(cancelled.state(), pb::JobState::Succeeded, "an ended job stays as it ended");
    let err = state.rerun(&job_id("j1"), &[]).await.unwrap_err();
    assert!(err.to_string().contains("is Succeeded"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn a_job_past_its_timeout_ends_timed_out_with_a_manifest() {
    let fakes = fakes().await;
    let mut state = state(&fakes);
    let _w = join(&mut state, "w1");
    let now = fakes.clock.now_ms();
    let job = JobRecord { timeout_ms: Some(60_000), create_ms: now, ..record("j1", 1) };
    state.submit(job, Limits::default()).await.unwrap();
    state.outcome(&WorkerId::new("w1"), outcome("j1", 0, spb::BatchStatus::Succeeded));
    tokio::time::advance(Duration::from_secs(59)).await;
    state.tick().await;
    state.flush().await;
    assert_eq!(state.get(&job_id("j1")).unwrap().state(), pb::JobState::Running, "not yet");

    let late = JobRecord { timeout_ms: Some(1_000), create_ms: fakes.clock.now_ms(), ..record("j2", 1) };
    state.submit(late, Limits::default()).await.unwrap();
    tokio::time::advance(Duration::from_secs(2)).await;
    // A new leader times both out: one past its 60 s, one past its 1 s.
    let mut second = self::state(&fakes);
    second.load().await.unwrap();
    second.tick().await;
    second.flush().await;
    for (id, timeout) in [("j1", "60s"), ("j2", "1s")] {
        let job = fakes.ended(&mut second, id).await;
        assert_eq!(job.state(), pb::JobState::TimedOut, "{id}");
        assert!(job.message.contains(&format!("timeout of {timeout}")), "{}", job.message);
        assert!(fakes.calls().stopped.contains(&id.to_owned()), "enqueuing of {id} stopped");
    }
    let objects = fakes.objects(&mut second).await;
    let manifest = objects.get("s3://out/results/j1/manifest.json").cloned().expect("manifest");
    let manifest: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    assert_eq!(manifest["state"], "JOB_STATE_TIMED_OUT");
    assert_eq!(manifest["results"], serde_json::json!(["s3://out/results/j1/j1-0.jsonl"]), "partial results listed");
}

#[tokio::test]
async fn jobs_are_listed_newest_first_by_pipeline_and_in_pages() {
    let fakes = fakes().await;
    let mut state = state(&fakes);
    for (id, pipeline) in [("a1", "echo"), ("a2", "embed"), ("a3", "echo"), ("a4", "embed"), ("a5", "echo")] {
        state.submit(JobRecord { pipeline: pipeline.into(), ..record(id, 1) }, Limits::default()).await.unwrap();
    }
    let ids = |jobs: &[pb::Job]| jobs.iter().map(|j| j.job_id.clone()).collect::<Vec<_>>();
    let (all, next) = state.list(&root(), None, 10, None);
    assert_eq!((ids(&all), next), (vec!["a5", "a4", "a3", "a2", "a1"].into_iter().map(String::from).collect(), None));
    let (echo, next) = state.list(&root(), None, 2, Some("echo"));
    assert_eq!(ids(&echo), ["a5", "a3"]);
    let (rest, last) = state.list(&root(), next.as_ref(), 2, Some("echo"));
    assert_eq!((ids(&rest), last), (vec!["a1".to_owned()], None), "the next page keeps the filter");
    let (embed, _) = state.list(&root(), None, 10, Some("embed"));
    assert_eq!(ids(&embed), ["a4", "a2"]);
    assert!(state.list(&root(), None, 10, Some("nope")).0.is_empty());
}

#[tokio::test]
async fn each_caller_lists_only_what_its_role_lets_it_see() {
    let fakes = fakes().await;
    let mut state = state(&fakes);
    for (id, account, key) in [("b1", "acme", "k1"), ("b2", "acme", "k2"), ("b3", "globex", "k3")] {
        state.submit(owned(id, 1, account, key), Limits::default()).await.unwrap();
    }
    let ids = |caller: Caller| state.list(&caller, None, 10, None).0.into_iter().map(|j| j.job_id).collect::<Vec<_>>();
    let member = |account: &str, key: &str| Caller { account: account.into(), key_id: key.into(), role: Role::Member };
    assert_eq!(ids(member("acme", "k1")), ["b1"]);
    assert_eq!(ids(member("acme", "k2")), ["b2"]);
    assert_eq!(ids(Caller { role: Role::AccountAdmin, ..member("acme", "k9") }), ["b2", "b1"]);
    assert_eq!(ids(member("globex", "k3")), ["b3"]);
    assert_eq!(ids(root()), ["b3", "b2", "b1"]);
    let job = state.get(&job_id("b3")).unwrap();
    assert_eq!((job.account_id.as_str(), job.submitted_by.as_str()), ("globex", "k3"));
}

#[tokio::test]
async fn a_submission_over_an_account_limit_is_refused_naming_it() {
    let fakes = fakes().await;
    let mut state = state(&fakes);
    let limits = Limits { max_concurrent_jobs: 2, max_workers: 5, ..Limits::default() };
    state.submit(owned("c1", 2, "acme", "k1"), limits.clone()).await.unwrap();
    state.submit(owned("c2", 2, "acme", "k2"), limits.clone()).await.unwrap();
    let refused = state.submit(owned("c3", 1, "acme", "k1"), limits.clone()).await.unwrap_err().to_string();
    assert!(refused.contains("max_concurrent_jobs is 2"), "{refused}");
    assert!(state.get(&job_id("c3")).is_none(), "a refused job is not kept");
    // Another account is not counted against this one.
    state.submit(owned("d1", 4, "globex", "k3"), limits.clone()).await.unwrap();
    // Once a job ends, its slot and its workers are free again.
    state.cancel(&job_id("c1")).await.unwrap();
    let refused = state.submit(owned("c4", 4, "acme", "k1"), limits.clone()).await.unwrap_err().to_string();
    assert!(refused.contains("max_workers is 5") && refused.contains("asks for 4"), "{refused}");
    state.submit(owned("c5", 3, "acme", "k1"), limits.clone()).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_timed_out_job_retried_enqueues_only_what_is_not_final_and_times_out_from_the_retry() {
    let fakes = fakes().await;
    let mut state = state(&fakes);
    let mut worker = join(&mut state, "w1");
    let job = JobRecord { timeout_ms: Some(60_000), create_ms: fakes.clock.now_ms(), ..record("j1", 1) };
    state.submit(job, Limits::default()).await.unwrap();
    state.enqueue_progress("j1", EnqueueProgress { next_seq: 3, next_item: 30, done: true, ..Default::default() });
    for (seq, status) in [(0, spb::BatchStatus::Succeeded), (2, spb::BatchStatus::FailedFinal)] {
        state.outcome(&WorkerId::new("w1"), outcome("j1", seq, status));
    }
    state.flush().await;
    let refused = state.retry(&job_id("j1"), Limits::default()).await.unwrap_err().to_string();
    assert!(refused.contains("JOB_STATE_RUNNING") && refused.contains("can be retried"), "{refused}");

    tokio::time::advance(Duration::from_secs(61)).await;
    state.tick().await;
    state.flush().await;
    assert_eq!(fakes.ended(&mut state, "j1").await.state(), pb::JobState::TimedOut);
    drain(&mut worker);

    let retried = state.retry(&job_id("j1"), Limits::default()).await.unwrap();
    assert_eq!((retried.state(), retried.retries), (pb::JobState::Pending, 1));
    let request = fakes.calls().enqueued.last().cloned().unwrap();
    let skip: Vec<(u64, u64)> = request.skip.iter().map(|r| (r.start, r.end)).collect();
    assert_eq!((request.round, skip), (1, vec![(0, 1), (2, 3)]), "its final batches are skipped");
    assert!(fakes.open("j1").await, "its queue is open again");
    assert!(matches!(&drain(&mut worker)[..], [Out::Assign(a)] if a.job_id == "j1"), "a worker is assigned");
    let durable = JobRecord::decode(&fakes.kv.get("/batchmill/jobs/j1").await.unwrap().unwrap()).unwrap();
    assert_eq!((durable.retries, durable.end_ms), (1, None), "the retry is durable");

    // The last round's checkpoint, arriving late, does not complete it.
    state.enqueue_progress("j1", EnqueueProgress { next_seq: 3, next_item: 30, done: true, ..Default::default() });
    state.outcome(&WorkerId::new("w1"), outcome("j1", 0, spb::BatchStatus::Succeeded));
    state.settle().await;
    state.flush().await;
    assert_eq!(state.get(&job_id("j1")).unwrap().state(), pb::JobState::Running, "stale progress ignored");
    // 59 s after the retry (120 s after submission) it has not timed out.
    tokio::time::advance(Duration::from_secs(59)).await;
    state.tick().await;
    let round = EnqueueProgress { next_seq: 3, next_item: 30, done: true, round: 1, ..Default::default() };
    state.enqueue_progress("j1", round);
    state.outcome(&WorkerId::new("w1"), outcome("j1", 1, spb::BatchStatus::Succeeded));
    state.settle().await;
    state.flush().await;
    let done = fakes.ended(&mut state, "j1").await;
    assert_eq!(done.state(), pb::JobState::CompletedWithFailures, "{done:?}");
    let b = done.batches.unwrap();
    assert_eq!((b.total, b.succeeded, b.failed, b.in_queue), (3, 2, 1, 0), "counts exact, nothing twice");
    assert_eq!(done.items.unwrap().completed, 20);
}

/// The job's events as its log holds them: (type, level, batch id, state).
#[tokio::test]
async fn a_jobs_event_log_records_its_course_in_order() {
    use pb::EventLevel::{Error, Info, Success, Warn};
    use pb::JobState::{Admitted, Pending, Running, Succeeded, Unspecified};
    let fakes = fakes().await;
    let mut state = state(&fakes);
    let mut w1 = join(&mut state, "w1");
    state.submit(record("j1", 2), Limits::default()).await.unwrap();
    drain(&mut w1);
    let _w2 = join(&mut state, "w2");
    state.flush().await;
    let failed = spb::BatchOutcome {
        error: "boom".into(),
        first_item: 10,
        ..outcome("j1", 1, spb::BatchStatus::FailedRetryable)
    };
    state.outcome(&WorkerId::new("w1"), failed);
    state.worker_gone(&WorkerId::new("w2"), Some(1));
    state.outcome(&WorkerId::new("w1"), outcome("j1", 0, spb::BatchStatus::Succeeded));
    state.outcome(&WorkerId::new("w1"), outcome("j1", 1, spb::BatchStatus::FailedFinal));
    state.outcome(&WorkerId::new("w1"), outcome("j1", 1, spb::BatchStatus::FailedFinal)); // a duplicate
    state.enqueue_progress("j1", EnqueueProgress { next_seq: 2, next_item: 20, done: true, ..Default::default() });
    state.settle().await;
    state.flush().await;
    fakes.dead_letter("j1", 1, 5, 3, "x").await;
    state.rerun(&job_id("j1"), &[]).await.unwrap();

    let seen = events(&state, &fakes, "j1").await;
    let got: Vec<(&str, pb::EventLevel, &str, pb::JobState)> =
        seen.iter().map(|(t, l, b, s)| (t.as_str(), *l, b.as_str(), *s)).collect();
    assert_eq!(
        got,
        [
            ("job_state", Info, "", Pending),
            ("job_state", Info, "", Admitted),
            ("worker_assigned", Info, "", Unspecified),
            ("worker_assigned", Info, "", Unspecified),
            ("job_state", Info, "", Running),
            ("batch_failed", Warn, "j1-1", Unspecified),
            ("worker_lost", Warn, "", Unspecified),
            ("batch_dead_lettered", Error, "j1-1", Unspecified),
            ("enqueue_complete", Info, "", Unspecified),
            ("job_state", Warn, "", pb::JobState::CompletedWithFailures),
            ("job_state", Info, "", Running),
            ("batch_rerun", Info, "j1-1", Unspecified),
        ],
        "every step once, in order"
    );
    assert!(!got.iter().any(|(_, l, _, _)| *l == Success));
    assert_eq!(Succeeded as i32, 5, "the enum the log uses is the public one");
}
