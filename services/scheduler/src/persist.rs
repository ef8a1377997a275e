//! Persistence: which jobs changed since they were last written, who waits
//! for those changes to be durable, and the flush that writes each changed
//! job (its record and its ledger's changed keys) to etcd and only then
//! releases its waiters. [`Pending`] owns both. A job's state change is
//! recorded in its event log once it is durable.

use std::collections::BTreeSet;

use batchmill_coord::{CoordError, Kv};
use batchmill_core::{JobId, WorkerId};
use batchmill_proto::scheduler::v1::{self as spb, session_response::Message as Out};
use tokio::sync::oneshot;
use tracing::warn;

use crate::events::{EventLog, Unsaid};
use crate::jobs::Jobs;
use crate::record::{job_key, ledger_prefix};
use crate::workers::Workers;

/// Most operations in one etcd transaction (etcd allows 128).
const TXN_OPS: usize = 100;

/// Someone waiting for a job's changes to be durable in etcd.
pub(crate) enum Waiter {
    /// A worker's outcome, confirmed with an OutcomeAck on its session.
    Worker { worker: WorkerId, session: u64, ack: spb::OutcomeAck },
    /// An internal caller, such as the handler of exhausted batches.
    Reply(oneshot::Sender<()>),
}

/// Changes not yet durable, and who waits for them.
#[derive(Default)]
pub(crate) struct Pending {
    dirty: BTreeSet<JobId>,
    /// Waiters released by the next successful write of their job (or at
    /// once, for no job).
    waiting: Vec<(Option<JobId>, Waiter)>,
}

impl Pending {
    /// The job changed: write it at the next flush.
    pub fn mark(&mut self, id: &JobId) {
        self.dirty.insert(id.clone());
    }

    /// Drops the job's unwritten change; true if there was one.
    pub fn forget(&mut self, id: &JobId) -> bool {
        self.dirty.remove(id)
    }

    pub fn dirty(&self) -> impl Iterator<Item = &JobId> {
        self.dirty.iter()
    }

    /// Releases `waiter` once `job`'s changes are durable.
    pub fn wait(&mut self, job: Option<JobId>, waiter: Waiter) {
        self.waiting.push((job, waiter));
    }

    /// Forgets the confirmations owed to a worker whose session ended.
    pub fn drop_worker(&mut self, id: &WorkerId) {
        self.waiting.retain(|(_, w)| !matches!(w, Waiter::Worker { worker, .. } if worker == id));
    }

    /// Writes each dirty job, tells its watchers, then releases the waiters
    /// of every job written. A job whose write failed stays dirty, its
    /// waiters held.
    pub async fn flush(&mut self, jobs: &mut Jobs, workers: &Workers, kv: &dyn Kv, events: &EventLog, now_ms: u64) {
        if self.dirty.is_empty() && self.waiting.is_empty() {
            return;
        }
        let dirty = std::mem::take(&mut self.dirty);
        let mut failed = BTreeSet::new();
        for id in &dirty {
            let Some(entry) = jobs.get_mut(id) else { continue };
            match write(kv, id, entry).await {
                Ok(()) => {
                    entry.ledger.written();
                    // Its events go into its event log once durable.
                    let r = &entry.record;
                    for unsaid in std::mem::take(&mut entry.unsaid) {
                        let event = match unsaid {
                            Unsaid::Event(event) => event,
                            Unsaid::State(state) => {
                                let why = if state == r.state { r.message.as_deref() } else { None };
                                crate::events::state_changed(state, r.retries, why)
                            }
                        };
                        events.record(id, now_ms, event);
                    }
                }
                Err(e) => {
                    warn!(job_id = %id, error = %e, "persisting job failed; will retry");
                    failed.insert(id.clone());
                }
            }
            entry.publish(now_ms);
        }
        let (ready, held): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition(|(job, _)| job.as_ref().is_none_or(|id| !failed.contains(id)));
        for (_, waiter) in ready {
            match waiter {
                Waiter::Worker { worker, session, ack } => {
                    workers.send(&worker, Some(session), Out::OutcomeAck(ack));
                }
                Waiter::Reply(reply) => {
                    let _ = reply.send(());
                }
            }
        }
        self.waiting = held;
        self.dirty = failed;
    }
}

/// Writes a job's record and its ledger's changes, in transactions of at
/// most [`TXN_OPS`] operations.
async fn write(kv: &dyn Kv, id: &JobId, entry: &crate::jobs::JobEntry) -> Result<(), CoordError> {
    let key = job_key(id);
    let record = entry.record.encode().map_err(|e| CoordError::Encode { key: key.clone(), message: e.to_string() })?;
    let mut pairs = vec![(key, record)];
    pairs.extend(entry.ledger.changes(&ledger_prefix(id)));
    while !pairs.is_empty() {
        let rest = pairs.split_off(pairs.len().min(TXN_OPS));
        kv.put_all(pairs).await?;
        pairs = rest;
    }
    Ok(())
}
