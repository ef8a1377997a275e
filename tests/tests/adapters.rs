//! The adapters against the real servers: etcd (the same conformance suite
//! the in-memory Kv passes, leases, elections), JetStream (dedup by
//! Nats-Msg-Id, delivery, purge, dead letters, log lines) and S3 (pagination, SigV4 checked).

use std::collections::HashMap;
use std::time::Duration;

use batchmill_blob::{Blob, S3Config};
use batchmill_coord::{Etcd, Kv};
use batchmill_queue::{DeliveryPolicy, JetStreamQueue};
use batchmill_tests::{ACCESS_KEY, BUCKET, Options, Sandbox};
use bytes::Bytes;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

async fn deps() -> anyhow::Result<Sandbox> {
    Sandbox::start(Options { services: false, workers: 0, ..Options::default() }).await
}

#[tokio::test]
async fn etcd_kv_leases_and_elections() -> anyhow::Result<()> {
    let sandbox = deps().await?;
    let etcd = Etcd::connect(std::slice::from_ref(&sandbox.etcd_url), Duration::from_secs(10)).await?;
    batchmill_coord::conformance(&etcd, "/batchmill/conformance").await;

    // A registration lives while kept alive and goes at once when revoked.
    let stop = CancellationToken::new();
    let keeper =
        etcd.register("/batchmill/workers/w1".into(), b"x".to_vec(), Duration::from_secs(2), stop.clone()).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(etcd.get("/batchmill/workers/w1").await?, Some(b"x".to_vec()), "kept alive past its TTL");
    stop.cancel();
    keeper.await?;
    assert_eq!(etcd.get("/batchmill/workers/w1").await?, None);

    // One leader at a time; resigning hands over.
    let first = etcd.campaign("/batchmill/test-election", "http://a", Duration::from_secs(5)).await?;
    assert_eq!(etcd.leader("/batchmill/test-election").await?, "http://a");
    let second = {
        let etcd = etcd.clone();
        tokio::spawn(async move { etcd.campaign("/batchmill/test-election", "http://b", Duration::from_secs(5)).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!second.is_finished(), "a second campaign waits while the first leads");
    first.resign().await;
    let second = tokio::time::timeout(Duration::from_secs(10), second).await???;
    assert_eq!(etcd.leader("/batchmill/test-election").await?, "http://b");
    second.resign().await;
    Ok(())
}

/// Candidates wait longer than a request to etcd may last (10 s) without
/// losing their place, and lead in the order they campaigned, each one
/// findable by `leader` once it leads. (etcd's own Campaign call deleted the
/// key of a candidate whose request timed out: it then led unfindable.)
#[tokio::test]
async fn etcd_candidates_keep_their_place_through_long_waits() -> anyhow::Result<()> {
    let sandbox = deps().await?;
    let etcd = Etcd::connect(std::slice::from_ref(&sandbox.etcd_url), Duration::from_secs(10)).await?;
    let election = "/batchmill/long-election";
    let ttl = Duration::from_secs(5);
    let first = etcd.campaign(election, "http://a", ttl).await?;
    let candidate = |value: &'static str| {
        let etcd = etcd.clone();
        tokio::spawn(async move { etcd.campaign(election, value, ttl).await })
    };
    let second = candidate("http://b");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let third = candidate("http://c");
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert!(!second.is_finished() && !third.is_finished(), "both wait while the first leads");
    assert_eq!(etcd.leader(election).await?, "http://a");

    first.resign().await;
    let second = tokio::time::timeout(Duration::from_secs(10), second).await???;
    assert_eq!(etcd.leader(election).await?, "http://b", "the leader is findable");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!third.is_finished(), "the third still waits its turn");

    second.resign().await;
    let third = tokio::time::timeout(Duration::from_secs(10), third).await???;
    assert_eq!(etcd.leader(election).await?, "http://c");
    third.resign().await;
    assert!(etcd.leader(election).await.is_err(), "no leader once the last resigns");
    Ok(())
}

#[tokio::test]
async fn jetstream_dedups_delivers_and_purges() -> anyhow::Result<()> {
    let sandbox = deps().await?;
    let queue = JetStreamQueue::connect(&sandbox.nats_url, Duration::from_secs(10)).await?;
    let policy = DeliveryPolicy { ack_wait: Duration::from_secs(30), max_deliver: 2 };
    queue.open_job("job1", policy).await?;
    queue.open_job("job1", policy).await?; // idempotent
    let trace: HashMap<String, String> =
        [("traceparent".to_owned(), "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned())].into();
    for seq in [0, 1, 1, 0, 2] {
        queue.publish_batch("job1", seq, Bytes::from(format!("batch {seq}")), &trace).await?;
    }
    let consumer = queue.job_consumer("job1").await?;
    let mut got = Vec::new();
    while let Some(delivery) = consumer.next(Duration::from_millis(500)).await? {
        assert_eq!(delivery.attempt(), 1);
        assert_eq!(delivery.trace(), trace, "trace headers travel with the batch");
        got.push(String::from_utf8(delivery.payload().to_vec())?);
        delivery.ack().await?;
    }
    assert_eq!(got, vec!["batch 0", "batch 1", "batch 2"], "republished batches are dropped");

    // A nak'ed batch comes back as the second delivery.
    queue.publish_batch("job1", 3, Bytes::from_static(b"batch 3"), &HashMap::new()).await?;
    let first = consumer.next(Duration::from_secs(2)).await?.expect("delivery");
    first.nak(Duration::from_millis(10)).await?;
    let again = consumer.next(Duration::from_secs(2)).await?.expect("redelivery");
    assert_eq!(again.attempt(), 2);
    again.term().await?;

    for seq in 10..15 {
        queue.publish_batch("job1", seq, Bytes::from_static(b"left"), &HashMap::new()).await?;
    }
    assert_eq!(queue.close_job("job1").await?, 5, "close withdraws the remaining batches");
    assert!(queue.job_consumer("job1").await.is_err(), "the consumer is gone");
    Ok(())
}

#[tokio::test]
async fn s3_paginates_and_checks_signatures() -> anyhow::Result<()> {
    let sandbox = deps().await?;
    let blob = &sandbox.blob;
    for i in 0..1_005 {
        blob.put(BUCKET, &format!("many/{i:05}"), Bytes::from(i.to_string()), "text/plain").await?;
    }
    let keys = blob.list(BUCKET, "many/").await?;
    assert_eq!(keys.len(), 1_005, "listing follows pagination past 1,000 keys");
    assert_eq!(blob.get(BUCKET, "many/01004").await?, Bytes::from("1004"));
    assert!(matches!(blob.get(BUCKET, "many/nope").await, Err(batchmill_blob::BlobError::NotFound { .. })));

    let forged = Blob::new(&S3Config {
        endpoint: Some(sandbox.s3_url.clone()),
        region: "us-east-1".into(),
        credentials: Some((ACCESS_KEY.into(), "wrong-secret".into())),
    })
    .await;
    let err = forged.put(BUCKET, "forged", Bytes::from_static(b"x"), "text/plain").await.unwrap_err();
    assert!(err.to_string().contains("SignatureDoesNotMatch") || err.to_string().contains("403"), "{err}");
    Ok(())
}

#[tokio::test]
async fn jetstream_keeps_the_advisory_of_a_batch_whose_deliveries_ran_out() -> anyhow::Result<()> {
    use futures::StreamExt;
    let sandbox = deps().await?;
    let queue = JetStreamQueue::connect(&sandbox.nats_url, Duration::from_secs(10)).await?;
    queue.open_job("job2", DeliveryPolicy { ack_wait: Duration::from_secs(1), max_deliver: 1 }).await?;
    queue.publish_batch("job2", 0, Bytes::from_static(b"lost"), &HashMap::new()).await?;
    let consumer = queue.job_consumer("job2").await?;
    // Taken and never settled, as by a worker killed on its last delivery.
    let _held = consumer.next(Duration::from_secs(2)).await?.expect("delivery");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(consumer.next(Duration::from_secs(1)).await?.is_none(), "no delivery after the last one");
    // Read only now: the advisory was kept while nobody listened.
    let mut exhausted = Box::pin(queue.exhausted().await?);
    let advisory = tokio::time::timeout(Duration::from_secs(15), exhausted.next()).await?.expect("advisory")?;
    assert_eq!(advisory.deliveries, 1);
    assert_eq!(queue.read(advisory.stream_seq).await?, Some(Bytes::from_static(b"lost")));
    queue.remove(advisory.stream_seq).await?;
    assert_eq!(queue.read(advisory.stream_seq).await?, None);
    advisory.handled().await?;
    Ok(())
}

#[tokio::test]
async fn jetstream_keeps_dead_letters_and_log_lines_per_job() -> anyhow::Result<()> {
    let sandbox = deps().await?;
    let queue = JetStreamQueue::connect(&sandbox.nats_url, Duration::from_secs(10)).await?;
    for (job, body) in [("a", "a1"), ("b", "b1"), ("a", "a2"), ("a", "a2")] {
        queue.dead_letter(job, &format!("{job}-{body}"), Bytes::from(body)).await?;
    }
    let letters = queue.dead_letters("a", 0, 10).await?;
    assert_eq!(
        letters.iter().map(|l| l.payload.clone()).collect::<Vec<_>>(),
        ["a1", "a2"],
        "one stored twice under the same id is kept once"
    );
    assert_eq!(queue.dead_letters("a", letters[0].stream_seq + 1, 10).await?.len(), 1, "from a position");
    queue.remove_dead_letter(letters[0].stream_seq).await?;
    assert_eq!(queue.dead_letters("a", 0, 10).await?.len(), 1);

    assert!(queue.logs("a", false).await?.next().await.is_none(), "no lines: the stream ends at once");
    for line in ["one", "two", "three"] {
        queue.publish_log("a", Bytes::from(line)).await?;
    }
    queue.publish_log("b", Bytes::from("other")).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let lines = loop {
        let lines: Vec<Bytes> = queue.logs("a", false).await?.map(|l| l.unwrap()).collect().await;
        if lines.len() == 3 || tokio::time::Instant::now() > deadline {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(lines, ["one", "two", "three"]);
    let mut follow = queue.logs("a", true).await?;
    for want in ["one", "two", "three"] {
        assert_eq!(tokio::time::timeout(Duration::from_secs(5), follow.next()).await?.unwrap()?, want);
    }
    queue.publish_log("a", Bytes::from("four")).await?;
    assert_eq!(tokio::time::timeout(Duration::from_secs(5), follow.next()).await?.unwrap()?, "four");
    Ok(())
}

#[tokio::test]
async fn jetstream_pages_through_a_long_subject_exactly() -> anyhow::Result<()> {
    let sandbox = deps().await?;
    let queue = JetStreamQueue::connect(&sandbox.nats_url, Duration::from_secs(10)).await?;
    for i in 0..2_500u32 {
        queue.publish_record("long", Bytes::from(i.to_string())).await?;
        if i % 100 == 0 {
            queue.publish_record("other", Bytes::from("x")).await?;
        }
    }
    let started = std::time::Instant::now();
    let (mut read, mut from, mut pages) = (Vec::new(), 0, 0);
    loop {
        let page = queue.records("long", from, 1_000).await?;
        let Some(last) = page.last() else { break };
        from = last.stream_seq + 1;
        pages += 1;
        read.extend(page.into_iter().map(|s| String::from_utf8_lossy(&s.payload).into_owned()));
    }
    println!("read 2,500 records in {pages} pages in {:?}", started.elapsed());
    assert_eq!(read, (0..2_500).map(|i| i.to_string()).collect::<Vec<_>>(), "each once, in order");
    assert_eq!(pages, 3);
    Ok(())
}
