//! The adapters against the real servers: each runs the conformance suite
//! its in-memory fake passes (etcd, JetStream, S3), plus what only the real
//! server has: leases and elections over time and through an etcd outage,
//! paging through a long JetStream subject, and SigV4 checked by S3.

use std::time::Duration;

use batchmill_blob::{Blob, ObjectStore, S3Config};
use batchmill_coord::{Etcd, Kv};
use batchmill_queue::{JetStreamQueue, Records};
use batchmill_tests::{ACCESS_KEY, BUCKET, Options, Sandbox};
use bytes::Bytes;

async fn deps() -> anyhow::Result<Sandbox> {
    Sandbox::start(Options { services: false, workers: 0, ..Options::default() }).await
}

#[tokio::test]
async fn etcd_passes_the_kv_conformance_suite_and_keeps_claims_and_elections() -> anyhow::Result<()> {
    let sandbox = deps().await?;
    let etcd = Etcd::connect(std::slice::from_ref(&sandbox.etcd_url), Duration::from_secs(10)).await?;
    batchmill_coord::conformance::run(&etcd, "/batchmill/conformance").await;

    // A claim lives while its lease is kept alive, and only one can hold it.
    let claim = etcd.claim("/batchmill/claims/c1".into(), b"x".to_vec(), Duration::from_secs(2)).await?;
    let claim = claim.expect("the first claim wins");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(etcd.get("/batchmill/claims/c1").await?, Some(b"x".to_vec()), "kept alive past its TTL");
    assert!(etcd.claim("/batchmill/claims/c1".into(), b"y".to_vec(), Duration::from_secs(2)).await?.is_none());
    claim.finish(b"done".to_vec()).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(etcd.get("/batchmill/claims/c1").await?, Some(b"done".to_vec()), "the outcome outlives the lease");

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

/// A leader's fenced writes pass the same suite while it leads, and fail
/// (writing nothing) once its lease is gone, though the leader has not
/// noticed: a scheduler paused past its lease can then confirm nothing.
#[tokio::test]
async fn fenced_writes_pass_the_kv_suite_and_stop_with_the_leadership() -> anyhow::Result<()> {
    let sandbox = deps().await?;
    let etcd = Etcd::connect(std::slice::from_ref(&sandbox.etcd_url), Duration::from_secs(10)).await?;
    let leadership = etcd.campaign("/batchmill/fenced-election", "http://a", Duration::from_secs(5)).await?;
    let fenced = batchmill_coord::FencedKv::new(etcd.clone(), &leadership);
    batchmill_coord::conformance::run(&fenced, "/batchmill/fenced-conformance").await;
    fenced.put("/batchmill/fenced/k", b"1".to_vec()).await?;
    // The lease ends under the leader's feet (as its TTL would lapse while
    // the process is paused).
    etcd.revoke(leadership.lease()).await?;
    let refused = fenced.put_all(vec![("/batchmill/fenced/k".into(), b"2".to_vec())]).await;
    assert!(matches!(refused, Err(batchmill_coord::CoordError::LeaseLost { .. })), "{refused:?}");
    assert!(fenced.delete("/batchmill/fenced/k").await.is_err());
    assert_eq!(etcd.get("/batchmill/fenced/k").await?, Some(b"1".to_vec()), "nothing written after the lease");
    Ok(())
}

/// A leader keeps its leadership through an etcd outage shorter than its
/// lease's TTL: renewals that fail are retried, not taken for a lost lease
/// (a scheduler once stepped down, and exited, after one broken renewal).
#[tokio::test]
async fn leadership_rides_out_an_etcd_outage_shorter_than_its_lease() -> anyhow::Result<()> {
    let mut sandbox = deps().await?;
    let etcd = Etcd::connect(std::slice::from_ref(&sandbox.etcd_url), Duration::from_secs(10)).await?;
    let leadership = etcd.campaign("/batchmill/outage-election", "http://a", Duration::from_secs(10)).await?;
    let lost = leadership.lost();
    sandbox.outage("etcd", Duration::from_secs(4)).await?;
    // Renewals resume once etcd is back.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert!(!lost.is_cancelled(), "leadership was given up during a 4 s outage of a 10 s lease");
    assert_eq!(etcd.leader("/batchmill/outage-election").await?, "http://a", "still the leader");
    leadership.resign().await;
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
async fn jetstream_passes_the_queue_conformance_suite() -> anyhow::Result<()> {
    let sandbox = deps().await?;
    let queue = JetStreamQueue::connect(&sandbox.nats_url, Duration::from_secs(10)).await?;
    batchmill_queue::conformance::run(&queue, "nats").await;
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

#[tokio::test]
async fn s3_passes_the_object_store_conformance_suite_and_checks_signatures() -> anyhow::Result<()> {
    let sandbox = deps().await?;
    batchmill_blob::conformance::run(&sandbox.blob, "s3").await;

    let forged = Blob::new(&S3Config {
        endpoint: Some(sandbox.s3_url.clone()),
        region: "us-east-1".into(),
        credentials: Some((ACCESS_KEY.into(), "wrong-secret".into())),
    })
    .await;
    let err = forged.put(BUCKET, "forged", Bytes::from_static(b"x"), "text/plain").await.unwrap_err();
    assert!(err.to_string().contains("SignatureDoesNotMatch") || err.to_string().contains("403"), "{err}");
    assert!(!err.is_transient(), "refused credentials are no outage: {err}");
    Ok(())
}

#[tokio::test]
async fn postgres_passes_the_database_conformance_suite() -> anyhow::Result<()> {
    let sandbox = Sandbox::start(Options { services: false, workers: 0, postgres: true, ..Options::default() }).await?;
    let pg = sandbox.postgres.as_ref().expect("postgres started");
    pg.client()
        .await?
        .batch_execute(
            "CREATE TABLE batchmill_conformance (n int, word text);
             INSERT INTO batchmill_conformance SELECT n, 'w' || n FROM generate_series(1200, 1, -1) AS n;",
        )
        .await?;
    let query = batchmill_lister::sql::Query {
        url: pg.url(),
        username: batchmill_tests::postgres::USER.into(),
        password: pg.password.clone(),
        query: batchmill_lister::sql::conformance::QUERY.into(),
    };
    batchmill_lister::sql::conformance::run(&batchmill_lister::sql::Postgres, query).await;
    Ok(())
}
