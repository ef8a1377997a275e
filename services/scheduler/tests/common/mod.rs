//! Fakes shared by the scheduler's tests: in-memory etcd, a queue, an
//! enqueuer and an object store that record calls, and virtual workers
//! (channel ends).
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use batchmill_blob::ObjectStore;
use batchmill_blob::mem::MemBlob;
use batchmill_coord::MemKv;
use batchmill_core::{BatchId, Caller, Clock, JobId, Owner, RemoteError, Role, S3Uri, WorkerId};
use batchmill_proto::enqueuer::v1::EnqueueJobRequest;
use batchmill_proto::queue::v1 as qpb;
use batchmill_proto::scheduler::v1::{self as spb, session_response::Message as Out};
use batchmill_queue::mem::MemQueue;
use batchmill_queue::{Batches, DeadLetters, DeliveryPolicy, TraceHeaders};
use batchmill_scheduler::{Capabilities, EnqueueClient, Input, JobRecord, Ports, Settings, State};
use bytes::Bytes;
use prost::Message;
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

/// What the enqueuer was asked.
#[derive(Default)]
pub struct Calls {
    pub enqueued: Vec<EnqueueJobRequest>,
    pub stopped: Vec<String>,
}

/// A fake enqueuer that records calls; the queue, S3 and etcd are the
/// adapters' in-memory fakes.
#[derive(Clone)]
pub struct Fakes {
    pub calls: Arc<Mutex<Calls>>,
    pub kv: MemKv,
    pub queue: MemQueue,
    pub store: MemBlob,
    /// One clock for every leader of a test.
    pub clock: Clock,
}

impl Fakes {
    pub fn calls(&self) -> std::sync::MutexGuard<'_, Calls> {
        self.calls.lock().unwrap()
    }

    /// Stores a dead letter of batch `seq` of `job`, delivered from batch
    /// stream position `from`, whose batch holds `items`.
    pub async fn dead_letter(&self, job: &str, seq: u64, from: u64, attempts: u64, items: &str) {
        let batch =
            qpb::Batch { job_id: job.into(), seq, first_item: seq * 10, items: vec![items.into(); 10], group: vec![] };
        let dead = qpb::DeadLetter { batch: Some(batch), attempts, last_error: "boom".into(), ..Default::default() };
        let id = BatchId::new(job_id(job), seq);
        self.queue.dead_letter(&id, from, Bytes::from(dead.encode_to_vec())).await.unwrap();
    }

    /// Whether the job's queue is open (its consumer exists).
    pub async fn open(&self, job: &str) -> bool {
        self.queue.job_consumer(job).await.is_ok()
    }

    /// A job's event log as stored, once every event recorded so far is.
    pub async fn events(&self, state: &State, job: &str) -> Vec<batchmill_proto::jobs::v1::JobEvent> {
        use batchmill_queue::Events;
        state.events_written(Duration::from_secs(5)).await;
        let stored = self.queue.events(job, 0, 1000).await.unwrap();
        stored.iter().map(|s| batchmill_proto::jobs::v1::JobEvent::decode(s.payload.as_ref()).unwrap()).collect()
    }

    /// Job `id` as clients see it once the manifests being written are
    /// (until its manifest is written, a job that ended shows COMPLETING).
    pub async fn ended(&self, state: &mut State, id: &str) -> batchmill_proto::jobs::v1::Job {
        state.manifests_written(Duration::from_secs(5)).await;
        state.get(&job_id(id)).unwrap()
    }

    /// The objects written to S3, once the manifests being written are.
    pub async fn objects(&self, state: &mut State) -> std::collections::BTreeMap<String, Bytes> {
        state.manifests_written(Duration::from_secs(5)).await;
        self.store.objects()
    }
}

#[async_trait]
impl EnqueueClient for Fakes {
    async fn enqueue(&self, request: EnqueueJobRequest, _: &TraceHeaders) -> Result<(), RemoteError> {
        self.calls().enqueued.push(request);
        Ok(())
    }
    async fn stop(&self, job_id: &str) -> Result<(), RemoteError> {
        self.calls().stopped.push(job_id.into());
        Ok(())
    }
}

pub fn state(fakes: &Fakes) -> State {
    state_with_queues(fakes, batchmill_core::queues::Queues::default())
}

/// A leader whose cluster has `queues`.
pub fn state_with_queues(fakes: &Fakes, queues: batchmill_core::queues::Queues) -> State {
    let ports = Ports {
        kv: Arc::new(fakes.kv.clone()),
        queue: Arc::new(fakes.queue.clone()),
        enqueuer: Arc::new(fakes.clone()),
        store: Arc::new(fakes.store.clone()),
    };
    let settings = Settings {
        policy: DeliveryPolicy { ack_wait: Duration::from_secs(30), max_deliver: 3 },
        default_output: S3Uri::parse("s3://out/results").unwrap(),
        staging: S3Uri::parse("s3://out/staging").unwrap(),
        secret_key: None,
        fence: batchmill_core::fence::Fence::new(
            S3Uri::parse("s3://out/results").unwrap(),
            S3Uri::parse("s3://out/staging").unwrap(),
            S3Uri::parse("s3://out/pipelines").unwrap(),
        ),
        queues,
        max_job_items: 0,
    };
    State::new(ports, Arc::new(settings), fakes.clock)
}

pub async fn fakes() -> Fakes {
    let fakes = Fakes {
        calls: Arc::default(),
        kv: MemKv::default(),
        queue: MemQueue::default(),
        store: MemBlob::default(),
        clock: Clock::starting_at(1_000),
    };
    fakes.store.ensure_bucket("out").await.unwrap();
    fakes
}

pub fn record(id: &str, max_workers: u32) -> JobRecord {
    let input = Input::Ndjson { uris: vec![format!("s3://out/staging/{id}/items.ndjson")] };
    JobRecord {
        max_workers,
        batch_size: 10,
        output_uri: "s3://out/results".into(),
        item_count: Some(30),
        ..JobRecord::pending(JobId::parse("job_id", id).unwrap(), "echo".into(), input, 1)
    }
}

pub fn root() -> Caller {
    Caller { account: "admin".into(), key_id: "root".into(), role: Role::ClusterAdmin }
}

pub fn owned(id: &str, max_workers: u32, account: &str, key_id: &str) -> JobRecord {
    JobRecord { owner: Owner { account: account.into(), key_id: key_id.into() }, ..record(id, max_workers) }
}

pub fn join(state: &mut State, id: &str) -> UnboundedReceiver<spb::SessionResponse> {
    let (tx, mut rx) = unbounded_channel();
    let runs =
        Capabilities { built_in: vec!["echo".into()], predictor_types: vec!["python".into()], ..Default::default() };
    state.worker_joined(WorkerId::new(id), 1, runs, Arc::new(tx));
    assert!(matches!(rx.try_recv().unwrap().message, Some(Out::Registered(_))));
    rx
}

pub fn drain(rx: &mut UnboundedReceiver<spb::SessionResponse>) -> Vec<Out> {
    std::iter::from_fn(|| rx.try_recv().ok()).filter_map(|m| m.message).collect()
}

pub fn outcome(job: &str, seq: u64, status: spb::BatchStatus) -> spb::BatchOutcome {
    spb::BatchOutcome { job_id: job.into(), seq, status: status as i32, items: 10, attempt: 1, ..Default::default() }
}

pub fn batch_ids(ids: &[BatchId]) -> Vec<String> {
    ids.iter().map(ToString::to_string).collect()
}

pub fn job_id(s: &str) -> JobId {
    JobId::parse("job_id", s).unwrap()
}

/// A job's event log as stored: (type, level, batch id, state) of each event.
pub async fn events(
    state: &State,
    fakes: &Fakes,
    job: &str,
) -> Vec<(String, batchmill_proto::jobs::v1::EventLevel, String, batchmill_proto::jobs::v1::JobState)> {
    fakes
        .events(state, job)
        .await
        .iter()
        .map(|e| (e.r#type.clone(), e.level(), e.batch_id.clone(), e.state()))
        .collect()
}
