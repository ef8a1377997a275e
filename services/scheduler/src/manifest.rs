//! Manifests: `<output_uri>/<job_id>/manifest.json`, written when a job
//! ends, with its terminal state, counts, result objects and failed batches.
//! The write runs off the actor and is retried (S3 may be down for a while);
//! the job's record says once it is written, so a new leader writes the
//! manifests its predecessor could not.
//!
//! Until its manifest is written, a job that ended on its own is shown as
//! `COMPLETING` (see `JobRecord::shown_state`): a client that sees
//! `SUCCEEDED` can read the manifest at once. Each write, once done, wakes
//! the actor ([`Manifests::wake`]), so the terminal state shows without
//! waiting for a tick.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use batchmill_blob::ObjectStore;
use batchmill_core::batch::{group_uri, manifest_uri, result_uri};
use batchmill_core::{BatchId, JobId, S3Uri};
use bytes::Bytes;
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::jobs::JobEntry;
use crate::ledger::ResultObject;
use crate::state::State;

/// Manifest writes in flight, and the jobs whose write has finished (written,
/// or found impossible) since the actor last looked.
#[derive(Default)]
pub(crate) struct Manifests {
    writing: JoinSet<()>,
    finished: Arc<Mutex<Vec<JobId>>>,
    wake: Arc<tokio::sync::Notify>,
}

impl Manifests {
    /// Notified each time a write finishes; the actor then records it.
    pub(crate) fn wake(&self) -> Arc<tokio::sync::Notify> {
        self.wake.clone()
    }

    fn take_finished(&self) -> Vec<JobId> {
        std::mem::take(&mut *self.finished.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }
}

/// The manifest of a job as it is now.
fn manifest(entry: &JobEntry, output: &S3Uri, now_ms: u64) -> serde_json::Value {
    let id = &entry.record.job_id;
    let snapshot = entry.snapshot(now_ms);
    let batch = |seq: u64| BatchId::new(id.clone(), seq);
    serde_json::json!({
        "job_id": id.to_string(),
        "pipeline": entry.record.pipeline,
        // The job's own state: the snapshot shows COMPLETING until this is written.
        "state": batchmill_proto::jobs::v1::JobState::from(entry.record.state).as_str_name(),
        "message": snapshot.message,
        "batches": {
            "total": snapshot.batches.as_ref().map_or(0, |b| b.total),
            "succeeded": entry.ledger.succeeded(),
            "failed": entry.ledger.failed(),
        },
        "items": {
            "total": snapshot.items.as_ref().map_or(0, |i| i.total),
            "completed": entry.ledger.items_completed(),
            "failed": entry.ledger.items_failed(),
        },
        // Each object once: one batch's, or a group's (`<job>-<first>-<last>.jsonl`).
        "results": entry.ledger.result_objects().into_iter().map(|o| match o {
            ResultObject::Batch(seq) => result_uri(output, &batch(seq)).to_string(),
            ResultObject::Group(first, last) => group_uri(output, id, first, last).to_string(),
        }).collect::<Vec<_>>(),
        "failed_batches": entry.ledger.failed_seqs().map(|s| batch(s).to_string()).collect::<Vec<_>>(),
        // Jobs over this job's failed items (RetryFailedItems), and the job this one retries.
        "children": entry.record.children.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "parent": entry.record.parent.as_ref().map(ToString::to_string),
    })
}

/// Writes `body` at `uri`, retrying transient failures with backoff until
/// it is written; false if it cannot be (the bucket is gone, say).
async fn put_until_written(store: &dyn ObjectStore, uri: &S3Uri, body: Bytes) -> bool {
    let mut delay = Duration::from_millis(200);
    loop {
        match store.put(&uri.bucket, &uri.key, body.clone(), "application/json").await {
            Ok(()) => return true,
            Err(e) if e.is_transient() => {
                warn!(%uri, error = %e, "writing the manifest failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
            Err(e) => {
                warn!(%uri, error = %e, "the manifest cannot be written");
                return false;
            }
        }
    }
}

impl State {
    /// Starts writing the job's manifest as the job is now.
    pub(crate) fn write_manifest(&mut self, id: &JobId) {
        let Some(entry) = self.jobs.get(id) else { return };
        let output = match S3Uri::parse(&entry.record.output_uri) {
            Ok(output) => output,
            Err(e) => {
                warn!(job_id = %id, error = %e, "the job's output location is unusable; no manifest");
                return self.manifest_written(id);
            }
        };
        let body = match serde_json::to_vec_pretty(&manifest(entry, &output, self.clock.now_ms())) {
            Ok(body) => Bytes::from(body),
            Err(e) => {
                warn!(job_id = %id, error = %e, "encoding the manifest failed");
                return self.manifest_written(id);
            }
        };
        let (store, uri, id) = (self.ports.store.clone(), manifest_uri(&output, id), id.clone());
        let (finished, wake) = (self.manifests.finished.clone(), self.manifests.wake.clone());
        self.manifests.writing.spawn(async move {
            if put_until_written(store.as_ref(), &uri, body).await {
                info!(job_id = %id, %uri, "manifest written");
            }
            finished.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(id);
            wake.notify_one();
        });
    }

    /// Records the manifests written since the last call.
    pub(crate) fn note_manifests(&mut self) {
        while self.manifests.writing.try_join_next().is_some() {}
        for id in self.manifests.take_finished() {
            self.manifest_written(&id);
        }
    }

    /// Waits up to `patience` for the manifests being written, and records
    /// them; for tests and for a clean stop.
    pub async fn manifests_written(&mut self, patience: Duration) {
        let deadline = tokio::time::Instant::now() + patience;
        while let Ok(Some(_)) = tokio::time::timeout_at(deadline, self.manifests.writing.join_next()).await {}
        self.note_manifests();
    }

    /// The job's manifest write has finished (or cannot be made): its
    /// terminal state shows.
    fn manifest_written(&mut self, id: &JobId) {
        if let Some(entry) = self.jobs.get_mut(id)
            && entry.record.state.is_terminal()
        {
            entry.record.manifest_written = true;
            self.pending.mark(id);
        }
    }
}
