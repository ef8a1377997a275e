//! A job run against fakes: the in-memory queue and S3, and a scheduler
//! that confirms outcomes on the outbox's session (or does not, for a while).
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use batchmill_blob::ObjectStore;
use batchmill_blob::mem::MemBlob;
use batchmill_core::BatchId;
use batchmill_proto::queue::v1::Batch;
use batchmill_proto::scheduler::v1::{self as pb, session_request::Message as Out};
use batchmill_queue::mem::MemQueue;
use batchmill_queue::{Batches, DeadLetters, DeliveryPolicy, TraceHeaders};
use bytes::Bytes;
use prost::Message;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::joblog::JobLog;
use crate::loader::Loader;
use crate::runner::JobRun;
use crate::session::Outbox;

const JOB: &str = "j1";

/// A job's world: its queue, S3, and the outcomes the scheduler received.
struct World {
    queue: MemQueue,
    blob: MemBlob,
    outbox: Outbox,
    outcomes: Arc<Mutex<Vec<pb::BatchOutcome>>>,
}

impl World {
    async fn new(batches: u64, max_deliver: u32) -> World {
        World::grouped(batches, 1, max_deliver).await
    }

    /// A job of `batches` batches of two items, `per_group` to a message.
    async fn grouped(batches: u64, per_group: u64, max_deliver: u32) -> World {
        let (queue, blob) = (MemQueue::default(), MemBlob::default());
        blob.ensure_bucket("out").await.unwrap();
        let policy = DeliveryPolicy { ack_wait: Duration::from_secs(2), max_deliver };
        queue.open_job(JOB, policy).await.unwrap();
        let batch = |seq: u64| Batch {
            job_id: JOB.into(),
            seq,
            first_item: seq * 2,
            items: vec!["\"a\"".into(), "\"b\"".into()],
            group: vec![],
        };
        for first in (0..batches).step_by(per_group as usize) {
            let mut group: Vec<Batch> = (first..(first + per_group).min(batches)).map(batch).collect();
            let message = match group.len() {
                1 => group.remove(0),
                _ => Batch { items: vec![], group, ..batch(first) },
            };
            let id = BatchId::new(batchmill_core::JobId::parse("job_id", JOB).unwrap(), first);
            queue.publish_batch(&id, 0, Bytes::from(message.encode_to_vec()), &TraceHeaders::new()).await.unwrap();
        }
        World { queue, blob, outbox: Outbox::default(), outcomes: Arc::default() }
    }

    /// The body of result object `name` under the job's output.
    fn object(&self, name: &str) -> Option<String> {
        let objects = self.blob.objects();
        objects.get(&format!("s3://out/results/j1/{name}")).map(|b| String::from_utf8_lossy(b).into_owned())
    }

    /// Opens a session whose scheduler confirms every outcome it receives.
    fn session(&self) -> tokio::task::JoinHandle<()> {
        let (tx, mut rx) = mpsc::unbounded_channel();
        self.outbox.attach(tx);
        let (outbox, outcomes) = (self.outbox.clone(), self.outcomes.clone());
        tokio::spawn(async move {
            while let Some(message) = rx.recv().await {
                if let Some(Out::Outcome(o)) = message.message {
                    let ack = pb::OutcomeAck { job_id: o.job_id.clone(), seq: o.seq };
                    outcomes.lock().unwrap().push(o);
                    outbox.confirm(&ack);
                }
            }
        })
    }

    /// Runs the job with `config` until its queue is empty.
    async fn run(&self, config: serde_json::Value, max_deliver: u32) -> CancellationToken {
        self.start(assign(config, max_deliver))
    }

    /// Runs the job as `assign` says until its queue is empty.
    fn start(&self, assign: pb::Assign) -> CancellationToken {
        let queue: Arc<dyn batchmill_queue::Queue> = Arc::new(self.queue.clone());
        let blob: Arc<dyn ObjectStore> = Arc::new(self.blob.clone());
        let dir = std::env::temp_dir().join(format!("batchmill-runner-test-{}", fastrand::u64(..)));
        let loader = Loader::new(None, dir, blob.clone(), queue.clone(), "w1".into());
        let stop = CancellationToken::new();
        let run = JobRun {
            log: JobLog::new(queue.clone(), JOB, "w1"),
            assign,
            queue,
            blob: blob.clone(),
            outbox: self.outbox.clone(),
            worker_id: "w1".into(),
            loader,
            revoked: CancellationToken::new(),
            inputs: crate::runner::Inputs::Store(blob.clone()),
        };
        tokio::spawn(run.run(stop.clone()));
        stop
    }

    /// Waits until `n` outcomes have come, and says when.
    async fn outcome_count(&self, n: usize, patience: Duration) -> tokio::time::Instant {
        let deadline = tokio::time::Instant::now() + patience;
        while self.outcomes.lock().unwrap().len() < n {
            assert!(tokio::time::Instant::now() < deadline, "outcomes: {:?}", self.outcomes());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::Instant::now()
    }

    async fn until_empty(&self, patience: Duration) {
        let deadline = tokio::time::Instant::now() + patience;
        while self.queue.batches_left(JOB) > 0 {
            assert!(tokio::time::Instant::now() < deadline, "batches left: {}", self.queue.batches_left(JOB));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// (seq, status, attempt) of every outcome received, in seq order.
    fn outcomes(&self) -> Vec<(u64, pb::BatchStatus, u64)> {
        let mut seen: Vec<_> = self.outcomes.lock().unwrap().iter().map(|o| (o.seq, o.status(), o.attempt)).collect();
        seen.sort_by_key(|(seq, _, attempt)| (*seq, *attempt));
        seen
    }
}

/// The assignment of the echo job `JOB`.
fn assign(config: serde_json::Value, max_deliver: u32) -> pb::Assign {
    pb::Assign {
        job_id: JOB.into(),
        pipeline: "echo".into(),
        config: config.as_object().map(batchmill_core::json::json_to_struct),
        output_uri: "s3://out/results".into(),
        max_deliver,
        ack_wait: Some(batchmill_core::time::duration_ms(2_000)),
        ..Default::default()
    }
}

#[tokio::test]
async fn every_batch_is_written_reported_and_acked_once() {
    let world = World::new(3, 3).await;
    let _session = world.session();
    let stop = world.run(serde_json::json!({}), 3).await;
    world.until_empty(Duration::from_secs(10)).await;
    stop.cancel();
    let succeeded = pb::BatchStatus::Succeeded;
    assert_eq!(world.outcomes(), [(0, succeeded, 1), (1, succeeded, 1), (2, succeeded, 1)]);
    let objects = world.blob.objects();
    let body = String::from_utf8(objects["s3://out/results/j1/j1-1.jsonl"].to_vec()).unwrap();
    assert_eq!(body, "{\"index\":2,\"result\":\"a\"}\n{\"index\":3,\"result\":\"b\"}\n");
    assert_eq!(objects.len(), 3);
}

#[tokio::test]
async fn a_failed_batch_waits_the_backoff_its_pipeline_version_sets() {
    let world = World::new(1, 3).await;
    let _session = world.session();
    let backoff = batchmill_core::backoff::Backoff { initial_ms: 2_000, max_ms: 2_500 };
    let (initial_backoff, max_backoff) = backoff.to_proto();
    let assign = pb::Assign {
        initial_backoff: Some(initial_backoff),
        max_backoff: Some(max_backoff),
        ..assign(serde_json::json!({"fail_batches": [0]}), 3)
    };
    let stop = world.start(assign);
    let first = world.outcome_count(1, Duration::from_secs(10)).await;
    let last = world.outcome_count(3, Duration::from_secs(20)).await;
    stop.cancel();
    let (retryable, fail) = (pb::BatchStatus::FailedRetryable, pb::BatchStatus::FailedFinal);
    assert_eq!(world.outcomes(), [(0, retryable, 1), (0, retryable, 2), (0, fail, 3)]);
    // 2 s after the first delivery, then 2.5 s (doubled, up to the ceiling);
    // the cluster's default would have waited 1 s and 2 s.
    let waited = last - first;
    assert!(waited >= Duration::from_millis(4_400), "the two waits came to {waited:?}");
}

#[tokio::test]
async fn an_s3_outage_is_waited_out_without_spending_a_delivery() {
    let world = World::new(2, 3).await;
    let _session = world.session();
    world.blob.fail_puts(5);
    let stop = world.run(serde_json::json!({}), 3).await;
    world.until_empty(Duration::from_secs(20)).await;
    stop.cancel();
    let succeeded = pb::BatchStatus::Succeeded;
    assert_eq!(world.outcomes(), [(0, succeeded, 1), (1, succeeded, 1)], "each on its first delivery");
    assert_eq!(world.blob.puts(), 7, "5 failed writes, then one each");
    assert_eq!(world.blob.objects().len(), 2);
}

#[tokio::test]
async fn an_output_bucket_gone_mid_job_fails_each_batch_for_good_at_once() {
    // S3 refuses the writes (no such bucket): neither retried in place nor
    // delivered again, since every delivery would meet the same refusal.
    let world = World::new(2, 3).await;
    let _session = world.session();
    let mut assign = assign(serde_json::json!({}), 3);
    assign.output_uri = "s3://gone/results".into();
    let stop = world.start(assign);
    world.until_empty(Duration::from_secs(20)).await;
    stop.cancel();
    let failed = pb::BatchStatus::FailedFinal;
    assert_eq!(world.outcomes(), [(0, failed, 1), (1, failed, 1)], "each on its first delivery");
    assert_eq!(world.blob.puts(), 2, "one refused write each, no retry in place");
    let letters = world.queue.dead_letters(JOB, 0, 10).await.unwrap();
    assert_eq!(letters.len(), 2, "both dead-lettered");
    assert!(
        letters.iter().all(|l| format!("{l:?}").contains("does not exist")),
        "the dead letters say why: {letters:?}"
    );
}

#[tokio::test]
async fn a_nats_outage_while_dead_lettering_is_waited_out() {
    let world = World::new(1, 1).await;
    let _session = world.session();
    world.queue.fail_publishes(3);
    let stop = world.run(serde_json::json!({"fail_batches": [0]}), 1).await;
    world.until_empty(Duration::from_secs(20)).await;
    stop.cancel();
    assert_eq!(world.outcomes(), [(0, pb::BatchStatus::FailedFinal, 1)]);
    let letters = world.queue.dead_letters(JOB, 0, 10).await.unwrap();
    assert_eq!(letters.len(), 1, "dead-lettered once, after NATS came back");
}

#[tokio::test]
async fn an_outcome_unconfirmed_when_the_leader_died_is_confirmed_by_the_next_one() {
    let world = World::new(2, 3).await;
    // A leader that receives outcomes and dies before confirming any.
    let (tx, mut rx) = mpsc::unbounded_channel();
    world.outbox.attach(tx);
    let stop = world.run(serde_json::json!({}), 3).await;
    let mut sent = 0;
    while sent < 2 {
        if let Some(pb::SessionRequest { message: Some(Out::Outcome(_)) }) = rx.recv().await {
            sent += 1;
        }
    }
    drop(rx);
    world.outbox.detach();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(world.queue.batches_left(JOB), 2, "unconfirmed: not acked");
    // The next leader gets them again at once, not after the ack wait.
    let _session = world.session();
    world.until_empty(Duration::from_secs(1)).await;
    stop.cancel();
    let succeeded = pb::BatchStatus::Succeeded;
    assert_eq!(world.outcomes(), [(0, succeeded, 1), (1, succeeded, 1)], "no delivery spent");
}

#[test]
fn quick_batches_are_pulled_several_at_a_time_and_slow_ones_singly() {
    let mut pace = crate::runner::Pace::default();
    assert_eq!(pace.pull(), 1);
    let mut pulls = Vec::new();
    for _ in 0..5 {
        pace.ran(Duration::from_millis(1));
        pulls.push(pace.pull());
    }
    assert_eq!(pulls, [2, 4, 8, 8, 8], "doubling up to the most");
    pace.ran(Duration::from_millis(500));
    assert_eq!(pace.pull(), 1, "a slow batch: one at a time again");
}

#[tokio::test]
async fn batches_pulled_together_are_each_written_and_acked_once() {
    let world = World::new(40, 3).await;
    let _session = world.session();
    let stop = world.run(serde_json::json!({}), 3).await;
    world.until_empty(Duration::from_secs(20)).await;
    stop.cancel();
    let outcomes = world.outcomes();
    assert_eq!(outcomes.len(), 40, "{outcomes:?}");
    assert!(outcomes.iter().enumerate().all(|(i, (seq, status, attempt))| {
        *seq == i as u64 && *status == pb::BatchStatus::Succeeded && *attempt == 1
    }));
    assert_eq!(world.blob.objects().len(), 40);
}

/// Echo's result lines for batches `seqs` (two items each).
fn lines(seqs: &[u64]) -> String {
    seqs.iter()
        .map(|s| format!("{{\"index\":{},\"result\":\"a\"}}\n{{\"index\":{},\"result\":\"b\"}}\n", s * 2, s * 2 + 1))
        .collect()
}

#[tokio::test]
async fn a_group_writes_one_object_and_reports_each_batch_in_it() {
    let world = World::grouped(10, 4, 3).await;
    let _session = world.session();
    let stop = world.run(serde_json::json!({}), 3).await;
    world.until_empty(Duration::from_secs(10)).await;
    stop.cancel();
    let succeeded = pb::BatchStatus::Succeeded;
    assert_eq!(world.outcomes(), (0..10).map(|s| (s, succeeded, 1)).collect::<Vec<_>>());
    let groups: Vec<(u64, u64)> =
        world.outcomes.lock().unwrap().iter().map(|o| (o.group_first, o.group_last)).collect();
    assert_eq!(groups, [[(0, 3); 4].as_slice(), &[(4, 7); 4], &[(8, 9); 2]].concat());
    assert_eq!(world.blob.objects().len(), 3, "one object per group");
    assert_eq!(world.object("j1-0-3.jsonl"), Some(lines(&[0, 1, 2, 3])));
    assert_eq!(world.object("j1-8-9.jsonl"), Some(lines(&[8, 9])));
}

#[tokio::test]
async fn a_group_with_a_failure_runs_again_whole_and_writes_only_once_final() {
    // Batch 5 fails on every delivery: the group 4..=7 runs twice, then is
    // written without it, and only batch 5 is dead-lettered.
    let world = World::grouped(8, 4, 2).await;
    let _session = world.session();
    let stop = world.run(serde_json::json!({"fail_batches": [5]}), 2).await;
    world.until_empty(Duration::from_secs(10)).await;
    stop.cancel();
    let (ok, retry, fail) =
        (pb::BatchStatus::Succeeded, pb::BatchStatus::FailedRetryable, pb::BatchStatus::FailedFinal);
    let expected = [
        (0, ok, 1),
        (1, ok, 1),
        (2, ok, 1),
        (3, ok, 1),
        (4, ok, 2),
        (5, retry, 1),
        (5, fail, 2),
        (6, ok, 2),
        (7, ok, 2),
    ];
    assert_eq!(world.outcomes(), expected, "the group's successes are reported once, when it is final");
    assert_eq!(world.object("j1-4-7.jsonl"), Some(lines(&[4, 6, 7])));
    assert_eq!(world.blob.puts(), 2, "no object written for the delivery that ran again");
    let letters = world.queue.dead_letters(JOB, 0, 10).await.unwrap();
    let dead: Vec<u64> = letters
        .iter()
        .map(|l| batchmill_proto::queue::v1::DeadLetter::decode(l.payload.as_ref()).unwrap().batch.unwrap().seq)
        .collect();
    assert_eq!(dead, [5]);
}

/// The dead letters of `JOB`, decoded.
async fn dead_letters(world: &World) -> Vec<batchmill_proto::queue::v1::DeadLetter> {
    let stored = world.queue.dead_letters(JOB, 0, 100).await.unwrap();
    stored.iter().map(|s| batchmill_proto::queue::v1::DeadLetter::decode(s.payload.as_ref()).unwrap()).collect()
}

#[tokio::test]
async fn a_poison_item_is_isolated_on_the_last_delivery_and_the_rest_written() {
    // Batches of two items; item 1 (in batch 0) fails every call it is in.
    let world = World::new(2, 2).await;
    let _session = world.session();
    let stop = world.start(pb::Assign { bisect: true, ..assign(serde_json::json!({"fail_items": [1]}), 2) });
    world.until_empty(Duration::from_secs(20)).await;
    stop.cancel();
    let (failed, retried, succeeded) =
        (pb::BatchStatus::FailedFinal, pb::BatchStatus::FailedRetryable, pb::BatchStatus::Succeeded);
    assert_eq!(world.outcomes(), [(0, retried, 1), (0, failed, 2), (1, succeeded, 1)], "bisected on the last only");
    let last = world.outcomes.lock().unwrap().iter().find(|o| o.status() == failed).cloned().unwrap();
    assert_eq!((last.items, last.items_failed), (2, 1), "one of its two items failed");
    assert!(last.error.contains("1 of its 2 items failed") && last.error.contains("item 1: echo: item 1 fails"));
    assert_eq!(world.object("j1-0.jsonl").as_deref(), Some("{\"index\":0,\"result\":\"a\"}\n"), "item 0's result");
    let letters = dead_letters(&world).await;
    assert_eq!(letters.len(), 1);
    let isolated: Vec<_> = letters[0].failed_items.iter().map(|f| (f.index, f.error.as_str())).collect();
    assert_eq!(isolated, [(1, "echo: item 1 fails as configured")]);
    assert_eq!(letters[0].batch.as_ref().map(|b| b.items.len()), Some(2), "the whole batch, for a re-run");
}

#[tokio::test]
async fn a_poison_item_in_a_group_is_isolated_beside_the_groups_object() {
    // Groups of two batches of two items; item 7 is in batch 3.
    let world = World::grouped(4, 2, 1).await;
    let _session = world.session();
    let stop = world.start(pb::Assign { bisect: true, ..assign(serde_json::json!({"fail_items": [7]}), 1) });
    world.until_empty(Duration::from_secs(20)).await;
    stop.cancel();
    let (failed, succeeded) = (pb::BatchStatus::FailedFinal, pb::BatchStatus::Succeeded);
    let want = [(0, succeeded, 1), (1, succeeded, 1), (2, succeeded, 1), (3, failed, 1)];
    assert_eq!(world.outcomes(), want);
    let group = world.object("j1-2-3.jsonl").unwrap_or_default();
    assert_eq!(group, "{\"index\":4,\"result\":\"a\"}\n{\"index\":5,\"result\":\"b\"}\n", "batch 2 alone");
    assert_eq!(world.object("j1-3.jsonl").as_deref(), Some("{\"index\":6,\"result\":\"a\"}\n"), "item 6 on its own");
    assert_eq!(dead_letters(&world).await[0].failed_items.iter().map(|f| f.index).collect::<Vec<_>>(), [7]);
}

#[tokio::test]
async fn without_bisection_the_whole_batch_is_dead_lettered() {
    let world = World::new(1, 1).await;
    let _session = world.session();
    let stop = world.start(pb::Assign { bisect: false, ..assign(serde_json::json!({"fail_items": [1]}), 1) });
    world.until_empty(Duration::from_secs(20)).await;
    stop.cancel();
    let outcome = world.outcomes.lock().unwrap()[0].clone();
    assert_eq!((outcome.status(), outcome.items_failed), (pb::BatchStatus::FailedFinal, 0));
    assert!(world.object("j1-0.jsonl").is_none(), "no result written");
    assert!(dead_letters(&world).await[0].failed_items.is_empty());
}
