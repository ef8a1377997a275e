//! An in-memory [`Queue`](crate::Queue) for unit tests: the JetStream
//! behaviour batchmill relies on (dedup by message id, one delivery of a
//! message at a time, ack wait, nak delay, max deliveries and their
//! advisories, purge, reads by position), timed on tokio's clock so tests on
//! paused time drive its timers. It passes [`crate::conformance`] as the
//! real server does. Faults can be injected ([`MemQueue::fail_publishes`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use batchmill_core::BatchId;
use batchmill_core::subjects::{batch_msg_id, dead_letter_msg_id, rerun_msg_id};
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::{
    Advisories, Batches, Consumer, DeadLetters, Delivery, DeliveryPolicy, Events, Exhausted, Handled, LogLines, Logs,
    QueueError, Records, Result, Stored, StoredStream, TraceHeaders,
};

/// How long a taken advisory waits to be handled before it is given out again.
const ADVISORY_ACK_WAIT: Duration = Duration::from_secs(30);

/// A queue held in memory; clones share it.
#[derive(Clone, Default)]
pub struct MemQueue {
    inner: Arc<Mutex<Inner>>,
    changed: Arc<Notify>,
}

#[derive(Default)]
struct Inner {
    batches: Log,
    dead: Log,
    records: Log,
    logs: Log,
    events: Log,
    consumers: HashMap<String, Tracking>,
    advisories: BTreeMap<u64, Advisory>,
    next_advisory: u64,
    /// Publishes still to fail, for fault-injection tests.
    failing_publishes: u32,
}

/// One stream: messages by sequence (from 1), each under a job.
#[derive(Default)]
struct Log {
    last: u64,
    messages: BTreeMap<u64, Message>,
    ids: HashSet<String>,
}

struct Message {
    job: String,
    body: Bytes,
    trace: TraceHeaders,
}

impl Log {
    /// Stores a message unless one with `msg_id` was stored before.
    fn append(&mut self, job: &str, msg_id: Option<String>, body: Bytes, trace: TraceHeaders) {
        if let Some(id) = msg_id
            && !self.ids.insert(id)
        {
            return;
        }
        self.last += 1;
        self.messages.insert(self.last, Message { job: job.to_owned(), body, trace });
    }

    fn page(&self, job: &str, from: u64, limit: usize) -> Vec<Stored> {
        self.messages
            .range(from.max(1)..)
            .filter(|(_, m)| m.job == job)
            .take(limit)
            .map(|(seq, m)| Stored { stream_seq: *seq, payload: m.body.clone() })
            .collect()
    }
}

/// A job consumer's view of its messages.
struct Tracking {
    policy: DeliveryPolicy,
    deliveries: BTreeMap<u64, Track>,
}

struct Track {
    delivered: u64,
    state: TrackState,
}

enum TrackState {
    /// Held by a worker until `until`.
    Held { until: Instant },
    /// Nak'ed: delivered again from `until`.
    Delayed { until: Instant },
    /// Its deliveries ran out unsettled; an advisory says so.
    Exhausted,
}

struct Advisory {
    stream_seq: u64,
    deliveries: u64,
    taken_until: Option<Instant>,
}

impl Inner {
    /// Marks messages due for another delivery that have had their last
    /// (held past its ack wait, or nak'ed) as exhausted, with an advisory each.
    fn sweep(&mut self, now: Instant) {
        for tracking in self.consumers.values_mut() {
            let max = u64::from(tracking.policy.max_deliver.max(1));
            for (seq, track) in &mut tracking.deliveries {
                let due =
                    matches!(track.state, TrackState::Held { until } | TrackState::Delayed { until } if until <= now);
                if due && track.delivered >= max {
                    track.state = TrackState::Exhausted;
                    self.next_advisory += 1;
                    let advisory = Advisory { stream_seq: *seq, deliveries: track.delivered, taken_until: None };
                    self.advisories.insert(self.next_advisory, advisory);
                }
            }
        }
    }

    /// Delivers the job's next deliverable message.
    fn deliver(&mut self, job: &str, now: Instant) -> Option<(u64, u64, Bytes, TraceHeaders)> {
        let tracking = self.consumers.get_mut(job)?;
        let ack_wait = tracking.policy.ack_wait;
        for (seq, message) in self.batches.messages.iter().filter(|(_, m)| m.job == job) {
            let ready = match tracking.deliveries.get(seq).map(|t| &t.state) {
                None => true,
                Some(TrackState::Held { until } | TrackState::Delayed { until }) => *until <= now,
                Some(TrackState::Exhausted) => false,
            };
            if !ready {
                continue;
            }
            let track = tracking.deliveries.entry(*seq).or_insert(Track { delivered: 0, state: TrackState::Exhausted });
            track.delivered += 1;
            track.state = TrackState::Held { until: now + ack_wait };
            return Some((*seq, track.delivered, message.body.clone(), message.trace.clone()));
        }
        None
    }

    /// The earliest time a delivery's state changes by itself.
    fn next_timer(&self) -> Option<Instant> {
        let held = self.consumers.values().flat_map(|t| t.deliveries.values()).filter_map(|t| match t.state {
            TrackState::Held { until } | TrackState::Delayed { until } => Some(until),
            TrackState::Exhausted => None,
        });
        held.chain(self.advisories.values().filter_map(|a| a.taken_until)).min()
    }

    /// Counts down an injected publish failure.
    fn publish_fault(&mut self, msg_id: &str) -> Result<()> {
        if self.failing_publishes == 0 {
            return Ok(());
        }
        self.failing_publishes -= 1;
        Err(QueueError::Publish { msg_id: msg_id.to_owned(), message: "injected fault: NATS unreachable".into() })
    }

    fn remove_batch(&mut self, stream_seq: u64) {
        if let Some(message) = self.batches.messages.remove(&stream_seq)
            && let Some(tracking) = self.consumers.get_mut(&message.job)
        {
            tracking.deliveries.remove(&stream_seq);
        }
    }
}

impl MemQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `change` and wakes everyone waiting for a change.
    fn change<T>(&self, change: impl FnOnce(&mut Inner) -> T) -> T {
        let out = change(&mut self.lock());
        self.changed.notify_waiters();
        out
    }

    /// Makes the next `n` publishes (batches, dead letters, records) fail as
    /// they would with NATS unreachable.
    pub fn fail_publishes(&self, n: u32) {
        self.lock().failing_publishes = n;
    }

    /// Batches of `job_id` in the stream, not yet acked or withdrawn.
    pub fn batches_left(&self, job_id: &str) -> usize {
        self.lock().batches.messages.values().filter(|m| m.job == job_id).count()
    }

    /// Waits until `check` finds what it looks for, re-checking on every
    /// change and timer, for at most `wait`; None when it did not.
    async fn wait_for<T>(
        &self,
        wait: Duration,
        mut check: impl FnMut(&mut Inner, Instant) -> Result<Option<T>>,
    ) -> Result<Option<T>> {
        let deadline = Instant::now() + wait;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let now = Instant::now();
            let next = {
                let mut inner = self.lock();
                inner.sweep(now);
                if let Some(found) = check(&mut inner, now)? {
                    return Ok(Some(found));
                }
                inner.next_timer()
            };
            if now >= deadline {
                return Ok(None);
            }
            let until = next.map_or(deadline, |t| t.min(deadline)).max(now + Duration::from_millis(1));
            tokio::select! {
                () = notified => {}
                () = tokio::time::sleep_until(until) => {}
            }
        }
    }
}

#[async_trait]
impl Batches for MemQueue {
    async fn publish_batch(&self, batch: &BatchId, round: u32, body: Bytes, trace: &TraceHeaders) -> Result<()> {
        let msg_id = batch_msg_id(batch, round);
        self.change(|q| {
            q.publish_fault(&msg_id)?;
            q.batches.append(batch.job_id.as_str(), Some(msg_id.clone()), body, trace.clone());
            Ok(())
        })
    }

    async fn requeue_batch(&self, batch: &BatchId, rerun: u64, body: Bytes) -> Result<()> {
        let msg_id = rerun_msg_id(batch, rerun);
        self.change(|q| {
            q.publish_fault(&msg_id)?;
            q.batches.append(batch.job_id.as_str(), Some(msg_id.clone()), body, TraceHeaders::new());
            Ok(())
        })
    }

    async fn open_job(&self, job_id: &str, policy: DeliveryPolicy) -> Result<()> {
        self.change(|q| {
            q.consumers.entry(job_id.to_owned()).or_insert_with(|| Tracking { policy, deliveries: BTreeMap::new() });
        });
        Ok(())
    }

    async fn close_job(&self, job_id: &str) -> Result<u64> {
        Ok(self.change(|q| {
            let before = q.batches.messages.len();
            q.batches.messages.retain(|_, m| m.job != job_id);
            q.consumers.remove(job_id);
            (before - q.batches.messages.len()) as u64
        }))
    }

    async fn job_consumer(&self, job_id: &str) -> Result<std::sync::Arc<dyn Consumer>> {
        if !self.lock().consumers.contains_key(job_id) {
            return Err(QueueError::NoConsumer { job_id: job_id.to_owned() });
        }
        Ok(Arc::new(MemConsumer { queue: self.clone(), job_id: job_id.to_owned() }))
    }

    async fn read(&self, stream_seq: u64) -> Result<Option<Bytes>> {
        Ok(self.lock().batches.messages.get(&stream_seq).map(|m| m.body.clone()))
    }

    async fn remove(&self, stream_seq: u64) -> Result<()> {
        self.change(|q| q.remove_batch(stream_seq));
        Ok(())
    }
}

struct MemConsumer {
    queue: MemQueue,
    job_id: String,
}

#[async_trait]
impl Consumer for MemConsumer {
    async fn next(&self, wait: Duration) -> Result<Option<Box<dyn Delivery>>> {
        let job = self.job_id.clone();
        let delivered = self
            .queue
            .wait_for(wait, |q, now| {
                if !q.consumers.contains_key(&job) {
                    return Err(QueueError::ConsumerDeleted { job_id: job.clone() });
                }
                Ok(q.deliver(&job, now))
            })
            .await?;
        Ok(delivered.map(|(stream_seq, attempt, body, trace)| {
            let queue = self.queue.clone();
            Box::new(MemDelivery { queue, job_id: self.job_id.clone(), stream_seq, attempt, body, trace })
                as Box<dyn Delivery>
        }))
    }

    async fn next_many(&self, max: usize, wait: Duration) -> Result<Vec<Box<dyn Delivery>>> {
        let mut taken = Vec::new();
        while taken.len() < max {
            let patience = if taken.is_empty() { wait } else { Duration::ZERO };
            match self.next(patience).await? {
                Some(delivery) => taken.push(delivery),
                None => break,
            }
        }
        Ok(taken)
    }
}

struct MemDelivery {
    queue: MemQueue,
    job_id: String,
    stream_seq: u64,
    attempt: u64,
    body: Bytes,
    trace: TraceHeaders,
}

impl MemDelivery {
    /// Changes this delivery's state if it is still the message's latest.
    fn settle(&self, state: impl FnOnce(&DeliveryPolicy) -> Option<TrackState>) {
        self.queue.change(|q| {
            let Some(tracking) = q.consumers.get_mut(&self.job_id) else { return };
            let policy = tracking.policy;
            let Some(track) = tracking.deliveries.get_mut(&self.stream_seq) else { return };
            if track.delivered != self.attempt {
                return;
            }
            match state(&policy) {
                Some(state) => track.state = state,
                None => q.remove_batch(self.stream_seq),
            }
        });
    }
}

#[async_trait]
impl Delivery for MemDelivery {
    fn payload(&self) -> &Bytes {
        &self.body
    }

    fn trace(&self) -> TraceHeaders {
        self.trace.clone()
    }

    fn stream_seq(&self) -> u64 {
        self.stream_seq
    }

    fn attempt(&self) -> u64 {
        self.attempt
    }

    async fn in_progress(&self) -> Result<()> {
        self.settle(|p| Some(TrackState::Held { until: Instant::now() + p.ack_wait }));
        Ok(())
    }

    async fn ack(&self) -> Result<()> {
        if !self.queue.lock().consumers.contains_key(&self.job_id) {
            return Err(QueueError::ConsumerDeleted { job_id: self.job_id.clone() });
        }
        self.settle(|_| None);
        Ok(())
    }

    async fn nak(&self, delay: Duration) -> Result<()> {
        self.settle(|_| Some(TrackState::Delayed { until: Instant::now() + delay }));
        Ok(())
    }

    async fn term(&self) -> Result<()> {
        self.settle(|_| None);
        Ok(())
    }
}

#[async_trait]
impl DeadLetters for MemQueue {
    async fn dead_letter(&self, batch: &BatchId, batch_stream_seq: u64, body: Bytes) -> Result<()> {
        let msg_id = dead_letter_msg_id(batch, batch_stream_seq);
        self.change(|q| {
            q.publish_fault(&msg_id)?;
            q.dead.append(batch.job_id.as_str(), Some(msg_id.clone()), body, TraceHeaders::new());
            Ok(())
        })
    }

    async fn dead_letters(&self, job_id: &str, from: u64, limit: usize) -> Result<Vec<Stored>> {
        Ok(self.lock().dead.page(job_id, from, limit))
    }

    async fn remove_dead_letter(&self, stream_seq: u64) -> Result<()> {
        self.change(|q| q.dead.messages.remove(&stream_seq));
        Ok(())
    }
}

#[async_trait]
impl Records for MemQueue {
    async fn publish_record(&self, job_id: &str, record: Bytes) -> Result<()> {
        self.change(|q| {
            q.publish_fault("record")?;
            q.records.append(job_id, None, record, TraceHeaders::new());
            Ok(())
        })
    }

    async fn records(&self, job_id: &str, from: u64, limit: usize) -> Result<Vec<Stored>> {
        Ok(self.lock().records.page(job_id, from, limit))
    }
}

#[async_trait]
impl Logs for MemQueue {
    async fn publish_log(&self, job_id: &str, line: Bytes) -> Result<()> {
        self.change(|q| q.logs.append(job_id, None, line, TraceHeaders::new()));
        Ok(())
    }

    async fn logs(&self, job_id: &str, follow: bool) -> Result<LogLines> {
        let stored = self.lock().logs.page(job_id, 0, usize::MAX);
        let after = stored.last().map_or(0, |s| s.stream_seq);
        let stored = futures::stream::iter(stored.into_iter().map(|s| Ok(s.payload)));
        if !follow {
            return Ok(stored.boxed());
        }
        let (queue, job) = (self.clone(), job_id.to_owned());
        let later = futures::stream::unfold(after, move |after| {
            let (queue, job) = (queue.clone(), job.clone());
            async move {
                loop {
                    let next = |q: &mut Inner, _: Instant| Ok(q.logs.page(&job, after + 1, 1).pop());
                    match queue.wait_for(Duration::from_secs(3600), next).await {
                        Ok(Some(line)) => return Some((Ok(line.payload), line.stream_seq)),
                        Ok(None) => {}
                        Err(e) => return Some((Err(e), after)),
                    }
                }
            }
        });
        Ok(stored.chain(later).boxed())
    }
}

#[async_trait]
impl Events for MemQueue {
    async fn publish_event(&self, job_id: &str, event: Bytes) -> Result<u64> {
        self.change(|q| {
            q.publish_fault("event")?;
            q.events.append(job_id, None, event, TraceHeaders::new());
            Ok(q.events.last)
        })
    }

    async fn events(&self, job_id: &str, from: u64, limit: usize) -> Result<Vec<Stored>> {
        Ok(self.lock().events.page(job_id, from, limit))
    }

    async fn follow_events(&self, job_id: &str, from: u64) -> Result<StoredStream> {
        let (queue, job) = (self.clone(), job_id.to_owned());
        Ok(futures::stream::unfold(from.max(1), move |from| {
            let (queue, job) = (queue.clone(), job.clone());
            async move {
                loop {
                    let next = |q: &mut Inner, _: Instant| Ok(q.events.page(&job, from, 1).pop());
                    match queue.wait_for(Duration::from_secs(3600), next).await {
                        Ok(Some(event)) => {
                            let after = event.stream_seq + 1;
                            return Some((Ok(event), after));
                        }
                        Ok(None) => {}
                        Err(e) => return Some((Err(e), from)),
                    }
                }
            }
        })
        .boxed())
    }
}

#[async_trait]
impl Advisories for MemQueue {
    async fn exhausted(&self) -> Result<BoxStream<'static, Result<Exhausted>>> {
        let queue = self.clone();
        Ok(futures::stream::unfold(queue, |queue| async move {
            let take = |q: &mut Inner, now: Instant| {
                let ready = q.advisories.iter_mut().find(|(_, a)| a.taken_until.is_none_or(|t| t <= now));
                Ok(ready.map(|(id, a)| {
                    a.taken_until = Some(now + ADVISORY_ACK_WAIT);
                    (*id, a.stream_seq, a.deliveries)
                }))
            };
            loop {
                match queue.wait_for(Duration::from_secs(3600), take).await {
                    Ok(Some((id, stream_seq, deliveries))) => {
                        let handle = Box::new(MemAdvisory { queue: queue.clone(), id });
                        return Some((Ok(Exhausted::new(stream_seq, deliveries, handle)), queue));
                    }
                    Ok(None) => continue,
                    Err(e) => return Some((Err(e), queue)),
                }
            }
        })
        .boxed())
    }
}

struct MemAdvisory {
    queue: MemQueue,
    id: u64,
}

#[async_trait]
impl Handled for MemAdvisory {
    async fn handled(&self) -> Result<()> {
        self.queue.change(|q| q.advisories.remove(&self.id));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn mem_queue_conforms() {
        crate::conformance::run(&super::MemQueue::default(), "mem").await;
    }
}
