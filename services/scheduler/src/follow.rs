//! What the leader follows in etcd, by watch: the enqueuer's progress of
//! each job, and the claims of completion hooks. Both answers travel
//! through etcd rather than over the channel that asked, because etcd must
//! hold them anyway: the enqueuer's checkpoint is how it resumes after a
//! restart, and a hook's claim is how it runs once. A watch starts with the
//! current values, so a new leader (or a watch re-made after etcd came
//! back) misses nothing.

use std::sync::Arc;
use std::time::Duration;

use batchmill_coord::{Kv, KvEvent};
use batchmill_core::JobId;
use batchmill_core::enqueue::{EnqueueProgress, job_of_progress_key};
use batchmill_core::finalize::{FINALIZERS_PREFIX, Finalizing};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::actor::Scheduler;

/// Follows enqueue progress and hook claims until `stop`.
pub fn follow_etcd(kv: Arc<dyn Kv>, scheduler: Scheduler, stop: CancellationToken) {
    let progress = scheduler.clone();
    watch_prefix(kv.clone(), batchmill_core::enqueue::PREFIX, stop.clone(), move |event| {
        if let KvEvent::Put { key, value } = event {
            let Some(job_id) = job_of_progress_key(&key) else { return };
            match EnqueueProgress::decode(&value) {
                Ok(p) => progress.enqueue_progress(job_id.to_owned(), p),
                Err(e) => warn!(%key, error = %e, "unreadable enqueue progress"),
            }
        }
    });
    watch_prefix(kv, FINALIZERS_PREFIX, stop, move |event| {
        let (key, claim) = match event {
            KvEvent::Put { key, value } => match Finalizing::decode(&value) {
                Ok(claim) => (key, Some(claim)),
                Err(e) => {
                    warn!(%key, error = %e, "unreadable finalizer claim");
                    return;
                }
            },
            KvEvent::Delete { key } => (key, None),
        };
        if let Ok(id) = JobId::parse("job_id", key.trim_start_matches(FINALIZERS_PREFIX)) {
            scheduler.claim_changed(id, claim);
        }
    });
}

/// Calls `event` for every value under `prefix` and every later change,
/// until `stop`; watches again after a watch breaks (etcd restarted, say).
fn watch_prefix(
    kv: Arc<dyn Kv>,
    prefix: &'static str,
    stop: CancellationToken,
    event: impl Fn(KvEvent) + Send + 'static,
) {
    tokio::spawn(async move {
        while !stop.is_cancelled() {
            match kv.watch(prefix).await {
                Ok(mut events) => loop {
                    let next = tokio::select! {
                        () = stop.cancelled() => return,
                        next = events.next() => next,
                    };
                    match next {
                        Some(Ok(e)) => event(e),
                        Some(Err(e)) => {
                            warn!(prefix, error = %e, "watch broke");
                            break;
                        }
                        None => break,
                    }
                },
                Err(e) => warn!(prefix, error = %e, "watch failed"),
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    });
}
