//! Completion hooks (`on_job_complete`), run once when every batch of a job
//! with a deployed predictor is final (see [`batchmill_core::finalize`]).
//!
//! The scheduler asks one idle worker over its session (`Finalize`). The
//! worker claims `/batchmill/finalizers/<job_id>` in etcd under a lease,
//! runs the hook, then replaces the claim with the outcome. The scheduler
//! follows that key with a watch (`follow.rs`), not by polling: the claim
//! is the durable record (a new leader reads it), and its lease lapsing is
//! what says the worker running the hook died. If the asked worker never
//! claims it, or the claim lapses, another worker is asked, up to
//! [`FINALIZE_ATTEMPTS`] times.

use std::collections::BTreeMap;

use batchmill_coord::Kv;
use batchmill_core::finalize::{FINALIZERS_PREFIX, Finalizing, finalizer_key};
use batchmill_core::{FailureReason, JobId, JobState, WorkerId};
use batchmill_proto::jobs::v1::{self as pb, EventLevel};
use batchmill_proto::scheduler::v1::{self as spb, session_response::Message as Out};
use tracing::{info, warn};

use crate::events::event;
use crate::jobs::End;
use crate::state::State;

/// Finalize attempts before a job whose hook never finished fails.
const FINALIZE_ATTEMPTS: u32 = 3;
/// How long a worker asked to finalize has to claim it.
const FINALIZE_CLAIM_MS: u64 = 30_000;

/// A completing job's hook, as the leader knows it.
#[derive(Debug, Default)]
pub(crate) struct Finalizer {
    /// The worker last asked, and when.
    asked: Option<(WorkerId, u64)>,
    /// The value at the job's finalizer key; None when there is none.
    claim: Option<Finalizing>,
}

/// Every finalizer key in etcd, by job.
pub(crate) struct Claims(BTreeMap<String, Finalizing>);

impl Claims {
    pub async fn load(kv: &dyn Kv) -> Result<Claims, batchmill_coord::CoordError> {
        let mut claims = BTreeMap::new();
        for (key, bytes) in kv.list(FINALIZERS_PREFIX).await? {
            match Finalizing::decode(&bytes) {
                Ok(claim) => {
                    claims.insert(key.trim_start_matches(FINALIZERS_PREFIX).to_owned(), claim);
                }
                Err(e) => warn!(%key, error = %e, "unreadable finalizer claim"),
            }
        }
        Ok(Claims(claims))
    }

    pub fn get(&self, id: &JobId) -> Option<&Finalizing> {
        self.0.get(id.as_str())
    }
}

/// The counts a job's completion hook receives.
fn final_metrics(job: &pb::Job) -> serde_json::Map<String, serde_json::Value> {
    let batches = job.batches.unwrap_or_default();
    let items = job.items.unwrap_or_default();
    let mut metrics = serde_json::Map::new();
    metrics.insert("job_id".into(), job.job_id.clone().into());
    metrics.insert("pipeline".into(), job.pipeline.clone().into());
    metrics.insert("total_batch_count".into(), batches.total.into());
    metrics.insert("succeeded".into(), batches.succeeded.into());
    metrics.insert("failed".into(), batches.failed.into());
    let items = serde_json::json!({"total": items.total, "completed": items.completed, "failed": items.failed});
    metrics.insert("items".into(), items);
    metrics
}

impl State {
    /// Every batch is final: the job completes once its hook has run.
    pub(crate) async fn begin_finalizing(&mut self, id: &JobId) {
        let Some(entry) = self.jobs.get_mut(id) else { return };
        entry.enter(JobState::Completing);
        entry.record.finalize_base = entry.record.finalize_attempts;
        entry.finalizer.asked = None;
        let assigned = std::mem::take(&mut entry.assigned);
        self.workers.revoke(assigned.into_keys(), id, "completing");
        self.pending.mark(id);
        info!(job_id = %id, "every batch is final; finalizing");
        self.finalize(id).await;
    }

    /// The job's finalizer key changed (None: deleted, or its lease lapsed).
    pub fn claim_changed(&mut self, id: &JobId, claim: Option<Finalizing>) {
        if let Some(entry) = self.jobs.get_mut(id) {
            entry.finalizer.claim = claim;
        }
    }

    /// Drives a completing job's hook: ends the job once a worker has run
    /// it, and otherwise asks an idle worker that can run the pipeline,
    /// again when the one asked does not claim it in time or its claim
    /// lapses, up to [`FINALIZE_ATTEMPTS`] times.
    pub(crate) async fn finalize(&mut self, id: &JobId) {
        let Some(entry) = self.jobs.get(id) else { return };
        if entry.record.state != JobState::Completing {
            return;
        }
        // A claim from an earlier completion (before a re-run) is stale.
        match entry.finalizer.claim.clone().filter(|c| c.attempt > entry.record.finalize_base) {
            Some(done) if done.done => return self.finalized(id, done).await,
            // Running on a live worker (its lease holds the claim).
            Some(_) => return,
            None => {}
        }
        let now = self.clock.now_ms();
        if let Some((worker, sent)) = &entry.finalizer.asked
            && self.workers.get(worker).is_some_and(|w| w.job.as_ref() == Some(id))
            && now.saturating_sub(*sent) < FINALIZE_CLAIM_MS
        {
            return; // asked, not claimed yet
        }
        if entry.record.finalize_attempts - entry.record.finalize_base >= FINALIZE_ATTEMPTS {
            let message =
                format!("on_job_complete did not finish after {FINALIZE_ATTEMPTS} attempts; workers were lost");
            self.end(id, End::failed(FailureReason::WorkerError, message)).await;
            return;
        }
        self.ask_to_finalize(id, now);
    }

    /// Asks an idle worker that can run the job's pipeline to run its hook.
    fn ask_to_finalize(&mut self, id: &JobId, now: u64) {
        let Some(entry) = self.jobs.get(id) else { return };
        let record = &entry.record;
        let Some(worker_id) = self.workers.idle_for(record) else {
            return; // no idle worker can run it yet
        };
        let attempt = record.finalize_attempts + 1;
        let metrics = final_metrics(&entry.snapshot(now));
        let finalize = spb::Finalize {
            job: Some(self.assignment(entry)),
            attempt,
            metrics: Some(batchmill_core::json::json_to_struct(&metrics)),
        };
        if !self.workers.send(&worker_id, None, Out::Finalize(finalize)) {
            return;
        }
        info!(job_id = %id, worker_id = %worker_id, attempt, "finalize sent");
        let message = format!("on_job_complete sent to worker {worker_id} (attempt {attempt})");
        let event =
            pb::JobEvent { worker_id: worker_id.to_string(), ..event(EventLevel::Info, "hook_started", message) };
        self.event(id, event);
        if let Some(worker) = self.workers.get_mut(&worker_id) {
            worker.job = Some(id.clone());
        }
        if let Some(entry) = self.jobs.get_mut(id) {
            entry.record.finalize_attempts = attempt;
            entry.finalizer.asked = Some((worker_id.clone(), now));
            entry.assigned.insert(worker_id, true);
        }
        self.pending.mark(id);
    }

    /// Ends a job whose hook has run, as its claim says.
    async fn finalized(&mut self, id: &JobId, claim: Finalizing) {
        if let Err(e) = self.ports.kv.delete(&finalizer_key(id.as_str())).await {
            warn!(job_id = %id, error = %e, "removing the finalizer key failed");
        }
        let worker_id = claim.worker_id.clone();
        let (end, hook) = match claim.error {
            None => {
                info!(job_id = %id, worker_id = %claim.worker_id, "on_job_complete finished");
                let message = format!("on_job_complete finished on worker {worker_id}");
                let end = End { state: self.completed_state(id), reason: None, message: None, why: "completed" };
                (end, event(EventLevel::Success, "hook_succeeded", message))
            }
            Some(error) => {
                let message = format!("on_job_complete failed on worker {}: {error}", claim.worker_id);
                (
                    End::failed(FailureReason::WorkerError, message.clone()),
                    event(EventLevel::Error, "hook_failed", message),
                )
            }
        };
        self.event(id, pb::JobEvent { worker_id, ..hook });
        self.end(id, end).await;
    }
}
