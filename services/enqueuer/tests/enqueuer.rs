//! The enqueuer's logic against fakes: the in-memory etcd and queue, and a
//! lister that serves a list of items and can fail mid-stream.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use batchmill_coord::{Kv, MemKv};
use batchmill_core::enqueue::{EnqueueProgress, progress_key};
use batchmill_core::{ErrorCode, RemoteError};
use batchmill_enqueuer::{Chunks, Enqueuer, ItemSource};
use batchmill_proto::enqueuer::v1::EnqueueJobRequest;
use batchmill_proto::lister::v1::{ListItemsRequest, NdjsonObjects, Source, source::Kind};
use batchmill_proto::queue::v1::Batch;
use batchmill_queue::mem::MemQueue;
use batchmill_queue::{Batches, DeliveryPolicy};
use futures::StreamExt;
use prost::Message;
use tokio_util::sync::CancellationToken;

/// A lister over fixed items, in chunks of 7; it fails once after
/// `fail_after` items (when set) as a lister that went away would.
#[derive(Clone, Default)]
struct Lister {
    items: Vec<String>,
    fail_after: Arc<Mutex<Option<usize>>>,
    /// The `skip` of each call.
    calls: Arc<Mutex<Vec<u64>>>,
    /// The secret of the source's own access, in each call.
    secrets: Arc<Mutex<Vec<Option<String>>>>,
}

#[async_trait]
impl ItemSource for Lister {
    async fn items(&self, request: ListItemsRequest) -> Result<Chunks, RemoteError> {
        self.calls.lock().unwrap().push(request.skip);
        let secret = request.source.as_ref().and_then(|s| s.access.as_ref()).map(|a| a.secret_access_key.clone());
        self.secrets.lock().unwrap().push(secret);
        let rest: Vec<String> = self.items.iter().skip(request.skip as usize).cloned().collect();
        let fail_after = self.fail_after.lock().unwrap().take();
        let mut chunks: Vec<Result<Vec<String>, RemoteError>> = Vec::new();
        for (i, chunk) in rest.chunks(7).enumerate() {
            if fail_after.is_some_and(|n| i * 7 >= n) {
                let lost = RemoteError { code: ErrorCode::Unavailable, message: "lister went away".into(), lost: true };
                chunks.push(Err(lost));
                break;
            }
            chunks.push(Ok(chunk.to_vec()));
        }
        Ok(futures::stream::iter(chunks).boxed())
    }
}

fn request(job: &str, batch_size: i32) -> EnqueueJobRequest {
    let source =
        Source { kind: Some(Kind::NdjsonObjects(NdjsonObjects { uris: vec!["s3://b/items".into()] })), access: None };
    EnqueueJobRequest { job_id: job.into(), source: Some(source), batch_size, ..Default::default() }
}

fn items(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{{\"i\":{i}}}")).collect()
}

async fn progress(kv: &MemKv, job: &str) -> EnqueueProgress {
    EnqueueProgress::decode(&kv.get(&progress_key(job)).await.unwrap().unwrap()).unwrap()
}

/// Waits until the job's enqueuing is final, and returns its checkpoint.
async fn finished(kv: &MemKv, job: &str) -> EnqueueProgress {
    for _ in 0..200 {
        let p = progress(kv, job).await;
        if p.is_final() {
            return p;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("enqueuing {job} did not end: {:?}", progress(kv, job).await);
}

/// Every batch of `job` in the queue, in order, taking them.
async fn take_batches(queue: &MemQueue, job: &str) -> Vec<Batch> {
    queue.open_job(job, DeliveryPolicy { ack_wait: Duration::from_secs(30), max_deliver: 1 }).await.unwrap();
    let consumer = queue.job_consumer(job).await.unwrap();
    let mut batches = Vec::new();
    while let Some(delivery) = consumer.next(Duration::from_millis(20)).await.unwrap() {
        batches.push(Batch::decode(delivery.payload().as_ref()).unwrap());
        delivery.ack().await.unwrap();
    }
    batches
}

fn enqueuer(kv: &MemKv, queue: &MemQueue, lister: &Lister) -> Enqueuer {
    Enqueuer::new(Arc::new(kv.clone()), Arc::new(queue.clone()), Arc::new(lister.clone()), CancellationToken::new())
}

#[tokio::test]
async fn items_are_cut_into_batches_and_the_checkpoint_says_done() {
    let (kv, queue) = (MemKv::default(), MemQueue::default());
    let lister = Lister { items: items(23), ..Default::default() };
    assert!(enqueuer(&kv, &queue, &lister).enqueue(request("j1", 5)).await.unwrap());
    let done = finished(&kv, "j1").await;
    assert_eq!((done.next_seq, done.next_item, done.done, done.error), (5, 23, true, None));
    let batches = take_batches(&queue, "j1").await;
    let shape: Vec<(u64, u64, usize)> = batches.iter().map(|b| (b.seq, b.first_item, b.items.len())).collect();
    assert_eq!(shape, [(0, 0, 5), (1, 5, 5), (2, 10, 5), (3, 15, 5), (4, 20, 3)]);
    assert_eq!(
        batches.iter().flat_map(|b| b.items.clone()).collect::<Vec<_>>(),
        items(23),
        "every item once, in order"
    );
    assert!(!enqueuer(&kv, &queue, &lister).enqueue(request("j1", 5)).await.unwrap(), "a finished job is not redone");
}

#[tokio::test]
async fn a_lister_that_goes_away_is_retried_from_the_checkpoint_and_no_batch_is_doubled() {
    let (kv, queue) = (MemKv::default(), MemQueue::default());
    let lister = Lister { items: items(40), fail_after: Arc::new(Mutex::new(Some(21))), ..Default::default() };
    enqueuer(&kv, &queue, &lister).enqueue(request("j1", 4)).await.unwrap();
    let done = finished(&kv, "j1").await;
    assert_eq!((done.next_seq, done.next_item, done.done), (10, 40, true));
    let calls = lister.calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 2, "one retry: {calls:?}");
    assert_eq!(calls[1] % 4, 0, "the retry resumes at a batch boundary: {calls:?}");
    let batches = take_batches(&queue, "j1").await;
    assert_eq!(batches.iter().map(|b| b.seq).collect::<Vec<_>>(), (0..10).collect::<Vec<_>>());
    assert_eq!(batches.iter().flat_map(|b| b.items.clone()).collect::<Vec<_>>(), items(40));
}

#[tokio::test]
async fn a_restarted_enqueuer_resumes_unfinished_jobs_and_republished_batches_are_dropped() {
    let (kv, queue) = (MemKv::default(), MemQueue::default());
    let lister = Lister { items: items(30), ..Default::default() };
    // A checkpoint as a killed enqueuer left it: 2 batches published and
    // recorded, a third published after the checkpoint.
    let first = enqueuer(&kv, &queue, &Lister { items: items(15), ..Default::default() });
    first.enqueue(request("j1", 5)).await.unwrap();
    finished(&kv, "j1").await;
    let stale = EnqueueProgress { next_seq: 2, next_item: 10, ..Default::default() };
    kv.put(&progress_key("j1"), stale.encode().unwrap()).await.unwrap();

    let restarted = enqueuer(&kv, &queue, &lister);
    assert_eq!(restarted.resume_all().await.unwrap(), 1);
    let done = finished(&kv, "j1").await;
    assert_eq!((done.next_seq, done.next_item, done.done), (6, 30, true));
    let batches = take_batches(&queue, "j1").await;
    assert_eq!(batches.iter().map(|b| b.seq).collect::<Vec<_>>(), [0, 1, 2, 3, 4, 5], "batch 2 once");
    assert_eq!(batches.iter().flat_map(|b| b.items.clone()).collect::<Vec<_>>(), items(30));
}

#[tokio::test]
async fn a_retry_round_publishes_only_the_batches_not_final_and_a_stale_round_is_ignored() {
    use batchmill_proto::enqueuer::v1::SeqRange;
    let (kv, queue) = (MemKv::default(), MemQueue::default());
    let lister = Lister { items: items(23), ..Default::default() };
    let first = enqueuer(&kv, &queue, &lister);
    assert!(first.enqueue(request("j1", 5)).await.unwrap());
    finished(&kv, "j1").await;
    assert_eq!(take_batches(&queue, "j1").await.len(), 5);

    // Retried: batches 0, 1 and 3 are final in the ledger.
    let skip = vec![SeqRange { start: 0, end: 2 }, SeqRange { start: 3, end: 4 }];
    let retry = EnqueueJobRequest { round: 1, skip, ..request("j1", 5) };
    assert!(enqueuer(&kv, &queue, &lister).enqueue(retry.clone()).await.unwrap(), "a new round enqueues again");
    let done = finished(&kv, "j1").await;
    assert_eq!((done.next_seq, done.next_item, done.round), (5, 23, 1), "skipped batches still count");
    let batches = take_batches(&queue, "j1").await;
    let shape: Vec<(u64, u64, usize)> = batches.iter().map(|b| (b.seq, b.first_item, b.items.len())).collect();
    assert_eq!(shape, [(2, 10, 5), (4, 20, 3)], "the same batches, only those not final");

    assert!(!enqueuer(&kv, &queue, &lister).enqueue(retry).await.unwrap(), "the same round is not redone");
    assert!(!enqueuer(&kv, &queue, &lister).enqueue(request("j1", 5)).await.unwrap(), "an older round is stale");
    assert!(take_batches(&queue, "j1").await.is_empty());
    assert_eq!(progress(&kv, "j1").await.round, 1);
}

#[tokio::test]
async fn an_item_over_the_batch_limit_ends_enqueuing_with_the_error_recorded() {
    let (kv, queue) = (MemKv::default(), MemQueue::default());
    let mut big = items(3);
    big[1] = format!("\"{}\"", "x".repeat(300 * 1024));
    let lister = Lister { items: big, ..Default::default() };
    enqueuer(&kv, &queue, &lister).enqueue(request("j1", 2)).await.unwrap();
    let done = finished(&kv, "j1").await;
    let error = done.error.expect("an error");
    assert!(error.contains("item 1 is") && error.contains("batch limit"), "{error}");
    assert!(!done.done);
}

#[tokio::test]
async fn a_job_past_its_item_limit_fails_naming_the_limit_and_one_at_it_completes() {
    let (kv, queue) = (MemKv::default(), MemQueue::default());
    let lister = Lister { items: items(23), ..Default::default() };
    let enqueuer = enqueuer(&kv, &queue, &lister);
    enqueuer.enqueue(EnqueueJobRequest { max_items: 22, ..request("over", 5) }).await.unwrap();
    let over = finished(&kv, "over").await;
    let error = over.error.clone().expect("an error");
    assert!(error.contains("more than 22 items") && error.contains("BATCHMILL_MAX_JOB_ITEMS"), "{error}");
    assert!(!over.done && over.next_item <= 22, "{over:?}");

    enqueuer.enqueue(EnqueueJobRequest { max_items: 23, ..request("at", 5) }).await.unwrap();
    let at = finished(&kv, "at").await;
    assert_eq!((at.next_item, at.done, at.error), (23, true, None));
}

#[tokio::test]
async fn a_bad_job_id_is_refused_and_a_stopped_job_publishes_nothing_more() {
    let (kv, queue) = (MemKv::default(), MemQueue::default());
    let lister = Lister { items: items(10), ..Default::default() };
    let enqueuer = enqueuer(&kv, &queue, &lister);
    let err = enqueuer.enqueue(request("J-1", 5)).await.unwrap_err();
    assert!(err.to_string().starts_with("job_id:"), "{err}");
    // Stopped before it ran: the checkpoint says stopped, and a later
    // enqueue call does nothing.
    kv.put(&progress_key("j3"), EnqueueProgress::default().encode().unwrap()).await.unwrap();
    assert!(!enqueuer.stop("j3").await.unwrap(), "it was not running");
    assert!(progress(&kv, "j3").await.stopped);
    assert!(!enqueuer.enqueue(request("j3", 5)).await.unwrap());
    assert!(take_batches(&queue, "j3").await.is_empty());
}

#[tokio::test]
async fn a_sources_own_access_is_kept_sealed_and_resumes_with_the_job() {
    let (kv, queue) = (MemKv::default(), MemQueue::default());
    let lister = Lister { items: items(9), ..Default::default() };
    let key =
        batchmill_core::sealed::ClusterKey::parse(&batchmill_core::sealed::ClusterKey::generate().unwrap()).unwrap();
    let mut with_access = request("j1", 3);
    if let Some(source) = with_access.source.as_mut() {
        source.access = Some(batchmill_proto::lister::v1::S3Access {
            access_key_id: "AK".into(),
            secret_access_key: "own-secret-123".into(),
            ..Default::default()
        });
    }
    // Without the cluster's key it is refused, naming the field.
    let refused = enqueuer(&kv, &queue, &lister).enqueue(with_access.clone()).await.unwrap_err();
    assert!(refused.to_string().contains("source.access"), "{refused}");
    let sealed = enqueuer(&kv, &queue, &lister).with_secret_key(Some(key.clone()));
    assert!(sealed.enqueue(with_access).await.unwrap());
    finished(&kv, "j1").await;
    for (k, v) in kv.list("/batchmill/").await.unwrap() {
        assert!(!String::from_utf8_lossy(&v).contains("own-secret-123"), "{k} holds the secret");
    }
    // A restarted enqueuer resumes the job with its access opened again.
    kv.put(&progress_key("j1"), EnqueueProgress::default().encode().unwrap()).await.unwrap();
    let restarted = enqueuer(&kv, &queue, &lister).with_secret_key(Some(key));
    assert_eq!(restarted.resume_all().await.unwrap(), 1);
    finished(&kv, "j1").await;
    let secrets = lister.secrets.lock().unwrap().clone();
    assert_eq!(secrets, [Some("own-secret-123".to_owned()), Some("own-secret-123".to_owned())]);
}

/// Each message's batches, as (seq, first item, items) of each.
fn groups(messages: &[Batch]) -> Vec<Vec<(u64, u64, usize)>> {
    messages
        .iter()
        .map(|m| {
            let batches = batchmill_core::batch::unpack(m.clone());
            batches.iter().map(|b| (b.seq, b.first_item, b.items.len())).collect()
        })
        .collect()
}

#[tokio::test]
async fn small_batches_travel_in_aligned_groups_that_a_resume_and_a_retry_cut_the_same_way() {
    use batchmill_proto::enqueuer::v1::SeqRange;
    let (kv, queue) = (MemKv::default(), MemQueue::default());
    let lister = Lister { items: items(23), ..Default::default() };
    let grouped = |round, skip| EnqueueJobRequest { group: 4, round, skip, ..request("j1", 2) };
    assert!(enqueuer(&kv, &queue, &lister).enqueue(grouped(0, vec![])).await.unwrap());
    let done = finished(&kv, "j1").await;
    assert_eq!((done.next_seq, done.next_item), (12, 23));
    let messages = take_batches(&queue, "j1").await;
    let expected = vec![
        vec![(0, 0, 2), (1, 2, 2), (2, 4, 2), (3, 6, 2)],
        vec![(4, 8, 2), (5, 10, 2), (6, 12, 2), (7, 14, 2)],
        vec![(8, 16, 2), (9, 18, 2), (10, 20, 2), (11, 22, 1)],
    ];
    assert_eq!(groups(&messages), expected);
    let all: Vec<String> =
        messages.iter().flat_map(|m| batchmill_core::batch::unpack(m.clone())).flat_map(|b| b.items).collect();
    assert_eq!(all, items(23), "every item once, in order");

    // A checkpoint at a group's boundary, as a killed enqueuer left it: the
    // rest is cut the same way, so a group published twice has one message
    // id and one content (and JetStream's duplicate window drops it).
    let stale = EnqueueProgress { next_seq: 4, next_item: 8, ..Default::default() };
    kv.put(&progress_key("j1"), stale.encode().unwrap()).await.unwrap();
    let queue = MemQueue::default();
    let restarted = enqueuer(&kv, &queue, &lister);
    assert_eq!(restarted.resume_all().await.unwrap(), 1);
    finished(&kv, "j1").await;
    assert_eq!(groups(&take_batches(&queue, "j1").await), expected[1..].to_vec());

    // A retry with batches 1 and 6 final: groups end before them and start after.
    let skip = vec![SeqRange { start: 1, end: 2 }, SeqRange { start: 6, end: 7 }];
    assert!(enqueuer(&kv, &queue, &lister).enqueue(grouped(1, skip)).await.unwrap());
    finished(&kv, "j1").await;
    let retried = groups(&take_batches(&queue, "j1").await);
    let want = vec![
        vec![(0, 0, 2)],
        vec![(2, 4, 2), (3, 6, 2)],
        vec![(4, 8, 2), (5, 10, 2)],
        vec![(7, 14, 2)],
        vec![(8, 16, 2), (9, 18, 2), (10, 20, 2), (11, 22, 1)],
    ];
    assert_eq!(retried, want);
}
