//! Admission carried out, and preemption: each round the plan of
//! [`crate::admission`] preempts and admits. A preempted job's workers
//! finish the batches in hand (their outcomes still count) and leave; its
//! batches stay queued in JetStream, and after [`PREEMPT_GRACE`] it waits
//! (PENDING) to be admitted again, then resumes from its ledger.

use std::collections::BTreeMap;

use batchmill_core::{JobId, JobState};
use batchmill_proto::jobs::v1 as pb;
use tracing::info;

use crate::admission::{self, Candidate};
use crate::state::State;

/// How long a preempted job stays PREEMPTED, while its workers finish the
/// batches in hand, before it waits for admission again.
pub const PREEMPT_GRACE_MS: u64 = 2_000;

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

    /// One round of admission: preempted jobs past their grace wait again,
    /// then the plan's preemptions and admissions.
    pub(crate) async fn admission(&mut self) {
        let now = self.clock.now_ms();
        for id in self.jobs.ids(|e| {
            e.record.state == JobState::Preempted
                && e.record.preempted_ms.is_none_or(|t| now >= t.saturating_add(PREEMPT_GRACE_MS))
        }) {
            if let Some(entry) = self.jobs.get_mut(&id) {
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
        let workers = assigned.len();
        self.workers.revoke(assigned.into_keys(), id, "preempted");
        self.pending.mark(id);
        info!(job_id = %id, by = ?by.map(ToString::to_string), workers, "job preempted");
        let by = by.map_or_else(String::new, |b| {
            let p = self.jobs.get(b).map_or(0, |e| e.record.priority);
            format!(" by job {b} (priority {p})")
        });
        let message = format!(
            "preempted{by} in queue {queue:?} (its priority is {priority}): its {workers} workers finish the batches in hand and leave; it resumes from its ledger once admitted again"
        );
        self.event(id, crate::events::event(pb::EventLevel::Warn, "preemption", message));
    }
}
