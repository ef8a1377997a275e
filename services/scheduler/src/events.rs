//! Jobs' event logs, kept in JetStream (`batchmill.events.<job_id>`, a
//! month): what the scheduler records as a job goes (state changes,
//! enqueuing, workers assigned, released and lost, batches failed and
//! dead-lettered, re-runs, retries, the completion hook), and how a log is
//! read back, filtered and paged by cursor.
//!
//! The scheduler's task never waits on NATS for an event: [`EventLog`]
//! hands events to a writer task that stores them one at a time, in the
//! order they happened, retrying while NATS is unreachable. A job's events
//! wait in its entry until its change is durable in etcd (see `persist.rs`),
//! so the log says nothing that a new leader would not find.
//! Events still unwritten when a leader dies are lost; the job's state is not.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use batchmill_core::{FieldViolation, JobId, JobState};
use batchmill_proto::jobs::v1::{self as pb, EventLevel};
use batchmill_queue::{Queue, Stored};
use bytes::Bytes;
use prost::Message;
use tokio::sync::{Notify, mpsc};
use tracing::warn;

/// Most events waiting to be written; beyond it new ones are dropped (NATS
/// has been unreachable for long), with a warning.
const BACKLOG: usize = 100_000;
/// How long an event is retried before it is dropped.
const PATIENCE: Duration = Duration::from_secs(60);

/// Records events without waiting; clones share the writer.
#[derive(Clone)]
pub(crate) struct EventLog {
    tx: mpsc::UnboundedSender<(JobId, pb::JobEvent)>,
    progress: Arc<Progress>,
}

/// How far the writer has come.
struct Progress {
    /// Events recorded and not yet written (or dropped).
    backlog: AtomicUsize,
    written: Notify,
}

impl EventLog {
    /// Starts the writer task, which stores into `queue`; it ends when the
    /// last clone is dropped, after writing what it holds.
    pub fn start(queue: Arc<dyn Queue>) -> EventLog {
        let (tx, rx) = mpsc::unbounded_channel();
        let progress = Arc::new(Progress { backlog: AtomicUsize::new(0), written: Notify::new() });
        tokio::spawn(write_all(rx, queue, progress.clone()));
        EventLog { tx, progress }
    }

    /// Records `event` of `job`, stamped at `now_ms` unless it has a time.
    pub fn record(&self, job: &JobId, now_ms: u64, mut event: pb::JobEvent) {
        if self.progress.backlog.load(Ordering::Relaxed) >= BACKLOG {
            warn!(job_id = %job, r#type = %event.r#type, "event log backlog full; event dropped");
            return;
        }
        event.time = event.time.or_else(|| Some(batchmill_core::time::timestamp(now_ms)));
        self.progress.backlog.fetch_add(1, Ordering::Relaxed);
        if self.tx.send((job.clone(), event)).is_err() {
            self.progress.backlog.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Waits until every event recorded so far is written, or `patience` passes.
    pub async fn written(&self, patience: Duration) {
        let _ = tokio::time::timeout(patience, async {
            loop {
                let notified = self.progress.written.notified();
                if self.progress.backlog.load(Ordering::Relaxed) == 0 {
                    return;
                }
                notified.await;
            }
        })
        .await;
    }
}

/// Writes events in the order they were recorded, each retried for up to
/// [`PATIENCE`].
async fn write_all(
    mut rx: mpsc::UnboundedReceiver<(JobId, pb::JobEvent)>,
    queue: Arc<dyn Queue>,
    progress: Arc<Progress>,
) {
    while let Some((job, event)) = rx.recv().await {
        let body = Bytes::from(event.encode_to_vec());
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while let Err(e) = queue.publish_event(job.as_str(), body.clone()).await {
            if tokio::time::Instant::now() >= deadline {
                warn!(job_id = %job, r#type = %event.r#type, error = %e, "event not written; dropped");
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        progress.backlog.fetch_sub(1, Ordering::Relaxed);
        progress.written.notify_waiters();
    }
}

/// What a job has to say in its event log, held until the job's change is
/// durable.
#[derive(Debug, Clone)]
pub(crate) enum Unsaid {
    /// It entered a state (told with the record's message, if it is still
    /// in that state when written).
    State(JobState),
    /// Anything else, stamped when it happened.
    Event(pb::JobEvent),
}

/// An event of `type` at `level`, saying `message`.
pub(crate) fn event(level: EventLevel, r#type: &str, message: impl Into<String>) -> pb::JobEvent {
    pb::JobEvent { level: level as i32, r#type: r#type.to_owned(), message: message.into(), ..Default::default() }
}

/// The event of a job reaching `state`; `message` says why, where known.
pub(crate) fn state_changed(state: JobState, retries: u32, message: Option<&str>) -> pb::JobEvent {
    let level = match state {
        JobState::Succeeded => EventLevel::Success,
        JobState::CompletedWithFailures | JobState::Cancelled | JobState::Preempted => EventLevel::Warn,
        JobState::Failed | JobState::TimedOut => EventLevel::Failed,
        JobState::Pending | JobState::Admitted | JobState::Running | JobState::Completing => EventLevel::Info,
    };
    let default = match state {
        JobState::Pending if retries > 0 => format!("retried (retry {retries}): waiting for admission"),
        JobState::Pending => "accepted: waiting for admission".to_owned(),
        JobState::Admitted => "admitted: its queue is open and its items are being enqueued".to_owned(),
        JobState::Running => "running: a worker runs its batches".to_owned(),
        JobState::Completing => "every batch is final: running the completion hook".to_owned(),
        JobState::Succeeded => "succeeded: every batch has its results".to_owned(),
        JobState::CompletedWithFailures => "completed: some batches failed for good (see its dead letters)".to_owned(),
        JobState::Failed => "failed".to_owned(),
        JobState::TimedOut => "timed out".to_owned(),
        JobState::Cancelled => "cancelled".to_owned(),
        JobState::Preempted => "preempted".to_owned(),
    };
    // With a reason: what became of it, then why.
    let word = match state {
        JobState::CompletedWithFailures => "completed with failures",
        JobState::TimedOut => "timed out",
        _ => default.split(':').next().unwrap_or_default(),
    };
    let message = message.map_or_else(|| default.clone(), |m| format!("{word}: {m}"));
    pb::JobEvent { state: pb::JobState::from(state) as i32, ..event(level, "job_state", message) }
}

/// Whether `event` ends its job's run: a terminal state change.
pub(crate) fn is_end(event: &pb::JobEvent) -> bool {
    event.r#type == "job_state" && batchmill_core::job::is_terminal(event.state())
}

/// Which events a reader wants.
#[derive(Debug, Clone, Default)]
pub(crate) struct Filter {
    levels: Vec<i32>,
    types: Vec<String>,
    input: Option<Input>,
}

#[derive(Debug, Clone)]
enum Input {
    Name(String),
    Index(i64),
}

impl Filter {
    /// A filter from a request's fields (any of each, when empty).
    pub fn new(levels: Vec<i32>, types: Vec<String>, input: &str) -> Filter {
        let input = match input.trim() {
            "" => None,
            s => Some(s.parse::<i64>().map_or_else(|_| Input::Name(s.to_owned()), Input::Index)),
        };
        Filter { levels, types, input }
    }

    pub fn matches(&self, event: &pb::JobEvent) -> bool {
        (self.levels.is_empty() || self.levels.contains(&event.level))
            && (self.types.is_empty() || self.types.contains(&event.r#type))
            && self.input.as_ref().is_none_or(|input| match input {
                Input::Name(name) => event.inputs.contains(name),
                Input::Index(i) => event.items > 0 && (event.first_item..event.first_item + event.items).contains(i),
            })
    }
}

/// An event as read back, with its cursor (its position in the log).
pub(crate) fn decode(stored: &Stored) -> Option<pb::JobEvent> {
    let mut event = pb::JobEvent::decode(stored.payload.as_ref()).ok()?;
    event.cursor = stored.stream_seq.to_string();
    Some(event)
}

/// The position after `cursor` (from the first event when empty).
pub(crate) fn after(field: &str, cursor: &str) -> Result<u64, FieldViolation> {
    if cursor.is_empty() {
        return Ok(0);
    }
    cursor.parse::<u64>().map(|c| c + 1).map_err(|_| {
        FieldViolation::new(field, "is not a cursor of this job's events; pass an event's cursor as it was")
    })
}

/// Most events read to fill one page, however few match the filter.
const SCAN: usize = 10_000;

/// A page of `job`'s events after `from` that `filter` picks, at most
/// `limit`; and where the next page starts, if the log holds more now.
pub(crate) async fn page(
    queue: &dyn Queue,
    job: &str,
    mut from: u64,
    limit: usize,
    filter: &Filter,
) -> Result<(Vec<pb::JobEvent>, Option<u64>), batchmill_queue::QueueError> {
    let (mut found, mut scanned) = (Vec::new(), 0);
    loop {
        let chunk = queue.events(job, from, limit.max(100)).await?;
        let Some(last) = chunk.last().map(|s| s.stream_seq) else {
            return Ok((found, None));
        };
        for stored in &chunk {
            scanned += 1;
            from = stored.stream_seq + 1;
            if let Some(event) = decode(stored).filter(|e| filter.matches(e)) {
                found.push(event);
                if found.len() == limit {
                    return Ok((found, Some(stored.stream_seq)));
                }
            }
        }
        if scanned >= SCAN {
            return Ok((found, Some(last)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch_event(first_item: i64, items: i64, inputs: &[&str]) -> pb::JobEvent {
        pb::JobEvent {
            first_item,
            items,
            inputs: inputs.iter().map(|s| (*s).to_owned()).collect(),
            ..event(EventLevel::Warn, "batch_failed", "boom")
        }
    }

    #[test]
    fn filters_by_level_type_and_input() {
        let failed = batch_event(10, 5, &["alpha", "beta"]);
        assert!(Filter::default().matches(&failed));
        assert!(Filter::new(vec![EventLevel::Warn as i32], vec![], "").matches(&failed));
        assert!(!Filter::new(vec![EventLevel::Error as i32], vec![], "").matches(&failed));
        assert!(Filter::new(vec![], vec!["batch_failed".into(), "job_state".into()], "").matches(&failed));
        assert!(!Filter::new(vec![], vec!["job_state".into()], "").matches(&failed));
        assert!(Filter::new(vec![], vec![], "beta").matches(&failed));
        assert!(!Filter::new(vec![], vec![], "gamma").matches(&failed));
        assert!(Filter::new(vec![], vec![], "14").matches(&failed), "item 14 is in items 10..15");
        assert!(!Filter::new(vec![], vec![], "15").matches(&failed));
        assert!(!Filter::new(vec![], vec![], "0").matches(&state_changed(JobState::Running, 0, None)));
    }

    #[test]
    fn state_changes_carry_their_level_and_end_a_run_when_terminal() {
        let done = state_changed(JobState::Succeeded, 0, None);
        assert_eq!((done.level(), done.state()), (EventLevel::Success, pb::JobState::Succeeded));
        assert!(is_end(&done));
        let failed = state_changed(JobState::TimedOut, 0, Some("ran past its timeout of 3s"));
        assert_eq!(failed.level(), EventLevel::Failed);
        assert!(failed.message.contains("ran past its timeout of 3s"), "{}", failed.message);
        let retried = state_changed(JobState::Pending, 2, None);
        assert!(!is_end(&retried) && retried.message.contains("retry 2"), "{}", retried.message);
    }

    #[test]
    fn a_cursor_resumes_after_itself_and_a_bad_one_names_the_field() {
        assert_eq!(after("page_token", "").unwrap(), 0);
        assert_eq!(after("page_token", "41").unwrap(), 42);
        assert_eq!(after("cursor", "x").unwrap_err().field, "cursor");
    }

    #[tokio::test]
    async fn pages_pick_what_the_filter_wants_and_resume_where_they_stopped() {
        let queue: Arc<dyn Queue> = Arc::new(batchmill_queue::mem::MemQueue::default());
        let log = EventLog::start(queue.clone());
        let job = JobId::parse("job_id", "j1").unwrap();
        for i in 0..30 {
            let e = if i % 3 == 0 { batch_event(i, 1, &[]) } else { state_changed(JobState::Running, 0, None) };
            log.record(&job, 1_000 + i as u64, e);
        }
        log.written(Duration::from_secs(5)).await;
        let failures = Filter::new(vec![], vec!["batch_failed".into()], "");
        let (mut seen, mut from) = (Vec::new(), 0);
        loop {
            let (events, next) = page(queue.as_ref(), "j1", from, 4, &failures).await.unwrap();
            seen.extend(events.iter().map(|e| e.first_item));
            let Some(next) = next else { break };
            from = next + 1;
        }
        assert_eq!(seen, (0..30).step_by(3).collect::<Vec<i64>>(), "each once, in order, over pages");
    }
}
