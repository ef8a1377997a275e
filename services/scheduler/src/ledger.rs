//! The exact per-job ledger: which batches are final, as compressed bitmaps
//! of sequence numbers (about one bit per batch), and counts derived from
//! them. A batch reported twice (a redelivery after a worker died) is
//! counted once.

use roaring::RoaringTreemap;

use batchmill_proto::scheduler::v1::BatchStatus;

/// Format version of [`Ledger::encode`].
const VERSION: u8 = 1;

/// What recording an outcome did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// The batch became final, or a failed attempt was counted.
    Counted,
    /// The batch was already final; nothing changed.
    Duplicate,
}

/// A job's ledger.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ledger {
    succeeded: RoaringTreemap,
    failed: RoaringTreemap,
    items_completed: u64,
    items_failed: u64,
    failed_attempts: u64,
    succeeded_ms: u64,
}

impl Ledger {
    /// Records one delivery's outcome of batch `seq` holding `items` items.
    pub fn record(&mut self, seq: u64, status: BatchStatus, items: u64, duration_ms: u64) -> Recorded {
        let already_final = self.succeeded.contains(seq) || self.failed.contains(seq);
        match status {
            BatchStatus::Succeeded if !already_final => {
                self.succeeded.insert(seq);
                self.items_completed += items;
                self.succeeded_ms += duration_ms;
                Recorded::Counted
            }
            BatchStatus::FailedFinal if !already_final => {
                self.failed.insert(seq);
                self.items_failed += items;
                self.failed_attempts += 1;
                Recorded::Counted
            }
            BatchStatus::FailedRetryable if !already_final => {
                self.failed_attempts += 1;
                Recorded::Counted
            }
            BatchStatus::Succeeded
            | BatchStatus::FailedFinal
            | BatchStatus::FailedRetryable
            | BatchStatus::Unspecified => Recorded::Duplicate,
        }
    }

    /// Batches that are final, succeeded or failed.
    pub fn finished(&self) -> u64 {
        self.succeeded.len() + self.failed.len()
    }

    pub fn succeeded(&self) -> u64 {
        self.succeeded.len()
    }

    pub fn failed(&self) -> u64 {
        self.failed.len()
    }

    pub fn items_completed(&self) -> u64 {
        self.items_completed
    }

    pub fn items_failed(&self) -> u64 {
        self.items_failed
    }

    pub fn failed_attempts(&self) -> u64 {
        self.failed_attempts
    }

    /// Mean processing time of a successful batch, in milliseconds.
    pub fn average_batch_ms(&self) -> u64 {
        self.succeeded_ms.checked_div(self.succeeded.len()).unwrap_or(0)
    }

    /// Sequence numbers of the successful batches, in order.
    pub fn succeeded_seqs(&self) -> impl Iterator<Item = u64> + '_ {
        self.succeeded.iter()
    }

    /// Sequence numbers of the failed batches, in order.
    pub fn failed_seqs(&self) -> impl Iterator<Item = u64> + '_ {
        self.failed.iter()
    }

    /// The ledger as bytes, for etcd.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![VERSION];
        for n in [self.items_completed, self.items_failed, self.failed_attempts, self.succeeded_ms] {
            out.extend_from_slice(&n.to_le_bytes());
        }
        for bitmap in [&self.succeeded, &self.failed] {
            let mut bytes = Vec::with_capacity(bitmap.serialized_size());
            // Writing into a Vec cannot fail.
            let _ = bitmap.serialize_into(&mut bytes);
            out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
            out.extend_from_slice(&bytes);
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Ledger, String> {
        let mut r = Reader { bytes, at: 0 };
        let version = r.take(1)?[0];
        if version != VERSION {
            return Err(format!("ledger version {version} is not {VERSION}"));
        }
        let (items_completed, items_failed, failed_attempts, succeeded_ms) = (r.u64()?, r.u64()?, r.u64()?, r.u64()?);
        let mut bitmap = || -> Result<RoaringTreemap, String> {
            let len = r.u64()? as usize;
            RoaringTreemap::deserialize_from(r.take(len)?).map_err(|e| format!("ledger bitmap: {e}"))
        };
        let succeeded = bitmap()?;
        let failed = bitmap()?;
        Ok(Ledger { succeeded, failed, items_completed, items_failed, failed_attempts, succeeded_ms })
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len()).ok_or("ledger truncated")?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn u64(&mut self) -> Result<u64, String> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redelivered_batch_counts_once() {
        let mut l = Ledger::default();
        assert_eq!(l.record(0, BatchStatus::Succeeded, 10, 5), Recorded::Counted);
        assert_eq!(l.record(0, BatchStatus::Succeeded, 10, 7), Recorded::Duplicate);
        assert_eq!(l.record(0, BatchStatus::FailedFinal, 10, 7), Recorded::Duplicate);
        assert_eq!((l.succeeded(), l.items_completed(), l.finished()), (1, 10, 1));
    }

    #[test]
    fn counts_failures_and_attempts() {
        let mut l = Ledger::default();
        l.record(1, BatchStatus::FailedRetryable, 4, 1);
        l.record(1, BatchStatus::FailedRetryable, 4, 1);
        l.record(1, BatchStatus::FailedFinal, 4, 1);
        l.record(2, BatchStatus::Succeeded, 4, 30);
        l.record(3, BatchStatus::Succeeded, 2, 10);
        assert_eq!((l.failed(), l.items_failed(), l.failed_attempts()), (1, 4, 3));
        assert_eq!((l.succeeded(), l.items_completed(), l.average_batch_ms()), (2, 6, 20));
        assert_eq!(l.failed_seqs().collect::<Vec<_>>(), vec![1]);
    }

    #[test]
    fn encodes_and_decodes() {
        let mut l = Ledger::default();
        for seq in (0..100_000).filter(|s| s % 7 != 0) {
            l.record(seq, BatchStatus::Succeeded, 10, 3);
        }
        l.record(7, BatchStatus::FailedFinal, 10, 3);
        let bytes = l.encode();
        assert!(bytes.len() < 40_000, "{} bytes", bytes.len());
        assert_eq!(Ledger::decode(&bytes).unwrap(), l);
        assert!(Ledger::decode(&bytes[..bytes.len() - 1]).is_err());
    }
}
