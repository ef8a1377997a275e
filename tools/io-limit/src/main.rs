//! `batchmill-io-limit`: the I/O a batch cannot do without, and nothing
//! else, as the ceiling the cluster's throughput is measured against. It
//! publishes `--batches` batches of `--batch-size` items to the batch stream
//! (as the enqueuer does), and `--consumers` tasks pull them (many per trip),
//! PUT one result object per batch of the size `echo` writes, and ack. No
//! scheduler, no ledger, no outcome. Prints one JSON line:
//! `{"batches":…,"batch_size":…,"consumers":…,"seconds":…,"batches_per_s":…,"items_per_s":…}`.
//!
//! Reads `BATCHMILL_NATS_URL`, `AWS_ENDPOINT_URL`, `AWS_REGION` and the
//! `AWS_*` credentials, as the local cluster's env file sets them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use batchmill_blob::{Blob, ObjectStore, S3Config};
use batchmill_core::{BatchId, JobId};
use batchmill_proto::queue::v1::Batch;
use batchmill_queue::{Batches, DeliveryPolicy, JetStreamQueue, TraceHeaders};
use bytes::Bytes;
use clap::Parser;
use futures::StreamExt;
use prost::Message;

#[derive(Parser)]
#[command(about = "The I/O ceiling of batchmill's throughput: publish, pull, one S3 PUT and ack per batch")]
struct Args {
    #[arg(long, default_value_t = 1_000)]
    batches: u64,
    #[arg(long, default_value_t = 100)]
    batch_size: u64,
    /// Tasks pulling and writing, as workers would.
    #[arg(long, default_value_t = 2)]
    consumers: usize,
    /// Batches one pull may take.
    #[arg(long, default_value_t = 16)]
    pull: usize,
    /// Publishes in flight.
    #[arg(long, default_value_t = 64)]
    publishing: usize,
    #[arg(long, env = "BATCHMILL_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    #[arg(long, env = "AWS_ENDPOINT_URL")]
    s3_endpoint: Option<String>,
    #[arg(long, env = "AWS_REGION", default_value = "us-east-1")]
    s3_region: String,
    /// Where the result objects go (removed after).
    #[arg(long, env = "BATCHMILL_BUCKET", default_value = "batchmill")]
    bucket: String,
}

/// The items of batch `seq`, as a bench job submits them: `{"n":i}`.
fn batch(job: &JobId, seq: u64, size: u64) -> Batch {
    let first = seq * size;
    Batch {
        job_id: job.to_string(),
        seq,
        first_item: first,
        items: (first..first + size).map(|n| format!("{{\"n\":{n}}}")).collect(),
        group: Vec::new(),
    }
}

/// What `echo` writes for a batch: a line per item.
fn result(batch: &Batch) -> Bytes {
    let mut body = String::new();
    for (i, item) in batch.items.iter().enumerate() {
        body.push_str(&format!("{{\"index\":{},\"result\":{item}}}\n", batch.first_item + i as u64));
    }
    Bytes::from(body)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let queue = Arc::new(JetStreamQueue::connect(&args.nats_url, Duration::from_secs(10)).await?);
    let store = Arc::new(Blob::new(&S3Config::new(args.s3_endpoint.clone(), args.s3_region.clone())).await);
    let job = JobId::generate(batchmill_core::time::now_ms());
    queue
        .open_job(job.as_str(), DeliveryPolicy { ack_wait: Duration::from_secs(60), max_deliver: 3 })
        .await
        .context("opening the job's consumer")?;
    let started = Instant::now();
    let publish = {
        let (queue, job) = (queue.clone(), job.clone());
        let (batches, size, publishing) = (args.batches, args.batch_size, args.publishing);
        tokio::spawn(async move {
            futures::stream::iter(0..batches)
                .map(|seq| {
                    let (queue, job) = (queue.clone(), job.clone());
                    async move {
                        let body = Bytes::from(batch(&job, seq, size).encode_to_vec());
                        queue.publish_batch(&BatchId::new(job, seq), 0, body, &TraceHeaders::new()).await
                    }
                })
                .buffer_unordered(publishing)
                .collect::<Vec<_>>()
                .await
                .into_iter()
                .collect::<Result<Vec<()>, _>>()
        })
    };
    let done = Arc::new(AtomicU64::new(0));
    let mut consumers = Vec::new();
    for _ in 0..args.consumers {
        let consumer = queue.job_consumer(job.as_str()).await?;
        let (store, done, bucket, job) = (store.clone(), done.clone(), args.bucket.clone(), job.clone());
        let (total, pull) = (args.batches, args.pull);
        consumers.push(tokio::spawn(async move {
            while done.load(Ordering::Relaxed) < total {
                for delivery in consumer.next_many(pull, Duration::from_millis(200)).await? {
                    let batch = Batch::decode(delivery.payload().as_ref())?;
                    let key = format!("bench-limit/{job}/{job}-{}.jsonl", batch.seq);
                    store.put(&bucket, &key, result(&batch), "application/x-ndjson").await?;
                    delivery.ack().await?;
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
            anyhow::Ok(())
        }));
    }
    publish.await?.context("publishing")?;
    for consumer in consumers {
        consumer.await??;
    }
    let seconds = started.elapsed().as_secs_f64();
    queue.close_job(job.as_str()).await?;
    let keys = store.list(&args.bucket, &format!("bench-limit/{job}/")).await?;
    for key in keys {
        store.delete(&args.bucket, &key).await?;
    }
    let record = serde_json::json!({
        "batches": args.batches,
        "batch_size": args.batch_size,
        "consumers": args.consumers,
        "seconds": seconds,
        "batches_per_s": args.batches as f64 / seconds,
        "items_per_s": (args.batches * args.batch_size) as f64 / seconds,
    });
    println!("{record}");
    Ok(())
}
