//! The worker's end of its sessions with the scheduler. One [`Outbox`]
//! outlives every session: an outcome reported on a session that then broke
//! (the leader died, or stepped down) is sent again on the next session, to
//! whoever leads then, so the batch it reports is acked within seconds of a
//! new leader, not redelivered after its ack wait.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use batchmill_proto::scheduler::v1::{self as pb, session_request::Message as Out};
use tokio::sync::{mpsc, oneshot};

/// A report waiting for its confirmation.
struct Report {
    /// Reports are sent again in the order they were first made.
    order: u64,
    outcome: pb::BatchOutcome,
    confirmed: oneshot::Sender<()>,
}

/// Reports awaiting confirmation, by batch, oldest first: a worker that
/// holds two deliveries of one batch reports it twice, and the scheduler
/// confirms each report in the order it received them.
type Pending = HashMap<(String, u64), VecDeque<Report>>;

#[derive(Default)]
struct Inner {
    /// The current session's sender; None between sessions.
    session: Option<mpsc::UnboundedSender<pb::SessionRequest>>,
    pending: Pending,
    next_order: u64,
}

/// Sends messages to the scheduler and waits for outcome confirmations,
/// across sessions; clones share it.
#[derive(Clone, Default)]
pub struct Outbox {
    inner: Arc<Mutex<Inner>>,
}

impl Outbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new session opened (its Register already sent): later messages go
    /// on it, and every report not yet confirmed is sent again, oldest first.
    pub fn attach(&self, session: mpsc::UnboundedSender<pb::SessionRequest>) {
        let mut inner = self.lock();
        let waiting: BTreeMap<u64, &pb::BatchOutcome> =
            inner.pending.values().flatten().map(|r| (r.order, &r.outcome)).collect();
        for outcome in waiting.into_values() {
            let _ = session.send(pb::SessionRequest { message: Some(Out::Outcome(outcome.clone())) });
        }
        inner.session = Some(session);
    }

    /// The session ended: messages wait for the next one.
    pub fn detach(&self) {
        self.lock().session = None;
    }

    /// Sends a message on the current session; false between sessions.
    pub fn send(&self, message: Out) -> bool {
        let inner = self.lock();
        inner.session.as_ref().is_some_and(|s| s.send(pb::SessionRequest { message: Some(message) }).is_ok())
    }

    /// Reports an outcome; true once the scheduler confirms it within
    /// `patience`. A report made between sessions, or on a session that
    /// breaks, goes out again on the next one.
    pub async fn report(&self, outcome: pb::BatchOutcome, patience: Duration) -> bool {
        let key = (outcome.job_id.clone(), outcome.seq);
        let (tx, rx) = oneshot::channel();
        {
            let mut inner = self.lock();
            let order = inner.next_order;
            inner.next_order += 1;
            if let Some(session) = &inner.session {
                let _ = session.send(pb::SessionRequest { message: Some(Out::Outcome(outcome.clone())) });
            }
            inner.pending.entry(key.clone()).or_default().push_back(Report { order, outcome, confirmed: tx });
        }
        let confirmed = matches!(tokio::time::timeout(patience, rx).await, Ok(Ok(())));
        // This report's receiver is gone now: forget it if unconfirmed.
        let mut inner = self.lock();
        if let Some(waiting) = inner.pending.get_mut(&key) {
            waiting.retain(|r| !r.confirmed.is_closed());
            if waiting.is_empty() {
                inner.pending.remove(&key);
            }
        }
        confirmed
    }

    /// Handles the scheduler's confirmation of an outcome: releases the
    /// oldest report of that batch still waiting.
    pub fn confirm(&self, ack: &pb::OutcomeAck) {
        let key = (ack.job_id.clone(), ack.seq);
        let mut inner = self.lock();
        let Some(waiting) = inner.pending.get_mut(&key) else { return };
        while let Some(report) = waiting.pop_front() {
            if report.confirmed.send(()).is_ok() {
                break;
            }
        }
        if waiting.is_empty() {
            inner.pending.remove(&key);
        }
    }

    /// Gives an assignment back to the scheduler.
    pub fn release(&self, job_id: &str, reason: &str) {
        self.released(pb::AssignmentReleased {
            job_id: job_id.to_owned(),
            reason: reason.to_owned(),
            ..Default::default()
        });
    }

    /// Says every batch held of a preempted job is finished and reported.
    pub fn hand_back(&self, job_id: &str) {
        let reason = "preempted: the batches in hand are finished".to_owned();
        self.released(pb::AssignmentReleased {
            job_id: job_id.to_owned(),
            reason,
            handed_back: true,
            ..Default::default()
        });
    }

    fn released(&self, released: pb::AssignmentReleased) {
        self.send(Out::Released(released));
    }

    /// Says the assignment's predictor is ready.
    pub fn started(&self, job_id: &str) {
        self.send(Out::Started(pb::AssignmentStarted { job_id: job_id.to_owned() }));
    }

    /// Gives an assignment back because the job's predictor cannot start;
    /// `out_of_memory` when it ran out of memory.
    pub fn fail_start(&self, job_id: &str, error: &str, out_of_memory: bool) {
        let (job_id, reason) = (job_id.to_owned(), error.to_owned());
        self.released(pb::AssignmentReleased { job_id, reason, failed: true, out_of_memory, ..Default::default() });
    }

    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.lock().pending.values().map(VecDeque::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(seq: u64) -> pb::BatchOutcome {
        pb::BatchOutcome { job_id: "j".into(), seq, status: pb::BatchStatus::Succeeded as i32, ..Default::default() }
    }

    fn ack(seq: u64) -> pb::OutcomeAck {
        pb::OutcomeAck { job_id: "j".into(), seq }
    }

    fn attached() -> (Outbox, mpsc::UnboundedReceiver<pb::SessionRequest>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let outbox = Outbox::default();
        outbox.attach(tx);
        (outbox, rx)
    }

    fn seq_of(sent: &pb::SessionRequest) -> Option<u64> {
        match &sent.message {
            Some(Out::Outcome(o)) => Some(o.seq),
            _ => None,
        }
    }

    #[tokio::test]
    async fn report_waits_for_its_own_confirmation() {
        let (outbox, mut rx) = attached();
        let waiting = tokio::spawn({
            let outbox = outbox.clone();
            async move { outbox.report(outcome(3), Duration::from_secs(5)).await }
        });
        assert_eq!(seq_of(&rx.recv().await.unwrap()), Some(3));
        outbox.confirm(&ack(2));
        outbox.confirm(&ack(3));
        assert!(waiting.await.unwrap());
    }

    #[tokio::test]
    async fn two_reports_of_one_batch_are_confirmed_one_each_in_order() {
        let (outbox, mut rx) = attached();
        let report = |outbox: &Outbox| {
            let outbox = outbox.clone();
            tokio::spawn(async move { outbox.report(outcome(4), Duration::from_secs(5)).await })
        };
        let first = report(&outbox);
        rx.recv().await.unwrap();
        let second = report(&outbox);
        rx.recv().await.unwrap();
        outbox.confirm(&ack(4));
        assert!(first.await.unwrap());
        assert!(!second.is_finished());
        outbox.confirm(&ack(4));
        assert!(second.await.unwrap());
        assert_eq!(outbox.waiting(), 0);
    }

    #[tokio::test]
    async fn reports_left_unconfirmed_by_a_broken_session_go_out_again_on_the_next() {
        let (outbox, mut old) = attached();
        let reports: Vec<_> = [7, 5, 6]
            .into_iter()
            .map(|seq| {
                let outbox = outbox.clone();
                tokio::spawn(async move { outbox.report(outcome(seq), Duration::from_secs(5)).await })
            })
            .collect();
        for _ in 0..3 {
            old.recv().await.unwrap();
        }
        outbox.confirm(&ack(5));
        // The leader dies; a report made meanwhile waits for the next session.
        outbox.detach();
        let late = tokio::spawn({
            let outbox = outbox.clone();
            async move { outbox.report(outcome(8), Duration::from_secs(5)).await }
        });
        tokio::task::yield_now().await;
        let (tx, mut new) = mpsc::unbounded_channel();
        outbox.attach(tx);
        let resent: Vec<Option<u64>> = (0..3).map(|_| new.try_recv().map(|m| seq_of(&m)).ok().flatten()).collect();
        assert_eq!(resent, [Some(7), Some(6), Some(8)], "every unconfirmed report, oldest first");
        for seq in [7, 6, 8] {
            outbox.confirm(&ack(seq));
        }
        for report in reports {
            assert!(report.await.unwrap());
        }
        assert!(late.await.unwrap());
        assert_eq!(outbox.waiting(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn report_without_confirmation_gives_up_after_its_patience() {
        let (outbox, _rx) = attached();
        assert!(!outbox.report(outcome(1), Duration::from_secs(30)).await);
        assert_eq!(outbox.waiting(), 0);
    }
}
