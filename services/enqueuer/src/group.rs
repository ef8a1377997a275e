//! Packs consecutive small batches into one message (see
//! `batchmill_core::batch` for what a group is). Where groups are cut
//! depends only on sequence numbers and bytes: a group never spans two
//! aligned windows of `size` sequence numbers, and ends early where its
//! items would pass the batch byte limit or a batch is skipped. So the
//! same batches always travel together, whichever enqueuer publishes them
//! and from whichever checkpoint: a message republished after a restart
//! has the same id and the same content, and the duplicate window drops it.

use batchmill_proto::queue::v1::Batch;

/// Batches waiting to travel together.
pub struct Group {
    size: u64,
    max_bytes: usize,
    batches: Vec<Batch>,
    bytes: usize,
}

impl Group {
    /// Groups of at most `size` batches (0 or 1: none) and `max_bytes`
    /// bytes of items.
    pub fn new(size: u32, max_bytes: usize) -> Group {
        Group { size: u64::from(size.max(1)), max_bytes, batches: Vec::new(), bytes: 0 }
    }

    /// Adds a batch; returns the message of the group it completes, or of
    /// the group it cannot join (then it starts the next one).
    pub fn push(&mut self, batch: Batch) -> Option<Batch> {
        let bytes: usize = batch.items.iter().map(|i| i.len() + 1).sum();
        let window = |seq: u64| seq / self.size;
        let mut out = None;
        if let Some(first) = self.batches.first()
            && (window(first.seq) != window(batch.seq) || self.bytes + bytes > self.max_bytes)
        {
            out = self.take();
        }
        let closes = batch.seq % self.size == self.size - 1;
        self.batches.push(batch);
        self.bytes += bytes;
        // A cut before the batch empties the group, so both never fall on one push.
        if out.is_none() && closes {
            out = self.take();
        }
        out
    }

    /// The message of the batches waiting, if any: the batch itself when
    /// alone, a group otherwise.
    pub fn take(&mut self) -> Option<Batch> {
        self.bytes = 0;
        let mut batches = std::mem::take(&mut self.batches);
        match batches.len() {
            0 => None,
            1 => batches.pop(),
            _ => {
                let first = &batches[0];
                let (job_id, seq, first_item) = (first.job_id.clone(), first.seq, first.first_item);
                Some(Batch { job_id, seq, first_item, items: Vec::new(), group: batches })
            }
        }
    }

    /// Batches waiting.
    pub fn len(&self) -> u64 {
        self.batches.len() as u64
    }

    /// Items in the batches waiting.
    pub fn items(&self) -> u64 {
        self.batches.iter().map(|b| b.items.len() as u64).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(seq: u64, items: &[&str]) -> Batch {
        Batch {
            job_id: "j1".into(),
            seq,
            first_item: seq * 10,
            items: items.iter().map(|s| (*s).to_owned()).collect(),
            group: vec![],
        }
    }

    /// The sequence numbers each message carries.
    fn seqs(message: &Batch) -> Vec<u64> {
        batchmill_core::batch::unpack(message.clone()).iter().map(|b| b.seq).collect()
    }

    #[test]
    fn groups_fill_aligned_windows_and_end_early_at_the_byte_limit() {
        let mut group = Group::new(4, 12);
        let mut sent = Vec::new();
        for seq in 0..11 {
            // Batches are 3 bytes, but batch 5 is 10: it cannot join batch 4
            // within 12 bytes, nor batch 6 join it.
            let items: &[&str] = if seq == 5 { &["123456789"] } else { &["ab"] };
            sent.extend(group.push(batch(seq, items)));
        }
        sent.extend(group.take());
        let cut: Vec<Vec<u64>> = sent.iter().map(seqs).collect();
        assert_eq!(cut, vec![vec![0, 1, 2, 3], vec![4], vec![5], vec![6, 7], vec![8, 9, 10]]);
        // A group carries the first batch's id and no items of its own; a lone batch is itself.
        assert_eq!((sent[0].seq, sent[0].first_item, sent[0].items.len()), (0, 0, 0));
        assert_eq!((sent[1].seq, sent[1].items.clone(), sent[1].group.len()), (4, vec!["ab".to_owned()], 0));
        assert_eq!((group.len(), group.items()), (0, 0));
    }

    #[test]
    fn cutting_from_a_checkpoint_gives_the_same_groups() {
        let cut_from = |start: u64| {
            let mut group = Group::new(8, 1 << 20);
            let mut sent: Vec<Vec<u64>> =
                (start..30).filter_map(|s| group.push(batch(s, &["x"]))).map(|m| seqs(&m)).collect();
            sent.extend(group.take().map(|m| seqs(&m)));
            sent
        };
        let whole = cut_from(0);
        // Resuming at a group boundary (where checkpoints fall) repeats the rest exactly.
        assert_eq!(cut_from(16), whole[2..].to_vec());
        assert_eq!(whole.last(), Some(&vec![24, 25, 26, 27, 28, 29]));
    }

    #[test]
    fn size_one_sends_every_batch_alone() {
        let mut group = Group::new(0, 100);
        let sent: Vec<Batch> = (0..3).filter_map(|s| group.push(batch(s, &["x"]))).collect();
        assert_eq!(sent.iter().map(|m| (m.seq, m.group.len())).collect::<Vec<_>>(), vec![(0, 0), (1, 0), (2, 0)]);
        assert!(group.take().is_none());
    }
}
