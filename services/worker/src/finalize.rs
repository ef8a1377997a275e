//! A job's completion hook, run on this worker when the scheduler asks:
//! see [`batchmill_core::finalize`]. The worker claims the job's finalizer
//! key under a lease, runs the hook in the job's predictor (the kept one,
//! when this worker ran the job's batches), then writes the outcome to the
//! claim, where the scheduler's watch reads it.

use std::sync::Arc;
use std::time::Duration;

use batchmill_coord::Etcd;
use batchmill_core::finalize::{Finalizing, finalizer_key};
use batchmill_proto::scheduler::v1 as pb;
use batchmill_queue::Queue;
use tracing::{info, warn};

use crate::joblog::JobLog;
use crate::loader::Loader;
use crate::predictor::HookError;

/// What running a hook needs.
pub(crate) struct Hook {
    pub etcd: Etcd,
    pub loader: Loader,
    pub queue: Arc<dyn Queue>,
    pub worker_id: String,
    /// TTL of the claim's lease.
    pub ttl: Duration,
}

impl Hook {
    /// Runs the hook of `finalize.job` if this worker can claim it.
    pub async fn run(self, finalize: pb::Finalize) {
        let Some(job) = finalize.job else { return };
        let mut state =
            Finalizing { attempt: finalize.attempt, worker_id: self.worker_id.clone(), done: false, error: None };
        let claimed = match state.encode() {
            Ok(value) => self.etcd.claim(finalizer_key(&job.job_id), value, self.ttl).await,
            Err(e) => {
                warn!(job_id = %job.job_id, error = %e, "encoding the claim failed");
                return;
            }
        };
        let claim = match claimed {
            Ok(Some(claim)) => claim,
            Ok(None) => {
                info!(job_id = %job.job_id, "completion hook already claimed");
                return;
            }
            Err(e) => {
                warn!(job_id = %job.job_id, error = %e, "claiming the completion hook failed");
                return;
            }
        };
        let log = JobLog::new(self.queue.clone(), &job.job_id, &self.worker_id);
        let metrics = serde_json::Value::Object(
            finalize.metrics.as_ref().map(batchmill_core::json::struct_to_json).unwrap_or_default(),
        );
        let started = std::time::Instant::now();
        let ran: Result<bool, HookError> = match self.loader.load(&job).await {
            Ok(predictor) => tokio::task::spawn_blocking(move || predictor.on_job_complete(&metrics))
                .await
                .unwrap_or_else(|e| Err(HookError::Died(format!("on_job_complete panicked: {e}")))),
            Err(e) => Err(HookError::Died(e.to_string())),
        };
        self.loader.forget(&job.job_id);
        let elapsed = started.elapsed().as_millis();
        match &ran {
            Ok(true) => log.line("", "INFO", format!("on_job_complete finished in {elapsed} ms")).await,
            Ok(false) => {}
            Err(e) => log.line("", "ERROR", format!("on_job_complete failed after {elapsed} ms: {e}")).await,
        }
        info!(job_id = %job.job_id, ok = ran.is_ok(), "completion hook done");
        state.done = true;
        state.error = ran.err().map(|e| e.to_string());
        let finished = match state.encode() {
            Ok(value) => claim.finish(value).await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = finished {
            warn!(job_id = %job.job_id, error = %e, "recording the completion hook's outcome failed");
        }
    }
}
