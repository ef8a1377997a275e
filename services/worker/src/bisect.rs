//! Isolating the items that fail in a batch that failed for good (a poison
//! item fails the whole call to the predictor, and with it every other item
//! of its batch). The batch's halves run again, then the halves of those
//! that fail, until each failure is pinned on one item: those items go to
//! the dead letter, each with its error, and the others' results are
//! written. For k failing items among n that costs about 2·k·log₂ n runs
//! of the predictor. A batch whose every part fails is failing whole (a
//! broken predictor, not a poison item): it is given up on after a few
//! runs, as if it had not been bisected.

use std::collections::VecDeque;

use batchmill_proto::queue::v1::Batch;

use crate::predictor::PredictError;

/// Runs that fail one after another, none succeeding, after which a batch
/// counts as failing whole: both halves and the four quarters.
const WHOLE_AFTER: usize = 6;

/// What bisection found.
#[derive(Debug, Clone, PartialEq)]
pub struct Isolated {
    /// The NDJSON results of the items that succeeded, in item order.
    pub results: Vec<u8>,
    /// Each item that failed on its own: its index in the job, its error.
    pub failed: Vec<(u64, String)>,
}

/// Bisects `batch`, which failed with `error`, running parts of it through
/// `run`; None when no item succeeds on its own (the batch fails whole).
pub async fn isolate<F, Fut>(batch: &Batch, error: &str, run: F) -> Option<Isolated>
where
    F: Fn(Batch) -> Fut,
    Fut: Future<Output = Result<Vec<u8>, PredictError>>,
{
    let n = batch.items.len();
    if n < 2 {
        return None;
    }
    // Failing ranges of items [lo, hi), each with the error it failed with.
    let mut failing: VecDeque<(usize, usize, String)> = VecDeque::from([(0, n, error.to_owned())]);
    let mut good: Vec<(usize, Vec<u8>)> = Vec::new();
    let mut failed = Vec::new();
    let mut runs = 0;
    while let Some((lo, hi, error)) = failing.pop_front() {
        if hi - lo == 1 {
            failed.push((batch.first_item + lo as u64, error));
            continue;
        }
        let mid = lo + (hi - lo) / 2;
        for (a, b) in [(lo, mid), (mid, hi)] {
            let part = Batch {
                items: batch.items[a..b].to_vec(),
                first_item: batch.first_item + a as u64,
                group: Vec::new(),
                ..batch.clone()
            };
            runs += 1;
            match run(part).await {
                Ok(results) => good.push((a, results)),
                Err(PredictError::Permanent(e) | PredictError::Retryable(e)) => failing.push_back((a, b, e)),
            }
        }
        if good.is_empty() && runs >= WHOLE_AFTER {
            return None;
        }
    }
    if good.is_empty() {
        return None;
    }
    good.sort_by_key(|(lo, _)| *lo);
    failed.sort_by_key(|(index, _)| *index);
    Some(Isolated { results: good.into_iter().flat_map(|(_, r)| r).collect(), failed })
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    fn batch(n: usize) -> Batch {
        Batch {
            job_id: "j".into(),
            seq: 3,
            first_item: 100,
            items: (0..n).map(|i| i.to_string()).collect(),
            group: Vec::new(),
        }
    }

    /// A predictor whose call fails when it holds a poison item (by index
    /// in the job), counting its runs; results are one line per item.
    fn predictor<'a>(
        poison: &'a [u64],
        runs: &'a Cell<usize>,
    ) -> impl Fn(Batch) -> std::future::Ready<Result<Vec<u8>, PredictError>> + 'a {
        move |b: Batch| {
            runs.set(runs.get() + 1);
            let indexes = b.first_item..b.first_item + b.items.len() as u64;
            let result = match indexes.clone().find(|i| poison.contains(i)) {
                Some(i) => Err(PredictError::Retryable(format!("item {i} is poison"))),
                None => Ok(indexes.map(|i| format!("{i}\n")).collect::<String>().into_bytes()),
            };
            std::future::ready(result)
        }
    }

    fn isolate_now(b: &Batch, poison: &[u64], runs: &Cell<usize>) -> Option<Isolated> {
        futures::executor::block_on(isolate(b, "the batch failed", predictor(poison, runs)))
    }

    #[test]
    fn poison_items_are_pinned_each_with_its_error_and_the_rest_kept_in_order() {
        let runs = Cell::new(0);
        let found = isolate_now(&batch(16), &[103, 111, 112], &runs).expect("isolated");
        let failed: Vec<u64> = found.failed.iter().map(|(i, _)| *i).collect();
        assert_eq!(failed, [103, 111, 112]);
        assert_eq!(found.failed[1].1, "item 111 is poison");
        let kept: Vec<u64> = String::from_utf8(found.results).unwrap().lines().map(|l| l.parse().unwrap()).collect();
        let want: Vec<u64> = (100..116).filter(|i| ![103, 111, 112].contains(i)).collect();
        assert_eq!(kept, want, "every other item once, in order");
        assert!(runs.get() <= 2 * 3 * 4, "about 2·k·log₂ n runs, not n: {}", runs.get());
    }

    #[test]
    fn a_batch_failing_whole_is_given_up_on_after_a_few_runs() {
        let runs = Cell::new(0);
        let all: Vec<u64> = (100..200).collect();
        assert_eq!(isolate_now(&batch(100), &all, &runs), None);
        assert_eq!(runs.get(), WHOLE_AFTER, "both halves, then the four quarters");
        // Two items that both fail: nothing succeeds on its own.
        assert_eq!(isolate_now(&batch(2), &[100, 101], &Cell::new(0)), None);
        // One item: nothing to bisect.
        assert_eq!(isolate_now(&batch(1), &[100], &Cell::new(0)), None);
    }

    #[test]
    fn one_poison_item_among_two_is_found() {
        let found = isolate_now(&batch(2), &[101], &Cell::new(0)).expect("isolated");
        assert_eq!(found.failed, [(101, "item 101 is poison".to_owned())]);
        assert_eq!(found.results, b"100\n");
    }
}
