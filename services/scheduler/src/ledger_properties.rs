//! Properties of the ledger ([`crate::ledger`]) under any interleaving of
//! what workers report: duplicates, late and reordered outcomes, re-runs of
//! failed batches, and leader failovers (the ledger written to etcd and read
//! back) at any point. Checked against a model that keeps each batch's state
//! in a map: the first final outcome a batch gets is its outcome until a
//! re-run makes it pending again.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};

use batchmill_proto::scheduler::v1::BatchStatus;
use proptest::prelude::*;

use crate::ledger::{Ledger, Recorded, ResultObject};

/// One thing that happens to a job's ledger.
#[derive(Debug, Clone)]
enum Event {
    /// An outcome of batch `seq` (an index into the job's batches).
    Outcome(usize, BatchStatus),
    /// Batch `seq` failed for good with this many of its items, isolated
    /// by bisection (at least one, fewer than all where it has several).
    Isolated(usize, u64),
    /// A re-run of a dead-lettered batch.
    Revive(usize),
    /// Where results of batch `seq` are: the group `first..=last` around it.
    Grouped(usize, usize),
    /// The leader dies: the ledger is written out and a new one read back.
    Failover,
}

/// A batch's state in the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Final {
    Succeeded,
    Failed,
    /// Failed with this many of its items; the others succeeded.
    Isolated(u64),
}

fn status() -> impl Strategy<Value = BatchStatus> {
    prop_oneof![
        3 => Just(BatchStatus::Succeeded),
        1 => Just(BatchStatus::FailedFinal),
        2 => Just(BatchStatus::FailedRetryable),
    ]
}

/// A job: where its sequence numbers start (some jobs straddle a chunk of
/// the persisted ledger), each batch's item count, and its events in order.
fn job() -> impl Strategy<Value = (u64, Vec<u64>, Vec<Event>)> {
    (prop_oneof![Just(0u64), Just(65_500u64)], prop::collection::vec(1u64..=5, 1..120)).prop_flat_map(
        |(base, items)| {
            let n = items.len();
            let event = prop_oneof![
                12 => (0..n, status()).prop_map(|(b, s)| Event::Outcome(b, s)),
                2 => (0..n, 1u64..5).prop_map(|(b, failed)| Event::Isolated(b, failed)),
                1 => (0..n).prop_map(Event::Revive),
                1 => (0..n, 0usize..4).prop_map(move |(b, width)| Event::Grouped(b, (b + width).min(n - 1))),
                1 => Just(Event::Failover),
            ];
            (Just(base), Just(items), prop::collection::vec(event, 0..600))
        },
    )
}

/// Writes the ledger's changes into `kv` (as the scheduler does to etcd)
/// and reads a ledger back from all of `kv`.
fn failover(ledger: &mut Ledger, kv: &mut BTreeMap<String, Vec<u8>>) -> Ledger {
    kv.extend(ledger.changes(""));
    ledger.written();
    Ledger::decode(kv.iter().map(|(k, v)| (k.as_str(), v.as_slice()))).unwrap()
}

/// What a ledger says: its counts, its final and failed batches, and where
/// the results are (an empty chunk in memory is not persisted, and is no
/// difference).
fn view(l: &Ledger) -> View {
    View {
        counts: [l.succeeded(), l.failed(), l.items_completed(), l.items_failed(), l.failed_attempts()],
        average_ms: l.average_batch_ms(),
        finals: l.final_ranges(),
        failed: l.failed_seqs().collect(),
        objects: l.result_objects(),
    }
}

#[derive(Debug, PartialEq)]
struct View {
    counts: [u64; 5],
    average_ms: u64,
    finals: Vec<(u64, u64)>,
    failed: Vec<u64>,
    objects: Vec<ResultObject>,
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn any_interleaving_of_outcomes_gives_exact_counts((base, items, events) in job()) {
        let mut ledger = Ledger::default();
        let mut kv = BTreeMap::new();
        let mut model: HashMap<usize, Final> = HashMap::new();
        let mut attempts = 0u64;
        // Where each successful batch's results are, by the events so far.
        let mut groups: HashMap<usize, (usize, usize)> = HashMap::new();
        for event in &events {
            match *event {
                Event::Outcome(b, status) => {
                    let recorded = ledger.record(base + b as u64, status, items[b], 10);
                    let already = model.contains_key(&b);
                    prop_assert_eq!(recorded == Recorded::Duplicate, already, "batch {} {:?}", b, status);
                    if !already {
                        match status {
                            BatchStatus::Succeeded => { model.insert(b, Final::Succeeded); }
                            BatchStatus::FailedFinal => { model.insert(b, Final::Failed); attempts += 1; }
                            _ => attempts += 1,
                        }
                    }
                }
                Event::Isolated(b, failed) => {
                    let recorded = ledger.record_isolated(base + b as u64, items[b], failed, 10);
                    let already = model.contains_key(&b);
                    prop_assert_eq!(recorded == Recorded::Duplicate, already, "batch {} isolated", b);
                    if !already {
                        attempts += 1;
                        let state = if failed >= items[b] { Final::Failed } else { Final::Isolated(failed) };
                        model.insert(b, state);
                    }
                }
                Event::Revive(b) => {
                    let failed = match model.get(&b) {
                        Some(Final::Isolated(failed)) => *failed,
                        _ => items[b],
                    };
                    let revived = ledger.revive(base + b as u64, items[b], failed);
                    let was_failed = matches!(model.get(&b), Some(Final::Failed | Final::Isolated(_)));
                    prop_assert_eq!(revived, was_failed, "revive {}", b);
                    if revived {
                        model.remove(&b);
                    }
                }
                Event::Grouped(b, last) => {
                    // Only a batch that succeeded in a group is said to be in it.
                    if model.get(&b) == Some(&Final::Succeeded) && !groups.contains_key(&b) {
                        let first = b.min(last);
                        prop_assert!(ledger.grouped(base + b as u64, base + first as u64, base + last as u64));
                        groups.insert(b, (first, last));
                    }
                }
                Event::Failover => {
                    let read = failover(&mut ledger, &mut kv);
                    prop_assert_eq!(view(&read), view(&ledger), "what etcd holds is the ledger");
                    ledger = read;
                }
            }
        }
        let isolated = |v: &Final| matches!(v, Final::Isolated(_));
        let succeeded = model.values().filter(|v| **v == Final::Succeeded).count() as u64;
        let failed = model.values().filter(|v| **v == Final::Failed || isolated(v)).count() as u64;
        // Items: a failed batch's all failed, an isolated one's split.
        let (mut completed, mut items_failed) = (0, 0);
        for (b, v) in &model {
            match *v {
                Final::Succeeded => completed += items[*b],
                Final::Failed => items_failed += items[*b],
                Final::Isolated(f) => (completed, items_failed) = (completed + items[*b] - f, items_failed + f),
            }
        }
        prop_assert_eq!(ledger.succeeded(), succeeded);
        prop_assert_eq!(ledger.failed(), failed);
        prop_assert_eq!(ledger.finished(), model.len() as u64);
        prop_assert_eq!(ledger.items_completed(), completed);
        prop_assert_eq!(ledger.items_failed(), items_failed);
        prop_assert_eq!(ledger.failed_attempts(), attempts);
        let finals: Vec<u64> = {
            let mut all: Vec<u64> = model.keys().map(|b| base + *b as u64).collect();
            all.sort_unstable();
            all
        };
        let ranges: Vec<u64> = ledger.final_ranges().into_iter().flat_map(|(a, b)| a..b).collect();
        prop_assert_eq!(&ranges, &finals, "final ranges are the final batches");

        // Every batch with results (succeeded, or with isolated failures)
        // has them in exactly one object, and every batch's object the
        // manifest names holds some.
        let objects = ledger.result_objects();
        for (b, f) in &model {
            if *f == Final::Failed {
                continue;
            }
            let seq = base + *b as u64;
            let holding: Vec<_> = objects
                .iter()
                .filter(|o| match **o {
                    ResultObject::Batch(s) => s == seq,
                    ResultObject::Group(a, z) => groups.get(b) == Some(&((a - base) as usize, (z - base) as usize)),
                })
                .collect();
            prop_assert_eq!(holding.len(), 1, "batch {} is in {:?}", seq, holding);
        }
        for object in &objects {
            if let ResultObject::Batch(seq) = *object {
                let b = (seq - base) as usize;
                let holds = matches!(model.get(&b), Some(Final::Succeeded | Final::Isolated(_)));
                prop_assert!(holds, "object of batch {} holds results", seq);
            }
        }

        // And a last failover reads back exactly this.
        let read = failover(&mut ledger, &mut kv);
        prop_assert_eq!(view(&read), view(&ledger));
    }
}
