//! Newtype ids. A job id is time-ordered (sorting ids sorts jobs by creation)
//! and safe in etcd keys, NATS subjects and S3 keys.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Id of a job: 12 hex digits of milliseconds since the epoch, then 8 random.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(String);

impl JobId {
    /// A new id for a job created at `unix_ms`.
    pub fn generate(unix_ms: u64) -> JobId {
        JobId(format!("{:012x}{:08x}", unix_ms & 0xffff_ffff_ffff, fastrand::u32(..)))
    }

    /// Parses an id given by a user; names `field` when it is malformed.
    pub fn parse(field: &str, s: &str) -> Result<JobId, crate::FieldViolation> {
        if s.is_empty() {
            return Err(crate::FieldViolation::new(field, "must not be empty"));
        }
        if s.len() > 64 || !s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) {
            return Err(crate::FieldViolation::new(
                field,
                format!("{s:?} is not a job id (lowercase letters and digits, at most 64)"),
            ));
        }
        Ok(JobId(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Id of a batch: `<job_id>-<seq>`, the batch's `seq` within its job. It
/// names the batch everywhere: its JetStream message id, its result object
/// (`<batch_id>.jsonl`), its dead letter and record, and in the public API.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BatchId {
    pub job_id: JobId,
    pub seq: u64,
}

impl BatchId {
    pub fn new(job_id: JobId, seq: u64) -> BatchId {
        BatchId { job_id, seq }
    }

    /// Parses a batch id given by a user; names `field` when it is malformed.
    /// A job id has no `-`, so the sequence number follows the only one.
    pub fn parse(field: &str, s: &str) -> Result<BatchId, crate::FieldViolation> {
        let bad = || crate::FieldViolation::new(field, format!("{s:?} is not a batch id (<job_id>-<seq>)"));
        let (job, seq) = s.rsplit_once('-').ok_or_else(bad)?;
        let seq = seq.parse::<u64>().map_err(|_| bad())?;
        let job_id = JobId::parse(field, job).map_err(|_| bad())?;
        Ok(BatchId { job_id, seq })
    }

    /// The id of a queued batch; names `batch.job_id` when its job id is malformed.
    pub fn of(batch: &batchmill_proto::queue::v1::Batch) -> Result<BatchId, crate::FieldViolation> {
        Ok(BatchId { job_id: JobId::parse("batch.job_id", &batch.job_id)?, seq: batch.seq })
    }
}

impl fmt::Display for BatchId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.job_id, self.seq)
    }
}

/// Id of a worker process.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct WorkerId(String);

impl WorkerId {
    pub fn new(s: impl Into<String>) -> WorkerId {
        WorkerId(s.into())
    }

    /// A fresh id for a worker on `host`.
    pub fn generate(host: &str) -> WorkerId {
        WorkerId(format!("{host}-{:08x}", fastrand::u32(..)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_sort_by_time() {
        let a = JobId::generate(1_700_000_000_000);
        let b = JobId::generate(1_700_000_000_001);
        assert!(a < b);
        assert_eq!(a.as_str().len(), 20);
        assert_eq!(JobId::parse("job_id", a.as_str()), Ok(a));
    }

    #[test]
    fn job_id_parse_rejects_unsafe_text() {
        let err = JobId::parse("job_id", "a.b").unwrap_err();
        assert_eq!(err.field, "job_id");
        assert!(JobId::parse("job_id", "").is_err());
        assert!(JobId::parse("job_id", "ABC").is_err());
    }

    #[test]
    fn batch_id_is_job_dash_seq() {
        let job = JobId::parse("job_id", "abc123").unwrap();
        let id = BatchId::new(job, 7);
        assert_eq!(id.to_string(), "abc123-7");
        assert_eq!(BatchId::parse("batch_ids[0]", "abc123-7"), Ok(id));
        for bad in ["abc123", "abc123-", "abc123-x", "-7", "ABC-7", "a-b-7"] {
            assert_eq!(BatchId::parse("batch_ids[0]", bad).unwrap_err().field, "batch_ids[0]", "{bad}");
        }
    }
}
