//! The batches a retried job's round does not publish again: those its
//! ledger holds as final, given as sorted ranges of sequence numbers.

use batchmill_proto::enqueuer::v1::SeqRange;

/// Sequence numbers to skip, as sorted, disjoint `[start, end)` ranges.
#[derive(Debug, Clone, Default)]
pub struct Skip {
    ranges: Vec<(u64, u64)>,
}

impl Skip {
    /// The ranges of a request, in any order and possibly overlapping.
    pub fn new(ranges: &[SeqRange]) -> Skip {
        let mut sorted: Vec<(u64, u64)> = ranges.iter().filter(|r| r.start < r.end).map(|r| (r.start, r.end)).collect();
        sorted.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(sorted.len());
        for (start, end) in sorted {
            match merged.last_mut() {
                Some(last) if start <= last.1 => last.1 = last.1.max(end),
                _ => merged.push((start, end)),
            }
        }
        Skip { ranges: merged }
    }

    /// Whether batch `seq` is not to be published.
    pub fn contains(&self, seq: u64) -> bool {
        let i = self.ranges.partition_point(|(start, _)| *start <= seq);
        i > 0 && seq < self.ranges[i - 1].1
    }

    /// How many batches are skipped.
    pub fn len(&self) -> u64 {
        self.ranges.iter().map(|(s, e)| e - s).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(start: u64, end: u64) -> SeqRange {
        SeqRange { start, end }
    }

    #[test]
    fn holds_exactly_the_ranges_merged() {
        let skip = Skip::new(&[range(10, 12), range(0, 3), range(2, 5), range(7, 7), range(20, 21)]);
        let held: Vec<u64> = (0..25).filter(|s| skip.contains(*s)).collect();
        assert_eq!(held, [0, 1, 2, 3, 4, 10, 11, 20]);
        assert_eq!(skip.len(), 8);
        assert!(Skip::new(&[]).is_empty() && !Skip::new(&[]).contains(0));
    }
}
