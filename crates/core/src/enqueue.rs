//! The enqueue checkpoint in etcd, written by the enqueuer and watched by
//! the scheduler: `/batchmill/enqueue/<job_id>/progress`
//! (JSON, read by the scheduler) beside `/batchmill/enqueue/<job_id>/request`
//! (the protobuf request, to resume after a restart).

use serde::{Deserialize, Serialize};

/// Prefix of every enqueue key.
pub const PREFIX: &str = "/batchmill/enqueue/";

pub fn progress_key(job_id: &str) -> String {
    format!("{PREFIX}{job_id}/progress")
}

pub fn request_key(job_id: &str) -> String {
    format!("{PREFIX}{job_id}/request")
}

/// Where the request's source access (a job's own credentials) is kept,
/// sealed, apart from the request.
pub fn access_key(job_id: &str) -> String {
    format!("{PREFIX}{job_id}/access")
}

/// The job id of a progress key, or `None` for another key.
pub fn job_of_progress_key(key: &str) -> Option<&str> {
    key.strip_prefix(PREFIX)?.strip_suffix("/progress")
}

/// How far enqueuing a job has come.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnqueueProgress {
    /// Batches published: the next batch's sequence number.
    pub next_seq: u64,
    /// Items in those batches: the next batch's first item.
    pub next_item: u64,
    /// Every item is published; `next_seq` is the job's batch total.
    pub done: bool,
    /// Enqueuing was stopped (the job was cancelled).
    #[serde(default)]
    pub stopped: bool,
    /// Enqueuing failed for good, and why.
    #[serde(default)]
    pub error: Option<String>,
    /// The job's round this progress is of: 0 when first run, n after its
    /// nth retry.
    #[serde(default)]
    pub round: u32,
}

impl EnqueueProgress {
    /// Whether enqueuing will not go on.
    pub fn is_final(&self) -> bool {
        self.done || self.stopped || self.error.is_some()
    }

    pub fn encode(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<EnqueueProgress, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        assert_eq!(job_of_progress_key(&progress_key("abc")), Some("abc"));
        assert_eq!(job_of_progress_key(&request_key("abc")), None);
    }

    #[test]
    fn progress_round_trips() {
        let p = EnqueueProgress { next_seq: 3, next_item: 30, done: true, stopped: false, error: None, round: 2 };
        assert_eq!(EnqueueProgress::decode(&p.encode().unwrap()).unwrap(), p);
        assert!(p.is_final());
    }
}
