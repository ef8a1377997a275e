//! Settling a batch that ran: its ending is made durable (the dead letter of
//! a batch that failed for good, the record of a final one, then the
//! outcome, confirmed by the scheduler once its ledger is written), and only
//! then is the message acked, nak'ed with backoff, or term'ed. Meanwhile the
//! message stays this worker's (progress is reported well within its ack
//! wait): slowness or an outage of NATS or of the scheduler is no reason to
//! run the batch again elsewhere and spend one of its deliveries.

use std::time::Duration;

use batchmill_core::BatchId;
use batchmill_core::batch::{self, Ending};
use batchmill_queue::Delivery;
use bytes::Bytes;
use prost::Message;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::runner::JobRun;

/// How long an outcome may wait for the scheduler's confirmation, across
/// sessions and leaders, before the batch is left to be redelivered.
const CONFIRM_PATIENCE: Duration = Duration::from_secs(600);
/// The longest wait between two tries of a call that failed for a reason
/// outside the batch.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);

/// A message that ran and whose batches' endings are still to be settled.
pub(crate) struct Ran {
    pub delivery: Box<dyn Delivery>,
    /// The endings to make durable: each batch's (of a group, those that
    /// are final, or the failures of one that runs again).
    pub endings: Vec<(BatchId, Ending)>,
    pub settle: Settle,
}

/// What becomes of a message once its endings are durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settle {
    /// Done: a batch of it succeeded.
    Ack,
    /// Delivered again after the backoff.
    Nak,
    /// Done: every batch of it failed for good.
    Term,
}

impl Ran {
    /// Makes the endings durable and, once the scheduler confirms them all,
    /// acks the message (nak with backoff for a retry, term when it all
    /// failed for good). Without a confirmation the message is redelivered
    /// and its batches counted once.
    pub async fn settle(self, run: &JobRun) {
        let Ran { delivery, endings, settle } = self;
        let stream_seq = delivery.stream_seq();
        if !keep_in_progress(delivery.as_ref(), run.ack_wait(), store(run, stream_seq, endings)).await {
            return;
        }
        let settled = match settle {
            Settle::Ack => delivery.ack().await,
            Settle::Term => delivery.term().await,
            Settle::Nak => delivery.nak(run.backoff().delay(delivery.attempt())).await,
        };
        if let Err(e) = settled {
            warn!(stream_seq, error = %e, "settling the message failed");
        }
    }
}

/// Stores the dead letters (of batches that failed for good), then the
/// records of the final batches, all in one message, then reports each
/// outcome; true once the scheduler confirms them all. `stream_seq` is where
/// the message is in the batch stream.
async fn store(run: &JobRun, stream_seq: u64, endings: Vec<(BatchId, Ending)>) -> bool {
    let transient = |e: &batchmill_queue::QueueError| e.is_transient();
    let dead = endings.iter().filter_map(|(id, e)| Some((id, e.dead_letter.as_ref()?, e.outcome.attempt)));
    let dead = futures::future::join_all(dead.map(|(id, dead, attempt)| async move {
        let body = Bytes::from(dead.encode_to_vec());
        let put = || run.queue.dead_letter(id, stream_seq, body.clone());
        match retry_in_place("dead-lettering", &run.revoked, put, transient).await {
            Some(Ok(())) => {
                info!(batch_id = %id, attempt, "batch dead-lettered");
                true
            }
            // Left alone: once its deliveries run out the scheduler
            // dead-letters it from the advisory.
            other => {
                warn!(batch_id = %id, error = ?other.and_then(Result::err), "dead-lettering failed; leaving the batch");
                false
            }
        }
    }));
    if !dead.await.into_iter().all(|ok| ok) {
        return false;
    }
    let (mut outcomes, mut records) = (Vec::with_capacity(endings.len()), Vec::new());
    for (id, Ending { outcome, record, .. }) in endings {
        records.extend(record);
        outcomes.push((id, outcome));
    }
    // Stored before the outcomes, so that a job that has ended has every
    // batch's record.
    if let Some((id, _)) = outcomes.first()
        && !records.is_empty()
    {
        let body = Bytes::from(batch::records_message(records));
        let put = || run.queue.publish_record(id.job_id.as_str(), body.clone());
        if let Some(Err(e)) = retry_in_place("storing the batch records", &run.revoked, put, transient).await {
            warn!(batch_id = %id, error = %e, "storing the batch records failed");
        }
    }
    let reported = outcomes.into_iter().map(|(id, outcome)| async move {
        let confirmed = run.outbox.report(outcome, CONFIRM_PATIENCE).await;
        if !confirmed {
            warn!(batch_id = %id, "outcome not confirmed; leaving the batch for redelivery");
        }
        confirmed
    });
    futures::future::join_all(reported).await.into_iter().all(|ok| ok)
}

/// Calls `call` until it succeeds or fails for good (`transient` says which
/// errors are worth waiting out), with exponential backoff and jitter; None
/// if `give_up` is cancelled first.
pub(crate) async fn retry_in_place<T, E, F, Fut>(
    what: &str,
    give_up: &CancellationToken,
    call: F,
    transient: impl Fn(&E) -> bool,
) -> Option<Result<T, E>>
where
    E: std::fmt::Display,
    F: Fn() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut delay = Duration::from_millis(100);
    for tries in 1u32.. {
        match call().await {
            Err(e) if transient(&e) => {
                warn!(what, tries, error = %e, "unreachable; retrying in place");
                // Up to a quarter more, so workers do not retry in step.
                let jitter = delay.mul_f64(fastrand::f64() / 4.0);
                tokio::select! {
                    () = give_up.cancelled() => return None,
                    () = tokio::time::sleep(delay + jitter) => {}
                }
                delay = (delay * 2).min(MAX_RETRY_DELAY);
            }
            done => return Some(done),
        }
    }
    None
}

/// Runs `work` while keeping `delivery` ours: progress is reported well
/// within `ack_wait` so the message is not redelivered to another worker.
pub(crate) async fn keep_in_progress<T>(
    delivery: &dyn Delivery,
    ack_wait: Duration,
    work: impl Future<Output = T>,
) -> T {
    tokio::pin!(work);
    // The first tick a period from now: an interval's immediate first tick,
    // awaited, waits for the timer's next turn (up to a millisecond), which
    // every batch paid, one after another, in a group of small batches.
    let period = (ack_wait / 3).max(Duration::from_millis(100));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    loop {
        tokio::select! {
            r = &mut work => break r,
            _ = tick.tick() => { let _ = delivery.in_progress().await; }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn transient_failures_are_retried_until_a_result_or_giving_up() {
        let tries = std::sync::atomic::AtomicU32::new(0);
        let give_up = CancellationToken::new();
        let call = || {
            let n = tries.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move { if n < 5 { Err(format!("down ({n})")) } else { Ok(n) } }
        };
        assert_eq!(retry_in_place("x", &give_up, call, |_| true).await, Some(Ok(5)));
        let permanent = || async { Err::<u32, _>("refused".to_owned()) };
        assert_eq!(retry_in_place("x", &give_up, permanent, |_| false).await, Some(Err("refused".into())));
        give_up.cancel();
        let down = || async { Err::<u32, _>("down".to_owned()) };
        assert_eq!(retry_in_place("x", &give_up, down, |_| true).await, None);
    }
}
