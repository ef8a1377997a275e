//! A job's log lines, appended to its JetStream log subject.

use std::sync::Arc;

use batchmill_proto::jobs::v1::LogLine;
use batchmill_queue::Logs;
use bytes::Bytes;
use prost::Message;

use crate::python::LogSink;

/// Where one worker writes one job's log lines.
#[derive(Clone)]
pub struct JobLog {
    queue: Arc<dyn Logs>,
    job_id: String,
    worker_id: String,
}

impl JobLog {
    pub fn new(queue: Arc<dyn Logs>, job_id: &str, worker_id: &str) -> JobLog {
        JobLog { queue, job_id: job_id.to_owned(), worker_id: worker_id.to_owned() }
    }

    /// Appends a line (`batch_id` empty for the job as a whole); a line that
    /// cannot be sent is only traced here.
    pub async fn line(&self, batch_id: &str, level: &str, message: String) {
        let line = LogLine {
            time: Some(batchmill_core::time::timestamp(batchmill_core::time::now_ms())),
            worker_id: self.worker_id.clone(),
            batch_id: batch_id.to_owned(),
            level: level.to_owned(),
            message,
        };
        if let Err(e) = self.queue.publish_log(&self.job_id, Bytes::from(line.encode_to_vec())).await {
            tracing::debug!(error = %e, "log line not sent");
        }
    }

    /// A sink for INFO lines from blocking code (a predictor's output),
    /// sent in order by a task that ends when the sink is dropped.
    pub fn sink(&self) -> LogSink {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, String)>();
        let log = self.clone();
        tokio::spawn(async move {
            while let Some((batch_id, message)) = rx.recv().await {
                log.line(&batch_id, "INFO", message).await;
            }
        });
        Arc::new(move |batch_id: &str, message: String| {
            let _ = tx.send((batch_id.to_owned(), message));
        })
    }
}
