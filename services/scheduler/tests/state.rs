//! The scheduler's logic against fakes: in-memory etcd, a queue, enqueuer and
//! object store that record calls, and virtual workers (channel ends).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use batchmill_coord::{Kv, MemKv};
use batchmill_core::enqueue::EnqueueProgress;
use batchmill_core::{JobId, S3Uri, WorkerId};
use batchmill_proto::enqueuer::v1::EnqueueJobRequest;
use batchmill_proto::jobs::v1 as pb;
use batchmill_proto::scheduler::v1::{self as spb, session_response::Message as Out};
use batchmill_queue::DeliveryPolicy;
use batchmill_scheduler::{EnqueueClient, Input, JobQueue, JobRecord, ObjectStore, Ports, Settings, State};
use bytes::Bytes;
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

#[derive(Default)]
struct Calls {
    opened: Vec<String>,
    closed: Vec<String>,
    enqueued: Vec<EnqueueJobRequest>,
    stopped: Vec<String>,
    objects: BTreeMap<String, Bytes>,
}

#[derive(Clone, Default)]
struct Fakes(Arc<Mutex<Calls>>);

impl Fakes {
    fn calls(&self) -> std::sync::MutexGuard<'_, Calls> {
        self.0.lock().unwrap()
    }
}

#[async_trait]
impl JobQueue for Fakes {
    async fn open(&self, job_id: &str, _: DeliveryPolicy) -> Result<(), String> {
        self.calls().opened.push(job_id.into());
        Ok(())
    }
    async fn close(&self, job_id: &str) -> Result<u64, String> {
        self.calls().closed.push(job_id.into());
        Ok(0)
    }
}

#[async_trait]
impl EnqueueClient for Fakes {
    async fn enqueue(
        &self,
        request: EnqueueJobRequest,
        _: &std::collections::HashMap<String, String>,
    ) -> Result<(), String> {
        self.calls().enqueued.push(request);
        Ok(())
    }
    async fn stop(&self, job_id: &str) -> Result<(), String> {
        self.calls().stopped.push(job_id.into());
        Ok(())
    }
}

#[async_trait]
impl ObjectStore for Fakes {
    async fn put(&self, uri: &S3Uri, body: Bytes, _: &str) -> Result<(), String> {
        self.calls().objects.insert(uri.to_string(), body);
        Ok(())
    }
}

fn state(kv: &MemKv, fakes: &Fakes) -> State {
    let ports = Ports {
        kv: Arc::new(kv.clone()),
        queue: Arc::new(fakes.clone()),
        enqueuer: Arc::new(fakes.clone()),
        store: Arc::new(fakes.clone()),
    };
    let settings = Settings {
        policy: DeliveryPolicy { ack_wait: Duration::from_secs(30), max_deliver: 3 },
        pipelines: vec!["echo".into()],
        default_output: S3Uri::parse("s3://out/results").unwrap(),
        staging: S3Uri::parse("s3://out/staging").unwrap(),
    };
    State::new(ports, Arc::new(settings))
}

fn record(id: &str, max_workers: u32) -> JobRecord {
    let input = Input::Ndjson { uris: vec![format!("s3://out/staging/{id}/items.ndjson")] };
    JobRecord {
        max_workers,
        batch_size: 10,
        output_uri: "s3://out/results".into(),
        item_count: Some(30),
        ..JobRecord::pending(JobId::parse("job_id", id).unwrap(), "echo".into(), input, 1)
    }
}

fn join(state: &mut State, id: &str) -> UnboundedReceiver<spb::SessionResponse> {
    let (tx, mut rx) = unbounded_channel();
    state.worker_joined(WorkerId::new(id), 1, vec!["echo".into()], Arc::new(tx));
    assert!(matches!(rx.try_recv().unwrap().message, Some(Out::Registered(_))));
    rx
}

fn drain(rx: &mut UnboundedReceiver<spb::SessionResponse>) -> Vec<Out> {
    std::iter::from_fn(|| rx.try_recv().ok()).filter_map(|m| m.message).collect()
}

fn outcome(job: &str, seq: u64, status: spb::BatchStatus) -> spb::BatchOutcome {
    spb::BatchOutcome { job_id: job.into(), seq, status: status as i32, items: 10, attempt: 1, ..Default::default() }
}

fn job_id(s: &str) -> JobId {
    JobId::parse("job_id", s).unwrap()
}

#[tokio::test]
async fn a_job_completes_from_its_ledger_and_counts_a_redelivery_once() {
    let (kv, fakes) = (MemKv::default(), Fakes::default());
    let mut state = state(&kv, &fakes);
    let mut worker = join(&mut state, "w1");

    let accepted = state.submit(record("j1", 2)).await.unwrap();
    assert_eq!(accepted.state(), pb::JobState::Pending);
    assert_eq!(fakes.calls().opened, vec!["j1"]);
    assert_eq!(fakes.calls().enqueued[0].batch_size, 10);
    assert!(kv.get("/batchmill/jobs/j1").await.unwrap().is_some(), "accepted jobs are durable");
    let assign = drain(&mut worker);
    assert!(matches!(&assign[..], [Out::Assign(a)] if a.job_id == "j1" && a.max_deliver == 3));

    state
        .enqueue_progress("j1", EnqueueProgress { next_seq: 3, next_item: 30, done: true, ..Default::default() })
        .await;
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
    let job = state.get(&job_id("j1")).unwrap();
    assert_eq!(job.state(), pb::JobState::Succeeded);
    let b = job.batches.unwrap();
    assert_eq!((b.total, b.succeeded, b.failed, b.in_queue), (3, 3, 0, 0));
    assert_eq!(job.items.unwrap().completed, 30);
    assert_eq!(fakes.calls().closed, vec!["j1"]);
    let manifest = fakes.calls().objects.get("s3://out/results/j1/manifest.json").cloned().expect("manifest");
    let manifest: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    assert_eq!(manifest["results"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn workers_are_capped_per_job_and_freed_when_it_ends() {
    let (kv, fakes) = (MemKv::default(), Fakes::default());
    let mut state = state(&kv, &fakes);
    let mut w1 = join(&mut state, "w1");
    let mut w2 = join(&mut state, "w2");
    state.submit(record("j1", 1)).await.unwrap();
    let assigned: Vec<_> = [drain(&mut w1), drain(&mut w2)].into_iter().filter(|m| !m.is_empty()).collect();
    assert_eq!(assigned.len(), 1, "max_workers 1 takes one worker");

    state.submit(record("j2", 1)).await.unwrap();
    let j2: Vec<Out> = [drain(&mut w1), drain(&mut w2)].concat();
    assert!(matches!(&j2[..], [Out::Assign(a)] if a.job_id == "j2"), "the idle worker takes the next job");

    let cancelled = state.cancel(&job_id("j1")).await.unwrap();
    assert_eq!(cancelled.state(), pb::JobState::Cancelled);
    assert_eq!(fakes.calls().stopped, vec!["j1"]);
    assert_eq!(fakes.calls().closed, vec!["j1"]);
    let revoked: Vec<Out> = [drain(&mut w1), drain(&mut w2)].concat();
    assert!(matches!(&revoked[..], [Out::Revoke(r)] if r.job_id == "j1"));
}

#[tokio::test]
async fn a_lost_worker_is_counted_and_its_job_goes_on() {
    let (kv, fakes) = (MemKv::default(), Fakes::default());
    let mut state = state(&kv, &fakes);
    let _w1 = join(&mut state, "w1");
    state.submit(record("j1", 2)).await.unwrap();
    state.worker_gone(&WorkerId::new("w1"), None);
    let mut w2 = join(&mut state, "w2");
    assert!(matches!(&drain(&mut w2)[..], [Out::Assign(a)] if a.job_id == "j1"));
    state.flush().await;
    let workers = state.get(&job_id("j1")).unwrap().workers.unwrap();
    assert_eq!((workers.failed, workers.running), (1, 1));
}

#[tokio::test]
async fn a_new_leader_rebuilds_jobs_and_ledgers_and_resumes_them() {
    let (kv, fakes) = (MemKv::default(), Fakes::default());
    let mut first = state(&kv, &fakes);
    let _w = join(&mut first, "w1");
    first.submit(record("j1", 1)).await.unwrap();
    first.outcome(&WorkerId::new("w1"), outcome("j1", 0, spb::BatchStatus::Succeeded));
    first.outcome(&WorkerId::new("w1"), outcome("j1", 1, spb::BatchStatus::FailedFinal));
    first.flush().await;
    drop(first);

    let mut second = state(&kv, &fakes);
    assert_eq!(second.load().await.unwrap(), 1);
    let job = second.get(&job_id("j1")).unwrap();
    let b = job.batches.unwrap();
    assert_eq!((b.succeeded, b.failed), (1, 1), "the ledger survives the leader");
    assert_eq!(job.state(), pb::JobState::Running);
    second.tick().await;
    assert_eq!(fakes.calls().enqueued.len(), 2, "the new leader asks the enqueuer to resume");
    // Finishing the last batch completes the job with its failure.
    second
        .enqueue_progress("j1", EnqueueProgress { next_seq: 3, next_item: 30, done: true, ..Default::default() })
        .await;
    let mut w = join(&mut second, "w1");
    second.outcome(&WorkerId::new("w1"), outcome("j1", 2, spb::BatchStatus::Succeeded));
    second.settle().await;
    second.flush().await;
    assert_eq!(second.get(&job_id("j1")).unwrap().state(), pb::JobState::CompletedWithFailures);
    assert!(drain(&mut w).iter().any(|m| matches!(m, Out::OutcomeAck(a) if a.seq == 2)));
}

#[tokio::test]
async fn a_batch_that_ran_out_of_deliveries_fails_once_it_is_durable() {
    let (kv, fakes) = (MemKv::default(), Fakes::default());
    let mut state = state(&kv, &fakes);
    let _w = join(&mut state, "w1");
    state.submit(record("j1", 1)).await.unwrap();
    state
        .enqueue_progress("j1", EnqueueProgress { next_seq: 2, next_item: 20, done: true, ..Default::default() })
        .await;
    state.outcome(&WorkerId::new("w1"), outcome("j1", 0, spb::BatchStatus::Succeeded));
    let (tx, mut rx) = tokio::sync::oneshot::channel();
    state.exhausted("j1", 1, 10, 3, tx);
    assert!(rx.try_recv().is_err(), "released only after the write");
    state.settle().await;
    state.flush().await;
    rx.await.expect("released after the write");
    let job = state.get(&job_id("j1")).unwrap();
    assert_eq!(job.state(), pb::JobState::CompletedWithFailures);
    let b = job.batches.unwrap();
    assert_eq!((b.succeeded, b.failed), (1, 1));
    // A late outcome for the same batch changes nothing.
    state.outcome(&WorkerId::new("w1"), outcome("j1", 1, spb::BatchStatus::Succeeded));
    state.flush().await;
    assert_eq!(state.get(&job_id("j1")).unwrap().batches.unwrap().failed, 1);
}
