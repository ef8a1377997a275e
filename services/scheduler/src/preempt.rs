//! Admission carried out, and preemption: each round the plan of
//! [`crate::admission`] preempts and admits. A preempted job's workers
//! finish the batches in hand (their outcomes still count) and each says
//! when it has (`AssignmentReleased.handed_back`); its batches stay queued
//! in JetStream. Once every worker has handed it back, or left, it waits
//! (PENDING) to be admitted again, then resumes from its ledger. A worker
//! that never says so holds it back at most [`HAND_BACK_WAIT_MS`].

use std::collections::BTreeMap;

use batchmill_core::{JobId, JobState, WorkerId};
use batchmill_proto::jobs::v1 as pb;
use tracing::{info, warn};

use crate::admission::{self, Candidate};
use crate::state::State;
use crate::workers::worker_event;

/// The longest a preempted job stays PREEMPTED waiting for its workers to
/// hand it back (a worker finishing a long batch, or one that never says).
pub const HAND_BACK_WAIT_MS: u64 = 60_000;

impl State {
    /// The jobs admission weighs: those waiting (PENDING) and those holding
    /// capacity (admitted, running, completing).
    fn candidates(&self) -> Vec<Candidate> {
        // The newest job of an account says its quota on each queue.
        let mut quotas: BTreeMap<(&str, &str), u32> = BTreeMap::new();
        for (_, e) in self.jobs.iter() {
            quotas.insert((e.record.owner.account.as_str(), e.record.queue.as_str()), e.record.quota);
        }
        self.jobs
            .iter()
            .filter_map(|(id, e)| {
                let holding = match e.record.state {
                    JobState::Pending => false,
                    JobState::Admitted | JobState::Running | JobState::Completing => true,
                    _ => return None,
                };
                let r = &e.record;
                Some(Candidate {
                    id: id.clone(),
                    account: r.owner.account.clone(),
                    queue: r.queue.clone(),
                    priority: r.priority,
                    demand: r.demand,
                    quota: quotas.get(&(r.owner.account.as_str(), r.queue.as_str())).copied().unwrap_or(0),
                    holding,
                })
            })
            .collect()
    }

    /// One round of admission: preempted jobs handed back wait again, then
    /// the plan's preemptions and admissions.
    pub(crate) async fn admission(&mut self) {
        let now = self.clock.now_ms();
        for id in self.jobs.ids(|e| {
            e.record.state == JobState::Preempted
                && (e.handing_back.is_empty()
                    || e.record.preempted_ms.is_none_or(|t| now >= t.saturating_add(HAND_BACK_WAIT_MS)))
        }) {
            if let Some(entry) = self.jobs.get_mut(&id) {
                if !entry.handing_back.is_empty() {
                    let still = std::mem::take(&mut entry.handing_back);
                    warn!(job_id = %id, workers = ?still, "preempted job not handed back in time; it waits for admission again");
                }
                entry.enter(JobState::Pending);
                self.pending.mark(&id);
            }
        }
        let plan = admission::plan(&self.settings.queues, &self.candidates());
        let by = plan.admit.first().cloned();
        for victim in &plan.preempt {
            self.preempt(victim, by.as_ref());
        }
        for id in &plan.admit {
            self.admit(id).await;
        }
    }

    /// Takes a job's capacity back: its workers finish the batches in hand
    /// and leave; it is PREEMPTED, then waits to be admitted again.
    fn preempt(&mut self, id: &JobId, by: Option<&JobId>) {
        let now = self.clock.now_ms();
        let Some(entry) = self.jobs.get_mut(id) else { return };
        entry.enter(JobState::Preempted);
        entry.record.preempted_ms = Some(now);
        entry.record.preemptions += 1;
        let (queue, priority) = (entry.record.queue.clone(), entry.record.priority);
        let assigned = std::mem::take(&mut entry.assigned);
        entry.handing_back = assigned.keys().cloned().collect();
        let workers = assigned.len();
        self.workers.revoke(assigned.into_keys(), id, "preempted");
        self.pending.mark(id);
        info!(job_id = %id, by = ?by.map(ToString::to_string), workers, "job preempted");
        let by = by.map_or_else(String::new, |b| {
            let p = self.jobs.get(b).map_or(0, |e| e.record.priority);
            format!(" by job {b} (priority {p})")
        });
        let message = format!(
            "preempted{by} in queue {queue:?} (its priority is {priority}): its {workers} workers finish the batches in hand and hand it back; it resumes from its ledger once admitted again"
        );
        self.event(id, crate::events::event(pb::EventLevel::Warn, "preemption", message));
    }

    /// `worker` has finished, and reported, the batches it held of the
    /// preempted job `job_id`; once none is left the job waits for
    /// admission again (at the next round).
    pub fn handed_back(&mut self, worker: &WorkerId, job_id: &str) {
        let Ok(id) = JobId::parse("job_id", job_id) else { return };
        let Some(entry) = self.jobs.get_mut(&id) else { return };
        if !entry.handing_back.remove(worker) {
            return;
        }
        let left = entry.handing_back.len();
        info!(job_id = %id, worker_id = %worker, left, "worker handed the preempted job back");
        let message = format!(
            "worker {worker} finished the batches it held and handed the job back ({left} of its workers still finishing)"
        );
        self.event(&id, worker_event(pb::EventLevel::Info, "worker_handed_back", worker, message));
    }

    /// A worker that left hands back whatever it was finishing (the next
    /// admission round sees it; nothing of the job's record changes).
    pub(crate) fn stop_waiting_for(&mut self, worker: &WorkerId) {
        for id in self.jobs.ids(|e| e.handing_back.contains(worker)) {
            if let Some(entry) = self.jobs.get_mut(&id) {
                entry.handing_back.remove(worker);
            }
        }
    }
}
