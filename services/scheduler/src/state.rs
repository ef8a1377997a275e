//! The scheduler's state, owned by one task ([`crate::actor`]). Each part
//! has one owner type, and each concern its own module of `impl State`:
//!
//! - [`Jobs`] (`jobs.rs`): jobs with their ledgers; the job lifecycle.
//! - [`Workers`] (`workers.rs`): workers, their sessions and assignments.
//! - [`Pending`] (`persist.rs`): what changed and who waits for it to be
//!   durable; `flush` writes it to etcd, then confirms.
//! - dead letters and re-runs (`dead_letters.rs`), completion hooks
//!   (`finalize.rs`), manifests (`manifest.rs`).
//!
//! Handlers change memory and mark jobs dirty; [`State::flush`] persists
//! dirty jobs in one etcd transaction each and only then acknowledges batch
//! outcomes, so a worker acks a JetStream message only after its outcome
//! is durable.

use std::collections::BTreeMap;
use std::sync::Arc;

use batchmill_core::{Clock, JobId, JobState, S3Uri};
use batchmill_queue::DeliveryPolicy;
use tracing::warn;

use crate::events::EventLog;
use crate::finalize::Claims;
use crate::jobs::Jobs;
use crate::ledger::Ledger;
use crate::manifest::Manifests;
use crate::persist::Pending;
use crate::ports::Ports;
use crate::record::{JOBS_PREFIX, JobRecord, LEDGERS_PREFIX};
use crate::workers::Workers;

/// Settings of the scheduler.
#[derive(Debug, Clone)]
pub struct Settings {
    pub policy: DeliveryPolicy,
    /// Results location of jobs that name none.
    pub default_output: S3Uri,
    /// Where inline inputs are staged.
    pub staging: S3Uri,
    /// Seals and opens jobs' own credentials.
    pub secret_key: Option<batchmill_core::sealed::ClusterKey>,
    /// The cluster's own places in S3, which jobs may not name.
    pub fence: batchmill_core::fence::Fence,
    /// The admission queues.
    pub queues: batchmill_core::queues::Queues,
    /// The most items one job may have (0: no limit).
    pub max_job_items: u64,
}

pub struct State {
    pub(crate) ports: Ports,
    pub(crate) settings: Arc<Settings>,
    pub(crate) clock: Clock,
    pub(crate) jobs: Jobs,
    pub(crate) workers: Workers,
    pub(crate) pending: Pending,
    pub(crate) manifests: Manifests,
    pub(crate) events: EventLog,
}

impl State {
    pub fn new(ports: Ports, settings: Arc<Settings>, clock: Clock) -> State {
        State {
            events: EventLog::start(ports.queue.clone()),
            ports,
            settings,
            clock,
            jobs: Jobs::default(),
            workers: Workers::default(),
            pending: Pending::default(),
            manifests: Manifests::default(),
        }
    }

    /// Loads every job, its ledger and its completion hook's claim from
    /// etcd, as a new leader; returns how many jobs.
    pub async fn load(&mut self) -> Result<usize, batchmill_coord::CoordError> {
        let mut ledgers = self.load_ledgers().await?;
        let claims = Claims::load(self.ports.kv.as_ref()).await?;
        let now = self.clock.now_ms();
        for (key, bytes) in self.ports.kv.list(JOBS_PREFIX).await? {
            let mut record = match JobRecord::decode(&bytes) {
                Ok(r) => r,
                Err(e) => {
                    warn!(%key, error = %e, "unreadable job record");
                    continue;
                }
            };
            let ledger = ledgers.remove(record.job_id.as_str()).unwrap_or_default();
            if record.state == JobState::Completing && record.deployed.is_none() {
                // Completion is redone (the manifest is rewritten in place);
                // a job with a completion hook goes on finalizing.
                record.state = JobState::Running;
            }
            let id = record.job_id.clone();
            let unwritten = record.state.is_terminal() && !record.manifest_written;
            self.jobs.insert(record, ledger, now);
            if let Some(entry) = self.jobs.get_mut(&id) {
                entry.loaded = true;
            }
            if let Some(claim) = claims.get(&id) {
                self.claim_changed(&id, Some(claim.clone()));
            }
            if unwritten {
                self.write_manifest(&id);
            }
        }
        Ok(self.jobs.len())
    }

    /// Ledgers by job id, from `/batchmill/ledgers/<job_id>/<key>`.
    async fn load_ledgers(&self) -> Result<BTreeMap<String, Ledger>, batchmill_coord::CoordError> {
        let mut keys: BTreeMap<String, Vec<(String, Vec<u8>)>> = BTreeMap::new();
        for (key, bytes) in self.ports.kv.list(LEDGERS_PREFIX).await? {
            let rest = key.trim_start_matches(LEDGERS_PREFIX);
            if let Some((job, name)) = rest.split_once('/') {
                keys.entry(job.to_owned()).or_default().push((name.to_owned(), bytes));
            }
        }
        let mut ledgers = BTreeMap::new();
        for (job, pairs) in keys {
            match Ledger::decode(pairs.iter().map(|(k, v)| (k.as_str(), v.as_slice()))) {
                Ok(l) => {
                    ledgers.insert(job, l);
                }
                Err(e) => warn!(job_id = %job, error = %e, "unreadable ledger"),
            }
        }
        Ok(ledgers)
    }

    /// Periodic work: prepare the admitted jobs this leader has not (ones a
    /// previous leader left running; preparing is idempotent), admit waiting
    /// jobs as capacity allows (see `preempt.rs`), drive completion hooks, time out
    /// jobs past their timeout, retry unwritten manifests, then assign idle
    /// workers.
    pub async fn tick(&mut self) {
        for id in self.jobs.ids(|e| !e.admitted && matches!(e.record.state, JobState::Admitted | JobState::Running)) {
            self.admit(&id).await;
        }
        self.admission().await;
        for id in self.jobs.ids(|e| e.record.state == JobState::Completing) {
            self.finalize(&id).await;
        }
        let now = self.clock.now_ms();
        for id in self.jobs.ids(|e| !e.record.state.is_terminal() && e.record.timed_out(now)) {
            self.time_out(&id).await;
        }
        self.note_manifests();
        self.assign();
        self.note_unmatched();
        crate::metrics::METRICS.set(crate::metrics::Snapshot::of(&self.jobs));
    }

    /// Completes or fails the changed jobs that are done.
    pub async fn settle(&mut self) {
        let changed: Vec<JobId> = self.pending.dirty().cloned().collect();
        for id in changed {
            self.complete_if_done(&id).await;
        }
    }

    /// Records `event` in job `id`'s event log, once the job's change is
    /// durable (the caller marks it changed).
    pub(crate) fn event(&mut self, id: &JobId, mut event: batchmill_proto::jobs::v1::JobEvent) {
        let now = self.clock.now_ms();
        if let Some(entry) = self.jobs.get_mut(id) {
            event.time = Some(batchmill_core::time::timestamp(now));
            entry.unsaid.push(crate::events::Unsaid::Event(event));
            self.pending.mark(id);
        }
    }

    /// Waits until every event recorded so far is written (for tests, and
    /// a leader stepping down), at most `patience`.
    pub async fn events_written(&self, patience: std::time::Duration) {
        self.events.written(patience).await;
    }

    /// Completes the changed jobs that are done ([`State::settle`]), then
    /// persists dirty jobs, acknowledges outcomes and notifies watchers. A
    /// job whose write failed stays dirty and its outcomes unacknowledged.
    ///
    /// Settling comes first because writing clears a job's change: a job
    /// whose last outcome was written before it was settled would never be
    /// looked at again (a submission in the same burst of commands used to
    /// do that, and left such jobs RUNNING for good).
    pub async fn flush(&mut self) {
        self.settle().await;
        let now = self.clock.now_ms();
        self.pending.flush(&mut self.jobs, &self.workers, self.ports.kv.as_ref(), &self.events, now).await;
    }
}
