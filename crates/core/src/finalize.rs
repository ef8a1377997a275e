//! A job's completion hook (`on_job_complete`) runs once: the worker asked to
//! run it claims `/batchmill/finalizers/<job_id>` in etcd under a lease (so
//! one worker runs it at a time, and a dead worker's claim lapses), then
//! replaces the claim with the outcome, kept without a lease. The scheduler
//! reads the key to end the job.

use serde::{Deserialize, Serialize};

pub const FINALIZERS_PREFIX: &str = "/batchmill/finalizers/";

pub fn finalizer_key(job_id: &str) -> String {
    format!("{FINALIZERS_PREFIX}{job_id}")
}

/// The value at a job's finalizer key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finalizing {
    /// The Finalize attempt this answers.
    pub attempt: u32,
    pub worker_id: String,
    /// False while the hook runs; true once it has returned or raised.
    pub done: bool,
    /// What the hook raised, if it did.
    #[serde(default)]
    pub error: Option<String>,
}

impl Finalizing {
    pub fn encode(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Finalizing, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}
