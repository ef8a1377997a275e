//! Cuts an item stream into batches by count and by bytes.

/// Groups items into batches of at most `batch_size` items and `max_bytes`
/// bytes (each item counted with its newline). Cutting depends only on the
/// items, so batching resumed at a batch boundary cuts the same batches.
pub struct Batcher {
    batch_size: usize,
    max_bytes: usize,
    items: Vec<String>,
    bytes: usize,
}

impl Batcher {
    pub fn new(batch_size: usize, max_bytes: usize) -> Batcher {
        Batcher { batch_size: batch_size.max(1), max_bytes, items: Vec::new(), bytes: 0 }
    }

    /// Adds an item; returns a batch when one is complete. An item larger
    /// than `max_bytes` on its own is an error carrying its size.
    pub fn push(&mut self, item: String) -> Result<Option<Vec<String>>, usize> {
        let size = item.len() + 1;
        if size > self.max_bytes {
            return Err(size);
        }
        let mut out = None;
        if !self.items.is_empty() && self.bytes + size > self.max_bytes {
            out = Some(self.take());
        }
        self.items.push(item);
        self.bytes += size;
        // A byte cut empties the batch first, so both cuts never fall on one push.
        if out.is_none() && self.items.len() >= self.batch_size {
            out = Some(self.take());
        }
        Ok(out)
    }

    /// The last, partial batch.
    pub fn finish(&mut self) -> Option<Vec<String>> {
        (!self.items.is_empty()).then(|| self.take())
    }

    fn take(&mut self) -> Vec<String> {
        self.bytes = 0;
        std::mem::take(&mut self.items)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(items: &[&str], batch_size: usize, max_bytes: usize) -> Vec<Vec<String>> {
        let mut b = Batcher::new(batch_size, max_bytes);
        let mut out = Vec::new();
        for item in items {
            if let Some(batch) = b.push((*item).to_owned()).expect("fits") {
                out.push(batch);
            }
        }
        out.extend(b.finish());
        out
    }

    #[test]
    fn cuts_by_count() {
        let batches = run(&["1", "2", "3", "4", "5"], 2, 1000);
        assert_eq!(batches, vec![vec!["1", "2"], vec!["3", "4"], vec!["5"]]);
    }

    #[test]
    fn cuts_by_bytes_before_the_item_that_overflows() {
        // Each item is 4 bytes with its newline; 10 bytes hold two.
        let batches = run(&["aaa", "bbb", "ccc", "ddd", "eee"], 10, 10);
        assert_eq!(batches, vec![vec!["aaa", "bbb"], vec!["ccc", "ddd"], vec!["eee"]]);
    }

    #[test]
    fn refuses_an_item_over_the_limit() {
        let mut b = Batcher::new(10, 8);
        assert_eq!(b.push("x".repeat(8)), Err(9));
    }

    #[test]
    fn a_batch_size_of_one_with_a_byte_cut_loses_nothing() {
        let batches = run(&["aaaa", "bbbb"], 1, 6);
        assert_eq!(batches, vec![vec!["aaaa"], vec!["bbbb"]]);
    }
}
