//! The conformance suite every [`Queue`] passes: the in-memory one in this
//! crate's tests, JetStream in the cluster tests (`tests/tests/adapters.rs`).
//! `prefix` (lowercase letters and digits) keeps runs against a shared
//! server apart.

use std::time::Duration;

use batchmill_core::{BatchId, JobId};
use bytes::Bytes;
use futures::StreamExt;

use crate::{DeliveryPolicy, Queue, QueueError, TraceHeaders};

/// Runs every check against `queue`; panics naming the first that fails.
pub async fn run(queue: &dyn Queue, prefix: &str) {
    dedups_and_delivers_in_order(queue, prefix).await;
    redelivers_what_is_nakd_or_left(queue, prefix).await;
    takes_many_at_once_each_held_once(queue, prefix).await;
    advises_of_exhausted_batches(queue, prefix).await;
    closing_withdraws_batches(queue, prefix).await;
    keeps_dead_letters_records_and_logs_per_job(queue, prefix).await;
    keeps_event_logs_per_job_readable_from_any_position(queue, prefix).await;
}

fn batch(job: &str, seq: u64) -> BatchId {
    BatchId::new(JobId::parse("job_id", job).expect("a conformance job id"), seq)
}

fn policy(ack_wait_ms: u64, max_deliver: u32) -> DeliveryPolicy {
    DeliveryPolicy { ack_wait: Duration::from_millis(ack_wait_ms), max_deliver }
}

async fn dedups_and_delivers_in_order(queue: &dyn Queue, prefix: &str) {
    let job = format!("{prefix}order");
    queue.open_job(&job, policy(30_000, 3)).await.expect("open");
    queue.open_job(&job, policy(30_000, 3)).await.expect("open is idempotent");
    let trace: TraceHeaders =
        [("traceparent".to_owned(), "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned())].into();
    for seq in [0, 1, 1, 0, 2] {
        queue.publish_batch(&batch(&job, seq), 0, Bytes::from(format!("batch {seq}")), &trace).await.expect("publish");
    }
    let consumer = queue.job_consumer(&job).await.expect("consumer");
    let mut got = Vec::new();
    while let Some(delivery) = consumer.next(Duration::from_millis(500)).await.expect("next") {
        assert_eq!(delivery.attempt(), 1);
        assert_eq!(delivery.trace(), trace, "trace headers travel with the batch");
        got.push(String::from_utf8(delivery.payload().to_vec()).expect("utf-8"));
        delivery.ack().await.expect("ack");
    }
    assert_eq!(got, ["batch 0", "batch 1", "batch 2"], "republished batches are dropped");
    // A retried job publishes its batches again in a new round: kept once each.
    for seq in [1, 1] {
        queue.publish_batch(&batch(&job, seq), 1, Bytes::from("retried 1"), &trace).await.expect("publish");
    }
    let retried = consumer.next(Duration::from_millis(500)).await.expect("next").expect("a new round is kept");
    assert_eq!(retried.payload().as_ref(), b"retried 1");
    retried.ack().await.expect("ack");
    assert!(consumer.next(Duration::from_millis(300)).await.expect("next").is_none(), "dropped within the round");
}

async fn redelivers_what_is_nakd_or_left(queue: &dyn Queue, prefix: &str) {
    let job = format!("{prefix}redeliver");
    queue.open_job(&job, policy(1_000, 3)).await.expect("open");
    queue
        .publish_batch(&batch(&job, 0), 0, Bytes::from_static(b"nak me"), &TraceHeaders::new())
        .await
        .expect("publish");
    let consumer = queue.job_consumer(&job).await.expect("consumer");
    let first = consumer.next(Duration::from_secs(2)).await.expect("next").expect("a delivery");
    first.nak(Duration::from_millis(10)).await.expect("nak");
    let again = consumer.next(Duration::from_secs(2)).await.expect("next").expect("a nak'ed batch comes back");
    assert_eq!((again.attempt(), again.stream_seq()), (2, first.stream_seq()));
    again.term().await.expect("term");
    assert!(consumer.next(Duration::from_millis(300)).await.expect("next").is_none(), "a term'ed batch stays away");
    assert_eq!(queue.read(first.stream_seq()).await.expect("read"), None, "a term'ed batch leaves the stream");

    queue.publish_batch(&batch(&job, 1), 0, Bytes::from_static(b"left"), &TraceHeaders::new()).await.expect("publish");
    let held = consumer.next(Duration::from_secs(2)).await.expect("next").expect("a delivery");
    assert!(consumer.next(Duration::from_millis(200)).await.expect("next").is_none(), "held: not given twice");
    let back = consumer.next(Duration::from_secs(5)).await.expect("next").expect("redelivered after the ack wait");
    assert_eq!((back.attempt(), back.payload().as_ref()), (2, &b"left"[..]));
    drop(held);
    back.ack().await.expect("ack");
}

async fn takes_many_at_once_each_held_once(queue: &dyn Queue, prefix: &str) {
    let job = format!("{prefix}many");
    queue.open_job(&job, policy(30_000, 3)).await.expect("open");
    let consumer = queue.job_consumer(&job).await.expect("consumer");
    assert!(consumer.next_many(4, Duration::from_millis(200)).await.expect("next_many").is_empty(), "none yet");
    for seq in 0..6 {
        let body = Bytes::from(format!("batch {seq}"));
        queue.publish_batch(&batch(&job, seq), 0, body, &TraceHeaders::new()).await.expect("publish");
    }
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while seen.len() < 6 && tokio::time::Instant::now() < deadline {
        let taken = consumer.next_many(4, Duration::from_secs(1)).await.expect("next_many");
        assert!(taken.len() <= 4, "at most as many as asked: {}", taken.len());
        for delivery in taken {
            seen.push(String::from_utf8_lossy(delivery.payload()).into_owned());
            delivery.ack().await.expect("ack");
        }
    }
    let expected: Vec<String> = (0..6).map(|seq| format!("batch {seq}")).collect();
    assert_eq!(seen, expected, "every batch once, in order");
    assert!(consumer.next(Duration::from_millis(200)).await.expect("next").is_none(), "acked: gone");
    queue.close_job(&job).await.expect("close");
}

async fn advises_of_exhausted_batches(queue: &dyn Queue, prefix: &str) {
    let job = format!("{prefix}exhaust");
    queue.open_job(&job, policy(1_000, 1)).await.expect("open");
    queue.publish_batch(&batch(&job, 0), 0, Bytes::from_static(b"lost"), &TraceHeaders::new()).await.expect("publish");
    let consumer = queue.job_consumer(&job).await.expect("consumer");
    // Taken and never settled, as by a worker killed on its last delivery.
    let held = consumer.next(Duration::from_secs(2)).await.expect("next").expect("a delivery");
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert!(consumer.next(Duration::from_millis(500)).await.expect("next").is_none(), "no delivery after the last");
    let mut advisories = queue.exhausted().await.expect("advisories");
    let advisory = loop {
        let next = tokio::time::timeout(Duration::from_secs(15), advisories.next()).await;
        let advisory = next.expect("an advisory within 15 s").expect("the stream goes on").expect("advisory");
        if advisory.stream_seq == held.stream_seq() {
            break advisory;
        }
    };
    assert_eq!(advisory.deliveries, 1);
    assert_eq!(queue.read(advisory.stream_seq).await.expect("read"), Some(Bytes::from_static(b"lost")));
    queue.remove(advisory.stream_seq).await.expect("remove");
    assert_eq!(queue.read(advisory.stream_seq).await.expect("read"), None);
    advisory.handled().await.expect("handled");
}

async fn closing_withdraws_batches(queue: &dyn Queue, prefix: &str) {
    let job = format!("{prefix}close");
    queue.open_job(&job, policy(30_000, 3)).await.expect("open");
    let consumer = queue.job_consumer(&job).await.expect("consumer");
    for seq in 0..5 {
        queue
            .publish_batch(&batch(&job, seq), 0, Bytes::from_static(b"left"), &TraceHeaders::new())
            .await
            .expect("pub");
    }
    assert_eq!(queue.close_job(&job).await.expect("close"), 5, "close withdraws the remaining batches");
    assert!(matches!(queue.job_consumer(&job).await, Err(QueueError::NoConsumer { .. })), "the consumer is gone");
    match consumer.next(Duration::from_millis(500)).await {
        Err(QueueError::ConsumerDeleted { job_id }) => assert_eq!(job_id, job),
        other => panic!("a closed job's consumer says it was deleted, got {:?}", other.map(|d| d.is_some())),
    }
    assert_eq!(queue.close_job(&job).await.expect("close again"), 0, "closing is idempotent");
}

async fn keeps_dead_letters_records_and_logs_per_job(queue: &dyn Queue, prefix: &str) {
    let (a, b) = (format!("{prefix}deada"), format!("{prefix}deadb"));
    for (job, seq, body) in [(&a, 1, "a1"), (&b, 1, "b1"), (&a, 2, "a2"), (&a, 2, "a2")] {
        queue.dead_letter(&batch(job, seq), 7 + seq, Bytes::from(body)).await.expect("dead letter");
    }
    let letters = queue.dead_letters(&a, 0, 10).await.expect("dead letters");
    let bodies: Vec<&[u8]> = letters.iter().map(|l| l.payload.as_ref()).collect();
    assert_eq!(bodies, [&b"a1"[..], b"a2"], "per job, and one stored twice under the same id is kept once");
    assert_eq!(queue.dead_letters(&a, letters[0].stream_seq + 1, 10).await.expect("page").len(), 1, "from a position");
    queue.remove_dead_letter(letters[0].stream_seq).await.expect("remove");
    assert_eq!(queue.dead_letters(&a, 0, 10).await.expect("dead letters").len(), 1);

    let job = format!("{prefix}records");
    for i in 0..25u32 {
        queue.publish_record(&job, Bytes::from(i.to_string())).await.expect("record");
        if i % 10 == 0 {
            queue.publish_record(&b, Bytes::from("other")).await.expect("record");
        }
    }
    let (mut read, mut from, mut pages) = (Vec::new(), 0, 0);
    loop {
        let page = queue.records(&job, from, 10).await.expect("records");
        let Some(last) = page.last() else { break };
        from = last.stream_seq + 1;
        pages += 1;
        read.extend(page.into_iter().map(|s| String::from_utf8_lossy(&s.payload).into_owned()));
    }
    assert_eq!(read, (0..25).map(|i| i.to_string()).collect::<Vec<_>>(), "each record once, in order");
    assert_eq!(pages, 3);

    let job = format!("{prefix}logs");
    assert!(queue.logs(&job, false).await.expect("logs").next().await.is_none(), "no lines: the stream ends");
    for line in ["one", "two", "three"] {
        queue.publish_log(&job, Bytes::from(line)).await.expect("log");
    }
    queue.publish_log(&b, Bytes::from("other")).await.expect("log");
    // Log lines are sent without waiting for them to be stored.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let lines = loop {
        let lines: Vec<Bytes> = queue.logs(&job, false).await.expect("logs").map(|l| l.expect("line")).collect().await;
        if lines.len() == 3 || tokio::time::Instant::now() > deadline {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(lines, ["one", "two", "three"]);
    let mut follow = queue.logs(&job, true).await.expect("follow");
    for want in ["one", "two", "three"] {
        let line = tokio::time::timeout(Duration::from_secs(5), follow.next()).await.expect("in time");
        assert_eq!(line.expect("a line").expect("line"), want);
    }
    queue.publish_log(&job, Bytes::from("four")).await.expect("log");
    let line = tokio::time::timeout(Duration::from_secs(5), follow.next()).await.expect("a later line in time");
    assert_eq!(line.expect("a line").expect("line"), "four");
}

async fn keeps_event_logs_per_job_readable_from_any_position(queue: &dyn Queue, prefix: &str) {
    let (job, other) = (format!("{prefix}events"), format!("{prefix}eventsother"));
    let mut positions = Vec::new();
    for i in 0..12u32 {
        positions.push(queue.publish_event(&job, Bytes::from(format!("e{i}"))).await.expect("event"));
        if i % 4 == 0 {
            queue.publish_event(&other, Bytes::from("other")).await.expect("event");
        }
    }
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "positions grow: {positions:?}");
    let all = queue.events(&job, 0, 100).await.expect("events");
    let seqs: Vec<u64> = all.iter().map(|s| s.stream_seq).collect();
    assert_eq!(seqs, positions, "each event once, at the position its publish returned");
    let after = queue.events(&job, positions[4] + 1, 3).await.expect("a page");
    let bodies: Vec<&[u8]> = after.iter().map(|s| s.payload.as_ref()).collect();
    assert_eq!(bodies, [&b"e5"[..], b"e6", b"e7"], "a page from just after a position");

    let mut follow = queue.follow_events(&job, positions[9] + 1).await.expect("follow");
    for want in ["e10", "e11"] {
        let event = tokio::time::timeout(Duration::from_secs(5), follow.next()).await.expect("in time");
        assert_eq!(event.expect("an event").expect("event").payload, want);
    }
    let later = queue.publish_event(&job, Bytes::from("e12")).await.expect("event");
    queue.publish_event(&other, Bytes::from("other")).await.expect("event");
    let event = tokio::time::timeout(Duration::from_secs(5), follow.next()).await.expect("a later event in time");
    let event = event.expect("an event").expect("event");
    assert_eq!((event.stream_seq, event.payload.as_ref()), (later, &b"e12"[..]));
}
