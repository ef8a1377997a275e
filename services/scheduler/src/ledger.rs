//! The exact per-job ledger: which batches are final, as compressed bitmaps
//! of sequence numbers (about one bit per batch), and counts derived from
//! them. A batch reported twice (a redelivery after a worker died) is
//! counted once.
//!
//! It is persisted in a few etcd keys per job so that a write stays small
//! however large the job: `<prefix>summary` (the counters) and one key per
//! chunk of 65,536 batches, `<prefix>chunk/<n>`, rewritten only when one of
//! its batches changes.
//!
//! It also knows where each successful batch's results are: in its own
//! object, or in the object of the group it ran in (see
//! `batchmill_core::batch`), kept as a bitmap of the batches in groups and
//! one of the groups' objects. A batch that failed for good once its
//! failing items were isolated (bisection) counts as failed, its items split
//! between completed and failed, and its other items' results are in its
//! own object: a bitmap of those batches says so.

use std::collections::{BTreeMap, BTreeSet};

use batchmill_proto::scheduler::v1::BatchStatus;
use roaring::RoaringBitmap;

/// Format version of the persisted keys; chunks of version 1 (before
/// groups) and 2 (before isolated items) are read too.
const VERSION: u8 = 3;
/// A group object is kept as `(offset of its first batch << GROUP_SPAN_BITS)
/// | (last - first)`, within the chunk of its first batch.
const GROUP_SPAN_BITS: u32 = 6;
const _: () = assert!(batchmill_core::batch::GROUP_BATCHES <= 1 << GROUP_SPAN_BITS);
/// Batches per chunk key.
const CHUNK_BITS: u32 = 16;
const SUMMARY: &str = "summary";
const CHUNK: &str = "chunk/";

/// What recording an outcome did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// The batch became final, or a failed attempt was counted.
    Counted,
    /// The batch was already final; nothing changed.
    Duplicate,
}

/// Final batches of one chunk, by offset within the chunk.
#[derive(Debug, Clone, Default, PartialEq)]
struct Chunk {
    succeeded: RoaringBitmap,
    failed: RoaringBitmap,
    /// Successful batches whose results are in a group's object.
    grouped: RoaringBitmap,
    /// The group objects whose first batch is in this chunk.
    groups: RoaringBitmap,
    /// Failed batches some of whose items succeeded, with their results in
    /// the batch's own object.
    partial: RoaringBitmap,
}

/// Where some successful batches' results are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ResultObject {
    /// `<job_id>-<seq>.jsonl`: one batch's.
    Batch(u64),
    /// `<job_id>-<first>-<last>.jsonl`: a group's.
    Group(u64, u64),
}

impl ResultObject {
    /// The first batch it holds.
    fn first(self) -> u64 {
        match self {
            ResultObject::Batch(seq) | ResultObject::Group(seq, _) => seq,
        }
    }
}

/// A job's ledger.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ledger {
    chunks: BTreeMap<u64, Chunk>,
    succeeded: u64,
    failed: u64,
    items_completed: u64,
    items_failed: u64,
    failed_attempts: u64,
    succeeded_ms: u64,
    /// Chunks changed since the last write.
    dirty: BTreeSet<u64>,
}

fn split(seq: u64) -> (u64, u32) {
    (seq >> CHUNK_BITS, (seq & ((1 << CHUNK_BITS) - 1)) as u32)
}

impl Ledger {
    /// Makes failed batch `seq` (holding `items` items, `failed` of which
    /// failed: all but where they were isolated) pending again, for a
    /// re-run of all its items; false if it had not failed.
    pub fn revive(&mut self, seq: u64, items: u64, failed: u64) -> bool {
        let (index, offset) = split(seq);
        let Some(chunk) = self.chunks.get_mut(&index) else { return false };
        if !chunk.failed.remove(offset) {
            return false;
        }
        self.failed -= 1;
        if chunk.partial.remove(offset) {
            self.items_failed = self.items_failed.saturating_sub(failed);
            self.items_completed = self.items_completed.saturating_sub(items.saturating_sub(failed));
        } else {
            self.items_failed = self.items_failed.saturating_sub(items);
        }
        self.dirty.insert(index);
        true
    }

    /// Whether batch `seq` has failed for good.
    pub fn is_failed(&self, seq: u64) -> bool {
        let (index, offset) = split(seq);
        self.chunks.get(&index).is_some_and(|c| c.failed.contains(offset))
    }

    /// Records one delivery's outcome of batch `seq` holding `items` items.
    pub fn record(&mut self, seq: u64, status: BatchStatus, items: u64, duration_ms: u64) -> Recorded {
        let (index, offset) = split(seq);
        let chunk = self.chunks.entry(index).or_default();
        if chunk.succeeded.contains(offset) || chunk.failed.contains(offset) {
            return Recorded::Duplicate;
        }
        match status {
            BatchStatus::Succeeded => {
                chunk.succeeded.insert(offset);
                self.succeeded += 1;
                self.items_completed += items;
                self.succeeded_ms += duration_ms;
                self.dirty.insert(index);
            }
            BatchStatus::FailedFinal => {
                chunk.failed.insert(offset);
                self.failed += 1;
                self.items_failed += items;
                self.failed_attempts += 1;
                self.dirty.insert(index);
            }
            BatchStatus::FailedRetryable => self.failed_attempts += 1,
            BatchStatus::Unspecified => return Recorded::Duplicate,
        }
        Recorded::Counted
    }

    /// Records batch `seq` (holding `items` items) failing for good with only
    /// `failed` of its items, isolated by bisection: the others succeeded,
    /// their results in the batch's own object. A batch all of whose items
    /// failed is recorded as [`Ledger::record`] does.
    pub fn record_isolated(&mut self, seq: u64, items: u64, failed: u64, duration_ms: u64) -> Recorded {
        if failed == 0 || failed >= items {
            return self.record(seq, BatchStatus::FailedFinal, items, duration_ms);
        }
        let (index, offset) = split(seq);
        let chunk = self.chunks.entry(index).or_default();
        if chunk.succeeded.contains(offset) || chunk.failed.contains(offset) {
            return Recorded::Duplicate;
        }
        chunk.failed.insert(offset);
        chunk.partial.insert(offset);
        self.failed += 1;
        self.items_failed += failed;
        self.items_completed += items - failed;
        self.failed_attempts += 1;
        self.dirty.insert(index);
        Recorded::Counted
    }

    /// Says that successful batch `seq` has its results in the object of
    /// the group `first..=last`; false (nothing kept) for a range no group
    /// can have.
    pub fn grouped(&mut self, seq: u64, first: u64, last: u64) -> bool {
        if !(first..=last).contains(&seq) || last - first >= 1 << GROUP_SPAN_BITS {
            return false;
        }
        let (index, offset) = split(seq);
        self.chunks.entry(index).or_default().grouped.insert(offset);
        let (head, head_offset) = split(first);
        let span = (last - first) as u32;
        self.chunks.entry(head).or_default().groups.insert((head_offset << GROUP_SPAN_BITS) | span);
        self.dirty.extend([index, head]);
        true
    }

    /// Every object holding successful batches' results, in order of the
    /// first batch each holds.
    pub fn result_objects(&self) -> Vec<ResultObject> {
        let mut objects: Vec<ResultObject> = Vec::new();
        for (index, chunk) in &self.chunks {
            let base = index << CHUNK_BITS;
            let own = &(&chunk.succeeded - &chunk.grouped) | &chunk.partial;
            objects.extend(own.iter().map(|o| ResultObject::Batch(base | u64::from(o))));
            objects.extend(chunk.groups.iter().map(|g| {
                let first = base | u64::from(g >> GROUP_SPAN_BITS);
                ResultObject::Group(first, first + u64::from(g & ((1 << GROUP_SPAN_BITS) - 1)))
            }));
        }
        objects.sort_by_key(|o| (o.first(), *o));
        objects
    }

    /// Batches that are final, succeeded or failed.
    pub fn finished(&self) -> u64 {
        self.succeeded + self.failed
    }

    pub fn succeeded(&self) -> u64 {
        self.succeeded
    }

    pub fn failed(&self) -> u64 {
        self.failed
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
        self.succeeded_ms.checked_div(self.succeeded).unwrap_or(0)
    }

    /// Sequence numbers of the successful batches, in order.
    pub fn succeeded_seqs(&self) -> impl Iterator<Item = u64> + '_ {
        self.chunks.iter().flat_map(|(i, c)| c.succeeded.iter().map(move |o| (i << CHUNK_BITS) | u64::from(o)))
    }

    /// Sequence numbers of the failed batches, in order.
    pub fn failed_seqs(&self) -> impl Iterator<Item = u64> + '_ {
        self.chunks.iter().flat_map(|(i, c)| c.failed.iter().map(move |o| (i << CHUNK_BITS) | u64::from(o)))
    }

    /// The final batches (succeeded or failed), as sorted, disjoint
    /// `[start, end)` ranges of sequence numbers.
    pub fn final_ranges(&self) -> Vec<(u64, u64)> {
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        for (index, chunk) in &self.chunks {
            let base = index << CHUNK_BITS;
            for offset in &chunk.succeeded | &chunk.failed {
                let seq = base | u64::from(offset);
                match ranges.last_mut() {
                    Some(last) if last.1 == seq => last.1 += 1,
                    _ => ranges.push((seq, seq + 1)),
                }
            }
        }
        ranges
    }

    /// The keys (under `prefix`) to write: the summary and every chunk
    /// changed since [`Ledger::written`].
    pub fn changes(&self, prefix: &str) -> Vec<(String, Vec<u8>)> {
        let mut summary = vec![VERSION];
        for n in [
            self.succeeded,
            self.failed,
            self.items_completed,
            self.items_failed,
            self.failed_attempts,
            self.succeeded_ms,
        ] {
            summary.extend_from_slice(&n.to_le_bytes());
        }
        let mut out = vec![(format!("{prefix}{SUMMARY}"), summary)];
        for index in &self.dirty {
            if let Some(chunk) = self.chunks.get(index) {
                out.push((format!("{prefix}{CHUNK}{index:012x}"), encode_chunk(chunk)));
            }
        }
        out
    }

    /// Marks the changes as written.
    pub fn written(&mut self) {
        self.dirty.clear();
    }

    /// Rebuilds a ledger from its keys, given relative to its prefix.
    pub fn decode<'a>(keys: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Result<Ledger, LedgerError> {
        let mut ledger = Ledger::default();
        let mut summary = None;
        for (key, bytes) in keys {
            if key == SUMMARY {
                summary = Some(bytes);
            } else if let Some(hex) = key.strip_prefix(CHUNK) {
                let index = u64::from_str_radix(hex, 16).map_err(|_| corrupt(format!("bad ledger key {key:?}")))?;
                ledger.chunks.insert(index, decode_chunk(bytes)?);
            } else {
                return Err(corrupt(format!("unknown ledger key {key:?}")));
            }
        }
        let mut r = Reader { bytes: summary.ok_or_else(|| corrupt("ledger summary missing".into()))?, at: 0 };
        version(&mut r)?;
        let mut n = || r.u64();
        (ledger.succeeded, ledger.failed, ledger.items_completed) = (n()?, n()?, n()?);
        (ledger.items_failed, ledger.failed_attempts, ledger.succeeded_ms) = (n()?, n()?, n()?);
        let (s, f) = ledger.chunks.values().fold((0, 0), |(s, f), c| (s + c.succeeded.len(), f + c.failed.len()));
        if (s, f) != (ledger.succeeded, ledger.failed) {
            let (succeeded, failed) = (ledger.succeeded, ledger.failed);
            return Err(corrupt(format!("ledger summary says {succeeded}/{failed} but chunks hold {s}/{f}")));
        }
        Ok(ledger)
    }
}

fn encode_chunk(chunk: &Chunk) -> Vec<u8> {
    let mut out = vec![VERSION];
    for bitmap in [&chunk.succeeded, &chunk.failed, &chunk.grouped, &chunk.groups, &chunk.partial] {
        let mut bitmap = bitmap.clone();
        bitmap.optimize(); // runs of consecutive batches shrink to a few bytes
        let mut bytes = Vec::with_capacity(bitmap.serialized_size());
        // Writing into a Vec cannot fail.
        let _ = bitmap.serialize_into(&mut bytes);
        out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        out.extend_from_slice(&bytes);
    }
    out
}

/// Why persisted ledger keys cannot be read back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("corrupt ledger: {0}")]
pub struct LedgerError(String);

fn corrupt(why: String) -> LedgerError {
    LedgerError(why)
}

fn decode_chunk(bytes: &[u8]) -> Result<Chunk, LedgerError> {
    let mut r = Reader { bytes, at: 0 };
    let version = version(&mut r)?;
    let mut bitmap = || -> Result<RoaringBitmap, LedgerError> {
        let len = r.u64()? as usize;
        RoaringBitmap::deserialize_from(r.take(len)?).map_err(|e| corrupt(format!("bitmap: {e}")))
    };
    let (succeeded, failed) = (bitmap()?, bitmap()?);
    // Version 1 had no groups, and version 2 no isolated items.
    let (grouped, groups) = if version == 1 { Default::default() } else { (bitmap()?, bitmap()?) };
    let partial = if version < 3 { RoaringBitmap::new() } else { bitmap()? };
    Ok(Chunk { succeeded, failed, grouped, groups, partial })
}

fn version(r: &mut Reader<'_>) -> Result<u8, LedgerError> {
    match r.take(1)?[0] {
        v @ 1..=VERSION => Ok(v),
        v => Err(corrupt(format!("version {v} is not from 1 to {VERSION}"))),
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], LedgerError> {
        let end =
            self.at.checked_add(n).filter(|&e| e <= self.bytes.len()).ok_or_else(|| corrupt("truncated".into()))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn u64(&mut self) -> Result<u64, LedgerError> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(l: &Ledger, keys: &[(String, Vec<u8>)]) -> Result<Ledger, LedgerError> {
        let mut decoded = Ledger::decode(keys.iter().map(|(k, v)| (k.trim_start_matches("p/"), v.as_slice())))?;
        decoded.dirty = l.dirty.clone();
        Ok(decoded)
    }

    #[test]
    fn a_redelivered_batch_counts_once() {
        let mut l = Ledger::default();
        assert_eq!(l.record(0, BatchStatus::Succeeded, 10, 5), Recorded::Counted);
        assert_eq!(l.record(0, BatchStatus::Succeeded, 10, 7), Recorded::Duplicate);
        assert_eq!(l.record(0, BatchStatus::FailedFinal, 10, 7), Recorded::Duplicate);
        assert_eq!((l.succeeded(), l.items_completed(), l.finished()), (1, 10, 1));
    }

    #[test]
    fn final_batches_come_as_ranges_across_chunks() {
        let mut l = Ledger::default();
        for seq in [0, 1, 2, 5, 65_535, 65_536, 65_537, 70_000] {
            l.record(seq, BatchStatus::Succeeded, 1, 1);
        }
        l.record(3, BatchStatus::FailedFinal, 1, 1);
        l.record(4, BatchStatus::FailedRetryable, 1, 1);
        assert_eq!(l.final_ranges(), [(0, 4), (5, 6), (65_535, 65_538), (70_000, 70_001)]);
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
    fn a_revived_batch_is_pending_again_and_can_succeed() {
        let mut l = Ledger::default();
        l.record(7, BatchStatus::FailedFinal, 4, 1);
        l.record(8, BatchStatus::Succeeded, 4, 1);
        l.written();
        assert!(l.is_failed(7));
        assert!(!l.revive(8, 4, 4), "a succeeded batch is not revived");
        assert!(l.revive(7, 4, 4));
        assert!(!l.revive(7, 4, 4), "twice is once");
        assert_eq!((l.failed(), l.items_failed(), l.finished()), (0, 0, 1));
        assert_eq!(l.changes("p/").len(), 2, "the revived batch's chunk is rewritten");
        assert_eq!(l.record(7, BatchStatus::Succeeded, 4, 1), Recorded::Counted);
        assert_eq!((l.succeeded(), l.items_completed(), l.failed_attempts()), (2, 8, 1));
    }

    #[test]
    fn writes_only_changed_chunks_and_stays_small() {
        let mut l = Ledger::default();
        for seq in 0..1_000_000 {
            l.record(seq, BatchStatus::Succeeded, 10, 3);
        }
        l.record(2_000_000, BatchStatus::FailedFinal, 10, 3);
        let all = l.changes("p/");
        assert_eq!(all.len(), 1 + 16 + 1, "summary, 16 full chunks, 1 more");
        assert!(all.iter().all(|(_, v)| v.len() < 200), "consecutive batches compress to runs");
        assert_eq!(round_trip(&l, &all).unwrap(), l);

        l.written();
        l.record(1_000_000, BatchStatus::Succeeded, 10, 3);
        let changed: Vec<String> = l.changes("p/").into_iter().map(|(k, _)| k).collect();
        assert_eq!(changed, vec!["p/summary", "p/chunk/00000000000f"]);
        assert_eq!(l.succeeded_seqs().last(), Some(1_000_000));
    }

    #[test]
    fn knows_which_object_holds_each_batchs_results() {
        let mut l = Ledger::default();
        // Group 0..=3: batch 2 failed for good, the rest are in its object.
        for seq in [0, 1, 3] {
            l.record(seq, BatchStatus::Succeeded, 1, 1);
            assert!(l.grouped(seq, 0, 3));
        }
        l.record(2, BatchStatus::FailedFinal, 1, 1);
        // Batch 4 ran alone; 2 is re-run alone; a group spans two chunks.
        l.record(4, BatchStatus::Succeeded, 1, 1);
        assert!(l.revive(2, 1, 1));
        l.record(2, BatchStatus::Succeeded, 1, 1);
        for seq in 65_530..65_540 {
            l.record(seq, BatchStatus::Succeeded, 1, 1);
            assert!(l.grouped(seq, 65_530, 65_539));
        }
        let expected = vec![
            ResultObject::Group(0, 3),
            ResultObject::Batch(2),
            ResultObject::Batch(4),
            ResultObject::Group(65_530, 65_539),
        ];
        assert_eq!(l.result_objects(), expected);
        assert!(!l.grouped(5, 5, 5 + 64), "no group spans 65 batches");
        assert!(!l.grouped(9, 0, 3), "a batch outside its group");
        let decoded = round_trip(&l, &l.changes("p/")).unwrap();
        assert_eq!(decoded.result_objects(), expected);
    }

    #[test]
    fn reads_a_chunk_from_before_groups() {
        let mut l = Ledger::default();
        l.record(3, BatchStatus::Succeeded, 1, 1);
        let mut keys = l.changes("p/");
        // Version 1: the same first two bitmaps, nothing after them.
        let empty = {
            let mut bytes = Vec::new();
            let _ = RoaringBitmap::new().serialize_into(&mut bytes);
            bytes.len() + 8
        };
        let chunk = &mut keys[1].1;
        // Version 2: no bitmap of isolated items.
        chunk.truncate(chunk.len() - empty);
        chunk[0] = 2;
        assert_eq!(round_trip(&l, &keys).unwrap().result_objects(), vec![ResultObject::Batch(3)]);
        let chunk = &mut keys[1].1;
        chunk.truncate(chunk.len() - 2 * empty);
        chunk[0] = 1;
        assert_eq!(round_trip(&l, &keys).unwrap().result_objects(), vec![ResultObject::Batch(3)]);
    }

    #[test]
    fn refuses_a_damaged_ledger() {
        let mut l = Ledger::default();
        l.record(5, BatchStatus::Succeeded, 1, 1);
        let mut keys = l.changes("p/");
        keys[1].1.truncate(5);
        assert!(round_trip(&l, &keys).is_err());
        let summary_only = vec![l.changes("p/").remove(0)];
        assert!(round_trip(&l, &summary_only).unwrap_err().to_string().contains("chunks hold"));
    }
}
