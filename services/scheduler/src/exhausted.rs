//! Batches whose deliveries ran out with no outcome (the worker holding the
//! last one was lost). JetStream keeps such a batch in the batch stream and
//! sends a max-deliveries advisory, which a stream keeps until it is
//! handled, so one sent while no scheduler leads is handled by the next
//! leader. Each batch is dead-lettered, given its batch record and counted
//! as failed (once that is durable), then removed from the batch stream, so
//! its job still ends.

use std::sync::Arc;
use std::time::Duration;

use batchmill_core::BatchId;
use batchmill_core::batch::{self, BatchEnd};
use batchmill_core::time::now_ms;
use batchmill_proto::queue::v1::Batch;
use batchmill_proto::scheduler::v1::BatchStatus;
use batchmill_queue::{Exhausted, Queue};
use futures::StreamExt;
use prost::Message;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::actor::Scheduler;

/// Dead-letters exhausted batches until `stop`.
pub fn follow_exhausted(queue: Arc<dyn Queue>, scheduler: Scheduler, stop: CancellationToken) {
    tokio::spawn(async move {
        while !stop.is_cancelled() {
            let mut advisories = match queue.exhausted().await {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "reading max-deliveries advisories failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            loop {
                let advisory = tokio::select! {
                    () = stop.cancelled() => return,
                    a = advisories.next() => a,
                };
                match advisory {
                    None => break,
                    Some(Err(e)) => warn!(error = %e, "advisory"),
                    Some(Ok(advisory)) => {
                        if dead_letter(queue.as_ref(), &scheduler, &advisory).await
                            && let Err(e) = advisory.handled().await
                        {
                            warn!(stream_seq = advisory.stream_seq, error = %e, "removing a handled advisory failed");
                        }
                    }
                }
            }
        }
    });
}

/// Dead-letters the batch of one advisory; true when the advisory is dealt
/// with, false to have it delivered again.
async fn dead_letter(queue: &dyn Queue, scheduler: &Scheduler, advisory: &Exhausted) -> bool {
    let stream_seq = advisory.stream_seq;
    if stream_seq == 0 {
        warn!("unreadable max-deliveries advisory dropped");
        return true;
    }
    let message = match queue.read(stream_seq).await {
        Ok(Some(bytes)) => match Batch::decode(bytes.as_ref()) {
            Ok(b) => b,
            Err(e) => {
                warn!(stream_seq, error = %e, "undecodable batch");
                return true;
            }
        },
        Ok(None) => return true, // settled or purged meanwhile
        Err(e) => {
            warn!(stream_seq, error = %e, "reading an exhausted batch failed");
            return false;
        }
    };
    // A group's batches all fail with it.
    for batch in batchmill_core::batch::unpack(message) {
        if !fail(queue, scheduler, &batch, stream_seq, advisory.deliveries).await {
            return false;
        }
    }
    if let Err(e) = queue.remove(stream_seq).await {
        warn!(stream_seq, error = %e, "removing an exhausted batch failed");
    }
    true
}

/// Dead-letters one exhausted batch, stores its record and counts it as
/// failed; false to try again.
async fn fail(queue: &dyn Queue, scheduler: &Scheduler, batch: &Batch, stream_seq: u64, deliveries: u64) -> bool {
    let Ok(id) = BatchId::of(batch) else {
        warn!(stream_seq, job_id = %batch.job_id, "exhausted batch of a malformed job id");
        return true;
    };
    let error =
        format!("delivered {deliveries} times; the worker running the last delivery was lost before it reported");
    let end = BatchEnd {
        id: &id,
        batch,
        status: BatchStatus::FailedFinal,
        attempt: deliveries,
        worker_id: "",
        duration_ms: 0,
        error,
        end_ms: now_ms(),
        group: None,
        failed_items: Vec::new(),
    }
    .build();
    if let Some(dead) = &end.dead_letter
        && let Err(e) = queue.dead_letter(&id, stream_seq, dead.encode_to_vec().into()).await
    {
        warn!(batch_id = %id, error = %e, "dead-lettering an exhausted batch failed");
        return false;
    }
    if let Some(record) = end.record
        && let Err(e) = queue.publish_record(id.job_id.as_str(), batch::records_message(vec![record]).into()).await
    {
        warn!(batch_id = %id, error = %e, "storing an exhausted batch's record failed");
        return false;
    }
    let items = batch.items.len() as u64;
    scheduler.exhausted(batch.job_id.clone(), batch.seq, items, deliveries).await.is_ok()
}
