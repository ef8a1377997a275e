//! The worker's end of its session with the scheduler.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use batchmill_proto::scheduler::v1::{self as pb, session_request::Message as Out};
use tokio::sync::{mpsc, oneshot};

/// Reports awaiting confirmation, by batch, oldest first: a worker that
/// holds two deliveries of one batch reports it twice, and the scheduler
/// confirms each report in the order it received them.
type Pending = HashMap<(String, u64), VecDeque<oneshot::Sender<()>>>;

/// Sends messages to the scheduler and waits for outcome confirmations.
#[derive(Clone)]
pub struct Outbox {
    tx: mpsc::UnboundedSender<pb::SessionRequest>,
    pending: Arc<Mutex<Pending>>,
}

impl Outbox {
    pub fn new(tx: mpsc::UnboundedSender<pb::SessionRequest>) -> Outbox {
        Outbox { tx, pending: Arc::default() }
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn send(&self, message: Out) -> bool {
        self.tx.send(pb::SessionRequest { message: Some(message) }).is_ok()
    }

    /// Reports an outcome; true once the scheduler confirms it within `timeout`.
    pub async fn report(&self, outcome: pb::BatchOutcome, timeout: Duration) -> bool {
        let key = (outcome.job_id.clone(), outcome.seq);
        let (tx, rx) = oneshot::channel();
        self.pending().entry(key.clone()).or_default().push_back(tx);
        let confirmed =
            self.send(Out::Outcome(outcome)) && matches!(tokio::time::timeout(timeout, rx).await, Ok(Ok(())));
        // This report's receiver is gone now: forget its sender if unused.
        let mut pending = self.pending();
        if let Some(waiting) = pending.get_mut(&key) {
            waiting.retain(|tx| !tx.is_closed());
            if waiting.is_empty() {
                pending.remove(&key);
            }
        }
        confirmed
    }

    /// Handles the scheduler's confirmation of an outcome: releases the
    /// oldest report of that batch still waiting.
    pub fn confirm(&self, ack: &pb::OutcomeAck) {
        let key = (ack.job_id.clone(), ack.seq);
        let mut pending = self.pending();
        let Some(waiting) = pending.get_mut(&key) else { return };
        while let Some(tx) = waiting.pop_front() {
            if tx.send(()).is_ok() {
                break;
            }
        }
        if waiting.is_empty() {
            pending.remove(&key);
        }
    }

    /// Gives an assignment back to the scheduler.
    pub fn release(&self, job_id: &str, reason: &str) {
        let (job_id, reason) = (job_id.to_owned(), reason.to_owned());
        self.send(Out::Released(pb::AssignmentReleased { job_id, reason, failed: false }));
    }

    /// Says the assignment's predictor is ready.
    pub fn started(&self, job_id: &str) {
        self.send(Out::Started(pb::AssignmentStarted { job_id: job_id.to_owned() }));
    }

    /// Gives an assignment back because the job's predictor cannot start.
    pub fn fail_start(&self, job_id: &str, error: &str) {
        let (job_id, reason) = (job_id.to_owned(), error.to_owned());
        self.send(Out::Released(pb::AssignmentReleased { job_id, reason, failed: true }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(seq: u64) -> pb::BatchOutcome {
        pb::BatchOutcome { job_id: "j".into(), seq, status: pb::BatchStatus::Succeeded as i32, ..Default::default() }
    }

    #[tokio::test]
    async fn report_waits_for_its_own_confirmation() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let outbox = Outbox::new(tx);
        let waiting = tokio::spawn({
            let outbox = outbox.clone();
            async move { outbox.report(outcome(3), Duration::from_secs(5)).await }
        });
        let sent = rx.recv().await.unwrap();
        assert!(matches!(sent.message, Some(Out::Outcome(ref o)) if o.seq == 3));
        outbox.confirm(&pb::OutcomeAck { job_id: "j".into(), seq: 2 });
        outbox.confirm(&pb::OutcomeAck { job_id: "j".into(), seq: 3 });
        assert!(waiting.await.unwrap());
    }

    #[tokio::test]
    async fn two_reports_of_one_batch_are_confirmed_one_each_in_order() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let outbox = Outbox::new(tx);
        let report = |outbox: &Outbox| {
            let outbox = outbox.clone();
            tokio::spawn(async move { outbox.report(outcome(4), Duration::from_secs(5)).await })
        };
        let first = report(&outbox);
        rx.recv().await.unwrap();
        let second = report(&outbox);
        rx.recv().await.unwrap();
        outbox.confirm(&pb::OutcomeAck { job_id: "j".into(), seq: 4 });
        assert!(first.await.unwrap());
        assert!(!second.is_finished());
        outbox.confirm(&pb::OutcomeAck { job_id: "j".into(), seq: 4 });
        assert!(second.await.unwrap());
        assert!(outbox.pending().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn report_without_confirmation_times_out() {
        let (tx, _rx) = mpsc::unbounded_channel();
        let outbox = Outbox::new(tx);
        assert!(!outbox.report(outcome(1), Duration::from_secs(30)).await);
        assert!(outbox.pending().is_empty());
    }
}
